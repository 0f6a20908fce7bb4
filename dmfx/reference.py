"""Pure-PyTorch twins of the dmfx operators.

They define what each kernel must compute, are differentiable through plain autograd, and run
on any device; tests compare the kernels with them in float64, and benchmarks time the kernels
against them and the other PyTorch peers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["sparse_rows_matmul", "clamped_cosine", "cosine_nce_loss", "hybrid_bce_loss",
           "sample_negatives", "row_sparse_adam_"]


def _row_gather(indptr: Tensor, rows: Tensor):
    """For the CSR rows `rows`: the nnz slot of every entry and the batch slot it belongs to."""
    indptr = indptr.long()
    rows = rows.long()
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    batch_slot = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    nnz_slot = starts[batch_slot] + torch.arange(batch_slot.numel(), device=rows.device) - first[batch_slot]
    return nnz_slot, batch_slot


def sparse_rows_matmul(
    indptr: Tensor, indices: Tensor, values: Optional[Tensor], rows: Tensor, weight: Tensor
) -> Tensor:
    """``out[b] = sum_k values[k] * weight[indices[k]]`` over the CSR row ``rows[b]``."""
    nnz_slot, batch_slot = _row_gather(indptr, rows)
    gathered = weight[indices.long()[nnz_slot]]
    if values is not None:
        gathered = gathered * values[nnz_slot].unsqueeze(1)
    out = weight.new_zeros((rows.numel(), weight.shape[1]))
    return out.index_add(0, batch_slot, gathered)


def clamped_cosine(p: Tensor, q: Tensor, mu: float = 1e-6) -> Tensor:
    """``clamp(cos(p_b, q_b), mu, 1 - mu)`` with the cosine of a zero vector defined as 0.

    A NaN (or infinity) in ``p_b`` or ``q_b`` gives a NaN cosine, which the clamp keeps.
    """
    dot = (p * q).sum(1)
    denom = torch.linalg.vector_norm(p, dim=1) * torch.linalg.vector_norm(q, dim=1)
    # Tested as == 0, not > 0: a NaN norm must reach the division, not become the cosine 0.
    zero = denom == 0
    safe = torch.where(zero, torch.ones_like(denom), denom)
    cos = torch.where(zero, torch.zeros_like(dot), dot / safe)
    return cos.clamp(mu, 1 - mu)


def cosine_nce_loss(
    p: Tensor, q: Tensor, target: Tensor, mu: float = 1e-6, reduction: str = "mean"
) -> Tensor:
    """Normalized cross-entropy of the clamped cosine (DMF, Eq. 12)."""
    yhat = clamped_cosine(p, q, mu)
    target = target.to(p.dtype)
    loss = -(target * torch.log(yhat) + (1 - target) * torch.log1p(-yhat))
    return _reduce(loss, reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def hybrid_bce_loss(
    logits: Tensor,
    implicit_target: Tensor,
    explicit_target: Tensor,
    eta: float,
    reduction: str = "mean",
) -> Tensor:
    """EINMF's hybrid loss (Eq. 16), ``eta * L_I + (1 - eta) * L_E``: two cross-entropies of
    ``yhat = sigmoid(logits)`` (Eqs. 14-15), against the implicit and the explicit target.

    Cross-entropy is linear in its target, so the sum is one cross-entropy against the blended
    target ``t = eta * ir + (1 - eta) * e``, computed so, in the stable log-sigmoid form
    (``log yhat = logsigmoid(x)``, ``log(1 - yhat) = logsigmoid(-x)``), as the kernels compute
    it. ``1 - t`` is blended from ``1 - ir`` and ``1 - e``, as the kernels blend it: formed from
    the rounded ``t`` it would lose most of its digits when ``t`` is close to 1. For finite
    logits the two forms are equal. For an infinite one the two-term sum can be NaN where the
    blend is not (``x = inf``, ``ir = 1``, ``t < 1``: ``L_I`` meets ``0 * inf``, the blend gives
    ``inf``); the blend is NaN only where ``t`` itself meets ``0 * inf``."""
    target = eta * implicit_target + (1 - eta) * explicit_target
    complement = eta * (1 - implicit_target) + (1 - eta) * (1 - explicit_target)
    log_yhat = torch.nn.functional.logsigmoid(logits)
    log_not_yhat = torch.nn.functional.logsigmoid(-logits)
    loss = -(target * log_yhat + complement * log_not_yhat)
    return _reduce(loss, reduction)


def sample_negatives(
    indptr: Tensor,
    indices: Tensor,
    users: Tensor,
    num_items: int,
    num_negatives: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Vectorised rejection sampling: draw uniform items, redraw those the user interacted with.

    Membership is a binary search of ``user * num_items + item`` in the sorted keys of all
    interactions. The loop runs until every draw is a negative, so a user who interacted with
    every item (counted once per distinct item) is rejected up front, and so is an item id
    outside [0, num_items), which would stand for another user's item and hide a free one.
    """
    device = users.device
    users = users.long()
    indptr = indptr.long()
    if indices.numel() and not bool(((indices >= 0) & (indices < num_items)).all()):
        raise IndexError(f"indices: item ids must lie in [0, {num_items})")
    row_of_entry = torch.repeat_interleave(
        torch.arange(indptr.numel() - 1, device=device), indptr[1:] - indptr[:-1]
    )
    keys = torch.unique(row_of_entry * num_items + indices.long())  # sorted
    distinct = torch.bincount(keys // max(num_items, 1), minlength=indptr.numel() - 1)
    if bool((distinct[users] >= num_items).any()):
        raise ValueError("a user has interacted with every item; no negative can be sampled")
    user_col = users.unsqueeze(1).expand(-1, num_negatives).reshape(-1)
    out = torch.empty(user_col.numel(), dtype=torch.long, device=device)
    todo = torch.arange(user_col.numel(), device=device)
    while todo.numel() > 0:
        draw = torch.randint(num_items, (todo.numel(),), device=device, generator=generator)
        key = user_col[todo] * num_items + draw
        pos = torch.searchsorted(keys, key).clamp(max=max(keys.numel() - 1, 0))
        hit = keys[pos] == key if keys.numel() else torch.zeros_like(key, dtype=torch.bool)
        out[todo[~hit]] = draw[~hit]
        todo = todo[hit]
    return out.view(users.numel(), num_negatives)


def row_sparse_adam_(
    weight: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    rows: Tensor,
    grad_rows: Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    step: int,
) -> None:
    """torch.optim.Adam's update (no weight decay, no amsgrad) on the rows ``rows`` only."""
    r = rows.long()
    m = exp_avg[r].mul(beta1).add_(grad_rows, alpha=1 - beta1)
    v = exp_avg_sq[r].mul(beta2).addcmul_(grad_rows, grad_rows, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = v.sqrt() / math.sqrt(bias_correction2) + eps
    exp_avg[r], exp_avg_sq[r] = m, v
    weight[r] = weight[r] - lr / bias_correction1 * m / denom
