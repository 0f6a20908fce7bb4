"""Ranking metrics of held-out items under the sampled protocol and under full ranking.

Protocols (``--protocol``)
--------------------------
``sampled:N`` (the DMF paper's, ``sampled:100``)
    Every held-out row (user u, item i) of the split is ranked among the N items the split drew
    for it (items u never interacted with, in any part). Each row is one *query* with one
    relevant item, ranked among N + 1 candidates.
``full``
    Each evaluated user's held-out items are ranked among all items but the masked ones: the
    user's training items and, for the test part, the user's validation items. Each user is
    one query whose relevant set is every held-out item of the user in that part (one under
    leave-one-out, several under a random split); the other held-out items of the same part
    stay candidates. Scores are computed for a block of users at a time
    (``scorer.all_items``), never for all users x items at once.

Ties are broken uniformly at random from a seeded generator, so a model that scores everything
alike gets chance-level metrics, not a perfect or a zero score: under ``sampled`` the held-out
item takes a uniformly random place among the candidates that tie with it
(:func:`ranks_from_scores`); under ``full`` every (user, item) gets a random key that orders
equal scores (the rule of :meth:`dmfx.models.Recommender.recommend`), so the held-out items'
ranks and the top-K lists come from one random order. Under both protocols a NaN score counts
as ``-inf``, the lowest: a diverged model ranks its NaN-scored items last, never first. Scores
are compared as float32 under both protocols (a float64 model's are rounded first). The
top-K lists of the per-user metrics and of coverage are what ``recommend`` shows, which leaves
out items scored ``-inf`` or NaN: a model that scores everything so gets 0 there, not chance.

Metrics
-------
Take a query with relevant set R, n = |R| >= 1, whose relevant items sit at the 0-based ranks
r_1 < r_2 < ... < r_n, a cut-off K and the hits h = #{j : r_j < K}. Then

* ``HR@K`` (hit ratio) = 1 if h >= 1, else 0;
* ``Recall@K`` = h / n;
* ``Precision@K`` = h / K;
* ``NDCG@K`` = sum over hits of 1 / log2(r_j + 2), divided by the ideal
  sum_{t=0}^{min(n, K)-1} 1 / log2(t + 2);
* ``MRR@K`` = 1 / (r_1 + 1) if r_1 < K, else 0 (the first relevant item only);
* ``MAP@K`` = (1 / min(n, K)) * sum over hits of j / (r_j + 1), the precision at each hit
  (average precision, cut at K);

each averaged over the queries: held-out rows under ``sampled``, users under ``full``.

* One held-out item (leave-one-out, and every row under ``sampled``): n = 1 and r its rank, so
  HR@K = Recall@K = [r < K], Precision@K = HR@K / K, NDCG@K = [r < K] / log2(r + 2) and
  MRR@K = MAP@K = [r < K] / (r + 1).
* Several held-out items (random split, ``full``): the formulas per user, so a user with many
  test items weighs as much as a user with one. A user whose every other item is masked ranks
  only their held-out items: r_j = j - 1, every metric but Precision is 1.
* ``Coverage@K`` (``full`` only) = the share of all items that appear in at least one evaluated
  user's top K (masked items never appear; a user with fewer than K candidates has a shorter
  list).

Keys: sampled metrics are ``hr@K``, ``ndcg@K``, ``recall@K``, ``precision@K``, ``mrr@K``,
``map@K``; full-ranking ones carry the prefix ``full_`` (and ``full_coverage@K``). ``user_hr@K`` /
``user_ndcg@K`` are :func:`evaluate_per_user` (the EINMF paper's Eq. 17-18, ``--per-user``).

Per-row ranks (:class:`Ranking`, written by :func:`save_ranks` as ``ranks.npz`` beside a run's
metrics.json) keep what paired tests need: the same split gives two models the same rows in
the same order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._files import atomic_write
from .data import CSR, Interactions, Split
from .models import Recommender
from .models.base import _nan_lowest, _order_keys, row_entries

__all__ = ["PROTOCOLS", "METRICS", "Ranking", "parse_protocol", "ranks_from_scores",
           "rank_sampled", "rank_full", "query_metrics", "metrics_from_ranks", "evaluate",
           "evaluate_per_user", "save_ranks", "load_ranks"]

PROTOCOLS = ("sampled", "full")
METRICS = ("hr", "ndcg", "recall", "precision", "mrr", "map")
PREFIX = {"sampled": "", "full": "full_"}
# Scores (and tie-break keys) held at once by full ranking: users per block = this / items.
BLOCK_ENTRIES = 1 << 22


def parse_protocol(text: str) -> tuple[str, int]:
    """``"sampled:N"`` -> ``("sampled", N)`` (N >= 1 sampled items per held-out item);
    ``"full"`` -> ``("full", 0)``."""
    kind, _, count = str(text).partition(":")
    if kind == "full" and not count:
        return "full", 0
    if kind == "sampled":
        try:
            n = int(count)
        except ValueError:
            n = 0
        if n >= 1:
            return "sampled", n
        raise ValueError(f"expected sampled:N with N >= 1 sampled items, got {text!r}")
    raise ValueError(f"expected sampled:N or full, got {text!r}")


@dataclass
class Ranking:
    """The 0-based rank of every held-out row of one split part under one protocol.

    ``users[n]``, ``items[n]``: the row (internal ids); ``ranks[n]``: its place in the user's
    ranking; ``candidates[n]``: how many items that ranking held (N + 1 under ``sampled``, the
    unmasked items under ``full``). ``top``: under ``full``, the top-K items of each evaluated
    user (best first, ``-1`` past the candidates), for coverage.
    """

    protocol: str
    users: np.ndarray
    items: np.ndarray
    ranks: np.ndarray
    candidates: np.ndarray
    top: Optional[np.ndarray] = None

    @property
    def queries(self) -> np.ndarray:
        """The query of each row: the row itself (sampled) or its user (full)."""
        return np.arange(len(self.ranks)) if self.protocol == "sampled" else self.users

    def metrics(self, ks: Iterable[int], num_items: Optional[int] = None) -> dict:
        """The module's metrics at cut-offs ``ks``, keys prefixed by protocol; full ranking
        adds ``full_coverage@K`` given ``num_items``."""
        prefix = PREFIX[self.protocol]
        out = metrics_from_ranks(self.ranks, ks, prefix, self.queries)
        if self.top is not None and num_items:
            for k in ks:
                shown = self.top[:, :k]
                out[f"{prefix}coverage@{k}"] = len(np.unique(shown[shown >= 0])) / num_items
        return out


def ranks_from_scores(target: Tensor, others: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """0-based rank of ``target[n]`` among ``others[n, :]`` (higher scores rank first); among
    equal scores the target takes a uniformly random place. NaN counts as ``-inf``."""
    target, others = _nan_lowest(target), _nan_lowest(others)
    greater = (others > target.unsqueeze(1)).sum(1)
    equal = (others == target.unsqueeze(1)).sum(1)
    u = torch.rand(target.shape, generator=generator, device="cpu").to(target.device)
    return greater + torch.floor(u * (equal + 1)).long()


def query_metrics(ranks, queries, ks: Iterable[int]) -> tuple[np.ndarray, dict]:
    """Each query's metrics (the module's definitions): ``(query ids, {"hr@K": values, ...})``,
    the values aligned with the sorted distinct ``queries``; the rows of a query are its
    relevant items, ``ranks`` their 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    ids, q = np.unique(np.asarray(queries), return_inverse=True)
    q = q.reshape(-1)
    order = np.lexsort((ranks, q))
    q, r = q[order], ranks[order]
    n = np.bincount(q, minlength=len(ids))
    starts = np.cumsum(n) - n
    j = np.arange(len(r)) - starts[q] + 1  # 1-based place of each relevant item in its query
    first = r[starts] if len(r) else r
    discount = 1 / np.log2(np.arange(int(n.max(initial=1))) + 2)
    out = {}
    for k in ks:
        hit = r < k
        hits = np.bincount(q, weights=hit, minlength=len(ids))
        ideal_count = np.minimum(n, k)
        ideal = np.cumsum(discount)[np.maximum(ideal_count, 1) - 1]
        out[f"hr@{k}"] = (hits > 0).astype(np.float64)
        out[f"ndcg@{k}"] = np.bincount(q, weights=hit / np.log2(r + 2), minlength=len(ids)) / ideal
        out[f"recall@{k}"] = hits / n
        out[f"precision@{k}"] = hits / k
        out[f"mrr@{k}"] = np.where(first < k, 1 / (first + 1), 0.0)
        out[f"map@{k}"] = np.bincount(q, weights=hit * j / (r + 1), minlength=len(ids)) / ideal_count
    return ids, out


