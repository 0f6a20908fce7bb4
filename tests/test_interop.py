"""Interop: every accepted sparse format through dmfx.data.as_csr, Interactions and dmfx.nn.

Round trips for scipy.sparse (every format), torch sparse CSR/CSC/COO tensors, dmfx CSRs and
pandas DataFrames; zero copies where the docs promise them (data_ptr equality); duplicates
summed (bools OR-ed); bad input refused with the argument named.
"""
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from dmfx.data import CSR, Interactions, as_csr, synthetic
from dmfx.nn import SparseRowLinear

ROOT = Path(__file__).resolve().parents[1]

# Empty rows 0 and 4 (and the last), an empty column 3, negative and fractional values.
DENSE = np.array([
    [0, 0, 0, 0, 0],
    [1.5, 0, 0, 0, 2],
    [3, -1, 0.25, 0, 4],
    [0, 0, 5, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 6, 0, 0, 0],
    [0, 0, 0, 0, 0],
], dtype=np.float32)
NP_INDEX = {torch.int32: np.int32, torch.int64: np.int64}


def scipy_input(fmt, index_dtype=torch.int32, dense=DENSE):
    matrix = sp.csr_matrix(dense).asformat(fmt)
    index = NP_INDEX[index_dtype]
    if fmt in ("csr", "csc"):
        matrix.indptr, matrix.indices = matrix.indptr.astype(index), matrix.indices.astype(index)
    elif fmt == "coo":
        matrix.row, matrix.col = matrix.row.astype(index), matrix.col.astype(index)
    return matrix


def torch_input(layout, index_dtype=torch.int64, dense=DENSE):
    t = torch.from_numpy(dense)
    if layout == "coo":
        return t.to_sparse_coo()
    if layout == "csr":
        s = t.to_sparse_csr()
        return torch.sparse_csr_tensor(s.crow_indices().to(index_dtype),
                                       s.col_indices().to(index_dtype), s.values(), s.shape)
    s = t.to_sparse_csc()
    return torch.sparse_csc_tensor(s.ccol_indices().to(index_dtype),
                                   s.row_indices().to(index_dtype), s.values(), s.shape)


def dmfx_input(index_dtype=torch.int64, dense=DENSE, *, with_shape=True):
    s = torch.from_numpy(dense).to_sparse_csr()
    parts = (s.crow_indices().to(index_dtype), s.col_indices().to(index_dtype), s.values())
    if with_shape:
        return CSR(*parts, tuple(dense.shape))
    return SimpleNamespace(indptr=parts[0], indices=parts[1], values=parts[2])


def every_input():
    """A builder of DENSE in every accepted format, each index dtype it can hold."""
    cases = []
    for index_dtype, bits in ((torch.int32, "int32"), (torch.int64, "int64")):
        cases += [pytest.param(lambda f=fmt, d=index_dtype: scipy_input(f, d),
                               id=f"scipy-{fmt}-{bits}") for fmt in ("csr", "csc", "coo")]
        cases += [pytest.param(lambda f=layout, d=index_dtype: torch_input(f, d),
                               id=f"torch-{layout}-{bits}") for layout in ("csr", "csc")]
        cases += [pytest.param(lambda d=index_dtype: dmfx_input(d), id=f"dmfx-csr-{bits}"),
                  pytest.param(lambda d=index_dtype: dmfx_input(d, with_shape=False),
                               id=f"csr-like-without-shape-{bits}")]
    cases += [pytest.param(lambda f=fmt: scipy_input(f), id=f"scipy-{fmt}")
              for fmt in ("lil", "dok", "bsr", "dia")]
    cases += [pytest.param(lambda: sp.csr_array(DENSE), id="scipy-csr_array"),
              pytest.param(lambda: sp.coo_array(DENSE), id="scipy-coo_array"),
              pytest.param(lambda: torch_input("coo"), id="torch-coo-int64")]
    return cases


def dense_of(csr: CSR) -> np.ndarray:
    return sp.csr_matrix((csr.values.numpy(), csr.indices.numpy(), csr.indptr.numpy()),
                         shape=csr.shape).toarray()


def assert_canonical(csr: CSR) -> None:
    """Strictly ascending columns in every row, one index dtype, contiguous tensors."""
    assert csr.indptr.dtype == csr.indices.dtype
    assert all(t.is_contiguous() for t in csr[:3])
    indptr, indices = csr.indptr.numpy(), csr.indices.numpy()
    for r in range(len(indptr) - 1):
        assert (np.diff(indices[indptr[r]:indptr[r + 1]]) > 0).all(), f"row {r}"


def shares(a: torch.Tensor, b) -> bool:
    pointer = b.data_ptr() if isinstance(b, torch.Tensor) else b.ctypes.data
    return a.data_ptr() == pointer


# ------------------------------------------------------------------------ every format


@pytest.mark.parametrize("build", every_input())
def test_as_csr_reads_every_format_and_its_transpose(build):
    matrix = build()
    csr = as_csr(matrix)
    assert csr.shape == DENSE.shape and csr.values.dtype == torch.float32
    np.testing.assert_array_equal(dense_of(csr), DENSE)
    assert_canonical(csr)
    transposed = as_csr(matrix, transpose=True)
    assert transposed.shape == DENSE.T.shape
    np.testing.assert_array_equal(dense_of(transposed), DENSE.T)
    assert_canonical(transposed)
    as64 = as_csr(matrix, dtype=torch.float64, index_dtype=torch.int64)
    assert as64.values.dtype == torch.float64 and as64.indptr.dtype == torch.int64


def test_csr_like_without_shape_takes_its_width_from_the_largest_column():
    narrow = DENSE[:, :3]  # columns 0..2 used
    assert as_csr(dmfx_input(dense=narrow, with_shape=False)).shape == (7, 3)
    assert as_csr(dmfx_input(dense=narrow, with_shape=False), num_cols=3).shape == (7, 3)


