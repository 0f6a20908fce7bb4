"""hybrid_bce_loss against its reference twin, its gradients, its edge cases and its errors."""
import pytest
import torch
import torch.nn.functional as F

from dmfx import ops, reference
from conftest import CUDA_READY

ETA = 0.6  # the EINMF paper's best weight


def make_case(device, batch=33, seed=0, dtype=torch.float64, scale=3.0):
    """Logits of a model in training, and the targets of 1 positive per 4 sampled negatives."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, generator=g, dtype=torch.float64) * scale).to(dtype)
    implicit = (torch.arange(batch) % 5 == 0).to(dtype)
    ratings = torch.randint(1, 6, (batch,), generator=g).to(dtype)
    explicit = implicit * ratings / 5
    return logits.to(device), implicit.to(device), explicit.to(device)


def blended(implicit, explicit, eta):
    return eta * implicit + (1 - eta) * explicit


def loss_and_grad(fn, logits, *args, upstream=None, **kwargs):
    x = logits.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    if upstream is None:
        upstream = torch.ones_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [1, 3, 8, 17, 33, 100, 1029])
def test_matches_reference(device, reduction, batch):
    """Fresh random inputs, float64: values and gradients. The sizes are odd or not multiples of
    the 4 / 8 SIMD lanes, so every vector tail is covered."""
    logits, implicit, explicit = make_case(device, batch=batch, seed=batch)
    upstream = torch.rand(batch if reduction == "none" else (), dtype=torch.float64, device=device)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, ETA,
                              reduction=reduction, upstream=upstream)
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits, implicit, explicit, ETA,
                                    reduction=reduction, upstream=upstream)
    torch.testing.assert_close(out, want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad, want_grad, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_matches_float64_reference(device, reduction):
    logits, implicit, explicit = make_case(device, batch=40_009, dtype=torch.float32, seed=7)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, ETA,
                              reduction=reduction)
    assert out.dtype == grad.dtype == torch.float32
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits.double(), implicit.double(),
                                    explicit.double(), ETA, reduction=reduction)
    # A few ulp per element; the sums are accumulated in double, so they keep that accuracy.
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), want_grad, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_equals_bce_with_logits_on_the_blended_target(device, dtype, reduction, eta):
    """Cross-entropy is linear in its target: the hybrid loss is one BCE against
    eta * ir + (1 - eta) * e, in value and in gradient."""
    logits, implicit, explicit = make_case(device, batch=257, dtype=dtype, seed=3)
    target = blended(implicit, explicit, eta)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, eta,
                              reduction=reduction)
    want, want_grad = loss_and_grad(F.binary_cross_entropy_with_logits, logits, target,
                                    reduction=reduction)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(grad, want_grad)
    # The gradient is (sigmoid(x) - t) * upstream, / B for the mean.
    scale = 1 / logits.numel() if reduction == "mean" else 1
    torch.testing.assert_close(grad, (torch.sigmoid(logits) - target) * scale)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_eta_endpoints_are_the_pure_losses(device, eta):
    """eta = 1 is the implicit loss alone (Eq. 15), eta = 0 the explicit one (Eq. 14)."""
    logits, implicit, explicit = make_case(device, batch=50, seed=11)
    pure = implicit if eta == 1.0 else explicit
    out = ops.hybrid_bce_loss(logits, implicit, explicit, eta, reduction="none")
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(logits, pure,
                                                                       reduction="none"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [100.0, 1e4, 1e30])
def test_large_logits_give_finite_loss_and_gradient(device, dtype, magnitude):
    """The loss works from the logits: no sigmoid that rounds to 0 or 1 and no log(0)."""
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    logits = (sign * magnitude).to(dtype).to(device)
    implicit = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype, device=device)
    explicit = torch.tensor([1.0, 0.6, 0.0, 0.0, 0.2, 0.0], dtype=dtype, device=device)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, ETA,
                              reduction="none")
    assert out.isfinite().all() and grad.isfinite().all()
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits.double(), implicit.double(),
                                    explicit.double(), ETA, reduction="none")
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-6, atol=1e-6)
    # Confidently right: (almost) no loss. Confidently wrong on the implicit target: eta |x|.
    assert out[0].item() == pytest.approx(0, abs=1e-30)
    assert out[3].item() == pytest.approx(0, abs=1e-30)
    assert out[1].item() == pytest.approx((ETA * 1 + (1 - ETA) * 0.6) * magnitude, rel=1e-6)


def test_confident_right_answers_keep_their_tiny_loss(device):
    """For t = 1, x > 0 (and t = 0, x < 0) the loss is log1p(exp(-|x|)), not cancelled to 0."""
    logits = torch.tensor([20.0, -20.0, 40.0, -700.0], dtype=torch.float64, device=device)
    implicit = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device)
    out = ops.hybrid_bce_loss(logits, implicit, implicit, ETA, reduction="none")
    want = torch.log1p(torch.exp(-logits.abs()))
    torch.testing.assert_close(out, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("op", [ops.hybrid_bce_loss, reference.hybrid_bce_loss],
                         ids=["kernel", "reference"])
def test_float32_targets_close_to_one_keep_their_loss_and_gradient(device, op):
    """In float32, t = eta ir + (1 - eta) e rounds to within 6e-8 of its value: 1 - t formed
    from it would lose most of a confident positive's loss (c x, c = 5e-7) and its gradient.
    Both are blended from the targets' complements instead, and the gradient of x >= 0 is
    c - e^-x / (1 + e^-x), not a sigmoid rounded to 1 minus t."""
    logits = torch.tensor([20.0, 20.0, 30.0, -20.0], device=device)
    implicit = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    explicit = torch.tensor([0.999999, 1.0, 1.0, 1e-6], device=device)
    out, grad = loss_and_grad(op, logits, implicit, explicit, 0.5, reduction="none")
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits.double(), implicit.double(),
                                    explicit.double(), 0.5, reduction="none")
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=0)
    assert grad[1].item() < 0  # sigmoid(20) - 1, not 0


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_targets_at_the_ends_of_the_unit_interval(device, value):
    logits, _, _ = make_case(device, batch=19, seed=2)
    target = torch.full_like(logits, value)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, target, target, ETA, reduction="sum")
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits, target, target, ETA,
                                    reduction="sum")
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(grad, want_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(device, reduction):
    logits, _, _ = make_case(device, batch=7, seed=4)
    g = torch.Generator().manual_seed(4)
    # Targets inside (0, 1), so the finite differences stay valid targets.
    implicit = (0.1 + 0.8 * torch.rand(7, generator=g, dtype=torch.float64)).to(device)
    explicit = (0.1 + 0.8 * torch.rand(7, generator=g, dtype=torch.float64)).to(device)
    args = tuple(t.requires_grad_() for t in (logits, implicit, explicit))
    assert torch.autograd.gradcheck(
        lambda x, i, e: ops.hybrid_bce_loss(x, i, e, ETA, reduction=reduction), args
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_of_targets(device, reduction):
    """As for cosine_nce_loss's target, the targets are differentiable (a composite):
    d loss / d ir = -eta x, d loss / d e = -(1 - eta) x."""
    logits, implicit, explicit = make_case(device, seed=5)
    upstream = torch.rand(logits.shape[0], dtype=logits.dtype, device=device)
    if reduction != "none":
        upstream = upstream[0]
    targets = [implicit.clone().requires_grad_(), explicit.clone().requires_grad_()]
    ref_targets = [implicit.clone().requires_grad_(), explicit.clone().requires_grad_()]
    got = torch.autograd.grad(ops.hybrid_bce_loss(logits, *targets, ETA, reduction=reduction),
                              targets, upstream)
    want = torch.autograd.grad(
        reference.hybrid_bce_loss(logits, *ref_targets, ETA, reduction=reduction), ref_targets,
        upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # Only the implicit target wanted: the explicit one gets no gradient computed.
    (only,) = torch.autograd.grad(
        ops.hybrid_bce_loss(logits, targets[0], explicit, ETA, reduction=reduction), targets[0],
        upstream)
    torch.testing.assert_close(only, want[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_opcheck(device, reduction):
    logits, implicit, explicit = make_case(device)
    torch.library.opcheck(
        torch.ops.dmfx.hybrid_bce_loss.default,
        (logits.requires_grad_(), implicit, explicit, ETA, reduction, True),
    )
    grad = torch.rand(() if reduction != "none" else (logits.shape[0],), dtype=logits.dtype,
                      device=device)
    torch.library.opcheck(
        torch.ops.dmfx.hybrid_bce_loss_backward.default,
        (grad, logits.detach(), implicit, explicit, ETA, reduction),
    )


def test_batch_of_one_and_empty_batch(device):
    logits, implicit, explicit = make_case(device, batch=1)
    torch.testing.assert_close(ops.hybrid_bce_loss(logits, implicit, explicit, ETA),
                               reference.hybrid_bce_loss(logits, implicit, explicit, ETA))
    empty = [t[:0] for t in (logits, implicit, explicit)]
    # As torch's mean (and cosine_nce_loss): the mean of no losses is NaN, their sum 0.
    assert ops.hybrid_bce_loss(*empty, ETA).isnan()
    assert ops.hybrid_bce_loss(*empty, ETA, reduction="sum").item() == 0
    assert ops.hybrid_bce_loss(*empty, ETA, reduction="none").shape == (0,)
    x = empty[0].clone().requires_grad_()
    ops.hybrid_bce_loss(x, *empty[1:], ETA, reduction="sum").backward()
    assert x.grad.shape == (0,)


def test_non_contiguous_inputs(device):
    logits, implicit, explicit = make_case(device, batch=41)
    stacked = torch.stack([logits, implicit, explicit], 1)  # each column strided by 3
    x, i, e = stacked[:, 0], stacked[:, 1], stacked[:, 2]
    assert not x.is_contiguous() and not i.is_contiguous() and not e.is_contiguous()
    for reduction in ("none", "mean"):
        out, grad = loss_and_grad(ops.hybrid_bce_loss, x, i, e, ETA, reduction=reduction)
        want, want_grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, ETA,
                                        reduction=reduction)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(grad, want_grad)
    flipped = logits.flip(0)  # a negative stride
    torch.testing.assert_close(
        ops.hybrid_bce_loss(flipped, implicit.flip(0), explicit.flip(0), ETA, reduction="none"),
        ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none").flip(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_results_do_not_depend_on_position(dtype):
    """Every element gets the same SIMD math whether it sits in a vector or in the padded tail,
    and whichever thread's chunk holds it: the losses of a slice equal the whole batch's."""
    logits, implicit, explicit = make_case("cpu", batch=70_001, dtype=dtype, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        whole = ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none")
        for start in (1, 3, 5, 69_990):
            part = ops.hybrid_bce_loss(logits[start:], implicit[start:], explicit[start:], ETA,
                                       reduction="none")
            assert torch.equal(part, whole[start:])
        torch.set_num_threads(2)  # two chunks, split at an odd element
        split = ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(split, whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_summed_loss_is_the_same_for_every_thread_count(dtype):
    """Partial sums over fixed blocks, added in block order (csrc/cpu/parallel.h): not over one
    chunk per thread, whose edges would move the double sum's roundings with the count."""
    logits, implicit, explicit = make_case("cpu", batch=1_000_003, dtype=dtype, seed=4)
    threads, sums = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3, 7):
            torch.set_num_threads(count)
            sums.append(ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="sum"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(s, sums[0]) for s in sums[1:]), sums


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_nan_logit_gives_nan_loss_and_gradient(device, reduction):
    logits, implicit, explicit = make_case(device, batch=13)
    logits[[2, 9]] = float("nan")
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, ETA,
                              reduction=reduction)
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits, implicit, explicit, ETA,
                                    reduction=reduction)
    assert out.isnan().any()
    torch.testing.assert_close(out, want, equal_nan=True)
    if reduction == "none":
        assert out.isnan().tolist() == [b in (2, 9) for b in range(13)]
    assert grad[[2, 9]].isnan().all() and grad[[0, 1, 3, 12]].isfinite().all()
    torch.testing.assert_close(grad, want_grad, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_logits_match_the_reference(device, dtype):
    """An infinite logit: inf where the blended target t leaves a log(0) term, NaN only where t
    itself meets 0 * inf (x = inf with t = 1, x = -inf with t = 0), in the kernels and the
    float64 reference alike. eta = 0.75 keeps every blended target exact in float32."""
    inf = float("inf")
    logits = torch.tensor([inf, -inf, inf, -inf, inf, -inf], dtype=dtype, device=device)
    implicit = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=dtype, device=device)
    explicit = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.0], dtype=dtype, device=device)
    out, grad = loss_and_grad(ops.hybrid_bce_loss, logits, implicit, explicit, 0.75,
                              reduction="none")
    want, want_grad = loss_and_grad(reference.hybrid_bce_loss, logits.double(), implicit.double(),
                                    explicit.double(), 0.75, reduction="none")
    assert want[:4].isposinf().all() and want[4:].isnan().all()
    torch.testing.assert_close(out.double(), want, equal_nan=True)
    torch.testing.assert_close(grad.double(), want_grad, equal_nan=True)


