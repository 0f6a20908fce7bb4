"""Reproduces the README's MovieLens-100K table: each model over several seeds, mean +- std.

    python tools/reproduce.py --seeds 0 1 2 --jobs 2 --out runs/repro

Runs `dmfx train --dataset ml-100k` for each (model, seed) with one CPU thread per job, then
prints a markdown table (and writes it to OUT/table.md). The split is fixed (split seed 0);
the seed varies initialisation, negatives and batch order. Finished runs are reused.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> (dmfx train arguments, paper HR@10, paper NDCG@10) from the DMF paper's Table 2.
MODELS = {
    "DMF-2-nce": ([], 0.687, 0.409),
    "DMF-1-nce": (["--user-layers", "64", "--item-layers", "64"], None, None),
    "LFM-nce": (["--model", "lfm", "--user-layers", "64", "--item-layers", "64"], None, None),
    "ItemPop": (["--model", "itempop"], 0.406, 0.231),
}


def run(name: str, seed: int, out: Path) -> dict:
    folder = out / f"{name}-seed{seed}"
    if not (folder / "metrics.json").is_file():
        args, _, _ = MODELS[name]
        cmd = [sys.executable, "-m", "dmfx", "train", "--dataset", "ml-100k", "--seed", str(seed),
               "--threads", "1", "--quiet", "--output", str(folder), *args]
        if (folder / "checkpoint.pt").is_file():
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env)
    return json.loads((folder / "metrics.json").read_text())


def mean_std(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _span(values) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("runs/repro"))
    args = parser.parse_args()
    jobs = [(name, seed) for name in args.models for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(lambda job: run(*job, args.out), jobs)))
    lines = ["| model | HR@10 | NDCG@10 | paper HR@10 | paper NDCG@10 | best epoch | epochs run | s / epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        runs = [results[(name, seed)] for seed in args.seeds]
        _, paper_hr, paper_ndcg = MODELS[name]
        # Per-epoch time from the history: a resumed run's total wall time covers only its tail.
        epoch_seconds = [h["seconds"] for r in runs for h in r["history"]]
        training = [_span([r["best_epoch"] for r in runs]), _span([len(r["history"]) for r in runs]),
                    f"{statistics.median(epoch_seconds):.0f}"] if epoch_seconds else ["—"] * 3
        cells = [name, mean_std([r["test"]["hr@10"] for r in runs]),
                 mean_std([r["test"]["ndcg@10"] for r in runs]),
                 str(paper_hr or "—"), str(paper_ndcg or "—"), *training]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