@pytest.mark.parametrize("build", every_input())
def test_interactions_from_scipy_round_trip_of_every_format(build):
    data = Interactions.from_scipy(build())
    assert (data.num_users, data.num_items) == DENSE.shape  # empty rows and columns kept
    assert data.nnz == np.count_nonzero(DENSE)
    np.testing.assert_array_equal(data.user_ids, np.arange(DENSE.shape[0]))
    np.testing.assert_array_equal(data.to_scipy().toarray(), DENSE)


def test_round_trips_with_scipy_torch_and_interactions():
    data = synthetic(40, 30, 300, seed=3)
    y = data.to_scipy()
    back = Interactions.from_scipy(y, user_ids=data.user_ids, item_ids=data.item_ids)
    np.testing.assert_array_equal(back.user_ids, data.user_ids)
    np.testing.assert_array_equal(back.item_ids, data.item_ids)
    assert (back.to_scipy() != y).nnz == 0
    assert back.timestamps is None  # a matrix holds none
    order = np.lexsort((data.items, data.users))  # from_scipy gives row order
    np.testing.assert_array_equal(back.users, data.users[order])
    np.testing.assert_array_equal(back.items, data.items[order])
    np.testing.assert_array_equal(back.ratings, data.ratings[order])
    # scipy -> dmfx CSR -> scipy, and torch CSR -> dmfx CSR -> torch CSR
    csr = as_csr(y)
    assert (sp.csr_matrix((csr.values.numpy(), csr.indices.numpy(), csr.indptr.numpy()),
                          shape=csr.shape) != y).nnz == 0
    t = torch.from_numpy(y.toarray()).to_sparse_csr()
    csr = as_csr(t)
    torch.testing.assert_close(torch.sparse_csr_tensor(*csr[:3], csr.shape).to_dense(),
                               t.to_dense())
    # Interactions.csr is as_csr of to_scipy: one converter
    for transpose in (False, True):
        ours, theirs = data.csr(transpose=transpose), as_csr(data.to_scipy(transpose=transpose))
        assert ours.shape == theirs.shape and ours.indptr.dtype == torch.int32
        for a, b in zip(ours[:3], theirs[:3]):
            torch.testing.assert_close(a, b.to(a.dtype))
    assert data.csr(index_dtype=torch.int64).indices.dtype == torch.int64


def test_from_scipy_ids_and_their_errors():
    data = Interactions.from_scipy(sp.csr_matrix(DENSE), user_ids=np.arange(7) * 10,
                                   item_ids=["a", "b", "c", "d", "e"])
    assert data.user_index(30) == 3 and data.item_index("e") == 4
    with pytest.raises(ValueError, match="user_ids has 3 entries but matrix has 7 rows"):
        Interactions.from_scipy(sp.csr_matrix(DENSE), user_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="item_ids must be strictly increasing"):
        Interactions.from_scipy(sp.csr_matrix(DENSE), item_ids=[4, 3, 2, 1, 0])


def test_from_scipy_keeps_explicit_zeros_and_copies():
    m = sp.csr_matrix(DENSE)
    m.data[0] = 0.0  # an explicitly stored zero is an interaction rated 0
    data = Interactions.from_scipy(m)
    assert data.nnz == m.nnz and (data.ratings == 0).sum() == 1
    m.data[:] = 9.0
    assert (data.ratings != 9.0).all()  # the interactions own their arrays


# --------------------------------------------------------------------------- zero copy


@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_scipy_csr_with_float32_values_is_viewed_not_copied(index):
    m = sp.csr_matrix(DENSE)
    m.indptr, m.indices = m.indptr.astype(index), m.indices.astype(index)
    csr = as_csr(m)
    assert shares(csr.indptr, m.indptr) and shares(csr.indices, m.indices)
    assert shares(csr.values, m.data)
    # transposed: the arrays of a CSC are the CSR of its transpose
    csc = sp.csc_matrix(DENSE)
    t = as_csr(csc, transpose=True)
    assert shares(t.indptr, csc.indptr) and shares(t.indices, csc.indices)
    assert shares(t.values, csc.data)


def test_torch_and_dmfx_csr_are_viewed_not_copied():
    t = torch_input("csr", torch.int32)
    csr = as_csr(t)
    assert shares(csr.indptr, t.crow_indices()) and shares(csr.indices, t.col_indices())
    assert shares(csr.values, t.values())
    c = torch_input("csc")
    csr = as_csr(c, transpose=True)
    assert shares(csr.indptr, c.ccol_indices()) and shares(csr.values, c.values())
    d = dmfx_input()
    csr = as_csr(d, device="cpu")
    assert all(a is b for a, b in zip(csr[:3], d[:3]))


def test_copies_happen_where_documented():
    m = sp.csr_matrix(DENSE.astype(np.float64))
    csr = as_csr(m)  # float64 data: values cast (a copy), indices still shared
    assert not shares(csr.values, m.data) and shares(csr.indices, m.indices)
    assert shares(as_csr(m, dtype=torch.float64).values, m.data)
    as64 = as_csr(sp.csr_matrix(DENSE), index_dtype=torch.int64)  # scipy holds int32
    assert as64.indices.dtype == torch.int64
    m = sp.csr_matrix(DENSE)
    m.data.flags.writeable = False  # shared, torch could write: copied (and no warning)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        csr = as_csr(m)
    assert not shares(csr.values, m.data) and shares(csr.indices, m.indices)
    np.testing.assert_array_equal(dense_of(csr), DENSE)


# -------------------------------------------------------- duplicates, order, contiguity


