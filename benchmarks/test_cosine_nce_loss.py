"""Score + loss of DMF, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The inputs are what a DMF batch feeds the loss: ReLU tower outputs p, q of size k = 64 and nce
targets for 1 positive (rating / 5) and 7 sampled negatives (0) per observed pair.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

import dmfx
from dmfx import reference
from benchmarks.harness import assert_agree, measure

LATENT = 64
NEGATIVES_PER_POSITIVE = 7


@dataclass(frozen=True)
class Case:
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"k{LATENT}-B{self.batch}"


CASES = [Case(8_192), Case(262_144), Case(1_048_576, cuda_only=True)]
# "dmfx" is the trainer's call (validate=False); "dmfx-validate" checks the targets (a sync on CUDA).
CONTENDERS = ["dmfx", "dmfx-validate", "eager", "compile"]


@functools.lru_cache(maxsize=1)
def _inputs(case: Case, device: torch.device):
    g = torch.Generator().manual_seed(0)
    p = torch.relu(torch.randn(case.batch, LATENT, generator=g))
    q = torch.relu(torch.randn(case.batch, LATENT, generator=g))
    ratings = torch.randint(1, 6, (case.batch,), generator=g).float() / 5
    positive = torch.arange(case.batch) % (NEGATIVES_PER_POSITIVE + 1) == 0
    target = torch.where(positive, ratings, 0.0)
    return p.to(device), q.to(device), target.to(device)


@functools.lru_cache(maxsize=None)
def _compiled():
    # dynamic=False: each batch size gets its own specialised kernels, as a training loop with a
    # fixed batch size would (the warm-up call compiles them outside the timed region).
    return torch.compile(reference.cosine_nce_loss, dynamic=False)


def _contender(name: str, case: Case, device: torch.device):
    """``fn() -> (loss, grad_p, grad_q)``."""
    p, q, target = _inputs(case, device)
    p, q = p.detach().requires_grad_(), q.detach().requires_grad_()
    if name == "compile":
        loss_fn = _compiled()
    else:
        loss_fn = {
            "dmfx": functools.partial(dmfx.ops.cosine_nce_loss, validate=False),
            "dmfx-validate": dmfx.ops.cosine_nce_loss,
            "eager": reference.cosine_nce_loss,
        }[name]

    def fn():
        loss = loss_fn(p, q, target)
        return loss, *torch.autograd.grad(loss, (p, q))

    if name == "compile":
        try:
            fn()  # compile the forward and backward graphs now
        except Exception as exc:  # inductor needs a working C++ compiler (CPU) or Triton (CUDA)
            pytest.skip(f"torch.compile is unusable here: {type(exc).__name__}: {exc}")
    return fn


def test_cosine_nce_loss(benchmark, device, case, contender):
    fn = _contender(contender, case, device)
    if contender != "dmfx":
        assert_agree(fn(), _contender("dmfx", case, device)(), what=f"{contender} vs dmfx")
    measure(benchmark, fn, group=f"cosine_nce_loss fwd+bwd {case.id}", contender=contender)
