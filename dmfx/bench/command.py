"""``dmfx bench``: time dmfx's ops and a DMF training step beside their PyTorch peers on your
device and your shapes.

    dmfx bench                                   # ML-100K-sized inputs, every op, default device
    dmfx bench --device cuda --shape ml-1m --batch 8192 --json ml-1m.json --plot ml-1m.png
    dmfx bench --users 50000 --items 20000 --nnz 2000000 --hidden 512,128 --ops train_step

The contenders, their inputs, the checks and the timing are those of the repository's benchmark
suites (:mod:`dmfx.bench`; :func:`dmfx.bench.core.measure`: after a warm-up, blocks of calls of at
least 2 ms sized from its fastest call, a device synchronisation around each block, at least 20
blocks and more until ``--min-time``, the median and IQR over blocks), with torch's current
thread count and full float32 (no TF32) for the run. Each op's table is printed, and ``--json``
rewritten, as soon as that op is done, so a run cut short keeps what it finished.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import sys
from typing import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.benchmark.utils.common import select_unit
from tqdm import tqdm

from .. import __version__
from ..checkpoint import write_json
from ..reproduce import seed_arg
from ..data import synthetic
from . import (OPS, cosine_nce_loss, hybrid_bce_loss, sample_negatives, sparse_rows_matmul,
               train_step)
from .core import (BASELINE, FEW_BLOCKS, MIN_BLOCK_S, MIN_BLOCKS, CheckFailed, Unavailable,
                   commit_info, device_name, driver_version, full_float32, measure,
                   precision_settings)
from .inputs import SHAPES, to_device

OP_NAMES = tuple(OPS)
DEFAULT_SHAPE = "ml-100k"


@dataclass(frozen=True)
class Inputs:
    """The user's shape: a synthetic power-law matrix and the model / batch sizes."""

    users: int
    items: int
    nnz: int
    hidden: tuple  # tower widths: the first is the first layer's, the last the latent size
    batch: int
    negatives: int
    seed: int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="time dmfx's ops and a training step beside their PyTorch peers on your "
        "device and shapes", description="Time dmfx's ops and a DMF training step beside their "
        "PyTorch peers on your device and shapes. Every peer is first checked against dmfx on "
        "the same input, then each contender is timed in this run on those inputs, in full "
        "float32 (TF32 off); each op's table gives medians and each one's ratio to dmfx's and "
        "is printed (and --json rewritten) as soon as the op is done.")
    g = p.add_argument_group("inputs (synthetic power-law ratings, as dmfx.data.synthetic)")
    g.add_argument("--shape", default=None, metavar="NAME",
                   help=f"preset users/items/nnz: {', '.join(SHAPES)} (default {DEFAULT_SHAPE}; "
                        "--users, --items, --nnz override it)")
    g.add_argument("--users", type=int, default=None, help="rows of the rating matrix")
    g.add_argument("--items", type=int, default=None, help="columns of the rating matrix")
    g.add_argument("--nnz", type=int, default=None,
                   help="ratings (at most half of users x items)")
    g.add_argument("--hidden", default="256,64", metavar="H[,H...]",
                   help="tower widths (default 256,64, the paper's DMF-2): the first is the first "
                        "layer's (sparse_rows_matmul), the last the latent size (cosine_nce_loss)")
    g.add_argument("--batch", type=int, default=256,
                   help="rows (first layer) or pairs (losses, each training step) per call (default "
                        "256)")
    g.add_argument("--negatives", type=int, default=7,
                   help="negatives per observed pair (sample_negatives, train_step; default 7)")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of the synthetic matrix")
    r = p.add_argument_group("run")
    r.add_argument("--ops", nargs="+", default=None, metavar="OP",
                   help=f"ops to time (default all): {', '.join(OP_NAMES)}")
    r.add_argument("--skip", nargs="+", default=[], metavar="CONTENDER",
                   help="contenders to leave out, e.g. compile (torch.compile takes a while)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    r.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch (default: torch's, as your training would use)")
    r.add_argument("--min-time", type=float, default=1.0, metavar="S",
                   help=f"seconds of timed calls per contender (default 1.0; at least "
                        f"{MIN_BLOCKS} blocks of calls are timed, {FEW_BLOCKS} for a slow call)")
    r.add_argument("--json", default=None, metavar="FILE",
                   help="also write the results as JSON (rewritten after each op)")
    r.add_argument("--plot", default=None, metavar="FILE",
                   help="also draw dmfx's speed-up over each peer as a PNG (needs matplotlib)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_bench, parser=p)


def _split(values) -> list[str]:
    """Flag values given as separate words, comma lists or both."""
    return [v for value in values for v in value.split(",") if v]


def _inputs(args) -> Inputs:
    if args.shape is not None and args.shape not in SHAPES:
        raise ValueError(f"--shape: unknown shape {args.shape!r}; choose from {', '.join(SHAPES)}")
    preset = SHAPES[args.shape or DEFAULT_SHAPE]
    users = preset.num_users if args.users is None else args.users
    items = preset.num_items if args.items is None else args.items
    nnz = preset.nnz if args.nnz is None else args.nnz
    for flag, value in (("--users", users), ("--items", items), ("--nnz", nnz),
                        ("--batch", args.batch), ("--negatives", args.negatives)):
        if value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    if 2 * nnz > users * items:
        raise ValueError(f"--nnz {nnz} is more than half of --users x --items ({users} x {items} "
                         f"= {users * items}): the synthetic matrix must be sparse")
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        hidden = ()
    if not hidden or min(hidden) < 1:
        raise ValueError(f"--hidden: expected positive tower widths like 256,64, got {args.hidden!r}")
    return Inputs(users, items, nnz, hidden, args.batch, args.negatives, args.seed)


def _selected_ops(args) -> list[str]:
    names = _split(args.ops) if args.ops else list(OP_NAMES)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"--ops: unknown op {unknown[0]!r}; choose from {', '.join(OP_NAMES)}")
    return list(dict.fromkeys(names))


