"""row_sparse_adam_ against its reference twin, torch.optim.Adam and SparseAdam, and its errors;
the RowSparseAdam optimizer."""
import re

import pytest
import torch

from dmfx import ops, reference
from dmfx.optim import RowSparseAdam


def make_case(device, width=7, num_rows=11, rows=(0, 3, 4, 10), dtype=torch.float64, seed=0,
              index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_rows, width, generator=g, dtype=dtype)
    exp_avg = torch.randn(num_rows, width, generator=g, dtype=dtype) * 0.1
    exp_avg_sq = torch.rand(num_rows, width, generator=g, dtype=dtype) * 0.1
    grad_rows = torch.randn(len(rows), width, generator=g, dtype=dtype)
    to = lambda t: t.to(device)  # noqa: E731
    return (to(weight), to(exp_avg), to(exp_avg_sq), torch.tensor(rows, dtype=index_dtype,
                                                                   device=device), to(grad_rows))


@pytest.mark.parametrize("width", [1, 7, 33, 64])
@pytest.mark.parametrize("step", [1, 5])
def test_matches_reference(device, index_dtype, width, step):
    state = make_case(device, width=width, index_dtype=index_dtype)
    ref = [t.clone() for t in state]
    ops.row_sparse_adam_(*state, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, step=step)
    reference.row_sparse_adam_(*ref, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, step=step)
    for got, want in zip(state[:3], ref[:3]):
        torch.testing.assert_close(got, want)
    # untouched rows keep weight and moments
    untouched = [r for r in range(11) if r not in (0, 3, 4, 10)]
    original = make_case(device, width=width, index_dtype=index_dtype)
    for got, orig in zip(state[:3], original[:3]):
        assert torch.equal(got[untouched], orig[untouched])


def test_float32_matches_float64_reference(device):
    state64 = make_case(device, width=70, rows=tuple(range(0, 11, 2)))
    state32 = [t.float() if t.is_floating_point() else t for t in state64]
    ops.row_sparse_adam_(*state32, lr=0.1, step=3)
    reference.row_sparse_adam_(*state64, lr=0.1, step=3)
    for got, want in zip(state32[:3], state64[:3]):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_single_row_matches_reference(device, index_dtype):
    state = make_case(device, width=13, rows=(6,), seed=2, index_dtype=index_dtype)
    ref = [t.clone() for t in state]
    ops.row_sparse_adam_(*state, lr=0.02, step=2)
    reference.row_sparse_adam_(*ref, lr=0.02, step=2)
    for got, want in zip(state[:3], ref[:3]):
        torch.testing.assert_close(got, want)
    original = make_case(device, width=13, rows=(6,), seed=2, index_dtype=index_dtype)
    assert not torch.equal(state[0][6], original[0][6])


def every_other(t):
    """``t`` as a strided view: every other row (element) of a longer tensor, whose rows between
    hold -1, so a kernel that ignores the strides reads them."""
    return torch.stack([t, torch.full_like(t, -1)], 1).flatten(0, 1)[::2]


def test_strided_rows_and_grad_rows_match_reference(device, index_dtype):
    """rows and grad_rows are only read: strided views of them (grad_rows also column-major)
    update as contiguous ones do."""
    state = make_case(device, width=9, rows=(10, 2, 5, 0, 7), seed=3, index_dtype=index_dtype)
    ref = [t.clone() for t in state]
    weight, m, v, rows, grad_rows = state
    for strided_grad in (every_other(grad_rows), grad_rows.t().contiguous().t()):
        assert not strided_grad.is_contiguous() and not every_other(rows).is_contiguous()
        ops.row_sparse_adam_(weight, m, v, every_other(rows), strided_grad, lr=0.05, step=4)
        reference.row_sparse_adam_(*ref, lr=0.05, step=4)
        for got, want in zip(state[:3], ref[:3]):
            torch.testing.assert_close(got, want)


