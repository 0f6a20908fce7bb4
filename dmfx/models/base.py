"""The interface every recommender of dmfx shares.

A model is an ``nn.Module`` over the internal user and item ids of one data set (see
:class:`dmfx.data.Interactions`). It is built from the training interactions by
:func:`dmfx.models.build_model` (the registry holds each model's defaults) and then offers:

* :meth:`Recommender.fit` -- trains on a :class:`dmfx.data.Split` (early stopping on the
  validation item, checkpoints, resume: :func:`dmfx.train.fit`);
* :meth:`Recommender.score` -- scores of (user, item) pairs;
* :meth:`Recommender.recommend` -- the top-k items of many users at once, the items each user
  interacted with in training left out;
* :meth:`Recommender.recommend_rows` -- the same for users the model never saw, described by
  their rating rows (models whose user side is a function of them: DMF, EINMF with
  ``input="rows"``, ItemKNN; and ItemPop, which needs no user;
  :meth:`Recommender.can_score_rows` tells);
* :meth:`Recommender.similar_items` -- the items closest to given items.

How a model learns is its :meth:`Recommender.epoch_runner`: gradient models use the default (Adam
on sampled pairs, see :mod:`dmfx.train`), eALS runs an alternating least-squares sweep per epoch,
ItemPop and ItemKNN compute their statistics in a single "epoch".
"""
from __future__ import annotations

import numbers
import threading
import weakref
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..data import CSR, Interactions, Split

__all__ = ["Recommender", "Scorer", "VectorScorer", "topk_items", "topk_items_tiled", "row_entries",
           "rating_rows"]


class Scorer(Protocol):
    """Scores of (user, item) pairs from state computed once (e.g. all tower outputs)."""

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        """``[n, c]`` scores of ``users[k]`` against ``items[k, :]``."""

    def all_items(self, users: Tensor) -> Tensor:
        """``[n, num_items]`` scores of each user against every item, in a new tensor (the caller
        may write into it: :meth:`Recommender.recommend` masks seen items in place)."""


class VectorScorer:
    """Scores from one vector per user and per item: dot products, or cosines with
    ``normalize=True`` (a zero vector then scores 0, as the fused loss defines it)."""

    def __init__(self, user_vectors: Tensor, item_vectors: Tensor, normalize: bool = False,
                 item_bias: Optional[Tensor] = None):
        if normalize:
            user_vectors = F.normalize(user_vectors, dim=1)
            item_vectors = F.normalize(item_vectors, dim=1)
        self.users, self.items, self.item_bias = user_vectors, item_vectors, item_bias

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        scores = torch.einsum("nd,ncd->nc", self.users[users], self.items[items])
        return scores if self.item_bias is None else scores + self.item_bias[items]

    def all_items(self, users: Tensor) -> Tensor:
        scores = self.users[users] @ self.items.T
        return scores if self.item_bias is None else scores + self.item_bias

    def item_range(self, users: Tensor, start: int, stop: int) -> Tensor:
        """``[n, stop - start]`` scores of ``users`` against items ``start .. stop - 1``, in a new
        tensor: lets :meth:`Recommender.recommend` score a tile of items at a time."""
        scores = self.users[users] @ self.items[start:stop].T
        return scores if self.item_bias is None else scores + self.item_bias[start:stop]


# Users scored at once by the item-tiled top-k (scorers with ``item_range``): enough rows for
# the block's matmul to reuse each tile of item vectors from cache; the memory budget then
# bounds the tile of items instead of the users.
TILE_USERS = 1024
# Bytes of scores (and their sort keys and copies, about 16 bytes a score) recommend holds at once.
SCORE_BUDGET = 256 << 20


# One lock per model: _eval_scorer switches the model to eval mode and back under it.
_MODE_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_MODE_LOCKS_GUARD = threading.Lock()


def _mode_lock(module: nn.Module) -> threading.RLock:
    with _MODE_LOCKS_GUARD:
        lock = _MODE_LOCKS.get(module)
        if lock is None:
            lock = _MODE_LOCKS[module] = threading.RLock()
        return lock


