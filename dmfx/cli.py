"""The ``dmfx`` command: train, evaluate and query DMF recommenders and the DMF paper's
baselines, and reproduce the papers' experiments.

    dmfx train --dataset ml-100k                 # DMF-2-nce on the bundled data
    dmfx train --model neumf --dataset ml-100k   # any model of `dmfx models`
    dmfx evaluate runs/ml-100k-dmf/checkpoint.pt
    dmfx recommend runs/ml-100k-dmf/checkpoint.pt --user 196 -k 10
    dmfx reproduce dmf-paper --dataset ml-100k --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import ops
from .checkpoint import RunFolderBusy, RunLock, json_text, write_json
from .data import DATASETS, DataFormatError, DatasetUnavailableError, write_atomic
from .evaluate import PREFIX, Ranking, evaluate, parse_protocol, save_ranks
from .experiment import DataSpec, data_record, restore
from .models import MODELS, build_model, train_config
from .models.registry import TRAINERS, spec_of
from .train import TrainConfig

# OSError covers what the file system refuses: a missing file, --output under a file, a full disk.
USER_ERRORS = (ValueError, KeyError, OSError, DataFormatError, DatasetUnavailableError,
               RunFolderBusy)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and ops.cuda_enabled() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not (torch.cuda.is_available() and ops.cuda_enabled()):
        raise ValueError("--device cuda needs a GPU and a dmfx build with CUDA kernels "
                         f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels: {ops.cuda_enabled()})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
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
    g.add_argument("--protocol", default=None, metavar="sampled:N|full",
                   help="evaluation protocol of early stopping (validation NDCG@10) and of the "
                        "headline metrics: sampled:N ranks each held-out item among N items the "
                        "user never interacted with, drawn with the split (the DMF paper: "
                        "sampled:100, the default); full ranks it among all items but the user's "
                        "training items (and, for test, validation items). Full-ranking metrics "
                        "(full_*) are reported under either")
    g.add_argument("--eval-negatives", type=int, default=None, metavar="N",
                   help="older spelling of --protocol sampled:N")


_TOPK_HELP = ("cut-offs of the reported HR, NDCG, Recall, Precision, MRR, MAP and (full ranking) "
             "item coverage, e.g. 5,10,20 (default 10)")


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = _add_holdout_args(p)
    g.add_argument("--topk", default="10", metavar="K[,K...]", help=_TOPK_HELP + " (early "
                   "stopping watches NDCG@10)")
    _add_per_user_arg(g)


def _add_holdout_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("protocol")
    g.add_argument("--split", default="loo", metavar="PROTOCOL",
                   help="loo: each user's latest interaction is the test item, a random other the "
                        "validation item (the DMF paper); random: --split-ratios of all "
                        "interactions at random, every held-out one ranked on its own (the EINMF "
                        "paper). Default loo")
    g.add_argument("--split-ratios", default="0.8,0.1,0.1", metavar="TRAIN,VALID,TEST",
                   help="shares of --split random (default 0.8,0.1,0.1)")
    return g


def _add_per_user_arg(g) -> None:
    g.add_argument("--per-user", default=None, choices=("unseen", "all"),
                   help="also report user_hr@K / user_ndcg@K: each user's top K of all items "
                        "against the set of their held-out items (EINMF paper, Eq. 17-18), "
                        "ranking the items the user did not train on (unseen) or every item (all)")


def _protocol(args) -> tuple[str, int]:
    """``(kind, sampled items)`` of ``--protocol`` or its older spelling ``--eval-negatives``."""
    if getattr(args, "full_ranking", False):
        warnings.warn("--full-ranking is no longer needed: full-ranking metrics are always reported")
    if args.eval_negatives is None:
        try:
            return parse_protocol(args.protocol or "sampled:100")
        except ValueError as error:
            raise ValueError(f"--protocol: {error}") from None
    if args.eval_negatives < 1:
        raise ValueError(f"--eval-negatives must be >= 1, got {args.eval_negatives}")
    if args.protocol is not None and args.protocol != f"sampled:{args.eval_negatives}":
        raise ValueError(f"--eval-negatives {args.eval_negatives} contradicts --protocol "
                         f"{args.protocol}; give --protocol alone")
    return "sampled", args.eval_negatives


def _headline(metrics: dict, kind: str) -> dict:
    """HR@K and NDCG@K of protocol ``kind``: what a one-line summary shows."""
    return {k: v for k, v in metrics.items()
            if k.startswith((f"{PREFIX[kind]}hr@", f"{PREFIX[kind]}ndcg@"))}


def _cutoffs(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in str(text).split(",")})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ValueError(f"--topk: expected positive cut-offs like 5,10,20, got {text!r}")
    return ks


def _ratios(text: str) -> tuple:
    try:
        return tuple(float(r) for r in str(text).split(","))
    except ValueError:
        raise ValueError(f"--split-ratios: expected three shares like 0.8,0.1,0.1, got {text!r}") from None


def _data_spec(args) -> DataSpec:
    dataset = args.dataset if args.dataset or args.data else "ml-100k"
    protocol = {"protocol": args.split, "ratios": _ratios(args.split_ratios)} \
        if hasattr(args, "split") else {}
    return DataSpec(dataset=dataset, data=args.data, sep=args.sep, seed=args.split_seed,
                    eval_negatives=_protocol(args)[1], **protocol)


# Training settings: flag -> (TrainConfig field, type, help). Their defaults come from the model.
TRAIN_FLAGS = {
    "epochs": ("epochs", int, "most epochs (early stopping may end sooner)"),
    "batch-size": ("batch_size", int, "pairs per optimizer step"),
    "lr": ("lr", float, "learning rate"),
    "negatives": ("num_negatives", int, "sampled unobserved items per observed pair"),
    "resample": ("resample", str, "redraw negatives every epoch, or once before training (the "
                 "DMF paper's Algorithm 1): epoch or once"),
    "loss": ("loss", str, "nce: target rating / max rating; ce: target 1 for observed pairs; "
             "bpr: pairwise; hybrid: EINMF's eta-weighted implicit + explicit targets"),
    "optimizer": ("optimizer", str, "adam, or sgd (NeuMF-p fine-tuning)"),
    "patience": ("patience", int, "stop after this many epochs without a better validation "
                 "NDCG@10 (0: never)"),
}


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value == "" else str(value)


def _defaults_text(values: dict) -> str:
    """``{"dmf": 1e-4, "gmf": 1e-3, "bpr": 1e-3}`` -> ``"dmf 0.0001; gmf, bpr 0.001"``."""
    groups: dict = {}
    for model, value in values.items():
        groups.setdefault(_shown(value), []).append(model)
    return "; ".join(f"{', '.join(models)} {value}" for value, models in groups.items())


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (`dmfx models` lists each model's parameters and defaults)")
    g.add_argument("--model", default="dmf", metavar="MODEL",
                   help=f"one of {', '.join(MODELS)} (default dmf)")
    owners: dict = {}
    for spec in MODELS.values():
        for name, param in spec.params.items():
            owners.setdefault(name, []).append((spec.name, param))
    for name, users in owners.items():
        param = users[0][1]
        flag = "--" + name.replace("_", "-")
        if len({q.help for _, q in users}) == 1:
            text = f"{param.help} (default: {_defaults_text({m: q.default for m, q in users})})"
        else:  # one flag, different meanings per model
            text = "; ".join(f"{m}: {q.help} (default {_defaults_text({m: q.default})})"
                             for m, q in users)
        if isinstance(param.default, bool):
            g.add_argument(flag, action="store_const", const=True, default=None, help=text)
        else:
            if param.choices:
                text += f"; one of {', '.join(param.choices)}"
            # Values are checked by the registry (a one-line error), not by argparse's choices.
            g.add_argument(flag, default=None, metavar=name.upper(), help=text)
    t = p.add_argument_group("training (defaults: the model's, from the registry)")
    for flag, (field_name, kind, text) in TRAIN_FLAGS.items():
        defaults = {spec.name: spec.train.get(field_name, getattr(_TRAIN_DEFAULTS, field_name))
                    for spec in MODELS.values() if field_name in TRAINERS[spec.trainer]}
        t.add_argument("--" + flag, type=kind, default=None,
                       help=f"{text} (default: {_defaults_text(defaults)})")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, negatives, order")
    t.add_argument("--track-test", action="store_true",
                   help="also record test HR/NDCG@10 after every epoch (for curves; the best "
                        "epoch is still chosen on the validation item)")


def _model_choice(args) -> tuple[str, dict, dict]:
    """(model name, its parameters given on the command line, training settings given)."""
    spec = spec_of(args.model)
    params, foreign = {}, []
    for spec_any in MODELS.values():
        for name, param in spec_any.params.items():
            value = getattr(args, name)
            if value is None or name in params:
                continue
            if name not in spec.params:
                foreign.append("--" + name.replace("_", "-"))
                continue
            params[name] = value if isinstance(value, bool) else _parse(spec.params[name], name, value)
    if foreign:
        foreign = sorted(set(foreign))
        raise ValueError(f"{', '.join(foreign)} {_do(foreign)} not apply to model {spec.name} "
                         f"(its parameters: {', '.join('--' + n.replace('_', '-') for n in spec.params) or 'none'})")
    given = {field_name: getattr(args, flag.replace("-", "_"))
             for flag, (field_name, _, _) in TRAIN_FLAGS.items()
             if getattr(args, flag.replace("-", "_")) is not None}
    unused = [f"--{flag}" for flag, (field_name, _, _) in TRAIN_FLAGS.items()
              if field_name in given and field_name not in TRAINERS[spec.trainer]]
    if unused:
        raise ValueError(f"{', '.join(unused)} {_do(unused)} not apply to model {spec.name} (trained "
                         f"{'in closed form' if spec.trainer == 'closed-form' else 'by ' + spec.trainer})")
    return spec.name, params, given


def _do(names: list) -> str:
    return "does" if len(names) == 1 else "do"


def _parse(param, name: str, text: str):
    try:
        return param.from_text(text)
    except ValueError as error:
        raise ValueError(f"--{name.replace('_', '-')}: {error}") from None


def _add_restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="the training ratings file at a new place (it must hold the same data)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="use the model on its data file as it is now, even if it changed since "
                        "training (refused by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmfx", description="Deep Matrix Factorization (Xue et al., IJCAI 2017) on sparse "
        "C++/CUDA kernels, with the DMF paper's baselines: train, evaluate, recommend, reproduce.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and evaluate it (leave-one-out, HR/NDCG@10)",
                       description="Train on a leave-one-out split (each user's latest interaction, "
                       "a random one where the data has no timestamps, is the test item, one "
                       "random other the validation item for early stopping) or, with --split "
                       "random, on random shares of all interactions. "
                       "Writes OUTPUT/metrics.json, OUTPUT/ranks.npz (every held-out row's rank "
                       "under each protocol, for paired tests: dmfx.evaluate.load_ranks) and "
                       "OUTPUT/checkpoint.pt (every epoch).")
    _add_data_args(t)
    _add_split_args(t)
    _add_model_args(t)
    o = t.add_argument_group("run")
    o.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    o.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    o.add_argument("--full-ranking", action="store_true", help=argparse.SUPPRESS)  # always now
    o.add_argument("--output", default=None, help="run folder (default runs/DATASET-MODEL-seedSEED)")
    o.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    o.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on its test (and validation) items")
    e.add_argument("checkpoint")
    e.add_argument("--full-ranking", action="store_true", help=argparse.SUPPRESS)  # always now
    e.add_argument("--protocol", default=None, metavar="sampled:N|full",
                   help="full: full-ranking metrics only; sampled:N: also the sampled ones (N "
                        "must be the model's). Default: the protocols the model was trained with")
    e.add_argument("--eval-negatives", type=int, default=None, help=argparse.SUPPRESS)
    e.add_argument("--device", default="auto")
    e.add_argument("--topk", default="10", metavar="K[,K...]", help=_TOPK_HELP)
    _add_per_user_arg(e)
    _add_restore_args(e)
    e.set_defaults(handler=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k unseen items for a user (raw ids in and out)")
    r.add_argument("checkpoint")
    r.add_argument("--user", required=True, help="raw user id as in the data file")
    r.add_argument("-k", type=int, default=10, help="number of items")
    r.add_argument("--device", default="auto")
    _add_restore_args(r)
    r.set_defaults(handler=cmd_recommend)

    sp = sub.add_parser(
        "split", help="write a split in RecBole's atomic-file layout",
        description="Write the split `dmfx train` would make from the same data flags to "
        "OUTPUT/NAME/: NAME.train.inter, NAME.valid.inter, NAME.test.inter (RecBole's typed "
        "headers), NAME.user and NAME.item (the id order), NAME.valid.neg and NAME.test.neg "
        "(the sampled protocol's items per held-out row) and NAME.dmfx.json. RecBole runs on it "
        "with data_path: OUTPUT, dataset: NAME, benchmark_filename: [train, valid, test]; "
        "dmfx.data.read_atomic reads it back into the identical split.")
    _add_data_args(sp)
    _add_holdout_args(sp)
    sp.add_argument("--output", required=True, help="folder that receives NAME/")
    sp.add_argument("--name", default=None, help="RecBole dataset name (default: the data set's)")
    sp.set_defaults(handler=cmd_split)

    ms = sub.add_parser("models", help="list the models, their parameters and defaults")
    ms.set_defaults(handler=cmd_models)

    d = sub.add_parser("datasets", help="list the named data sets")
    d.set_defaults(handler=cmd_datasets)

    from .reproduce import add_parser as add_reproduce_parser

    add_reproduce_parser(sub, _add_data_args)
    return parser


_TRAIN_DEFAULTS = TrainConfig()


def _log(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k.upper()} {v:.4f}" for k, v in metrics.items())


def cmd_train(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    name, params, given = _model_choice(args)
    spec = _data_spec(args)
    config = train_config(name, **given, seed=args.seed, track_test=args.track_test,
                          # bars on a terminal only: a log file gets the per-epoch lines
                          progress=not args.quiet and sys.stderr.isatty())
    config = replace(config, protocol=_protocol(args)[0])
    out = Path(args.output or f"runs/{spec.name}-{name}-seed{args.seed}")
    with RunLock(out):
        return _train_in(out, args, device, name, params, spec, config)


def _train_in(out: Path, args, device, name: str, params: dict, spec: DataSpec,
              config: TrainConfig) -> int:
    """The run of ``dmfx train`` in the folder ``out``, whose lock the caller holds."""
    ks = _cutoffs(args.topk)
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and checkpoint.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or --output "
                         "to start a new one")

    start = time.perf_counter()
    data = spec.load()
    split = spec.split(data)
    held_out = {"latest": "test item: each user's latest interaction",
                "random": "test item: a random interaction per user (the data has no timestamps)",
                "ratio": f"{len(np.unique(split.test_users)):,} users; random split "
                         f"{'/'.join(f'{r:g}' for r in spec.ratios)}"}[split.holdout]
    _log(args, f"data: {spec.name}: {data.num_users:,} users x {data.num_items:,} items, "
               f"{data.nnz:,} interactions; {len(split.test_users):,} evaluated; {held_out}")
    torch.manual_seed(args.seed)
    model = build_model(name, split.train, params, device)
    extra = {"data": data_record(spec, data), "model": {"kind": name, "config": model.config()}}

    def report(epoch, entry):
        valid = entry.get("valid", {})
        speed = f", {entry['pairs_per_s']:,.0f} pairs/s" if "pairs_per_s" in entry else ""
        _log(args, f"epoch {epoch:3d}  loss {entry['loss']:.4f}  {_fmt(valid)}  "
                   f"{entry['seconds']:.1f}s ({speed.lstrip(', ')}{', ' if speed else ''}"
                   f"peak memory {entry['peak_memory_mb']:,.0f} MB)")

    state = model.fit(split, config, checkpoint=checkpoint, resume=args.resume, extra=extra,
                      on_epoch_end=report)
    rankings: dict[str, dict[str, Ranking]] = {"test": {}, "valid": {}}
    test = evaluate(model, split, "test", ks=ks, per_user=args.per_user, rankings=rankings["test"])
    valid = evaluate(model, split, "valid", ks=ks, per_user=args.per_user,
                     rankings=rankings["valid"]) if len(split.valid_users) else {}
    save_ranks(out / "ranks.npz", {(part, p): r for part, done in rankings.items()
                                   for p, r in done.items()}, data.user_ids, data.item_ids)
    metrics = {
        "test": test, "valid": valid,
        "config": {"data": extra["data"], "holdout": split.holdout, "model": name, "model_config": model.config(),
                   "train": asdict(config), "device": str(device), "torch": torch.__version__},
        "history": state.history,
        "best_epoch": state.best_epoch,
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "metrics.json", metrics)
    print(f"{name} on {spec.name}: test {_fmt(_headline(test, config.protocol))}  (best epoch {metrics['best_epoch']}, "
          f"{metrics['seconds']:.0f}s) -> {out / 'metrics.json'}")
    return 0


def cmd_evaluate(args) -> int:
    model, _, split = restore(args.checkpoint, _device(args.device), data=args.data,
                              allow_data_change=args.allow_data_change)
    ks = _cutoffs(args.topk)
    protocols = _evaluated(args, split)
    result = {"test": evaluate(model, split, "test", ks=ks, protocols=protocols,
                               per_user=args.per_user)}
    if len(split.valid_users):
        result["valid"] = evaluate(model, split, "valid", ks=ks, protocols=protocols,
                                   per_user=args.per_user)
    print(json_text(result), end="")
    return 0


def _evaluated(args, split) -> tuple:
    """The protocols ``dmfx evaluate`` reports: those of training, or ``--protocol``'s."""
    have = split.test_negatives.shape[1]
    kind, count = _protocol(args)
    if args.protocol is None and args.eval_negatives is None:
        return ("sampled", "full") if have else ("full",)
    if kind == "sampled" and count != have:
        raise ValueError(f"--protocol sampled:{count}: this model's split has {have} sampled "
                         f"items per held-out item{' (none: trained under full)' if not have else ''}")
    return ("sampled", "full") if kind == "sampled" else ("full",)


