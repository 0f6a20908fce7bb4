"""pytest-benchmark timing of the shared contenders (``dmfx.bench``; pytest wiring in conftest.py).

The contenders, their inputs and their checks against dmfx live in the package, where ``dmfx
bench`` uses them too; what is left here is how the suites time them with pytest-benchmark.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import pytest

from dmfx.bench import Op, Unavailable, warm_up

# Each contender gets about this much measured time; rounds are clamped to [MIN, MAX] so that
# slow contenders (the dense input on 2 CPU cores) still get a median and fast ones stay short.
BUDGET_S = float(os.environ.get("DMFX_BENCH_BUDGET_S", "1.0"))
MIN_ROUNDS, MAX_ROUNDS = 5, 200
# A round repeats the call until it lasts this long, so the two synchronisations and the timer
# reads that bracket a round are amortised over sub-millisecond calls.
MIN_ROUND_S = 2e-3


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
    between calls). It is warmed up first; the warm-up's fastest call sizes the rounds.
    """
    benchmark.group = group
    benchmark.extra_info.update(contender=contender, **extra_info)
    if benchmark.disabled:  # --benchmark-disable: a smoke run, call once
        return benchmark(fn)
    once = warm_up(fn)
    iterations = max(1, math.ceil(MIN_ROUND_S / once))
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(BUDGET_S / (once * iterations))))
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations)


def median_s(benchmark) -> float:
    """The median seconds per call of the benchmark just run."""
    return benchmark.stats.stats.median
