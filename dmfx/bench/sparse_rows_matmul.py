"""First layer of a DMF tower, forward + backward w.r.t. the weight: dmfx vs PyTorch's ways.

Every contender computes ``out = Y[rows] @ W`` and ``dL/dW = Y[rows]^T @ grad_out`` for a batch
``rows`` drawn like a training batch (users of random observed pairs, so heavy users repeat).
The peers get their batch-local inputs (embedding_bag's flat ids and offsets, a CSR tensor of the
batch rows, the dense B x N rows) prebuilt outside the timed region, which favours them: dmfx
reads the whole matrix's CSR directly and pays for its own row lookup.

- ``dmfx``: the trainer's hot-loop call (``validate=False``: no sync); ``dmfx-validate``: the
  default call, which on CUDA adds one small device-to-host copy.
- ``embedding_bag``: ``F.embedding_bag(mode="sum", per_sample_weights=ratings)``.
- ``sparse.mm``: ``torch.sparse.mm`` on a CSR tensor of the batch rows.
- ``dense``: the dense ``B x N`` rows ``@ W`` (only up to ``DENSE_LIMIT_BYTES`` of input).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from ..data import CSR
from .core import BASELINE, DENSE_LIMIT_BYTES, Contender, Op, Unavailable, agreeing
from .inputs import training_rows

CONTENDERS = (BASELINE, "dmfx-validate", "embedding_bag", "sparse.mm", "dense")


@dataclass
class Problem:
    csr: CSR
    rows: torch.Tensor
    weight: torch.Tensor
    grad_out: torch.Tensor
    # The batch rows' entries, laid out as the peers want them.
    flat_indices: torch.Tensor
    flat_values: torch.Tensor
    offsets: torch.Tensor  # [B + 1], starts of each row's entries in the flat arrays

    @property
    def batch(self) -> int:
        return self.rows.numel()

    @property
    def nnz_in_batch(self) -> int:
        return int(self.offsets[-1])


def problem(csr: CSR, hidden: int, batch: int) -> Problem:
    """A batch of ``batch`` training rows of ``csr`` times an ``N x hidden`` weight, on the
    matrix's device."""
    device = csr.indptr.device
    g = torch.Generator().manual_seed(1)
    num_items = csr.shape[1]
    # N(0, 0.01) as in the paper's initialisation; grad_out stands in for the next layer's.
    weight = (0.01 * torch.randn(num_items, hidden, generator=g)).to(device)
    grad_out = torch.randn(batch, hidden, generator=g).to(device)
    rows = training_rows(csr, batch, seed=2)
    starts = csr.indptr[rows]
    counts = csr.indptr[rows + 1] - starts
    offsets = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=offsets[1:])
    # Position k of the flat arrays holds entry starts[b] + (k - offsets[b]) of row b.
    slot = torch.arange(int(offsets[-1]), device=device) + torch.repeat_interleave(starts - offsets[:-1], counts)
    return Problem(csr, rows, weight, grad_out, csr.indices[slot], csr.values[slot], offsets)


def _call(p: Problem, name: str):
    """``fn() -> (out, grad_weight)`` for the named contender; peers' inputs built here."""
    w = p.weight.detach().requires_grad_()

    def fwd_bwd(forward):
        def fn():
            out = forward()
            return out, *torch.autograd.grad(out, w, p.grad_out)
        return fn

    if name in (BASELINE, "dmfx-validate"):
        c, validate = p.csr, name == "dmfx-validate"
        return fwd_bwd(lambda: ops.sparse_rows_matmul(
            c.indptr, c.indices, c.values, p.rows, w, validate=validate))
    if name == "embedding_bag":
        starts = p.offsets[:-1]
        return fwd_bwd(lambda: F.embedding_bag(
            p.flat_indices, w, starts, mode="sum", per_sample_weights=p.flat_values))
    num_items = p.csr.shape[1]
    if name == "dense":
        size = p.batch * num_items * p.weight.element_size()
        if size > DENSE_LIMIT_BYTES:
            raise Unavailable(f"dense B x N input would take {size / 2**30:.1f} GiB")
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        # One index dtype for both arrays (the matrix's indices may be int32, the offsets are
        # int64): unchecked, a mixed pair reached cuSPARSE, which read int32 ids as int64.
        batch = torch.sparse_csr_tensor(p.offsets, p.flat_indices.long(), p.flat_values,
                                        (p.batch, num_items), check_invariants=True)
    if name == "sparse.mm":
        return fwd_bwd(lambda: torch.sparse.mm(batch, w))
    if name == "dense":
        dense = batch.to_dense()
        return fwd_bwd(lambda: dense @ w)
    raise ValueError(f"unknown sparse_rows_matmul contender {name!r}")


def prepare(p: Problem, name: str) -> Contender:
    return agreeing(name, _call(p, name), lambda: _call(p, BASELINE))


def describe(p: Problem) -> str:
    return (f"first layer Y[rows] @ W, forward + backward w.r.t. W: B = {p.batch} rows "
            f"({p.nnz_in_batch:,} ratings) of {p.csr.shape[0]:,} x {p.csr.shape[1]:,}, "
            f"h = {p.weight.shape[1]}")


OP = Op("sparse_rows_matmul", CONTENDERS, prepare, describe)