def _skipped(args, ops: list[str]) -> set[str]:
    skip = set(_split(args.skip))
    known = {c for name in ops for c in OPS[name].contenders}
    unknown = sorted(skip - known)
    if unknown:
        raise ValueError(f"--skip: no contender {unknown[0]!r} in the selected ops; choose from "
                         f"{', '.join(sorted(known - {BASELINE}))}")
    if BASELINE in skip:
        raise ValueError(f"--skip: {BASELINE} is the baseline every ratio is relative to")
    return skip


def _check_output(flag: str, path: str | None) -> None:
    """Fail before minutes of timing, not after: the file's folder must exist."""
    if path is None:
        return
    if Path(path).is_dir():
        raise ValueError(f"{flag}: {path!r} is a folder; give a file name")
    if not Path(path).resolve().parent.is_dir():
        raise ValueError(f"{flag}: folder {str(Path(path).parent)!r} does not exist")


def _require_matplotlib() -> None:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise ValueError("--plot needs matplotlib, which is not installed: "
                         "pip install 'dmfx[plot]' (or matplotlib)") from None


def cmd_bench(args) -> int:
    from ..cli import _device

    inputs = _inputs(args)
    ops = _selected_ops(args)
    skip = _skipped(args, ops)
    if not math.isfinite(args.min_time) or args.min_time <= 0:
        raise ValueError(f"--min-time must be a positive number of seconds, got {args.min_time}")
    _check_output("--json", args.json)
    _check_output("--plot", args.plot)
    if args.plot:
        _require_matplotlib()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    device = _device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def progress(report: dict, name: str | None) -> None:
        """The header before the first op, each op's table as soon as it is done; the JSON
        each time, so that a run killed at a time limit keeps the ops it finished."""
        print(render_header(report) if name is None else render_op(name, report["ops"][name]),
              flush=True)
        if args.json:
            write_json(args.json, report)

    report = run(inputs, ops, device, skip=skip, min_time=args.min_time, quiet=args.quiet,
                 progress=progress)
    if args.plot:
        plot(report, args.plot)
    failed = [f"{op}: {name}: {row['reason']}" for op, result in report["ops"].items()
              for name, row in result["contenders"].items()
              if row["status"] in ("check failed", "error")]
    for line in failed:
        print(f"dmfx: error: {line}", file=sys.stderr)
    return 1 if failed else 0


class _Data:
    """The synthetic matrix, built on first use and shared by the ops that read one."""

    def __init__(self, inputs: Inputs, device: torch.device):
        self.inputs, self.device = inputs, device

    @functools.cached_property
    def interactions(self):
        s = self.inputs
        return synthetic(s.users, s.items, s.nnz, seed=s.seed)

    @functools.cached_property
    def csr(self):
        return to_device(self.interactions.csr("rating"), self.device)


# Each op's inputs at the user's shape, from the shared synthetic matrix where it reads one.
_PROBLEMS = {
    sparse_rows_matmul.OP.name: lambda s, data, device: sparse_rows_matmul.problem(
        data.csr, s.hidden[0], s.batch),
    cosine_nce_loss.OP.name: lambda s, data, device: cosine_nce_loss.problem(
        s.batch, s.hidden[-1], device),
    hybrid_bce_loss.OP.name: lambda s, data, device: hybrid_bce_loss.problem(s.batch, device),
    sample_negatives.OP.name: lambda s, data, device: sample_negatives.problem(
        data.csr, s.negatives),
    train_step.OP.name: lambda s, data, device: train_step.problem(
        data.interactions, s.batch, s.hidden, device, negatives=s.negatives),
}
_OUT_OF_MEMORY = "out of memory on this device at this shape"


