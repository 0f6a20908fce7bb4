"""RecBole's own DMF beside dmfx's DmfxDMF on ml-100k, both through RecBole's trainer and evaluator.

    .venv-recbole/bin/python -m benchmarks.recbole_side_by_side --epochs 5 --seeds 2020 2021 2022

(``make recbole-check`` builds .venv-recbole.) For each seed both models run RecBole's pipeline
as its quick start does (seed, dataset, split, seed, model, ``Trainer.fit`` with a validation each
epoch, the best epoch restored, test evaluation) at one config: RecBole's DMF defaults, with
HR@10 and NDCG@10 as the metrics and NDCG@10 choosing the best epoch. The two models alternate
which goes first from seed to seed, so drift in the machine's load hits both.

An epoch's time is what RecBole's "epoch N training [time: ...]" line measures: its
``Trainer._train_epoch`` call, timed here around the same call (wall clock), with the process's
CPU time beside it, which other jobs on a shared machine disturb less than the wall clock.
Validation is timed apart.

Writes ``OUTPUT/side_by_side.json`` (every run's epoch times and metrics, the machine, versions,
load averages) and ``OUTPUT/side_by_side.md`` (the tables), and prints the markdown.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import dmfx
from dmfx.bench import device_name
from dmfx.integrations.recbole import DmfxDMF, load_best_model, make_config
from dmfx.provenance import environment

import recbole
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_trainer, init_seed

MODELS = {"RecBole DMF": "DMF", "dmfx DmfxDMF": DmfxDMF}
METRICS = ("hit@10", "ndcg@10")
# The settings the tables state, read from RecBole's final config rather than typed.
DESCRIBED = ("user_embedding_size", "user_hidden_size_list", "item_embedding_size",
             "item_hidden_size_list", "inter_matrix_type", "train_neg_sample_args",
             "train_batch_size", "learner", "learning_rate", "eval_args")


def same_ml100k() -> bool:
    """Whether RecBole's shipped ml-100k.inter (which RecBole always reads for "ml-100k") holds
    exactly dmfx's bundled MovieLens-100K ratings, line for line."""
    theirs = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    ours = Path(dmfx.__file__).parent / "data" / "bundled" / "ml-100k.data.gz"
    with open(theirs) as handle:
        next(handle)  # RecBole's typed header
        rows = handle.read().splitlines()
    with gzip.open(ours, "rt") as handle:
        return rows == handle.read().splitlines()