def test_empty_rows_change_nothing(device):
    weight, m, v, _, _ = make_case(device)
    before = [t.clone() for t in (weight, m, v)]
    rows = torch.empty(0, dtype=torch.long, device=device)
    ops.row_sparse_adam_(weight, m, v, rows, weight.new_empty(0, 7), lr=0.1, step=1)
    for t, b in zip((weight, m, v), before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("width", [7, 33])
def test_opcheck(device, index_dtype, width):
    state = make_case(device, width=width, index_dtype=index_dtype)
    torch.library.opcheck(torch.ops.dmfx.row_sparse_adam_.default,
                          (*state, 0.01, 0.9, 0.999, 1e-8, 2, True))


def test_optimizer_is_lazy_as_sparse_adam_over_steps(device):
    """RowSparseAdam is lazy as torch.optim.SparseAdam is: only the rows with a gradient move,
    moments included. With eps far below sqrt(v) their updates agree to rounding, though they
    place eps differently (test_update_is_adams_not_sparse_adams)."""
    with torch.random.fork_rng():  # the global seed of later tests stays theirs
        torch.manual_seed(0)
        table = torch.nn.Embedding(20, 9, sparse=True, dtype=torch.float64).to(device)
    twin = torch.nn.Embedding(20, 9, sparse=True, dtype=torch.float64).to(device)
    twin.load_state_dict(table.state_dict())
    ours = RowSparseAdam(table.parameters(), lr=0.05, betas=(0.8, 0.9))
    torch_sparse = torch.optim.SparseAdam(twin.parameters(), lr=0.05, betas=(0.8, 0.9))
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        ids = torch.randint(20, (6,), generator=g).to(device)  # repeats: summed by coalesce
        target = torch.randn(6, 9, generator=g, dtype=torch.float64).to(device)
        for emb, opt in ((table, ours), (twin, torch_sparse)):
            opt.zero_grad()
            ((emb(ids) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(table.weight, twin.weight)
    for name in ("exp_avg", "exp_avg_sq"):  # eps plays no part in the moments
        torch.testing.assert_close(ours.state[table.weight][name],
                                   torch_sparse.state[twin.weight][name])


def test_update_is_adams_not_sparse_adams(device):
    """On the rows it touches RowSparseAdam steps as torch.optim.Adam does, eps added after the
    bias correction of sqrt(v); torch.optim.SparseAdam adds eps before it, which a large eps
    shows. Every row has a gradient in every step, so Adam's dense step is the lazy one too."""
    w0 = torch.tensor([[1.0, -2.0], [0.5, 0.25], [3.0, 0.0]], dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 2, generator=g, dtype=torch.float64).to(device) * 1e-3
             for _ in range(3)]
    results = {}
    for name, cls in (("ours", RowSparseAdam), ("adam", torch.optim.Adam),
                      ("sparse_adam", torch.optim.SparseAdam)):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.1, eps=1e-3)
        for grad in grads:
            w.grad = grad.clone() if cls is torch.optim.Adam else grad.to_sparse(1)
            opt.step()
        results[name] = w.detach()
    torch.testing.assert_close(results["ours"], results["adam"])
    assert (results["ours"] - results["sparse_adam"]).abs().min() > 1e-3


def test_leaf_that_requires_grad_is_refused_in_grad_mode():
    """As for torch's in-place ops: updating a leaf that requires grad outside no_grad raises,
    and nothing is written."""
    weight, m, v, rows, grad = make_case("cpu")
    weight.requires_grad_()
    before = [t.detach().clone() for t in (weight, m, v)]
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in "
                                           "an in-place operation"):
        ops.row_sparse_adam_(weight, m, v, rows, grad, lr=0.1, step=1)
    for t, b in zip((weight, m, v), before):
        assert torch.equal(t.detach(), b)
    with pytest.raises(RuntimeError, match="grad_rows requires grad"):
        ops.row_sparse_adam_(weight.detach(), m, v, rows, grad.requires_grad_(), lr=0.1, step=1)


def test_update_bumps_versions_so_a_stale_backward_raises():
    """Under no_grad the update goes through and bumps the version counters of the three tensors
    it writes, so a graph that saved the weight before the update cannot silently use the new
    one."""
    weight, m, v, rows, grad = make_case("cpu")
    weight.requires_grad_()
    loss = (weight * weight).sum()  # saves weight
    versions = [t._version for t in (weight, m, v)]
    with torch.no_grad():
        ops.row_sparse_adam_(weight, m, v, rows, grad, lr=0.1, step=1)
    assert all(t._version > old for t, old in zip((weight, m, v), versions))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_optimizer_step_bumps_the_parameter_version(device):
    table = torch.nn.Embedding(20, 9, sparse=True, dtype=torch.float64).to(device)
    opt = RowSparseAdam(table.parameters(), lr=0.05)
    ids = torch.tensor([1, 4, 4, 7], device=device)
    table(ids).pow(2).sum().backward()
    stale = (table.weight * table.weight).sum()  # saves the weight before the step
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()


def test_optimizer_rejects_dense_gradients():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="row-sparse COO"):
        RowSparseAdam([p]).step()
    with pytest.raises(ValueError, match="betas"):
        RowSparseAdam([p], betas=(1.0, 0.9))


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("row, shown", [(11, "[0, 11]"), (-1, "[-1, 10]")])
def test_row_out_of_range_names_rows(row, shown):
    weight, m, v, rows, grad = make_case("cpu")
    message = ("dmfx.row_sparse_adam_: rows must lie in [0, 11) (the rows of weight), got values "
               f"in {shown}")
    with pytest.raises(IndexError, match=f"^{re.escape(message)}$"):
        ops.row_sparse_adam_(weight, m, v, torch.tensor([0, row, 4, 10]), grad, lr=0.1, step=1)


def test_out_of_range_rows_are_skipped_without_validation():
    """Rows 11 and -3 (not counted from the end) are skipped; rows 0 and 10 update as the
    reference updates them alone, moments included, and every other row keeps its state."""
    weight, m, v, rows, grad = make_case("cpu")
    before = [t.clone() for t in (weight, m, v)]
    ops.row_sparse_adam_(weight, m, v, torch.tensor([0, 11, -3, 10]), grad, lr=0.1, step=1,
                         validate=False)
    ref = [t.clone() for t in before]
    reference.row_sparse_adam_(*ref, torch.tensor([0, 10]), grad[[0, 3]], lr=0.1, step=1)
    for got, want, old in zip((weight, m, v), ref, before):
        torch.testing.assert_close(got, want)
        assert torch.equal(got[1:10], old[1:10])
        assert not torch.equal(got[10], old[10]) and not torch.equal(got[0], old[0])