CANNOT_SCORE_NEW_USERS = (
    "learns a vector per user id, so it cannot score a user it was not trained on; DMF, EINMF "
    "(input rows) and ItemKNN read rating rows, and ItemPop ranks alike for all")


def _positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive integer (a Python or numpy one, not a bool), else
    a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_exclude_columns(exclude: Optional[CSR], num_items: int) -> None:
    """``exclude`` must span the items scored: a matrix of another width (items x users, or
    the items of another model) would leave out the wrong items or none."""
    if exclude is not None and int(exclude.shape[1]) != num_items:
        raise ValueError(f"exclude must have {num_items} columns (one per item), got shape "
                         f"{tuple(exclude.shape)}")


def rating_rows(rows, num_cols: int, *, name: str = "rows", device=None,
                dtype: torch.dtype = torch.float32, transpose: bool = False) -> CSR:
    """``rows`` (any format :func:`dmfx.data.as_csr` reads; its columns with ``transpose``) as a
    checked CSR of ratings over ``num_cols`` columns: finite and >= 0, the domain of the training
    data (the readers refuse a negative rating); a ValueError naming ``name`` otherwise."""
    from ..data.sparse import as_csr

    matrix = as_csr(rows, num_cols=num_cols, name=name, device=device, dtype=dtype,
                    transpose=transpose)
    if matrix.values.numel() and bool((matrix.values < 0).any()):
        raise ValueError(f"{name} must hold ratings >= 0, as the training data does; got "
                         f"{float(matrix.values.min()):g}")
    return matrix


