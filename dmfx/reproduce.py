"""``dmfx reproduce``: a paper's experiments on any data set, by one command.

    dmfx reproduce dmf-paper --dataset ml-100k --seeds 0 1 2 --jobs 2 --output runs/dmf-paper

An experiment is a list of tables; a table is a list of rows; a row is one method (a model and
its ``dmfx train`` arguments) run once per seed. Seed s also splits the data: it trains on split
seed s (``--split-seed N`` fixes one split for every seed instead), so the spread over seeds
holds the split's variance as well as the training's. Where a row lists several settings (a
grid), the one with the best mean validation NDCG@10 over the seeds is reported -- the test item
is never used to choose. Every run is an ordinary ``dmfx train`` run folder under
``OUTPUT/runs/MODEL-HASH/seedS[-splitT]`` (the hash is of the row's arguments, a run it
starts from named by its own MODEL-HASH; the split seed T is
named unless it is 0, the split of every run made before split seeds varied, so those runs keep
their folders); a run that finished is not run again (if its recorded settings are still what
its arguments mean: one made under other defaults is refused), a run that was interrupted
resumes from its checkpoint, and a finished run without full-ranking metrics (made before they
were always recorded) is resumed only to evaluate them.

Writes ``OUTPUT/results.json`` (every run and every row's choice), one CSV and one Markdown file
per table with the paper's values beside ours, ``OUTPUT/report.md`` (all tables and figures), and
PNG figures (needs matplotlib). A cell is the mean over seeds ± the half-width of its 95 %
confidence interval (Student's t with seeds - 1 degrees of freedom: t * std / sqrt(seeds)). Each
table also holds, for its first metric under both protocols, the difference of every row to the
table's reference row and the two-sided p-value of a paired t-test over seeds (row and reference
at seed s share split s; :func:`paired_t_test`). The sampled protocol's columns are the paper's;
``full`` columns rank the held-out item among all items (:mod:`dmfx.evaluate`). ``--readme FILE`` replaces the block
between ``<!-- reproduce:NAME:DATASET -->`` and ``<!-- /reproduce:NAME:DATASET -->`` in FILE by
the report, so a README's tables come from this output, never by hand.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from tqdm.auto import tqdm

from .checkpoint import atomic_write, make_folder, write_json

__all__ = ["EXPERIMENTS", "Row", "Table", "Experiment", "reproduce"]

Args = tuple  # dmfx train arguments besides data, seed and output


@dataclass(frozen=True)
class Row:
    """One method of a table. ``grid`` holds the candidate ``dmfx train`` argument tuples
    (chosen on validation when there are several) or a function of the choices made for the
    rows it ``needs`` (e.g. NeuMF-p starts from the chosen GMF and MLP runs); ``{ROW:dir}`` in
    an argument is replaced by the run folder of that row's choice for the same seed."""

    label: str
    model: str
    grid: Union[Sequence[Args], Callable[[dict], Sequence[Args]]]
    paper: dict = field(default_factory=dict)  # dataset -> {metric: value}
    needs: tuple = ()


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    rows: list
    curves: bool = False  # also draw test HR/NDCG@10 per epoch of each row (Figure 2)
    chart: bool = False  # a bar chart of the rows beside the paper's values
    # test metrics reported (keys of metrics.json "test"); the first is compared with the paper
    metrics: tuple = ("hr@10", "ndcg@10")
    # the row every other row is tested against (paired over seeds); default the first row
    reference: Optional[str] = None


@dataclass(frozen=True)
class Experiment:
    name: str
    paper: str
    tables: Callable[[bool], list]  # quick -> tables
    notes: str = ""


# --------------------------------------------------------------------------- the DMF paper

# Paper values (HR@10, NDCG@10) by data set, from Xue et al., IJCAI 2017.
_DATASETS = ("ml-100k", "ml-1m", "amazon-music", "amazon-movies")


def _paper(*pairs) -> dict:
    """``_paper((hr, ndcg) for ml-100k, ml-1m, amazon-music, amazon-movies)``."""
    return {name: {"hr@10": pair[0], "ndcg@10": pair[1]}
            for name, pair in zip(_DATASETS, pairs) if pair is not None}


_TABLE2 = {  # Table 2 prints NDCG above HR; stored here as (HR, NDCG)
    "ItemPop": _paper((0.406, 0.231), (0.472, 0.263), (0.423, 0.242), (0.620, 0.386)),
    "ItemKNN": _paper((0.600, 0.334), (0.637, 0.372), (0.493, 0.345), (0.652, 0.403)),
    "eALS": _paper((0.621, 0.356), (0.709, 0.425), (0.521, 0.374), (0.693, 0.455)),
    "NeuMF-p": _paper((0.670, 0.395), (0.722, 0.440), (0.527, 0.371), (0.739, 0.512)),
    "DMF-2-ce": _paper((0.679, 0.405), (0.720, 0.442), (0.570, 0.403), (0.765, 0.533)),
    "DMF-2-nce": _paper((0.687, 0.409), (0.732, 0.451), (0.563, 0.397), (0.773, 0.550)),
}
_TABLE3 = {
    "LFM-nce": _paper((0.634, 0.369), (0.641, 0.376), (0.491, 0.311), (0.714, 0.468)),
    "DMF-1-nce": _paper((0.670, 0.386), (0.660, 0.383), (0.572, 0.389), (0.764, 0.520)),
}
_TABLE4 = {
    1: _paper((0.677, 0.393), (0.689, 0.408), (0.569, 0.384), (0.767, 0.521)),
    2: _paper((0.687, 0.403), (0.721, 0.432), (0.562, 0.387), (0.778, 0.541)),
    5: _paper((0.684, 0.406), (0.723, 0.434), (0.556, 0.386), (0.781, 0.549)),
    9: _paper((0.675, 0.401), (0.726, 0.443), (0.567, 0.391), (0.774, 0.548)),
    10: _paper((0.667, 0.400), (0.725, 0.438), (0.554, 0.384), (0.776, 0.544)),
}
_TABLE5 = {
    8: _paper((0.660, 0.369), (0.637, 0.361), (0.547, 0.357), (0.740, 0.485)),
    16: _paper((0.672, 0.389), (0.681, 0.398), (0.560, 0.371), (0.763, 0.514)),
    32: _paper((0.675, 0.386), (0.688, 0.406), (0.568, 0.377), (0.767, 0.522)),
    64: _paper((0.682, 0.394), (0.690, 0.411), (0.559, 0.374), (0.768, 0.524)),
    128: _paper((0.677, 0.393), (0.689, 0.408), (0.569, 0.384), (0.767, 0.521)),
}


def _widths(*widths) -> str:
    return ",".join(map(str, widths))


