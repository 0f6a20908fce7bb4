"""Timing and comparison helpers shared by the benchmark files (pytest wiring is in conftest.py)."""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Sequence

import torch

# Each contender gets about this much measured time; rounds are clamped to [MIN, MAX] so that
# slow contenders (the dense input on 2 CPU cores) still get a median and fast ones stay short.
BUDGET_S = float(os.environ.get("DMFX_BENCH_BUDGET_S", "1.0"))
MIN_ROUNDS, MAX_ROUNDS = 5, 200
# A round repeats the call until it lasts this long, so the two synchronisations and the timer
# reads that bracket a round are amortised over sub-millisecond calls.
MIN_ROUND_S = 2e-3
# Warm-up: at least WARMUP_CALLS calls, more until WARMUP_S has passed (at most MAX_WARMUP_CALLS).
# Two calls were not enough on CPU: the first contender to allocate 64 MiB outputs on huge pages
# paid the kernel's page compaction for several more calls (a 2.5x slower median).
WARMUP_CALLS, WARMUP_S, MAX_WARMUP_CALLS = 2, 0.3, 50


def synchronized_timer() -> float:
    """``time.perf_counter`` after waiting for queued CUDA work: the benchmarks' timer.

    pytest-benchmark reads the timer before and after each round, so a round measures the
    kernels it launched, not just their launch.
    """
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(benchmark, fn: Callable[[], object], *, group: str, contender: str, **extra_info):
    """Time ``fn()`` with pytest-benchmark under ``group`` and return one result of ``fn``.

    ``fn`` must be self-contained and repeatable (it should return gradients via
    ``torch.autograd.grad`` rather than accumulate into ``.grad``, so there is nothing to zero
    between calls). It is warmed up first: allocator caches, lazy CUDA initialisation and
    cuBLAS handles are not what we are measuring.
    """
    benchmark.group = group
    benchmark.extra_info.update(contender=contender, **extra_info)
    if benchmark.disabled:  # --benchmark-disable: a smoke run, call once
        return benchmark(fn)
    once, calls, began = float("inf"), 0, synchronized_timer()
    while calls < WARMUP_CALLS or (synchronized_timer() - began < WARMUP_S
                                   and calls < MAX_WARMUP_CALLS):
        start = synchronized_timer()
        fn()
        once = min(once, max(synchronized_timer() - start, 1e-7))  # calibrates the rounds
        calls += 1
    iterations = max(1, math.ceil(MIN_ROUND_S / once))
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(BUDGET_S / (once * iterations))))
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations)


def median_s(benchmark) -> float:
    """The median seconds per call of the benchmark just run."""
    return benchmark.stats.stats.median


def assert_agree(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], *, what: str,
                 rtol: float = 1e-4) -> None:
    """Each tensor of ``got`` equals the one of ``want`` up to float32 summation-order noise.

    The absolute tolerance scales with the reference's magnitude: the contenders add the same
    terms in different orders (atomics, blocked BLAS sums), so the error is relative to the size
    of the sums, not to each element, and an element that cancels to ~0 must not fail.
    """
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.detach(), w.detach()
        scale = float(w.abs().max()) if w.numel() else 0.0
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale + 1e-12,
                                   msg=lambda m: f"{what}, output {i}: {m}")


def device_name(device: torch.device) -> str:
    """A human name of the benchmark device: GPU model, or CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
