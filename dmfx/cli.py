"""The ``dmfx`` command: train, evaluate and query DMF recommenders and the DMF paper's
baselines, and reproduce the papers' experiments.

    dmfx train --dataset ml-100k                 # DMF-2-nce on the bundled data
    dmfx train --model neumf --dataset ml-100k   # any model of `dmfx models`
    dmfx train --config runs/ml-100k-dmf-seed0/config.toml --output runs/again   # repeat a run
    dmfx evaluate runs/ml-100k-dmf/model.pt
    dmfx recommend runs/ml-100k-dmf/model.pt --user 196 -k 10
    dmfx recommend runs/ml-100k-dmf/model.pt --users-file users.txt --output recs.parquet
    dmfx recommend runs/ml-100k-dmf/model.pt --ratings my-ratings.csv   # a new user
    dmfx export runs/ml-100k-dmf/model.pt --output serving/
    dmfx reproduce dmf-paper --dataset ml-100k --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import math
import os
import re
import select
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .checkpoint import (CheckpointError, RunFolderBusy, RunLock, atomic_write, json_text,
                         load_checkpoint, make_folder, write_json)
from .config import file_flags, options, toml_text
from .data import DATASETS, DataFormatError, DatasetUnavailableError, Interactions, write_atomic
from .data.readers import COUNTS_WARNING
from .evaluate import PREFIX, Ranking, evaluate, parse_protocol, save_ranks
from .experiment import PROTOCOLS as SPLITS
from .experiment import DataSpec, check_device, data_record, load_trained, save_model
from .models import MODELS, build_model, train_config
from .models.base import CANNOT_SCORE_NEW_USERS
from .models.registry import TRAINERS, spec_of
from .provenance import EpochLog, environment
from .reproduce import seed_arg
from .train import RESUMABLE_CHANGES, ResumeRefused, TrainConfig, _check_resumable

# OSError covers what the file system refuses: a missing file, --output under a file, a full disk.
# FloatingPointError: a run that diverged before any epoch could be kept (it says what to try).
USER_ERRORS = (ValueError, KeyError, OSError, DataFormatError, DatasetUnavailableError,
               RunFolderBusy, distributed.DistributedError, FloatingPointError)


def _device(name: str) -> torch.device:
    """``--device``: auto, cpu, cuda or cuda:N, one this machine has (see
    :func:`dmfx.experiment.check_device`)."""
    return check_device(name, "--device")


_PROTOCOL_HELP = ("evaluation protocol of early stopping (validation NDCG@10) and of the "
                  "headline metrics: sampled:N ranks each held-out item among N items the "
                  "user never interacted with, drawn with the split (the DMF paper: "
                  "sampled:100, the default); full ranks it among all items but the user's "
                  "training items (and, for test, validation items). Full-ranking metrics "
                  "(full_*) are reported under either")
_SAMPLED_ONLY_HELP = ("sampled:N ranks each held-out item among N items the user never "
                      "interacted with, drawn with the split (the papers' protocol; default "
                      "sampled:100); every run also records full-ranking metrics (full_*)")


def _add_data_args(p: argparse.ArgumentParser, split_seed_default: str = "0",
                   sampled_only: bool = False) -> None:
    """The data flags; ``sampled_only`` for a command whose tables need the sampled protocol."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"named data set ({', '.join(DATASETS)}), or synthetic:UxIxN (U users, "
                        "I items, N power-law ratings, for scale runs); default ml-100k (bundled) "
                        "unless --data names a plain ratings file")
    g.add_argument("--data", default=None,
                   help="local ratings file (u.data, ratings.dat, ratings.csv, Amazon CSV, .npz, "
                        "any delimited file) or, with --dataset, a local copy of that data set; a "
                        "large text file is parsed once, then loaded from the cache until it "
                        "changes (DMFX_NO_CACHE=1: parse every time)")
    g.add_argument("--sep", default=None, type=_separator,
                   help="field separator of --data when not detected ('\\t' for a tab)")
    g.add_argument("--split-seed", type=seed_arg, default=0,
                   help="seed of the split (the held-out items, the sampled ones, and the random "
                        f"split's shares; default {split_seed_default})")
    g.add_argument("--protocol", default=None,
                   metavar="sampled:N" if sampled_only else "sampled:N|full",
                   help=_SAMPLED_ONLY_HELP if sampled_only else _PROTOCOL_HELP)
    g.add_argument("--eval-negatives", type=int, default=None, metavar="N",
                   help="older spelling of --protocol sampled:N")


_TOPK_HELP = ("cut-offs of the reported HR, NDCG, Recall, Precision, MRR, MAP and (full ranking) "
             "item coverage, e.g. 5,10,20 (default 10)")


def _separator(text: str) -> str:
    """--sep, where the two characters \\t (a tab is awkward to type in a shell) mean a tab."""
    return "\t" if text == "\\t" else text


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = _add_holdout_args(p)
    g.add_argument("--topk", default="10", metavar="K[,K...]", help=_TOPK_HELP + " (early "
                   "stopping watches NDCG@10)")
    _add_per_user_arg(g)
    g.add_argument("--no-full-ranking", action="store_true",
                   help="report the final metrics of --protocol sampled:N alone, without the "
                        "full-ranking ones (full_*), which score every user against every item: "
                        "for data too large for that (2M users x 1M items on a CPU)")
    g.add_argument("--full-ranking", dest="no_full_ranking", action="store_false", default=False,
                   help="report the full-ranking metrics too (the default): undoes "
                        "no-full-ranking = true of a --config file")
    g.add_argument("--held-out-users", type=float, default=None, metavar="SHARE",
                   help="train without this share of the evaluated users, then score them from "
                        "their ratings alone and report new_hr@K / new_ndcg@K (models that read "
                        "rating rows: dmf, einmf, itemknn; itempop as the baseline; leave-one-out "
                        "split)")