def cmd_recommend(args) -> int:
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    model, data, _ = restore(args.checkpoint, _device(args.device), data=args.data,
                             allow_data_change=args.allow_data_change)
    try:
        user = data.user_index(args.user)
    except KeyError:
        raise KeyError(f"unknown user {args.user!r} (not in the data set of this checkpoint)") from None
    # Everything the user interacted with is left out, held-out items included.
    items, scores = model.recommend(torch.tensor([user]), args.k,
                                    exclude=data.csr("binary", device=model.device))
    ranked = [(i, s) for i, s in zip(items[0].tolist(), scores[0].tolist()) if i >= 0]
    for rank, (item, score) in enumerate(ranked, 1):
        print(f"{rank}\t{data.item_ids[item]}\t{score:.4f}")
    return 0


def cmd_split(args) -> int:
    spec = _data_spec(args)
    data = spec.load()
    split = spec.split(data)
    folder = write_atomic(data, split, args.output, args.name or spec.name)
    print(f"{spec.name}: {split.train.nnz:,} train, {len(split.valid_users):,} validation, "
          f"{len(split.test_users):,} test rows, {split.test_negatives.shape[1]} sampled items "
          f"each (split seed {spec.seed}) -> {folder}")
    return 0


def cmd_models(args) -> int:
    for spec in MODELS.values():
        print(f"{spec.name}: {spec.summary}")
        for name, param in spec.params.items():
            flag = f"--{name.replace('_', '-')} {_shown(param.default)}"
            print(f"    {flag:<28} {param.help}")
        used = TRAINERS[spec.trainer]
        if used:

            config = train_config(spec.name)
            shown = "  ".join(f"{f}={getattr(config, f)}" for f in used)
            print(f"    training ({spec.trainer}): {shown}")
        else:
            print("    training: closed form, one pass")
    return 0


def cmd_datasets(args) -> int:
    for name, spec in DATASETS.items():
        where = "bundled" if spec.bundled else spec.url
        print(f"{name}\t{where}")
    print("synthetic:UxIxN\tgenerated: U users, I items, N power-law ratings (seed 0)")
    return 0


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dmfx: warning: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _warn_in_one_line
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dmfx: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmfx: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
