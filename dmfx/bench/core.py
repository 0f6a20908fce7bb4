"""What every benchmarked op shares: the contender record, the agreement check, the warm-up."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

# The name of dmfx's own call in every op: the baseline the peers are checked and timed against.
BASELINE = "dmfx"

# A peer that materialises dense inputs beyond this is not one anyone would run (at Amazon scale
# the dense first layer's input is 8192 x 92k floats = 3 GB).
DENSE_LIMIT_BYTES = 1 << 30

# Warm-up: at least WARMUP_CALLS calls, more until WARMUP_S has passed (at most MAX_WARMUP_CALLS).
# Two calls were not enough on CPU: the first contender to allocate 64 MiB outputs on huge pages
# paid the kernel's page compaction for several more calls (a 2.5x slower median).
WARMUP_CALLS, WARMUP_S, MAX_WARMUP_CALLS = 2, 0.3, 50


class Unavailable(Exception):
    """A contender that cannot run here or at this shape; the message says why. It is reported
    as skipped (the suites: ``pytest.skip``; ``dmfx bench``: a "skipped" row), never as a failure."""


class CheckFailed(AssertionError):
    """A contender computed something else than dmfx on the same input: it must not be timed."""


@dataclass
class Contender:
    """One way of computing an op, ready to time: ``fn()`` is self-contained and repeatable."""

    name: str
    fn: Callable[[], Any]
    # What was verified on this exact input before timing ("baseline" for dmfx's own call).
    check: str
    # What the calls train, where they train something (the model and its optimizer): for
    # counting the memory of the training state.
    state: tuple = ()


@dataclass(frozen=True)
class Op:
    """A benchmarked op: its contenders and how to prepare one on a problem (the op's inputs).

    ``prepare(problem, name)`` builds the named contender, runs it once and checks it against
    dmfx (raising :class:`CheckFailed`), or raises :class:`Unavailable`. ``describe(problem)`` is a
    one-line account of what one call computes; ``rates(problem, median_s)`` derived throughputs
    (e.g. ``pairs_per_s``) of a call of that median.
    """

    name: str
    contenders: tuple[str, ...]
    prepare: Callable[[Any, str], Contender]
    describe: Callable[[Any], str]
    rates: Callable[[Any, float], dict] = lambda problem, median_s: {}


def assert_agree(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], *, what: str,
                 rtol: float = 1e-4) -> None:
    """Each tensor of ``got`` equals the one of ``want`` up to float32 summation-order noise.

    The absolute tolerance scales with the reference's magnitude: the contenders add the same
    terms in different orders (atomics, blocked BLAS sums), so the error is relative to the size
    of the sums, not to each element, and an element that cancels to ~0 must not fail.
    """
    if len(got) != len(want):
        raise CheckFailed(f"{what}: {len(got)} outputs, dmfx has {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.detach(), w.detach()
        scale = float(w.abs().max()) if w.numel() else 0.0
        try:
            torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale + 1e-12)
        except AssertionError as exc:  # torch's message on one line: it goes into a table row
            raise CheckFailed(f"{what}, output {i}: {' '.join(str(exc).split())}") from None


def agreeing(name: str, fn: Callable[[], Sequence[torch.Tensor]],
             baseline: Callable[[], Callable[[], Sequence[torch.Tensor]]], *,
             rtol: float = 1e-4) -> Contender:
    """``fn`` as a contender, after checking that its outputs equal those of dmfx's call
    (``baseline()`` builds it) on the same input. dmfx's own call is the reference."""
    if name == BASELINE:
        return Contender(name, fn, "baseline")
    assert_agree(fn(), baseline()(), what=f"{name} vs {BASELINE}", rtol=rtol)
    return Contender(name, fn, f"outputs and gradients equal {BASELINE}'s (rtol {rtol:g})")


def compiled_now(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn``, a call of a ``torch.compile``'d function, called once so that its forward and
    backward graphs are compiled before any timing; a compiler that cannot run here makes the
    contender :class:`Unavailable`."""
    try:
        fn()
    except Exception as exc:  # inductor needs a working C++ compiler (CPU) or Triton (CUDA)
        raise Unavailable(f"torch.compile is unusable here: {type(exc).__name__}: {exc}") from exc
    return fn


def warm_up(fn: Callable[[], object], seconds: float = WARMUP_S) -> float:
    """Call ``fn`` until warm (``seconds``, at least two calls) and return its fastest call in
    seconds. Allocator caches, lazy CUDA initialisation, cuBLAS handles and page faults on fresh
    memory are not what is being measured."""
    once, calls, began = float("inf"), 0, synchronized_timer()
    while calls < WARMUP_CALLS or (synchronized_timer() - began < seconds
                                   and calls < MAX_WARMUP_CALLS):
        start = synchronized_timer()
        fn()
        once = min(once, max(synchronized_timer() - start, 1e-7))
        calls += 1
    return once


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


def synchronized_timer() -> float:
    """``time.perf_counter`` after waiting for queued CUDA work, so a timed span covers the
    kernels it launched, not just their launch."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()
