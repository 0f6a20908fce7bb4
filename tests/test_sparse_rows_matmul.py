"""sparse_rows_matmul against its reference twin, its gradients, and its errors."""
import pytest
import torch

from dmfx import ops, reference
from conftest import CUDA_READY, random_csr


def make_case(device, index_dtype, width=7, num_rows=12, num_cols=9, batch=20, seed=0,
              dtype=torch.float64):
    csr = random_csr(num_rows, num_cols, seed=seed, index_dtype=index_dtype, dtype=dtype,
                     device=device)
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randint(num_rows, (batch,), generator=g)
    rows[:4] = torch.tensor([0, 1, 1, 3])  # empty row, one-nnz row twice, full row
    weight = torch.randn(num_cols, width, generator=g, dtype=dtype)
    return csr, rows.to(index_dtype).to(device), weight.to(device)


@pytest.mark.parametrize("width", [1, 3, 32, 33, 70])
@pytest.mark.parametrize("with_values", [True, False], ids=["values", "binary"])
def test_matches_reference_forward_and_backward(device, index_dtype, width, with_values):
    csr, rows, weight = make_case(device, index_dtype, width=width, seed=width)
    values = csr.values.clone().requires_grad_() if with_values else None
    weight.requires_grad_()
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight)
    ref_values = values.detach().clone().requires_grad_() if with_values else None
    ref_weight = weight.detach().clone().requires_grad_()
    ref = reference.sparse_rows_matmul(csr.indptr, csr.indices, ref_values, rows, ref_weight)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    if with_values:
        torch.testing.assert_close(values.grad, ref_values.grad)


@pytest.mark.parametrize("width", [70, 130, 300])
def test_cpu_thread_tiles_agree(width):
    """Threads split the work into column x row tiles (csrc/cpu/parallel.h); every
    thread count must give the reference's result, bit for bit the same across counts."""
    csr, rows, weight = make_case("cpu", torch.int64, width=width, num_rows=300, num_cols=500,
                                  batch=600, seed=width, dtype=torch.float32)
    grad = torch.randn(rows.numel(), width, generator=torch.Generator().manual_seed(width))
    ref_weight = weight.double().requires_grad_()
    ref = reference.sparse_rows_matmul(csr.indptr, csr.indices, csr.values.double(), rows,
                                       ref_weight)
    ref.backward(grad.double())
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            w = weight.clone().requires_grad_()
            out = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows, w)
            out.backward(grad)
            # float32 sums of up to 500 products (rows) and 600 (columns), outputs up to ~60:
            # rounding alone reaches ~1e-5 when no product is fused into an FMA (setup.py).
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(w.grad.double(), ref_weight.grad, rtol=1e-5, atol=1e-4)
            results.append((out, w.grad))
    finally:
        torch.set_num_threads(threads)
    for count, (out, grad_weight) in zip((2, 3), results[1:]):
        for name, x, x1 in (("out", out, results[0][0]), ("weight.grad", grad_weight, results[0][1])):
            differ = (x != x1).nonzero()
            assert differ.numel() == 0, (
                f"{name} with {count} threads differs from 1 thread at {differ.size(0)} entries, "
                f"columns {sorted(set(differ[:, 1].tolist()))[:40]}, "
                f"largest difference {(x - x1).abs().max().item():.3g}")


def test_matches_dense_product(device):
    csr, rows, weight = make_case(device, torch.int64)
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows, weight)
    expected = csr.dense().to(device)[rows.long()] @ weight
    torch.testing.assert_close(out, expected)


def test_float32_matches_float64_reference(device, index_dtype):
    csr, rows, weight = make_case(device, index_dtype, width=65, num_rows=40, num_cols=300,
                                  batch=64, dtype=torch.float32)
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows, weight)
    ref = reference.sparse_rows_matmul(csr.indptr, csr.indices, csr.values.double(), rows,
                                       weight.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradcheck(device, index_dtype):
    csr, rows, weight = make_case(device, index_dtype, width=5, num_rows=6, num_cols=5, batch=7)
    values = csr.values.clone().requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, w: ops.sparse_rows_matmul(csr.indptr, csr.indices, v, rows, w), (values, weight)
    )


@pytest.mark.parametrize("with_values", [True, False], ids=["values", "binary"])
def test_opcheck(device, index_dtype, with_values):
    csr, rows, weight = make_case(device, index_dtype, width=6)
    values = csr.values.clone().requires_grad_() if with_values else None
    torch.library.opcheck(
        torch.ops.dmfx.sparse_rows_matmul.default,
        (csr.indptr, csr.indices, values, rows, weight.requires_grad_(), True),
    )


