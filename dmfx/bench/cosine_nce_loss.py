"""Score + loss of DMF, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The inputs are what a DMF batch feeds the loss: ReLU tower outputs p, q of the latent size k and
nce targets for 1 positive (rating / 5) and 7 sampled negatives (0) per observed pair.

- ``dmfx``: the trainer's call (``validate=False``); ``dmfx-validate`` checks the targets (a sync
  on CUDA).
- ``eager``: the composite :func:`dmfx.reference.cosine_nce_loss`.
- ``compile``: ``torch.compile`` of it (compiled and warmed up outside the timed region; unavailable,
  with the reason, where torch.compile fails).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import ops, reference
from .core import BASELINE, Contender, Op, agreeing, compiled_now

CONTENDERS = (BASELINE, "dmfx-validate", "eager", "compile")
NEGATIVES_PER_POSITIVE = 7


@dataclass
class Problem:
    p: torch.Tensor
    q: torch.Tensor
    target: torch.Tensor


def problem(batch: int, latent: int, device: torch.device) -> Problem:
    g = torch.Generator().manual_seed(0)
    p = torch.relu(torch.randn(batch, latent, generator=g))
    q = torch.relu(torch.randn(batch, latent, generator=g))
    ratings = torch.randint(1, 6, (batch,), generator=g).float() / 5
    positive = torch.arange(batch) % (NEGATIVES_PER_POSITIVE + 1) == 0
    target = torch.where(positive, ratings, 0.0)
    return Problem(p.to(device), q.to(device), target.to(device))


@functools.lru_cache(maxsize=None)
def _compiled():
    # dynamic=False: each batch size gets its own specialised kernels, as a training loop with a
    # fixed batch size would (the first call compiles them outside the timed region).
    return torch.compile(reference.cosine_nce_loss, dynamic=False)


_EAGER = {
    BASELINE: functools.partial(ops.cosine_nce_loss, validate=False),
    "dmfx-validate": ops.cosine_nce_loss,
    "eager": reference.cosine_nce_loss,
}


def _call(prob: Problem, name: str):
    """``fn() -> (loss, grad_p, grad_q)``."""
    p, q = prob.p.detach().requires_grad_(), prob.q.detach().requires_grad_()
    loss_fn = _compiled() if name == "compile" else _EAGER[name]

    def fn():
        loss = loss_fn(p, q, prob.target)
        return loss, *torch.autograd.grad(loss, (p, q))

    return compiled_now(fn) if name == "compile" else fn


def prepare(prob: Problem, name: str) -> Contender:
    return agreeing(name, _call(prob, name), lambda: _call(prob, BASELINE))


def describe(prob: Problem) -> str:
    return (f"cosine + clamp + nce loss, forward + backward w.r.t. p, q: B = {prob.p.shape[0]:,} "
            f"pairs, k = {prob.p.shape[1]}")


OP = Op("cosine_nce_loss", CONTENDERS, prepare, describe)