def test_duplicates_are_summed_in_every_format():
    # (row, col, value) with (2, 1) three times and (0, 3) twice, in no order
    rows = np.array([2, 0, 2, 1, 0, 2])
    cols = np.array([1, 3, 1, 0, 3, 1])
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.5], dtype=np.float32)
    expected = np.zeros((3, 4), np.float32)
    np.add.at(expected, (rows, cols), vals)
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(3, 4))
    torch_coo = torch.sparse_coo_tensor(np.vstack([rows, cols]), vals, (3, 4))
    order = np.argsort(rows, kind="stable")  # rows grouped, columns unsorted, duplicates kept
    indptr = torch.from_numpy(np.r_[0, np.cumsum(np.bincount(rows, minlength=3))])
    messy = CSR(indptr, torch.from_numpy(cols[order]), torch.from_numpy(vals[order]), (3, 4))
    messy_scipy = sp.csr_matrix((vals[order], cols[order], indptr.numpy()), shape=(3, 4))
    assert not messy_scipy.has_canonical_format
    for matrix in (coo, torch_coo, messy, messy_scipy):
        csr = as_csr(matrix)
        assert_canonical(csr)
        assert csr.indices.numel() == np.count_nonzero(expected)
        np.testing.assert_array_equal(dense_of(csr), expected)
        np.testing.assert_array_equal(dense_of(as_csr(matrix, transpose=True)), expected.T)
        np.testing.assert_array_equal(Interactions.from_scipy(matrix).to_scipy().toarray(),
                                      expected)
    # the layer sums duplicates too, on the matrix as given
    layer = SparseRowLinear(4, 3)
    rows_batch = torch.tensor([2, 0, 1])
    want = torch.from_numpy(expected)[rows_batch] @ layer.weight
    for matrix in (messy, messy_scipy, coo, torch_coo):
        torch.testing.assert_close(layer(matrix, rows_batch), want)
    # the scipy/torch COO inputs were not coalesced in place
    assert coo.nnz == 6 and torch_coo._nnz() == 6
    # small ints are summed as numbers in the float asked for (no wrap); bools with OR, as
    # scipy's tocsr() and torch's coalesce() give True (see test_bool_duplicates_are_or_ed)
    twice = ([0, 0], [1, 1])
    for data, want in (([True, True], 1.0), (np.array([100, 100], np.int8), 200.0)):
        for matrix in (sp.coo_matrix((data, twice), shape=(1, 2)),
                       torch.sparse_coo_tensor(twice, torch.as_tensor(data), (1, 2))):
            assert as_csr(matrix).values.tolist() == [want], type(matrix)


def bool_inputs_with_duplicates():
    """A 3 x 4 bool matrix whose (0, 1) and (2, 3) are stored twice (True twice; True and False),
    in every format that can hold duplicates, with the dense bool matrix scipy makes of it."""
    rows = np.array([0, 2, 0, 1, 2])
    cols = np.array([1, 3, 1, 0, 3])
    vals = np.array([True, True, True, True, False])
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(3, 4))
    order = np.argsort(rows, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=3))]
    messy = sp.csr_matrix((vals[order], cols[order], indptr), shape=(3, 4))
    t_indptr, t_cols = torch.from_numpy(indptr), torch.from_numpy(cols[order])
    t_vals = torch.from_numpy(vals[order])
    by_cols = np.lexsort((rows, cols))
    csc = sp.csc_matrix((vals[by_cols], rows[by_cols],
                         np.r_[0, np.cumsum(np.bincount(cols, minlength=4))]), shape=(3, 4))
    inputs = {
        "scipy-coo": coo,
        "scipy-csr-duplicates": messy,
        "scipy-csc-duplicates": csc,
        "scipy-lil": coo.tolil(),
        "torch-coo": torch.sparse_coo_tensor(np.vstack([rows, cols]), vals, (3, 4)),
        "torch-csr-duplicates": torch.sparse_csr_tensor(t_indptr, t_cols, t_vals, (3, 4)),
        "dmfx-csr-duplicates": CSR(t_indptr, t_cols, t_vals, (3, 4)),
    }
    return inputs, coo.toarray()


def test_bool_duplicates_are_or_ed_not_summed():
    """A duplicated True is 1.0, as scipy's tocsr()/toarray() and torch's coalesce() give True:
    in as_csr (either orientation), Interactions.from_scipy and SparseRowLinear (per call and
    bound), which then equals nn.Linear on the dense rows."""
    inputs, want = bool_inputs_with_duplicates()
    assert want.dtype == np.bool_ and want[0, 1] and want[2, 3]
    torch.manual_seed(0)
    linear = nn.Linear(4, 3, bias=False)
    layer = SparseRowLinear.from_linear(linear)
    rows = torch.tensor([0, 2, 1, 2])
    expected = linear(torch.from_numpy(want).float()[rows])
    for name, matrix in inputs.items():
        for dtype in (torch.float32, torch.float64):
            csr = as_csr(matrix, dtype=dtype)
            assert csr.values.dtype == dtype
            np.testing.assert_array_equal(dense_of(csr), want, err_msg=name)
            assert set(csr.values.tolist()) == {1.0}, name  # the False is OR-ed away, too
            np.testing.assert_array_equal(dense_of(as_csr(matrix, transpose=True)), want.T,
                                          err_msg=name)
        data = Interactions.from_scipy(matrix)
        assert data.nnz == 3 and (data.ratings == 1.0).all(), name
        torch.testing.assert_close(layer(matrix, rows), expected, msg=name)
        torch.testing.assert_close(SparseRowLinear.from_linear(linear).bind(matrix)(rows),
                                   expected, msg=name)


