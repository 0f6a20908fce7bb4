"""cosine_nce_loss against its reference twin, its gradients, its edge cases and its errors."""
import math

import pytest
import torch

from dmfx import ops, reference
from conftest import CUDA_READY


def make_case(device, batch=33, dim=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Non-negative like DMF's ReLU tower outputs, so most cosines sit inside (mu, 1 - mu).
    p = torch.rand(batch, dim, generator=g, dtype=dtype).to(device)
    q = torch.rand(batch, dim, generator=g, dtype=dtype).to(device)
    target = torch.rand(batch, generator=g, dtype=dtype).to(device)
    target[: batch // 3] = 0  # sampled negatives
    return p, q, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dim", [1, 3, 32, 64, 65])
def test_matches_reference(device, reduction, dim):
    p, q, target = make_case(device, dim=dim, seed=dim)
    p.requires_grad_()
    q.requires_grad_()
    out = ops.cosine_nce_loss(p, q, target, reduction=reduction)
    rp, rq = p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    ref = reference.cosine_nce_loss(rp, rq, target, reduction=reduction)
    torch.testing.assert_close(out, ref)
    grad = torch.rand_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(p.grad, rp.grad)
    torch.testing.assert_close(q.grad, rq.grad)


def test_float32_matches_float64_reference(device):
    p, q, target = make_case(device, batch=4096, dim=64, dtype=torch.float32)
    out = ops.cosine_nce_loss(p, q, target, reduction="none")
    ref = reference.cosine_nce_loss(p.double(), q.double(), target.double(), reduction="none")
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(device, reduction):
    p, q, target = make_case(device, batch=6, dim=5)
    p.requires_grad_()
    q.requires_grad_()
    target = target.clamp(0.1, 0.9).requires_grad_()  # finite differences stay inside [0, 1]
    assert torch.autograd.gradcheck(
        lambda a, b, t: ops.cosine_nce_loss(a, b, t, reduction=reduction), (p, q, target)
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_of_target_alone(device, reduction):
    p, q, target = make_case(device, seed=5)
    target.requires_grad_()
    ref_target = target.detach().clone().requires_grad_()
    upstream = torch.rand(p.shape[0], dtype=p.dtype, device=device)
    if reduction != "none":
        upstream = upstream[0]
    (got,) = torch.autograd.grad(ops.cosine_nce_loss(p, q, target, reduction=reduction), target,
                                 upstream)
    (want,) = torch.autograd.grad(
        reference.cosine_nce_loss(p, q, ref_target, reduction=reduction), ref_target, upstream)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_opcheck(device, reduction):
    p, q, target = make_case(device)
    torch.library.opcheck(
        torch.ops.dmfx.cosine_nce_loss.default,
        (p.requires_grad_(), q.requires_grad_(), target, 1e-6, reduction, True),
    )
    grad = torch.rand(() if reduction != "none" else (p.shape[0],), dtype=p.dtype, device=device)
    torch.library.opcheck(
        torch.ops.dmfx.cosine_nce_loss_backward.default,
        (grad, p.detach(), q.detach(), target, 1e-6, reduction),
    )


def test_zero_vector_gives_defined_loss_and_zero_gradient(device):
    p, q, target = make_case(device, batch=4, dim=5)
    p[1] = 0
    q[2] = 0
    p.requires_grad_()
    q.requires_grad_()
    mu = 1e-6
    loss = ops.cosine_nce_loss(p, q, target, mu=mu, reduction="none")
    for b in (1, 2):
        t = float(target[b])
        expected = -(t * math.log(mu) + (1 - t) * math.log1p(-mu))
        assert loss[b].item() == pytest.approx(expected)
    loss.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    assert torch.equal(p.grad[1], torch.zeros_like(p.grad[1]))
    assert torch.equal(q.grad[2], torch.zeros_like(q.grad[2]))


@pytest.mark.parametrize("wrt", ["p", "target"])
def test_double_backward_raises(device, wrt):
    """The backward is not differentiable: create_graph=True through the op raises, rather than
    dropping the op's second-order part (the float64 reference's is not zero)."""
    p, q, target = make_case(device, batch=5, dim=4)
    p.requires_grad_()
    target.requires_grad_(wrt == "target")
    gp, = torch.autograd.grad(reference.cosine_nce_loss(p, q, target, reduction="sum"), p,
                              create_graph=True)
    assert torch.autograd.grad(gp.pow(2).sum(), p)[0].abs().sum() > 0
    message = r"dmfx.cosine_nce_loss: double backward \(create_graph=True through this op\)"
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(ops.cosine_nce_loss(p, q, target, reduction="sum"),
                            p if wrt == "p" else target, create_graph=True)
    first, = torch.autograd.grad(ops.cosine_nce_loss(p, q, target, reduction="sum"), p)
    torch.testing.assert_close(first, gp.detach())


def test_upper_clamp_keeps_log_finite(device):
    p = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, device=device, requires_grad=True)
    q = (2 * p).detach()  # cosine exactly 1
    target = torch.tensor([0.0], dtype=torch.float64, device=device)
    loss = ops.cosine_nce_loss(p, q, target, mu=1e-6, reduction="sum")
    assert loss.item() == pytest.approx(-math.log(1e-6))
    loss.backward()
    assert torch.isfinite(p.grad).all()


def test_batch_of_one_and_empty_batch(device):
    p, q, target = make_case(device, batch=1)
    torch.testing.assert_close(ops.cosine_nce_loss(p, q, target),
                               reference.cosine_nce_loss(p, q, target))
    empty = ops.cosine_nce_loss(p[:0], q[:0], target[:0], reduction="sum")
    assert empty.item() == 0
    assert ops.cosine_nce_loss(p[:0], q[:0], target[:0], reduction="none").shape == (0,)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_matches_reference_forward_and_backward(device, reduction):
    """An empty batch: its mean is NaN (as torch's mean and the reference's), its sum 0, and the
    backward gives empty gradients, not an error."""
    p, q, target = make_case(device, batch=0, dim=5)
    p.requires_grad_()
    q.requires_grad_()
    out = ops.cosine_nce_loss(p, q, target, reduction=reduction)
    ref = reference.cosine_nce_loss(p.detach(), q.detach(), target, reduction=reduction)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, equal_nan=True)
    if reduction == "mean":
        assert out.isnan()
    if reduction == "sum":
        assert out.item() == 0
    out.backward(torch.ones_like(out))
    for grad, x in ((p.grad, p), (q.grad, q)):
        assert grad.shape == (0, 5) and grad.dtype == x.dtype and grad.device == x.device


def test_non_contiguous_inputs_and_target_dtype(device):
    """Strided p, q (halves of one tensor) and target, a float32 target beside float64 towers,
    and a strided upstream gradient: loss and gradients as the reference's."""
    p, q, target = make_case(device, batch=10, dim=12)
    both = torch.cat([p, q], 1).requires_grad_()
    pw, qw = both[:, :12], both[:, 12:]
    assert not pw.is_contiguous() and not qw.is_contiguous()
    target_strided = torch.stack([target, target], 1).float()[:, 0]  # .float() copies: cast first
    assert not target_strided.is_contiguous()
    out = ops.cosine_nce_loss(pw, qw, target_strided, reduction="none")
    rp, rq = p.clone().requires_grad_(), q.clone().requires_grad_()
    ref = reference.cosine_nce_loss(rp, rq, target.float().double(), reduction="none")
    torch.testing.assert_close(out, ref)
    g = torch.Generator().manual_seed(1)
    grad = torch.rand(10, 3, generator=g, dtype=p.dtype).to(device)[:, 1]
    assert not grad.is_contiguous()
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(both.grad[:, :12], rp.grad)
    torch.testing.assert_close(both.grad[:, 12:], rq.grad)


# ------------------------------------------------------------------------------- bad input


@pytest.fixture
def case(device):
    return make_case(device)


def test_bad_reduction(case):
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        ops.cosine_nce_loss(*case, reduction="avg")


@pytest.mark.parametrize("mu, shown", [(0.0, "0"), (-1e-3, "-0.001"), (0.5, "0.5"), (2.0, "2")])
def test_bad_mu(case, mu, shown):
    # The number too: a C++ runtime linked twice formats it as nothing (tests/test_build.py).
    with pytest.raises(ValueError, match=rf"mu must lie in \(0, 0.5\) so that mu < 1 - mu, got {shown}$"):
        ops.cosine_nce_loss(*case, mu=mu)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("where", ["p", "q", "q of a zero p"])
def test_nan_input_gives_nan_loss_and_nan_gradients(device, reduction, where):
    """NaN in p or q makes the row's cosine NaN: the clamp must not turn it into a finite loss,
    and the row's gradients are NaN (not zero), as in the reference."""
    p, q, target = make_case(device, batch=5, dim=4)
    if where == "p":
        p[2, 1] = float("nan")
    else:
        q[2, 1] = float("nan")
        if where == "q of a zero p":
            p[2] = 0
    p.requires_grad_()
    q.requires_grad_()
    rp, rq = p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    out = ops.cosine_nce_loss(p, q, target, reduction=reduction)
    ref = reference.cosine_nce_loss(rp, rq, target, reduction=reduction)
    assert out.isnan().any() and ref.isnan().any()
    torch.testing.assert_close(out, ref, equal_nan=True)
    grad = torch.rand_like(out)
    out.backward(grad)
    ref.backward(grad)
    for got, want in ((p.grad, rp.grad), (q.grad, rq.grad)):
        assert got[2].isnan().all() and want[2].isnan().all()
        torch.testing.assert_close(got, want, equal_nan=True)


def test_nan_target_without_validation_gives_nan_loss(device):
    p, q, target = make_case(device, batch=6, dim=4)
    p[4] = 0  # a zero vector: the clamp holds its cosine at mu
    target[3:5] = float("nan")
    loss = ops.cosine_nce_loss(p, q, target, reduction="none", validate=False)
    want = reference.cosine_nce_loss(p, q, target, reduction="none")
    assert loss[3:5].isnan().all() and loss[[0, 1, 2, 5]].isfinite().all()
    torch.testing.assert_close(loss, want, equal_nan=True)
    assert ops.cosine_nce_loss(p, q, target, validate=False).isnan()


def test_target_outside_unit_interval(case):
    p, q, target = case
    target = target.clone()
    target[4] = 5.0  # a raw rating instead of rating / max rating
    with pytest.raises(ValueError, match=r"target\[4\] is not in \[0, 1\]"):
        ops.cosine_nce_loss(p, q, target)
    target[4] = float("nan")
    with pytest.raises(ValueError, match=r"target\[4\]"):
        ops.cosine_nce_loss(p, q, target)


@pytest.mark.parametrize("bad", [1 + 1e-9, -1e-50])
def test_a_float64_target_is_checked_before_its_cast_to_float32(case, bad):
    """Cast first, 1 + 1e-9 became 1 and -1e-50 became -0: both passed the kernel's check."""
    p, q, target = case
    target = target.clone()
    target[7] = bad
    p, q = p.float(), q.float()
    with pytest.raises(ValueError, match=r"target\[7\] is not in \[0, 1\]"):
        ops.cosine_nce_loss(p, q, target)
    assert ops.cosine_nce_loss(p, q, target, validate=False).isfinite()


def test_shape_and_dtype_errors_name_the_argument(case):
    p, q, target = case
    with pytest.raises(ValueError, match="q must have the shape of p"):
        ops.cosine_nce_loss(p, q[:, :3], target)
    with pytest.raises(ValueError, match="target must be 1-D with one entry per row of p"):
        ops.cosine_nce_loss(p, q, target[:-1])
    with pytest.raises(ValueError, match=r"p must be 2-D"):
        ops.cosine_nce_loss(p[0], q[0], target)
    with pytest.raises(TypeError, match="p must be float16, bfloat16, float32 or float64"):
        ops.cosine_nce_loss(p.long(), q.long(), target)
    with pytest.raises(TypeError, match=r"q \(Float\) must have the dtype of p"):
        ops.cosine_nce_loss(p, q.float(), target)
    with pytest.raises(TypeError, match="target must be a floating tensor"):
        ops.cosine_nce_loss(p, q, target.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_device_mismatch_names_the_argument():
    p, q, target = make_case("cpu")
    with pytest.raises(ValueError, match="q is on cuda:0 but p is on cpu"):
        ops.cosine_nce_loss(p, q.cuda(), target)


@pytest.mark.parametrize("dtype, smallest", [(torch.float32, "1.17549e-38"),
                                             (torch.float16, "1.17549e-38"),
                                             (torch.bfloat16, "1.17549e-38"),
                                             (torch.float64, "2.22507e-308")])
def test_mu_below_the_compute_dtypes_normal_range_raises(device, dtype, smallest):
    """A mu the compute dtype holds only as a subnormal or 0 would give log(mu) = -inf and NaN
    gradients for a zero vector; the real and the fake kernels refuse it alike."""
    p, q, target = (t.to(dtype) for t in make_case(device, batch=4, dim=3))
    p[0] = 0
    tiny = torch.finfo(dtype if dtype == torch.float64 else torch.float32).tiny
    computed = "float64" if dtype == torch.float64 else "float32"
    message = (rf"dmfx.cosine_nce_loss: mu must be at least {smallest}, the smallest normal "
               rf"{computed} \(the dtype this call computes in\), got {tiny / 2:g}$")
    for args in ((p, q, target), (p.to("meta"), q.to("meta"), target.to("meta"))):
        with pytest.raises(ValueError, match=message):
            ops.cosine_nce_loss(*args, mu=tiny / 2)
        grad = torch.ones((), dtype=torch.float32, device=args[0].device)
        with pytest.raises(ValueError, match=message):
            torch.ops.dmfx.cosine_nce_loss_backward(grad, *args, tiny / 2, "mean")
    p.requires_grad_()
    loss = ops.cosine_nce_loss(p, q, target, mu=tiny, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.equal(p.grad[0], torch.zeros_like(p.grad[0]))


@pytest.mark.parametrize("name", ["p", "q", "target"])
def test_meta_mixed_with_cpu_names_the_argument(name):
    """A meta tensor sends the call to the fake kernel, which must refuse the CPU tensors beside
    it rather than return uninitialised memory as the loss."""
    args = dict(zip(("p", "q", "target"), make_case("cpu")))
    args[name] = args[name].to("meta")
    message = ("q is on cpu but p is on meta" if name == "p"
               else f"{name} is on meta but p is on cpu")
    with pytest.raises(ValueError, match=message):
        ops.cosine_nce_loss(*args.values())
    grad = torch.ones((), dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        torch.ops.dmfx.cosine_nce_loss_backward(grad, *args.values(), 1e-6, "mean")


def test_backward_grad_on_meta_names_the_argument():
    p, q, target = make_case("cpu")
    with pytest.raises(ValueError, match="grad is on meta but p is on cpu"):
        torch.ops.dmfx.cosine_nce_loss_backward(torch.ones((), dtype=p.dtype, device="meta"),
                                                p, q, target, 1e-6, "mean")


def test_the_first_bad_target_is_named_whatever_the_threads():
    p, q, target = make_case("cpu", batch=50000, dim=2)
    target[[31000, 47000, 2000]] = 2.0
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for reduction in ("none", "mean"):
                with pytest.raises(ValueError, match=r"target\[2000\] is not in \[0, 1\]"):
                    ops.cosine_nce_loss(p, q, target, reduction=reduction)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_summed_loss_is_the_same_for_every_thread_count(dtype):
    """Partial sums over fixed blocks, added in block order (csrc/cpu/parallel.h)."""
    p, q, target = make_case("cpu", batch=1_000_003, dim=2, dtype=dtype, seed=4)
    threads, sums = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3, 7):
            torch.set_num_threads(count)
            sums.append(ops.cosine_nce_loss(p, q, target, reduction="sum"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(s, sums[0]) for s in sums[1:]), sums


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
def test_cuda_names_the_bad_target_cpu_names():
    p, q, target = make_case("cpu", batch=50000, dim=2)
    target[[31000, 47000, 2000]] = 2.0
    for _ in range(3):
        with pytest.raises(ValueError, match=r"target\[2000\] is not in \[0, 1\]"):
            ops.cosine_nce_loss(p.cuda(), q.cuda(), target.cuda())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(device, dtype):
    """Half-precision towers: the loss is computed (and returned) in float32, the gradients come
    back in the towers' dtype; against the float64 reference on the same (rounded) inputs."""
    p, q, target = make_case(device, batch=64, dim=16)
    p, q = p.to(dtype).requires_grad_(), q.to(dtype).requires_grad_()
    loss = ops.cosine_nce_loss(p, q, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert p.grad.dtype == dtype and q.grad.dtype == dtype
    rp, rq = p.detach().double().requires_grad_(), q.detach().double().requires_grad_()
    ref = reference.cosine_nce_loss(rp, rq, target)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(p.grad.double(), rp.grad, rtol=tol, atol=tol * 1e-2)
    torch.testing.assert_close(q.grad.double(), rq.grad, rtol=tol, atol=tol * 1e-2)