def _dmf_paper(quick: bool) -> list:
    # quick: a smoke version of every table (tiny towers, two epochs, one setting per grid but
    # ItemKNN's two neighbourhoods, which cost nothing)
    first = 16 if quick else 256
    short = ("--epochs", "2", "--patience", "0") if quick else ()
    curve_epochs = "2" if quick else "20"

    def dmf(*args, factors=None, first_width=first, layers=None):
        # The paper's towers (Eq. 5-6) and score, whatever dmfx's defaults are.
        final = factors if factors is not None else (8 if quick else 64)
        widths = layers if layers is not None else (first_width, final)
        tail = () if "--epochs" in args else short
        return ("--user-layers", _widths(*widths), "--item-layers", _widths(*widths),
                "--activation", "eq6", "--score", "cosine", *args, *tail)

    def grid(full, small):
        return small if quick else full

    ncf = ("--epochs", "2", "--patience", "0") if quick else ()
    gmf = [("--factors", str(f), *ncf) for f in grid((8, 16, 32, 64), (8,))]
    mlp = [("--layers", _widths(8 * f, 4 * f, 2 * f, f), *ncf) for f in grid((8, 16, 32, 64), (8,))]

    def neumf_p(chosen):
        gmf_args, mlp_args = chosen["GMF"], chosen["MLP"]
        sizes = ("--factors", gmf_args[gmf_args.index("--factors") + 1],
                 "--layers", mlp_args[mlp_args.index("--layers") + 1])
        return [(*sizes, "--gmf-checkpoint", "{GMF:dir}/checkpoint.pt",
                 "--mlp-checkpoint", "{MLP:dir}/checkpoint.pt", "--optimizer", "sgd", "--lr", lr,
                 *ncf) for lr in grid(("0.001", "0.01"), ("0.01",))]

    # eALS: the missing-data weight as its paper tunes it, and the regularisation, which its
    # paper fixes (0.01) for larger data sets but which ml-100k's 943 users need.
    eals = [("--w0", w0, "--reg", reg, *(("--epochs", "2", "--factors", "8") if quick else ()))
            for w0 in grid(("64", "256", "512", "1024"), ("64",))
            for reg in grid(("0.01", "1", "10"), ("1",))]
    bpr = [("--reg", reg, *ncf) for reg in grid(("1e-5", "1e-4", "1e-3"), ("1e-5",))]
    knn = [("--neighbours", str(k), "--neighbourhood", where)
           for where in grid(("target", "history"), ("target", "history"))
           for k in grid((10, 20, 50, 100, 200, 400), (20,))]

    depths = {1: (64,), 2: (256, 64), 3: (256, 128, 64), 4: (512, 256, 128, 64)}
    if quick:
        depths = {1: (8,), 2: (16, 8)}
    curve = ("--track-test", "--patience", "0", "--epochs", curve_epochs)

    return [
        Table("table2", "Table 2: HR@10 and NDCG@10 of the methods", chart=True,
              reference="DMF-2-nce", rows=[
            Row("ItemPop", "itempop", [()], _TABLE2["ItemPop"]),
            Row("ItemKNN", "itemknn", knn, _TABLE2["ItemKNN"]),
            Row("eALS", "eals", eals, _TABLE2["eALS"]),
            Row("GMF", "gmf", gmf),
            Row("MLP", "mlp", mlp),
            Row("NeuMF-p", "neumf", neumf_p, _TABLE2["NeuMF-p"], needs=("GMF", "MLP")),
            Row("BPR-MF", "bpr", bpr),
            Row("DMF-2-ce", "dmf", [dmf("--loss", "ce")], _TABLE2["DMF-2-ce"]),
            Row("DMF-2-nce", "dmf", [dmf()], _TABLE2["DMF-2-nce"]),
        ]),
        Table("table3", "Table 3: the rating rows as input (DMF-1-nce) vs free embeddings (LFM-nce), "
              "one layer each", reference="DMF-1-nce", rows=[
                  Row("LFM-nce", "lfm", [("--user-layers", _widths(8 if quick else 64),
                                          "--item-layers", _widths(8 if quick else 64), *short)],
                      _TABLE3["LFM-nce"]),
                  Row("DMF-1-nce", "dmf", [dmf(layers=(8,) if quick else (64,))], _TABLE3["DMF-1-nce"]),
              ]),
        Table("table4", "Table 4: DMF-2-nce by negative sampling ratio", [
            Row(f"neg-{k}", "dmf", [dmf("--negatives", str(k))], _TABLE4[k])
            for k in grid((1, 2, 5, 9, 10), (1, 2))
        ]),
        Table("table5", "Table 5: DMF-2-nce by factors of the final latent space", [
            Row(f"{f} factors", "dmf", [dmf(factors=f)], _TABLE5.get(f, {}))
            for f in grid((8, 16, 32, 64, 128), (4, 8))
        ]),
        Table("figure2", "Figure 2: DMF-nce by depth (test HR@10 and NDCG@10 per epoch; the table "
              "gives the best validation epoch)", [
                  Row(f"{d} layer{'s' if d > 1 else ''}", "dmf", [dmf(*curve, layers=widths)])
                  for d, widths in depths.items()
              ], curves=True),
    ]


def _dmf_variants(quick: bool) -> list:
    first, final = (16, 8) if quick else (256, 64)
    short = ("--epochs", "2", "--patience", "0") if quick else ()
    tower = ("--user-layers", _widths(first, final), "--item-layers", _widths(first, final))
    base = (*tower, "--track-test", *short)
    variants = [
        ("paper: ReLU after layers 2..N (Eq. 6), cosine", ()),
        ("ReLU after the hidden layers, linear output", ("--activation", "hidden")),
        ("ReLU after every layer", ("--activation", "all")),
        ("no ReLU", ("--activation", "none")),
        ("learning rate 1e-3", ("--lr", "1e-3")),
        ("0/1 input (Eq. 1)", ("--input", "binary")),
        ("negatives drawn once (Algorithm 1)", ("--resample", "once")),
        ("dot-product logit instead of the cosine (RecBole)", ("--score", "dot")),
    ]
    rows = [Row(label, "dmf", [(*base, *extra)], _TABLE2["DMF-2-nce"] if not extra else {})
            for label, extra in variants]
    one = _widths(final)
    rows.append(Row("DMF-1-nce (one linear layer), for the paper's ordering", "dmf",
                    [("--user-layers", one, "--item-layers", one, "--track-test", *short)],
                    _TABLE3["DMF-1-nce"]))
    return [Table("variants", "DMF-2-nce variants (the default and the directions of the search)",
                  rows, curves=True)]


def _dmf_new_users(quick: bool) -> list:
    first, final = (16, 8) if quick else (256, 64)
    short = ("--epochs", "2", "--patience", "0") if quick else ()
    held = ("--held-out-users", "0.1")
    dmf = ("--user-layers", _widths(first, final), "--item-layers", _widths(first, final),
           "--activation", "eq6", "--score", "cosine", *held, *short)
    knn = [(*held, "--neighbours", str(k)) for k in ((20,) if quick else (20, 50, 100, 200))]
    # EINMF at its paper's settings (Section 4.3.1), reading [R | IR] rows (--input rows)
    einmf = ("--factors", "8" if quick else "64", "--batch-size", "1024", "--negatives", "4",
             *held, *(short or ("--epochs", "100", "--patience", "10")))
    return [Table("new-users", "Users never trained on, scored from their ratings (a tenth of "
                  "the evaluated users held out of training)", reference="DMF-2-nce", rows=[
                      Row("ItemPop", "itempop", [held]),
                      Row("ItemKNN", "itemknn", knn),
                      Row("DMF-2-nce", "dmf", [dmf]),
                      Row("EINMF", "einmf", [einmf]),
                  ], metrics=("new_hr@10", "new_ndcg@10", "hr@10", "ndcg@10"))]


# --------------------------------------------------------------------------- the EINMF paper

_CUTOFFS = (5, 10, 20)
_PER_USER = tuple(f"user_{m}@{k}" for m in ("hr", "ndcg") for k in _CUTOFFS)