def test_half_precision_values_are_summed_in_the_dtype_asked_for():
    """float16/bfloat16 duplicates are converted before they are summed: no overflow to inf
    (and no 'non-finite' error), no rounding in the half dtype."""
    twice = [[0, 0], [1, 1]]
    f16 = torch.sparse_coo_tensor(twice, torch.tensor([60000.0, 60000.0], dtype=torch.float16),
                                  (1, 2))
    bf16 = torch.sparse_coo_tensor(twice, torch.tensor([256.0, 1.0], dtype=torch.bfloat16),
                                   (1, 2))
    # scipy builds float16 matrices only from their arrays (and not COO): a CSC with duplicates
    csc16 = sp.csc_matrix((np.array([60000, 60000], np.float16), np.array([0, 0]),
                           np.array([0, 0, 2])), shape=(1, 2))
    for matrix, want in ((f16, 120000.0), (bf16, 257.0), (csc16, 120000.0)):
        for dtype in (torch.float32, torch.float64):
            assert as_csr(matrix, dtype=dtype).values.tolist() == [want], (matrix, dtype)
        assert Interactions.from_scipy(matrix).ratings.tolist() == [want]
        layer = SparseRowLinear(2, 1)
        torch.testing.assert_close(layer(matrix, torch.tensor([0])), want * layer.weight[1:])


@pytest.mark.parametrize("fmt", ["coo", "lil", "dok", "bsr", "dia"])
def test_every_converted_format_comes_back_int64_by_default(fmt):
    """As the docstring says: the input's index dtype only for a CSR already canonical; every
    converted format, scipy's int32 ones included, gives int64."""
    matrix = scipy_input(fmt)
    assert as_csr(matrix).indptr.dtype == torch.int64
    assert as_csr(matrix).indices.dtype == torch.int64
    assert as_csr(matrix, index_dtype=torch.int32).indptr.dtype == torch.int32
    assert as_csr(scipy_input("csr")).indptr.dtype == torch.int32  # canonical CSR: as it is


def non_float_cases():
    """(format, value dtype): scipy.sparse holds no float16, torch no longdouble."""
    cases = []
    for fmt in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia", "torch-csr", "torch-csc",
                "torch-coo", "dmfx"):
        scipy = not fmt.startswith("torch") and fmt != "dmfx"
        for dtype in (np.int64, np.int8, np.uint8, np.bool_,
                      np.longdouble if scipy else np.float16):
            cases.append(pytest.param(fmt, dtype, id=f"{fmt}-{np.dtype(dtype).name}"))
    return cases


def matrix_in(fmt: str, dense: np.ndarray):
    """``dense`` as a matrix of format ``fmt``: torch-csr/csc/coo, dmfx, or a scipy format."""
    if fmt.startswith("torch"):
        return torch_input(fmt[6:], dense=dense)
    if fmt == "dmfx":
        return dmfx_input(dense=dense)
    return sp.csr_matrix(dense).asformat(fmt)


@pytest.mark.parametrize("fmt,dtype", non_float_cases())
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_the_layer_casts_non_float_values_in_every_format(fmt, dtype, weight_dtype):
    """One rule for every format: bool, integer and half values are converted to the weight's
    dtype (per call and at bind), so the layer is nn.Linear on the dense rows so converted."""
    ones = (DENSE != 0).astype(dtype) if dtype == np.bool_ else np.abs(DENSE).astype(dtype)
    matrix = matrix_in(fmt, ones)
    torch.manual_seed(0)
    linear = nn.Linear(5, 3, bias=False, dtype=weight_dtype)
    layer = SparseRowLinear.from_linear(linear)
    rows = torch.tensor([0, 2, 1, 6, 2, 5])
    want = linear(torch.from_numpy(ones.astype(np.float64)).to(weight_dtype)[rows])
    torch.testing.assert_close(layer(matrix, rows), want)
    torch.testing.assert_close(layer.bind(matrix)(rows), want)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "torch-csr", "torch-coo", "dmfx"])
def test_the_other_float_dtype_is_refused_per_call_naming_it(fmt):
    """float64 values for a float32 weight (and the reverse) are refused per call in every
    format, the message naming the matrix's own dtype (not one it was converted to)."""
    for values, weight in ((np.float64, torch.float32), (np.float32, torch.float64)):
        dense = DENSE.astype(values)
        matrix = matrix_in(fmt, dense)
        named = torch.from_numpy(dense).dtype
        with pytest.raises(TypeError, match=f"SparseRowLinear: matrix values are {named} but "
                                            f"the layer's weight is {weight}"):
            SparseRowLinear(5, 2, dtype=weight)(matrix, torch.tensor([1]))


def test_a_per_call_csr_whose_shape_disagrees_with_its_indptr_is_refused():
    """As bind and as_csr refuse it, checked on the host (shape and indptr's length)."""
    csr = CSR(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2]), torch.ones(3), (2, 4))
    message = r"SparseRowLinear: matrix has 2 rows but its indptr has 4 entries"
    with pytest.raises(ValueError, match=message):
        SparseRowLinear(4, 2)(csr, torch.tensor([2]))
    with pytest.raises(ValueError, match=message):
        SparseRowLinear(4, 2).bind(csr)
    with pytest.raises(ValueError, match="m has 2 rows but its indptr has 4 entries"):
        as_csr(csr, name="m")


def test_unsorted_coo():
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(DENSE)
    order = rng.permutation(len(rows))
    coo = sp.coo_matrix((DENSE[rows, cols][order], (rows[order], cols[order])),
                        shape=DENSE.shape)
    torch_coo = torch.sparse_coo_tensor(np.vstack([rows[order], cols[order]]),
                                        DENSE[rows, cols][order], DENSE.shape)
    for matrix in (coo, torch_coo):
        csr = as_csr(matrix)
        assert_canonical(csr)
        np.testing.assert_array_equal(dense_of(csr), DENSE)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_big_endian_scipy_arrays_are_read(fmt):
    """Arrays read from a big-endian file (np.load of '>f4', HDF5, FITS) are swapped, not
    refused by torch.from_numpy."""
    m = sp.csr_matrix(DENSE).asformat(fmt)
    m.data = m.data.astype(">f4")
    if fmt == "coo":
        m.row, m.col = m.row.astype(">i4"), m.col.astype(">i8")
    else:
        m.indices, m.indptr = m.indices.astype(">i4"), m.indptr.astype(">i4")
    np.testing.assert_array_equal(dense_of(as_csr(m)), DENSE)
    data = Interactions.from_scipy(m)
    np.testing.assert_array_equal(data.to_scipy().toarray(), DENSE)