def test_backward_ops_opcheck(device):
    csr, rows, weight = make_case(device, torch.int64)
    grad = torch.randn(rows.numel(), weight.shape[1], dtype=weight.dtype, device=device)
    torch.library.opcheck(
        torch.ops.dmfx.sparse_rows_matmul_backward_weight.default,
        (csr.indptr, csr.indices, csr.values, rows, grad, weight.shape[0], True),
    )
    torch.library.opcheck(
        torch.ops.dmfx.sparse_rows_matmul_backward_values.default,
        (csr.indptr, csr.indices, rows, weight, grad, True),
    )


def assert_backward_matches(out, ref, leaves, seed):
    """One random upstream gradient through ``out`` and its reference ``ref``: each (leaf,
    reference leaf) of ``leaves`` then holds the same gradient."""
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=out.dtype).to(out.device)
    out.backward(grad)
    ref.backward(grad)
    for leaf, ref_leaf in leaves:
        torch.testing.assert_close(leaf.grad, ref_leaf.grad)


def every_other(t):
    """``t`` as a strided view: every other element of a longer tensor, whose elements between
    hold -1 (a bad id, a wrong value), so a kernel that ignores the stride reads them."""
    return torch.stack([t, torch.full_like(t, -1)], 1).view(-1)[::2]


def test_non_contiguous_inputs(device, index_dtype):
    """Every input may be a strided view, the upstream gradient of the backward included: the
    kernels read through the strides (or copy), forward and both gradients."""
    csr, rows, weight = make_case(device, index_dtype, width=8)
    weight_t = weight.t().contiguous().t().requires_grad_()  # column-major leaf
    rows_strided = every_other(rows)
    values_strided = every_other(csr.values).requires_grad_()
    indptr_strided, indices_strided = every_other(csr.indptr), every_other(csr.indices)
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(8, rows.numel(), generator=g, dtype=weight.dtype).to(device).t()
    assert not any(t.is_contiguous() for t in (weight_t, rows_strided, values_strided,
                                                indptr_strided, indices_strided, grad))
    out = ops.sparse_rows_matmul(indptr_strided, indices_strided, values_strided, rows_strided,
                                 weight_t)
    ref_values = csr.values.clone().requires_grad_()
    ref_weight = weight.clone().requires_grad_()
    ref = reference.sparse_rows_matmul(csr.indptr, csr.indices, ref_values, rows, ref_weight)
    torch.testing.assert_close(out, ref)
    out.backward(grad)
    ref.backward(grad.contiguous())
    torch.testing.assert_close(weight_t.grad, ref_weight.grad)
    torch.testing.assert_close(values_strided.grad, ref_values.grad)


def test_mixed_index_dtypes_for_rows(device):
    csr, rows, weight = make_case(device, torch.int64)
    out32 = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows.int(), weight)
    out64 = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows, weight)
    torch.testing.assert_close(out32, out64)


@pytest.mark.parametrize("csr_dtype, rows_dtype", [(torch.int32, torch.int64),
                                                    (torch.int64, torch.int32)],
                         ids=["int32_csr-int64_rows", "int64_csr-int32_rows"])
def test_rows_index_dtype_need_not_be_the_csrs(device, csr_dtype, rows_dtype):
    """rows has its own index dtype, either way round: forward and both gradients."""
    csr, rows, weight = make_case(device, csr_dtype, width=5, seed=11)
    rows = rows.to(rows_dtype)
    values = csr.values.clone().requires_grad_()
    weight.requires_grad_()
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight)
    ref_values = values.detach().clone().requires_grad_()
    ref_weight = weight.detach().clone().requires_grad_()
    ref = reference.sparse_rows_matmul(csr.indptr.long(), csr.indices.long(), ref_values,
                                       rows.long(), ref_weight)
    torch.testing.assert_close(out, ref)
    assert_backward_matches(out, ref, [(weight, ref_weight), (values, ref_values)], seed=12)


