"""Optimizers for row-sparse gradients.

:class:`RowSparseAdam` is Adam for parameters whose gradients are row-sparse COO tensors (the
first-layer tables of :class:`dmfx.models.DMF` with ``sparse_grad=True``, or
``nn.Embedding(sparse=True)``): each step moves only the rows present in the gradient, in one
fused pass (:func:`dmfx.ops.row_sparse_adam_`), so its cost follows the batch, not the table.
It is lazy like ``torch.optim.SparseAdam``: a row (weights and moments) changes only in a step
where it has a gradient, and the bias corrections use the parameter's step count. The update of
those rows is ``torch.optim.Adam``'s (no weight decay, no amsgrad), eps added after the bias
correction: ``w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
SparseAdam's update differs: it adds eps before the bias correction,
``w -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``, which is Adam's with
eps replaced by ``eps / sqrt(1 - beta2^t)``. The two differ where eps is not small beside
``sqrt(v)``, most in the first steps.
"""
from __future__ import annotations

from typing import Iterable

import torch

from . import ops

__all__ = ["RowSparseAdam"]


def _distinct_rows(grad: torch.Tensor):
    """(rows, values) of a row-sparse gradient with every row once.

    Distinct rows are the one thing the op's validation would check that its kernels cannot
    cope with (out-of-range rows are skipped), so the op runs without validation. dmfx's own
    gradients arrive sorted and distinct, but autograd's accumulation drops the ``coalesced``
    flag: an O(n) test of the order saves the O(n log n) coalesce.
    """
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
        else:
            return rows, grad._values()
    return grad.indices()[0], grad.values()


class RowSparseAdam(torch.optim.Optimizer):
    """Lazy Adam over row-sparse gradients: ``torch.optim.Adam``'s update on the rows present in
    a gradient, the other rows untouched (see the module docstring for how that differs from
    ``torch.optim.SparseAdam``).

    Args:
        params: parameters (2-D, float32/float64, contiguous) whose ``.grad`` is a sparse COO
            tensor with one sparse dimension, the rows.
        lr, betas, eps: as in ``torch.optim.Adam``.

    ``step`` runs under ``torch.no_grad()``, as torch's optimizers do, and bumps the version
    counter of every parameter it updates (see :func:`dmfx.ops.row_sparse_adam_`).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.layout != torch.sparse_coo or grad.sparse_dim() != 1 or p.dim() != 2:
                    raise ValueError("RowSparseAdam: each gradient must be a row-sparse COO "
                                     "tensor of a 2-D parameter (e.g. sparse_grad=True); got "
                                     f"{grad.layout} for a parameter of shape {tuple(p.shape)}")
                rows, values = _distinct_rows(grad)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["step"] += 1
                ops.row_sparse_adam_(p, state["exp_avg"], state["exp_avg_sq"],
                                     rows, values, lr=group["lr"],
                                     beta1=beta1, beta2=beta2, eps=group["eps"],
                                     step=state["step"], validate=False)
        return loss