def test_non_contiguous_inputs():
    s = torch.from_numpy(DENSE).to_sparse_csr()
    spread = torch.zeros(2 * s.values().numel())
    spread[::2] = s.values()
    strided = CSR(s.crow_indices(), s.col_indices(), spread[::2], DENSE.shape)
    assert not strided.values.is_contiguous()
    csr = as_csr(strided)
    assert csr.values.is_contiguous()
    np.testing.assert_array_equal(dense_of(csr), DENSE)
    m = sp.csr_matrix(DENSE)
    data = np.zeros(2 * m.nnz, np.float32)
    data[::2] = m.data
    m = sp.csr_matrix((data[::2], m.indices, m.indptr), shape=m.shape)
    assert not m.data.flags.c_contiguous
    np.testing.assert_array_equal(dense_of(as_csr(m)), DENSE)
    layer = SparseRowLinear(5, 2)
    torch.testing.assert_close(layer(strided, torch.arange(7)),
                               torch.from_numpy(DENSE) @ layer.weight)


def test_empty_matrices():
    for matrix in (sp.csr_matrix((3, 4), dtype=np.float32), sp.coo_matrix((0, 4)),
                   torch.zeros(3, 4).to_sparse_csr(), torch.zeros(0, 4).to_sparse_coo()):
        csr = as_csr(matrix)
        assert csr.shape == tuple(matrix.shape) and csr.indices.numel() == 0
        assert csr.indptr.tolist() == [0] * (matrix.shape[0] + 1)
        assert as_csr(matrix, transpose=True).shape == tuple(matrix.shape)[::-1]
    data = Interactions.from_scipy(sp.csr_matrix((3, 4)))
    assert (data.num_users, data.num_items, data.nnz) == (3, 4, 0)


# ---------------------------------------------------------------------------- bad input


def csr_with(**change):
    """DENSE as a dmfx CSR with some parts replaced."""
    return dmfx_input()._replace(**change)


def negative_id():
    indices = dmfx_input().indices.clone()
    indices[3] = -1
    return indices


NNZ = np.count_nonzero(DENSE)


BAD = [
    # (id, thunk, exception, message)
    ("wrong width", lambda: as_csr(sp.csr_matrix(DENSE), num_cols=6, name="ratings"),
     ValueError, r"ratings must have 6 columns, got shape \(7, 5\)"),
    ("wrong height transposed", lambda: as_csr(sp.csr_matrix(DENSE), num_cols=5, transpose=True,
                                               name="columns"),
     ValueError, r"columns must have 5 rows, got shape \(7, 5\)"),
    ("rows vs indptr", lambda: as_csr(csr_with(shape=(8, 5)), name="m"),
     ValueError, r"m has 8 rows but its indptr has 8 entries"),
    ("3-D torch", lambda: as_csr(torch.zeros(2, 3, 4).to_sparse_csr(), name="m"),
     ValueError, "m must be a 2-D sparse matrix"),
    ("hybrid COO", lambda: as_csr(torch.zeros(3, 4).to_sparse(1), name="m"),
     ValueError, "m must be a 2-D sparse matrix"),
    ("1-D scipy", lambda: as_csr(sp.coo_array(np.array([1.0, 0, 2])), name="m"),
     ValueError, r"m must be 2-D, got shape \(3,\)"),
    ("3-D shape attribute", lambda: as_csr(csr_with(shape=(7, 5, 1)), name="m"),
     ValueError, "m must be 2-D"),
    ("dense tensor", lambda: as_csr(torch.zeros(3, 4), name="m"),
     TypeError, "m must be a dmfx.data.CSR.*layout torch.strided"),
    ("numpy array", lambda: as_csr(np.zeros((3, 4)), name="m"), TypeError, "m must be"),
    ("NaN scipy", lambda: as_csr(sp.csr_matrix(([np.nan], ([0], [1])), shape=(2, 2)), name="m"),
     ValueError, "m holds non-finite values"),
    ("inf torch CSR", lambda: as_csr(torch.tensor([[0, float("inf")]]).to_sparse_csr(),
                                     name="m"),
     ValueError, "m holds non-finite values"),
    ("NaN torch COO", lambda: as_csr(torch.sparse_coo_tensor([[0], [1]], [float("nan")], (2, 2)),
                                     name="m"),
     ValueError, "m holds non-finite values"),
    ("NaN dmfx CSR", lambda: as_csr(csr_with(values=torch.full((NNZ,), float("nan"))), name="m"),
     ValueError, "m holds non-finite values"),
    ("beyond float32", lambda: as_csr(sp.csr_matrix(([1e39, 1.0], ([0, 0], [0, 1])),
                                                    shape=(1, 2)), name="m"),
     ValueError, "m holds non-finite values .*, or values beyond torch.float32's range"),
    ("negative id", lambda: as_csr(csr_with(indices=negative_id()), name="m"),
     ValueError, r"m has negative column ids \(smallest -1\)"),
    ("negative id scipy", lambda: as_csr(
        sp.csr_matrix((np.ones(2), np.array([-2, 1]), np.array([0, 2])), shape=(1, 3)), name="m"),
     ValueError, "m has negative column ids"),
    ("negative id transposed", lambda: as_csr(
        sp.csc_matrix((np.ones(2), np.array([-2, 1]), np.array([0, 2])), shape=(3, 1)),
        transpose=True, name="m"),
     ValueError, "m has negative row ids"),
    ("negative id torch COO", lambda: as_csr(
        torch.sparse_coo_tensor([[0], [-1]], [1.0], (2, 2)), name="m"),
     ValueError, "m has row or column ids outside its shape"),
    ("id out of range", lambda: as_csr(csr_with(shape=(7, 4)), name="m"),
     ValueError, "m has column ids up to 4, outside its 4 columns"),
    ("indptr not from 0", lambda: as_csr(csr_with(indptr=csr_with().indptr + 1), name="m"),
     ValueError, rf"m: indptr must run from 0 to nnz \({NNZ}\)"),
    ("indptr decreasing", lambda: as_csr(
        csr_with(indptr=torch.tensor([0, 2, 0, 6, 7, 7, NNZ, NNZ])), name="m"),
     ValueError, "m: indptr must be non-decreasing"),
    ("float indices", lambda: as_csr(csr_with(indices=csr_with().indices.double()), name="m"),
     TypeError, "m: indices must be int32 or int64"),
    ("complex values", lambda: as_csr(sp.csr_matrix(DENSE.astype(np.complex64)), name="m"),
     TypeError, "m: values must be real numbers"),
    ("values length", lambda: as_csr(csr_with(values=torch.ones(3)), name="m"),
     ValueError, rf"m: values must be 1-D with one entry per index \({NNZ}\)"),
    ("dtype", lambda: as_csr(sp.csr_matrix(DENSE), dtype=torch.int64),
     TypeError, "dtype must be torch.float32 or torch.float64"),
    ("index_dtype", lambda: as_csr(sp.csr_matrix(DENSE), index_dtype=torch.int16),
     ValueError, "index_dtype must be torch.int32 or torch.int64"),
    ("int32 overflow", lambda: as_csr(CSR(torch.zeros(2, dtype=torch.long),
                                          torch.zeros(0, dtype=torch.long), torch.zeros(0),
                                          (1, 2**31)), index_dtype=torch.int32),
     ValueError, "int32 indices cannot address"),
]