def _failure(exc: Exception) -> dict:
    """The row of a contender that raised: skipped where it cannot run here, else an error."""
    if isinstance(exc, Unavailable):
        return {"status": "skipped", "reason": str(exc)}
    if isinstance(exc, CheckFailed):
        return {"status": "check failed", "reason": str(exc)}
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return {"status": "skipped", "reason": _OUT_OF_MEMORY}
    # A peer's library failing (a compiler, a sparse backend) costs its own row, not the table:
    # the run goes on and exits 1 (a sticky CUDA error would still fail the contenders after it).
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return {"status": "error", "reason": f"{type(exc).__name__}: {first}".rstrip(": ")}


def _time(op, problem, name: str, *, skip: set, min_time: float) -> dict:
    """One row of the table: the contender's check and timing, or why it has none."""
    if name in skip:
        return {"status": "skipped", "reason": "--skip"}
    try:
        contender = op.prepare(problem, name)
        m = measure(contender.fn, min_time)
    except Exception as exc:
        return _failure(exc)
    return {"status": "ok", "check": contender.check, "median_s": m.median, "iqr_s": m.iqr,
            "runs": m.runs, "calls_per_run": m.calls_per_run, **op.rates(problem, m.median)}


def _no_inputs(op, exc: Exception, skip: set) -> dict:
    """The result of an op whose inputs could not be built (out of device memory, say): every
    contender's row says why, and the run goes on with the next op."""
    row = _failure(exc)
    row["reason"] = f"its inputs: {row['reason']}"
    return {"what": "inputs not built", "baseline": BASELINE,
            "contenders": {name: {"status": "skipped", "reason": "--skip"} if name in skip
                           else dict(row) for name in op.contenders}}