def test_batch_of_one_and_empty_batch(device):
    csr, rows, weight = make_case(device, torch.int64)
    one = ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows[3:4], weight)
    torch.testing.assert_close(one[0], csr.dense().to(device)[3] @ weight)
    values = csr.values.clone().requires_grad_()
    weight.requires_grad_()
    empty = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows[:0], weight)
    assert empty.shape == (0, weight.shape[1])
    # The dense backward of an empty batch: gradients of zeros, in the inputs' shapes and dtype.
    empty.backward(torch.empty_like(empty))
    torch.testing.assert_close(weight.grad, torch.zeros_like(weight), rtol=0, atol=0)
    torch.testing.assert_close(values.grad, torch.zeros_like(values), rtol=0, atol=0)


def test_matrix_without_entries(device):
    indptr = torch.zeros(4, dtype=torch.int64, device=device)
    indices = torch.zeros(0, dtype=torch.int64, device=device)
    weight = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    rows = torch.tensor([0, 2, 2], device=device)
    out = ops.sparse_rows_matmul(indptr, indices, None, rows, weight)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("wrt", ["values", "weight", "both"])
def test_gradient_of_one_input_only(device, wrt):
    """The C++ autograd maps its input edges with values optional: each gradient asked for is
    right whichever of the two requires it."""
    csr, rows, weight = make_case(device, torch.int64, width=9, seed=7)
    values = csr.values.clone().requires_grad_(wrt in ("values", "both"))
    weight.requires_grad_(wrt in ("weight", "both"))
    ref_values = values.detach().clone().requires_grad_(values.requires_grad)
    ref_weight = weight.detach().clone().requires_grad_(weight.requires_grad)
    inputs = [t for t in (values, weight) if t.requires_grad]
    ref_inputs = [t for t in (ref_values, ref_weight) if t.requires_grad]
    grad = torch.randn(rows.numel(), 9, dtype=weight.dtype, device=device)
    got = torch.autograd.grad(
        ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight), inputs, grad)
    want = torch.autograd.grad(
        reference.sparse_rows_matmul(csr.indptr, csr.indices, ref_values, rows, ref_weight),
        ref_inputs, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_repeated_rows_accumulate_gradients(device):
    csr, _, weight = make_case(device, torch.int64)
    rows = torch.tensor([3, 3, 3], device=device)
    values = csr.values.clone().requires_grad_()
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight)
    out.sum().backward()
    begin, end = int(csr.indptr[3]), int(csr.indptr[4])
    expected = 3 * weight[csr.indices[begin:end].long()].sum(1)
    torch.testing.assert_close(values.grad[begin:end], expected)


# ------------------------------------------------------------------------------- bad input


def call(csr, rows, weight, values="default", **kwargs):
    values = csr.values if values == "default" else values
    return ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight, **kwargs)


@pytest.fixture
def case(device):
    return make_case(device, torch.int64)


def test_index_out_of_range_names_indices(case):
    csr, rows, weight = case
    bad = csr._replace(indices=csr.indices.clone())
    bad.indices[-1] = weight.shape[0]
    with pytest.raises(IndexError, match=r"indices\[\d+\] = 9 is out of range"):
        call(bad, rows, weight)


def test_negative_index_names_indices(case):
    csr, rows, weight = case
    bad = csr._replace(indices=csr.indices.clone())
    bad.indices[-1] = -1
    with pytest.raises(IndexError, match=r"indices\[\d+\] = -1"):
        call(bad, rows, weight)


@pytest.mark.parametrize("row", [12, -1])
def test_row_out_of_range_names_rows(case, row):
    csr, rows, weight = case
    rows = rows.clone()
    rows[5] = row
    with pytest.raises(IndexError, match=rf"rows\[5\] = {row} is out of range"):
        call(csr, rows, weight)


def test_indptr_not_monotone(case):
    csr, rows, weight = case
    indptr = csr.indptr.clone()
    indptr[4] = indptr[3] - 1  # row 3 (always in the batch) now ends before it starts
    with pytest.raises(ValueError, match=r"indptr is not a valid CSR row pointer at row 3: "
                                         rf"indptr\[4\] = {int(indptr[4])},"):
        call(csr._replace(indptr=indptr), rows, weight)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("sparse_grad", [False, True], ids=["dense_grad", "sparse_grad"])