def test_repeated_rows_name_rows():
    weight, m, v, rows, grad = make_case("cpu")
    message = ("dmfx.row_sparse_adam_: rows must be distinct (a coalesced row-sparse gradient), "
               "got 1 repeated entries")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ops.row_sparse_adam_(weight, m, v, torch.tensor([0, 3, 3, 10]), grad, lr=0.1, step=1)


def column_major(t):
    return t.t().contiguous().t()


@pytest.mark.parametrize("change, error, message", [
    (lambda s: dict(s, exp_avg=s["exp_avg"][:5]), ValueError,
     "exp_avg must have the shape of weight [11, 7], got [5, 7]"),
    (lambda s: dict(s, exp_avg_sq=s["exp_avg_sq"].float()), TypeError,
     "exp_avg_sq (Float) must have the dtype of weight (Double)"),
    (lambda s: dict(s, grad_rows=s["grad_rows"][:, :3]), ValueError,
     "grad_rows must have shape [4, 7] (one row per entry of rows), got [4, 3]"),
    (lambda s: dict(s, weight=column_major(s["weight"])), ValueError,
     "weight must be contiguous (it is updated in place)"),
    (lambda s: dict(s, exp_avg=column_major(s["exp_avg"])), ValueError,
     "exp_avg must be contiguous (it is updated in place)"),
    (lambda s: dict(s, exp_avg_sq=column_major(s["exp_avg_sq"])), ValueError,
     "exp_avg_sq must be contiguous (it is updated in place)"),
    (lambda s: dict(s, rows=s["rows"].float()), TypeError,
     "rows must be an int32 or int64 tensor, got Float"),
    (lambda s: dict(s, step=0), ValueError,
     "step must be >= 1 (the count including this update), got 0"),
    (lambda s: dict(s, beta2=1.0), ValueError, "beta1 and beta2 must lie in [0, 1), got 0.9 and 1"),
    (lambda s: dict(s, eps=0.0), ValueError, "eps must be > 0, got 0"),
])
def test_argument_errors_name_the_argument(change, error, message):
    weight, m, v, rows, grad = make_case("cpu")
    args = change(dict(weight=weight, exp_avg=m, exp_avg_sq=v, rows=rows, grad_rows=grad,
                       lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, step=1))
    before = [t.clone() for t in (args["weight"], args["exp_avg"], args["exp_avg_sq"])]
    with pytest.raises(error, match=f"^{re.escape('dmfx.row_sparse_adam_: ' + message)}$"):
        ops.row_sparse_adam_(args["weight"], args["exp_avg"], args["exp_avg_sq"], args["rows"],
                             args["grad_rows"], lr=args["lr"], beta1=args["beta1"],
                             beta2=args["beta2"], eps=args["eps"], step=args["step"])
    for t, b in zip((args["weight"], args["exp_avg"], args["exp_avg_sq"]), before):
        assert torch.equal(t, b)  # refused before anything is written


@pytest.mark.parametrize("alias", ["weight=exp_avg", "exp_avg=exp_avg_sq", "weight=exp_avg_sq",
                                   "overlapping views", "grad_rows in weight"])
def test_aliased_tensors_are_refused(alias):
    """State tensors that share memory would mix their updates (NaN weights): refused by name."""
    weight, m, v, rows, grad = make_case("cpu")
    if alias == "weight=exp_avg":
        m, names = weight, "exp_avg and weight"
    elif alias == "exp_avg=exp_avg_sq":
        v, names = m, "exp_avg_sq and exp_avg"
    elif alias == "weight=exp_avg_sq":
        v, names = weight, "exp_avg_sq and weight"
    elif alias == "overlapping views":
        buffer = torch.zeros(16, 7, dtype=torch.float64)
        weight, m, names = buffer[:11], buffer[5:], "exp_avg and weight"
    else:
        grad, names = weight[3:7], "grad_rows and weight"
    before = weight.clone()
    with pytest.raises(ValueError, match=f"{names} share memory"):
        ops.row_sparse_adam_(weight, m, v, rows, grad, lr=0.1, step=1)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("name", ["weight", "exp_avg", "exp_avg_sq", "rows", "grad_rows"])
def test_meta_mixed_with_cpu_names_the_argument(name):
    """A meta tensor sends the call to the fake kernel, which must refuse the CPU tensors beside
    it rather than silently update nothing."""
    args = dict(zip(("weight", "exp_avg", "exp_avg_sq", "rows", "grad_rows"), make_case("cpu")))
    args[name] = args[name].to("meta")
    message = ("exp_avg is on cpu but weight is on meta" if name == "weight"
               else f"{name} is on meta but weight is on cpu")
    with pytest.raises(ValueError, match=message):
        ops.row_sparse_adam_(*args.values(), lr=0.1, step=1)