def _add_holdout_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("protocol")
    g.add_argument("--split", default="loo", metavar="PROTOCOL",
                   help="loo: each user's latest interaction is the test item, a random other the "
                        "validation item (the DMF paper); random: --split-ratios of all "
                        "interactions at random, every held-out one ranked on its own (the EINMF "
                        "paper); atomic: the split already made in the folder --data FOLDER/NAME "
                        "(RecBole's atomic files, as `dmfx split` writes them). Default loo")
    g.add_argument("--split-ratios", default="0.8,0.1,0.1", metavar="TRAIN,VALID,TEST",
                   help="shares of --split random (default 0.8,0.1,0.1)")
    return g


def _add_per_user_arg(g) -> None:
    g.add_argument("--per-user", default=None, choices=("unseen", "all"),
                   help="also report user_hr@K / user_ndcg@K: each user's top K of all items "
                        "against the set of their held-out items (EINMF paper, Eq. 17-18), "
                        "ranking the items the user did not train on (unseen) or every item (all)")


def _protocol_text(args) -> str:
    """The protocol as ``--protocol`` spells it, the default filled in."""
    kind, count = _protocol(args)
    return f"sampled:{count}" if kind == "sampled" else kind


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


def _ratios(text: str, read: bool) -> tuple:
    """The shares of ``--split-ratios``; checked by dmfx.data.ratio_split's rule where the split
    reads them (``read``), so that they are refused before the data is read, not after."""
    try:
        ratios = tuple(float(r) for r in str(text).split(","))
    except ValueError:
        raise ValueError(f"--split-ratios: expected three shares like 0.8,0.1,0.1, got {text!r}") from None
    if read and (len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios)
                 or ratios[0] <= 0 or ratios[2] <= 0 or abs(sum(ratios) - 1) > 1e-6):
        raise ValueError("--split-ratios must be three shares (train, validation, test) that sum "
                         f"to 1, train and test above 0, got {text!r}")
    return ratios