def test_rows_sharing_entries_are_refused_by_the_values_gradient(device, index_dtype, sparse_grad):
    # indptr decreases between rows 1 and 2: rows 0 and 2 are each valid, and share entries 1-3.
    indptr = torch.tensor([0, 4, 1, 5], dtype=index_dtype, device=device)
    indices = torch.tensor([0, 1, 2, 0, 1], dtype=index_dtype, device=device)
    values = torch.rand(5, dtype=torch.float64, device=device, requires_grad=True)
    rows = torch.tensor([2, 0, 2], device=device)
    weight = torch.randn(3, 4, dtype=torch.float64, device=device)
    # The forward reads each row's own range, and so does the weight gradient.
    out = ops.sparse_rows_matmul(indptr, indices, values, rows, weight, sparse_grad=sparse_grad)
    torch.testing.assert_close(
        out, reference.sparse_rows_matmul(indptr, indices, values.detach(), rows, weight))
    with pytest.raises(ValueError, match=r"indptr decreases between rows 0 and 2: indptr\[1\] "
                                         r"= 4 > indptr\[2\] = 1 \(rows can then share entries"):
        out.sum().backward()
    # Rows that are apart pass, repeated ones included (a run of one row is one writer).
    ops.sparse_rows_matmul(indptr, indices, values, rows[[0, 0]], weight,
                           sparse_grad=sparse_grad).sum().backward()
    # Without validation nothing is checked (the CPU kernel adds the rows' parts).
    values.grad = None
    ops.sparse_rows_matmul(indptr, indices, values, rows, weight, validate=False,
                           sparse_grad=sparse_grad).sum().backward()
    if device.type == "cpu":
        ref_values = values.detach().clone().requires_grad_()
        reference.sparse_rows_matmul(indptr, indices, ref_values, rows, weight).sum().backward()
        torch.testing.assert_close(values.grad, ref_values.grad)


@pytest.mark.parametrize("entry,value", [(4, -2), (4, 2**40), (3, -2), (3, 2**40)])
def test_bad_indptr_message_names_the_entry_at_fault(case, entry, value):
    """Row 3, the first row the batch reads past the empty and one-entry rows, starts at
    indptr[3] and ends at indptr[4]: the message quotes the broken one, from every op."""
    csr, rows, weight = case
    indptr = csr.indptr.clone()
    indptr[entry] = value
    grad = torch.randn(rows.numel(), weight.shape[1], dtype=weight.dtype, device=weight.device)
    for op in raise_all_three(indptr, csr.indices, csr.values, rows, weight, grad):
        with pytest.raises(ValueError, match=rf"at row 3: indptr\[{entry}\] = {value}, and indptr "
                                             r"must be non-decreasing within \[0, nnz = \d+\]$"):
            op()


def test_indptr_not_matching_indices(case):
    csr, rows, weight = case
    with pytest.raises(ValueError, match=r"indptr\[12\] = \d+ but must be \d+"):
        call(csr._replace(indices=csr.indices[:-1], values=csr.values[:-1]), rows, weight)


def test_values_length_mismatch(case):
    csr, rows, weight = case
    with pytest.raises(ValueError, match="values must be 1-D with one entry per index"):
        call(csr, rows, weight, values=csr.values[:-1])


def test_dtype_errors_name_the_argument(case):
    csr, rows, weight = case
    with pytest.raises(TypeError, match="indices and indptr must share one index dtype"):
        call(csr._replace(indices=csr.indices.int()), rows, weight)
    with pytest.raises(TypeError, match="rows must be an int32 or int64 tensor"):
        call(csr, rows.double(), weight)
    with pytest.raises(TypeError, match="weight must be float32 or float64"):
        call(csr, rows, weight.half(), values=None)
    with pytest.raises(TypeError, match=r"values \(Float\) must have the dtype of weight"):
        call(csr, rows, weight, values=csr.values.float())


