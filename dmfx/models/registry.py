"""The model registry: the one place that names every model, its parameters and their defaults,
and the training settings each model uses by default.

The command line, :func:`build_model`, :func:`train_config` and the reproduction commands all
read it. Adding a model is one file in :mod:`dmfx.models` plus one entry in :data:`MODELS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import torch

from ..data import Interactions
from .base import Recommender
from .bpr import BPR
from .dmf import ACTIVATIONS, DMF, LFM, SCORES
from .eals import EALS
from .einmf import EINMF, INPUTS as EINMF_INPUTS
from .itemknn import NEIGHBOURHOODS, ItemKNN
from .itempop import ItemPop
from .ncf import GMF, MLP, NeuMF

__all__ = ["Param", "ModelSpec", "MODELS", "TRAINERS", "build_model", "train_config", "name_of",
           "parse_widths"]


def parse_widths(text: str) -> list[int]:
    """``"256,64"`` -> ``[256, 64]`` (layer widths)."""
    try:
        widths = [int(w) for w in str(text).split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated layer widths like 256,64, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise ValueError(f"layer widths must be positive, got {text!r}")
    return widths


@dataclass(frozen=True)
class Param:
    """A model parameter: its default, what it means, and how to read it from text."""

    default: Any
    help: str
    parse: Optional[Callable[[str], Any]] = None  # default: the type of ``default``
    choices: Optional[tuple] = None
    # Only shapes the starting point (e.g. pre-trained weights to load): a trained model is
    # rebuilt without it, then its state_dict is loaded.
    init_only: bool = False

    def from_text(self, text: str) -> Any:
        value = (self.parse or type(self.default))(text)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, got {text!r}")
        return value


# The TrainConfig fields each kind of trainer uses; the others do not apply to its models.
TRAINERS = {
    "gradient": ("epochs", "batch_size", "lr", "num_negatives", "resample", "loss", "optimizer",
                 "patience", "pairs", "max_steps", "checkpoint_every"),
    "als": ("epochs", "patience"),
    "closed-form": (),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type
    summary: str
    params: dict = field(default_factory=dict)
    trainer: str = "gradient"  # a key of TRAINERS
    train: dict = field(default_factory=dict)  # TrainConfig defaults of this model

    def defaults(self) -> dict:
        return {name: param.default for name, param in self.params.items()}


_LAYERS = "tower widths, first to last; the last is the latent size and must match the other tower's"
_MU = Param(1e-6, "clamp of the predicted cosine (Eq. 13)")
_FACTORS = "latent factors"

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("dmf", DMF, "Deep Matrix Factorization (Xue et al., IJCAI 2017): rating rows "
              "through two MLP towers, cosine score, nce loss", dict(
                  user_layers=Param([256, 64], "user " + _LAYERS, parse_widths),
                  item_layers=Param([256, 64], "item " + _LAYERS, parse_widths),
                  input=Param("rating", "DMF input: ratings (paper Eq. 2) or 0/1 (Eq. 1)",
                              choices=("rating", "binary")),
                  activation=Param("eq6", "where the towers' ReLUs sit: eq6 (the paper: after "
                                   "every layer but the first), hidden (every layer but the "
                                   "output), all, none", choices=ACTIVATIONS),
                  score=Param("cosine", "cosine (the paper, Eq. 8 with the mu clamp) or dot "
                              "(a logit with binary cross-entropy, RecBole's variant)",
                              choices=SCORES),
                  mu=_MU,
                  sparse_grad=Param(False, "row-sparse first-layer gradients + row-wise Adam: a "
                                    "step costs the batch's nnz, not the table sizes (huge "
                                    "catalogues)", parse=lambda text: text.lower() in ("1", "true")),
              ), train=dict(lr=1e-4, batch_size=256, num_negatives=7, loss="nce")),
    ModelSpec("lfm", LFM, "the DMF paper's LFM: DMF's towers and loss on free user/item embeddings",
              dict(user_layers=Param([64], "user " + _LAYERS, parse_widths),
                   item_layers=Param([64], "item " + _LAYERS, parse_widths), mu=_MU),
              train=dict(lr=1e-4, batch_size=256, num_negatives=7, loss="nce")),
    ModelSpec("itempop", ItemPop, "items ranked by their number of training interactions",
              trainer="closed-form"),
    ModelSpec("itemknn", ItemKNN, "item-based CF: cosine item-item similarity on the training "
              "matrix, each item's k nearest neighbours (Sarwar et al. 2001)", dict(
                  neighbours=Param(20, "neighbours kept per item"),
                  neighbourhood=Param("target", "whose neighbours score an item: the scored "
                                      "item's (target, Sarwar et al.) or the user's items' "
                                      "(history, Deshpande & Karypis)", choices=NEIGHBOURHOODS),
              ), trainer="closed-form"),
    ModelSpec("eals", EALS, "element-wise ALS with popularity-weighted missing data (He et al., "
              "SIGIR 2016)", dict(
                  factors=Param(64, _FACTORS),
                  reg=Param(0.01, "L2 regularisation lambda"),
                  w0=Param(512.0, "overall weight c0 of the missing entries"),
                  alpha=Param(0.4, "popularity exponent of the missing-entry weights"),
              ), trainer="als", train=dict(epochs=50, patience=5)),
    ModelSpec("gmf", GMF, "generalized matrix factorization (He et al., WWW 2017)", dict(
        factors=Param(8, _FACTORS),
    ), train=dict(lr=1e-3, batch_size=256, num_negatives=4, loss="ce", epochs=50, patience=5)),
    ModelSpec("mlp", MLP, "NCF's MLP over concatenated user and item embeddings (He et al., "
              "WWW 2017)", dict(
                  layers=Param([64, 32, 16, 8], "MLP widths; the first is the concatenated "
                               "embedding size (each embedding is half of it)", parse_widths),
              ), train=dict(lr=1e-3, batch_size=256, num_negatives=4, loss="ce", epochs=50,
                            patience=5)),
    ModelSpec("neumf", NeuMF, "NeuMF: GMF and MLP fused (He et al., WWW 2017); NeuMF-p when "
              "initialised from pre-trained GMF and MLP checkpoints", dict(
                  factors=Param(8, "GMF " + _FACTORS),
                  layers=Param([64, 32, 16, 8], "MLP widths", parse_widths),
                  alpha=Param(0.5, "weight of the GMF part when fusing pre-trained models"),
                  gmf_checkpoint=Param("", "checkpoint of a gmf run on the same data and split to start from",
                                       init_only=True),
                  mlp_checkpoint=Param("", "checkpoint of an mlp run on the same data and split to start from",
                                       init_only=True),
              ), train=dict(lr=1e-3, batch_size=256, num_negatives=4, loss="ce", epochs=50,
                            patience=5)),
    ModelSpec("bpr", BPR, "BPR-MF: matrix factorization with the pairwise BPR loss (Rendle et "
              "al., UAI 2009)", dict(
                  factors=Param(64, _FACTORS),
                  reg=Param(1e-5, "L2 regularisation of the batch's embeddings"),
              ), train=dict(lr=1e-3, batch_size=256, num_negatives=1, loss="bpr", epochs=100,
                            patience=5)),
    ModelSpec("einmf", EINMF, "EINMF (2022): explicit + implicit latent vectors, a GMF and an MLP "
              "branch, the eta-weighted hybrid loss", dict(
                  factors=Param(64, "size of the latent vectors P_u and Q_i"),
                  layers=Param([64, 32, 16], "MLP branch widths after [P_u ; Q_i]", parse_widths),
                  dropout=Param(0.2, "dropout after each ReLU of the MLP branch"),
                  eta=Param(0.6, "weight of the implicit loss (1 - eta: the explicit one)"),
                  input=Param("rows", "rows: P_u = R_u* W_E + IR_u* W_I from the rating rows (DMF's "
                              "reading of the paper); ids: two embeddings per id",
                              choices=EINMF_INPUTS),
              ), train=dict(lr=1e-4, batch_size=1024, num_negatives=4, loss="hybrid", epochs=100,
                            patience=10)),
]}


def spec_of(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def name_of(model: Recommender) -> str:
    for spec in MODELS.values():
        if type(model) is spec.cls:
            return spec.name
    raise ValueError(f"{type(model).__name__} is not a registered model")


def build_model(name: str, train: Interactions, params: Optional[dict] = None,
                device: torch.device | str = "cpu", restore: bool = False) -> Recommender:
    """The model ``name`` on ``train``: the registry's defaults, updated by ``params``.
    ``restore=True`` builds the empty shell for a saved state_dict (init-only parameters such
    as pre-trained checkpoints to load are left at their defaults)."""
    spec = spec_of(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"model {name} has no parameter {', '.join(unknown)} (it has: "
                         f"{', '.join(spec.params) or 'none'})")
    params = {**spec.defaults(), **params}
    if restore:
        params.update({k: p.default for k, p in spec.params.items() if p.init_only})
    return spec.cls(train, **params).to(device)


def train_config(name: str, **overrides):
    """The :class:`dmfx.train.TrainConfig` of model ``name``: TrainConfig's defaults, then the
    model's, then ``overrides``. Settings its trainer does not use are an error."""
    from ..train import TrainConfig

    spec = spec_of(name)
    used = set(TRAINERS[spec.trainer]) | {"seed", "topk", "track_test", "progress"}
    unused = sorted(k for k, v in overrides.items() if k not in used)
    if unused:
        raise ValueError(f"{', '.join(unused)} do{'es' if len(unused) == 1 else ''} not apply to "
                         f"model {name} (its trainer is {spec.trainer})")
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in {**spec.train, **overrides}.items() if k in known})
    if spec.trainer == "gradient" and config.loss not in spec.cls.losses:
        raise ValueError(f"model {name} trains with loss {' or '.join(spec.cls.losses)}, "
                         f"not {config.loss!r}")
    return config