def _einmf_values(hr: tuple, ndcg: tuple) -> dict:
    return {**{f"user_hr@{k}": v for k, v in zip(_CUTOFFS, hr)},
            **{f"user_ndcg@{k}": v for k, v in zip(_CUTOFFS, ndcg)}}


# Table 3 of the EINMF paper: HR@5/10/20 and NDCG@5/10/20 by data set. Its ml-1m Pop NDCG row
# repeats the ml-100k one digit for digit (kept as printed).
_EINMF_TABLE3 = {
    "Pop": {"ml-100k": _einmf_values((0.2031, 0.3712, 0.4761), (0.0718, 0.0786, 0.0863)),
            "ml-1m": _einmf_values((0.2015, 0.2983, 0.4228), (0.0718, 0.0786, 0.0863))},
    "Item-KNN": {"ml-100k": _einmf_values((0.3160, 0.4730, 0.5758), (0.0976, 0.1067, 0.1185)),
                 "ml-1m": _einmf_values((0.2237, 0.3371, 0.4874), (0.0677, 0.0714, 0.0817))},
    "BPR-MF": {"ml-100k": _einmf_values((0.2874, 0.4380, 0.5822), (0.0971, 0.1088, 0.1277)),
               "ml-1m": _einmf_values((0.3340, 0.4804, 0.6267), (0.1135, 0.1206, 0.1409))},
    "NCF": {"ml-100k": _einmf_values((0.6002, 0.7540, 0.8367), (0.2662, 0.2641, 0.2890)),
            "ml-1m": _einmf_values((0.603, 0.7278, 0.8268), (0.2608, 0.2497, 0.2525))},
    "DMF": {"ml-100k": _einmf_values((0.6458, 0.7667, 0.8738), (0.2672, 0.2692, 0.2835)),
            "ml-1m": _einmf_values((0.5892, 0.7197, 0.8257), (0.2401, 0.2354, 0.2413))},
    "EINMF": {"ml-100k": _einmf_values((0.6978, 0.8038, 0.8887), (0.3163, 0.3092, 0.3179)),
              "ml-1m": _einmf_values((0.6540, 0.7781, 0.8618), (0.2880, 0.2728, 0.2825))},
}


