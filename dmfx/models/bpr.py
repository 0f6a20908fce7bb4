"""BPR-MF (Rendle et al., UAI 2009): matrix factorization trained with the pairwise BPR loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Interactions
from .base import Recommender, VectorScorer
from .ncf import embedding, positive

__all__ = ["BPR"]


class BPR(Recommender):
    """x_ui = p_u . q_i, trained on (user, observed item i, sampled item j) triples to minimise
    mean(-log sigmoid(x_ui - x_uj)) + reg * mean(||p_u||^2 + ||q_i||^2 + ||q_j||^2).

    An epoch visits every observed pair ``num_negatives`` times, each with its own item j drawn
    uniformly from the user's unobserved items (the usual per-epoch variant, not Rendle et al.'s
    bootstrap sampling of triples with replacement)."""

    losses = ("bpr",)

    def __init__(self, train: Interactions, factors: int = 64, reg: float = 1e-5):
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        super().__init__(train)
        factors = positive(factors, "factors")
        self.user, self.item = embedding(train.num_users, factors), embedding(train.num_items, factors)
        self._config = dict(factors=factors, reg=float(reg))

    def pairwise_loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        p, qi, qj = self.user(users), self.item(pos_items), self.item(neg_items)
        ranking = -F.logsigmoid((p * (qi - qj)).sum(1)).mean()
        norms = (p.square() + qi.square() + qj.square()).sum(1).mean()
        return ranking + self._config["reg"] * norms

    @torch.no_grad()
    def scorer(self) -> VectorScorer:
        return VectorScorer(self.user.weight, self.item.weight)

    def config(self) -> dict:
        return dict(self._config)