def test_shape_errors_name_the_argument(case):
    csr, rows, weight = case
    with pytest.raises(ValueError, match="weight must be 2-D"):
        call(csr, rows, weight[:, 0])
    with pytest.raises(ValueError, match="rows must be 1-D"):
        call(csr, rows.view(4, 5), weight)
    with pytest.raises(ValueError, match="indptr must have num_rows"):
        call(csr._replace(indptr=csr.indptr[:0]), rows, weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_device_mismatch_names_the_argument():
    csr, rows, weight = make_case("cpu", torch.int64)
    with pytest.raises(ValueError, match="rows is on cuda:0 but weight is on cpu"):
        call(csr, rows.cuda(), weight)


@pytest.mark.parametrize("name", ["indptr", "indices", "values", "rows", "weight"])
def test_meta_mixed_with_cpu_names_the_argument(name):
    """The dispatcher sends a call with any meta tensor to the fake kernel, which must refuse the
    CPU tensors beside it rather than return uninitialised memory."""
    csr, rows, weight = make_case("cpu", torch.int64)
    args = dict(indptr=csr.indptr, indices=csr.indices, values=csr.values, rows=rows,
                weight=weight)
    args[name] = args[name].to("meta")
    message = ("indptr is on cpu but weight is on meta" if name == "weight"
               else f"{name} is on meta but weight is on cpu")
    with pytest.raises(ValueError, match=message):
        ops.sparse_rows_matmul(*args.values())


def test_backward_ops_meta_mixed_with_cpu_name_the_argument():
    csr, rows, weight = make_case("cpu", torch.int64)
    grad = torch.randn(rows.numel(), weight.shape[1], dtype=weight.dtype)
    with pytest.raises(ValueError, match="grad_out is on meta but weight is on cpu"):
        torch.ops.dmfx.sparse_rows_matmul_backward_values(csr.indptr, csr.indices, rows, weight,
                                                          grad.to("meta"), True)
    with pytest.raises(ValueError, match="values is on meta but grad_out is on cpu"):
        torch.ops.dmfx.sparse_rows_matmul_backward_weight(
            csr.indptr, csr.indices, csr.values.to("meta"), rows, grad, weight.shape[0], True)


def test_without_validation_bad_entries_contribute_nothing(case):
    csr, rows, weight = case
    bad = csr._replace(indices=csr.indices.clone())
    bad.indices[-1] = 10**6
    out = call(bad, rows, weight, validate=False)
    kept = csr._replace(values=csr.values.clone())
    kept.values[-1] = 0
    torch.testing.assert_close(out, call(kept, rows, weight))


def bad_entries_case(device):
    """Without validation, every kind of bad entry at once: rows -2 (not the second last), -1
    and 12 (out of range), row 11 running past nnz, and the columns 10**6 and -3 in row 3."""
    csr, rows, weight = make_case(device, torch.int64, width=4, seed=5)
    rows = torch.cat([rows, torch.tensor([-2, 11, -1, 12, 2], device=device)])
    indptr, indices = csr.indptr.clone(), csr.indices.clone()
    indptr[12] += 5
    bad_columns = [int(indptr[3]), int(indptr[3]) + 2]
    indices[bad_columns[0]], indices[bad_columns[1]] = 10**6, -3
    return csr._replace(indptr=indptr, indices=indices), rows, weight, bad_columns


def valid_twin(csr, rows, bad_columns):
    """What the bad entries must amount to: the bad columns as column 0 with value 0, and the
    bad rows read as row 0 (empty)."""
    indptr, indices, values = csr.indptr.clone(), csr.indices.clone(), csr.values.clone()
    indptr[12] = indices.numel()
    indices[bad_columns] = 0
    values[bad_columns] = 0
    rows = torch.where((rows < 0) | (rows >= 11), 0, rows)
    return csr._replace(indptr=indptr, indices=indices, values=values), rows


@pytest.mark.parametrize("sparse_grad", [False, True], ids=["dense", "sparse"])
def test_without_validation_bad_entries_get_no_gradient(device, sparse_grad):
    """The sparse weight gradient keeps the promise the kernels keep: a bad row or column
    contributes nothing (and the row-sparse gradient holds only rows of the table)."""
    csr, rows, weight, bad_columns = bad_entries_case(device)
    twin, twin_rows = valid_twin(csr, rows, bad_columns)
    upstream = torch.randn(rows.numel(), weight.shape[1], dtype=weight.dtype, device=device)
    grads = []
    for c, r, validate in ((csr, rows, False), (twin, twin_rows, True)):
        w = weight.clone().requires_grad_()
        v = c.values.clone().requires_grad_()
        out = ops.sparse_rows_matmul(c.indptr, c.indices, v, r, w, validate=validate,
                                     sparse_grad=sparse_grad and not validate)
        grads.append((out.detach(), *torch.autograd.grad((out * upstream).sum(), (w, v))))
    (out, grad_w, grad_v), (twin_out, twin_grad_w, twin_grad_v) = grads
    torch.testing.assert_close(out, twin_out)
    if sparse_grad:
        assert grad_w.layout == torch.sparse_coo and grad_w.is_coalesced()
        # torch's own invariant check: every stored row inside the table
        torch.sparse_coo_tensor(grad_w.indices(), grad_w.values(), grad_w.shape,
                                check_invariants=True)
        r = twin_rows.long().cpu()
        indptr, indices = twin.indptr.long().cpu(), twin.indices.long().cpu()
        assert grad_w.indices()[0].cpu().tolist() == sorted(
            {int(indices[k]) for b in r for k in range(indptr[b], indptr[b + 1])
             if twin.values[k] != 0})
        grad_w = grad_w.to_dense()
    torch.testing.assert_close(grad_w, twin_grad_w)
    twin_grad_v[bad_columns] = 0  # the twin zeroed their values, not their gradient
    torch.testing.assert_close(grad_v, twin_grad_v)


def test_batch_entries_skips_bad_rows_as_the_kernels_do(device):
    csr = random_csr(12, 9, seed=0, device=device)
    indptr = csr.indptr.clone()
    indptr[6] = indptr[5] - 1  # row 5 ends before it starts
    rows = torch.tensor([3, -2, -1, 12, 5, 1], device=device)
    local_indptr, columns, values = ops.batch_entries(indptr, csr.indices, csr.values, rows)
    row3, row1 = (slice(int(indptr[r]), int(indptr[r + 1])) for r in (3, 1))
    n3, n1 = row3.stop - row3.start, row1.stop - row1.start
    assert local_indptr.tolist() == [0, n3, n3, n3, n3, n3, n3 + n1]
    torch.testing.assert_close(columns, torch.cat([csr.indices[row3], csr.indices[row1]]))
    torch.testing.assert_close(values, torch.cat([csr.values[row3], csr.values[row1]]))


def test_batch_entries_refuses_more_entries_than_int32_offsets_count():
    # One row of 2**16 entries taken 2**15 + 1 times: 2**31 + 2**16 entries in the batch.
    indptr = torch.tensor([0, 2**16], dtype=torch.int32)
    indices = torch.zeros(2**16, dtype=torch.int32)
    with pytest.raises(ValueError, match="2,147,549,184 entries, more than torch.int32 offsets"):
        ops.batch_entries(indptr, indices, None, torch.zeros(2**15 + 1, dtype=torch.long))


# ----------------------------------------------------------------------- row-sparse weight gradient


@pytest.mark.parametrize("with_values", [True, False], ids=["values", "ones"])
@pytest.mark.parametrize("width", [1, 33])
def test_sparse_grad_equals_dense_grad(device, index_dtype, with_values, width):
    csr, rows, weight = make_case(device, index_dtype, width=width, batch=25, seed=3)
    values = csr.values if with_values else None
    upstream = torch.randn(rows.numel(), width, dtype=torch.float64, device=device)
    dense_w = weight.detach().clone().requires_grad_()
    (ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, dense_w) * upstream).sum().backward()
    sparse_w = weight.detach().clone().requires_grad_()
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, sparse_w, sparse_grad=True)
    (grad,) = torch.autograd.grad((out * upstream).sum(), sparse_w)
    assert grad.layout == torch.sparse_coo and grad.is_coalesced()
    # Exactly the columns of the batch's rows are stored, and the values match the dense gradient.
    r = rows.long().cpu()
    indptr, indices = csr.indptr.long().cpu(), csr.indices.long().cpu()
    touched = sorted({int(c) for b in r for c in indices[indptr[b]:indptr[b + 1]]})
    assert grad.indices()[0].cpu().tolist() == touched
    torch.testing.assert_close(grad.to_dense(), dense_w.grad)


