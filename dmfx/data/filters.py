"""Interaction filters."""

from __future__ import annotations

import numpy as np

from .interactions import Interactions

__all__ = ["kcore"]


def kcore(interactions: Interactions, min_user: int = 1, min_item: int = 1) -> Interactions:
    """Keep the largest subset where every user has >= ``min_user`` and every item >= ``min_item`` interactions.

    Removing a sparse user can push an item below its threshold and vice
    versa, so removal repeats until nothing changes (the k-core).  The result
    is re-indexed to the surviving users and items, in raw-id order; users and
    items without interactions never survive.  The DMF paper filters its
    Amazon sets with ``min_user=20, min_item=5``.
    """
    if min_user < 0 or min_item < 0:
        raise ValueError(f"min_user and min_item must be >= 0, got {min_user}, {min_item}")
    # Work on shrinking copies so each pass costs only what is still alive.
    positions = np.arange(interactions.nnz)
    users, items = interactions.users, interactions.items
    while True:
        user_count = np.bincount(users, minlength=interactions.num_users)
        item_count = np.bincount(items, minlength=interactions.num_items)
        alive = (user_count[users] >= min_user) & (item_count[items] >= min_item)
        if alive.all():
            break
        positions, users, items = positions[alive], users[alive], items[alive]

    kept_users = np.unique(users)
    kept_items = np.unique(items)
    user_map = np.full(interactions.num_users, -1, dtype=np.int64)
    item_map = np.full(interactions.num_items, -1, dtype=np.int64)
    user_map[kept_users] = np.arange(len(kept_users))
    item_map[kept_items] = np.arange(len(kept_items))
    timestamps = interactions.timestamps
    return Interactions(
        interactions.user_ids[kept_users],
        interactions.item_ids[kept_items],
        user_map[users],
        item_map[items],
        interactions.ratings[positions],
        None if timestamps is None else timestamps[positions],
    )