def metrics_from_ranks(ranks, ks: Iterable[int], prefix: str = "", queries=None) -> dict:
    """The module's metrics at cut-offs ``ks``, averaged over queries (NaN without any);
    ``queries`` groups the rows (default: every row its own query, as one held-out item)."""
    ranks = np.asarray(ranks)
    queries = np.arange(len(ranks)) if queries is None else queries
    _, values = query_metrics(ranks, queries, ks)
    return {f"{prefix}{key}": float(v.mean()) if len(v) else float("nan")
            for key, v in values.items()}


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def rank_sampled(scorer, users: np.ndarray, items: np.ndarray, negatives: np.ndarray,
                 device="cpu", batch: int = 8192, seed: int = 0) -> Ranking:
    """Rank of ``items[n]`` among ``negatives[n, :]`` for ``users[n]`` (sampled protocol)."""
    generator = torch.Generator().manual_seed(seed)
    ranks = []
    for s in _batches(len(users), batch):
        u = torch.as_tensor(users[s], device=device)
        candidates = torch.cat([torch.as_tensor(items[s], device=device, dtype=torch.int64).unsqueeze(1),
                                torch.as_tensor(negatives[s], device=device, dtype=torch.int64)], 1)
        scores = scorer.candidates(u, candidates).float()  # compared as full ranking compares them
        ranks.append(ranks_from_scores(scores[:, 0], scores[:, 1:], generator).cpu())
    ranks = torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)
    return Ranking("sampled", np.asarray(users), np.asarray(items), ranks,
                   np.full(len(users), negatives.shape[1] + 1))