@pytest.mark.parametrize("sparse_grad", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("with_values", [True, False], ids=["values", "ones"])
def test_double_backward_raises(device, sparse_grad, with_values):
    """The backward is not differentiable: create_graph=True through the op raises, rather than
    giving a second derivative of zero (the float64 reference's is not)."""
    csr, rows, weight = make_case(device, torch.int64, width=3, seed=6)
    values = csr.values.clone().requires_grad_() if with_values else None
    weight.requires_grad_()
    args = (csr.indptr, csr.indices, values, rows, weight)
    gw, = torch.autograd.grad(reference.sparse_rows_matmul(*args).pow(2).sum(), weight,
                              create_graph=True)
    if with_values:
        assert torch.autograd.grad(gw.sum(), values)[0].abs().sum() > 0
    message = (r"dmfx.sparse_rows_matmul: double backward \(create_graph=True through this op\) "
               "is not supported")
    for loss in (lambda out: out.pow(2).sum(), lambda out: out.sum()):  # grad needs grad, or not
        out = ops.sparse_rows_matmul(*args, sparse_grad=sparse_grad)
        with pytest.raises(RuntimeError, match=message):
            torch.autograd.grad(loss(out), weight, create_graph=True)
    out = ops.sparse_rows_matmul(*args, sparse_grad=sparse_grad)
    first, = torch.autograd.grad(out.pow(2).sum(), weight)
    torch.testing.assert_close(first.to_dense(), gw.detach())


def test_sparse_grad_of_values_and_empty_batch(device):
    csr, rows, weight = make_case(device, torch.int64, width=5, seed=4)
    values = csr.values.clone().requires_grad_()
    out = ops.sparse_rows_matmul(csr.indptr, csr.indices, values, rows, weight, sparse_grad=True)
    torch.autograd.gradcheck(
        lambda v: ops.sparse_rows_matmul(csr.indptr, csr.indices, v, rows, weight.detach(),
                                         sparse_grad=True), (values,))
    w = weight.detach().clone().requires_grad_()
    ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows[:0], w,
                           sparse_grad=True).sum().backward()
    assert w.grad.layout == torch.sparse_coo and w.grad._nnz() == 0
    ref_values = csr.values.clone().requires_grad_()
    ref = reference.sparse_rows_matmul(csr.indptr, csr.indices, ref_values, rows, weight)
    torch.testing.assert_close(out, ref)
    assert_backward_matches(out, ref, [(values, ref_values)], seed=4)


