"""EINMF: neural matrix factorization from explicit and implicit feedback (Computational
Intelligence and Neuroscience, 2022).

Every user and item has an explicit and an implicit latent vector, added: P_u = p_u^E + p_u^I,
Q_i = q_i^E + q_i^I. A GMF branch (P_u * Q_i) and an MLP branch over [P_u ; Q_i] (Linear + ReLU
+ dropout) are concatenated into a prediction layer whose sigmoid is the score (Eq. 9-11). The
loss (Eq. 14-16) is eta * BCE(y, ir) + (1 - eta) * BCE(y, r / max R): the implicit target is 1
for an observed pair, the explicit one its normalised rating, both 0 for a sampled negative (a
reading: Eq. 14's L_E may cover rated pairs only; the README says what that would change).

The paper calls the one-hot rows of R (Eq. 8) and IR (Eq. 7) "the input" of its embedding layer.
Read as DMF reads its input, ``input="rows"`` (the default), the latent vectors are products of
the rating rows with two tables: p_u^E = R_u* W_E and p_u^I = IR_u* W_I, so a user is described
by what they rated and how. One sparse-row product serves both: each row's entries stand twice,
once at column j with the rating (against W_E) and once at column N + j with 1 (against W_I).
``input="ids"`` is the plain embedding reading, p_u^E and p_u^I looked up by user id; then
P_u = p_u^E + p_u^I is just one embedding with two halves that always move together, the data
never enters the vectors and the "explicit" and "implicit" names describe only the loss.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..data import CSR, Interactions
from .base import Recommender, VectorScorer, rating_rows
from .ncf import MLPScorer, SumScorer, linear, positive

__all__ = ["EINMF", "explicit_implicit_rows", "with_implicit"]

INIT_STD = 0.01  # the paper's N(0, 0.01) initialisation
INPUTS = ("rows", "ids")


def explicit_implicit_rows(train: Interactions, transpose: bool = False) -> CSR:
    """The rows of [R | IR]: each stored entry (j, r) of a row of R becomes (j, r) and (N + j, 1),
    N the number of columns; ``transpose`` for the items' rows."""
    return with_implicit(train.csr("rating", transpose=transpose))


def with_implicit(ratings: CSR) -> CSR:
    """[R | IR] of the rating rows ``ratings``, as :func:`explicit_implicit_rows`."""
    num_rows, n = ratings.shape
    owners = torch.repeat_interleave(torch.arange(num_rows, device=ratings.indptr.device),
                                     ratings.indptr.long().diff())
    # Stable by row: a row's explicit entries (columns < N) stay ahead of its implicit ones.
    order = torch.sort(torch.cat([owners, owners]), stable=True).indices
    indices = torch.cat([ratings.indices, ratings.indices + n])[order]
    values = torch.cat([ratings.values, torch.ones_like(ratings.values)])[order]
    return CSR(ratings.indptr * 2, indices, values, (num_rows, 2 * n))


class LatentVectors(nn.Module):
    """P_u = p_u^E + p_u^I for the rows of one side (users, or items with ``transpose``)."""

    def __init__(self, train: Interactions, factors: int, input: str, transpose: bool = False):
        super().__init__()
        self.input = input
        if input == "rows":
            matrix = explicit_implicit_rows(train, transpose)
            self.register_buffer("indptr", matrix.indptr, persistent=False)
            self.register_buffer("indices", matrix.indices, persistent=False)
            self.register_buffer("values", matrix.values, persistent=False)
            rows = matrix.shape[1]  # [W_E ; W_I], one row per column of [R | IR]
        else:
            self.count = train.num_items if transpose else train.num_users
            rows = 2 * self.count  # [E ; I], one row per id each
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(rows, factors), 0.0, INIT_STD))

    def embed(self, rows: CSR) -> Tensor:
        """P of rows of [R | IR] not in the training data (:func:`with_implicit`)."""
        ids = torch.arange(rows.shape[0], device=self.weight.device)
        return ops.sparse_rows_matmul(rows.indptr, rows.indices, rows.values, ids, self.weight)

    def forward(self, ids: Tensor) -> Tensor:
        if self.input == "rows":
            # On CUDA, skip the per-call validation sync: the data layer built this CSR.
            return ops.sparse_rows_matmul(self.indptr, self.indices, self.values, ids, self.weight,
                                          validate=not self.weight.is_cuda)
        return self.weight[ids] + self.weight[ids + self.count]


