"""First layer of a DMF tower, forward + backward w.r.t. the weight: dmfx vs PyTorch's ways.

Every contender computes ``out = Y[rows] @ W`` and ``dL/dW = Y[rows]^T @ grad_out`` for a batch
``rows`` drawn like a training batch (users of random observed pairs, so heavy users repeat).
The peers get their batch-local inputs (embedding_bag's flat ids and offsets, a CSR tensor of the
batch rows, the dense B x N rows) prebuilt outside the timed region, which favours them: dmfx
reads the whole matrix's CSR directly and pays for its own row lookup.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import dmfx
from benchmarks.harness import assert_agree, measure
from benchmarks.matrices import training_rows

# The dense peer materialises B x N floats; beyond this it is not a contender anyone would run
# (DESIGN.md leaves it out at Amazon scale: 8192 x 92k floats = 3 GB).
DENSE_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class Case:
    matrix: str
    hidden: int
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"{self.matrix}-h{self.hidden}-B{self.batch}"


CASES = [
    Case("ml-100k", 256, 256),
    Case("ml-1m", 256, 256),
    Case("ml-1m", 256, 8192),
    Case("amazon-movies", 256, 8192, cuda_only=True),
    Case("2m-1m-50m", 64, 8192, cuda_only=True, big=True),
]
# "dmfx" is the trainer's hot-loop call (validate=False: no sync); "dmfx-validate" is the
# default call, which on CUDA adds one small device-to-host copy.
CONTENDERS = ["dmfx", "dmfx-validate", "embedding_bag", "sparse.mm", "dense"]


@dataclass
class Problem:
    csr: object
    rows: torch.Tensor
    weight: torch.Tensor
    grad_out: torch.Tensor
    # The batch rows' entries, laid out as the peers want them.
    flat_indices: torch.Tensor
    flat_values: torch.Tensor
    offsets: torch.Tensor  # [B + 1], starts of each row's entries in the flat arrays


@functools.lru_cache(maxsize=1)  # one case at a time: the 50M-ratings weight is large
def _problem(case: Case, csr) -> Problem:
    device = csr.indptr.device
    g = torch.Generator().manual_seed(1)
    num_items = csr.shape[1]
    # N(0, 0.01) as in the paper's initialisation; grad_out stands in for the next layer's.
    weight = (0.01 * torch.randn(num_items, case.hidden, generator=g)).to(device)
    grad_out = torch.randn(case.batch, case.hidden, generator=g).to(device)
    rows = training_rows(csr, case.batch, seed=2)
    starts = csr.indptr[rows]
    counts = csr.indptr[rows + 1] - starts
    offsets = torch.zeros(case.batch + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=offsets[1:])
    # Position k of the flat arrays holds entry starts[b] + (k - offsets[b]) of row b.
    slot = torch.arange(int(offsets[-1]), device=device) + torch.repeat_interleave(starts - offsets[:-1], counts)
    return Problem(csr, rows, weight, grad_out, csr.indices[slot], csr.values[slot], offsets)


def _contender(name: str, case: Case, p: Problem):
    """``fn() -> (out, grad_weight)`` for the named contender; peers' inputs built here."""
    w = p.weight.detach().requires_grad_()

    def fwd_bwd(forward):
        def fn():
            out = forward()
            return out, *torch.autograd.grad(out, w, p.grad_out)
        return fn

    if name in ("dmfx", "dmfx-validate"):
        c, validate = p.csr, name == "dmfx-validate"
        return fwd_bwd(lambda: dmfx.ops.sparse_rows_matmul(
            c.indptr, c.indices, c.values, p.rows, w, validate=validate))
    if name == "embedding_bag":
        starts = p.offsets[:-1]
        return fwd_bwd(lambda: F.embedding_bag(
            p.flat_indices, w, starts, mode="sum", per_sample_weights=p.flat_values))
    num_items = p.csr.shape[1]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        batch = torch.sparse_csr_tensor(p.offsets, p.flat_indices, p.flat_values,
                                        (case.batch, num_items), check_invariants=False)
    if name == "sparse.mm":
        return fwd_bwd(lambda: torch.sparse.mm(batch, w))
    if name == "dense":
        size = case.batch * num_items * p.weight.element_size()
        if size > DENSE_LIMIT_BYTES:
            pytest.skip(f"dense B x N input would take {size / 2**30:.1f} GiB")
        dense = batch.to_dense()
        return fwd_bwd(lambda: dense @ w)
    raise ValueError(name)


def test_sparse_rows_matmul(benchmark, matrix, case, contender):
    problem = _problem(case, matrix(case.matrix))
    fn = _contender(contender, case, problem)
    if contender != "dmfx":
        assert_agree(fn(), _contender("dmfx", case, problem)(), what=f"{contender} vs dmfx")
    measure(benchmark, fn, group=f"sparse_rows_matmul fwd+bwd {case.id}", contender=contender,
            nnz_in_batch=int(problem.offsets[-1]))
