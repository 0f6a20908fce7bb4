"""ItemPop: every user gets the items ranked by their number of training interactions."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data import Interactions
from .base import Recommender
from .closed_form import ClosedFormEpoch


class PopularityScorer:
    def __init__(self, popularity: Tensor):
        self.popularity = popularity

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        return self.popularity[items]

    def all_items(self, users: Tensor) -> Tensor:
        return self.popularity.repeat(users.numel(), 1)  # a copy: callers may write into it


class ItemPop(Recommender):
    """A non-personalised baseline: the score of an item is its number of training interactions."""

    losses = ()

    def __init__(self, train: Interactions):
        super().__init__(train)
        self.register_buffer("popularity", torch.zeros(train.num_items))

    def fit_closed_form(self, train: Interactions) -> dict:
        counts = np.bincount(train.items, minlength=self.num_items)
        self.popularity.copy_(torch.as_tensor(counts, dtype=torch.float32))
        return {"loss": 0.0}

    def epoch_runner(self, split, config):
        return ClosedFormEpoch(self, split)

    @torch.no_grad()
    def scorer(self) -> PopularityScorer:
        return PopularityScorer(self.popularity)

    def scorer_for_rows(self, rows) -> PopularityScorer:
        return self.scorer()  # the same ranking for every user, new ones too

    def item_vectors(self) -> Tensor:
        raise NotImplementedError("ItemPop has no notion of similar items: every user gets the "
                                  "same ranking")

    def config(self) -> dict:
        return {}
