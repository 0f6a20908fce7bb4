"""Shared fixtures of the op tests: devices, index dtypes and random CSR matrices."""
from typing import NamedTuple

import pytest
import torch

import dmfx

CUDA_READY = torch.cuda.is_available() and dmfx.cuda_enabled()
CUDA_SKIP_REASON = (
    "no CUDA device" if not torch.cuda.is_available() else "dmfx was built without CUDA kernels"
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=[torch.int32, torch.int64], ids=["int32", "int64"])
def index_dtype(request):
    return request.param


class Csr(NamedTuple):
    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    num_rows: int
    num_cols: int

    def dense(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.indptr.long().cpu(), self.indices.long().cpu(), self.values.cpu(),
            (self.num_rows, self.num_cols),
        ).to_dense()


def random_csr(num_rows, num_cols, density=0.3, *, seed=0, index_dtype=torch.int64,
               dtype=torch.float64, device="cpu") -> Csr:
    """A random CSR matrix with sorted rows that always has the edge cases: an empty first row,
    a row with exactly one entry, and (when there are enough rows) a full row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_rows, num_cols, generator=g) < density
    mask[0] = False
    if num_rows > 1:
        mask[1] = False
        mask[1, torch.randint(num_cols, (1,), generator=g)] = True
    if num_rows > 3:
        mask[3] = True
    dense = torch.where(mask, torch.rand(num_rows, num_cols, generator=g, dtype=dtype) + 0.5, 0)
    csr = dense.to_sparse_csr()
    return Csr(
        csr.crow_indices().to(index_dtype).to(device),
        csr.col_indices().to(index_dtype).to(device),
        csr.values().clone().to(device),  # a plain tensor, not a view into the sparse one
        num_rows,
        num_cols,
    )
