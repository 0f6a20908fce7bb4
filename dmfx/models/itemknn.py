"""ItemKNN: item-based top-N collaborative filtering with k nearest neighbours per item.

Which ItemKNN this is, and why
------------------------------
The DMF paper (Xue et al., IJCAI 2017, Table 2) cites Sarwar et al. (2001) for its ItemKNN
baseline and evaluates top-N ranking of implicit feedback. Sarwar et al. predict a *rating* as a
similarity-weighted average of the user's ratings; on implicit (0/1) data that average is 1 for
every item with any similar neighbour, so it cannot rank. The top-N form of item-based CF is
Deshpande & Karypis (2004), which is also what the ``implicit`` library's
``ItemItemRecommender`` (``CosineRecommender``) computes, and what is implemented here:

* similarity: cosine of the items' *binary* training columns,
  ``cos(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (0 when either item has no interactions);
* sparsification: item ``i`` keeps its ``neighbours`` most similar *other* items,
  ``S_k[i, j] = cos(i, j)`` for ``j`` among them, else 0 (never ``S_k[i, i]``);
* score of user ``u`` for item ``j``: ``sum_{i in train items of u} S_k[i, j]`` (the plain sum,
  no normalisation: Deshpande & Karypis' unnormalised variant, as in ``implicit``).

Details that make the result well defined: similarities are computed in float64 and stored
as float32; ties among equal stored similarities go to the smaller item id; only neighbours of
positive similarity are kept (a zero-similarity "neighbour" changes no score), so an item with
fewer co-occurring items has padding entries (its own id, similarity 0), which contribute nothing.

The similarity is computed one chunk of items at a time from the sparse co-occurrence rows
``Y[:, chunk]^T Y`` (never an N x N dense matrix), each chunk sized so that its co-occurrence
entries stay below a fixed budget; the result is two fixed-shape buffers
``[num_items, neighbours]`` (ids and similarities), so a checkpoint restores into a fresh model.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data import CSR, Interactions
from .base import Recommender, row_entries, topk_items
from .closed_form import ClosedFormEpoch

__all__ = ["ItemKNN", "ItemKNNScorer", "cosine_knn"]

# Co-occurrence entries computed at once (bounds the temporary memory of fit_closed_form).
_CHUNK_ENTRIES = 1 << 22


def cosine_knn(matrix, neighbours: int, chunk_entries: int = _CHUNK_ENTRIES
               ) -> tuple[np.ndarray, np.ndarray]:
    """The ``neighbours`` most cosine-similar other items of every item of the binary
    users x items scipy CSR ``matrix``: ``(ids int64, similarities float32)``, each
    ``[num_items, neighbours]``, most similar first (ties: smaller id first), padded with the
    item's own id and similarity 0 where fewer items have a positive similarity."""
    matrix = matrix.tocsr().astype(np.float64)
    matrix.data[:] = 1.0
    num_items = matrix.shape[1]
    by_item = matrix.T.tocsr()  # items x users
    counts = np.asarray(matrix.sum(axis=0)).ravel()  # |U_i|, exact in float64
    ids = np.repeat(np.arange(num_items, dtype=np.int64)[:, None], neighbours, axis=1)
    sims = np.zeros((num_items, neighbours), dtype=np.float32)
    # An upper bound of each co-occurrence row's entries: sum of |I_u| over the item's users.
    bound = by_item @ np.diff(matrix.indptr).astype(np.float64)
    cumulative = np.cumsum(np.minimum(bound, num_items))
    start = 0
    while start < num_items:
        done = cumulative[start - 1] if start else 0.0
        end = max(start + 1, int(np.searchsorted(cumulative, done + chunk_entries, side="right")))
        end = min(end, num_items)
        co = (by_item[start:end] @ matrix).tocoo()  # co-occurrence counts of the chunk's items
        rows, cols, together = co.row.astype(np.int64), co.col.astype(np.int64), co.data
        item = rows + start
        keep = (cols != item) & (together > 0)
        rows, cols, item, together = rows[keep], cols[keep], item[keep], together[keep]
        cos = (together / np.sqrt(counts[item] * counts[cols])).astype(np.float32)
        # Per row: most similar first, ties to the smaller id; keep the first `neighbours`.
        order = np.lexsort((cols, -cos, rows))
        rows, cols, cos = rows[order], cols[order], cos[order]
        row_start = np.searchsorted(rows, np.arange(end - start), side="left")
        rank = np.arange(len(rows)) - row_start[rows]
        top = rank < neighbours
        ids[rows[top] + start, rank[top]] = cols[top]
        sims[rows[top] + start, rank[top]] = cos[top]
        start = end
    return ids, sims