@pytest.mark.parametrize("wrt", ["logits", "implicit_target"])
def test_double_backward_raises(device, wrt):
    """The backward is not differentiable: create_graph=True through the op raises, rather than
    dropping the op's second-order part (the float64 reference's is not zero)."""
    logits, implicit, explicit = make_case(device, batch=7)
    logits.requires_grad_()
    implicit.requires_grad_(wrt == "implicit_target")
    g, = torch.autograd.grad(reference.hybrid_bce_loss(logits, implicit, explicit, ETA, "sum"),
                             logits, create_graph=True)
    assert torch.autograd.grad(g.pow(2).sum(), logits)[0].abs().sum() > 0
    message = r"dmfx.hybrid_bce_loss: double backward \(create_graph=True through this op\)"
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(ops.hybrid_bce_loss(logits, implicit, explicit, ETA, "sum"),
                            logits if wrt == "logits" else implicit, create_graph=True)
    first, = torch.autograd.grad(ops.hybrid_bce_loss(logits, implicit, explicit, ETA, "sum"),
                                 logits)
    torch.testing.assert_close(first, g.detach())


def test_nan_target_without_validation_gives_nan_loss(device):
    logits, implicit, explicit = make_case(device, batch=9)
    explicit[4] = float("nan")
    out = ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none", validate=False)
    assert out.isnan().tolist() == [b == 4 for b in range(9)]
    assert ops.hybrid_bce_loss(logits, implicit, explicit, ETA, validate=False).isnan()


