"""The Amazon-scale run of `dmfx train`, measured end to end: one process, then N ranks.

Runs `dmfx train` on the power-law synthetic matrix (default 2M users x 1M items x 50M ratings)
for a bounded number of steps, once as one process and once per rank count under torchrun
(`--distributed sharded`, gloo on the CPU), and records for each: time per step, training pairs
per second, the projected epoch, each process's peak resident memory (the kernel's VmHWM, read
every half second until the process ends; for one process the exact ru_maxrss of the child;
on CUDA also the GPU's allocated peak), the whole run's wall time and the final test metrics.

    nice .venv/bin/python benchmarks/amazon_scale.py --out bench-out/amazon-scale
    python benchmarks/amazon_scale.py --device cuda --ranks 1 --batch-size 8192   # on a GPU

writes amazon_scale.json and amazon_scale.md. A benchmark, not a test: minutes per run at 50M
ratings on a 2-core CPU and ~12 GiB of memory. Nothing else should run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def _hwm_bytes(pid: int) -> int:
    """The peak resident memory of ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _trainers(root: int) -> list[int]:
    """``root`` and its descendants that run `dmfx train` (torchrun's ranks, or root itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            argv = []
        launcher = b"torch.distributed.run" in argv or any(a.endswith(b"torchrun") for a in argv)
        if b"dmfx" in argv and b"train" in argv and not launcher:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


def run_one(ranks: int, args, out: Path) -> dict:
    folder = out / f"run-{ranks}"
    shutil.rmtree(folder, ignore_errors=True)
    train = ["-m", "dmfx", "train", "--dataset", args.dataset, "--user-layers", args.layers,
             "--item-layers", args.layers, "--sparse-grad", "--pairs", "batch",
             "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--epochs", "1",
             "--no-full-ranking", "--device", args.device, "--output", str(folder)]
    if ranks == 1:
        command = [sys.executable, *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", *train, "--distributed", "sharded"]
    start = time.perf_counter()
    log_path = out / f"run-{ranks}.log"
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peaks: dict[int, int] = {}
    while True:
        # wait4, not poll: its rusage holds the child's exact peak (ru_maxrss, in KiB).
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        for trainer in _trainers(child.pid):
            peaks[trainer] = max(peaks.get(trainer, 0), _hwm_bytes(trainer))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{text[-3000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    entry = metrics["history"][-1]
    evaluated = int(re.search(r"([\d,]+) evaluated", text).group(1).replace(",", ""))
    nnz = metrics["config"]["data"]["fingerprint"]["nnz"]
    negatives = metrics["config"]["train"]["num_negatives"]
    epoch_pairs = (nnz - 2 * evaluated) * (1 + negatives)  # leave-one-out: 2 held out per user
    # One process: the exact peak; ranks: their VmHWM as last read (a rank's last half second
    # can be missed).
    per_rank = [usage.ru_maxrss * 1024 / GIB] if ranks == 1 else \
        [peaks[pid] / GIB for pid in sorted(peaks)]
    return {"ranks": ranks, "steps": entry["steps"], "step_ms": 1e3 * entry["seconds"] / entry["steps"],
            "pairs_per_s": entry["pairs_per_s"], "epoch_pairs": epoch_pairs,
            "epoch_h": epoch_pairs / entry["pairs_per_s"] / 3600, "peak_gib": per_rank,
            "wall_s": wall, "test": {k: metrics["test"][k] for k in ("hr@10", "ndcg@10")},
            # what the trainer records at the epoch's end: on CUDA, the GPU's allocated peak
            "trainer_peak_gib": [m / 1024 for m in entry.get("peak_memory_mb_per_rank",
                                                              [entry["peak_memory_mb"]])]}


def report(rows: list[dict], args, device: str) -> str:
    def cell(row, key):
        r = row
        return {"step": f"{r['step_ms']:.0f} ms", "pairs": f"{r['pairs_per_s']:,.0f}",
                "epoch": f"{r['epoch_h']:.1f} h",
                "peak": ", ".join(f"{g:.1f} GiB" for g in r["peak_gib"]),
                "gpu": ", ".join(f"{g:.1f} GiB" for g in r["trainer_peak_gib"]),
                "wall": f"{int(r['wall_s'] // 60)} min {r['wall_s'] % 60:.0f} s",
                "test": f"{r['test']['hr@10']:.3f} / {r['test']['ndcg@10']:.3f}"}[key]
    names = ["one process" if r["ranks"] == 1 else f"{r['ranks']} ranks, sharded" for r in rows]
    lines = [f"{args.dataset}, h1 = {args.layers.split(',')[0]}, B = {args.batch_size}, "
             f"{args.steps} steps, on {device}", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(rows)]
    for key, label in (("step", "time per training step"), ("pairs", "training pairs per second"),
                       ("epoch", f"one epoch ({rows[0]['epoch_pairs'] / 1e6:,.0f}M pairs), projected"),
                       ("peak", "peak resident memory (per rank)"),
                       *([("gpu", "peak GPU memory allocated (per rank)")]
                         if args.device == "cuda" else []),
                       ("wall", "whole run (data, split, steps, evaluation, model.pt)"),
                       ("test", "test HR@10 / NDCG@10 (sampled, 100 items)")):
        lines.append(f"| {label} | " + " | ".join(cell(r, key) for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic:2000000x1000000x50000000")
    parser.add_argument("--ranks", default="1,2", help="comma-separated; 1 = one process")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--layers", default="64,64")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default="bench-out/amazon-scale")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    import torch

    from dmfx.bench.core import device_name

    device = device_name(torch.device(args.device))
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        rows.append(run_one(ranks, args, out))
        print(json.dumps(rows[-1]), flush=True)
    (out / "amazon_scale.json").write_text(json.dumps({"device": device, "args": vars(args),
                                                       "rows": rows}, indent=1))
    text = report(rows, args, device)
    (out / "amazon_scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
