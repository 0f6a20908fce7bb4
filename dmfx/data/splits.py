"""Leave-one-out evaluation split with sampled negatives (the DMF protocol).

The paper holds out each user's latest interaction as the test item and ranks
it against 100 items the user never interacted with (HR@K / NDCG@K).  This
module builds that split, plus an optional validation item per user chosen at
random among the remaining interactions, reproducibly from a seed and the
order of the interactions (see :func:`leave_one_out`).  Data without
timestamps has no latest interaction; there the test item is drawn at random
too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._keys import sorted_contains
from .interactions import Interactions

__all__ = ["Split", "leave_one_out"]

# Rows still unfinished once a round would draw more than this many
# candidates per catalogue item are sampled exactly instead.
_EXACT_WIDTH = 4
# Users who have seen more than this share of the catalogue skip rejection
# sampling, which would need many draws per accepted negative.
_DENSE_SHARE = 0.5
# Candidate-matrix entries per chunk of rows (bounds temporary memory).
_CHUNK_ENTRIES = 1 << 22

Holdout = Literal["latest", "random", "ratio"]


@dataclass(frozen=True, eq=False, repr=False)
class Split:
    """A leave-one-out split.

    ``train`` has the same id maps as the input (all users and items keep
    their indices).  ``test_users[k]``'s held-out item is ``test_items[k]``,
    to be ranked against ``test_negatives[k]`` (likewise for validation).
    Without validation the ``valid_*`` arrays are empty.  ``holdout`` is the
    rule that chose the test items: ``"latest"`` (each user's latest
    interaction by timestamp, the DMF protocol), ``"random"`` (a random
    one, for data without timestamps) or ``"ratio"`` (a random share of all
    interactions, :func:`ratio_split`; a user then has several rows).
    The sampled negatives are int32 item indices (int64 past 2**31 items).
    """

    train: Interactions
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    valid_negatives: np.ndarray
    test_negatives: np.ndarray
    holdout: Holdout = "latest"

    def __repr__(self) -> str:
        return (
            f"Split(train={self.train!r}, valid_users={len(self.valid_users)}, "
            f"test_users={len(self.test_users)}, num_negatives={self.test_negatives.shape[1]}, "
            f"holdout={self.holdout!r})"
        )


def _negatives_dtype(num_items: int) -> np.dtype:
    """int32 where every item id fits (always, short of 2**31 items): 100 sampled items per
    user for validation and test then take 0.8 KB per user rather than 1.6 KB."""
    return np.dtype(np.int32 if num_items <= np.iinfo(np.int32).max else np.int64)


def _exact_negatives(
    rng: np.random.Generator, user: int, seen_keys: np.ndarray, num_items: int, k: int
) -> np.ndarray:
    """k distinct unseen items for one user by enumerating the unseen set."""
    lo, hi = np.searchsorted(seen_keys, [user * num_items, (user + 1) * num_items])
    seen_items = seen_keys[lo:hi] - user * num_items
    unseen = np.setdiff1d(np.arange(num_items), seen_items, assume_unique=True)
    return rng.choice(unseen, size=k, replace=False)


def _check_unseen(interactions: Interactions, evaluated: np.ndarray, counts: np.ndarray,
                  num_negatives: int) -> None:
    """Every evaluated user must leave ``num_negatives`` items unseen to sample."""
    short = evaluated[interactions.num_items - counts[evaluated] < num_negatives]
    if len(short):
        user = short[0]
        raise ValueError(
            f"user {interactions.user_ids[user].item()!r} interacted with {counts[user]} of "
            f"{interactions.num_items} items, leaving fewer than num_negatives={num_negatives} "
            f"unseen items to sample for evaluation ({len(short)} such users); lower "
            "num_negatives (dmfx: --protocol sampled:N, or --protocol full, which samples none) "
            "or filter these users out"
        )


def _sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    seen_keys: np.ndarray,
    seen_counts: np.ndarray,
    num_items: int,
    k: int,
) -> np.ndarray:
    """``[len(users), k]`` distinct items per row that the row's user never interacted with.

    Rows are processed in chunks to bound memory; see :func:`_sample_chunk`.
    Each row comes back sorted ascending.
    """
    out = np.empty((len(users), k), dtype=_negatives_dtype(num_items))
    if k == 0:
        return out
    chunk = max(1, _CHUNK_ENTRIES // (3 * k + 16))
    for start in range(0, len(users), chunk):
        rows = slice(start, start + chunk)
        out[rows] = _sample_chunk(rng, users[rows], seen_keys, seen_counts[rows], num_items, k)
    return out


def _sample_chunk(
    rng: np.random.Generator,
    users: np.ndarray,
    seen_keys: np.ndarray,
    seen_counts: np.ndarray,
    num_items: int,
    k: int,
) -> np.ndarray:
    """Vectorised rejection sampling of k unseen items for each user of a chunk.

    Each round draws a block of uniform candidates per unfinished row, sorts
    it, discards seen items (binary search in ``seen_keys``, the sorted
    ``user * num_items + item`` keys) and repeated ones, then keeps k of the
    distinct survivors chosen by random priority.  The distinct survivors of
    i.i.d. uniform draws form an exchangeable random subset of the unseen
    items, so a random k of them is a uniform k-subset; a row with fewer than
    k survivors is redrawn with a block twice as wide.  Users who have seen
    more than half the catalogue go straight to exact sampling, as do rows
    whose block would grow past ``_EXACT_WIDTH`` times the catalogue.
    """
    out = np.empty((len(users), k), dtype=np.int64)
    accept = 1.0 - seen_counts / num_items
    dense = accept < 1.0 - _DENSE_SHARE
    pending = np.flatnonzero(~dense)
    widen = 1.25
    while len(pending):
        width = int(widen * k / accept[pending].min()) + 16
        if width > _EXACT_WIDTH * num_items:
            break  # enumerating the catalogue is now cheaper than drawing
        pool = np.sort(rng.integers(0, num_items, size=(len(pending), width)), axis=1)
        # Row-sorted pools of ascending users give sorted queries, which
        # keeps the binary search cache-friendly.
        keys = users[pending, None] * num_items + pool
        rejected = sorted_contains(seen_keys, keys.ravel()).reshape(pool.shape)
        rejected[:, 1:] |= pool[:, 1:] == pool[:, :-1]
        priority = rng.random(pool.shape)
        priority[rejected] = np.inf
        top = np.argpartition(priority, k - 1, axis=1)[:, :k]
        done = np.isfinite(np.take_along_axis(priority, top, axis=1)).all(axis=1)
        out[pending[done]] = np.take_along_axis(pool[done], top[done], axis=1)
        pending = pending[~done]
        widen *= 2.0
    for row in np.concatenate([np.flatnonzero(dense), pending]):
        out[row] = _exact_negatives(rng, int(users[row]), seen_keys, num_items, k)
    out.sort(axis=1)
    return out


def leave_one_out(
    interactions: Interactions,
    num_negatives: int = 100,
    seed: int = 0,
    valid: bool = True,
    min_interactions: int = 3,
) -> Split:
    """Hold out each user's latest interaction (and a random other one for validation).

    * Test item (``split.holdout == "latest"``): the user's latest
      interaction by timestamp; among equal timestamps (44% of
      MovieLens-100K users rate several movies in their last second) the one
      stored last, i.e. last in file order, wins.  That is what a stable sort
      by timestamp gives, as common re-implementations do; a rule on item
      ids instead would bias the test towards whatever the id order means
      (in MovieLens, obscure movies have large ids).
    * Without timestamps (``split.holdout == "random"``): one of the user's
      interactions chosen uniformly at random.  File order would be no
      better than an id rule: files without timestamps are often sorted by
      item within each user, which makes every test item the user's largest
      item id.
    * Validation item (``valid=True``): one of the user's other interactions,
      chosen uniformly at random.
    * Users with fewer than ``min_interactions`` interactions (default 3: one
      each for train, validation and test) stay entirely in ``train`` and are
      not evaluated; a lower value (2 with ``valid``, 1 without) also evaluates
      users left with no training interaction (cold users).  Data where no user has that many is an error, as
      there would be nothing to evaluate.
    * Negatives: for every evaluated user, ``num_negatives`` distinct items
      the user never interacted with in any split, drawn independently for
      validation and test.  A user with fewer unseen items is an error
      rather than a silently shorter row.

    The split is fixed by ``seed`` and the order of the interactions (a
    file's row order, which the readers keep).  With timestamps each user's
    interactions are taken by timestamp, the row order deciding only among
    equal timestamps, so reordering a file's rows changes the split only for
    users with such ties; without timestamps the random picks are made over
    the rows in their order, so reordering them changes the test and
    validation items (not the sampled negatives).  The test item, the test
    negatives and the validation choice come from separate random streams,
    so the test side does not change with ``valid``.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    interactions.check_unique_pairs()
    lowest = 2 if valid else 1
    if min_interactions < lowest:
        raise ValueError(f"min_interactions must be >= {lowest} when valid={valid}, got {min_interactions}")
    users, items = interactions.users, interactions.items
    num_items = interactions.num_items
    counts = np.bincount(users, minlength=interactions.num_users)
    evaluated = np.flatnonzero(counts >= min_interactions)
    if not len(evaluated):
        raise ValueError(
            f"no user can be evaluated: leave-one-out holds out a test{' and a validation' if valid else ''} "
            f"item only for users with at least min_interactions={min_interactions} interactions, but the "
            f"most any of the {interactions.num_users} users has is {counts.max(initial=0)}"
        )
    # A fourth stream, so that the first three draw as they did before it existed.
    pick_stream, valid_stream, test_stream, holdout_stream = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    if interactions.timestamps is None:
        holdout: Holdout = "random"
        # Users' blocks in random order inside: the last one is a uniform pick.
        order = np.lexsort((holdout_stream.random(interactions.nnz), users))
    else:
        holdout = "latest"
        order = np.lexsort((np.arange(interactions.nnz), interactions.timestamps, users))
    ends = np.cumsum(counts)

    _check_unseen(interactions, evaluated, counts, num_negatives)

    seen_keys = np.sort(users * num_items + items)
    seen_counts = counts[evaluated]
    held_out = np.zeros(interactions.nnz, dtype=bool)
    test_pos = order[ends[evaluated] - 1]
    held_out[test_pos] = True
    if valid:
        # Uniform among the user's interactions other than the test one,
        # which sits last in the user's block of ``order``.
        offsets = pick_stream.integers(0, seen_counts - 1)
        valid_pos = order[ends[evaluated] - seen_counts + offsets]
        held_out[valid_pos] = True
        valid_users, valid_items = evaluated, items[valid_pos]
        valid_negatives = _sample_negatives(valid_stream, evaluated, seen_keys, seen_counts, num_items, num_negatives)
    else:
        valid_users = valid_items = np.empty(0, dtype=np.int64)
        valid_negatives = np.empty((0, num_negatives), dtype=_negatives_dtype(num_items))
    test_negatives = _sample_negatives(test_stream, evaluated, seen_keys, seen_counts, num_items, num_negatives)
    return Split(
        train=interactions.select(~held_out),
        valid_users=valid_users,
        valid_items=valid_items,
        test_users=evaluated,
        test_items=items[test_pos],
        valid_negatives=valid_negatives,
        test_negatives=test_negatives,
        holdout=holdout,
    )


def ratio_split(
    interactions: Interactions,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    num_negatives: int = 100,
    seed: int = 0,
) -> Split:
    """Split the interactions at random into train, validation and test shares (the EINMF
    paper's protocol: ratios 0.8, 0.1, 0.1 of all ratings).

    * Every held-out interaction is a row of its own (``test_users`` repeats a user once per
      test interaction), ranked against ``num_negatives`` items the user never interacted with
      in any split, drawn independently per row.
    * A user whose interactions all fall in validation or test keeps one of them (at random) in
      train, so that every evaluated user has training data; items may still be held out
      without any training interaction (cold items), as a random split of ratings makes them.
    * ``ratios[1] == 0`` gives no validation rows.

    The split is fixed by ``seed`` and the order of the interactions (a file's row order, which
    the readers keep): the random permutation assigns shares by position, so reordering a file's
    rows changes the split, timestamps or not.
    """
    shares = np.asarray(ratios, dtype=np.float64)
    if shares.shape != (3,) or not np.all(np.isfinite(shares)) or shares.min() < 0 \
            or shares[0] <= 0 or shares[2] <= 0 or abs(shares.sum() - 1) > 1e-6:
        raise ValueError(f"ratios must be three shares (train, validation, test) that sum to 1, "
                         f"train and test above 0, got {tuple(ratios)}")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    interactions.check_unique_pairs()
    n, users, items = interactions.nnz, interactions.users, interactions.items
    num_items = interactions.num_items
    split_stream, keep_stream, valid_stream, test_stream = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    order = split_stream.permutation(n)
    bounds = np.round(np.cumsum(shares[:2]) * n).astype(np.int64)
    part = np.empty(n, dtype=np.int8)  # 0 train, 1 validation, 2 test
    part[order[:bounds[0]]], part[order[bounds[0]:bounds[1]]], part[order[bounds[1]:]] = 0, 1, 2
    counts = np.bincount(users, minlength=interactions.num_users)
    in_train = np.bincount(users[part == 0], minlength=interactions.num_users)
    lacking = keep_stream.permutation(np.flatnonzero(in_train[users] == 0))
    _, first = np.unique(users[lacking], return_index=True)  # one at random per such user
    part[lacking[first]] = 0
    for code, name in ((2, "test"), (1, "validation")):
        if not np.any(part == code) and shares[code] > 0:
            raise ValueError(f"no interaction is left for {name}: {n} interactions are too few "
                             f"for ratios {tuple(ratios)} (shares are rounded to whole "
                             "interactions, and every user keeps one in train)")
    evaluated = np.unique(users[part != 0])
    _check_unseen(interactions, evaluated, counts, num_negatives)
    seen_keys = np.sort(users * num_items + items)
    rows = {}
    for which, code, stream in (("valid", 1, valid_stream), ("test", 2, test_stream)):
        pos = np.flatnonzero(part == code)
        pos = pos[np.argsort(users[pos], kind="stable")]  # ascending users: cache-friendly sampling
        rows[which] = (users[pos], items[pos],
                       _sample_negatives(stream, users[pos], seen_keys, counts[users[pos]],
                                         num_items, num_negatives))
    return Split(
        train=interactions.select(part == 0),
        valid_users=rows["valid"][0],
        valid_items=rows["valid"][1],
        test_users=rows["test"][0],
        test_items=rows["test"][1],
        valid_negatives=rows["valid"][2],
        test_negatives=rows["test"][2],
        holdout="ratio",
    )
