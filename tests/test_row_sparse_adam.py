"""row_sparse_adam_ against its reference twin and torch.optim.SparseAdam, and its errors; the
RowSparseAdam optimizer."""
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


def test_float32_matches_float64(device):
    state64 = make_case(device, width=70, rows=tuple(range(0, 11, 2)))
    state32 = [t.float() if t.is_floating_point() else t for t in state64]
    ops.row_sparse_adam_(*state64, lr=0.1, step=3)
    ops.row_sparse_adam_(*state32, lr=0.1, step=3)
    for a, b in zip(state32[:3], state64[:3]):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-6)


def test_empty_rows_change_nothing(device):
    weight, m, v, _, _ = make_case(device)
    before = weight.clone()
    rows = torch.empty(0, dtype=torch.long, device=device)
    ops.row_sparse_adam_(weight, m, v, rows, weight.new_empty(0, 7), lr=0.1, step=1)
    assert torch.equal(weight, before)


def test_opcheck(device):
    state = make_case(device)
    torch.library.opcheck(torch.ops.dmfx.row_sparse_adam_.default,
                          (*state, 0.01, 0.9, 0.999, 1e-8, 2, True))


def test_optimizer_equals_sparse_adam_over_steps(device):
    """RowSparseAdam follows torch.optim.SparseAdam (lazy Adam) step for step."""
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


def test_optimizer_rejects_dense_gradients():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="row-sparse COO"):
        RowSparseAdam([p]).step()
    with pytest.raises(ValueError, match="betas"):
        RowSparseAdam([p], betas=(1.0, 0.9))


# ------------------------------------------------------------------------------------ bad input


def test_row_out_of_range_names_rows():
    weight, m, v, rows, grad = make_case("cpu")
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 11\)"):
        ops.row_sparse_adam_(weight, m, v, torch.tensor([0, 11, 4, 10]), grad, lr=0.1, step=1)
    with pytest.raises(IndexError, match="rows"):
        ops.row_sparse_adam_(weight, m, v, torch.tensor([0, -1, 4, 10]), grad, lr=0.1, step=1)


def test_out_of_range_rows_are_skipped_without_validation():
    weight, m, v, rows, grad = make_case("cpu")
    before = weight.clone()
    ops.row_sparse_adam_(weight, m, v, torch.tensor([0, 11, -3, 10]), grad, lr=0.1, step=1,
                         validate=False)
    assert torch.equal(weight[1:10], before[1:10]) and not torch.equal(weight[0], before[0])


def test_repeated_rows_name_rows():
    weight, m, v, rows, grad = make_case("cpu")
    with pytest.raises(ValueError, match="rows must be distinct"):
        ops.row_sparse_adam_(weight, m, v, torch.tensor([0, 3, 3, 10]), grad, lr=0.1, step=1)


@pytest.mark.parametrize("change, message", [
    (lambda s: dict(s, exp_avg=s["exp_avg"][:5]), "exp_avg must have the shape of weight"),
    (lambda s: dict(s, exp_avg_sq=s["exp_avg_sq"].float()), "exp_avg_sq"),
    (lambda s: dict(s, grad_rows=s["grad_rows"][:, :3]), "grad_rows must have shape"),
    (lambda s: dict(s, weight=s["weight"].t().contiguous().t()), "weight must be contiguous"),
    (lambda s: dict(s, rows=s["rows"].float()), "rows must be an int32 or int64"),
    (lambda s: dict(s, step=0), "step must be >= 1"),
    (lambda s: dict(s, beta2=1.0), "beta1 and beta2"),
    (lambda s: dict(s, eps=0.0), "eps must be > 0"),
])
def test_argument_errors_name_the_argument(change, message):
    weight, m, v, rows, grad = make_case("cpu")
    args = change(dict(weight=weight, exp_avg=m, exp_avg_sq=v, rows=rows, grad_rows=grad,
                       lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, step=1))
    with pytest.raises((ValueError, TypeError, IndexError), match=message):
        ops.row_sparse_adam_(args["weight"], args["exp_avg"], args["exp_avg_sq"], args["rows"],
                             args["grad_rows"], lr=args["lr"], beta1=args["beta1"],
                             beta2=args["beta2"], eps=args["eps"], step=args["step"])
