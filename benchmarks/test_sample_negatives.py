"""One epoch of negatives: ``negatives`` items per observed pair, each user repeated per its degree.

The contenders (dmfx's exact sampler, the vectorised rejection sampler of dmfx.reference), the
shuffled epoch of users and the check of every sample (shape, ids in range, no positive of the
user) are :mod:`dmfx.bench.sample_negatives`'s, shared with ``dmfx bench``; this file picks the
shapes and times them with pytest-benchmark.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from benchmarks.harness import measure, median_s, prepared
from dmfx.bench import sample_negatives as op


@dataclass(frozen=True)
class Case:
    matrix: str
    negatives: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"{self.matrix}-neg{self.negatives}"


CASES = [Case("ml-1m", 7), Case("2m-1m-50m", 4, cuda_only=True, big=True)]
CONTENDERS = op.CONTENDERS


@functools.lru_cache(maxsize=1)
def _problem(case: Case, csr) -> op.Problem:
    return op.problem(csr, case.negatives)


def test_sample_negatives(benchmark, matrix, case, contender):
    problem = _problem(case, matrix(case.matrix))
    fn = prepared(op.OP, problem, contender)
    measure(benchmark, fn, group=f"sample_negatives epoch {case.id}", contender=contender,
            samples=problem.samples)
    if not benchmark.disabled:
        benchmark.extra_info.update(op.OP.rates(problem, median_s(benchmark)))