def _einmf_paper(quick: bool) -> list:
    # Section 4.3.1: batch 1024, at most 100 epochs, early stopping after 10 without a better
    # validation result, embedding size 64 for every embedding model.
    size = 8 if quick else 64
    train = ("--batch-size", "1024", *(("--epochs", "2", "--patience", "0") if quick
                                       else ("--epochs", "100", "--patience", "10")))
    random = ("--split", "random", "--topk", ",".join(map(str, _CUTOFFS)), "--per-user", "unseen")

    def grid(full, small):
        return small if quick else full

    def models(protocol: tuple, factors: int = size, negatives: Optional[int] = None) -> dict:
        """(model, grid) of each method of Table 3 under ``protocol``."""
        neg = lambda k: ("--negatives", str(negatives if negatives is not None else k))  # noqa: E731
        knn = [(*protocol, "--neighbours", str(k)) for k in grid((10, 20, 50, 100, 200, 400), (20,))]
        return {
            "Pop": ("itempop", [protocol]),
            "Item-KNN": ("itemknn", knn),
            "BPR-MF": ("bpr", [(*protocol, *train, "--factors", str(factors), "--lr", "1e-3",
                                *neg(4))]),
            # NCF at EINMF's size: the same embeddings, hidden layers and predictor
            "NCF": ("neumf", [(*protocol, *train, "--factors", str(factors), "--layers",
                               _widths(2 * factors, factors, factors // 2, factors // 4),
                               "--lr", "1e-3", *neg(4))]),
            # DMF: lr 1e-3 on ml-100k and 5e-4 on ml-1m in the paper: chosen on validation here
            "DMF": ("dmf", [(*protocol, *train, "--user-layers", _widths(4 * factors, factors),
                             "--item-layers", _widths(4 * factors, factors), "--lr", lr, *neg(2))
                            for lr in grid(("1e-3", "5e-4"), ("1e-3",))]),
            "EINMF": ("einmf", [(*protocol, *train, "--factors", str(factors), *neg(4))]),
            # The paper's text read literally: id embeddings, not rating rows (see the notes)
            "EINMF ids": ("einmf", [(*protocol, *train, "--factors", str(factors), *neg(4),
                                     "--input", "ids")]),
        }

    def rows(protocol: tuple, suffix: str = "", paper: bool = True) -> list:
        return [Row(label + suffix, model, g, _EINMF_TABLE3.get(label, {}) if paper else {})
                for label, (model, g) in models(protocol).items()]

    einmf = models(random)["EINMF"][1][0]
    sizes = grid((8, 16, 32, 64, 128), (4, 8))
    return [
        Table("table3", "Table 3: HR@N and NDCG@N of the methods (random 0.8/0.1/0.1 split; each "
              "user's top N of the items they did not train on against the user's test items, "
              "Eq. 17-18)",
              rows(random), chart=True, metrics=_PER_USER, reference="EINMF"),
        Table("loo", "The same methods under the DMF paper's protocol (leave-one-out, the test "
              "item among 100 sampled items)", rows(("--split", "loo"), " (loo)", paper=False),
              chart=True, reference="EINMF (loo)"),
        Table("figure2", "Figure 2: HR@10 and NDCG@10 by embedding size (random split, per user)",
              [Row(f"{label} {f}", model, [g[0]] if label != "DMF" else g)
               for label in ("BPR-MF", "NCF", "DMF", "EINMF")
               for f in sizes
               for model, g in [models(random, factors=f)[label]]],
              chart=True, metrics=("user_hr@10", "user_ndcg@10")),
        Table("figure3", "Figure 3: EINMF by negatives per observed pair (random split, per user)",
              [Row(f"EINMF neg-{k}", "einmf", [models(random, negatives=k)["EINMF"][1][0]])
               for k in grid(range(1, 10), (1, 2))],
              chart=True, metrics=("user_hr@10", "user_ndcg@10")),
        Table("figure4", "Figure 4: EINMF by eta, the weight of the implicit loss (random split, "
              "per user)",
              [Row(f"EINMF eta {eta}", "einmf", [(*einmf, "--eta", eta)])
               for eta in grid(tuple(f"{k / 10:.1f}" for k in range(1, 11)), ("0.1", "1.0"))],
              chart=True, metrics=("user_hr@10", "user_ndcg@10")),
    ]


EXPERIMENTS = {
    "dmf-paper": Experiment(
        "dmf-paper", "Xue et al., Deep Matrix Factorization Models for Recommender Systems, "
        "IJCAI 2017", _dmf_paper,
        notes="GMF, MLP and BPR-MF are not in the paper's tables; they are listed as the parts of "
              "NeuMF-p and as a pairwise reference. Figure 2's hidden widths are not given in the "
              "paper; dmfx uses 64 / 256-64 / 256-128-64 / 512-256-128-64. The baselines' "
              "settings are dmfx's grids, chosen on validation (the \"setting\" column): eALS's "
              "w0 and its regularisation (its paper fixes 0.01 for larger data; its popularity exponent "
              "alpha stays at dmfx's default 0.4), ItemKNN's "
              "neighbours and neighbourhood, NeuMF-p's SGD learning rate, BPR-MF's "
              "regularisation, GMF's and MLP's sizes."),
    "dmf-variants": Experiment(
        "dmf-variants", "Xue et al., Deep Matrix Factorization Models for Recommender Systems, "
        "IJCAI 2017", _dmf_variants,
        notes="Each row changes one setting of the paper's DMF-2-nce (two layers, here 256-64, "
              "Adam 1e-4, batch 256, 7 negatives redrawn every epoch, early stopping on validation). "
              "\"peak test\" is the best test HR@10 over the epochs: selection on the test item, "
              "as code that reports the best test iteration does -- shown only to measure that "
              "effect, never used to choose."),
    "dmf-new-users": Experiment(
        "dmf-new-users", "Xue et al., Deep Matrix Factorization Models for Recommender Systems, "
        "IJCAI 2017", _dmf_new_users,
        notes="Not an experiment of the paper: it measures what DMF's input allows, a user "
              "described by their rating row rather than a learned id vector. Each seed holds a "
              "random tenth of the evaluated users out of training (their ratings, validation and "
              "test items); after training on the rest, each held-out user is embedded from "
              "their training ratings and their test item ranked as usual (\"new\" columns). "
              "HR@10 / NDCG@10 are the trained users' own, for comparison. ItemKNN scores a "
              "user from the items they rated, and EINMF (input rows) embeds their rating rows "
              "as DMF does. Id-embedding models (eALS, NeuMF, BPR-MF, LFM) have no vector for "
              "such a user; ItemPop needs none."),
    "einmf-paper": Experiment(
        "einmf-paper", "Neural matrix factorization recommendation based on explicit-implicit "
        "feedback (EINMF), Computational Intelligence and Neuroscience 2022", _einmf_paper,
        notes="HR@N / NDCG@N of Table 3 and the figures are per user (the paper's Eq. 17-18): "
              "each user's top N of the items they did not train on, against the set of the "
              "user's test items. Every model is chosen and stopped on validation NDCG@10 of "
              "the held-out interactions ranked among 100 sampled items. EINMF reads its latent "
              "vectors from the rating rows (--input rows); \"EINMF ids\" is the paper's text "
              "read literally, one id embedding per user and item (--input ids), and has no "
              "paper row of its own. NCF is NeuMF without pre-training at EINMF's sizes. The figures' values are not printed in the paper, so those rows "
              "have no paper column."),
}


# --------------------------------------------------------------------------- running


def _run_key(model: str, args: Args) -> str:
    digest = hashlib.sha1(json.dumps([model, list(args)]).encode()).hexdigest()[:10]
    return f"{model}-{digest}"


def _seed_folder(seed: int, split_seed: int) -> str:
    """``seedS``, or ``seedS-splitT`` for split seed T != 0: runs made when every run used split 0
    keep their folders (and their identity), runs on other splits get their own."""
    return f"seed{seed}" + (f"-split{split_seed}" if split_seed else "")


@dataclass
class Job:
    model: str
    args: Args
    seed: int
    split_seed: int
    folder: Path

    def argv(self, data_args: list, threads: Optional[int]) -> list:
        argv = ["train", "--model", self.model, *self.args, *data_args, "--seed", str(self.seed),
                "--split-seed", str(self.split_seed), "--output", str(self.folder)]
        if threads:
            argv += ["--threads", str(threads)]
        if (self.folder / "checkpoint.pt").is_file():
            argv.append("--resume")
        return argv

    @property
    def done(self) -> bool:
        """Finished, with the full-ranking metrics the tables show (a run finished before they
        were always recorded resumes from its checkpoint to add them, without training)."""
        path = self.folder / "metrics.json"
        return path.is_file() and "full_hr@10" in json.loads(path.read_text())["test"]

    def metrics(self) -> dict:
        return json.loads((self.folder / "metrics.json").read_text())


class _WallClock:
    """The wall-clock time spent building an output folder, over every invocation, interrupted
    ones included: each invocation saves its elapsed time after every finished run. Time spent
    before the folder had this record (runs finished, none recorded) is flagged, not guessed."""

    def __init__(self, output: Path, key: dict):
        self.path, self.start = output / "wall-clock.json", time.perf_counter()
        try:
            ledger = json.loads(self.path.read_text())
        except (OSError, ValueError):
            ledger = {}
        if ledger.get("key") != key:
            earlier = any(output.glob("runs/*/*/metrics.json"))
            ledger = {"key": key, "invocations": [], "unrecorded_earlier_runs": earlier}
        ledger["invocations"].append(0.0)
        self.ledger = ledger

    def save(self) -> float:
        """Records this invocation's time so far; returns it."""
        seconds = time.perf_counter() - self.start
        self.ledger["invocations"][-1] = seconds
        write_json(self.path, self.ledger)
        return seconds


def _run_all(jobs: list, data_args: list, workers: int,
             on_finished: Callable[[], object] = lambda: None, progress: bool = False) -> list:
    """Runs the jobs not done yet, calling ``on_finished`` after each, under a progress bar
    with ``progress``; returns the ones that failed, with their error. One worker trains in
    this process, one run after another; more start a process per run. A failing run is that
    run's failure, never the command's; Ctrl-C stops the runs under way and starts no other."""
    todo = [job for job in jobs if not job.done]
    if not todo:
        return []
    failed = []

    with tqdm(total=len(todo), desc="runs", unit="run", disable=not progress) as bar:
        def finished(job: Job, code: int, err: str) -> None:
            bar.update()
            on_finished()
            if code != 0 or not job.done:
                failed.append((job, err))
                bar.write(f"failed: {job.model} {' '.join(job.args)} seed {job.seed}: {err} "
                          f"(log: {job.folder / 'train.log'})")
            else:
                test = job.metrics()["test"]
                bar.write(f"{job.folder.parent.name} seed {job.seed}: HR@10 {test['hr@10']:.4f} "
                          f"NDCG@10 {test['ndcg@10']:.4f}")

        if workers == 1:
            for job in todo:
                finished(job, *_run_here(job, data_args))
        else:
            _run_in_processes(todo, data_args, workers, finished)
    return failed


def _prepare(job: "Job") -> Path:
    """The run's folder with its arguments; returns its log file."""
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "args.json").write_text(json.dumps(
        {"model": job.model, "args": list(job.args), "seed": job.seed,
         "split_seed": job.split_seed}) + "\n")
    return job.folder / "train.log"


def _last_line(log_file: Path) -> str:
    lines = log_file.read_text().strip().splitlines()
    return lines[-1] if lines else ""


def _run_here(job: "Job", data_args: list) -> tuple[int, str]:
    """One run in this process, its output in its log: (exit status, the log's last line)."""
    from .cli import main

    log_file = _prepare(job)
    with open(log_file, "a") as handle, redirect_stdout(handle), redirect_stderr(handle):
        try:
            code = main(job.argv(data_args, None))
        except Exception:  # a crash (out of memory, a bug): this run's failure, as in a process
            traceback.print_exc()
            code = 1
    if code == 130:  # main() turned Ctrl-C into "dmfx: interrupted": stop here too
        raise KeyboardInterrupt
    return code, _last_line(log_file)


