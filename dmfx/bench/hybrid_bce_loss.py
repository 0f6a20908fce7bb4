"""EINMF's hybrid loss, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The inputs are what an EINMF batch feeds the loss: model logits and, per observed pair, 1
positive (implicit target 1, explicit target rating / 5) and 4 sampled negatives (both targets 0),
the paper's best negative ratio, with its best weight eta = 0.6.

- ``dmfx``: the trainer's call (``validate=False``); ``dmfx-validate`` checks the targets (CUDA:
  a sync).
- ``eager``: the loss as a naive port of the paper writes it: ``yhat = sigmoid(logits)`` and two
  ``F.binary_cross_entropy`` terms weighted by eta and 1 - eta; ``compile``: ``torch.compile`` of
  that function.
- ``bce-logits``: torch's fused ``F.binary_cross_entropy_with_logits`` on the blended target
  ``eta * ir + (1 - eta) * e``, the identity dmfx computes (blend included in the timing).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from .core import BASELINE, Contender, Op, agreeing, compiled_now

CONTENDERS = (BASELINE, "dmfx-validate", "eager", "compile", "bce-logits")
ETA = 0.6
NEGATIVES_PER_POSITIVE = 4


def naive_hybrid_bce(logits, implicit_target, explicit_target, eta=ETA):
    """EINMF Eq. 16 as a direct port writes it: probabilities first, then two cross-entropies."""
    yhat = torch.sigmoid(logits)
    loss_implicit = F.binary_cross_entropy(yhat, implicit_target)
    loss_explicit = F.binary_cross_entropy(yhat, explicit_target)
    return eta * loss_implicit + (1 - eta) * loss_explicit


def blended_bce_with_logits(logits, implicit_target, explicit_target, eta=ETA):
    return F.binary_cross_entropy_with_logits(
        logits, eta * implicit_target + (1 - eta) * explicit_target)


@dataclass
class Problem:
    logits: torch.Tensor
    implicit: torch.Tensor
    explicit: torch.Tensor


def problem(batch: int, device: torch.device) -> Problem:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, generator=g) * 2
    ratings = torch.randint(1, 6, (batch,), generator=g).float() / 5
    positive = torch.arange(batch) % (NEGATIVES_PER_POSITIVE + 1) == 0
    implicit = positive.float()
    explicit = torch.where(positive, ratings, 0.0)
    return Problem(logits.to(device), implicit.to(device), explicit.to(device))


@functools.lru_cache(maxsize=None)
def _compiled():
    # dynamic=False: each batch size gets its own specialised kernels, as a training loop with a
    # fixed batch size would (the first call compiles them outside the timed region).
    return torch.compile(naive_hybrid_bce, dynamic=False)


_EAGER = {
    BASELINE: functools.partial(ops.hybrid_bce_loss, eta=ETA, validate=False),
    "dmfx-validate": functools.partial(ops.hybrid_bce_loss, eta=ETA),
    "eager": naive_hybrid_bce,
    "bce-logits": blended_bce_with_logits,
}


def _call(prob: Problem, name: str):
    """``fn() -> (loss, grad_logits)``."""
    logits = prob.logits.detach().requires_grad_()
    loss_fn = _compiled() if name == "compile" else _EAGER[name]

    def fn():
        loss = loss_fn(logits, prob.implicit, prob.explicit)
        return loss, *torch.autograd.grad(loss, (logits,))

    return compiled_now(fn) if name == "compile" else fn


def prepare(prob: Problem, name: str) -> Contender:
    return agreeing(name, _call(prob, name), lambda: _call(prob, BASELINE))


def describe(prob: Problem) -> str:
    return (f"EINMF hybrid loss (eta = {ETA}), forward + backward w.r.t. the logits: "
            f"B = {prob.logits.numel():,} pairs")


OP = Op("hybrid_bce_loss", CONTENDERS, prepare, describe)
