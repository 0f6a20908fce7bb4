"""EINMF's hybrid loss, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The inputs are what an EINMF batch feeds the loss: model logits and, per observed pair, 1
positive (implicit target 1, explicit target rating / 5) and 4 sampled negatives (both targets 0),
the paper's best negative ratio, with its best weight eta = 0.6. B = 1024 is the paper's training
batch.

"eager" is the loss as a naive port of the paper writes it: ``yhat = sigmoid(logits)`` and two
``F.binary_cross_entropy`` terms weighted by eta and 1 - eta; "compile" is ``torch.compile`` of
that function. "bce-logits" is torch's fused ``F.binary_cross_entropy_with_logits`` on the blended
target ``eta * ir + (1 - eta) * e``, the identity dmfx computes (blend included in the timing).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import dmfx
from benchmarks.harness import assert_agree, measure

ETA = 0.6
NEGATIVES_PER_POSITIVE = 4


@dataclass(frozen=True)
class Case:
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"B{self.batch}"


CASES = [Case(1_024), Case(8_192), Case(262_144), Case(1_048_576, cuda_only=True)]
# "dmfx" is the trainer's call (validate=False); "dmfx-validate" checks the targets (CUDA: a sync).
CONTENDERS = ["dmfx", "dmfx-validate", "eager", "compile", "bce-logits"]


def naive_hybrid_bce(logits, implicit_target, explicit_target, eta=ETA):
    """EINMF Eq. 16 as a direct port writes it: probabilities first, then two cross-entropies."""
    yhat = torch.sigmoid(logits)
    loss_implicit = F.binary_cross_entropy(yhat, implicit_target)
    loss_explicit = F.binary_cross_entropy(yhat, explicit_target)
    return eta * loss_implicit + (1 - eta) * loss_explicit


def blended_bce_with_logits(logits, implicit_target, explicit_target, eta=ETA):
    return F.binary_cross_entropy_with_logits(
        logits, eta * implicit_target + (1 - eta) * explicit_target)


@functools.lru_cache(maxsize=1)
def _inputs(case: Case, device: torch.device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(case.batch, generator=g) * 2
    ratings = torch.randint(1, 6, (case.batch,), generator=g).float() / 5
    positive = torch.arange(case.batch) % (NEGATIVES_PER_POSITIVE + 1) == 0
    implicit = positive.float()
    explicit = torch.where(positive, ratings, 0.0)
    return logits.to(device), implicit.to(device), explicit.to(device)


@functools.lru_cache(maxsize=None)
def _compiled():
    # dynamic=False: each batch size gets its own specialised kernels, as a training loop with a
    # fixed batch size would (the warm-up call compiles them outside the timed region).
    return torch.compile(naive_hybrid_bce, dynamic=False)


def _contender(name: str, case: Case, device: torch.device):
    """``fn() -> (loss, grad_logits)``."""
    logits, implicit, explicit = _inputs(case, device)
    logits = logits.detach().requires_grad_()
    if name == "compile":
        loss_fn = _compiled()
    else:
        loss_fn = {
            "dmfx": functools.partial(dmfx.ops.hybrid_bce_loss, eta=ETA, validate=False),
            "dmfx-validate": functools.partial(dmfx.ops.hybrid_bce_loss, eta=ETA),
            "eager": naive_hybrid_bce,
            "bce-logits": blended_bce_with_logits,
        }[name]

    def fn():
        loss = loss_fn(logits, implicit, explicit)
        return loss, *torch.autograd.grad(loss, (logits,))

    if name == "compile":
        try:
            fn()  # compile the forward and backward graphs now
        except Exception as exc:  # inductor needs a working C++ compiler (CPU) or Triton (CUDA)
            pytest.skip(f"torch.compile is unusable here: {type(exc).__name__}: {exc}")
    return fn


def test_hybrid_bce_loss(benchmark, device, case, contender):
    fn = _contender(contender, case, device)
    if contender != "dmfx":
        assert_agree(fn(), _contender("dmfx", case, device)(), what=f"{contender} vs dmfx")
    measure(benchmark, fn, group=f"hybrid_bce_loss fwd+bwd {case.id}", contender=contender)