def run_one(name: str, model, seed: int, epochs: int, workdir: Path) -> dict:
    config = make_config(model, "ml-100k", config_dict={
        "seed": seed,
        "epochs": epochs,
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "show_progress": False,
        "checkpoint_dir": str(workdir / f"saved-{seed}"),
    })
    load_before = os.getloadavg()
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    net = config.model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)

    times = {"train": [], "train_cpu": [], "valid": [], "valid_cpu": []}

    def timed(kind, method):
        def call(*args, **kwargs):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = method(*args, **kwargs)
            times[kind].append(time.perf_counter() - start)
            times[kind + "_cpu"].append(time.process_time() - start_cpu)
            return out
        return call

    # Instance attributes: this trainer's epochs only, RecBole's class is left as it is.
    trainer._train_epoch = timed("train", trainer._train_epoch)
    trainer._valid_epoch = timed("valid", trainer._valid_epoch)
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    load_best_model(trainer)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    result = {
        "model": name, "seed": seed,
        "config": {key: config[key] for key in DESCRIBED},
        "epoch_train_s": times["train"], "epoch_train_cpu_s": times["train_cpu"],
        "epoch_valid_s": times["valid"], "epoch_valid_cpu_s": times["valid_cpu"],
        "best_valid": {k: float(v) for k, v in best_valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    print(f"  {name:<14} seed {seed}: epochs {', '.join(f'{t:.1f}' for t in times['train'])} s; "
          f"test " + ", ".join(f"{m} {result['test'][m]:.4f}" for m in METRICS), flush=True)
    return result


def spread(values) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def summarize(runs: list, seeds: list) -> dict:
    summary = {}
    for name in MODELS:
        mine = [r for r in runs if r["model"] == name]
        summary[name] = {
            "test": {m: [r["test"][m] for r in mine] for m in METRICS},
            **{f"median_{key}": statistics.median(t for r in mine for t in r[key])
               for key in ("epoch_train_s", "epoch_train_cpu_s", "epoch_valid_s")},
        }
    base, ours = (summary[name] for name in MODELS)
    by_seed = {(r["model"], r["seed"]): r for r in runs}
    pairs = [(by_seed[("RecBole DMF", s)], by_seed[("dmfx DmfxDMF", s)]) for s in seeds]
    summary["epoch_time_ratio"] = base["median_epoch_train_s"] / ours["median_epoch_train_s"]
    summary["epoch_cpu_time_ratio"] = (base["median_epoch_train_cpu_s"]
                                       / ours["median_epoch_train_cpu_s"])
    summary["epoch_time_ratio_per_seed"] = [
        statistics.median(a["epoch_train_s"]) / statistics.median(b["epoch_train_s"])
        for a, b in pairs]
    summary["max_abs_test_difference"] = {
        m: max(abs(a["test"][m] - b["test"][m]) for a, b in pairs) for m in METRICS}
    return summary


def markdown(report: dict) -> str:
    s, meta = report["summary"], report["meta"]
    c = report["runs"][0]["config"]
    mode = c["eval_args"]["mode"]  # RecBole expands it to {"valid": ..., "test": ...}
    mode = "/".join(sorted(set(mode.values()))) if isinstance(mode, dict) else mode
    lines = [
        f"RecBole {meta['recbole']}, torch {meta['torch']}, {meta['device']}; "
        f"{meta['epochs']} epochs per run, seeds {', '.join(map(str, meta['seeds']))}; "
        f"test metrics at the best validation epoch (NDCG@10). RecBole's DMF defaults: "
        f"embedding {c['user_embedding_size']}/{c['item_embedding_size']}, towers "
        f"{c['user_hidden_size_list']}/{c['item_hidden_size_list']}, inter_matrix_type "
        f"{c['inter_matrix_type']}, {c['train_neg_sample_args']['sample_num']} sampled negative "
        f"per rating, batch {c['train_batch_size']}, {c['learner']} lr {c['learning_rate']}, "
        f"split {c['eval_args']['split']}, {mode} ranking.",
        "",
        "| model | test HR@10 (mean ± sd over seeds) | test NDCG@10 | training epoch (median) "
        "| its CPU time (median) | validation (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in MODELS:
        row = s[name]
        lines.append(f"| {name} | {spread(row['test']['hit@10'])} | {spread(row['test']['ndcg@10'])} "
                     f"| {row['median_epoch_train_s']:.2f} s | {row['median_epoch_train_cpu_s']:.2f} s "
                     f"| {row['median_epoch_valid_s']:.2f} s |")
    diff = s["max_abs_test_difference"]
    lines += [
        "",
        f"Epoch-time ratio RecBole DMF / DmfxDMF: **{s['epoch_time_ratio']:.2f}x** "
        f"(per seed: {', '.join(f'{r:.2f}x' for r in s['epoch_time_ratio_per_seed'])}); "
        f"in CPU time {s['epoch_cpu_time_ratio']:.2f}x. "
        f"Largest per-seed test difference between the two models: HR@10 {diff['hit@10']:.4f}, "
        f"NDCG@10 {diff['ndcg@10']:.4f}.",
        "",
        "| seed | model | epoch times (s) | test HR@10 | test NDCG@10 | load average before → after |",
        "|---:|---|---|---:|---:|---|",
    ]
    for r in report["runs"]:
        epochs = ", ".join(f"{t:.1f}" for t in r["epoch_train_s"])
        load = (f"{' / '.join(f'{x:.1f}' for x in r['loadavg_before'])} → "
                f"{' / '.join(f'{x:.1f}' for x in r['loadavg_after'])}")
        lines.append(f"| {r['seed']} | {r['model']} | {epochs} | {r['test']['hit@10']:.4f} "
                     f"| {r['test']['ndcg@10']:.4f} | {load} |")
    lines += ["", f"Data: RecBole's shipped ml-100k.inter, identical to dmfx's bundled "
                  f"MovieLens-100K: {'yes' if meta['same_ml100k'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--output", type=Path, default=Path("runs/recbole-side-by-side"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    # RecBole reads `--key=value` arguments from sys.argv as config; ours are not for it.
    sys.argv = sys.argv[:1]
    args.output.mkdir(parents=True, exist_ok=True)
    output = args.output.resolve()

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.recbole_side_by_side " + " ".join(argv),
        "device": device_name(torch.device("cpu")),
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "environment": environment("cpu"),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "same_ml100k": same_ml100k(),
    }
    runs = []
    cwd = os.getcwd()
    # RecBole's trainer writes TensorBoard logs to the working directory and checkpoints to
    # checkpoint_dir: both go to a scratch folder.
    with tempfile.TemporaryDirectory(prefix="recbole-side-by-side-") as scratch:
        os.chdir(scratch)
        try:
            for i, seed in enumerate(args.seeds):
                order = list(MODELS.items())
                for name, model in order if i % 2 == 0 else order[::-1]:
                    runs.append(run_one(name, model, seed, args.epochs, Path(scratch)))
        finally:
            os.chdir(cwd)
    report = {"meta": meta, "summary": summarize(runs, args.seeds), "runs": runs}
    (output / "side_by_side.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (output / "side_by_side.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
