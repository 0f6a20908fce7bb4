"""Recommenders of dmfx: DMF and its LFM variant on dmfx's ops, the DMF paper's baselines
(ItemPop, ItemKNN, eALS, GMF, MLP, NeuMF, BPR-MF) and EINMF, all behind one interface
(:class:`Recommender`) and one registry of names and defaults (:data:`MODELS`)."""
from .base import Recommender, Scorer, VectorScorer, topk_items
from .bpr import BPR
from .dmf import DMF, LFM
from .eals import EALS
from .einmf import EINMF
from .itemknn import ItemKNN
from .itempop import ItemPop
from .ncf import GMF, MLP, NeuMF
from .registry import MODELS, ModelSpec, Param, build_model, train_config

__all__ = ["Recommender", "Scorer", "VectorScorer", "topk_items", "DMF", "LFM", "ItemPop",
           "ItemKNN", "EALS", "EINMF", "GMF", "MLP", "NeuMF", "BPR", "MODELS", "ModelSpec", "Param",
           "build_model", "train_config"]
