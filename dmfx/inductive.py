"""Users the model never saw, scored from their ratings (DMF's inductive use).

DMF describes a user by their rating row, not by a learned id vector, so a user who was not in
the training data can be scored as soon as their ratings are known, without retraining.
:func:`hold_out_users` measures it: a share of the users of a leave-one-out split is removed
from training entirely; after training, each of them is embedded from their remaining ratings
(:meth:`Recommender.scorer_for_rows`) and their test item is ranked among the same sampled
candidates as usual (:func:`evaluate_new_users`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .data import Split
from .evaluate import metrics_from_ranks, ranks_from_scores
from .models import Recommender

__all__ = ["NewUsers", "hold_out_users", "evaluate_new_users", "scores_new_users"]


@dataclass(frozen=True)
class NewUsers:
    """Held-out users: ``rows[k]`` (``[m, num_items]`` scipy CSR of ratings) are the known
    ratings of user ``users[k]``, whose ``test_items[k]`` is ranked against
    ``test_negatives[k, :]``."""

    users: np.ndarray
    rows: sp.csr_matrix
    test_items: np.ndarray
    test_negatives: np.ndarray


def hold_out_users(split: Split, fraction: float, seed: int = 0) -> tuple[Split, NewUsers]:
    """``split`` without a random ``fraction`` of its users (their training rows, validation
    and test items removed), and those users as :class:`NewUsers` (their training rows are
    their known ratings; their test items stay the test). Only for one test item per user
    (leave-one-out splits)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the share of held-out users must lie in (0, 1), got {fraction}")
    if split.holdout == "ratio":
        raise ValueError("held-out users need a leave-one-out split (one test item per user)")
    rng = np.random.default_rng(seed)
    test_users = split.test_users
    count = int(round(fraction * len(test_users)))
    if count < 1 or count >= len(test_users):
        raise ValueError(f"holding out {fraction:g} of {len(test_users)} evaluated users leaves "
                         "none on one side")
    picked = np.sort(rng.choice(test_users, size=count, replace=False))
    train = split.train
    new_rows = train.to_scipy("rating")[picked]
    kept = replace(
        split,
        train=train.select(~np.isin(train.users, picked)),
        **{f"{side}_{what}": getattr(split, f"{side}_{what}")[~np.isin(getattr(split, f"{side}_users"), picked)]
           for side in ("valid", "test") for what in ("users", "items", "negatives")})
    order = np.argsort(test_users, kind="stable")
    at = order[np.searchsorted(test_users[order], picked)]
    new = NewUsers(picked, new_rows.tocsr(), split.test_items[at], split.test_negatives[at])
    return kept, new


@torch.no_grad()
def scores_new_users(model: Recommender, new: NewUsers) -> torch.Tensor:
    """``[m, 1 + c]`` scores of each new user's test item and its sampled candidates."""
    scorer = model.scorer_for_rows(new.rows)
    users = torch.arange(len(new.users), device=model.device)
    candidates = torch.as_tensor(np.concatenate([new.test_items[:, None], new.test_negatives], 1),
                                 device=model.device)
    return scorer.candidates(users, candidates)


def evaluate_new_users(model: Recommender, new: NewUsers, ks: Sequence[int] = (10,),
                       seed: int = 0) -> dict:
    """HR@K / NDCG@K of the new users' test items (ties broken at random, as the evaluator
    does), keyed ``hr@K`` / ``ndcg@K``."""
    scores = scores_new_users(model, new).float().cpu()
    ranks = ranks_from_scores(scores[:, 0], scores[:, 1:], torch.Generator().manual_seed(seed))
    return metrics_from_ranks(ranks, ks)