def test_bad_targets_without_validation_are_used_as_given(device):
    logits, implicit, explicit = make_case(device, batch=9)
    explicit = explicit * 5  # raw ratings: a mistake validate=True catches
    out = ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none", validate=False)
    torch.testing.assert_close(out, reference.hybrid_bce_loss(logits, implicit, explicit, ETA,
                                                              reduction="none"))


def test_sum_of_a_large_float32_batch_is_accumulated_in_double(device):
    logits, implicit, explicit = make_case(device, batch=1 << 20, dtype=torch.float32, seed=12)
    out = ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="sum")
    want = reference.hybrid_bce_loss(logits.double(), implicit.double(), explicit.double(), ETA,
                                     reduction="sum")
    assert out.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_matches_eager(device, backend):
    """Inside torch.compile(fullgraph=True), between ordinary ops (a score from embeddings)."""
    g = torch.Generator().manual_seed(0)
    users = torch.randn(24, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    items = torch.randn(24, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    _, implicit, explicit = make_case(device, batch=24)

    def step(u, v, implicit, explicit):
        return ops.hybrid_bce_loss((u * v).sum(1), implicit, explicit, ETA)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    eager_loss = step(users, items, implicit, explicit)
    eager_grads = torch.autograd.grad(eager_loss, (users, items))
    compiled_loss = compiled(users, items, implicit, explicit)
    compiled_grads = torch.autograd.grad(compiled_loss, (users, items))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


def test_export_matches_eager(device):
    class Loss(torch.nn.Module):
        def forward(self, logits, implicit, explicit):
            return ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="sum")

    args = make_case(device, batch=10)
    program = torch.export.export(Loss(), args)
    assert any(node.target is torch.ops.dmfx.hybrid_bce_loss.default
               for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(*args), Loss()(*args))


# ------------------------------------------------------------------------------- bad input


@pytest.fixture
def case(device):
    return make_case(device)


def test_bad_reduction(case):
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        ops.hybrid_bce_loss(*case, ETA, reduction="avg")


@pytest.mark.parametrize("eta, shown", [(-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"),
                                        (float("inf"), "inf")])
@pytest.mark.parametrize("validate", [True, False])
def test_bad_eta(case, eta, shown, validate):
    with pytest.raises(ValueError, match=rf"eta must lie in \[0, 1\], got {shown}$"):
        ops.hybrid_bce_loss(*case, eta, validate=validate)


@pytest.mark.parametrize("name", ["implicit_target", "explicit_target"])
@pytest.mark.parametrize("bad", [5.0, -0.5, 1.0 + 1e-9, float("nan")])
def test_target_outside_unit_interval_names_the_argument(case, name, bad):
    logits, implicit, explicit = case
    targets = {"implicit_target": implicit.clone(), "explicit_target": explicit.clone()}
    targets[name][21] = bad
    with pytest.raises(ValueError, match=rf"{name}\[21\] = .* is not in \[0, 1\]"):
        ops.hybrid_bce_loss(logits, *targets.values(), ETA)


def test_shape_and_dtype_errors_name_the_argument(case):
    logits, implicit, explicit = case
    with pytest.raises(ValueError, match="implicit_target must have the shape of logits"):
        ops.hybrid_bce_loss(logits, implicit[:-1], explicit, ETA)
    with pytest.raises(ValueError, match="explicit_target must have the shape of logits"):
        ops.hybrid_bce_loss(logits, implicit, explicit[:, None], ETA)
    with pytest.raises(ValueError, match=r"logits must be 1-D \[batch\]"):
        ops.hybrid_bce_loss(logits[:, None], implicit[:, None], explicit[:, None], ETA)
    with pytest.raises(TypeError, match="logits must be float16, bfloat16, float32 or float64"):
        ops.hybrid_bce_loss(logits.long(), implicit.long(), explicit.long(), ETA)
    with pytest.raises(TypeError, match=r"implicit_target \(Float\) must have the dtype of logits"):
        ops.hybrid_bce_loss(logits, implicit.float(), explicit, ETA)
    with pytest.raises(TypeError, match=r"explicit_target \(Long\) must have the dtype of logits"):
        ops.hybrid_bce_loss(logits, implicit, explicit.long(), ETA)


def test_backward_grad_shape_is_checked(case):
    logits, implicit, explicit = case
    with pytest.raises(ValueError, match=r"grad must have shape \[33\] for reduction 'none'"):
        torch.ops.dmfx.hybrid_bce_loss_backward(logits[:3], logits, implicit, explicit, ETA,
                                                "none")
    with pytest.raises(ValueError, match="grad must be a scalar for reduction 'mean'"):
        torch.ops.dmfx.hybrid_bce_loss_backward(logits, logits, implicit, explicit, ETA, "mean")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_device_mismatch_names_the_argument():
    logits, implicit, explicit = make_case("cpu")
    with pytest.raises(ValueError, match="explicit_target is on cuda:0 but logits is on cpu"):
        ops.hybrid_bce_loss(logits, implicit, explicit.cuda(), ETA)


@pytest.mark.parametrize("name", ["logits", "implicit_target", "explicit_target"])
def test_meta_mixed_with_cpu_names_the_argument(name):
    """A meta tensor sends the call to the fake kernel, which must refuse the CPU tensors beside
    it rather than return uninitialised memory as the loss."""
    args = dict(zip(("logits", "implicit_target", "explicit_target"), make_case("cpu")))
    args[name] = args[name].to("meta")
    message = ("implicit_target is on cpu but logits is on meta" if name == "logits"
               else f"{name} is on meta but logits is on cpu")
    with pytest.raises(ValueError, match=message):
        ops.hybrid_bce_loss(*args.values(), ETA)
    grad = torch.ones((), dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        torch.ops.dmfx.hybrid_bce_loss_backward(grad, *args.values(), ETA, "mean")


def test_backward_grad_on_meta_names_the_argument():
    logits, implicit, explicit = make_case("cpu")
    with pytest.raises(ValueError, match="grad is on meta but logits is on cpu"):
        torch.ops.dmfx.hybrid_bce_loss_backward(torch.ones((), dtype=logits.dtype, device="meta"),
                                                logits, implicit, explicit, ETA, "mean")


def test_all_meta_gives_the_output_shape():
    logits, implicit, explicit = (t.to("meta") for t in make_case("cpu", batch=6))
    assert ops.hybrid_bce_loss(logits, implicit, explicit, ETA).shape == ()
    assert ops.hybrid_bce_loss(logits, implicit, explicit, ETA, reduction="none").shape == (6,)


def several_bad_targets(device):
    logits, implicit, explicit = make_case(device, batch=300000)
    implicit[250000] = 2.0
    explicit[90000] = -1.0
    implicit[290000] = float("nan")
    return logits, implicit, explicit


def test_the_first_bad_target_is_named_whatever_the_threads():
    case = several_bad_targets("cpu")
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for reduction in ("none", "sum"):
                with pytest.raises(ValueError, match=r"explicit_target\[90000\] = -1"):
                    ops.hybrid_bce_loss(*case, ETA, reduction)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
def test_cuda_names_the_bad_target_cpu_names():
    case = several_bad_targets("cuda")
    for _ in range(3):
        with pytest.raises(ValueError, match=r"explicit_target\[90000\] = -1"):
            ops.hybrid_bce_loss(*case, ETA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_compute_in_float32(device, dtype):
    logits, implicit, explicit = (t.to(dtype) for t in make_case(device, batch=100))
    x = logits.clone().requires_grad_()
    loss = ops.hybrid_bce_loss(x, implicit, explicit, ETA)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == dtype
    rx = logits.double().requires_grad_()
    ref = reference.hybrid_bce_loss(rx, implicit.double(), explicit.double(), ETA)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(x.grad.double(), rx.grad, rtol=tol, atol=tol * 1e-2)
