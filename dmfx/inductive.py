"""Users the model never saw, scored from their ratings (DMF's inductive use).

DMF describes a user by their rating row, not by a learned id vector, so a user who was not in
the training data can be scored as soon as their ratings are known, without retraining.
:func:`hold_out_users` measures it: a share of the users of a leave-one-out split is removed
from training entirely; after training, each of them is embedded from their remaining ratings
(:meth:`Recommender.scorer_for_rows`) and their test item is ranked among the same sampled
candidates as usual and among all items they did not rate (:func:`evaluate_new_users`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .data import Split
from .data.sparse import as_csr
from .evaluate import metrics_from_ranks, rank_full, ranks_from_scores
from .models import Recommender

__all__ = ["NewUsers", "hold_out_users", "evaluate_new_users", "scores_new_users"]


@dataclass(frozen=True)
class NewUsers:
    """Held-out users: ``rows[k]`` (``[m, num_items]`` scipy CSR of ratings) are the known
    ratings of user ``users[k]``, whose ``test_items[k]`` is ranked against
    ``test_negatives[k, :]`` (sampled) or all items but the known ones and the validation item
    ``valid_items[k]`` (full; -1: none).

    Checked when built (a ValueError naming the field): ``users`` ``[m]``, ``test_items`` and
    ``valid_items`` ``[m]`` integer arrays, ``test_negatives`` an ``[m, c]`` one, every item id
    in ``[0, num_items)`` (``valid_items`` also -1), ratings in ``rows`` finite and >= 0 (the
    training data's domain), and a test item neither among the user's rated items (stored
    entries of ``rows``, 0 included) nor their validation item: the full ranking leaves those
    out, so it would never rank the test item. The fields are kept as numpy arrays (item ids as
    int64) and ``rows`` as a scipy CSR matrix; :func:`evaluate_new_users` also checks that
    ``rows`` has the model's number of items."""

    users: np.ndarray
    rows: sp.csr_matrix
    test_items: np.ndarray
    test_negatives: np.ndarray
    valid_items: np.ndarray

    def __post_init__(self):
        if not sp.issparse(self.rows) or len(self.rows.shape) != 2:
            raise ValueError(f"rows must be a 2-D scipy.sparse matrix, got {type(self.rows).__name__}")
        rows = self.rows.tocsr()
        m, num_items = rows.shape
        if rows.nnz and not (np.isfinite(rows.data).all() and (rows.data >= 0).all()):
            raise ValueError("rows must hold finite ratings >= 0, as the training data does")

        def ids(name: str, ndim: int, items: bool = True) -> np.ndarray:
            array = np.asarray(getattr(self, name))
            if array.ndim != ndim or array.shape[0] != m:
                want = "[m]" if ndim == 1 else "[m, c]"
                raise ValueError(f"{name} must be {want} with m = {m} (the rows), got shape "
                                 f"{array.shape}")
            if not items:
                return array
            if array.size == 0 and array.dtype.kind not in "iu":  # np.array([]) is float64
                array = array.astype(np.int64)
            if array.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integer item ids, got dtype {array.dtype}")
            return array.astype(np.int64, copy=False)

        users = ids("users", 1, items=False)
        test = ids("test_items", 1)
        negatives = ids("test_negatives", 2)
        valid = ids("valid_items", 1)
        for name, array, lowest in (("test_items", test, 0), ("test_negatives", negatives, 0),
                                    ("valid_items", valid, -1)):
            if array.size and (int(array.min()) < lowest or int(array.max()) >= num_items):
                raise ValueError(f"{name} must lie in [{lowest}, {num_items}) (item ids of the "
                                 f"rows' {num_items} columns), got [{int(array.min())}, "
                                 f"{int(array.max())}]")
        # The pattern, not the values: an item rated 0 is rated (and left out) too.
        rated = sp.csr_matrix((np.ones(rows.nnz, dtype=np.float32), rows.indices, rows.indptr),
                              shape=rows.shape)
        at = np.flatnonzero(np.asarray(rated[np.arange(m), test]).ravel()) if m else []
        if len(at):
            raise ValueError(f"test_items must not be among the rated items of rows (user "
                             f"{users[at[0]]} rates its test item {test[at[0]]}): the full "
                             "ranking leaves rated items out")
        same = np.flatnonzero(test == valid)
        if len(same):
            raise ValueError(f"test_items must differ from valid_items (user {users[same[0]]}: "
                             f"{test[same[0]]})")
        for name, value in (("users", users), ("rows", rows), ("test_items", test),
                            ("test_negatives", negatives), ("valid_items", valid)):
            object.__setattr__(self, name, value)


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
    valid = np.full(count, -1, dtype=np.int64)
    has_valid = np.isin(split.valid_users, picked)
    valid[np.searchsorted(picked, split.valid_users[has_valid])] = split.valid_items[has_valid]
    new = NewUsers(picked, new_rows.tocsr(), split.test_items[at], split.test_negatives[at], valid)
    return kept, new


def _check_fits(model: Recommender, new: NewUsers) -> None:
    if new.rows.shape[1] != model.num_items:
        raise ValueError(f"rows must have {model.num_items} columns (the model's items), got "
                         f"shape {new.rows.shape}")


@torch.no_grad()
def scores_new_users(model: Recommender, new: NewUsers, scorer=None) -> torch.Tensor:
    """``[m, 1 + c]`` scores of each new user's test item and its sampled candidates."""
    _check_fits(model, new)
    scorer = model.scorer_for_rows(new.rows) if scorer is None else scorer
    users = torch.arange(len(new.users), device=model.device)
    candidates = torch.as_tensor(np.concatenate([new.test_items[:, None], new.test_negatives], 1),
                                 device=model.device)
    return scorer.candidates(users, candidates)


def _known(new: NewUsers) -> sp.csr_matrix:
    """Each new user's rated items and validation item: what full ranking leaves out."""
    has = new.valid_items >= 0
    valid = sp.csr_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), new.valid_items[has])),
                          shape=new.rows.shape)
    # The pattern, not the values: an item rated 0 (an implicit 0 in some data) is rated too.
    rows = new.rows.tocsr()
    rated = sp.csr_matrix((np.ones(rows.nnz, dtype=np.float32), rows.indices, rows.indptr),
                          shape=rows.shape)
    return (rated + valid).tocsr()


@torch.no_grad()
def evaluate_new_users(model: Recommender, new: NewUsers, ks: Sequence[int] = (10,),
                       seed: int = 0) -> dict:
    """The new users' test items ranked among their sampled candidates (``hr@K``, ``ndcg@K``;
    ties broken at random, as the evaluator does) and among all items they did not rate
    (``full_hr@K``, ... as :class:`dmfx.evaluate.Ranking` reports them)."""
    _check_fits(model, new)
    scorer = model.scorer_for_rows(new.rows)
    scores = scores_new_users(model, new, scorer).float().cpu()
    ranks = ranks_from_scores(scores[:, 0], scores[:, 1:], torch.Generator().manual_seed(seed))
    out = metrics_from_ranks(ranks, ks)
    num_items = new.rows.shape[1]
    full = rank_full(scorer, np.arange(len(new.users)), new.test_items, as_csr(_known(new)),
                     num_items, k=max(ks), device=model.device, seed=seed)
    return {**out, **full.metrics(ks, num_items)}