def _best_first(values: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
    """``(values, items)`` of each row reordered by score, best first, equal scores by item id."""
    items, order = items.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values, items.gather(1, order)


def _top_columns(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` (at most the width) best columns of each row of ``scores`` (NaN-free) and
    their scores, best first; equal scores go to the lower column, both in the list and at its
    end, so the top ``k`` is a prefix of the top ``k + 1``."""
    k = min(k, scores.shape[1])
    # One more than asked shows whether the k-th score ties with a column left out (torch.topk
    # keeps an arbitrary one of tied columns); only such rows are looked at again.
    values, columns = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        kth = values[:, k - 1]
        rows = ((values[:, k] == kth) & (kth > -torch.inf)).nonzero().squeeze(1)
        values, columns = values[:, :k], columns[:, :k]
        if len(rows):
            _lowest_tied_columns(scores, values, columns, rows)
    return _best_first(values, columns)


def _lowest_tied_columns(scores: Tensor, values: Tensor, columns: Tensor, rows: Tensor) -> None:
    """In ``rows``, whose ``k``-th score ties with columns left out, give the places of that
    score in ``columns`` to its lowest columns."""
    kth = values[rows, -1:]
    tied_in_top = values[rows] == kth  # the last places of each row
    width, k = scores.shape[1], values.shape[1]
    column = torch.arange(width, device=scores.device,
                          dtype=torch.int32 if width < 2**31 else torch.int64)
    # The k lowest tied columns of each row (a topk, cheaper than a cumsum over the row).
    lowest = torch.where(scores[rows] == kth, column, width).topk(k, dim=1, largest=False).values
    wanted = torch.arange(k, device=scores.device) < tied_in_top.sum(1, keepdim=True)
    fixed = columns[rows]
    fixed[tied_in_top] = lowest[wanted].long()  # both row-major, as many per row
    columns[rows] = fixed


def _merge_top(best: Optional[tuple], values: Tensor, items: Tensor, k: int) -> tuple:
    """The ``k`` best of the running ``best`` ``(values, items)`` and a tile's candidates, equal
    scores by item id."""
    if best is None:
        return values, items
    values, items = _best_first(torch.cat([best[0], values], 1), torch.cat([best[1], items], 1))
    return values[:, :k], items[:, :k]


def topk_items_tiled(scorer, users: Tensor, k: int, num_items: int, tile: int,
                     exclude: Optional[CSR] = None) -> tuple[Tensor, Tensor]:
    """:func:`topk_items` of ``scorer``'s scores without the ``[n, num_items]`` block: items are
    scored ``tile`` at a time (``scorer.item_range``) and a running top-``k`` is kept. Equal
    scores are ordered by item id, lower first, as in :func:`topk_items` without a generator."""
    _check_exclude_columns(exclude, num_items)
    k_eff = min(k, num_items)
    if exclude is not None:
        rows, cols, _ = row_entries(exclude.indptr, exclude.indices, None,
                                    users.to(exclude.indptr.device))
        cols, order = torch.sort(cols.to(users.device))
        rows = rows.to(users.device)[order]
        edges = torch.searchsorted(cols, torch.arange(0, num_items + tile, tile,
                                                      device=cols.device)).tolist()
    best = None
    for t, start in enumerate(range(0, num_items, tile)):
        scores = _nan_lowest(scorer.item_range(users, start, min(start + tile, num_items)).float())
        if exclude is not None and edges[t] < edges[t + 1]:
            part = slice(edges[t], edges[t + 1])
            scores[rows[part], cols[part] - start] = -torch.inf
        values, items = _top_columns(scores, k_eff)
        best = _merge_top(best, values, items + start, k_eff)
    values, top = best
    top = torch.where(torch.isneginf(values), -1, top)
    if k_eff < k:
        top = F.pad(top, (0, k - k_eff), value=-1)
        values = F.pad(values, (0, k - k_eff), value=-torch.inf)
    return top, values


def _nan_lowest(scores: Tensor) -> Tensor:
    # NaN's bits would order it above +inf, topk takes it as the largest and comparisons with it
    # are all false (a NaN held-out item would rank first): a diverged model's NaN must rank last.
    return scores.masked_fill(scores.isnan(), -torch.inf) if scores.is_floating_point() else scores


def _order_keys(scores: Tensor, generator: torch.Generator) -> Tensor:
    """int64 keys that order like ``scores`` (as float32, NaN as ``-inf``), equal scores getting
    distinct keys in a uniformly random order drawn from ``generator``, so ties are broken at
    random, exactly."""
    scores = _nan_lowest(scores.float())
    bits = (scores + 0.0).contiguous().view(torch.int32).long()  # + 0.0: -0.0 -> +0.0
    # IEEE floats order like sign-magnitude integers: flip the magnitude bits of negatives.
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    noise = torch.randint(0, 2**31, scores.shape, generator=generator, dtype=torch.int64)
    return (keys << 31) | noise.to(scores.device)


def topk_items(scores: Tensor, k: int, exclude: Optional[CSR] = None, users: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, *, copy: bool = True
               ) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of each row of ``scores`` (``[n, num_items]``), best first.

    ``exclude`` (a CSR over all users, indexed by ``users``) names items to leave out; items
    scored ``-inf`` or NaN are left out too. Rows with fewer than ``k`` items left are padded
    with item ``-1`` and score ``-inf``. Equal scores are
    ordered by a draw from ``generator`` when given (uniformly at random, reproducibly), else by
    item id, lower first (so the top ``k`` is a prefix of the top ``k + 1``). ``copy=False`` lets it write ``-inf`` into a float32
    contiguous ``scores`` the caller has no further use for (saves a copy of the block).
    """
    scores = scores.float()
    if copy or not scores.is_contiguous():
        scores = scores.clone(memory_format=torch.contiguous_format)
    if generator is None:  # else the keys rank NaN last, and the values are masked below
        scores.masked_fill_(scores.isnan(), -torch.inf)
    if exclude is not None:
        _check_exclude_columns(exclude, scores.shape[1])
        rows, cols, _ = row_entries(exclude.indptr, exclude.indices, None,
                                    users.to(exclude.indptr.device))
        scores[rows.to(scores.device), cols.to(scores.device)] = -torch.inf
    k_eff = min(k, scores.shape[1])
    if generator is None:
        values, top = _top_columns(scores, k_eff)
    else:
        top = torch.topk(_order_keys(scores, generator), k_eff, dim=1).indices
        values = _nan_lowest(scores.gather(1, top))
    top = torch.where(torch.isneginf(values), -1, top)
    if k_eff < k:
        pad = k - k_eff
        top = F.pad(top, (0, pad), value=-1)
        values = F.pad(values, (0, pad), value=-torch.inf)
    return top, values


def row_entries(indptr: Tensor, indices: Tensor, values: Optional[Tensor], rows: Tensor
                ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Every stored entry of the CSR rows ``rows``: (position in ``rows``, column, value)."""
    local_indptr, columns, local_values = ops.batch_entries(indptr, indices, values, rows)
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device),
                                    local_indptr.long().diff())
    return owner, columns.long(), local_values


class Recommender(nn.Module):
    """Base of every dmfx model; see the module docstring.

    Subclasses implement :meth:`scorer` and :meth:`config`, and either :meth:`loss` (gradient
    models, trained by the default :meth:`epoch_runner`) or their own :meth:`epoch_runner`.
    ``item_vectors`` (for :meth:`similar_items`) defaults to what the scorer holds.
    """

    #: The losses a gradient model can be trained with (see :class:`dmfx.train.TrainConfig`).
    losses: tuple[str, ...] = ("nce", "ce")

    def __init__(self, train: Interactions, store_seen: bool = True):
        super().__init__()
        self.num_users, self.num_items = train.num_users, train.num_items
        if store_seen:  # models that hold Y already (DMF) override `seen` instead
            seen = train.csr("binary")
            # The training items of every user, left out by recommend(); not in the state_dict.
            self.register_buffer("seen_indptr", seen.indptr, persistent=False)
            self.register_buffer("seen_indices", seen.indices, persistent=False)

    # -- what a model implements -------------------------------------------------------------

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        """Mean loss of a batch of (user, item, target) triples (pointwise gradient models)."""
        raise NotImplementedError(f"{type(self).__name__} has no pointwise loss")

    def pairwise_loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        """Mean loss of a batch of (user, observed item, sampled item) triples (``losses``
        containing ``"bpr"``)."""
        raise NotImplementedError(f"{type(self).__name__} has no pairwise loss")

    def scorer(self) -> Scorer:
        raise NotImplementedError

    def config(self) -> dict:
        """The registry parameters that rebuild this model (stored in checkpoints)."""
        raise NotImplementedError

    @classmethod
    def can_score_rows(cls, params: dict) -> bool:
        """Whether the model built with registry parameters ``params`` scores users it was not
        trained on (:meth:`scorer_for_rows`)."""
        return cls.scorer_for_rows is not Recommender.scorer_for_rows

    def scorer_for_rows(self, rows) -> Scorer:
        """A scorer of new users described by their rating rows ``rows`` (``[n, num_items]``,
        any format :func:`dmfx.data.as_csr` reads); user ``k`` of the scorer is ``rows[k]``."""
        raise NotImplementedError(f"{type(self).__name__} {CANNOT_SCORE_NEW_USERS}")

    def epoch_runner(self, split: Split, config):
        """What one training epoch does; the default takes Adam steps on :meth:`loss`."""
        from ..train import GradientEpochs

        return GradientEpochs(self, split, config)

    def sparse_grad_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are row-sparse COO tensors (the trainer gives them
        :class:`dmfx.optim.RowSparseAdam`); none by default."""
        return []

    # -- what every model offers ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(iter([*self.parameters(), *self.buffers()])).device

    @property
    def seen(self) -> CSR:
        """The training interactions as a binary CSR (users x items)."""
        return CSR(self.seen_indptr, self.seen_indices,
                   torch.ones_like(self.seen_indices, dtype=torch.float32),
                   (self.num_users, self.num_items))

    def fit(self, split: Split, config=None, **kwargs):
        """Trains on ``split`` with :func:`dmfx.train.fit` (``config`` defaults to this model's
        registry defaults); keeps the best validation epoch. Returns the :class:`TrainState`."""
        from ..train import fit
        from .registry import train_config

        return fit(self, split, config if config is not None else train_config(self.name), **kwargs)

    @property
    def name(self) -> str:
        """The model's registry name."""
        from .registry import name_of

        return name_of(self)

    @torch.no_grad()
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``users[n]`` against ``items[n]`` (``[n]``) or ``items[n, :]`` (``[n, c]``)."""
        users = self._ids(users, "users", self.num_users)
        items = self._ids(items, "items", self.num_items, dims=(1, 2))
        if items.dim() == 1:
            if users.shape != items.shape:
                raise ValueError(f"users and items must have one shape, got {tuple(users.shape)} "
                                 f"and {tuple(items.shape)}")
            return self._eval_scorer().candidates(users, items.unsqueeze(1)).squeeze(1)
        if items.dim() != 2 or items.shape[0] != users.shape[0]:
            raise ValueError(f"items must be [n] or [n, c] with n = len(users) = {users.shape[0]}, "
                             f"got {tuple(items.shape)}")
        return self._eval_scorer().candidates(users, items)

    @torch.no_grad()
    def recommend(self, users: Tensor, k: int = 10, exclude_seen: bool = True, *,
                  exclude=None, generator: Optional[torch.Generator] = None,
                  scorer: Optional[Scorer] = None, batch_size: Optional[int] = None
                  ) -> tuple[Tensor, Tensor]:
        """The ``k`` highest-scoring items of each user, best first.

        What is left out by default is the items each user interacted with *in training*
        (:attr:`seen`); their validation and test items are not, as the model holds only the
        training part of its split. ``dmfx recommend`` leaves those out as well: it passes
        ``exclude=trained.interacted()`` (:meth:`dmfx.experiment.Trained.interacted`), which
        gives the same lists from Python.

        Args:
            users: internal user ids ``[n]`` (a tensor, array or sequence of ints; an empty
                sequence is an empty batch).
            exclude_seen: leave out the items each user interacted with in training.
            exclude: a matrix (users x items: ``[num_users, num_items]``) of items to leave out
                instead (e.g. the training plus the validation items): a
                :class:`dmfx.data.CSR`, a scipy.sparse matrix or a torch sparse tensor. Another
                shape (a transposed matrix, another model's) is a ValueError.
            generator: break ties between equal scores at random from this generator (the
                evaluator does, so a model scoring many items alike gets chance-level metrics).
                Without one, equal scores go to the lower item id (the top ``k`` is a prefix
                of the top ``k + 1``, whatever the tiling).
            scorer: a :meth:`scorer` already computed, to save recomputing it.
            batch_size: users scored at once, a positive integer (memory: about 16 bytes per
                ``batch_size x num_items`` score); default: as many as keep that near 256 MB.

        Returns:
            ``(items, scores)``, each ``[n, k]``; a user with fewer than ``k`` items left gets
            item ``-1`` and score ``-inf`` in the remaining places.

        Thread safety: several threads may call this (and :meth:`score`, :meth:`recommend_rows`,
        :meth:`similar_items`) on one model at once; see :meth:`_eval_scorer`.
        """
        users = self._ids(users, "users", self.num_users)
        if exclude is not None:
            exclude = self._exclude_matrix(exclude)
        elif exclude_seen:
            exclude = self.seen
        return self._top(users, k, exclude, scorer if scorer is not None else self._eval_scorer(),
                         generator, batch_size)

    def _exclude_matrix(self, exclude) -> CSR:
        """``exclude`` of :meth:`recommend` as a CSR of shape ``[num_users, num_items]``."""
        if not isinstance(exclude, CSR):
            from ..data.sparse import as_csr

            exclude = as_csr(exclude, name="exclude", device=self.device)
        shape = tuple(int(n) for n in exclude.shape)
        if shape != (self.num_users, self.num_items):
            raise ValueError(f"exclude must be users x items, shape ({self.num_users}, "
                             f"{self.num_items}), got shape {shape}")
        return exclude

    def _top(self, users: Tensor, k: int, exclude: Optional[CSR], scorer: Scorer,
             generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None
             ) -> tuple[Tensor, Tensor]:
        """:meth:`recommend` for the users of ``scorer`` (not checked against the model's).
        Without a generator, scorers with ``item_range`` are reduced a tile of items at a time
        (:func:`topk_items_tiled`); otherwise each block of users is scored against all items."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        tiled = generator is None and hasattr(scorer, "item_range")
        block = (_positive_int(batch_size, "batch_size") if batch_size is not None
                 else self.users_per_block(scorer=scorer if tiled else None))
        tile = max(k, SCORE_BUDGET // (16 * block))
        items, scores = [], []
        for chunk in users.split(block):
            if tiled:
                top, values = topk_items_tiled(scorer, chunk, k, self.num_items, tile, exclude)
            else:
                top, values = topk_items(scorer.all_items(chunk), k, exclude, chunk, generator,
                                         copy=False)
            items.append(top)
            scores.append(values)
        if not items:
            return (torch.empty(0, k, dtype=torch.long, device=users.device),
                    torch.empty(0, k, device=users.device))
        return torch.cat(items), torch.cat(scores)

    @torch.no_grad()
    def recommend_rows(self, rows, k: int = 10, exclude_rated: bool = True) -> tuple[Tensor, Tensor]:
        """The ``k`` best items for each of ``rows``' users (new users described by their
        ratings, see :meth:`scorer_for_rows`), their rated items left out unless
        ``exclude_rated`` is False. Returns ``(items, scores)`` as :meth:`recommend` does.
        Ratings must be finite and >= 0, as in training data (a ValueError naming ``rows``
        otherwise)."""
        matrix = rating_rows(rows, self.num_items, name="rows", device=self.device)
        users = torch.arange(matrix.shape[0], device=self.device)
        return self._top(users, k, matrix if exclude_rated else None,
                         self.scorer_for_rows(matrix))

    def users_per_block(self, budget_bytes: int = SCORE_BUDGET, scorer: Optional[Scorer] = None) -> int:
        """Users :meth:`recommend` scores at once: as many as fit their scores against every item
        in ``budget_bytes`` (a float32 score, its int64 sort key and a copy: about 16 bytes
        each), or, for a ``scorer`` that scores a tile of items at a time (``item_range``),
        :data:`TILE_USERS` or as many as fit all items if more."""
        dense = max(1, budget_bytes // (16 * max(1, self.num_items)))
        return max(dense, TILE_USERS) if hasattr(scorer, "item_range") else dense

    def item_vectors(self) -> Tensor:
        """``[num_items, d]`` item representations whose cosine is the item-item similarity."""
        scorer = self._eval_scorer()
        if not isinstance(scorer, VectorScorer):
            raise NotImplementedError(f"{type(self).__name__} has no item vectors")
        return scorer.items

    @torch.no_grad()
    def similar_items(self, items: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
        """The ``k`` items most similar to each of ``items`` (cosine of item vectors), the item
        itself left out. Returns ``(items, similarities)``, each ``[n, k]``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        items = self._ids(items, "items", self.num_items)
        vectors = F.normalize(self.item_vectors().float(), dim=1)
        sims = vectors[items] @ vectors.T
        sims[torch.arange(len(items), device=sims.device), items] = -torch.inf
        return topk_items(sims, k)

    # -- helpers -------------------------------------------------------------------------------

    def _eval_scorer(self) -> Scorer:
        """:meth:`scorer` of the model in eval mode (no dropout), without autograd.

        Thread safety: the scorer is computed with every submodule in eval mode, then each
        submodule's ``training`` flag is set back to what it was. That switch and its undoing
        hold a lock of this model, so threads that score, recommend or embed with one model at
        once (in training mode or not) each get eval-mode scores and leave the model's flags as
        they found them. What the lock cannot cover is a thread that trains the model, or calls
        its modules' forward, meanwhile: during the scorer's computation it would see eval
        mode. Serve a copy (or an ``eval()``-ed model that no one trains) in that case."""
        with _mode_lock(self):
            modes = [(module, module.training) for module in self.modules()]
            try:
                if any(training for _, training in modes):
                    self.eval()
                with torch.no_grad():
                    return self.scorer()
            finally:
                for module, training in modes:
                    module.training = training

    def _ids(self, ids, what: str, count: int, dims: tuple = (1,)) -> Tensor:
        if not isinstance(ids, Tensor):
            ids = torch.as_tensor(ids, device=self.device)
            if ids.numel() == 0:  # [] becomes float32 in torch: an empty batch of ids
                ids = ids.long()
        ids = ids.to(self.device)
        if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise TypeError(f"{what} must hold integer ids, got dtype {ids.dtype}")
        if ids.dim() not in dims:
            raise ValueError(f"{what} must be {' or '.join(f'{d}-D' for d in dims)}, got shape "
                             f"{tuple(ids.shape)}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= count):
            raise IndexError(f"{what} must lie in [0, {count}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids
