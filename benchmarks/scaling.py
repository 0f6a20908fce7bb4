"""How the cost of a DMF training step grows with the matrix: dmfx beside its PyTorch peers.

For each size (ratings; users = ratings / 25 and items = ratings / 50, the shape of the Amazon
review sets, 2M x 1M at 50M) and each contender of :mod:`dmfx.bench.train_step`, a fresh
process builds the power-law synthetic matrix, checks the contender against dmfx (its loss on
the first batch, and on the second after one step on the first), and times 20 consecutive
training steps (B = 256, towers 64,64, 7 negatives) several times; the median is reported per step. Memory is the training state the step works on, counted
tensor by tensor after the timed steps (weights, gradients, optimizer state, the rating
matrices; each storage once): deterministic, and the same accounting for every contender.
The whole-process peak of a `dmfx train` run is measured separately (benchmarks/RESULTS.md).

    python benchmarks/scaling.py --sizes 100000,1000000,5000000,50000000 --out bench-out/scaling

writes scaling.json, scaling.md (the table and the fitted per-rating costs) and scaling.png.
A benchmark, not a test: it takes minutes per size at 50M ratings on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("dmfx", "dmfx-sparse-grad", "dense-input", "embedding_bag")
BATCH, LAYERS, REPEATS = 256, (64, 64), 5


def measure_one(nnz: int, contender: str, device: str) -> dict:
    """Runs in its own process: one contender at one size."""
    import torch

    from dmfx.bench import train_step as op
    from dmfx.bench.core import Unavailable
    from dmfx.data import synthetic

    users, items = max(1, nnz // 25), max(1, nnz // 50)
    start = time.perf_counter()
    train = synthetic(users, items, nnz, seed=0)
    problem = op.problem(train, BATCH, LAYERS, torch.device(device))
    built = time.perf_counter() - start
    row = {"nnz": nnz, "users": users, "items": items, "contender": contender,
           "device": device, "build_s": built}
    try:
        prepared = op.prepare(problem, contender)
    except Unavailable as why:
        return {**row, "status": f"unavailable: {why}"}
    prepared.fn()  # warm-up: first-touch of the optimizer state
    calls = []
    for _ in range(REPEATS):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prepared.fn()
        if device == "cuda":
            torch.cuda.synchronize()
        calls.append(time.perf_counter() - t0)
    step_s = statistics.median(calls) / len(problem.batches)
    state = _state_bytes(list(prepared.state))
    return {**row, "status": "ok", "step_s": step_s, "step_s_all": [c / len(problem.batches)
                                                                   for c in calls],
            "state_bytes": state, "check": prepared.check}


def _state_bytes(objects: list) -> int:
    """Bytes of the distinct storages of every tensor reachable from the contender's model and
    optimizer: weights, gradients, buffers (dmfx's rating matrices), tensors a peer keeps as
    plain attributes (its rating matrices or padded histories) and optimizer state."""
    import torch

    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, (tuple, list)):  # a CSR, a pair of tensors
            for x in t:
                add(x)
        elif isinstance(t, torch.Tensor):
            if t.layout != torch.strided:  # a row-sparse gradient: its indices and values
                add(t._indices())
                add(t._values())
                return
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for module in obj.modules():
                for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                    add(t)
                    add(t.grad)
                for value in vars(module).values():
                    add(value)
        else:
            for state in _optimizer_states(obj):
                for t in state.values():
                    add(t)
    return sum(seen.values())


def _optimizer_states(obj):
    import torch

    if isinstance(obj, torch.optim.Optimizer):
        return list(obj.state.values())
    # dmfx's SplitAdam: a dense and a sparse optimizer stepped together
    return [s for opt in vars(obj).values() if isinstance(opt, torch.optim.Optimizer)
            for s in opt.state.values()]


def fit_per_rating(points: list[tuple[int, float]]) -> float:
    """The slope ``b`` of the least-squares line ``y = a + b * nnz``."""
    import numpy as np

    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


def report(rows: list[dict], out: Path, device_name: str) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [f"Device: {device_name}. DMF training step, B = {BATCH}, towers "
             f"{','.join(map(str, LAYERS))}, 7 negatives; median of {REPEATS} calls of 20 steps. "
             "Memory: the training state (weights, gradients, optimizer state, rating matrices).",
             "", "| ratings | users x items | contender | ms / step | state MB |",
             "|---:|---|---|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["nnz"], CONTENDERS.index(r["contender"]))):
        shape = f"{r['users']:,} x {r['items']:,}"
        if r["status"] != "ok":
            lines.append(f"| {r['nnz']:,} | {shape} | {r['contender']} | {r['status']} | |")
            continue
        lines.append(f"| {r['nnz']:,} | {shape} | {r['contender']} | {1e3 * r['step_s']:.2f} | "
                     f"{r['state_bytes'] / 2**20:,.0f} |")
    lines += ["", "Fitted growth over the sizes each contender ran at (y = a + b x ratings):", ""]
    for name in CONTENDERS:
        mine = [r for r in ok if r["contender"] == name]
        if len(mine) < 2:
            continue
        time_b = fit_per_rating([(r["nnz"], r["step_s"]) for r in mine])
        mem_b = fit_per_rating([(r["nnz"], r["state_bytes"]) for r in mine])
        lines.append(f"- {name}: {1e9 * time_b:.3f} ns per rating per step, "
                     f"{mem_b:.1f} bytes of state per rating "
                     f"({min(r['nnz'] for r in mine):,} to {max(r['nnz'] for r in mine):,} ratings)")
    text = "\n".join(lines) + "\n"
    (out / "scaling.md").write_text(text)
    _plot(ok, out / "scaling.png", device_name)
    return text


def _plot(ok: list[dict], path: Path, device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in CONTENDERS:
        mine = sorted((r for r in ok if r["contender"] == name), key=lambda r: r["nnz"])
        if not mine:
            continue
        x = [r["nnz"] for r in mine]
        left.plot(x, [1e3 * r["step_s"] for r in mine], "o-", label=name)
        right.plot(x, [r["state_bytes"] / 2**20 for r in mine], "o-", label=name)
    for ax, label in ((left, "ms per training step"), (right, "training state, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ratings (users = ratings / 25, items = ratings / 50)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend()
    fig.suptitle(f"DMF training step cost against matrix size ({device_name}, B={BATCH})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000,50000000",
                        help="ratings per matrix, comma-separated")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default="bench-out/scaling")
    parser.add_argument("--one", nargs=2, metavar=("NNZ", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(int(args.one[0]), args.one[1], args.device)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    contenders = args.contenders.split(",")
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"--contenders: unknown {unknown[0]!r}; choose from {', '.join(CONTENDERS)}")
    for nnz in sizes:
        for name in contenders:
            print(f"{nnz:,} ratings, {name} ...", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, __file__, "--device", args.device,
                                   "--one", str(nnz), name], cwd=ROOT, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"nnz": nnz, "users": max(1, nnz // 25), "items": max(1, nnz // 50),
                             "contender": name, "status": f"failed: {last[:160]}"})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    import torch

    from dmfx.bench import device_name

    print(report(rows, out, device_name(torch.device(args.device))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
