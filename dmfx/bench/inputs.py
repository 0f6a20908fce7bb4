"""The benchmark matrices: synthetic power-law interactions, by default at the sizes of the DMF
paper's data sets and an Amazon-scale matrix, and the batches drawn from them as training draws them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ..data import CSR, synthetic


class Shape(NamedTuple):
    num_users: int
    num_items: int
    nnz: int


# Sizes follow the data sets of the DMF paper (Table 1); 2m-1m-50m is Amazon scale, where the
# project's design notes measured torch's peers.
SHAPES = {
    "ml-100k": Shape(943, 1_682, 100_000),
    "ml-1m": Shape(6_040, 3_706, 1_000_000),
    "amazon-movies": Shape(9_582, 92_221, 766_759),
    "2m-1m-50m": Shape(2_000_000, 1_000_000, 50_000_000),
    # A CPU-sized stand-in for it: tables far larger than what a batch touches.
    "200k-1m-5m": Shape(200_000, 1_000_000, 5_000_000),
}


@functools.lru_cache(maxsize=None)
def load_csr(name: str, seed: int = 0) -> CSR:
    """The user x item CSR (ratings as values, int64 indices) of the named shape, on the CPU,
    built once per process (ML-1M takes ~0.5 s, the 50M-ratings one ~40 s)."""
    shape = SHAPES[name]
    return synthetic(shape.num_users, shape.num_items, shape.nnz, seed=seed).csr(values="rating")


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


def has_negatives(csr: CSR) -> torch.Tensor:
    """Per stored entry: whether its row leaves an item to sample as a negative. A user who
    rated every item (possible on small, dense shapes) has none, and the samplers refuse it."""
    counts = csr.indptr[1:] - csr.indptr[:-1]
    return torch.repeat_interleave(counts < csr.shape[1], counts)