@pytest.mark.parametrize("thunk,error,message", [pytest.param(*case[1:], id=case[0])
                                                 for case in BAD])
def test_bad_input_raises_naming_the_argument(thunk, error, message):
    with pytest.raises(error, match=message):
        thunk()


def test_bad_input_to_the_data_layer_and_the_layer():
    with pytest.raises(ValueError, match="matrix holds non-finite values"):
        Interactions.from_scipy(sp.csr_matrix(([np.nan], ([0], [1])), shape=(2, 2)))
    with pytest.raises(ValueError, match="matrix has negative column ids"):
        Interactions.from_scipy(csr_with(indices=negative_id()))
    layer = SparseRowLinear(5, 2)
    with pytest.raises(ValueError, match="SparseRowLinear: matrix holds non-finite values"):
        layer.bind(sp.csr_matrix(([np.nan], ([0], [1])), shape=(2, 5)))
    with pytest.raises(ValueError, match="SparseRowLinear: matrix has negative column ids"):
        layer.bind(csr_with(indices=negative_id()))
    with pytest.raises(ValueError, match="SparseRowLinear: matrix has column ids up to 4"):
        SparseRowLinear(4, 2).bind(dmfx_input(with_shape=False))
    with pytest.raises(ValueError, match="SparseRowLinear: matrix has 5 columns but the layer's "
                                         "in_features is 4"):
        SparseRowLinear(4, 2)(sp.csr_matrix(DENSE), torch.tensor([1]))
    with pytest.raises(TypeError, match="SparseRowLinear: matrix values are torch.float64 but "
                                        "the layer's weight is torch.float32"):
        layer(sp.csr_matrix(DENSE.astype(np.float64)), torch.tensor([1]))
    assert not layer.bound  # refused binds bind nothing


# ------------------------------------------------------------------- SparseRowLinear


@pytest.mark.parametrize("build", every_input())
def test_sparse_row_linear_reads_every_format(build):
    torch.manual_seed(0)
    linear = nn.Linear(5, 3, bias=False)
    layer = SparseRowLinear.from_linear(linear)
    rows = torch.tensor([0, 2, 1, 6, 2, 5])
    want = linear(torch.from_numpy(DENSE)[rows])
    torch.testing.assert_close(layer(build(), rows), want)
    torch.testing.assert_close(layer.bind(build())(rows), want)


def test_bind_shares_a_csr_already_in_the_weights_dtype_and_device():
    m = sp.csr_matrix(DENSE)
    layer = SparseRowLinear(5, 2).bind(m)
    assert shares(layer.indptr, m.indptr) and shares(layer.values, m.data)
    layer64 = SparseRowLinear(5, 2, dtype=torch.float64).bind(m)
    assert not shares(layer64.values, m.data) and layer64.values.dtype == torch.float64


# ---------------------------------------------------------------------------- pandas


def test_as_csr_points_a_dataframe_to_from_pandas():
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    with pytest.raises(TypeError, match="Interactions.from_pandas"):
        as_csr(pd.DataFrame({"user": [0], "item": [1], "rating": [1.0]}), name="m")


@pytest.mark.parametrize("string_ids", [False, True], ids=["int-ids", "string-ids"])
def test_pandas_round_trip(string_ids):
    pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    data = synthetic(30, 25, 200, seed=2)
    if string_ids:
        data = Interactions.from_arrays(np.char.add("u", data.user_ids[data.users].astype(str)),
                                        np.char.add("i", data.item_ids[data.items].astype(str)),
                                        data.ratings, data.timestamps)
    df = data.to_pandas()
    assert list(df.columns) == ["user", "item", "rating", "timestamp"] and len(df) == data.nnz
    back = Interactions.from_pandas(df, timestamp="timestamp")
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
    no_time = Interactions.from_pandas(df)
    assert no_time.timestamps is None and no_time.nnz == data.nnz
    # the id maps hold only ids with an interaction: a table has no row for the others
    sparse = Interactions.from_scipy(sp.csr_matrix(DENSE))
    assert Interactions.from_pandas(sparse.to_pandas()).num_users == 4


