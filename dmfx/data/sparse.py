"""Rating rows from the sparse formats users already hold, as the CSR dmfx's ops read.

:func:`as_csr` accepts a :class:`dmfx.data.CSR`, any ``scipy.sparse`` matrix or array (CSR, CSC,
COO, ...) and torch sparse tensors (CSR or COO), and returns a CSR whose rows have strictly
ascending columns (duplicates summed) and float32 values -- the invariant the kernels check.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from .interactions import CSR

__all__ = ["as_csr"]


def _to_scipy(matrix, name: str) -> sp.csr_matrix:
    if isinstance(matrix, CSR):
        return sp.csr_matrix((matrix.values.cpu().numpy(), matrix.indices.cpu().numpy(),
                              matrix.indptr.cpu().numpy()), shape=matrix.shape)
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)
    if isinstance(matrix, torch.Tensor):
        if matrix.layout == torch.sparse_csr:
            return sp.csr_matrix((matrix.values().cpu().numpy(), matrix.col_indices().cpu().numpy(),
                                  matrix.crow_indices().cpu().numpy()), shape=tuple(matrix.shape))
        if matrix.layout == torch.sparse_coo:
            m = matrix.coalesce()
            rows, cols = m.indices().cpu().numpy()
            return sp.csr_matrix((m.values().cpu().numpy(), (rows, cols)), shape=tuple(m.shape))
    raise TypeError(f"{name} must be a dmfx.data.CSR, a scipy.sparse matrix or a torch sparse "
                    f"CSR/COO tensor, got {type(matrix).__name__}"
                    + (f" with layout {matrix.layout}" if isinstance(matrix, torch.Tensor) else ""))


def as_csr(matrix, *, num_cols: Optional[int] = None, transpose: bool = False,
           name: str = "rows", device=None) -> CSR:
    """``matrix`` (or its transpose) as a canonical float32 CSR on ``device``.

    ``num_cols`` is the number of columns the rows must have (e.g. the model's item count);
    a mismatch, a non-2-D matrix or non-finite values raise ValueError naming ``name``.
    """
    m = _to_scipy(matrix, name)
    if transpose:
        m = m.T.tocsr()
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {m.shape}")
    if num_cols is not None and m.shape[1] != num_cols:
        what = "rows" if transpose else "columns"
        raise ValueError(f"{name} must have {num_cols} {what} (one per "
                         f"{'user' if transpose else 'item'} of the model), got shape "
                         f"{tuple(matrix.shape)}")
    m = m.astype(np.float32)
    m.sum_duplicates()  # also sorts each row's columns
    if m.nnz and not np.isfinite(m.data).all():
        raise ValueError(f"{name} holds non-finite values")
    index = np.int32 if m.nnz < 2**31 and m.shape[1] < 2**31 else np.int64
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=index)) for a in (m.indptr, m.indices)]
    values = torch.from_numpy(np.ascontiguousarray(m.data))
    if device is not None:
        tensors, values = [t.to(device) for t in tensors], values.to(device)
    return CSR(tensors[0], tensors[1], values, (int(m.shape[0]), int(m.shape[1])))