def _run_in_processes(todo: list, data_args: list, workers: int,
                      finished: Callable[["Job", int, str], None]) -> None:
    """Each job in a process of its own, ``workers`` at a time."""
    lock, running, stopping = threading.Lock(), set(), threading.Event()

    def one(job: Job) -> tuple[int, str]:
        log_file = _prepare(job)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log_file, "a") as handle:
            with lock:  # none starts once stopping
                if stopping.is_set():
                    return 130, "interrupted"
                process = subprocess.Popen([sys.executable, "-m", "dmfx", *job.argv(data_args, 1)],
                                           stdout=handle, stderr=subprocess.STDOUT, env=env)
                running.add(process)
            try:
                code = process.wait()
            finally:
                with lock:
                    running.discard(process)
        return code, _last_line(log_file)

    pool = ThreadPoolExecutor(workers)
    try:
        futures = {pool.submit(one, job): job for job in todo}
        for future in as_completed(futures):
            finished(futures[future], *future.result())
    except BaseException:
        with lock:
            stopping.set()
            for process in running:
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def confidence_interval(values: Sequence[float], level: float = 0.95) -> Optional[float]:
    """Half-width of the t-based confidence interval of the mean of ``values`` (independent
    seeds): ``t_{(1 + level) / 2, n - 1} * std / sqrt(n)`` with the sample std; None below two
    values."""
    if len(values) < 2 or not _finite(values):
        return None
    return _half_width(statistics.stdev(values), len(values), level)