def test_from_pandas_columns_duplicates_and_dtypes():
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    df = pd.DataFrame({
        "uid": pd.array([10, 20, 10, 10], dtype="Int64"),  # nullable, without missing values
        "movie": pd.Categorical(["b", "a", "a", "b"]),
        "stars": [4.0, 3.0, 5.0, 1.0],
        "when": [1, 2, 3, 0],
    })
    data = Interactions.from_pandas(df, user="uid", item="movie", rating="stars", timestamp="when")
    assert data.user_ids.tolist() == [10, 20] and data.item_ids.tolist() == ["a", "b"]
    # (10, "b") twice: the latest (when=1, stars 4) supersedes, as in from_arrays
    assert data.nnz == 3
    y = data.to_scipy().toarray()
    assert y[0].tolist() == [5.0, 4.0] and y[1].tolist() == [3.0, 0.0]
    implicit = Interactions.from_pandas(df, user="uid", item="movie", rating=None)
    assert (implicit.ratings == 1.0).all()
    # into the layer, through the data layer's CSR
    layer = SparseRowLinear(data.num_items, 2)
    torch.testing.assert_close(layer(data.csr(), torch.tensor([0, 1])),
                               torch.from_numpy(y) @ layer.weight)


# Hand-computed: 10**9 s after the epoch is 2001-09-09 01:46:40 UTC, a day is 86,400 s, and a
# quarter second before the epoch rounds down to -1.  The same instants as wall-clock times in
# UTC and in Asia/Kolkata (UTC+05:30, no daylight saving).
_EPOCH_SECONDS = [10**9 + 1, 86_400, -1, 10**9]
_WALL_CLOCK = {
    "UTC": ["2001-09-09 01:46:41", "1970-01-02 00:00:00", "1969-12-31 23:59:59.25",
            "2001-09-09 01:46:40"],
    "Asia/Kolkata": ["2001-09-09 07:16:41", "1970-01-02 05:30:00", "1970-01-01 05:29:59.25",
                     "2001-09-09 07:16:40"],
}


@pytest.mark.parametrize("unit", ["ns", "ms"])
@pytest.mark.parametrize("tz", [None, "UTC", "Asia/Kolkata"], ids=["naive", "utc", "kolkata"])
def test_from_pandas_reads_datetime_timestamps_as_seconds_since_the_epoch(unit, tz):
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    when = pd.to_datetime(_WALL_CLOCK[tz or "UTC"], format="ISO8601").as_unit(unit)
    if tz is not None:
        when = when.tz_localize(tz)
    assert str(when.dtype) == (f"datetime64[{unit}]" if tz is None else
                               f"datetime64[{unit}, {tz}]")
    # rows 0 and 3 are one pair: the later by timestamp (row 0) is kept, not the last row
    df = pd.DataFrame({"user": [1, 2, 3, 1], "item": [5, 6, 7, 5], "rating": [4.0, 3.0, 2.0, 1.0],
                       "when": when, "seconds": _EPOCH_SECONDS})
    data = Interactions.from_pandas(df, timestamp="when")
    assert data.timestamps.dtype == np.int64
    assert data.timestamps.tolist() == [10**9 + 1, 86_400, -1]
    assert data.ratings.tolist() == [4.0, 3.0, 2.0]
    as_ints = Interactions.from_pandas(df, timestamp="seconds")
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(data, name), getattr(as_ints, name), err_msg=name)
    # a round trip gives the integer seconds back, not datetimes
    assert data.to_pandas()["timestamp"].tolist() == [10**9 + 1, 86_400, -1]


@pytest.mark.parametrize("tz", [None, "UTC"], ids=["naive", "utc"])
def test_from_pandas_refuses_nat_timestamps_naming_the_column(tz):
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    when = pd.to_datetime(["2001-09-09 01:46:40", None], utc=tz is not None)
    df = pd.DataFrame({"user": [1, 2], "item": [3, 4], "rating": [1.0, 2.0], "when": when})
    with pytest.raises(ValueError, match="timestamp='when': column 'when' has 1 missing value"):
        Interactions.from_pandas(df, timestamp="when")
    # durations are not instants: refused, listing the kinds a timestamp column may hold
    df["when"] = pd.to_timedelta([1, 2], unit="s")
    with pytest.raises(TypeError, match=r"timestamp='when': column 'when' must hold integers or "
                                        r"datetimes \(datetime64, naive or tz-aware\), got "
                                        "dtype timedelta64"):
        Interactions.from_pandas(df, timestamp="when")


@pytest.mark.parametrize("dtype", ["bool", "boolean"])
def test_from_pandas_reads_bool_ratings_as_one_and_zero(dtype):
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    df = pd.DataFrame({"user": [1, 1, 2, 3], "item": [5, 6, 5, 7],
                       "liked": pd.array([True, False, True, False], dtype=dtype),
                       "stars": [1.0, 0.0, 1.0, 0.0]})
    data = Interactions.from_pandas(df, rating="liked")
    numbers = Interactions.from_pandas(df, rating="stars")
    for name in ("user_ids", "item_ids", "users", "items", "ratings"):
        np.testing.assert_array_equal(getattr(data, name), getattr(numbers, name), err_msg=name)
    # False is an interaction rated 0, as a numeric 0 is: kept, not dropped
    assert data.ratings.dtype == np.float32 and data.ratings.tolist() == [1.0, 0.0, 1.0, 0.0]
    df["liked"] = pd.array([True, None, True, False], dtype="boolean")
    with pytest.raises(ValueError, match="rating='liked': column 'liked' has 1 missing value"):
        Interactions.from_pandas(df, rating="liked")


