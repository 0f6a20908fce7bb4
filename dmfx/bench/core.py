"""What every benchmarked op shares: the contender record, the agreement check, the warm-up and
the timing (one implementation for ``dmfx bench`` and the ``benchmarks/`` suites), the float32
settings a run pins."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
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

# Timing: a block repeats the call until it lasts at least MIN_BLOCK_S (sized from the warm-up's
# fastest call), so the device synchronisation and the clock reads around a block are amortised
# over sub-millisecond calls. At least MIN_BLOCKS blocks, more until the budget (--min-time,
# DMFX_BENCH_BUDGET_S) is spent, at most MAX_BLOCKS (then the blocks grow instead). A slow call
# whose MIN_BLOCKS blocks would take over MAX_OVERRUN budgets gets fewer, never under FEW_BLOCKS.
# The median and the IQR are taken over blocks; an IQR needs IQR_BLOCKS of them.
MIN_BLOCK_S = 2e-3
MIN_BLOCKS, MAX_BLOCKS, FEW_BLOCKS, IQR_BLOCKS = 20, 200, 5, 4
MAX_OVERRUN = 5.0


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


def block_plan(once: float, budget_s: float) -> tuple[int, int]:
    """``(calls per block, blocks)`` for a call whose fastest warm-up call took ``once`` seconds
    and a measured budget of ``budget_s`` seconds (see MIN_BLOCK_S)."""
    once = max(once, 1e-9)
    calls = max(1, math.ceil(MIN_BLOCK_S / once), math.ceil(budget_s / (MAX_BLOCKS * once)))
    block = once * calls
    blocks = min(MAX_BLOCKS, max(MIN_BLOCKS, int(budget_s / block)))
    if blocks * block > MAX_OVERRUN * budget_s:
        blocks = max(FEW_BLOCKS, int(MAX_OVERRUN * budget_s / block))
    return calls, blocks


def plan(fn: Callable[[], object], budget_s: float) -> tuple[int, int]:
    """Warm ``fn`` up (:func:`warm_up`, no longer than the budget) and size its blocks
    (:func:`block_plan`): what ``dmfx bench`` and the suites' ``harness.measure`` both time by."""
    return block_plan(warm_up(fn, min(WARMUP_S, budget_s)), budget_s)


@dataclass(frozen=True)
class Measurement:
    """Seconds per call of each block (``times``) of ``calls_per_run`` calls."""

    times: tuple
    calls_per_run: int

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> float | None:
        """Third minus first quartile over blocks; None under IQR_BLOCKS blocks."""
        if len(self.times) < IQR_BLOCKS:
            return None
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q3 - q1


def measure(fn: Callable[[], object], budget_s: float) -> Measurement:
    """Time ``fn()`` as :func:`plan` sizes it: each block between two :func:`synchronized_timer`
    reads, so a CUDA block ends when its kernels do and back-to-back calls overlap as in a
    training loop."""
    calls, blocks = plan(fn, budget_s)
    times = []
    for _ in range(blocks):
        start = synchronized_timer()
        for _ in range(calls):
            fn()
        times.append((synchronized_timer() - start) / calls)
    return Measurement(tuple(times), calls)


def _legacy_precision() -> list:
    """(key, getter, setter) of torch's float32 settings as this module pins and records them;
    restored in reverse (the flags, then the matmul precision, which also sets cuBLAS's flag)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return [("float32_matmul_precision", torch.get_float32_matmul_precision,
             torch.set_float32_matmul_precision),
            ("cuda_matmul_allow_tf32", lambda: matmul.allow_tf32,
             lambda v: setattr(matmul, "allow_tf32", v)),
            ("cudnn_allow_tf32", lambda: cudnn.allow_tf32,
             lambda v: setattr(cudnn, "allow_tf32", v))]


def _new_precision() -> list:
    """(key, backend) of torch's newer ``fp32_precision`` settings, where this torch has them."""
    backends = [("cuda_matmul_fp32_precision", torch.backends.cuda.matmul),
                ("cudnn_conv_fp32_precision", getattr(torch.backends.cudnn, "conv", None)),
                ("cudnn_rnn_fp32_precision", getattr(torch.backends.cudnn, "rnn", None))]
    return [(key, b) for key, b in backends if hasattr(b, "fp32_precision")]


def _read(getter):
    try:
        return getter()
    except RuntimeError:  # torch refuses a legacy getter once the legacy and the new API were mixed
        return None


def precision_settings() -> dict:
    """The float32 settings in force (None: torch refuses to say): what a CUDA time of a float32
    matmul or convolution depends on."""
    return {**{key: _read(get) for key, get, _ in _legacy_precision()},
            **{key: _read(lambda b=b: b.fp32_precision) for key, b in _new_precision()}}


@contextlib.contextmanager
def full_float32():
    """Pin full-precision float32 for a run: no TF32 in cuBLAS or cuDNN, matmul precision
    "highest" (torch's defaults, which a user's or a library's code may have changed); the
    settings before are restored after (those torch lets be read: a state left by mixing its
    legacy and new APIs comes back with the same TF32 flags). Every contender is checked and
    timed in true float32."""
    legacy = [(get, set_, _read(get)) for _, get, set_ in _legacy_precision()]
    new = [(b, _read(lambda b=b: b.fp32_precision)) for _, b in _new_precision()]
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        # Only what differs is set again: setting an equal value can make torch's two APIs
        # disagree (a "medium" precision, then cuBLAS's flag, say).
        for get, set_, before in reversed(legacy):
            if before is not None and _read(get) != before:
                set_(before)
        for b, before in new:
            if before is not None and b.fp32_precision != before:
                b.fp32_precision = before


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=20, check=True).stdout.strip()


def commit_info() -> dict | None:
    """The git commit of the dmfx source being benchmarked (``id``) and whether the checkout has
    uncommitted changes (``dirty``, untracked files included, as ``tools/check_gpu.sh`` says);
    None when dmfx does not run from the top of a git checkout or git is missing."""
    root = Path(__file__).resolve().parents[2]  # dmfx/bench/core.py -> the checkout
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root:
            return None  # an installed dmfx inside some other repository (a venv in a checkout)
        return {"id": _git(root, "rev-parse", "HEAD"),
                "dirty": bool(_git(root, "status", "--porcelain"))}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def driver_version(device: torch.device) -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``) for a CUDA device; None elsewhere or when
    nvidia-smi is missing or fails."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if line.strip()), None)