def _data_spec(args) -> DataSpec:
    if args.sep == "":
        raise ValueError("--sep: expected a field separator (\\t for a tab), got none")
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise FileNotFoundError(f"--data: no file at {args.data}")
    dataset = args.dataset if args.dataset or args.data else "ml-100k"
    protocol = {}
    if hasattr(args, "split"):
        if args.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
        if args.split == "atomic" and (args.data is None or args.dataset is not None):
            raise ValueError("--split atomic reads a split folder: give it as --data FOLDER/NAME "
                             "(what `dmfx split` wrote), without --dataset")
        protocol = {"protocol": args.split,
                    "ratios": _ratios(args.split_ratios, args.split == "random")}
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
                 "NDCG@10, or training loss where the split has no validation rows (0: never)"),
    "pairs": ("pairs", str, "epoch: build each epoch's pairs at once and shuffle them together; "
              "batch: draw each batch's negatives as it is taken (memory for pairs scales with "
              "the batch: for large data)"),
    "max-steps": ("max_steps", int, "stop after this many optimizer steps in all (0: no limit); "
                  "--resume with a larger limit finishes the epoch it cut"),
    "checkpoint-every": ("checkpoint_every", int, "also write OUTPUT/checkpoint.pt every this "
                         "many steps of an epoch (0: after each epoch only), so that --resume "
                         "loses at most that many"),
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
        if len({(q.help, q.choices) for _, q in users}) == 1:
            text = f"{param.help} (default: {_defaults_text({m: q.default for m, q in users})})"
            if param.choices:
                text += f"; one of {', '.join(param.choices)}"
        else:  # one flag, different meanings (or values) per model
            text = "; ".join(f"{m}: {q.help} (default {_defaults_text({m: q.default})}"
                             + (f"; one of {', '.join(q.choices)})" if q.choices else ")")
                             for m, q in users)
        if isinstance(param.default, bool):  # --no-X: a --config file's X = true can be undone
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            # Values are checked by the registry (a one-line error), not by argparse's choices.
            g.add_argument(flag, default=None, metavar=name.upper(), help=text)
    t = p.add_argument_group("training (defaults: the model's, from the registry)")
    for flag, (field_name, kind, text) in TRAIN_FLAGS.items():
        defaults = {spec.name: spec.train.get(field_name, getattr(_TRAIN_DEFAULTS, field_name))
                    for spec in MODELS.values() if field_name in TRAINERS[spec.trainer]}
        t.add_argument("--" + flag, type=kind, default=None,
                       help=f"{text} (default: {_defaults_text(defaults)})")
    t.add_argument("--seed", type=seed_arg, default=0, help="seed of initialisation, negatives, order")
    t.add_argument("--track-test", action=argparse.BooleanOptionalAction, default=False,
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


def _setting_flags() -> dict:
    """Setting -> its flag: TrainConfig's fields (num_negatives -> --negatives) and the
    models' parameters (user_layers -> --user-layers)."""
    flags = {field_name: f"--{flag}" for flag, (field_name, _, _) in TRAIN_FLAGS.items()}
    flags.update({name: "--" + name.replace("_", "-") for spec in MODELS.values()
                  for name in spec.params})
    return flags


def _flagged(error: Exception) -> ValueError:
    """``error`` with the settings it names written as their flags: a name with an underscore
    wherever it stands (user_layers, gmf_checkpoint), a plain word (mu, lr, loss) where it
    begins the message or follows its "Owner: " prefix, the one place where it surely names
    the setting and not the thing ("DMF: mu must lie in ..." -> "DMF: --mu must lie in ...")."""
    message = str(error)
    for name, flag in _setting_flags().items():
        if "_" in name:
            message = re.sub(rf"\b{name}\b", flag, message)
        else:
            message = re.sub(rf"^((?:[\w-]+: )?){name}\b", rf"\g<1>{flag}", message)
    return ValueError(message)


# DataSpec's fields -> their flags.
_SPEC_FLAGS = {"dataset": "--dataset", "data": "--data", "sep": "--sep", "seed": "--split-seed",
               "eval_negatives": "--protocol sampled:N", "protocol": "--split",
               "ratios": "--split-ratios"}
# Where a resumed run's refused setting is recorded (see dmfx.train.ResumeRefused) -> its flag.
_RECORD_FLAGS = {"seed": "--seed", "track_test": "--track-test", "protocol": "--protocol",
                 "model.kind": "--model", "data.held_out_users": "--held-out-users",
                 **{f"data.spec.{name}": flag for name, flag in _SPEC_FLAGS.items()}}


def _record_flag(name: str) -> str:
    """The flag that sets a setting :class:`dmfx.train.ResumeRefused` names, or the name itself
    where no flag does (data.fingerprint.sha256: what the data file holds)."""
    if name.startswith("model.config."):
        return "--" + name.removeprefix("model.config.").replace("_", "-")
    return _RECORD_FLAGS.get(name) or _setting_flags().get(name, name)


def _refusal_in_flags(refused: ResumeRefused) -> str:
    """The message of ``refused`` in flags: "(lr 0.0001 -> 0.01; data.spec.sep None -> ',')" ->
    "(--lr 0.0001 -> 0.01; --sep not given -> ',')"."""
    def shown(value) -> str:
        return "not given" if value is None else repr(value)

    changes = "; ".join(f"{_record_flag(name)} {shown(before)} -> {shown(now)}"
                        for name, before, now in refused.changes)
    # progress (bars on a terminal or not) has no flag of its own
    allowed = [_record_flag(name) for name in RESUMABLE_CHANGES if name != "progress"]
    return (f"{refused.path} was trained with other settings ({changes}); a resumed run may "
            f"change only {', '.join(allowed)}")


def _add_restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a run's model.pt (self-contained; or the run's folder), or its "
                        "checkpoint.pt (re-reads the data file)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--data", default=None,
                   help="with a checkpoint.pt: the training ratings file at a new place (it must "
                        "hold the same data)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with a checkpoint.pt: use the model on its data file as it is now, even "
                        "if it changed since training (refused by default)")


