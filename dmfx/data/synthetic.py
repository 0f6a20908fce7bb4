"""Synthetic ratings with power-law activity, for benchmarks and tests at any scale.

Real recommender data is heavy-tailed: a few users rate a lot and a few items
collect most ratings, which is exactly what stresses sparse kernels (long and
short rows side by side).  :func:`synthetic` reproduces that shape at sizes
no public data set has (e.g. 2M users x 1M items x 50M ratings), fully
vectorised and chunked so that memory stays a few bytes per interaction.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._keys import sorted_contains, sorted_unique
from .interactions import Interactions

__all__ = ["synthetic"]

_CHUNK = 1 << 22  # draws per vectorised step, bounds float64 temporaries
_MAX_ROUNDS = 64  # top-up rounds before giving up on reaching nnz
_MAX_DENSITY = 0.5  # rejection sampling of distinct pairs degrades beyond this
_BIAS_STD = 0.5  # user/item bias spread relative to the unit-variance interaction term
_T0 = 1_000_000_000  # first timestamp (2001-09-09), one second per interaction


def _power_law_ranks(rng: np.random.Generator, n: int, alpha: float, size: int) -> np.ndarray:
    """Ranks in ``[0, n)`` with density proportional to ``(rank + 1) ** -alpha``.

    Inverse-CDF sampling of the continuous power law, floored: O(1) per draw,
    unlike a categorical draw over n weights, and Zipf-like for the discrete
    ranks.
    """
    u = rng.random(size)
    if alpha == 1.0:
        x = np.exp(u * math.log(n + 1.0)) - 1.0
    else:
        b = 1.0 - alpha
        x = (1.0 + u * ((n + 1.0) ** b - 1.0)) ** (1.0 / b) - 1.0
    return np.minimum(x.astype(np.int64), n - 1)


def _draw_keys(
    rng: np.random.Generator,
    size: int,
    user_of_rank: np.ndarray,
    item_of_rank: np.ndarray,
    user_alpha: float,
    item_alpha: float,
) -> np.ndarray:
    """``size`` i.i.d. pair keys ``user * num_items + item`` (duplicates possible)."""
    num_users, num_items = len(user_of_rank), len(item_of_rank)
    keys = np.empty(size, dtype=np.int64)
    for start in range(0, size, _CHUNK):
        m = min(_CHUNK, size - start)
        users = user_of_rank[_power_law_ranks(rng, num_users, user_alpha, m)]
        items = item_of_rank[_power_law_ranks(rng, num_items, item_alpha, m)]
        keys[start : start + m] = users * num_items + items
    return keys


def _cover_keys(
    rng: np.random.Generator,
    user_of_rank: np.ndarray,
    item_of_rank: np.ndarray,
    user_alpha: float,
    item_alpha: float,
) -> np.ndarray:
    """``max(num_users, num_items)`` distinct pairs touching every user and every item.

    Every id of the larger side appears exactly once (so the pairs are
    distinct); the smaller side lists each id once and fills the rest by
    popularity, then is shuffled against the larger side.
    """
    num_users, num_items = len(user_of_rank), len(item_of_rank)
    m = max(num_users, num_items)
    if num_users >= num_items:
        users = np.arange(num_users)
        extra = item_of_rank[_power_law_ranks(rng, num_items, item_alpha, m - num_items)]
        items = rng.permutation(np.concatenate([np.arange(num_items), extra]))
    else:
        items = np.arange(num_items)
        extra = user_of_rank[_power_law_ranks(rng, num_users, user_alpha, m - num_users)]
        users = rng.permutation(np.concatenate([np.arange(num_users), extra]))
    return np.sort(users * num_items + items)


def _distinct_keys(
    rng: np.random.Generator,
    nnz: int,
    user_of_rank: np.ndarray,
    item_of_rank: np.ndarray,
    user_alpha: float,
    item_alpha: float,
) -> np.ndarray:
    """Exactly ``nnz`` distinct sorted pair keys, covering all ids when nnz allows."""
    if nnz >= max(len(user_of_rank), len(item_of_rank)):
        cover = _cover_keys(rng, user_of_rank, item_of_rank, user_alpha, item_alpha)
    else:
        cover = np.empty(0, dtype=np.int64)
    draws = functools.partial(
        _draw_keys, rng, user_of_rank=user_of_rank, item_of_rank=item_of_rank,
        user_alpha=user_alpha, item_alpha=item_alpha,
    )

    size = int(1.05 * (nnz - len(cover))) + 16
    keys = sorted_unique(np.concatenate([cover, draws(size)]))
    acceptance = max(len(keys) - len(cover), 1) / size
    for _ in range(_MAX_ROUNDS):
        if len(keys) >= nnz:
            break
        # Heavy heads collide a lot; size the top-up by the observed rate.
        size = int(1.1 * (nnz - len(keys)) / max(acceptance, 0.01)) + 16
        new = sorted_unique(draws(size))
        new = new[~sorted_contains(keys, new)]
        acceptance = max(len(new), 1) / size
        keys = np.sort(np.concatenate([keys, new]), kind="stable")  # merges two sorted runs
    else:
        raise RuntimeError(
            f"could not draw {nnz} distinct pairs in {_MAX_ROUNDS} rounds; lower nnz or the alphas"
        )
    extra = len(keys) - nnz
    if extra:
        # Thin uniformly among the non-cover pairs, which keeps every id covered.
        droppable = np.flatnonzero(~sorted_contains(cover, keys))
        keys = np.delete(keys, rng.choice(droppable, size=extra, replace=False))
    return keys


def synthetic(
    num_users: int,
    num_items: int,
    nnz: int,
    seed: int = 0,
    user_alpha: float = 0.6,
    item_alpha: float = 0.8,
    rank: int = 8,
    rating_scale: int = 5,
) -> Interactions:
    """Random interactions with Zipf-like user activity and item popularity.

    * Pairs: users and items are drawn with probability proportional to
      ``(r + 1) ** -alpha`` of a random popularity rank ``r``; duplicates are
      removed and topped up until exactly ``nnz`` distinct pairs exist.  When
      ``nnz >= max(num_users, num_items)`` every user and every item gets at
      least one interaction.  The defaults give shares similar to MovieLens
      (top 10% of items hold roughly half the ratings).
    * Ratings: ``1..rating_scale`` from the dot product of random rank-``rank``
      user and item factors plus a user and an item bias, cut at equal
      quantiles, so a factorisation model has real structure to learn and
      every rating level is equally common.
    * Timestamps: strictly increasing (one second apart) over a random
      interaction order, so leave-one-out picks a random item per user.
    * Raw ids are ``0..num_users-1`` and ``0..num_items-1``.

    Deterministic for a given ``seed``.  At most ``nnz <= num_users *
    num_items / 2`` (denser matrices defeat rejection sampling).
    """
    if num_users < 1 or num_items < 1 or nnz < 0:
        raise ValueError(f"need num_users, num_items >= 1 and nnz >= 0, got {num_users}, {num_items}, {nnz}")
    if nnz > _MAX_DENSITY * num_users * num_items:
        raise ValueError(
            f"nnz={nnz} exceeds {_MAX_DENSITY:.0%} of the {num_users}x{num_items} matrix; "
            "synthetic() generates sparse data only"
        )
    if user_alpha < 0 or item_alpha < 0 or rank < 1 or rating_scale < 1:
        raise ValueError("need user_alpha, item_alpha >= 0 and rank, rating_scale >= 1")
    rng = np.random.default_rng(seed)
    user_of_rank = rng.permutation(num_users)
    item_of_rank = rng.permutation(num_items)
    keys = _distinct_keys(rng, nnz, user_of_rank, item_of_rank, user_alpha, item_alpha)
    keys = keys[rng.permutation(nnz)]  # random event order
    users, items = np.divmod(keys, num_items)
    del keys

    # Unit-variance interaction term plus user leniency and item quality
    # biases, which real ratings show strongly (item means differ).
    user_factors = rng.standard_normal((num_users, rank), dtype=np.float32) / np.float32(math.sqrt(rank))
    item_factors = rng.standard_normal((num_items, rank), dtype=np.float32)
    user_bias = rng.normal(0.0, _BIAS_STD, num_users).astype(np.float32)
    item_bias = rng.normal(0.0, _BIAS_STD, num_items).astype(np.float32)
    scores = np.empty(nnz, dtype=np.float32)
    for start in range(0, nnz, _CHUNK):
        part = slice(start, start + _CHUNK)
        u, i = users[part], items[part]
        scores[part] = np.einsum("ij,ij->i", user_factors[u], item_factors[i]) + user_bias[u] + item_bias[i]
    ratings = np.ones(nnz, dtype=np.float32)
    if nnz and rating_scale > 1:
        cuts = np.quantile(scores, np.arange(1, rating_scale) / rating_scale)
        ratings += np.searchsorted(cuts, scores, side="right").astype(np.float32)
    timestamps = _T0 + np.arange(nnz, dtype=np.int64)
    return Interactions(np.arange(num_users), np.arange(num_items), users, items, ratings, timestamps)
