"""pytest-benchmark timing of the shared contenders (``dmfx.bench``; pytest wiring in conftest.py).

The contenders, their inputs, their checks against dmfx and how a call is timed (warm-up, calls
per block, number of blocks: :func:`dmfx.bench.core.plan`) live in the package, where ``dmfx
bench`` uses them too; what is left here is handing that plan to pytest-benchmark (a round is a
block, its iterations the calls per block).
"""
from __future__ import annotations

import os
from typing import Callable

import pytest

from dmfx.bench import Op, Unavailable
from dmfx.bench.core import plan

# Each contender gets about this much measured time (dmfx bench's --min-time): at least 20
# rounds of >= 2 ms, more until the budget is spent (see dmfx.bench.core.block_plan).
BUDGET_S = float(os.environ.get("DMFX_BENCH_BUDGET_S", "1.0"))


def prepared(op: Op, problem, contender: str) -> Callable[[], object]:
    """The contender's call, checked against dmfx on ``problem`` (a failed check fails the test);
    a contender that cannot run here is skipped with the reason."""
    try:
        return op.prepare(problem, contender).fn
    except Unavailable as exc:
        pytest.skip(str(exc))


def measure(benchmark, fn: Callable[[], object], *, group: str, contender: str, **extra_info):
    """Time ``fn()`` with pytest-benchmark under ``group`` and return one result of ``fn``.

    ``fn`` must be self-contained and repeatable (it should return gradients via
    ``torch.autograd.grad`` rather than accumulate into ``.grad``, so there is nothing to zero
    between calls). It is warmed up first; the warm-up's fastest call sizes the rounds, as
    ``dmfx bench`` sizes its blocks (:func:`dmfx.bench.core.plan`).
    """
    benchmark.group = group
    benchmark.extra_info.update(contender=contender, **extra_info)
    if benchmark.disabled:  # --benchmark-disable: a smoke run, call once
        return benchmark(fn)
    iterations, rounds = plan(fn, BUDGET_S)
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations)


def median_s(benchmark) -> float:
    """The median seconds per call of the benchmark just run."""
    return benchmark.stats.stats.median