class _Parser(argparse.ArgumentParser):
    """A parser, and its subcommands' parsers, that take long flags only as spelled in full:
    an abbreviation (--mod for --model) would escape what parse_args does with a --config file's
    flags that the command line replaces."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dmfx", description="Deep Matrix Factorization (Xue et al., IJCAI 2017) on sparse "
        "C++/CUDA kernels, with the DMF paper's baselines: train, evaluate, recommend, reproduce.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and evaluate it (leave-one-out, HR/NDCG@10)",
                       description="Train on a leave-one-out split (each user's latest interaction, "
                       "a random one where the data has no timestamps, is the test item, one "
                       "random other the validation item for early stopping) or, with --split "
                       "random, on random shares of all interactions. "
                       "Writes OUTPUT/config.toml (every setting of the run; --config "
                       "OUTPUT/config.toml repeats it) at the start, OUTPUT/checkpoint.pt (for "
                       "--resume; also inside epochs with --checkpoint-every) and a line of "
                       "OUTPUT/epochs.jsonl after every epoch, then "
                       "OUTPUT/model.pt (the best epoch with its split: evaluate, recommend and "
                       "export need nothing else), OUTPUT/ranks.npz (every held-out row's rank "
                       "under each protocol, for paired tests: dmfx.evaluate.load_ranks) and "
                       "OUTPUT/metrics.json (results, settings, software and machine).")
    _add_data_args(t)
    _add_split_args(t)
    _add_model_args(t)
    o = t.add_argument_group("run")
    o.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    o.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    o.add_argument("--output", default=None, help="run folder (default runs/DATASET-MODEL-seedSEED)")
    o.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/checkpoint.pt (OUTPUT/epochs.jsonl is first made to "
                        "hold exactly the checkpoint's epochs, then appended to)")
    o.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    o.add_argument("--distributed", default=None, metavar="ddp|sharded",
                   help="training on several ranks, started by torchrun --nproc_per_node=N -m "
                        "dmfx train ... (gloo on CPU, NCCL with one GPU per rank): ddp, data "
                        "parallel, for models that fit on every device (the default under "
                        "torchrun); sharded (dmf), each rank holds a 1/N share of the rows of the "
                        "two first-layer tables and their Adam state. Either takes the steps of "
                        "one process on the same global batches (but for dropout masks); --output must be a folder every "
                        "rank sees")
    o.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help="how long a rank waits for the others in a collective before every rank "
                        "stops with an error (default %(default)g; rank 0's read and split of the "
                        "data and its per-epoch evaluation must fit in it, not its final "
                        "evaluation, which the others await without a limit)")
    o.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a TOML file (YAML: .yaml or .yml, needs PyYAML) whose keys "
                        "are these flags' names: model = \"dmf\", epochs = 20, user-layers = "
                        "\"512,64\" or [512, 64], track-test = true (a run's OUTPUT/config.toml "
                        "is one); a flag given on the command line overrides the file")
    # The parser rides along so that main can check a --config file against its flags and
    # _train_in can write every one of them to OUTPUT/config.toml.
    t.set_defaults(handler=cmd_train, parser=t)

    e = sub.add_parser("evaluate", help="evaluate a trained model on its test (and validation) items")
    _add_restore_args(e)
    e.add_argument("--full-ranking", action="store_true", help=argparse.SUPPRESS)  # always now
    e.add_argument("--protocol", default=None, metavar="sampled:N|full",
                   help="full: full-ranking metrics only; sampled:N: also the sampled ones (N "
                        "must be the model's). Default: both, or full alone for a model trained "
                        "under --protocol full (its split has no sampled items)")
    e.add_argument("--no-full-ranking", action="store_true",
                   help="the sampled metrics alone, without the full-ranking ones, which score "
                        "every user against every item")
    e.add_argument("--eval-negatives", type=int, default=None, help=argparse.SUPPRESS)
    e.add_argument("--topk", default="10", metavar="K[,K...]", help=_TOPK_HELP)
    _add_per_user_arg(e)
    e.set_defaults(handler=cmd_evaluate, parser=e)

    r = sub.add_parser("recommend", help="top-k unseen items for users or a new user (raw ids "
                       "in and out)", description="The k best items a user has not interacted "
                       "with (training, validation and test items left out; the Python "
                       "model.recommend leaves out training items only unless given "
                       "exclude=trained.interacted()), for one user (--user), many "
                       "(--users-file, scored in blocks on the device) or a user the model never "
                       "saw, from their ratings (--ratings; DMF reads rating rows, ItemPop needs "
                       "none; id-embedding models cannot). Users a run held out of training "
                       "(train --held-out-users) are not served as known users: --user and "
                       "--users-file refuse them (give their ratings with --ratings) and "
                       "--all-users leaves them out, with a warning.")
    _add_restore_args(r)
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="raw user id as in the data file")
    who.add_argument("--users-file", metavar="FILE", help="raw user ids, one per line")
    who.add_argument("--all-users", action="store_true",
                     help="every user of the model (but those held out of training by "
                          "--held-out-users, which the model knows nothing of)")
    who.add_argument("--ratings", metavar="FILE",
                     help="a new user's ratings: lines ITEM[,RATING] with raw item ids (items "
                          "the model does not know are left out, with a warning; models that "
                          "read rating rows: dmf, einmf, itemknn, itempop)")
    r.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    r.add_argument("--output", default=None, metavar="FILE",
                   help="write user,rank,item,score rows to FILE (.csv, .tsv or .parquet) "
                        "instead of printing them")
    r.add_argument("--batch-size", type=int, default=None,
                   help="users scored at once (default: as many as fit about 256 MB of scores)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(handler=cmd_recommend, parser=r)

    x = sub.add_parser("export", help="write a model's user and item vectors, id maps and (DMF) "
                       "towers for serving", description="Writes OUTPUT/user_vectors.npy, "
                       "item_vectors.npy (a score is their dot product, plus item_bias.npy where "
                       "the model has one; cosine DMF's are normalised), user_ids.npy, item_ids.npy, seen.npz (training interactions, scipy CSR), "
                       "meta.json and, for DMF, user_tower.pt2 / item_tower.pt2 (torch.export "
                       "programs that embed rating rows of new users and items; load them with "
                       "torch.export.load after `import dmfx.ops`). Users held out of training "
                       "(train --held-out-users) are left out of the user files (user_ids.npy "
                       "names the rows; meta.json counts them): serve them from their ratings "
                       "through user_tower.pt2, as new users.")
    _add_restore_args(x)
    x.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    x.set_defaults(handler=cmd_export, parser=x)

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
    sp.set_defaults(handler=cmd_split, parser=sp)

    ms = sub.add_parser("models", help="list the models, their parameters and defaults")
    ms.set_defaults(handler=cmd_models, parser=ms)

    d = sub.add_parser("datasets", help="list the named data sets")
    d.set_defaults(handler=cmd_datasets, parser=d)

    from .reproduce import add_parser as add_reproduce_parser

    add_reproduce_parser(sub, _add_data_args)
    from .bench.command import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


_TRAIN_DEFAULTS = TrainConfig()


def _log(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _progress_bar(args) -> bool:
    """Whether long work shows a progress bar: on a terminal, unless --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


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
    # bars on a terminal only: a log file gets the per-epoch lines
    config = _train_config(args, name, given, progress=_progress_bar(args))
    # The model's settings are checked on a 2 x 2 stand-in now, not after minutes of reading
    # large data (pre-trained parts are loaded, and checked, once the data is there).
    try:
        build_model(name, Interactions(np.arange(2), np.arange(2), [0, 1], [0, 1], [1.0, 1.0]),
                    params, "cpu", restore=True)
    except ValueError as error:  # "DMF: mu must lie in ..." -> "DMF: --mu must lie in ..."
        raise _flagged(error) from None
    if args.held_out_users is not None:
        if not 0 < args.held_out_users < 1:
            raise ValueError(f"--held-out-users: expected a share in (0, 1), got "
                             f"{args.held_out_users:g}")
        if spec.protocol == "random":
            raise ValueError("--held-out-users needs one test item per user: --split loo, not "
                             "random")
        if not spec_of(name).cls.can_score_rows(params):
            raise ValueError(f"--held-out-users: {name} {CANNOT_SCORE_NEW_USERS}")
    if args.no_full_ranking and config.protocol == "full":
        raise ValueError("--no-full-ranking leaves out the full-ranking metrics that --protocol "
                         "full reports: give one of them")
    out = Path(args.output or f"runs/{spec.name}-{name}-seed{args.seed}")
    world = distributed.start(args.distributed, device, args.dist_timeout, name)
    if world is None:
        with RunLock(out):
            return _train_in(out, args, device, name, params, spec, config)
    # Every rank trains on world.device; `device` stays as given (cuda, not cuda:LOCAL_RANK),
    # which is what config.toml must repeat.
    with world, world.lock(out):
        args.quiet = args.quiet or not world.main  # rank 0 alone prints
        return _train_in(out, args, device, name, params, spec, config, world)