@torch.no_grad()
def rank_full(scorer, users: np.ndarray, items: np.ndarray, exclude: Optional[CSR],
              num_items: int, k: int = 0, device="cpu", seed: int = 0,
              block_entries: int = BLOCK_ENTRIES, progress: bool = False,
              desc: str = "full ranking") -> Ranking:
    """Rank of every held-out row ``(users[n], items[n])`` among all items but the user's
    ``exclude`` row (a CSR over all users, e.g. the training items), and with ``k`` the top-k
    items of each distinct user. Users are scored ``block_entries // num_items`` at a time; ties
    are ordered by random keys drawn in user order, so blocks of any size give the same result
    on CPU."""
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    ids, inverse = np.unique(users, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # rows grouped by user
    bounds = np.searchsorted(inverse[order], np.arange(len(ids) + 1))
    ranks = np.empty(len(users), dtype=np.int64)
    candidates = np.empty(len(users), dtype=np.int64)
    top = np.full((len(ids), min(k, num_items)), -1, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed)
    width = max(1, block_entries // max(num_items, 1))
    lowest = torch.iinfo(torch.int64).min
    bar = tqdm(total=len(ids), desc=desc, unit="user", disable=not progress, leave=False,
               mininterval=0.5)
    for block in _batches(len(ids), width):
        u = torch.as_tensor(ids[block], device=device)
        scores = scorer.all_items(u)
        keys = _order_keys(scores, generator)
        masked = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
        if exclude is not None:
            rows, cols, _ = row_entries(exclude.indptr, exclude.indices, None,
                                        u.to(exclude.indptr.device))
            masked[rows.to(keys.device), cols.to(keys.device)] = True
        # The held-out item's own key is read before masking: it is ranked even if masked.
        rows_here = order[bounds[block.start]:bounds[block.stop]]
        local = torch.as_tensor(inverse[rows_here] - block.start, device=keys.device)
        target = keys[local, torch.as_tensor(items[rows_here], device=keys.device)]
        keys.masked_fill_(masked, lowest)
        for part in _batches(len(rows_here), width):  # [rows, items] comparisons, bounded
            better = (keys[local[part]] > target[part].unsqueeze(1)).sum(1)
            ranks[rows_here[part]] = better.cpu().numpy()
        candidates[rows_here] = (~masked).sum(1)[local].cpu().numpy()
        if top.shape[1]:
            best = keys.topk(top.shape[1], dim=1).indices
            # As recommend shows them: neither masked items nor items scored -inf or NaN.
            dead = masked.gather(1, best) | torch.isneginf(_nan_lowest(scores.gather(1, best).float()))
            best = torch.where(dead, -1, best)
            top[block] = best.cpu().numpy()
        bar.update(block.stop - block.start)
    bar.close()
    return Ranking("full", users, items, ranks, candidates, top)


@torch.no_grad()
def evaluate_per_user(model: Recommender, users: np.ndarray, items: np.ndarray, exclude,
                      ks: Sequence[int] = (10,), seed: int = 0, scorer=None) -> dict:
    """Per-user top-K over all items against the set of each user's held-out items (rows
    ``(users[n], items[n])``; a user may have many): HR@K is the share of users with at least
    one held-out item in their top K, NDCG@K = DCG@K / the ideal DCG@K of min(K, held-out
    count) hits (EINMF paper, Eq. 17-18, as the README's EINMF section reads them: Eq. 17 as
    printed sums the hits, Eq. 18 divides by an unstated constant). ``exclude``: a CSR of items to leave out of each
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
             protocols: Optional[Sequence[str]] = None, per_user: str | None = None, device=None,
             scorer=None, rankings: Optional[dict] = None, progress: bool = False, *,
             tie_seed: int = 0) -> dict:
    """Metrics of ``model`` on the ``"test"`` or ``"valid"`` part of ``split``.

    ``protocols``: any of ``"sampled"`` (the split's negatives) and ``"full"`` (all items, the
    user's training items masked and, for test, the validation items); default both, or only
    ``"full"`` for a split drawn without negatives. ``per_user`` adds :func:`evaluate_per_user`
    (``user_*@K``), ranking all items but the user's training (and, for test, validation)
    items with ``"unseen"``, or every item with ``"all"``. ``rankings``, a dict, receives the
    :class:`Ranking` of each protocol. ``progress`` shows a bar over the users of the full
    ranking, the long part on large data. ``tie_seed`` seeds the random order of equal scores
    (every protocol; 0, the default, is what training, ``dmfx evaluate`` and the reproduce
    commands use): other seeds measure how much a model that scores many items alike (ItemPop,
    ItemKNN) owes to the tie-break.

    The tower outputs of every user and item are computed once (``model.scorer()``), then
    scored in batches on ``device`` (the model's by default).
    """
    if per_user not in (None, "unseen", "all"):
        raise ValueError(f"per_user must be None, 'unseen' or 'all', got {per_user!r}")
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    negatives = getattr(split, f"{which}_negatives")
    if protocols is None:
        protocols = PROTOCOLS if negatives.shape[1] else ("full",)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"protocols must be among {', '.join(PROTOCOLS)}, got {unknown[0]!r}")
    if "sampled" in protocols and not negatives.shape[1]:
        raise ValueError("the sampled protocol needs sampled items, and this split was drawn "
                         "without (num_negatives=0, e.g. under --protocol full)")
    if device is None:
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    scorer = scorer if scorer is not None else model._eval_scorer()  # eval mode, no grad
    users = getattr(split, f"{which}_users")
    items = getattr(split, f"{which}_items")
    if "full" in protocols or per_user == "unseen":
        seen = split.train
        if which == "test" and len(split.valid_users):
            seen = _with_pairs(seen, split.valid_users, split.valid_items)
        seen = seen.csr("binary", device=device)
    out, done = {}, {}
    if "sampled" in protocols:
        done["sampled"] = rank_sampled(scorer, users, items, negatives, device,
                                       seed=tie_seed)
    if "full" in protocols:
        done["full"] = rank_full(scorer, users, items, seen, model.num_items, max(ks),
                                 device, seed=tie_seed, progress=progress,
                                 desc=f"full ranking ({which})")
    for protocol in PROTOCOLS:
        if protocol in done:
            out.update(done[protocol].metrics(ks, model.num_items))
    if per_user is not None:
        out.update(evaluate_per_user(model, users, items, seen if per_user == "unseen" else None,
                                     ks, seed=tie_seed, scorer=scorer))
    if rankings is not None:
        rankings.update(done)
    return out


def save_ranks(path, rankings: dict, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """Writes ``{(part, protocol): Ranking}`` to a compressed ``.npz``: ``PART_PROTOCOL_users``,
    ``_items`` (internal ids), ``_ranks`` (0-based) and ``_candidates`` per entry, plus the raw
    ids ``user_ids`` / ``item_ids`` (``user_ids[users[n]]`` is row n's raw user id)."""
    arrays = {"user_ids": user_ids, "item_ids": item_ids}
    for (part, protocol), ranking in rankings.items():
        for name in ("users", "items", "ranks", "candidates"):
            arrays[f"{part}_{protocol}_{name}"] = getattr(ranking, name)
    # Never a half-written file beside a finished metrics.json.
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_ranks(path) -> tuple[dict, np.ndarray, np.ndarray]:
    """``({(part, protocol): Ranking}, user_ids, item_ids)`` of a :func:`save_ranks` file
    (without the top-K lists)."""
    with np.load(path) as saved:
        found = {tuple(key.split("_")[:2]) for key in saved.files if key.count("_") == 2}
        rankings = {(part, protocol): Ranking(protocol, *(saved[f"{part}_{protocol}_{name}"]
                                                          for name in ("users", "items", "ranks",
                                                                       "candidates")))
                    for part, protocol in sorted(found)}
        return rankings, saved["user_ids"], saved["item_ids"]


def _with_pairs(train, users: np.ndarray, items: np.ndarray):
    """``train`` plus extra (user, item) pairs, as interactions with the same id maps."""
    return Interactions(
        train.user_ids, train.item_ids,
        np.concatenate([train.users, users]), np.concatenate([train.items, items]),
        np.concatenate([train.ratings, np.ones(len(users), np.float32)]),
        None,
    )