# ------------------------------------------------------------- which error, when there are several


def several_errors_case(device, first):
    """A batch large enough for threads to split it, with two problems far apart: a bad column
    id in CSR row 299 (read only by slot `index_slot`) and an out-of-range row id at slot
    `row_slot`. The error named must be the one a serial pass meets first."""
    index_slot, row_slot = (100, 9000) if first == "index" else (9000, 100)
    csr = random_csr(300, 40, density=0.1, seed=3)
    g = torch.Generator().manual_seed(4)
    rows = torch.randint(299, (10000,), generator=g)
    rows[index_slot] = 299
    rows[row_slot] = 300
    indices = csr.indices.clone()
    bad_k = int(csr.indptr[299]) + 1  # the row's second entry
    indices[bad_k] = -5
    weight = torch.randn(40, 4, dtype=torch.float64, generator=g)
    grad = torch.randn(10000, 4, dtype=torch.float64, generator=g)
    args = [t.to(device) for t in (csr.indptr, indices, csr.values, rows, weight, grad)]
    message = (rf"indices\[{bad_k}\] = -5 is out of range" if first == "index"
               else r"rows\[100\] = 300 is out of range")
    return args, IndexError, message


def raise_all_three(indptr, indices, values, rows, weight, grad):
    """The forward and both backward ops, each asked to validate."""
    yield lambda: ops.sparse_rows_matmul(indptr, indices, values, rows, weight)
    yield lambda: torch.ops.dmfx.sparse_rows_matmul_backward_weight(
        indptr, indices, values, rows, grad, weight.shape[0], True)
    yield lambda: torch.ops.dmfx.sparse_rows_matmul_backward_values(
        indptr, indices, rows, weight, grad, True)


@pytest.mark.parametrize("first", ["index", "row"])
def test_the_first_error_in_serial_order_is_named_whatever_the_threads(first):
    args, error, message = several_errors_case("cpu", first)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for call in raise_all_three(*args):
                with pytest.raises(error, match=message):
                    call()
    finally:
        torch.set_num_threads(threads)


def test_indptr_ends_come_before_any_row(case):
    """indices[:-1]: indptr[12] no longer matches nnz, and row 11 runs past the end too; the ends
    are checked first, on every device."""
    csr, rows, weight = case
    bad = csr._replace(indices=csr.indices[:-1], values=csr.values[:-1])
    grad = torch.randn(rows.numel(), weight.shape[1], dtype=weight.dtype, device=weight.device)
    for call in raise_all_three(bad.indptr, bad.indices, bad.values, rows, weight, grad):
        with pytest.raises(ValueError, match=r"indptr\[12\] = \d+ but must be \d+"):
            call()


def test_empty_batch_still_checks_the_indptr_ends(case):
    csr, rows, weight = case
    bad = csr._replace(indices=csr.indices[:-1], values=csr.values[:-1])
    with pytest.raises(ValueError, match=r"indptr\[12\] = \d+ but must be \d+"):
        call(bad, rows[:0], weight)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
@pytest.mark.parametrize("first", ["index", "row"])
def test_cuda_names_the_error_cpu_names(first):
    cpu_args, error, message = several_errors_case("cpu", first)
    cuda_args, _, _ = several_errors_case("cuda", first)
    for cpu_call, cuda_call in zip(raise_all_three(*cpu_args), raise_all_three(*cuda_args)):
        with pytest.raises(error) as on_cpu:
            cpu_call()
        for _ in range(3):  # block scheduling varies from run to run; the error must not
            with pytest.raises(error) as on_cuda:
                cuda_call()
            assert str(on_cuda.value) == str(on_cpu.value)


