"""The ``dmfx`` command: train, evaluate and query DMF recommenders.

    dmfx train --dataset ml-100k                 # the paper's DMF-2-nce on the bundled data
    dmfx evaluate runs/ml-100k-dmf/checkpoint.pt
    dmfx recommend runs/ml-100k-dmf/checkpoint.pt --user 196 -k 10
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import ops
from .data import DATASETS, DataFormatError, DatasetUnavailableError
from .evaluate import evaluate
from .experiment import MODELS, DataSpec, build_model
from .train import TrainConfig, fit, load_checkpoint, save_checkpoint

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, IsADirectoryError, PermissionError,
               DataFormatError, DatasetUnavailableError)


def _widths(text: str) -> list:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 256,64, got {text!r}")
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and ops.cuda_enabled() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available() and ops.cuda_enabled()):
        raise ValueError("--device cuda needs a GPU and a dmfx build with CUDA kernels "
                         f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels: {ops.cuda_enabled()})")
    return device


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"named data set ({', '.join(DATASETS)}), or synthetic:UxIxN (U users, "
                        "I items, N power-law ratings, for scale runs); default ml-100k (bundled) "
                        "unless --data names a plain ratings file")
    g.add_argument("--data", default=None,
                   help="local ratings file (u.data, ratings.dat, ratings.csv, Amazon CSV, .npz, "
                        "any delimited file) or, with --dataset, a local copy of that data set")
    g.add_argument("--sep", default=None, help="field separator of --data when not detected")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the leave-one-out split")
    g.add_argument("--eval-negatives", type=int, default=100,
                   help="sampled items each held-out item is ranked against (paper: 100)")


def _data_spec(args) -> DataSpec:
    dataset = args.dataset if args.dataset or args.data else "ml-100k"
    return DataSpec(dataset=dataset, data=args.data, sep=args.sep, seed=args.split_seed,
                    eval_negatives=args.eval_negatives)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmfx", description="Deep Matrix Factorization (Xue et al., IJCAI 2017) on sparse "
        "C++/CUDA kernels: train, evaluate, recommend.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and evaluate it (leave-one-out, HR/NDCG@10)",
                       description="Train on a leave-one-out split: each user's latest interaction "
                       "is the test item, one random other is the validation item (early stopping). "
                       "Writes OUTPUT/metrics.json and OUTPUT/checkpoint.pt (every epoch).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_args(t)
    m = t.add_argument_group("model")
    m.add_argument("--model", choices=MODELS, default="dmf", help="dmf, lfm (free embeddings) or itempop")
    m.add_argument("--user-layers", type=_widths, default=[256, 64], help="user tower widths")
    m.add_argument("--item-layers", type=_widths, default=[256, 64], help="item tower widths")
    m.add_argument("--input", choices=("rating", "binary"), default="rating",
                   help="DMF input: ratings (paper Eq. 2) or 0/1 (Eq. 1)")
    m.add_argument("--loss", choices=("nce", "ce"), default="nce",
                   help="nce: target rating / max rating; ce: target 1 for observed pairs")
    m.add_argument("--mu", type=float, default=1e-6, help="clamp of the predicted score")
    m.add_argument("--sparse-grad", action="store_true",
                   help="DMF: row-sparse first-layer gradients + row-wise Adam, so a step costs the "
                        "batch's nnz, not the table sizes (for very large item/user counts)")
    o = t.add_argument_group("training")
    o.add_argument("--epochs", type=int, default=50, help="most epochs (early stopping may end sooner)")
    o.add_argument("--batch-size", type=int, default=256)
    o.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    o.add_argument("--negatives", type=int, default=7, help="sampled negatives per observed pair")
    o.add_argument("--resample", choices=("epoch", "once"), default="epoch",
                   help="redraw negatives every epoch, or once before training (the paper)")
    o.add_argument("--patience", type=int, default=5,
                   help="stop after this many epochs without a better validation NDCG@10 (0: never)")
    o.add_argument("--seed", type=int, default=0, help="seed of initialisation, negatives, order")
    o.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    o.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    o.add_argument("--full-ranking", action="store_true",
                   help="also rank the test item among all items (HR/NDCG/Recall@10)")
    o.add_argument("--output", default=None, help="run folder (default runs/DATASET-MODEL-seedSEED)")
    o.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    o.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on its test (and validation) items")
    e.add_argument("checkpoint")
    e.add_argument("--full-ranking", action="store_true", help="also rank among all items")
    e.add_argument("--device", default="auto")
    e.set_defaults(handler=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k unseen items for a user (raw ids in and out)")
    r.add_argument("checkpoint")
    r.add_argument("--user", required=True, help="raw user id as in the data file")
    r.add_argument("-k", type=int, default=10, help="number of items")
    r.add_argument("--device", default="auto")
    r.set_defaults(handler=cmd_recommend)

    d = sub.add_parser("datasets", help="list the named data sets")
    d.set_defaults(handler=cmd_datasets)
    return parser


def _log(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k.upper()} {v:.4f}" for k, v in metrics.items())


def cmd_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.sparse_grad and args.model != "dmf":
        raise ValueError("--sparse-grad applies to --model dmf only")
    spec = _data_spec(args)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         num_negatives=args.negatives, resample=args.resample, loss=args.loss,
                         patience=args.patience, seed=args.seed, progress=not args.quiet)
    out = Path(args.output or f"runs/{spec.name}-{args.model}-seed{args.seed}")
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and checkpoint.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or --output "
                         "to start a new one")

    start = time.perf_counter()
    data = spec.load()
    split = spec.split(data)
    _log(args, f"data: {spec.name}: {data.num_users:,} users x {data.num_items:,} items, "
               f"{data.nnz:,} interactions; {len(split.test_users):,} users evaluated")
    model_config = {}
    if args.model in ("dmf", "lfm"):
        model_config = dict(user_layers=args.user_layers, item_layers=args.item_layers, mu=args.mu)
        if args.model == "dmf":
            model_config["binary"] = args.input == "binary"
            model_config["sparse_grad"] = args.sparse_grad
    torch.manual_seed(args.seed)
    model = build_model(args.model, split.train, model_config, device)
    extra = {"data": asdict(spec), "model": {"kind": args.model, "config": model_config}}

    state = None
    if model.trainable:
        def report(epoch, entry):
            valid = entry.get("valid", {})
            _log(args, f"epoch {epoch:3d}  loss {entry['loss']:.4f}  {_fmt(valid)}  "
                       f"{entry['seconds']:.1f}s ({entry['pairs_per_s']:,.0f} pairs/s, "
                       f"peak memory {entry['peak_memory_mb']:,.0f} MB)")
        state = fit(model, split, config, checkpoint=checkpoint, resume=args.resume, extra=extra,
                    on_epoch_end=report)
    else:
        save_checkpoint(checkpoint, {"model_state": model.state_dict(), **extra})

    test = evaluate(model, split, "test", full_ranking=args.full_ranking)
    valid = evaluate(model, split, "valid") if len(split.valid_users) else {}
    metrics = {
        "test": test, "valid": valid,
        "config": {"data": asdict(spec), "model": args.model, "model_config": model_config,
                   "train": asdict(config), "device": str(device), "torch": torch.__version__},
        "history": state.history if state else [],
        "best_epoch": state.best_epoch if state else 0,
        "seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{args.model} on {spec.name}: test {_fmt(test)}  (best epoch {metrics['best_epoch']}, "
          f"{metrics['seconds']:.0f}s) -> {out / 'metrics.json'}")
    return 0


def _restore(path: str, device_name: str):
    saved = load_checkpoint(path)
    if "data" not in saved or "model" not in saved:
        raise ValueError(f"{path} is not a dmfx train checkpoint")
    device = _device(device_name)
    spec = DataSpec(**saved["data"])
    data = spec.load()
    split = spec.split(data)
    model = build_model(saved["model"]["kind"], split.train, saved["model"]["config"], device)
    # The run's result is its best validation epoch; model_state is the last one (for --resume).
    best = saved.get("train_state", {}).get("best_state")
    model.load_state_dict(best if best is not None else saved["model_state"])
    return model, data, split, device


def cmd_evaluate(args) -> int:
    model, _, split, _ = _restore(args.checkpoint, args.device)
    result = {"test": evaluate(model, split, "test", full_ranking=args.full_ranking)}
    if len(split.valid_users):
        result["valid"] = evaluate(model, split, "valid", full_ranking=args.full_ranking)
    print(json.dumps(result, indent=2))
    return 0


def cmd_recommend(args) -> int:
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    model, data, _, device = _restore(args.checkpoint, args.device)
    try:
        user = data.user_index(args.user)
    except KeyError:
        raise KeyError(f"unknown user {args.user!r} (not in the data set of this checkpoint)") from None
    with torch.no_grad():
        scores = model.eval().scorer().all_items(torch.tensor([user], device=device))[0].cpu()
    seen = data.items[data.users == user]
    scores[torch.from_numpy(seen)] = -torch.inf  # everything the user interacted with
    k = min(args.k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    for rank, (item, score) in enumerate(zip(top.indices.tolist(), top.values.tolist()), 1):
        print(f"{rank}\t{data.item_ids[item]}\t{score:.4f}")
    return 0


def cmd_datasets(args) -> int:
    for name, spec in DATASETS.items():
        where = "bundled" if spec.bundled else spec.url
        print(f"{name}\t{where}")
    print("synthetic:UxIxN\tgenerated: U users, I items, N power-law ratings (seed 0)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dmfx: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmfx: interrupted", file=sys.stderr)
        return 130
