"""Recommenders of dmfx: DMF and its LFM variant on dmfx's ops, and the ItemPop baseline, all
behind one interface (:class:`Recommender`) and one registry of names and defaults
(:data:`MODELS`)."""
from .base import Recommender, Scorer, VectorScorer, topk_items
from .dmf import DMF, LFM
from .itempop import ItemPop
from .registry import MODELS, ModelSpec, Param, build_model, train_config

__all__ = ["Recommender", "Scorer", "VectorScorer", "topk_items", "DMF", "LFM", "ItemPop",
           "MODELS", "ModelSpec", "Param",
           "build_model", "train_config"]
