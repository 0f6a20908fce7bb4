"""The fake (meta) kernels check shapes, dtypes and devices as the real kernels do.

Tracing (torch.compile, torch.export) sees only the fake kernels, so a bad call must fail there
with the exception the eager call raises. Each case below is run twice, on CPU tensors (the real
kernel) and on meta tensors (the fake one): same exception type, same message.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dmfx.ops  # noqa: F401  (loads the extension and the fake kernels)
from conftest import random_csr

ops = torch.ops.dmfx
f64, f32, i64 = torch.float64, torch.float32, torch.int64


def csr_case():
    csr = random_csr(12, 9, seed=0)
    rows = torch.tensor([0, 1, 3, 5, 7])
    weight = torch.randn(9, 4, dtype=f64)
    grad = torch.randn(5, 4, dtype=f64)
    return dict(indptr=csr.indptr, indices=csr.indices, values=csr.values, rows=rows,
                weight=weight, grad=grad)


def srm(c, **change):
    c = {**c, **change}
    return ops.sparse_rows_matmul, (c["indptr"], c["indices"], c["values"], c["rows"],
                                    c["weight"], True)


def srm_weight(c, num_weight_rows=9, **change):
    c = {**c, **change}
    return ops.sparse_rows_matmul_backward_weight, (c["indptr"], c["indices"], c["values"],
                                                    c["rows"], c["grad"], num_weight_rows, True)


def srm_values(c, **change):
    c = {**c, **change}
    return ops.sparse_rows_matmul_backward_values, (c["indptr"], c["indices"], c["rows"],
                                                    c["weight"], c["grad"], True)


def loss_case():
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(6, 5, generator=g, dtype=f64), torch.rand(6, 5, generator=g, dtype=f64)
    return dict(p=p, q=q, target=torch.rand(6, dtype=f64), logits=torch.randn(6, dtype=f64),
                grad=torch.ones((), dtype=f64))


def cnl(c, mu=1e-6, reduction="mean", **change):
    c = {**c, **change}
    return ops.cosine_nce_loss, (c["p"], c["q"], c["target"], mu, reduction, True)


def cnl_backward(c, mu=1e-6, reduction="mean", **change):
    c = {**c, **change}
    return ops.cosine_nce_loss_backward, (c["grad"], c["p"], c["q"], c["target"], mu, reduction)


def hbl(c, eta=0.5, reduction="mean", **change):
    c = {**c, **change}
    return ops.hybrid_bce_loss, (c["logits"], c.get("implicit", c["target"]),
                                 c.get("explicit", c["target"]), eta, reduction, True)


def hbl_backward(c, eta=0.5, reduction="mean", **change):
    c = {**c, **change}
    return ops.hybrid_bce_loss_backward, (c["grad"], c["logits"], c["target"], c["target"], eta,
                                          reduction)


def sn(c, num_items=9, num_negatives=3, **change):
    c = {**c, **change}
    return ops.sample_negatives, (c["indptr"], c["indices"], c["rows"], num_items, num_negatives,
                                  0, True)


def adam_case():
    state = dict(weight=torch.zeros(6, 3, dtype=f64), exp_avg=torch.zeros(6, 3, dtype=f64),
                 exp_avg_sq=torch.zeros(6, 3, dtype=f64), rows=torch.tensor([0, 4]),
                 grad_rows=torch.ones(2, 3, dtype=f64))
    return state


def adam(c, lr=0.1, step=1, **change):
    c = {**c, **change}
    return ops.row_sparse_adam_, (c["weight"], c["exp_avg"], c["exp_avg_sq"], c["rows"],
                                  c["grad_rows"], lr, 0.9, 0.999, 1e-8, step, False)


def bad_calls():
    c, lc, ac = csr_case(), loss_case(), adam_case()
    return {
        # sparse_rows_matmul and its backward ops
        "srm indices dtype": srm(c, indices=c["indices"].int()),
        "srm rows dtype": srm(c, rows=c["rows"].double()),
        "srm rows 2-D": srm(c, rows=c["rows"][:4].view(2, 2)),
        "srm indptr empty": srm(c, indptr=c["indptr"][:0]),
        "srm weight dtype": srm(c, weight=c["weight"].half(), values=None),
        "srm weight 1-D": srm(c, weight=c["weight"][:, 0]),
        "srm values dtype": srm(c, values=c["values"].float()),
        "srm values length": srm(c, values=c["values"][:-1]),
        "srm_weight grad rows": srm_weight(c, grad=c["grad"][:-1]),
        "srm_weight negative rows": srm_weight(c, num_weight_rows=-1),
        "srm_weight grad dtype": srm_weight(c, grad=c["grad"].int()),
        "srm_values grad shape": srm_values(c, grad=c["grad"][:, :3]),
        "srm_values grad dtype": srm_values(c, grad=c["grad"].float()),
        # cosine_nce_loss
        "cnl p dtype": cnl(lc, p=lc["p"].long(), q=lc["q"].long()),
        "cnl q dtype": cnl(lc, q=lc["q"].float()),
        "cnl target dtype": cnl(lc, target=lc["target"].long()),
        "cnl p 1-D": cnl(lc, p=lc["p"][0], q=lc["q"][0]),
        "cnl q shape": cnl(lc, q=lc["q"][:, :3]),
        "cnl target shape": cnl(lc, target=lc["target"][:-1]),
        "cnl mu": cnl(lc, mu=0.5),
        "cnl mu subnormal in float32": cnl(lc, p=lc["p"].float(), q=lc["q"].float(), mu=1e-40),
        "cnl mu subnormal in float64": cnl(lc, mu=1e-310),
        "cnl_backward mu subnormal in float32": cnl_backward(lc, p=lc["p"].half(),
                                                             q=lc["q"].half(), mu=1e-45),
        "cnl reduction": cnl(lc, reduction="avg"),
        "cnl_backward grad none": cnl_backward(lc, reduction="none"),
        "cnl_backward grad mean": cnl_backward(lc, grad=torch.ones(6, dtype=f64)),
        # hybrid_bce_loss
        "hbl logits dtype": hbl(lc, logits=lc["logits"].long()),
        "hbl target dtype": hbl(lc, implicit=lc["target"].float()),
        "hbl logits 2-D": hbl(lc, logits=lc["p"], target=lc["p"]),
        "hbl target shape": hbl(lc, explicit=lc["target"][:-1]),
        "hbl eta": hbl(lc, eta=1.5),
        "hbl reduction": hbl(lc, reduction="avg"),
        "hbl_backward grad none": hbl_backward(lc, reduction="none"),
        # sample_negatives
        "sn users dtype": sn(c, rows=c["rows"].float()),
        "sn indices dtype": sn(c, indices=c["indices"].int()),
        "sn num_items": sn(c, num_items=0),
        "sn num_negatives": sn(c, num_negatives=-1),
        # row_sparse_adam_
        "adam weight dtype": adam(ac, weight=ac["weight"].long()),
        "adam exp_avg shape": adam(ac, exp_avg=ac["exp_avg"][:5]),
        "adam exp_avg_sq dtype": adam(ac, exp_avg_sq=ac["exp_avg_sq"].float()),
        "adam rows dtype": adam(ac, rows=ac["rows"].float()),
        "adam grad_rows shape": adam(ac, grad_rows=ac["grad_rows"][:, :2]),
        "adam lr": adam(ac, lr=-1.0),
        "adam lr fraction": adam(ac, lr=-0.25),
        "adam step": adam(ac, step=0),
    }


def to_meta(args):
    return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)


def raised(op, args):
    with pytest.raises(Exception) as info:
        op(*args)
    return info.type, str(info.value).splitlines()[0]


@pytest.mark.parametrize("case", list(bad_calls()))
def test_fake_kernel_raises_what_the_cpu_kernel_raises(case):
    op, args = bad_calls()[case]
    cpu_type, cpu_message = raised(op, args)
    assert cpu_type in (TypeError, ValueError, IndexError), (case, cpu_type, cpu_message)
    meta_type, meta_message = raised(op, to_meta(args))
    assert (meta_type, meta_message) == (cpu_type, cpu_message)


def test_fake_tensor_mode_raises_too():
    """FakeTensorMode (what torch.compile traces with) goes through the same fake kernels."""
    c = csr_case()
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in c.items()}
        with pytest.raises(ValueError, match="values must be 1-D with one entry per index"):
            ops.sparse_rows_matmul(fake["indptr"], fake["indices"], fake["values"][:-1],
                                   fake["rows"], fake["weight"], True)
        with pytest.raises(TypeError, match="rows must be an int32 or int64 tensor"):
            ops.sparse_rows_matmul(fake["indptr"], fake["indices"], fake["values"],
                                   fake["rows"].double(), fake["weight"], True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fake_losses_of_half_inputs_are_float32(dtype):
    p = torch.rand(4, 3, dtype=dtype, device="meta")
    target = torch.rand(4, dtype=dtype, device="meta")
    assert ops.cosine_nce_loss(p, p, target, 1e-6, "mean", True).dtype == torch.float32
    assert ops.hybrid_bce_loss(target, target, target, 0.5, "none", True).dtype == torch.float32
    grad_p, _ = ops.cosine_nce_loss_backward(torch.ones((), device="meta"), p, p, target, 1e-6,
                                             "mean")
    assert grad_p.dtype == dtype


def wrapper_calls(c, lc, ac):
    """Each op's Python wrapper (its tensor arguments by name, replaceable) and one argument."""
    free_users = torch.tensor([0, 1])  # users with items left to sample
    return {
        "sparse_rows_matmul": (dmfx.ops.sparse_rows_matmul, {
            k: c[k] for k in ("indptr", "indices", "values", "rows", "weight")}, {}, "rows"),
        "cosine_nce_loss": (dmfx.ops.cosine_nce_loss, {k: lc[k] for k in ("p", "q", "target")},
                            {}, "q"),
        "hybrid_bce_loss": (dmfx.ops.hybrid_bce_loss, dict(
            logits=lc["logits"], implicit_target=lc["target"], explicit_target=lc["target"]),
            dict(eta=0.5), "explicit_target"),
        "sample_negatives": (dmfx.ops.sample_negatives, dict(
            indptr=c["indptr"], indices=c["indices"], users=free_users),
            dict(num_items=9, num_negatives=2, seed=0), "users"),
        "row_sparse_adam_": (dmfx.ops.row_sparse_adam_, {
            k: ac[k] for k in ("weight", "exp_avg", "exp_avg_sq", "rows", "grad_rows")},
            dict(lr=0.1, step=1), "grad_rows"),
    }


@pytest.mark.parametrize("op", ["sparse_rows_matmul", "cosine_nce_loss", "hybrid_bce_loss",
                                "sample_negatives", "row_sparse_adam_"])
def test_wrappers_name_an_argument_that_is_not_a_dense_tensor(op):
    fn, tensors, others, name = wrapper_calls(csr_case(), loss_case(), adam_case())[op]
    value = tensors[name]
    with pytest.raises(TypeError, match=rf"dmfx\.{op}: {name} must be a tensor, got list"):
        fn(**{**tensors, name: value.tolist()}, **others)
    with pytest.raises(TypeError, match=rf"dmfx\.{op}: {name} must be a dense \(strided\) tensor, "
                                        "got layout torch.sparse_coo"):
        fn(**{**tensors, name: value.to_sparse()}, **others)
    fn(**tensors, **others)  # the dense tensors pass
