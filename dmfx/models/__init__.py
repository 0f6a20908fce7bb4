"""Recommenders on dmfx's ops: DMF, its LFM variant, and the ItemPop baseline."""
from .base import Recommender, Scorer
from .dmf import DMF, LFM
from .itempop import ItemPop

__all__ = ["Recommender", "Scorer", "DMF", "LFM", "ItemPop"]
