"""Score + loss of DMF, forward + backward: fused dmfx vs the eager composite vs torch.compile.

The contenders, their inputs (ReLU tower outputs of size k = 64, 1 positive and 7 negatives per
observed pair) and the check of each against dmfx are :mod:`dmfx.bench.cosine_nce_loss`'s, shared
with ``dmfx bench``; this file picks the batch sizes and times them with pytest-benchmark.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.harness import measure, prepared
from dmfx.bench import cosine_nce_loss as op

LATENT = 64


@dataclass(frozen=True)
class Case:
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"k{LATENT}-B{self.batch}"


CASES = [Case(8_192), Case(262_144), Case(1_048_576, cuda_only=True)]
CONTENDERS = op.CONTENDERS


@functools.lru_cache(maxsize=1)
def _problem(case: Case, device: torch.device) -> op.Problem:
    return op.problem(case.batch, LATENT, device)


def test_cosine_nce_loss(benchmark, device, case, contender):
    fn = prepared(op.OP, _problem(case, device), contender)
    measure(benchmark, fn, group=f"cosine_nce_loss fwd+bwd {case.id}", contender=contender)
