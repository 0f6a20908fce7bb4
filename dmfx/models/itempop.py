"""ItemPop: every user gets the items ranked by their number of training interactions."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Recommender


class PopularityScorer:
    def __init__(self, popularity: Tensor):
        self.popularity = popularity

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        return self.popularity[items]

    def all_items(self, users: Tensor) -> Tensor:
        return self.popularity.expand(users.numel(), -1)


class ItemPop(Recommender):
    """A sanity baseline with nothing to train: the score of an item is its popularity."""

    trainable = False

    def __init__(self, num_users: int, num_items: int, items: np.ndarray | None = None):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        counts = np.bincount(items, minlength=num_items) if items is not None else np.zeros(num_items)
        self.register_buffer("popularity", torch.as_tensor(counts, dtype=torch.float32))

    @torch.no_grad()
    def scorer(self) -> PopularityScorer:
        return PopularityScorer(self.popularity)

    def config(self) -> dict:
        return {}