def _check_pretrained_parts(params: dict, record: dict, held_out_users) -> None:
    """NeuMF-p starts from GMF and MLP runs: they must have trained on this run's training data
    (same data, same split), or the parts have already seen this run's test items."""
    keys = ("gmf_checkpoint", "mlp_checkpoint")
    if not all(params.get(key) for key in keys):  # none, or NeuMF says it needs both
        return
    for name in keys:
        path, key = params[name], "--" + name.replace("_", "-")
        part = load_checkpoint(path, mmap=True).get("data")  # NeuMF reads the weights later
        if not isinstance(part, dict) or "fingerprint" not in part:
            raise ValueError(f"{key} {path} does not record the data it was trained on")
        if part["fingerprint"] != record["fingerprint"]:
            raise ValueError(f"{key} {path} was trained on other data ({part['fingerprint']}, "
                             f"this run reads {record['fingerprint']})")
        theirs = {k: part["spec"].get(k) for k in ("protocol", "seed", "ratios")}
        ours = {k: record["spec"][k] for k in ("protocol", "seed", "ratios")}
        theirs["held_out_users"], ours["held_out_users"] = part.get("held_out_users"), held_out_users
        if ours["protocol"] == "random":  # a tuple here, a list once saved
            theirs["ratios"], ours["ratios"] = list(theirs["ratios"] or ()), list(ours["ratios"])
        else:  # only the random split reads them
            del theirs["ratios"], ours["ratios"]
        if theirs != ours:
            flags = {**_SPEC_FLAGS, "held_out_users": "--held-out-users"}
            changed = ", ".join(f"{flags[k]} {theirs[k]} (this run: {ours[k]})"
                                for k in ours if theirs[k] != ours[k])
            raise ValueError(f"{key} {path} was trained on another split of the data: {changed}")


