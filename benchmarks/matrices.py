"""The benchmark matrices: synthetic power-law interactions at the sizes of DESIGN.md section 2.

Every matrix is built once per process (``load_csr`` is cached) on the CPU and copied to the
benchmark device by the session fixture in ``conftest.py``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch


class Shape(NamedTuple):
    num_users: int
    num_items: int
    nnz: int


# Sizes follow the data sets of the DMF paper (Table 1) and DESIGN.md's peer table.
SHAPES = {
    "ml-100k": Shape(943, 1_682, 100_000),
    "ml-1m": Shape(6_040, 3_706, 1_000_000),
    "amazon-movies": Shape(9_582, 92_221, 766_759),
    "2m-1m-50m": Shape(2_000_000, 1_000_000, 50_000_000),
}


class CSR(NamedTuple):
    """Same fields as ``dmfx.data.CSR``: int64 ``indptr``/``indices``, float32 ``values``."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]


def _fallback_synthetic(shape: Shape, seed: int) -> CSR:
    """Power-law users and items, distinct pairs, ratings 1..5; used only while
    ``dmfx.data.synthetic`` is unavailable. Duplicates are dropped, so nnz is approximate."""
    rng = np.random.default_rng(seed)

    def zipf(n: int, alpha: float, size: int) -> np.ndarray:
        # Inverse-CDF draw of a continuous power law ~ (rank + 1) ** -alpha, then a random
        # rank -> id map so the heavy ids are spread over the id range.
        b = 1.0 - alpha
        ranks = ((1.0 + rng.random(size) * ((n + 1.0) ** b - 1.0)) ** (1.0 / b) - 1.0).astype(np.int64)
        return rng.permutation(n)[np.minimum(ranks, n - 1)]

    draws = int(shape.nnz * 1.3)
    keys = np.unique(zipf(shape.num_users, 0.6, draws) * shape.num_items + zipf(shape.num_items, 0.8, draws))
    keys = np.sort(rng.choice(keys, size=min(shape.nnz, keys.size), replace=False))
    users, items = np.divmod(keys, shape.num_items)  # sorted keys: rows, then ascending columns
    indptr = np.zeros(shape.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=shape.num_users), out=indptr[1:])
    values = rng.integers(1, 6, size=keys.size).astype(np.float32)
    return CSR(torch.from_numpy(indptr), torch.from_numpy(items), torch.from_numpy(values),
               (shape.num_users, shape.num_items))


@functools.lru_cache(maxsize=None)
def load_csr(name: str, seed: int = 0) -> CSR:
    """The user x item CSR (ratings as values) of the named shape, on the CPU."""
    shape = SHAPES[name]
    try:
        from dmfx.data import synthetic
    except ImportError:
        return _fallback_synthetic(shape, seed)
    c = synthetic(shape.num_users, shape.num_items, shape.nnz, seed=seed).csr(values="rating")
    return CSR(c.indptr, c.indices, c.values, c.shape)


def to_device(csr: CSR, device: torch.device) -> CSR:
    return CSR(csr.indptr.to(device), csr.indices.to(device), csr.values.to(device), csr.shape)


def row_of_entry(csr: CSR) -> torch.Tensor:
    """The row of every stored entry: each row repeated as often as it has entries.

    Training iterates over the observed pairs, so a batch's users are these rows, and a heavy
    user (long row) appears in proportionally more batches than a light one.
    """
    counts = csr.indptr[1:] - csr.indptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)


def training_rows(csr: CSR, batch: int, seed: int = 0) -> torch.Tensor:
    """``batch`` row ids drawn as a training batch draws them: the users of random pairs."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(csr.indices.numel(), (batch,), generator=g).to(csr.indptr.device)
    return row_of_entry(csr)[pick]