def run(inputs: Inputs, ops: list[str], device: torch.device, *, skip: set = frozenset(),
        min_time: float = 1.0, quiet: bool = False,
        progress: Callable[[dict, str | None], None] | None = None) -> dict:
    """Check and time every contender of ``ops`` on ``device``; the report ``--json`` writes.

    ``progress(report, None)`` is called before the first op and ``progress(report, name)`` as
    soon as op ``name`` is in ``report["ops"]`` (``report["complete"]`` turns true with the last).
    The run pins full float32 (:func:`dmfx.bench.core.full_float32`) and restores the settings.
    """
    data = _Data(inputs, device)
    with full_float32(), \
            tqdm(total=sum(len(OPS[name].contenders) for name in ops), unit="contender",
                 disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False) as bar, \
            (torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()):

        def tell(name: str | None) -> None:
            if progress is not None:
                bar.clear()  # the table goes to stdout, the bar to stderr: one terminal
                progress(report, name)
                bar.refresh()

        report = {
            "dmfx": __version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": str(device),
            "device_name": device_name(device),
            "driver": driver_version(device),
            "commit": commit_info(),
            "threads": torch.get_num_threads(),
            "float32": precision_settings(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "timer": f"dmfx.bench.core.measure(min_time={min_time:g}): blocks of calls of "
                     f">= {MIN_BLOCK_S * 1e3:g} ms, >= {MIN_BLOCKS} blocks ({FEW_BLOCKS} for a "
                     "slow call), median and IQR over blocks",
            "inputs": {**asdict(inputs), "hidden": list(inputs.hidden)},
            "requested_ops": list(ops),
            "complete": False,
            "ops": {},
        }
        tell(None)
        for name in ops:
            op = OPS[name]
            bar.set_description(f"{name}: inputs")
            try:
                problem = _PROBLEMS[name](inputs, data, device)
            except Exception as exc:  # out of memory at this shape, say: the next op may fit
                result = _no_inputs(op, exc, skip)
                bar.update(len(op.contenders))
            else:
                rows = {}
                for contender in op.contenders:
                    bar.set_description(f"{name}: {contender}")
                    rows[contender] = _time(op, problem, contender, skip=skip, min_time=min_time)
                    bar.update()
                base = rows[BASELINE].get("median_s")
                for row in rows.values():
                    if row["status"] == "ok" and base:
                        row["vs_dmfx"] = row["median_s"] / base
                result = {"what": op.describe(problem), "baseline": BASELINE, "contenders": rows}
                del problem  # free the device before the next op's inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report["ops"][name] = result
            report["complete"] = name == ops[-1]
            tell(name)
    return report


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _seconds(t: float, like: float) -> str:
    """``t`` in the unit torch.utils.benchmark picks for ``like`` (a median: IQRs share it)."""
    unit, scale = select_unit(like)
    return f"{t / scale:.3g} {unit}"


# Derived throughputs of the ops' rates(): (key, column header, format).
_RATE_COLUMNS = (
    ("samples_per_s", "samples/s", _si),
    ("pairs_per_s", "pairs/s", _si),
    ("epoch_s", "epoch (projected)", lambda x: _seconds(x, x)),
)


def _float32(settings: dict) -> str:
    tf32 = {k: settings.get(k) for k in ("cuda_matmul_allow_tf32", "cudnn_allow_tf32")}
    return (f"float32 matmul precision {settings.get('float32_matmul_precision', '?')}, TF32 "
            + ("off" if not any(tf32.values()) else "ON")
            + f" (cuBLAS allow_tf32 {tf32['cuda_matmul_allow_tf32']}, cuDNN allow_tf32 "
            f"{tf32['cudnn_allow_tf32']})")


def render_header(report: dict) -> str:
    s = report["inputs"]
    commit = report.get("commit")
    source = ("commit unknown (not a git checkout)" if not commit
              else f"commit {commit['id'][:12]}" + (" + uncommitted changes" if commit["dirty"]
                                                     else ""))
    return "\n".join([
        f"dmfx bench on {report['device']} ({report['device_name']})"
        + (f", driver {report['driver']}" if report.get("driver") else ""),
        f"torch {report['torch']}" + (f", CUDA {report['cuda']}" if report["cuda"] else "")
        + f", dmfx {report['dmfx']} ({source}); {_float32(report.get('float32', {}))}",
        f"timing: {report['timer']}",
        f"inputs: synthetic {s['users']:,} users x {s['items']:,} items, {s['nnz']:,} ratings "
        f"(seed {s['seed']}); towers {','.join(map(str, s['hidden']))}; batch {s['batch']}; "
        f"{s['negatives']} negatives per pair",
        "median per call; vs dmfx = contender median / dmfx median (above 1: dmfx is faster)",
    ])


def render_op(name: str, result: dict) -> str:
    """One op's table, after a blank line."""
    rows = result["contenders"]
    rates = [c for c in _RATE_COLUMNS if any(c[0] in row for row in rows.values())]
    header = ["contender", "median", "IQR", "runs x calls", "vs dmfx"] + [c[1] for c in rates]
    table = []
    for contender, row in rows.items():
        if row["status"] != "ok":
            table.append([contender, f"{row['status']}: {row['reason']}"])
            continue
        median, iqr = row["median_s"], row.get("iqr_s")
        table.append([contender, _seconds(median, median),
                      "n/a" if iqr is None else _seconds(iqr, median),
                      f"{row['runs']} x {row['calls_per_run']}",
                      f"{row['vs_dmfx']:.2f}" if "vs_dmfx" in row else "n/a"]
                     + [fmt(row[key]) for key, _, fmt in rates])
    timed = [header] + [r for r in table if len(r) == len(header)]
    widths = [max(len(r[i]) for r in timed) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in [header] + table)
    lines = ["", f"{name}: {result['what']}"]
    for r in [header] + table:
        if len(r) < len(header):  # a skipped or failed contender: why, on one line
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]}")
        else:
            lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                          for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def render(report: dict) -> str:
    """The whole report as ``dmfx bench`` prints it: the header, then each op's table."""
    return "\n".join([render_header(report)]
                     + [render_op(name, result) for name, result in report["ops"].items()])


def plot(report: dict, path: str) -> None:
    """A bar per (op, peer): peer median / dmfx median. dmfx's own variants (dmfx-validate,
    dmfx-sparse-grad) are in the table, not here: they are not peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for name, result in report["ops"].items():
        for contender, row in result["contenders"].items():
            if not contender.startswith(BASELINE) and "vs_dmfx" in row:
                labels.append(f"{name}  vs {contender}")
                values.append(row["vs_dmfx"])
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(values) + 1.5))
    y = list(range(len(values)))[::-1]
    ax.barh(y, values)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(1.0, color="black", lw=1)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.2f}x", va="center", fontsize=8)
    ax.set_xlim(0, max(values, default=1.0) * 1.15)
    ax.set_xlabel("peer median / dmfx median (above 1: dmfx is faster)")
    s = report["inputs"]
    ax.set_title(f"dmfx {report['dmfx']} vs PyTorch peers: {report['device_name']}, torch "
                 f"{report['torch']}\n{s['users']:,} x {s['items']:,}, {s['nnz']:,} ratings, "
                 f"towers {','.join(map(str, s['hidden']))}, batch {s['batch']}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