def _train_in(out: Path, args, device, name: str, params: dict, spec: DataSpec,
              config: TrainConfig, world: distributed.World | None = None) -> int:
    """The run of ``dmfx train`` in the folder ``out``, whose lock the caller holds; with
    ``world``, this rank's part (rank 0 writes the files and evaluates the gathered model)."""
    ks = _cutoffs(args.topk)
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and checkpoint.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or --output "
                         "to start a new one")

    start = time.perf_counter()

    def read_and_split():
        with warnings.catch_warnings():
            if params.get("input") == "binary" and config.loss == "ce":  # what the warning advises
                warnings.filterwarnings("ignore", message=COUNTS_WARNING, category=UserWarning)
            data = spec.load()
        split = spec.split(data)
        tests = len(split.test_users)
        held_out = {"latest": f"{tests:,} evaluated; test item: each user's latest interaction",
                    "random": f"{tests:,} evaluated; test item: a random interaction per user "
                              "(the data has no timestamps)",
                    # a row per held-out interaction, several per user
                    "ratio": f"{tests:,} held-out test interactions of "
                             f"{len(np.unique(split.test_users)):,} users; random split "
                             f"{'/'.join(f'{r:g}' for r in spec.ratios)}"}[split.holdout]
        _log(args, f"data: {spec.name}: {data.num_users:,} users x {data.num_items:,} items, "
                   f"{data.nnz:,} interactions; {held_out}")
        # The ratings as read are not kept (the split's training part holds the same id maps),
        # nor the training timestamps (the model file leaves them out too).
        return replace(split, train=replace(split.train, timestamps=None)), data_record(spec, data)

    # Under torchrun rank 0 alone reads and splits; the others receive the split from it.
    split, record = read_and_split() if world is None else world.share_split(read_and_split)
    new_users = None
    if args.held_out_users is not None:
        from .inductive import hold_out_users

        try:  # a split folder of the random split, or too few users to hold some out
            split, new_users = hold_out_users(split, args.held_out_users, seed=spec.seed)
        except ValueError as error:
            raise ValueError(f"--held-out-users: {error}") from None
        _log(args, f"held out: {len(new_users.users):,} users, scored from their ratings only")
    _check_pretrained_parts(params, record, args.held_out_users)
    torch.manual_seed(args.seed)
    try:  # NeuMF-p reads its parts now: "gmf_checkpoint X holds ..." -> "--gmf-checkpoint X ..."
        model = build_model(name, split.train, params, device) if world is None else \
            world.build_model(name, split.train, params, args.seed)
    except ValueError as error:
        raise _flagged(error) from None
    extra = {"data": record, "model": {"kind": name, "config": model.config()}}
    if world is not None:
        extra.update(world.record())
    if new_users is not None:  # part of the split: a resume or a checkpoint re-read must redo it
        extra["data"]["held_out_users"] = args.held_out_users
    history = []
    if args.resume:
        # Refused here as in fit, before config.toml and the log of the run are touched. Mapped,
        # not read: only the records are used, and fit reads the weights again.
        saved = load_checkpoint(checkpoint, mmap=True)
        try:
            _check_resumable(checkpoint, saved, config, extra)
        except ResumeRefused as refused:
            raise CheckpointError(_refusal_in_flags(refused)) from None
        history = saved.get("train_state", {}).get("history", [])
    settings = _settings(args, device, name, params, spec, config)
    main = world is None or world.main
    if main:
        text = toml_text(settings, "Every setting of a dmfx train run: `dmfx train --config "
                         "config.toml --output OTHER` repeats it\n(a flag given beside --config "
                         "overrides the setting here).")
        atomic_write(out / "config.toml", lambda f: f.write(text.encode()))
        # A resumed run's log starts from the epochs of the checkpoint it continues (EpochLog).
        log = EpochLog(out / "epochs.jsonl", history)

    # ItemPop and ItemKNN are counted, not fitted: they have no loss to show.
    shows_loss = spec_of(name).trainer != "closed-form"

    def report(epoch, entry):
        log.append(entry)
        valid = entry.get("valid", {})
        speed = f", {entry['pairs_per_s']:,.0f} pairs/s" if "pairs_per_s" in entry else ""
        if entry.get("steps", 0) < entry.get("batches", 0):  # cut by --max-steps
            speed += f", {entry['steps']:,} of its {entry['batches']:,} steps"
        loss = f"loss {entry['loss']:.4f}  " if shows_loss else ""
        _log(args, f"epoch {epoch:3d}  {loss}"
                   f"{'valid ' if valid else ''}{_fmt(valid)}  "
                   f"{entry['seconds']:.1f}s ({speed.lstrip(', ')}{', ' if speed else ''}"
                   f"peak memory {entry['peak_memory_mb']:,.0f} MB)")

    state = model.fit(split, config, checkpoint=checkpoint, resume=args.resume, extra=extra,
                      on_epoch_end=report if main else None, world=world)
    if world is not None:
        model = world.gather_model(model, split.train)
        if model is None:  # rank 0 evaluates and writes the files alone
            return 0
    save_model(out / "model.pt", model, split, extra["data"])
    rankings: dict[str, dict[str, Ranking]] = {"test": {}, "valid": {}}
    protocols = ("sampled",) if args.no_full_ranking else None
    _log(args, f"evaluating the best epoch ({state.best_epoch}) on "
               f"{len(np.unique(split.test_users)):,} test users"
               f"{'' if args.no_full_ranking else ', ranking every item for each'}")
    bar = _progress_bar(args)
    test = evaluate(model, split, "test", ks=ks, protocols=protocols, per_user=args.per_user,
                    rankings=rankings["test"], progress=bar)
    valid = evaluate(model, split, "valid", ks=ks, protocols=protocols, per_user=args.per_user,
                     rankings=rankings["valid"], progress=bar) if len(split.valid_users) else {}
    save_ranks(out / "ranks.npz", {(part, p): r for part, done in rankings.items()
                                   for p, r in done.items()}, split.train.user_ids, split.train.item_ids)
    if new_users is not None:
        from .inductive import evaluate_new_users

        for key, value in evaluate_new_users(model, new_users, ks).items():  # full_new_hr@10, ...
            full = key.startswith("full_")
            test[f"{'full_' if full else ''}new_{key.removeprefix('full_')}"] = value
    metrics = {
        "test": test, "valid": valid,
        "config": {"data": extra["data"], "holdout": split.holdout, "model": name, "model_config": model.config(),
                   "train": asdict(config), "device": str(device), "settings": settings,
                   **(world.record() if world is not None else {})},
        "environment": environment(device),
        "history": state.history,
        "best_epoch": state.best_epoch,
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "metrics.json", metrics)
    print(f"{name} on {spec.name}: test {_fmt(_headline(test, config.protocol))}  (best epoch {metrics['best_epoch']}, "
          f"{metrics['seconds']:.0f}s) -> {out / 'metrics.json'}")
    return 0


def _load(args):
    path = Path(args.model)
    if path.is_dir():  # a run folder: its model file
        if not (path / "model.pt").is_file():
            raise FileNotFoundError(f"{path} is a folder without a model.pt (a finished run's "
                                    "model file); give MODEL as a model.pt or checkpoint.pt")
        path = path / "model.pt"
    return load_trained(path, _device(args.device), data=args.data,
                        allow_data_change=args.allow_data_change)