def test_from_pandas_bad_input_names_the_argument():
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    good = {"user": [1, 2], "item": [3, 4], "rating": [1.0, 2.0]}
    cases = [
        (pd.DataFrame({"user": [1], "rating": [1.0]}), {}, KeyError,
         r"item='item': df has no column 'item' \(its columns: 'user', 'rating'\)"),
        (pd.DataFrame(good), {"timestamp": "ts"}, KeyError, "timestamp='ts': df has no column"),
        (pd.DataFrame(dict(good, rating=[1.0, np.nan])), {}, ValueError,
         "rating='rating': column 'rating' has 1 missing value"),
        (pd.DataFrame(dict(good, user=pd.array([1, None], dtype="Int64"))), {}, ValueError,
         "user='user': column 'user' has 1 missing value"),
        (pd.DataFrame(dict(good, rating=[1.0, np.inf])), {}, ValueError,
         "rating='rating': column 'rating' holds non-finite ratings"),
        (pd.DataFrame(dict(good, item=[3.0, 4.0])), {}, TypeError,
         "item='item': column 'item' must hold integers or strings, got dtype float64"),
        (pd.DataFrame(dict(good, rating=["1", "2"])), {}, TypeError,
         "rating='rating': column 'rating' must hold numbers or booleans, got dtype"),
    ]
    for df, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            Interactions.from_pandas(df, **kwargs)
    with pytest.raises(TypeError, match="df must be a pandas DataFrame, got dict"):
        Interactions.from_pandas(good)


def test_ids_beyond_int64_raise_a_value_error_not_a_recursion_error():
    """Python ints that numpy cannot hold as int64/uint64 (or only as float64) are refused with
    the advice to pass strings, in from_arrays and from_pandas alike."""
    above = r"holds ids above 2\*\*63 - 1 \({}\), which int64 ids cannot hold: pass them as strings"
    for ids, message in (([2**70, 1], above.format(2**70)),
                         ([2**64, 1], above.format(2**64)),
                         ([2**63 + 3, 5], above.format(2**63 + 3)),  # numpy: float64
                         ([-2**70, 1], rf"holds ids below -2\*\*63 \({-2**70}\)")):
        with pytest.raises(ValueError, match="users_raw " + message):
            Interactions.from_arrays(ids, [1, 2], [1.0, 2.0])
        with pytest.raises(ValueError, match="items_raw " + message):
            Interactions.from_arrays([1, 2], np.array(ids, dtype=object), [1.0, 2.0])
    fits = Interactions.from_arrays([-2**63, 2**63 - 1], [1, 2], [1.0, 2.0])
    assert fits.user_ids.tolist() == [-2**63, 2**63 - 1]
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    for ids in ([2**64, 1], np.array([2**63 + 3, 5], dtype=object),
                np.array([2**63 + 3, 5], dtype=np.uint64)):
        df = pd.DataFrame({"uid": ids, "item": [1, 2], "rating": [1.0, 2.0]})
        with pytest.raises(ValueError, match=r"user='uid': column 'uid' holds ids above 2\*\*63"):
            Interactions.from_pandas(df, user="uid")


def test_timestamps_beyond_int64_are_refused_not_wrapped():
    """uint64 timestamps above 2**63 - 1 would wrap to negative int64 (and reorder which
    duplicate is the latest): refused, naming the argument."""
    stamps = np.array([2**63 + 5, 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"timestamps holds values above 2\*\*63 - 1"):
        Interactions.from_arrays([1, 1], [1, 1], [1.0, 2.0], stamps)
    fits = Interactions.from_arrays([1, 2], [1, 2], [1.0, 2.0],
                                    np.array([2**63 - 1, 0], dtype=np.uint64))
    assert fits.timestamps.tolist() == [2**63 - 1, 0]
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    df = pd.DataFrame({"user": [1, 1], "item": [1, 1], "rating": [1.0, 2.0], "when": stamps})
    with pytest.raises(ValueError, match=r"timestamp='when': column 'when' holds values above "
                                         r"2\*\*63 - 1"):
        Interactions.from_pandas(df, timestamp="when")


def test_from_pandas_errors_name_its_arguments_not_from_arrays_parameters():
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'dmfx[pandas]')")
    good = {"uid": [1, 2], "movie": [3, 4], "stars": [1.0, 2.0]}
    columns = {"user": "uid", "item": "movie", "rating": "stars"}
    cases = [
        (dict(good, uid=np.array([1, "1"], dtype=object)), TypeError,
         "user='uid': column 'uid' must hold integers or strings, one kind for all, got int, str"),
        (dict(good, movie=np.array([2**64, 4], dtype=object)), ValueError,
         r"item='movie': column 'movie' holds ids above 2\*\*63 - 1"),
        # finite in float64, infinite in the float32 ratings are stored as
        (dict(good, stars=[1e39, 1.0]), ValueError,
         "rating='stars': column 'stars' holds ratings beyond float32's range"),
    ]
    for data, error, message in cases:
        with pytest.raises(error, match=message):
            Interactions.from_pandas(pd.DataFrame(data), **columns)
    with pytest.raises(ValueError, match="ratings holds ratings beyond float32's range"):
        Interactions.from_arrays([1, 2], [3, 4], [1e39, 1.0])


def test_without_pandas_the_pandas_methods_say_how_to_install_it():
    script = textwrap.dedent("""
        import importlib.abc, sys

        class NoPandas(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "pandas" or name.startswith("pandas."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoPandas())
        from dmfx.data import Interactions, synthetic
        for call in (lambda: synthetic(5, 5, 10, seed=0).to_pandas(),
                     lambda: Interactions.from_pandas(None)):
            try:
                call()
            except ImportError as error:
                print(error)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT)}).stdout
    assert out.splitlines() == [
        f"Interactions.{name} needs pandas, which is not installed: pip install pandas "
        "(or pip install 'dmfx[pandas]')" for name in ("to_pandas", "from_pandas")]
