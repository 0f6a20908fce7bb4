"""Ranking metrics under the paper's sampled protocol and under full ranking.

Sampled (the DMF paper): each evaluated user's held-out item is ranked among 100 items the
user never interacted with; HR@K is the share of users whose item lands in the top K, NDCG@K
adds 1 / log2(rank + 2) for those. Full ranking ranks the held-out item among all items, with
the user's training items (and, for the test item, the validation item) masked out; with one
held-out item per user Recall@K equals HR@K, and is reported under its own name for comparison
with papers that use it.

Ties are broken uniformly at random (seeded), so a model that scores everything alike gets the
chance-level metrics instead of a perfect or a zero score.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import Interactions, Split
from .models import Recommender

__all__ = ["ranks_from_scores", "metrics_from_ranks", "evaluate_sampled", "evaluate_full",
           "evaluate_per_user", "evaluate"]


def ranks_from_scores(target: Tensor, others: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """0-based rank of ``target[n]`` among ``others[n, :]`` (higher scores rank first)."""
    greater = (others > target.unsqueeze(1)).sum(1)
    equal = (others == target.unsqueeze(1)).sum(1)
    u = torch.rand(target.shape, generator=generator, device="cpu").to(target.device)
    return greater + torch.floor(u * (equal + 1)).long()


def metrics_from_ranks(ranks: Tensor, ks: Iterable[int], prefix: str = "") -> dict:
    ranks = ranks.double()
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"{prefix}hr@{k}"] = hit.double().mean().item()
        out[f"{prefix}ndcg@{k}"] = torch.where(hit, 1 / torch.log2(ranks + 2), 0.0).mean().item()
    return out


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def evaluate_sampled(scorer, users: np.ndarray, items: np.ndarray, negatives: np.ndarray,
                     ks: Sequence[int] = (10,), device="cpu", batch: int = 8192, seed: int = 0) -> dict:
    """HR@K / NDCG@K of ``items[n]`` ranked among ``negatives[n, :]`` for ``users[n]``."""
    generator = torch.Generator().manual_seed(seed)
    ranks = []
    for s in _batches(len(users), batch):
        u = torch.as_tensor(users[s], device=device)
        candidates = torch.cat([torch.as_tensor(items[s], device=device).unsqueeze(1),
                                torch.as_tensor(negatives[s], device=device)], 1)
        scores = scorer.candidates(u, candidates)
        ranks.append(ranks_from_scores(scores[:, 0], scores[:, 1:], generator).cpu())
    return metrics_from_ranks(torch.cat(ranks) if ranks else torch.zeros(0), ks)


@torch.no_grad()
def evaluate_full(model: Recommender, users: np.ndarray, items: np.ndarray, exclude,
                  ks: Sequence[int] = (10,), seed: int = 0, scorer=None) -> dict:
    """HR@K / NDCG@K / Recall@K of ``items[n]`` among all items for ``users[n]``: the top-K
    lists of :meth:`Recommender.recommend` with ``exclude`` (a CSR of the items to leave out per
    user, e.g. the training items) and ties broken at random."""
    k = max(ks)
    generator = torch.Generator().manual_seed(seed)
    top, _ = model.recommend(torch.as_tensor(users), k, exclude=exclude, generator=generator,
                             scorer=scorer)
    hits = top.cpu() == torch.as_tensor(items).unsqueeze(1)
    # 0-based position in the list; k (beyond every cut-off) where the item is not in it
    ranks = torch.where(hits.any(1), hits.float().argmax(1), k)
    out = metrics_from_ranks(ranks, ks, prefix="full_")
    for k in ks:
        out[f"full_recall@{k}"] = out[f"full_hr@{k}"]
    return out


@torch.no_grad()
def evaluate_per_user(model: Recommender, users: np.ndarray, items: np.ndarray, exclude,
                      ks: Sequence[int] = (10,), seed: int = 0, scorer=None) -> dict:
    """Per-user top-K over all items against the set of each user's held-out items (rows
    ``(users[n], items[n])``; a user may have many): HR@K is the share of users with at least
    one held-out item in their top K, NDCG@K = DCG@K / the ideal DCG@K of min(K, held-out
    count) hits (EINMF paper, Eq. 17-18). ``exclude``: a CSR of items to leave out of each
    user's list (None: rank every item, the user's training items included)."""
    k = max(ks)
    ids, inverse = np.unique(users, return_inverse=True)
    if not len(ids):
        return {f"user_{m}@{c}": float("nan") for c in ks for m in ("hr", "ndcg")}
    generator = torch.Generator().manual_seed(seed)
    top, _ = model.recommend(torch.as_tensor(ids), k, exclude_seen=False, exclude=exclude,
                             generator=generator, scorer=scorer)
    top = top.cpu().numpy()
    rows = np.arange(len(ids))[:, None]
    keys = np.unique(inverse * model.num_items + np.asarray(items))  # (row, item) of each held-out
    hits = torch.from_numpy(np.isin(rows * model.num_items + top, keys) & (top >= 0))
    counts = torch.from_numpy(np.bincount(keys // model.num_items, minlength=len(ids)))
    discount = 1 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
    out = {}
    for c in ks:
        dcg = (hits[:, :c].double() * discount[:c]).sum(1)
        ideal = torch.cumsum(discount[:c], 0)[counts.clamp(max=c) - 1]
        out[f"user_hr@{c}"] = hits[:, :c].any(1).double().mean().item()
        out[f"user_ndcg@{c}"] = (dcg / ideal).mean().item()
    return out


@torch.no_grad()
def evaluate(model: Recommender, split: Split, which: str = "test", ks: Sequence[int] = (10,),
             full_ranking: bool = False, per_user: str | None = None, device=None,
             scorer=None) -> dict:
    """Metrics of ``model`` on the ``"test"`` or ``"valid"`` part of ``split``.

    Always the sampled protocol (each held-out item among its sampled negatives: ``hr@K``,
    ``ndcg@K``); ``full_ranking`` adds each held-out item ranked among all items
    (``full_*@K``); ``per_user`` adds :func:`evaluate_per_user` (``user_*@K``), ranking all items
    but the user's training (and, for test, validation) items with ``"unseen"``, or every item
    with ``"all"``.

    The tower outputs of every user and item are computed once (``model.scorer()``), then
    candidates are scored in batches on ``device`` (the model's by default).
    """
    if per_user not in (None, "unseen", "all"):
        raise ValueError(f"per_user must be None, 'unseen' or 'all', got {per_user!r}")
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    was_training = model.training
    model.eval()
    try:
        if device is None:
            device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
        scorer = scorer if scorer is not None else model.scorer()
        users = getattr(split, f"{which}_users")
        items = getattr(split, f"{which}_items")
        out = evaluate_sampled(scorer, users, items, getattr(split, f"{which}_negatives"), ks, device)
        if full_ranking or per_user == "unseen":
            seen = split.train
            if which == "test" and len(split.valid_users):
                seen = _with_pairs(seen, split.valid_users, split.valid_items)
            seen = seen.csr("binary", device=device)
        if full_ranking:
            out.update(evaluate_full(model, users, items, seen, ks, scorer=scorer))
        if per_user is not None:
            out.update(evaluate_per_user(model, users, items, seen if per_user == "unseen" else None,
                                         ks, scorer=scorer))
        return out
    finally:
        model.train(was_training)


def _with_pairs(train, users: np.ndarray, items: np.ndarray):
    """``train`` plus extra (user, item) pairs, as interactions with the same id maps."""
    return Interactions(
        train.user_ids, train.item_ids,
        np.concatenate([train.users, users]), np.concatenate([train.items, items]),
        np.concatenate([train.ratings, np.ones(len(users), np.float32)]),
        None,
    )