# -------------------------------------------------------------------------------- determinism


def popular_case(device, dtype=torch.float32, width=64):
    """Power-law columns (a few columns in most rows), long and repeated rows: the gradient rows
    of popular columns sum thousands of terms, where the order of a float sum shows."""
    g = torch.Generator().manual_seed(8)
    num_rows, num_cols = 400, 300
    lengths = (torch.rand(num_rows, generator=g) ** 3 * num_cols).long().clamp(min=1)
    cols = [torch.sort(torch.multinomial(1.0 / torch.arange(1, num_cols + 1).double(), int(n),
                                         generator=g)).values for n in lengths]
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    indices = torch.cat(cols)
    values = torch.rand(indices.numel(), generator=g, dtype=dtype)
    rows = torch.randint(num_rows, (4096,), generator=g)
    weight = torch.randn(num_cols, width, generator=g, dtype=dtype)
    grad = torch.randn(rows.numel(), width, generator=g, dtype=dtype)
    return [t.to(device) for t in (indptr, indices, values, rows, weight, grad)]


def gradients(indptr, indices, values, rows, weight, grad):
    v, w = values.clone().requires_grad_(), weight.clone().requires_grad_()
    ops.sparse_rows_matmul(indptr, indices, v, rows, w).backward(grad)
    return v.grad, w.grad


def test_cpu_gradients_are_bitwise_reproducible():
    args = popular_case("cpu")
    first = gradients(*args)
    for got, want in zip(gradients(*args), first):
        assert torch.equal(got, want)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic_algorithms"])
def test_cuda_gradients_are_bitwise_reproducible(deterministic):
    args = popular_case("cuda")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        first = gradients(*args)
        for _ in range(3):
            for got, want in zip(gradients(*args), first):
                assert torch.equal(got, want)
    finally:
        torch.use_deterministic_algorithms(was)
    # Against the float64 reference: float32 sums of thousands of terms agree to rounding.
    indptr, indices, values, rows, weight, grad = (t.cpu() for t in args)
    ref_values = values.double().requires_grad_()
    ref_weight = weight.double().requires_grad_()
    reference.sparse_rows_matmul(indptr, indices, ref_values, rows, ref_weight).backward(
        grad.double())
    for got, want in zip(first, (ref_values.grad, ref_weight.grad)):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
@pytest.mark.parametrize("width", [64, 520])
def test_row_with_a_million_entries_on_the_gpu(width):
    """One row the whole GPU must share (the top item of a power-law matrix), beside short
    rows, against the float64 reference; a width over 512 takes two column passes. Named
    without "cuda" so that the sanitizer steps of tools/check_gpu.sh (-k cuda) leave out its
    gigabytes; the CUDA determinism test covers the same code paths at a size they can run."""
    g = torch.Generator().manual_seed(9)
    num_cols = long_row = 1_000_000
    short = [torch.sort(torch.randperm(num_cols, generator=g)[:n]).values for n in (0, 3, 17)]
    indices = torch.cat([torch.arange(num_cols), *short])
    lengths = torch.tensor([long_row, 0, 3, 17])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    values = torch.rand(indices.numel(), generator=g, dtype=torch.float64)
    rows = torch.tensor([0, 2, 0, 1, 3])
    weight = torch.randn(num_cols, width, generator=g, dtype=torch.float64) / 1000
    grad = torch.randn(rows.numel(), width, generator=g, dtype=torch.float64)
    args = [t.cuda() for t in (indptr, indices, values, rows, weight, grad)]
    out = ops.sparse_rows_matmul(*args[:5])
    ref = reference.sparse_rows_matmul(indptr, indices, values, rows, weight)
    torch.testing.assert_close(out.cpu(), ref)
    v, w = args[2].clone().requires_grad_(), args[4].clone().requires_grad_()
    ops.sparse_rows_matmul(args[0], args[1], v, args[3], w).backward(args[5])
    rv, rw = values.clone().requires_grad_(), weight.clone().requires_grad_()
    reference.sparse_rows_matmul(indptr, indices, rv, rows, rw).backward(grad)
    torch.testing.assert_close(v.grad.cpu(), rv.grad)
    torch.testing.assert_close(w.grad.cpu(), rw.grad)