# Flags that say where and how a run is shown, not what it computes, and --full-ranking, the
# other spelling of no-full-ranking (it would be saved inverted): left out of config.toml.
# eval-negatives: the older spelling of the protocol, which is saved as --protocol.
_NOT_SAVED = ("output", "resume", "quiet", "full-ranking", "eval-negatives")


def _settings(args, device, name: str, params: dict, spec: DataSpec, config: TrainConfig) -> dict:
    """Every flag of ``dmfx train`` that shapes the run, by name, at its effective value: the
    model's parameters and training settings with the registry's defaults filled in, the data
    file's absolute path, the device and thread count chosen. Flags that are unset (None) or do
    not apply to the model are left out."""
    model_spec = spec_of(name)
    effective = {**model_spec.defaults(), **params,
                 **{flag.replace("-", "_"): getattr(config, field_name)
                    for flag, (field_name, _, _) in TRAIN_FLAGS.items()
                    if field_name in TRAINERS[model_spec.trainer]},
                 "model": name, "dataset": spec.dataset, "data": spec.data, "device": str(device),
                 "threads": torch.get_num_threads(), "protocol": _protocol_text(args)}
    settings = {}
    for key, action in options(args.parser).items():
        if key in _NOT_SAVED:
            continue
        value = effective.get(action.dest, getattr(args, action.dest))
        if value is not None:
            settings[key] = value
    return settings


def cmd_evaluate(args) -> int:
    split = (trained := _load(args)).split
    ks = _cutoffs(args.topk)
    protocols = _evaluated(args, split)
    bar = _progress_bar(args)
    result = {"test": evaluate(trained.model, split, "test", ks=ks, protocols=protocols,
                               per_user=args.per_user, progress=bar)}
    if len(split.valid_users):
        result["valid"] = evaluate(trained.model, split, "valid", ks=ks, protocols=protocols,
                                   per_user=args.per_user, progress=bar)
    print(json_text(result), end="")
    return 0


def _evaluated(args, split) -> tuple:
    """The protocols ``dmfx evaluate`` reports: those of training, or ``--protocol``'s."""
    have = split.test_negatives.shape[1]
    kind, count = _protocol(args)
    given = args.protocol is not None or args.eval_negatives is not None
    if args.no_full_ranking and (kind == "full" and given or not have):
        raise ValueError("--no-full-ranking leaves the sampled metrics alone, and "
                         + ("--protocol full asks for the full-ranking ones" if given else
                            "this model's split has no sampled items (trained under full)"))
    if given and kind == "sampled" and count != have:
        raise ValueError(f"--protocol sampled:{count}: this model's split has {have} sampled "
                         f"items per held-out item{' (none: trained under full)' if not have else ''}")
    if args.no_full_ranking:
        return ("sampled",)
    if not given:
        return ("sampled", "full") if have else ("full",)
    return ("sampled", "full") if kind == "sampled" else ("full",)


def cmd_recommend(args) -> int:
    from .serving import (HELD_OUT, read_new_user, read_user_ids, recommend_blocks,
                          write_recommendations)

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag, path in (("--users-file", args.users_file), ("--ratings", args.ratings)):
        if path is not None and not Path(path).is_file():  # before the model is read
            raise FileNotFoundError(f"{flag}: no file at {path}")
    trained = _load(args)
    model = trained.model
    if args.ratings:
        if not type(model).can_score_rows(model.config()):
            raise ValueError(f"--ratings: {type(model).__name__} {CANNOT_SCORE_NEW_USERS}")
        row, unknown = read_new_user(args.ratings, trained)
        if unknown:
            warnings.warn(f"{args.ratings}: {len(unknown)} item(s) this model does not know were "
                          f"left out: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        items, scores = model.recommend_rows(row, args.k)
        blocks = iter([(np.zeros(1, np.int64), items.cpu().numpy(), scores.cpu().numpy())])
        user_ids = np.asarray(["new"])
    else:
        held_out = trained.held_out_users
        if args.user is not None:
            try:
                users = np.asarray([trained.user_index(args.user)])
            except KeyError:
                raise KeyError(f"unknown user {args.user!r} (not in the data of this model)") from None
            if np.isin(users, held_out).any():
                raise ValueError(f"user {args.user!r} {HELD_OUT}")
        elif args.users_file:
            users = read_user_ids(args.users_file, trained)  # refuses held-out users by line
        else:
            users = np.setdiff1d(np.arange(model.num_users), held_out)
            if len(held_out):
                warnings.warn(f"--all-users: {len(held_out):,} user(s) held out of training "
                              "(--held-out-users) are left out: the model knows none of their "
                              "ratings (--ratings FILE recommends for one from their ratings)")
        # Everything a user interacted with is left out, held-out items included.
        blocks = recommend_blocks(trained, users, args.k,
                                  exclude=trained.interacted(device=model.device),
                                  block=args.batch_size,
                                  progress=_progress_bar(args) and len(users) > 1)
        user_ids = trained.user_ids
    if args.output:
        rows = write_recommendations(args.output, blocks, trained, user_ids=user_ids)
        print(f"{rows:,} recommendations -> {args.output}", file=sys.stderr)
        return 0
    single = args.user is not None or args.ratings
    for users, items, scores in blocks:
        for user, user_items, user_scores in zip(users, items, scores):
            ranked = [(i, s) for i, s in zip(user_items.tolist(), user_scores.tolist()) if i >= 0]
            for rank, (item, score) in enumerate(ranked, 1):
                prefix = "" if single else f"{user_ids[user]}\t"
                print(f"{prefix}{rank}\t{trained.item_ids[item]}\t{score:.4f}")
    return 0


def cmd_export(args) -> int:
    from .serving import export_model

    meta = export_model(_load(args), args.output)
    print(f"{meta['model']}: {meta['users']:,} users and {meta['items']:,} items, "
          f"{meta['dim']}-d vectors -> {args.output} ({', '.join(meta['files'])})")
    return 0


def cmd_split(args) -> int:
    spec = _data_spec(args)
    make_folder(args.output)  # a file in the way is named before the data is read
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
        print(f"{name}\t{where}\n    {spec.description}")
    print("synthetic:UxIxN\tgenerated: U users, I items, N power-law ratings (seed 0)")
    return 0


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dmfx: warning: {message}", file=sys.stderr if file is None else file, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments of the command line ``argv`` (default ``sys.argv[1:]``); for ``train
    --config FILE``, the file's settings as flags, overridden by those of the command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own usage, not the top level's
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "config", None):
        # The file's flags go right after the command, before the command line's own, which
        # argparse applies later: a flag given on the command line wins.
        flags = _not_overridden(file_flags(args.config, args.parser), argv[1:], args)
        args = parser.parse_args([argv[0], *flags, *argv[1:]])
    return args