class ItemKNNScorer:
    """Scores ``Y_u S_k`` of a batch of users: the sparse product of their binary training rows
    with ``S_k`` (held as a CSR without its zero entries), summed per (user, item) pair."""

    def __init__(self, seen: CSR, neighbour_ids: Tensor, neighbour_sims: Tensor):
        self.seen, self.num_items = seen, seen.shape[1]
        keep = neighbour_sims != 0  # padding and zero similarities add nothing
        self.s_indptr = torch.cat([keep.new_zeros(1, dtype=torch.long), keep.sum(1).cumsum(0)])
        self.s_indices = neighbour_ids[keep]
        self.s_values = neighbour_sims[keep].double()

    def _product(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Sorted keys ``row * num_items + item`` of the nonzero scores of ``users`` and the
        scores (float32)."""
        owner, items, _ = row_entries(self.seen.indptr, self.seen.indices, None, users)
        source, neighbours, sims = row_entries(self.s_indptr, self.s_indices, self.s_values, items)
        keys = owner[source] * self.num_items + neighbours
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        sums = torch.zeros(len(unique), dtype=torch.float64, device=keys.device)
        sums.index_add_(0, inverse, sims)
        return unique, sums.float()

    def all_items(self, users: Tensor) -> Tensor:
        keys, values = self._product(users)
        scores = torch.zeros(len(users) * self.num_items, device=values.device)
        scores[keys] = values
        return scores.view(len(users), self.num_items)

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        keys, values = self._product(users)
        query = torch.arange(len(users), device=items.device).unsqueeze(1) * self.num_items + items
        if keys.numel() == 0:
            return torch.zeros(query.shape, device=items.device)
        position = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        return torch.where(keys[position] == query, values[position], 0.0)


class ItemKNN(Recommender):
    """Item-based top-N CF (Deshpande & Karypis 2004; cosine, ``neighbours`` per item); see the
    module docstring for the exact definition.

    Args:
        train: the training interactions (the users' items that are scored from).
        neighbours: the number ``k`` of most similar items each item keeps.
    """

    losses = ()

    def __init__(self, train: Interactions, neighbours: int = 20):
        if isinstance(neighbours, bool) or int(neighbours) != neighbours or neighbours < 1:
            raise ValueError(f"neighbours must be an integer >= 1, got {neighbours!r}")
        super().__init__(train)
        self.neighbours = int(neighbours)
        own = torch.arange(self.num_items).unsqueeze(1).expand(-1, self.neighbours)
        self.register_buffer("neighbour_ids", own.clone())  # padding: the item itself ...
        self.register_buffer("neighbour_sims", torch.zeros(self.num_items, self.neighbours))  # ... 0

    def fit_closed_form(self, train: Interactions) -> dict:
        if (train.num_users, train.num_items) != (self.num_users, self.num_items):
            raise ValueError(f"train has {train.num_users} users x {train.num_items} items, the "
                             f"model {self.num_users} x {self.num_items}")
        ids, sims = cosine_knn(train.to_scipy("binary"), self.neighbours)
        self.neighbour_ids.copy_(torch.from_numpy(ids))
        self.neighbour_sims.copy_(torch.from_numpy(sims))
        return {"loss": 0.0, "mean_neighbours": float((sims > 0).sum(1).mean()) if len(sims) else 0.0}

    def epoch_runner(self, split, config):
        return ClosedFormEpoch(self, split)

    @torch.no_grad()
    def scorer(self) -> ItemKNNScorer:
        return ItemKNNScorer(self.seen, self.neighbour_ids, self.neighbour_sims)

    def item_vectors(self) -> Tensor:
        raise NotImplementedError("ItemKNN has no item vectors; similar_items uses its stored "
                                  "neighbour similarities")

    @torch.no_grad()
    def similar_items(self, items: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
        """The ``k`` stored neighbours of each of ``items`` with the highest cosine (never the
        item itself; only neighbours of positive similarity, the rest item ``-1``, ``-inf``)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        items = self._ids(items, "items", self.num_items)
        ids, sims = self.neighbour_ids[items], self.neighbour_sims[items]
        scores = torch.full((len(items), self.num_items), -torch.inf, device=sims.device)
        # Zero entries (padding) are the item itself or were never neighbours: left at -inf.
        scores.scatter_(1, ids, torch.where(sims > 0, sims, -torch.inf))
        scores[torch.arange(len(items), device=sims.device), items] = -torch.inf
        return topk_items(scores, k)

    def config(self) -> dict:
        return {"neighbours": self.neighbours}
