"""The ops under torch.autocast: half-precision towers meet float32 losses.

Autocast runs each dmfx op in float32 (torch's "fp32" policy, as for its own losses): float16 /
bfloat16 inputs from the autocast region are cast up, so a model whose linear layers run in
half precision still trains through the fused losses.
"""
import pytest
import torch
from torch import nn

from dmfx import ops, reference
from conftest import CUDA_READY, random_csr


def towers(device):
    torch.manual_seed(0)
    first = nn.Parameter(torch.randn(14, 16, device=device) * 0.3)  # float32 table
    user = nn.Sequential(nn.ReLU(), nn.Linear(16, 8)).to(device)
    item = nn.Linear(16, 8).to(device)
    predict = nn.Linear(8, 1).to(device)  # EINMF's prediction layer h^T over p * q
    return first, user, item, predict


def dmf_like_step(device, autocast_dtype):
    """sparse_rows_matmul -> Linear (half under autocast) -> cosine_nce_loss and
    hybrid_bce_loss; returns the losses and the gradients of every parameter."""
    y = random_csr(10, 14, density=0.4, dtype=torch.float32, device=device)
    first, user, item, predict = towers(device)
    users = torch.tensor([0, 1, 2, 5, 5, 9], device=device)
    target = torch.tensor([0.2, 1.0, 0.6, 0.0, 0.8, 0.0], device=device)
    with torch.autocast(device.type if isinstance(device, torch.device) else device,
                        dtype=autocast_dtype, enabled=autocast_dtype is not None):
        h = ops.sparse_rows_matmul(y.indptr, y.indices, y.values, users, first)
        p, q = user(h), item(h).relu()
        # A Linear, not (p * q).sum(1): CUDA's autocast runs sum in float32, CPU's does not.
        logits = predict(p * q).squeeze(1)
        if autocast_dtype is not None:
            assert p.dtype == autocast_dtype and logits.dtype == autocast_dtype
        nce = ops.cosine_nce_loss(p.relu(), q, target)
        hybrid = ops.hybrid_bce_loss(logits, (target > 0).float(), target, 0.6)
        assert nce.dtype == torch.float32 and hybrid.dtype == torch.float32
    (nce + hybrid).backward()
    params = [first, *user.parameters(), *item.parameters(), *predict.parameters()]
    return (nce.detach(), hybrid.detach()), [t.grad for t in params]


def check_autocast_step(device, dtype, tol):
    (nce, hybrid), grads = dmf_like_step(device, dtype)
    (nce32, hybrid32), grads32 = dmf_like_step(device, None)
    torch.testing.assert_close(nce, nce32, rtol=tol, atol=tol)
    torch.testing.assert_close(hybrid, hybrid32, rtol=tol, atol=tol)
    for g, g32 in zip(grads, grads32):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, g32, rtol=10 * tol, atol=tol)


def test_cpu_autocast_bfloat16_model_trains():
    check_autocast_step("cpu", torch.bfloat16, 3e-2)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_model_trains(dtype):
    check_autocast_step("cuda", dtype, 3e-2 if dtype == torch.bfloat16 else 5e-3)


def test_autocast_casts_half_tables_up():
    """A half table reaching sparse_rows_matmul inside autocast runs in float32 (outside
    autocast the op takes float32 and float64 only)."""
    y = random_csr(10, 14, density=0.4, dtype=torch.float32)
    weight = torch.randn(14, 5).bfloat16()
    rows = torch.tensor([1, 3, 3])
    with pytest.raises(TypeError, match="weight must be float32 or float64"):
        ops.sparse_rows_matmul(y.indptr, y.indices, None, rows, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.sparse_rows_matmul(y.indptr, y.indices, y.values.bfloat16(), rows, weight)
    assert out.dtype == torch.float32
    want = reference.sparse_rows_matmul(y.indptr, y.indices, y.values.bfloat16().double(), rows,
                                        weight.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


def test_autocast_leaves_float64_alone():
    p = torch.rand(4, 3, dtype=torch.float64)
    target = torch.rand(4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.cosine_nce_loss(p, p, target).dtype == torch.float64


@pytest.mark.parametrize("half_weight", [False, True])
def test_autocast_row_sparse_weight_gradient_equals_the_dense_one(half_weight):
    """sparse_grad=True saved the uncast half tensors, and its backward met a float32 gradient
    beside them (TypeError)."""
    y = random_csr(10, 14, density=0.4, dtype=torch.float32)
    rows = torch.tensor([1, 3, 3, 0])
    grads = []
    for sparse_grad in (False, True):
        weight = torch.randn(14, 5, generator=torch.Generator().manual_seed(0))
        weight = (weight.bfloat16() if half_weight else weight).requires_grad_()
        values = y.values.bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ops.sparse_rows_matmul(y.indptr, y.indices, values, rows, weight,
                                         sparse_grad=sparse_grad)
        (out * torch.arange(5.0)).sum().backward()
        assert weight.grad.dtype == weight.dtype and values.grad.dtype == torch.bfloat16
        grads.append((weight.grad.to_dense() if sparse_grad else weight.grad, values.grad))
    for dense, sparse in zip(*grads):
        torch.testing.assert_close(sparse, dense, rtol=0, atol=0)
