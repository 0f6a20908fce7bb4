"""Sparse matrices in the formats users already hold, as the CSR dmfx's ops read.

This module is dmfx's one converter: the data layer, the models and :mod:`dmfx.nn` all read
their matrices through it. Accepted, as the matrix itself (the sparse formats below store no
raw ids, so their row and column positions are the indices the ops use):

* a :class:`CSR`, or any object with ``indptr``, ``indices`` and ``values`` tensors and
  optionally ``shape`` (``values=None``: a 0/1 matrix);
* a ``scipy.sparse`` matrix or array of any format (CSR, CSC, COO, and the rest);
* a torch sparse tensor with layout ``torch.sparse_csr``, ``torch.sparse_csc`` or
  ``torch.sparse_coo``.

A pandas DataFrame holds raw user and item ids, which need mapping to indices: build
:meth:`dmfx.data.Interactions.from_pandas` and take its :meth:`~Interactions.csr`.

Zero copy. The tensors :func:`as_csr` returns are views of the input's storage when the input
already holds the CSR asked for: a :class:`CSR`, a scipy CSR or a torch ``sparse_csr`` tensor
(with ``transpose=True``: a scipy CSC or a torch ``sparse_csc`` tensor, whose arrays are the CSR
of the transpose), with int32 or int64 ``indptr`` and ``indices`` of one dtype, contiguous
(writable, for numpy arrays), sorted duplicate-free rows, values of the requested dtype, on the
requested device. Anything else is copied once, in the step that needs it: another format or
orientation is converted, mixed index dtypes become int64, values are cast, arrays of the other
byte order are swapped, unsorted rows are sorted, the result is moved to ``device``.

Values. float32 and float64 values are read as they are (and cast to the ``dtype`` asked for,
a copy, where it is the other one, after duplicates are summed); values of any other real dtype
-- bool, integers, float16, bfloat16 -- are first converted to the ``dtype`` asked for (a copy),
so that they are summed in it, never in their own dtype (where int8 would wrap and float16
overflow or round).

Duplicates. Entries stored twice at one (row, column) are combined into one: numbers are summed,
as ``scipy.sparse`` and ``torch.Tensor.coalesce`` do, so a COO with duplicates stands for their
sum; bool values are combined with logical OR (a duplicated True is 1.0, not 2.0), as scipy's
``tocsr()`` and torch's ``coalesce()`` of a bool matrix give True. A CSR-like input with
``values=None`` has a 1 per stored entry, summed like numbers (as ``nn.EmbeddingBag`` sums a
repeated id). Explicitly stored zeros are kept as entries.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["CSR", "as_csr"]

_INDEX_DTYPES = (torch.int32, torch.int64)
_VALUE_DTYPES = (torch.float32, torch.float64)
_NUMPY_VALUE_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_INT32_MAX = int(np.iinfo(np.int32).max)


class CSR(NamedTuple):
    """A compressed sparse row matrix as torch tensors.

    ``indices[indptr[r]:indptr[r + 1]]`` are the column indices of row ``r``. As built by
    :func:`as_csr` and :meth:`Interactions.csr`, they are sorted strictly ascending (no
    duplicates), so consumers such as the negative sampler can binary-search a row, and
    ``values`` is float32 unless another dtype was asked for.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    shape: tuple[int, int]


def _accepted(name: str) -> str:
    return (f"{name} must be a dmfx.data.CSR (or an object with indptr, indices and values "
            "tensors), a scipy.sparse matrix or a torch sparse CSR/CSC/COO tensor")