class EINMF(Recommender):
    """Explicit-implicit neural matrix factorization.

    Args:
        train: the training interactions (ratings; their maximum normalises the explicit target).
        factors: size of the latent vectors P_u and Q_i (the paper's embedding size, 64).
        layers: widths of the MLP branch's layers after [P_u ; Q_i] (2 * factors wide).
        dropout: dropout after each ReLU of the MLP branch (paper: 0.2).
        eta: weight of the implicit loss, 1 - eta that of the explicit one (paper: 0.6).
        input: ``"rows"`` (the rating rows times tables, default) or ``"ids"`` (embeddings); see
            the module docstring.

    The MLP's hidden layers start Glorot-uniform, as in the NCF models (``dmfx.models.ncf``
    explains why); the latent tables and the prediction layer N(0, 0.01), biases 0.
    """

    losses = ("hybrid",)

    def __init__(self, train: Interactions, factors: int = 64, layers: Sequence[int] = (64, 32, 16),
                 dropout: float = 0.2, eta: float = 0.6, input: str = "rows"):
        factors = positive(factors, "factors")
        widths = [2 * factors, *(positive(w, "layers entries") for w in layers)]
        if len(widths) < 2:
            raise ValueError("layers must hold at least one width (the MLP branch)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        if input not in INPUTS:
            raise ValueError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
        super().__init__(train)
        self.factors, self.widths, self.eta = factors, widths, float(eta)
        self.user_latent = LatentVectors(train, factors, input)
        self.item_latent = LatentVectors(train, factors, input, transpose=True)
        self.mlp = nn.ModuleList(linear(a, b, hidden=True) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout)
        self.predict = linear(factors + widths[-1], 1)
        self._config = dict(factors=factors, layers=widths[1:], dropout=float(dropout),
                            eta=self.eta, input=input)

    def config(self) -> dict:
        return dict(self._config)

    def halves(self, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """The user's and the item's share of the MLP's first pre-activation W [p ; q] + b."""
        first, k = self.mlp[0], self.factors
        return F.linear(p, first.weight[:, :k], first.bias), F.linear(q, first.weight[:, k:])

    def head(self, user_half: Tensor, item_half: Tensor, dropout: bool = True) -> Tensor:
        """The MLP branch's output from :meth:`halves` (broadcast against each other); dropout
        (in training mode) unless ``dropout=False``."""
        drop = self.dropout if dropout else nn.Identity()
        x = drop(torch.relu(user_half + item_half))
        for layer in self.mlp[1:]:
            x = drop(torch.relu(layer(x)))
        return x

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """The logit of each (users[n], items[n]) pair ([n]), with gradients."""
        unique_users, user_slot = torch.unique(users, return_inverse=True)
        unique_items, item_slot = torch.unique(items, return_inverse=True)
        p = self.user_latent(unique_users).index_select(0, user_slot)
        q = self.item_latent(unique_items).index_select(0, item_slot)
        features = torch.cat([p * q, self.head(*self.halves(p, q))], 1)
        return self.predict(features).squeeze(-1)

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        """``target[:, 0]``: implicit (1 observed, 0 sampled), ``target[:, 1]``: r / max R."""
        return ops.hybrid_bce_loss(self.logits(users, items), target[:, 0], target[:, 1],
                                   self.eta, validate=not target.is_cuda)

    def _all(self, vectors: LatentVectors, count: int, batch: int = 4096) -> Tensor:
        ids = torch.arange(count, device=self.device)
        return torch.cat([vectors(chunk) for chunk in ids.split(batch)])

    @torch.no_grad()
    def item_vectors(self) -> Tensor:
        """Q_i of every item."""
        return self._all(self.item_latent, self.num_items)

    @classmethod
    def can_score_rows(cls, params: dict) -> bool:
        return params.get("input", "rows") == "rows"

    @torch.no_grad()
    def scorer(self) -> SumScorer:
        """Logits (the sigmoid keeps their order) from every P_u and Q_i, computed once."""
        return self._scorer(self._all(self.user_latent, self.num_users), self.item_vectors())

    @torch.no_grad()
    def scorer_for_rows(self, rows) -> SumScorer:
        """New users' P_u from their rating rows (``input="rows"`` only)."""
        if not self.can_score_rows(self._config):
            raise ValueError("EINMF with input='ids' learns a vector per user id, so it cannot "
                             "score a user it was not trained on; input='rows' reads rating rows")
        matrix = rating_rows(rows, self.num_items, name="rows", device=self.device,
                             dtype=self.predict.weight.dtype)
        return self._scorer(self.user_latent.embed(with_implicit(matrix)), self.item_vectors())

    def _scorer(self, p: Tensor, q: Tensor) -> SumScorer:
        h, k = self.predict.weight[0], self.factors
        # No dropout: the scorer runs the head later, in whatever mode the model is by then
        # (recommend() on a model left in training mode).
        head = partial(self.head, dropout=False)
        return SumScorer(VectorScorer(p * h[:k], q),
                         MLPScorer(head, *self.halves(p, q), max(self.widths), h[k:],
                                   self.predict.bias[0]))
