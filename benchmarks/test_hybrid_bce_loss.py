"""EINMF's hybrid loss, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The contenders (dmfx, the naive eager port, torch.compile of it, ``F.binary_cross_entropy_with_logits``
on the blended target), their inputs (1 positive and 4 negatives per pair, eta = 0.6) and the check
of each against dmfx are :mod:`dmfx.bench.hybrid_bce_loss`'s, shared with ``dmfx bench``; this
file picks the batch sizes (B = 1024 is the paper's) and times them with pytest-benchmark.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.harness import measure, prepared
from dmfx.bench import hybrid_bce_loss as op


@dataclass(frozen=True)
class Case:
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"B{self.batch}"


CASES = [Case(1_024), Case(8_192), Case(262_144), Case(1_048_576, cuda_only=True)]
CONTENDERS = op.CONTENDERS


@functools.lru_cache(maxsize=1)
def _problem(case: Case, device: torch.device) -> op.Problem:
    return op.problem(case.batch, device)


def test_hybrid_bce_loss(benchmark, device, case, contender):
    fn = prepared(op.OP, _problem(case, device), contender)
    measure(benchmark, fn, group=f"hybrid_bce_loss fwd+bwd {case.id}", contender=contender)