def _half_width(std: float, n: int, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + level) / 2, n - 1) * std / n ** 0.5)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, Optional[float]]:
    """``(mean of a - b, two-sided p-value)`` of the paired t-test of ``a[s]`` against ``b[s]``
    (one pair per seed): t = mean(d) / (std(d) / sqrt(n)) with n - 1 degrees of freedom. The
    p-value is None below two pairs or when every difference is the same, to rounding (no
    spread to test)."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b, strict=True)]
    if not _finite(d):
        return math.nan, None
    mean = statistics.mean(d)
    # Differences equal but for rounding (0.41 - 0.37 vs 0.40 - 0.36) have no spread either.
    if len(d) < 2 or statistics.stdev(d) <= 1e-12 * max(1.0, abs(mean)):
        return mean, None
    t = mean / (statistics.stdev(d) / len(d) ** 0.5)
    return mean, float(2 * stats.t.sf(abs(t), len(d) - 1))


def _with_full(metrics: Sequence[str]) -> list:
    """``metrics`` and the full-ranking counterpart of each sampled one (per-user metrics are
    full ranking already)."""
    return [*metrics, *(f"full_{m}" for m in metrics if not m.startswith("user_"))]


def _finite(values) -> bool:
    """Every value a finite number (a metric of no query is NaN, saved as null)."""
    return all(v is not None and math.isfinite(v) for v in values)


def _mean_std(values: list) -> tuple:
    """(mean, sample std); the std is None for a single value. NaN (shown as such) where a
    seed has no finite value."""
    if not values:
        return None, None
    if not _finite(values):
        return math.nan, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _summarise(row: Row, grid: list, jobs_of: dict, seeds: list, metrics_shown: tuple) -> dict:
    """The row's candidates with their mean validation NDCG@10; the chosen one's test metrics
    (``metrics_shown``, and HR/NDCG@10)."""
    candidates = []
    for args in grid:
        runs = [jobs_of[(args, s)] for s in seeds]
        if not all(job.done for job in runs):
            candidates.append({"args": list(args), "complete": False})
            continue
        metrics = [job.metrics() for job in runs]
        valid = [m["valid"].get("ndcg@10") for m in metrics]
        candidates.append({"args": list(args), "complete": True,
                           "valid_ndcg@10": _mean_std(valid)[0],
                           "metrics": metrics,
                           "folders": [str(job.folder) for job in runs]})
    complete = [c for c in candidates if c["complete"]]
    out = {"label": row.label, "model": row.model, "paper": None,
           "candidates": [{k: v for k, v in c.items() if k != "metrics"} for c in candidates]}
    if not complete:
        return out
    # A setting without a finite validation value on every seed is chosen only if all are so.
    best = max(complete, key=lambda c: c["valid_ndcg@10"] if math.isfinite(c["valid_ndcg@10"])
               else -math.inf)
    metrics = best["metrics"]
    shown = dict.fromkeys(_with_full(("hr@10", "ndcg@10", *metrics_shown)))
    out.update({
        "args": best["args"], "folders": best["folders"],
        "test": {m: _mean_std([r["test"][m] for r in metrics]) for m in shown},
        "test_ci95": {m: confidence_interval([r["test"][m] for r in metrics]) for m in shown},
        "valid": {m: _mean_std([r["valid"][m] for r in metrics]) for m in shown
                  if all(m in r["valid"] for r in metrics)},  # no new-user metrics there
        "split_seeds": [r["config"]["data"]["spec"]["seed"] for r in metrics],
        "per_seed": [{"seed": s, "test": r["test"], "valid": r["valid"],
                      "best_epoch": r["best_epoch"], "epochs": len(r["history"]),
                      "seconds": r["seconds"]} for s, r in zip(seeds, metrics)],
        "curves": [[{"epoch": h["epoch"], **h["test"]} for h in r["history"] if "test" in h]
                   for r in metrics],
    })
    if all(out["curves"]):
        out["peak_test"] = {m: _mean_std([max(c[m] for c in curve) for curve in out["curves"]])
                            for m in ("hr@10", "ndcg@10")}
    return out


def reproduce(name: str, data_args: list, dataset_name: str, seeds: list, output: Path,
              jobs: int = 1, quick: bool = False, log: Callable[[str], None] = print,
              command: str = "", only: Sequence[str] = (), split_seed: Optional[int] = None,
              data_identity: Optional[dict] = None, progress: bool = False) -> dict:
    """Runs experiment ``name`` (its tables named in ``only``, or all) and writes its results
    under ``output``; returns results.json. ``data_args`` are the ``dmfx train`` data
    arguments but the split seed: seed s uses split seed s, or ``split_seed`` for every seed
    when given; ``command`` is recorded as the way the results were made. ``data_identity``
    (:func:`data_identity`) is what a finished run in ``output`` must have been trained and
    evaluated on to be reused: one that was not is refused. ``progress`` draws a progress bar of
    the runs."""
    split_of = {seed: seed if split_seed is None else split_seed for seed in seeds}
    experiment = EXPERIMENTS[name]
    tables = experiment.tables(quick)
    unknown = sorted(set(only) - {t.key for t in tables})
    if unknown:
        raise ValueError(f"--only: experiment {name} has no table {', '.join(unknown)} (it has "
                         f"{', '.join(t.key for t in tables)})")
    tables = [t for t in tables if not only or t.key in only]
    make_folder(output)
    clock = _WallClock(output, {"experiment": name, "dataset": dataset_name, "seeds": seeds,
                                "split_seeds": [split_of[seed] for seed in seeds],
                                "quick": quick, "only": sorted(only)})
    chosen: dict = {}  # row label -> the chosen setting's arguments
    summaries: dict = {}
    failed_all = []
    table_of = {row.label: table for table in tables for row in table.rows}
    pending = [row for table in tables for row in table.rows]
    labels = {row.label for row in pending}
    if len(labels) != len(pending):
        raise ValueError(f"experiment {name} repeats a row label")
    for row in pending:
        if set(row.needs) - labels:
            raise ValueError(f"row {row.label} needs rows {', '.join(set(row.needs) - labels)}, "
                             f"which experiment {name} does not have")
    while pending:  # each round runs the rows whose prerequisites are summarised
        ready = [row for row in pending if all(n in summaries for n in row.needs)]
        for row in ready:
            pending.remove(row)
        blocked = [row for row in ready if any(n not in chosen for n in row.needs)]
        for row in blocked:  # a prerequisite failed in every setting
            summaries[row.label] = {"label": row.label, "model": row.model, "candidates": [],
                                    "paper": row.paper.get(dataset_name)}
        ready = [row for row in ready if row not in blocked]
        grids = {row.label: [tuple(a) for a in (row.grid(chosen) if callable(row.grid) else row.grid)]
                 for row in ready}
        jobs_of = {}
        for row in ready:
            for args in grids[row.label]:
                for seed in seeds:
                    resolved = tuple(_resolve(a, summaries, seeds.index(seed)) for a in args)
                    keyed = tuple(_resolve(a, summaries, seeds.index(seed), key=True)
                                  for a in args)
                    folder = (output / "runs" / _run_key(row.model, keyed)
                              / _seed_folder(seed, split_of[seed]))
                    jobs_of[(row.label, args, seed)] = Job(row.model, resolved, seed,
                                                           split_of[seed], folder)
        unique = {job.folder: job for job in jobs_of.values()}
        for job in unique.values():
            if job.done:
                _check_same_settings(job, data_args)
                if data_identity is not None:
                    _check_same_data(job, data_identity)
        if unique:
            log(f"{len(unique)} runs for {', '.join(r.label for r in ready)} "
                f"({sum(not j.done for j in unique.values())} to do)")
        failed_all += _run_all(list(unique.values()), data_args, jobs, clock.save, progress)
        for row in ready:
            summary = _summarise(row, grids[row.label],
                                 {(a, s): jobs_of[(row.label, a, s)] for a in grids[row.label]
                                  for s in seeds}, seeds, table_of[row.label].metrics)
            summary["paper"] = row.paper.get(dataset_name)
            summaries[row.label] = summary
            if "args" in summary:
                chosen[row.label] = tuple(summary["args"])

    results = {
        "experiment": name, "paper": experiment.paper, "dataset": dataset_name, "seeds": seeds,
        "split_seeds": [split_of[seed] for seed in seeds],
        "quick": quick, "only": list(only), "notes": experiment.notes,
        "command": command or f"dmfx reproduce {name} {' '.join(data_args)} --seeds "
                              f"{' '.join(map(str, seeds))}{' --quick' if quick else ''}",
        "tables": [{"key": t.key, "title": t.title, "curves": t.curves, "chart": t.chart,
                    "metrics": list(t.metrics), "reference": t.reference or t.rows[0].label,
                    "rows": [summaries[row.label] for row in t.rows]}
                   for t in tables],
        "failed": [{"model": j.model, "args": list(j.args), "seed": j.seed, "error": e}
                   for j, e in failed_all],
    }
    results.update(_timing(results, clock))
    _write_outputs(results, output, log)
    return results


def data_identity(spec, data) -> dict:
    """What makes the runs of a reproduction comparable: where the data comes from (the
    ``dmfx.experiment.DataSpec``), what was read (``data``'s fingerprint) and the number of
    sampled items; the split itself follows each run's seed and arguments."""
    from .experiment import fingerprint

    return {"dataset": spec.dataset, "data": spec.data, "sep": spec.sep,
            "eval_negatives": spec.eval_negatives, "fingerprint": fingerprint(data)}


def _check_same_data(job: Job, identity: dict) -> None:
    recorded = job.metrics()["config"]["data"]
    changed = [f"{k} {recorded['spec'].get(k)!r} (now {identity[k]!r})" for k in identity
               if k != "fingerprint" and recorded["spec"].get(k) != identity[k]]
    if recorded.get("fingerprint") != identity["fingerprint"]:
        changed.append("the interactions read")
    if changed:
        raise ValueError(f"{job.folder} is a finished run on other data or with other sampled "
                         f"items ({'; '.join(changed)}): give this reproduction its own --output")


# Settings that do not change what a run computes.
_UNSCORED = ("progress", "track_test", "checkpoint_every", "max_steps")


def _check_same_settings(job: Job, data_args: list) -> None:
    """A finished run is reused only where its arguments still mean the settings it ran with:
    a row that leaves a setting at its default would otherwise be served a run made under an
    older default. Settings a run did not record (added since) are not compared."""
    from .cli import train_settings

    recorded = job.metrics()["config"]
    now = json.loads(json.dumps(train_settings(job.argv(data_args, None))))
    changed = [f"{key} {recorded[part][key]!r} (now {value!r})"
               for part in ("model_config", "train") for key, value in now[part].items()
               if key not in _UNSCORED and key in recorded.get(part, {})
               and recorded[part][key] != value]
    if changed:
        raise ValueError(f"{job.folder} is a finished run with other settings ({'; '.join(changed)}"
                         "), defaults of another dmfx version: delete it to train it again, or "
                         "give this reproduction its own --output")


def _timing(results: dict, clock: _WallClock) -> dict:
    """This invocation's wall-clock time, the total over the invocations that built the output
    (finished runs are reused, so one invocation may have done little), the runs' own times,
    and where and when they ran."""
    import torch

    seconds = clock.save()
    metrics = {folder: json.loads((Path(folder) / "metrics.json").read_text())
               for table in results["tables"] for row in table["rows"]
               for candidate in row["candidates"] for folder in candidate.get("folders", [])}
    return {
        "wall_seconds": seconds,
        "wall_seconds_total": sum(clock.ledger["invocations"]),
        "invocations": len(clock.ledger["invocations"]),
        "unrecorded_earlier_runs": clock.ledger["unrecorded_earlier_runs"],
        "run_seconds": sum(m["seconds"] for m in metrics.values()),
        "devices": sorted({m["config"]["device"] for m in metrics.values()}),
        "torch": torch.__version__, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _wall_clock(results: dict) -> str:
    count = results["invocations"]
    text = (f"{results['wall_seconds_total'] / 60:.0f} min of wall-clock over {count} "
            f"invocation{'s' if count > 1 else ''} (finished runs are never repeated")
    if results.get("unrecorded_earlier_runs"):
        text += "; plus earlier invocations whose time was not recorded"
    return text + ")"


def _resolve(arg: str, summaries: dict, index: int, key: bool = False) -> str:
    """``{ROW:dir}`` -> the run folder of ROW's chosen setting for the ``index``-th seed; with
    ``key``, the name of that setting's runs (``MODEL-HASH``), the same for every seed and
    whatever the spelling of ``--output``: what a run's own key holds."""
    for label, summary in summaries.items():
        token = "{" + label + ":dir}"
        if token in arg and "folders" in summary:
            folder = Path(summary["folders"][index])
            arg = arg.replace(token, folder.parent.name if key else str(folder))
    return arg


# --------------------------------------------------------------------------- reporting


def _cell(pair, n: int) -> str:
    """``mean ± half-width of the 95 % interval`` from ``(mean, std)`` over ``n`` seeds."""
    mean, std = pair if pair else (None, None)
    if mean is None:
        return "—"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {_half_width(std, n):.3f}"


def _paired_cell(row: dict, reference: Optional[dict], metric: str) -> str:
    """``difference (p-value)`` of ``row`` against ``reference`` on ``metric``, seed by seed."""
    if reference is None or not row.get("per_seed") or not reference.get("per_seed"):
        return "—"
    if row is reference:
        return "reference"
    ours = {s["seed"]: s["test"][metric] for s in row["per_seed"]}
    theirs = {s["seed"]: s["test"][metric] for s in reference["per_seed"]}
    common = sorted(set(ours) & set(theirs))
    if not common:
        return "—"
    diff, p = paired_t_test([ours[s] for s in common], [theirs[s] for s in common])
    shown = "" if p is None else " (p < 0.001)" if p < 0.001 else f" (p {p:.3f})"
    return f"{diff:+.3f}{shown}"


def _setting(row: dict) -> str:
    if "args" not in row:
        return "—"
    args, shown = row["args"], []
    for i, arg in enumerate(args):
        if arg.endswith("checkpoint.pt") or (i + 1 < len(args) and args[i + 1].endswith("checkpoint.pt")):
            continue  # run folders: listed in results.json
        if arg == "--track-test":
            continue  # records test curves; changes nothing in training
        shown.append(arg)
    text = " ".join(shown) or "defaults"
    if len(row["candidates"]) > 1:
        complete = sum(c["complete"] for c in row["candidates"])
        missing = len(row["candidates"]) - complete
        text += f" (best of {complete} on validation" + \
            (f"; {missing} with failed runs left out)" if missing else ")")
    return text


def _paper_value(value: float) -> str:
    """A paper's value as printed: three decimals, or four where the paper gives four."""
    return f"{value:.3f}" if abs(value - round(value, 3)) < 1e-9 else f"{value:.4f}"


def _span(values: list) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _name(metric: str) -> str:
    """``"hr@10"`` -> ``"HR@10"``, ``"full_hr@10"`` -> ``"full HR@10"``, ``"new_hr@10"`` (held-out
    users) -> ``"new HR@10"``; per-user metrics
    (``user_hr@10``) keep the same name, their table says which protocol it is."""
    full, name = metric.startswith("full_"), metric.removeprefix("full_")
    new, name = name.startswith("new_"), name.removeprefix("new_")
    if not full:
        name = name.removeprefix("user_")
    return ("full " if full else "") + ("new " if new else "") + name.upper()


def _table_rows(table: dict) -> list:
    out = []
    metrics, first = table["metrics"], table["metrics"][0]
    reference = next((r for r in table["rows"] if r["label"] == table["reference"]), None)
    with_paper = any(row.get("paper") for row in table["rows"])  # else no empty paper columns
    for row in table["rows"]:
        paper = row.get("paper") or {}
        test = row.get("test")
        seeds = row.get("per_seed", [])
        n = len(seeds)
        out.append({"method": row["label"]})
        out[-1].update({_name(m): _cell(test[m], n) if test else "—" for m in _with_full(metrics)})
        if with_paper:
            out[-1].update({f"paper {_name(m)}": _paper_value(paper[m]) if m in paper else "—"
                            for m in metrics})
            out[-1][f"{_name(first)} − paper"] = f"{test[first][0] - paper[first]:+.3f}" \
                if first in paper and test else "—"
        out[-1].update({f"{_name(m)} vs {table['reference']}": _paired_cell(row, reference, m)
                        for m in _with_full([first])})
        out[-1].update({
            "valid NDCG@10": _cell(row["valid"].get("ndcg@10"), n) if test else "—",
            "best epoch": _span([s["best_epoch"] for s in seeds]) if seeds else "—",
            "epochs run": _span([s["epochs"] for s in seeds]) if seeds else "—",
            "setting": _setting(row),
        })
        if table["curves"]:
            peak = row.get("peak_test")
            out[-1]["peak test HR@10"] = _cell(peak["hr@10"], n) if peak else "—"
    return out


def _markdown(rows: list) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines)


def _what_is_ranked(shown: set) -> tuple[str, str]:
    """The report's words for the metrics ``shown``: their name, and what they rank."""
    cutoffs = {m.rsplit("@", 1)[1] for m in shown}
    what = f"HR@{min(cutoffs)} / NDCG@{min(cutoffs)}" if len(cutoffs) == 1 else "HR@N / NDCG@N"
    sampled = any(not m.startswith("user_") for m in shown)
    ranking = ("\"full\" columns rank the held-out item among all items, the others among the "
               "sampled ones") if sampled else ""
    if any(m.startswith("user_") for m in shown):  # per user: no sampled columns
        own = "each user's items among all the items the user did not train on"
        ranking = f"{ranking}, but for the per-user tables, which rank {own}" if sampled \
            else f"the tables rank {own}"
    return what, ranking


def _write_outputs(results: dict, output: Path, log: Callable[[str], None]) -> None:
    write_json(output / "results.json", results)
    seeds = results["seeds"]
    shown = {m for table in results["tables"] for m in table["metrics"]}
    what, ranking = _what_is_ranked(shown)
    splits = ("seed s on split seed s" if results["split_seeds"] == seeds
              else f"split seed {results['split_seeds'][0]} for every seed")
    parts = [f"Test {what} on {results['dataset']}, mean ± 95 % confidence interval (t over "
             f"seeds {', '.join(map(str, seeds))}; {splits}); {ranking}. \"vs\" columns: the "
             f"difference to the table's reference row and the p-value of a paired t-test over "
             f"seeds. Where a row had several settings, the one with the "
             f"best mean validation NDCG@10 is shown. Paper: {results['paper']}. Generated by "
             f"`{results['command']}` on {results['date']} ({', '.join(results['devices'])}, "
             f"{results['cpus']} CPU cores, torch {results['torch']}): "
             f"{_wall_clock(results)}; the runs' own times add up to "
             f"{results['run_seconds'] / 60:.0f} min."]
    if results["notes"]:
        parts.append(results["notes"])
    figures = _figures(results, output, log)
    for table in results["tables"]:
        rows = _table_rows(table)
        with open(output / f"{table['key']}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = _markdown(rows)
        (output / f"{table['key']}.md").write_text(text + "\n")
        parts.append(f"**{table['title']}**\n\n{text}")
        for figure in figures.get(table["key"], []):
            parts.append(f"![{table['title']}]({figure})")
    if results["failed"]:
        parts.append("Failed runs: " + "; ".join(
            f"{f['model']} {' '.join(f['args'])} seed {f['seed']} ({f['error']})"
            for f in results["failed"]))
    (output / "report.md").write_text("\n\n".join(parts) + "\n")


def _figures(results: dict, output: Path, log: Callable[[str], None]) -> dict:
    """PNG figures by table key: a chart of Table 2 and the per-epoch curves (Figure 2)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no figures (pip install matplotlib)")
        return {}
    figures = {}
    for table in results["tables"]:
        name = f"{table['key']}.png"
        if table["curves"]:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
            lines = []
            for row in table["rows"]:
                curves = [c for c in row.get("curves", []) if c]
                if not curves:
                    continue
                length = min(len(c) for c in curves)  # epochs that every seed ran
                epochs = [c["epoch"] for c in curves[0][:length]]
                means = {m: [statistics.mean(c[i][m] for c in curves) for i in range(length)]
                         for m in ("hr@10", "ndcg@10")}
                lines.append((row["label"], epochs, means))
            if not lines:  # every row failed: a table without curves
                plt.close(fig)
                continue
            for ax, metric in zip(axes, ("hr@10", "ndcg@10")):
                # Rows far below the rest (a variant that does not train) would flatten the
                # others: the axis starts a little below the weakest row that gets close.
                best = max(max(m[metric]) for _, _, m in lines)
                close = [min(m[metric]) for _, _, m in lines if max(m[metric]) > 0.8 * best]
                floor = min(close or [min(m[metric]) for _, _, m in lines])
                for label, epochs, means in lines:
                    off = max(means[metric]) < floor
                    ax.plot(epochs, means[metric], marker="o", markersize=3,
                            label=label + (" (below the axis)" if off else ""))
                ax.set_ylim(floor - 0.01, best + 0.01)
                ax.set_xlabel("epoch")
                ax.set_ylabel(f"test {metric.upper()}")
                ax.grid(alpha=0.3)
            handles, labels = axes[1].get_legend_handles_labels()
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
            fig.suptitle(f"{results['dataset']}: test metrics per epoch, mean over seeds")
        elif table["chart"]:
            rows = [r for r in table["rows"] if r.get("test")]
            if not rows:
                continue
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
            x = range(len(rows))
            shown = [m for m in table["metrics"] if m.endswith("@10")][:2] or table["metrics"][:2]
            for ax, metric in zip(axes, shown):
                ours = [r["test"][metric][0] for r in rows]
                err = [r["test_ci95"][metric] or 0.0 for r in rows]
                paper = [(r.get("paper") or {}).get(metric, 0) for r in rows]
                ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=err, label="dmfx", capsize=2)
                ax.bar([i + 0.2 for i in x], paper, 0.4, label="paper", alpha=0.6)
                ax.set_xticks(list(x), [r["label"] for r in rows], rotation=45, ha="right")
                ax.set_ylabel(f"test {_name(metric)}")
                ax.grid(axis="y", alpha=0.3)
            axes[0].legend()
            fig.suptitle(f"{results['dataset']}: {table['title'].split(':')[0]}")
        else:
            continue
        fig.tight_layout()
        fig.savefig(output / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures[table["key"]] = [name]
    return figures


def _markers(name: str, dataset: str) -> tuple[str, str]:
    return f"<!-- reproduce:{name}:{dataset} -->", f"<!-- /reproduce:{name}:{dataset} -->"


def _readme_text(readme: Path, name: str, dataset: str) -> str:
    """The text of ``readme``, which must hold the block of (name, dataset)."""
    start, end = _markers(name, dataset)
    try:
        text = readme.read_text()
    except OSError as error:
        raise ValueError(f"--readme {readme}: {error.strerror or error}") from None
    if start not in text or end not in text.split(start, 1)[1]:
        raise ValueError(f"--readme {readme} has no block {start} ... {end} to replace")
    return text


def update_readme(readme: Path, output: Path, name: str, dataset: str, figures_dir: Path) -> None:
    """Replaces the README block of (name, dataset) by ``output``'s report; figures are copied
    into ``figures_dir`` and linked relative to the README."""
    text = _readme_text(readme, name, dataset)
    start, end = _markers(name, dataset)
    report = (output / "report.md").read_text()
    figures_dir.mkdir(parents=True, exist_ok=True)
    for png in sorted(output.glob("*.png")):
        target = figures_dir / f"{name}-{dataset}-{png.name}"
        shutil.copyfile(png, target)
        link = os.path.relpath(target, readme.parent)
        report = report.replace(f"]({png.name})", f"]({link})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{report}{end}{tail}"
    atomic_write(readme, lambda f: f.write(new.encode()))


# --------------------------------------------------------------------------- command line


def seed_arg(text: str) -> int:
    """argparse type of a seed: an integer in [0, 2**63)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2**63), got {seed}")
    return seed


def add_parser(sub, add_data_args: Callable) -> None:
    p = sub.add_parser("reproduce", help="re-run a paper's experiments (tables and figures)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("experiment", choices=list(EXPERIMENTS), help="which paper's experiments")
    add_data_args(p, split_seed_default="each seed's own: seed s trains on split seed s",
                  sampled_only=True)
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2],
                   help="seeds (initialisation, negatives, order); seed s also trains on split "
                        "seed s unless --split-seed fixes one split for all (default 0 1 2)")
    p.set_defaults(split_seed=None)  # None: the split seed follows the seed
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, one CPU thread each (1, the default: in this process, "
                        "torch's threads)")
    p.add_argument("--output", default=None,
                   help="folder (default runs/EXPERIMENT-DATASET, runs/EXPERIMENT-DATASET-quick "
                        "with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke version: tiny models, two epochs, one setting per grid "
                   "(ItemKNN keeps its two neighbourhoods)")
    p.add_argument("--only", nargs="+", default=[], metavar="TABLE",
                   help="run only these tables (keys as in the output: table2, figure2, ...)")
    p.add_argument("--readme", default=None,
                   help="also replace this file's block <!-- reproduce:EXPERIMENT:DATASET --> "
                        "... <!-- /reproduce:EXPERIMENT:DATASET --> by the report (every table: "
                        "not with --only)")
    p.add_argument("--figures-dir", default=None,
                   help="where --readme copies the figures (default: docs/ beside the file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_reproduce, parser=p)


def cmd_reproduce(args) -> int:
    from .cli import _data_spec, _progress_bar, _protocol

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.readme and args.only:
        raise ValueError("--readme replaces the experiment's whole block, which would keep only "
                         "the --only tables: run without --only (finished runs are reused)")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds repeats a seed: {args.seeds}")
    kind, negatives = _protocol(args)
    if kind != "sampled":
        raise ValueError("--protocol: the tables compare with the papers' sampled protocol (and "
                         "every run records full ranking too); give sampled:N")
    first_split = args.seeds[0] if args.split_seed is None else args.split_seed
    spec = _data_spec(argparse.Namespace(**{**vars(args), "split_seed": first_split}))
    data_args = ["--dataset", spec.dataset] if spec.dataset else []
    if args.data:
        data_args += ["--data", args.data]
    if args.sep:
        data_args += ["--sep", args.sep]
    data_args += ["--protocol", f"sampled:{negatives}"]
    data = spec.load()
    spec.split(data)  # fails here, once, on data that cannot be read or split
    identity = data_identity(spec, data)
    del data  # the runs read it themselves
    if args.readme:  # before the runs, not hours later
        _readme_text(Path(args.readme), args.experiment, spec.name)
    output = Path(args.output or f"runs/{args.experiment}-{spec.name}{'-quick' if args.quick else ''}")
    shown = [f"--dataset {spec.dataset}" if spec.dataset else "",
             f"--data {args.data}" if args.data else "",
             f"--sep {shlex.quote(args.sep)}" if args.sep else "",
             f"--split-seed {args.split_seed}" if args.split_seed is not None else "",
             f"--protocol sampled:{negatives}" if negatives != 100 else "",
             "--seeds " + " ".join(map(str, args.seeds)), "--quick" if args.quick else "",
             "--only " + " ".join(args.only) if args.only else ""]
    command = " ".join(["dmfx reproduce", args.experiment, *filter(None, shown)])
    results = reproduce(args.experiment, data_args, spec.name, args.seeds, output, args.jobs,
                        args.quick, log=lambda text: print(text, file=sys.stderr, flush=True),
                        command=command, only=args.only, split_seed=args.split_seed,
                        data_identity=identity, progress=_progress_bar(args))
    print((output / "report.md").read_text())
    if args.readme:
        readme = Path(args.readme)
        update_readme(readme, output, args.experiment, spec.name,
                      Path(args.figures_dir) if args.figures_dir else readme.parent / "docs")
    print(f"-> {output}/report.md, results.json, one .csv and .md per table"
          f"{', figures' if any(output.glob('*.png')) else ''} "
          f"({results['wall_seconds'] / 60:.1f} min)", file=sys.stderr)
    return 1 if results["failed"] else 0