def _not_overridden(flags: list, argv: list, given: argparse.Namespace) -> list:
    """The ``--name=value`` flags of a --config file, less those that flags of the command line
    ``argv`` (parsed as ``given``) replace beyond their own name: ``--data`` alone replaces
    the file's ``--dataset`` too (and ``--dataset`` alone its ``--data``), either of them its
    ``--sep``, ``--eval-negatives`` its ``--protocol``, and ``--model`` the file model's own
    parameters and a loss the new model does not train with."""
    typed = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}
    moot = set()
    if "data" in typed and "dataset" not in typed:
        moot.add("dataset")
    if "dataset" in typed and "data" not in typed:
        moot.add("data")
    if typed & {"data", "dataset"} and "sep" not in typed:
        moot.add("sep")  # the file's separator was its data's
    if "eval-negatives" in typed:  # the older spelling of the protocol replaces the file's
        moot.add("protocol")
    if "model" in typed:
        spec = spec_of(given.model)
        moot |= {n.replace("_", "-") for other in MODELS.values() for n in other.params
                 if n not in spec.params}
        moot |= {flag for flag, (field_name, _, _) in TRAIN_FLAGS.items()
                 if field_name not in TRAINERS[spec.trainer]}
        if spec.trainer == "gradient" and any(flag.startswith("--loss=") and
                                              flag[len("--loss="):] not in spec.cls.losses
                                              for flag in flags):
            moot.add("loss")
    return [flag for flag in flags if flag[2:].split("=", 1)[0] not in moot]


def train_settings(argv: list) -> dict:
    """The model and training settings that a ``dmfx train`` run of ``argv`` records in its
    metrics.json (``config.model_config``, pre-trained parts' paths left out, and
    ``config.train``), found without reading data: what ``dmfx reproduce`` compares a finished
    run with before it reuses the run."""
    args = parse_args(argv)
    name, params, given = _model_choice(args)
    spec = spec_of(name)
    model = {key: value for key, value in {**spec.defaults(), **params}.items()
             if not spec.params[key].init_only}
    return {"model_config": model, "train": asdict(_train_config(args, name, given, False))}


def _train_config(args, name: str, given: dict, progress) -> TrainConfig:
    """The TrainConfig of a ``dmfx train`` command line: the model's defaults, the flags
    ``given``, the seed and the protocol."""
    try:
        config = train_config(name, **given, seed=args.seed, track_test=args.track_test,
                              progress=progress)
    except ValueError as error:  # "batch_size must be ..." -> "--batch-size must be ..."
        raise _flagged(error) from None
    return replace(config, protocol=_protocol(args)[0])


def _stdout_to_devnull() -> None:
    """After a broken pipe (``dmfx recommend ... | head``): what is left in stdout's buffer
    goes nowhere, so that Python's flush at exit does not fail again (Python's documentation,
    "Note on SIGPIPE", does this)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file (captured, closed)
        pass


def _stdout_hung_up() -> bool:
    """Whether stdout is a pipe or socket whose reader went away: poll reports POLLERR (Linux)
    or POLLHUP (macOS) on its descriptor.  False for a stdout without one (None, captured):
    a broken pipe there was another pipe's or socket's."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


# A command whose reader went away (`| head`) ends as if SIGPIPE had ended it: 128 + 13.
BROKEN_PIPE_STATUS = 141


def main(argv=None) -> int:
    shown, warnings.showwarning = warnings.showwarning, _warn_in_one_line
    try:
        args = parse_args(argv)
        code = args.handler(args)
        if sys.stdout is not None:  # None where the process started with stdout closed
            sys.stdout.flush()  # a broken pipe shows here, not in the flush at exit
        return code
    except USER_ERRORS as error:
        # The reader of stdout went away: stop quietly.  Another pipe's or socket's broken pipe
        # is an OSError like any other.
        if isinstance(error, BrokenPipeError) and _stdout_hung_up():
            _stdout_to_devnull()
            return BROKEN_PIPE_STATUS
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dmfx: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmfx: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
