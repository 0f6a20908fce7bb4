"""DMF (Xue et al., IJCAI 2017) and its LFM variant on dmfx's ops.

A tower's first layer is linear without bias (a sparse row of Y times W_1, or a free embedding
for LFM); the later layers are Linear, with ReLU where the paper's Eq. 5-6 puts it (after every
layer but the first) unless ``activation`` says otherwise. A pair scores cos(p_u, q_i) (Eq. 8);
training uses the fused cosine + mu-clamp + nce loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import check_mu
from ..data import CSR, Interactions
from .base import Recommender, VectorScorer, rating_rows

INIT_STD = 0.01  # the paper's N(0, 0.01) initialisation


def _normal_(tensor: Tensor) -> Tensor:
    return nn.init.normal_(tensor, 0.0, INIT_STD)


ACTIVATIONS = ("eq6", "hidden", "all", "none")
SCORES = ("cosine", "dot")


class MLP(nn.Module):
    """The Linear layers after a tower's first one, with ReLU where ``activation`` puts it:
    ``"eq6"`` (the paper's Eq. 5-6) after every layer but the first, ``"hidden"`` after every
    layer but the output (the first included), ``"all"`` after every layer, ``"none"`` nowhere."""

    def __init__(self, widths: Sequence[int], activation: str = "eq6"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.layers:
            _normal_(layer.weight)
            _normal_(layer.bias)
        depth = len(widths)  # the first layer (not here) and the Linear layers
        self.relu_after = [{"eq6": k > 0, "hidden": k < depth - 1, "all": True, "none": False}[activation]
                           for k in range(depth)]

    def forward(self, x: Tensor) -> Tensor:
        """``x``: the first layer's output."""
        if self.relu_after[0]:
            x = torch.relu(x)
        for layer, relu in zip(self.layers, self.relu_after[1:]):
            x = layer(x)
            if relu:
                x = torch.relu(x)
        return x


class SparseRowTower(nn.Module):
    """DMF tower: the whole rating row through W_1 (only its stored entries are read)."""

    def __init__(self, matrix: CSR, widths: Sequence[int], binary: bool, sparse_grad: bool = False,
                 activation: str = "eq6"):
        super().__init__()
        self.binary, self.sparse_grad = binary, sparse_grad
        self.register_buffer("indptr", matrix.indptr, persistent=False)
        self.register_buffer("indices", matrix.indices, persistent=False)
        self.register_buffer("values", matrix.values, persistent=False)
        self.first = nn.Parameter(_normal_(torch.empty(matrix.shape[1], widths[0])))
        self.mlp = MLP(widths, activation)

    def forward(self, rows: Tensor) -> Tensor:
        values = None if self.binary else self.values
        # On CUDA, skip the per-call validation sync: the data layer built this CSR.
        h = ops.sparse_rows_matmul(self.indptr, self.indices, values, rows, self.first,
                                   validate=not self.first.is_cuda, sparse_grad=self.sparse_grad)
        return self.mlp(h)

    def embed(self, matrix: CSR) -> Tensor:
        """The tower's output for the rows of another matrix over the same columns (new users
        or items described by their ratings); validated, as the rows come from outside."""
        rows = torch.arange(matrix.shape[0], device=self.first.device)
        h = ops.sparse_rows_matmul(matrix.indptr, matrix.indices,
                                   None if self.binary else matrix.values, rows, self.first)
        return self.mlp(h)


class EmbeddingTower(nn.Module):
    """LFM tower: a free embedding per user / item instead of its rating row."""

    def __init__(self, count: int, widths: Sequence[int]):
        super().__init__()
        self.first = nn.Parameter(_normal_(torch.empty(count, widths[0])))
        self.mlp = MLP(widths)

    def forward(self, rows: Tensor) -> Tensor:
        return self.mlp(self.first[rows])


class TwoTower(Recommender):
    """Shared training and scoring of DMF and LFM: distinct ids run through a tower once."""

    user_tower: nn.Module
    item_tower: nn.Module

    def __init__(self, train: Interactions, mu: float, score: str = "cosine",
                 store_seen: bool = True, eval_batch: int = 4096):
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        check_mu(type(self).__name__, mu)  # when built, not at the first step's loss
        super().__init__(train, store_seen)
        self.mu, self.score_kind, self.eval_batch = mu, score, eval_batch

    def pair_vectors(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        if users.is_cuda:
            # torch.unique waits for the GPU to learn its output size; running the towers on the
            # repeated ids costs the GPU less than that host sync costs the step.
            return self.user_tower(users), self.item_tower(items)
        unique_users, user_slot = torch.unique(users, return_inverse=True)
        unique_items, item_slot = torch.unique(items, return_inverse=True)
        # index_select, not [slot]: its backward is an index_add, [slot]'s sorts the ids first.
        return (self.user_tower(unique_users).index_select(0, user_slot),
                self.item_tower(unique_items).index_select(0, item_slot))

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        p, q = self.pair_vectors(users, items)
        if self.score_kind == "dot":
            return F.binary_cross_entropy_with_logits((p * q).sum(1), target)
        return ops.cosine_nce_loss(p, q, target, self.mu, validate=not p.is_cuda)

    def _all(self, tower: nn.Module, count: int) -> Tensor:
        ids = torch.arange(count, device=self.device)
        return torch.cat([tower(chunk) for chunk in ids.split(self.eval_batch)])

    @torch.no_grad()
    def scorer(self) -> VectorScorer:
        """Every user's and item's tower output, computed once (normalised for the cosine)."""
        return VectorScorer(self._all(self.user_tower, self.num_users),
                            self._all(self.item_tower, self.num_items),
                            normalize=self.score_kind == "cosine")


class DMF(TwoTower):
    """Deep Matrix Factorization.

    Args:
        train: the training interactions; the towers read Y built from them (users x items for
            the user tower, its transpose for the item tower).
        user_layers, item_layers: tower widths; the last entries are the latent size and must
            match. Depth = number of layers (the first is a sparse row times W_1, without bias;
            the rest Linear).
        input: ``"rating"``: Y_ij = the rating (Eq. 2); ``"binary"``: 1 for rated pairs (Eq. 1).
        activation: where the ReLUs sit (see :class:`MLP`); ``"eq6"`` is the paper's.
        score: ``"cosine"`` (Eq. 8, clamped at ``mu``, Eq. 13, trained with the fused cosine +
            clamp + cross-entropy op) or ``"dot"`` (the dot product as a logit, binary
            cross-entropy on the same targets: RecBole's variant).
        mu: the clamp of the predicted cosine (Eq. 13).
        sparse_grad: row-sparse gradients for the two first-layer tables (the trainer then
            updates them with :class:`dmfx.optim.RowSparseAdam`, which moves only the rows a batch
            touches): a step costs the batch's nnz instead of the table sizes. For tables much
            larger than a batch touches (Amazon scale); lazy Adam is not the same optimiser as
            dense Adam (untouched rows keep their moments), so results differ slightly.
    """

    def __init__(self, train: Interactions, user_layers: Sequence[int] = (256, 64),
                 item_layers: Sequence[int] = (256, 64), input: str = "rating",
                 activation: str = "eq6", score: str = "cosine", mu: float = 1e-6,
                 sparse_grad: bool = False):
        if user_layers[-1] != item_layers[-1]:
            raise ValueError(f"the towers must end at one latent size, got user_layers "
                             f"{list(user_layers)} and item_layers {list(item_layers)}")
        if input not in ("rating", "binary"):
            raise ValueError(f"input must be 'rating' or 'binary', got {input!r}")
        super().__init__(train, mu, score, store_seen=False)
        binary = input == "binary"
        self.user_tower = self._tower("user", train, input, user_layers, binary, sparse_grad,
                                      activation)
        self.item_tower = self._tower("item", train, input, item_layers, binary, sparse_grad,
                                      activation)
        self._config = dict(user_layers=list(user_layers), item_layers=list(item_layers),
                            input=input, activation=activation, score=score, mu=mu,
                            sparse_grad=sparse_grad)

    def _tower(self, side: str, train: Interactions, input: str, widths: Sequence[int],
               binary: bool, sparse_grad: bool, activation: str) -> nn.Module:
        """The ``side`` ("user" or "item") tower over the rows of Y (Y^T for items); the sharded
        DMF of :mod:`dmfx.distributed` builds its towers on a share of the first-layer rows."""
        return SparseRowTower(train.csr(input, transpose=side == "item"), widths, binary,
                              sparse_grad, activation)

    @property
    def seen(self) -> CSR:
        tower = self.user_tower  # Y's pattern is the training items of each user
        return CSR(tower.indptr, tower.indices, torch.ones_like(tower.values),
                   (self.num_users, self.num_items))

    def config(self) -> dict:
        return dict(self._config)

    @torch.no_grad()
    def embed_users(self, rows) -> Tensor:
        """User-tower outputs of users described by their rating rows: ``rows`` is
        ``[n, num_items]`` (a :class:`dmfx.data.CSR`, scipy.sparse or torch sparse matrix; item
        ids are the model's internal ones). A trained user's own training row gives back its
        stored vector, so users the model never saw are scored without retraining."""
        return self.user_tower.embed(rating_rows(rows, self.num_items, name="rows",
                                                 device=self.device,
                                                 dtype=self.user_tower.first.dtype))

    @torch.no_grad()
    def embed_items(self, columns) -> Tensor:
        """Item-tower outputs of items described by their columns of Y: ``columns`` is
        ``[num_users, n]``, the ratings the model's users gave each new item."""
        return self.item_tower.embed(rating_rows(columns, self.num_users, transpose=True,
                                                 name="columns", device=self.device,
                                                 dtype=self.item_tower.first.dtype))

    @torch.no_grad()
    def scorer_for_rows(self, rows) -> VectorScorer:
        items = self._eval_scorer().items
        return VectorScorer(self.embed_users(rows), items, normalize=self.score_kind == "cosine")

    def sparse_grad_parameters(self) -> list[nn.Parameter]:
        if not self._config["sparse_grad"]:
            return []
        return [self.user_tower.first, self.item_tower.first]


class LFM(TwoTower):
    """The paper's LFM-nce: DMF's towers and loss on free embeddings instead of rating rows."""

    def __init__(self, train: Interactions, user_layers: Sequence[int] = (64,),
                 item_layers: Sequence[int] = (64,), mu: float = 1e-6):
        if user_layers[-1] != item_layers[-1]:
            raise ValueError("the towers must end at one latent size")
        super().__init__(train, mu)
        self.user_tower = EmbeddingTower(train.num_users, user_layers)
        self.item_tower = EmbeddingTower(train.num_items, item_layers)
        self._config = dict(user_layers=list(user_layers), item_layers=list(item_layers), mu=mu)

    def config(self) -> dict:
        return dict(self._config)