def _from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory where torch can (contiguous, writable, in the
    machine's byte order: torch holds no other, so a big-endian array is converted)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable:  # torch would share it but warn: writes are undefined
        return torch.from_numpy(np.array(array))
    return torch.from_numpy(np.ascontiguousarray(array))


def _shape(shape: Any, name: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _as_value_dtype(values: Any, dtype: torch.dtype) -> Any:
    """``values`` of a dtype other than float32/float64 (bool, integers, float16, bfloat16) as
    ``dtype``, a copy: converted before anything sums duplicates, so that they are summed in
    ``dtype``. float32/float64 values, complex ones (refused by the checks) and non-tensors
    are returned as they are."""
    if not isinstance(values, Tensor) or values.dtype in _VALUE_DTYPES or values.is_complex():
        return values
    return values.to(dtype)


def _read(matrix: Any, name: str, dtype: torch.dtype = torch.float32):
    """``(indptr, indices, values, shape, by_rows, logical)``: the stored arrays of ``matrix``
    compressed by rows (CSR) or by columns (CSC), as tensors. Views of a compressed input; COO
    and the other formats are converted to CSR (a copy, duplicates combined, int64 indices).
    ``shape`` is None for a CSR-like object without one. ``values`` of a dtype other than
    float32/float64 are converted to ``dtype`` first (see the module docstring); ``logical``
    tells that they were bools in arrays that may still hold duplicates, which must then be
    combined with OR."""
    if isinstance(matrix, Tensor):
        layout = matrix.layout
        if layout not in (torch.sparse_csr, torch.sparse_csc, torch.sparse_coo):
            raise TypeError(f"{_accepted(name)}; got a tensor with layout {layout} (for a dense "
                            "matrix, convert it with .to_sparse_csr())")
        if matrix.is_complex():
            raise TypeError(f"{name}: values must be real numbers, got {matrix.dtype}")
        if matrix.dim() != 2 or matrix.dense_dim() != 0:
            raise ValueError(f"{name} must be a 2-D sparse matrix with scalar entries, got "
                             f"shape {tuple(matrix.shape)} with {matrix.dense_dim()} dense "
                             "dimension(s)")
        shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        logical = matrix.dtype == torch.bool
        if layout == torch.sparse_csr:
            return (matrix.crow_indices(), matrix.col_indices(),
                    _as_value_dtype(matrix.values(), dtype), shape, True, logical)
        if layout == torch.sparse_csc:
            return (matrix.ccol_indices(), matrix.row_indices(),
                    _as_value_dtype(matrix.values(), dtype), shape, False, logical)
        ids = matrix._indices()  # checked before coalescing, which trusts them
        if ids.numel() and (int(ids.min()) < 0
                            or bool((ids.max(1).values >= ids.new_tensor(shape)).any())):
            raise ValueError(f"{name} has row or column ids outside its shape {shape}")
        if matrix.dtype not in _VALUE_DTYPES:  # summed in dtype: no wrap, overflow, rounding
            matrix = matrix.to(dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
            csr = matrix.coalesce().to_sparse_csr()
        values = csr.values().clamp(max=1) if logical else csr.values()  # bools: OR
        return csr.crow_indices(), csr.col_indices(), values, shape, True, False
    indptr = getattr(matrix, "indptr", None)
    if isinstance(indptr, Tensor) and hasattr(matrix, "indices") and hasattr(matrix, "values"):
        shape = getattr(matrix, "shape", None)
        values = matrix.values
        logical = isinstance(values, Tensor) and values.dtype == torch.bool
        return (indptr, matrix.indices, _as_value_dtype(values, dtype),
                None if shape is None else _shape(shape, name), True, logical)
    if sp.issparse(matrix):
        shape = _shape(matrix.shape, name)
        logical = matrix.dtype == np.bool_
        # bool, integers, float16, longdouble: to dtype before anything sums them
        cast = matrix.dtype not in (np.float32, np.float64) and matrix.dtype.kind in "biuf"
        target = _NUMPY_VALUE_DTYPES[dtype]
        if matrix.format in ("csr", "csc"):
            data = matrix.data.astype(target) if cast else matrix.data  # indices still shared
            return (_from_numpy(matrix.indptr), _from_numpy(matrix.indices), _from_numpy(data),
                    shape, matrix.format == "csr", logical)
        # Their constructors have checked the ids; tocsr sums duplicates (a copy, whose
        # indices become int64, as every converted format's do).
        if cast:
            matrix = matrix.astype(target)
        matrix = matrix.tocsr()
        if logical:
            matrix.sum_duplicates()  # every duplicate summed before the OR (a no-op after COO)
        values = _from_numpy(matrix.data)
        return (_from_numpy(matrix.indptr).long(), _from_numpy(matrix.indices).long(),
                values.clamp(max=1) if logical else values, shape, True, False)
    if type(matrix).__name__ == "DataFrame":
        raise TypeError(f"{_accepted(name)}; got a DataFrame, whose user and item columns hold "
                        "raw ids: build dmfx.data.Interactions.from_pandas(df) and use its "
                        ".csr()")
    raise TypeError(f"{_accepted(name)}; got {type(matrix).__name__}")


def _one_index_dtype(indptr: Tensor, indices: Tensor, name: str):
    """``indptr`` and ``indices``, checked to be int32/int64, as int64 where they differ."""
    for part, tensor in (("indptr", indptr), ("indices", indices)):
        if tensor.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{name}: {part} must be int32 or int64, got {tensor.dtype}")
    if indptr.dtype != indices.dtype:
        return indptr.long(), indices.long()
    return indptr, indices


def _check_parts(indptr: Tensor, indices: Tensor, values: Optional[Tensor],
                 shape: Optional[tuple[int, int]], name: str, ids: str,
                 value_dtype: Optional[torch.dtype] = None):
    """Check a CSR's arrays (``indptr`` and ``indices`` of one index dtype); returns
    ``(shape, canonical)``, inferring a missing shape (the columns from the largest id) and
    telling whether every row is strictly ascending.
    ``ids`` names what the column ids are ("column", or "row" for a transposed input).
    ``value_dtype``: the dtype the values will be cast to, whose range they must fit (a
    float64 1e39 would become a float32 infinity).

    The data checks are reductions gathered into one host read (one sync on CUDA)."""
    for part, tensor in (("indptr", indptr), ("indices", indices)):
        if tensor.dim() != 1:
            raise ValueError(f"{name}: {part} must be 1-D, got shape {tuple(tensor.shape)}")
    nnz = indices.numel()
    if values is not None:
        if values.is_complex():
            raise TypeError(f"{name}: values must be real numbers, got {values.dtype}")
        if values.dim() != 1 or values.numel() != nnz:
            raise ValueError(f"{name}: values must be 1-D with one entry per index ({nnz}), "
                             f"got shape {tuple(values.shape)}")
    if indptr.numel() == 0:
        raise ValueError(f"{name}: indptr must have num_rows + 1 entries, got none")
    if shape is not None and indptr.numel() != shape[0] + 1:
        raise ValueError(f"{name} has {shape[0]} rows but its indptr has {indptr.numel()} "
                         f"entries (num_rows + 1 expected)")
    flags = {"first": indptr[0], "last": indptr[-1],
             "step": torch.diff(indptr).min() if indptr.numel() > 1 else indptr[0]}
    if nnz:
        flags["smallest"], flags["largest"] = indices.min(), indices.max()
        if values is not None and values.is_floating_point():
            finite = torch.isfinite(values)
            largest = torch.finfo(value_dtype or values.dtype).max
            if largest < torch.finfo(values.dtype).max:
                finite &= values.abs() <= largest
            flags["non_finite"] = ~finite.all()
        increasing = indices[1:] > indices[:-1]
        # The first entry of a row follows the previous row's last: no order between them.
        starts = indptr[1:-1].long()
        increasing[starts[(starts > 0) & (starts < nnz)] - 1] = True
        flags["unsorted"] = ~increasing.all()
    read = dict(zip(flags, torch.stack([f.to(torch.int64) for f in flags.values()]).tolist()))
    if read["first"] != 0 or read["last"] != nnz:
        raise ValueError(f"{name}: indptr must run from 0 to nnz ({nnz}), got {read['first']} "
                         f"to {read['last']}")
    if read["step"] < 0:
        raise ValueError(f"{name}: indptr must be non-decreasing")
    if not nnz:
        return shape if shape is not None else (indptr.numel() - 1, 0), True
    if read["smallest"] < 0:
        raise ValueError(f"{name} has negative {ids} ids (smallest {read['smallest']})")
    if shape is None:
        shape = (indptr.numel() - 1, read["largest"] + 1)
    elif read["largest"] >= shape[1]:
        raise ValueError(f"{name} has {ids} ids up to {read['largest']}, outside its "
                         f"{shape[1]} {ids}s")
    if read.get("non_finite"):
        beyond = f", or values beyond {value_dtype}'s range" if value_dtype is not None else ""
        raise ValueError(f"{name} holds non-finite values (NaN or infinity){beyond}")
    return shape, not read["unsorted"]


def _coalesced(indptr: Tensor, indices: Tensor, values: Tensor, shape: tuple[int, int],
               by_rows: bool, transpose: bool, logical: bool = False):
    """The CSR of the matrix stored (checked) by rows or by columns, or of its transpose:
    sorted, duplicates summed (``logical``: the values, 0/1 floats, were bools, whose
    duplicates combine with OR). A copy, with int64 indices."""
    counts = torch.diff(indptr.long())
    major = torch.repeat_interleave(torch.arange(counts.numel(), device=indptr.device), counts,
                                    output_size=indices.numel())
    rows, cols = (major, indices.long()) if by_rows else (indices.long(), major)
    if transpose:
        rows, cols, shape = cols, rows, shape[::-1]
    # Built from ids, not via to_sparse_coo(), which takes a CSR for coalesced as it is.
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)
    with warnings.catch_warnings():
        # torch warns once that its CSR support is "beta"; this conversion is covered here.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        csr = coo.coalesce().to_sparse_csr()
    values = csr.values().clamp(max=1) if logical else csr.values()
    return csr.crow_indices(), csr.col_indices(), values, (int(csr.shape[0]), int(csr.shape[1]))


def _csr_parts(matrix: Any, name: str, *, transpose: bool = False,
               dtype: torch.dtype = torch.float32):
    """``(indptr, indices, values, shape, logical)`` of the CSR of ``matrix`` (``transpose``:
    of its transpose), unchecked and as stored where the input is that CSR already (views;
    ``shape`` None for a CSR-like object without one; rows may be unsorted and hold
    duplicates, which ``logical`` says must be combined with OR), else converted (checked, a
    copy, canonical, ``logical`` False). Values of a dtype other than float32/float64 come
    converted to ``dtype``. :mod:`dmfx.nn` reads per-call matrices through this, leaving the
    checks of the rows it reads to the op (only ``shape`` is checked against ``indptr``'s
    length here, on the host); :func:`as_csr` adds the checks and the canonical form."""
    indptr, indices, values, shape, by_rows, logical = _read(matrix, name, dtype)
    if by_rows != transpose:
        shape = shape if by_rows or shape is None else shape[::-1]
        if shape is not None and indptr.dim() == 1 and indptr.numel() != shape[0] + 1:
            raise ValueError(f"{name} has {shape[0]} rows but its indptr has {indptr.numel()} "
                             "entries (num_rows + 1 expected)")
        return indptr, indices, values, shape, logical
    indptr, indices = _one_index_dtype(indptr, indices, name)
    shape, _ = _check_parts(indptr, indices, values, shape if by_rows else shape[::-1], name,
                            "column" if by_rows else "row")
    if not by_rows:
        shape = shape[::-1]
    if values is None:
        values = torch.ones(indices.numel(), dtype=dtype, device=indices.device)
    return (*_coalesced(indptr, indices, values, shape, by_rows, transpose, logical), False)


def as_csr(matrix: Any, *, num_cols: Optional[int] = None, transpose: bool = False,
           name: str = "rows", device=None, dtype: torch.dtype = torch.float32,
           index_dtype: Optional[torch.dtype] = None) -> CSR:
    """``matrix`` (or, with ``transpose``, its transpose) as a checked, canonical :class:`CSR`.

    Canonical: each row's column ids strictly ascending (duplicates combined: summed, or
    OR-ed for bool values), values of ``dtype``, ``indptr`` and ``indices`` of one dtype. See
    the module docstring for the accepted inputs, the value dtypes and when the result shares
    the input's memory (zero copy) or is a copy.

    Args:
        matrix: the matrix; see the module docstring.
        num_cols: the number of columns the result must have (e.g. a model's item count).
        transpose: convert the transpose (e.g. users x items in, items x users out).
        name: the argument's name in error messages.
        device: of the result (default: the input's; scipy inputs are on the CPU).
        dtype: of the values, float32 (default) or float64. Values of another dtype (bool,
            integers, float16, bfloat16) are converted to it before duplicates are combined.
            A ``values=None`` CSR-like input (a 0/1 matrix) gets ones.
        index_dtype: of ``indptr`` and ``indices``, torch.int32 or torch.int64 (checked to
            fit); default: the input's for a CSR already canonical (a scipy or torch CSR, a
            dmfx CSR; with ``transpose``, a CSC), int64 wherever the input's two differ or it
            had to be sorted or converted: every other format (scipy COO, LIL, DOK, BSR, DIA;
            torch COO), the other orientation (a CSC without ``transpose``, a CSR with it),
            unsorted rows or duplicates.

    Raises:
        TypeError: an unsupported kind of matrix or dtype.
        ValueError: not 2-D, the wrong number of columns, a broken ``indptr``, negative or
            out-of-range ids, or non-finite values; the message names ``name``.
    """
    if dtype not in _VALUE_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if index_dtype is not None and index_dtype not in _INDEX_DTYPES:
        raise ValueError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
    indptr, indices, values, shape, logical = _csr_parts(matrix, name, transpose=transpose,
                                                         dtype=dtype)
    if device is not None:
        indptr, indices = indptr.to(device), indices.to(device)
        values = None if values is None else values.to(device)
    indptr, indices = _one_index_dtype(indptr, indices, name)
    indptr, indices = indptr.contiguous(), indices.contiguous()
    values = None if values is None else values.contiguous()
    shape, canonical = _check_parts(indptr, indices, values, shape, name,
                                    "row" if transpose else "column", dtype)
    if num_cols is not None and shape[1] != num_cols:
        what = "rows" if transpose else "columns"
        got = shape[::-1] if transpose else shape
        raise ValueError(f"{name} must have {num_cols} {what}, got shape {got}")
    if values is None:
        values = torch.ones(indices.numel(), dtype=dtype, device=indices.device)
    if not canonical:  # summed in the values' float32/float64, as scipy does, then cast
        indptr, indices, values, shape = _coalesced(indptr, indices, values, shape, True, False,
                                                    logical)
    values = values.to(dtype)
    if index_dtype is not None and indptr.dtype != index_dtype:
        if index_dtype == torch.int32 and max(indices.numel(), *shape) > _INT32_MAX:
            raise ValueError(f"int32 indices cannot address nnz={indices.numel()}, "
                             f"shape={shape}; use torch.int64")
        indptr, indices = indptr.to(index_dtype), indices.to(index_dtype)
    return CSR(indptr, indices, values, shape)
