"""Neural Collaborative Filtering (He et al., WWW 2017): GMF, MLP and their fusion NeuMF.

All three predict a logit per (user, item) pair and train pointwise with binary cross-entropy
(``ce``: target 1 for observed pairs, 0 for sampled ones; ``nce``: rating / max rating). As in
the paper, embeddings and prediction layers start N(0, 0.01), biases 0; the hidden MLP layers
start Glorot-uniform as in the reference code (Keras' default there): with N(0, 0.01) a 4-layer
ReLU stack passes on a ~1e-7 signal whose gradients sit near Adam's eps, and the MLP stays at
the base-rate prediction for hundreds of steps. The MLP's embeddings are layers[0] // 2 wide
each, and NeuMF has its own embeddings for each part. NeuMF-p starts from trained GMF and MLP
checkpoints with the prediction layer [alpha * h_gmf ; (1 - alpha) * h_mlp] (paper Eq. 12).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, result_weights
from ..data import Interactions
from .base import Recommender, VectorScorer

__all__ = ["GMF", "MLP", "NeuMF"]

INIT_STD = 0.01  # the NCF paper's N(0, 0.01) initialisation
BLOCK = 1 << 22  # elements of the widest MLP activation computed at once when scoring


def positive(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def embedding(count: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(count, dim)
    nn.init.normal_(table.weight, 0.0, INIT_STD)
    return table


def linear(fan_in: int, fan_out: int, hidden: bool = False) -> nn.Linear:
    """A prediction layer N(0, 0.01); a hidden MLP layer Glorot-uniform (see the module doc)."""
    layer = nn.Linear(fan_in, fan_out)
    if hidden:
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.normal_(layer.weight, 0.0, INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


class GMFPart(nn.Module):
    """GMF's latent vector p_u * q_i."""

    def __init__(self, num_users: int, num_items: int, factors: int):
        super().__init__()
        factors = positive(factors, "factors")
        self.user, self.item = embedding(num_users, factors), embedding(num_items, factors)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.user(users) * self.item(items)

    def scorer(self, weight: Tensor, bias: Tensor | None = None) -> VectorScorer:
        """Scores weight . (p_u * q_i) (+ bias) as dot products of (p_u * weight) and q_i."""
        items = self.item.weight
        item_bias = None if bias is None else bias.expand(items.shape[0])
        return VectorScorer(self.user.weight * weight, items, item_bias=item_bias)


class MLPPart(nn.Module):
    """NCF's MLP: [p_u ; q_i] (layers[0] // 2 each) through Linear + ReLU layers
    layers[0] -> layers[1] -> ... -> layers[-1] (none for a single width: the output is [p ; q])."""

    def __init__(self, num_users: int, num_items: int, layers: Sequence[int]):
        super().__init__()
        widths = [positive(w, "layers entries") for w in layers]
        if not widths:
            raise ValueError("layers must hold at least one width")
        if widths[0] % 2:
            raise ValueError(f"layers[0] must be even (the user and item embeddings are "
                             f"layers[0] // 2 each), got {widths[0]}")
        self.widths = widths
        self.user, self.item = embedding(num_users, widths[0] // 2), embedding(num_items, widths[0] // 2)
        self.layers = nn.ModuleList(linear(a, b, hidden=True) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        x = torch.cat([self.user(users), self.item(items)], -1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

    def halves(self) -> tuple[Tensor, Tensor]:
        """Every user's and every item's share of the first layer's pre-activation, whose sum
        for a pair is W [p_u ; q_i] + b = (W_u p_u + b) + W_i q_i ([p ; q] with no layers)."""
        p, q = self.user.weight, self.item.weight
        if not self.layers:
            return F.pad(p, (0, q.shape[1])), F.pad(q, (p.shape[1], 0))
        first, d = self.layers[0], p.shape[1]
        return F.linear(p, first.weight[:, :d], first.bias), F.linear(q, first.weight[:, d:])

    def head(self, user_half: Tensor, item_half: Tensor) -> Tensor:
        """The MLP output from :meth:`halves` rows (broadcast against each other)."""
        x = user_half + item_half
        if self.layers:
            x = torch.relu(x)
            for layer in self.layers[1:]:
                x = torch.relu(layer(x))
        return x

    def scorer(self, weight: Tensor, bias: Tensor | None = None) -> "MLPScorer":
        return MLPScorer(self.head, *self.halves(), max(self.widths), weight, bias)


class MLPScorer:
    """Scores weight . head(user_half + item_half) (+ bias) of an MLP over [user ; item] from
    its first layer's user and item halves computed once (rows of ``user_halves`` and
    ``item_halves``), in blocks of at most ``block`` elements of the widest activation
    (``width`` per pair)."""

    def __init__(self, head, user_halves: Tensor, item_halves: Tensor, width: int, weight: Tensor,
                 bias: Tensor | None = None, block: int = BLOCK):
        self.head, self.weight, self.bias = head, weight, bias
        self.users, self.items = user_halves, item_halves
        self.per_pair = width  # activation elements per (user, item) pair
        self.block = block

    def _score(self, user_half: Tensor, item_half: Tensor) -> Tensor:
        scores = self.head(user_half, item_half) @ self.weight
        return scores if self.bias is None else scores + self.bias

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        n, c = items.shape
        pair_users, pair_items = users.unsqueeze(1).expand(n, c).reshape(-1), items.reshape(-1)
        step = max(1, self.block // self.per_pair)
        scores = [self._score(self.users[u], self.items[i])
                  for u, i in zip(pair_users.split(step), pair_items.split(step))]
        return torch.cat(scores).view(n, c)

    def all_items(self, users: Tensor) -> Tensor:
        num_items = self.items.shape[0]
        cols = max(1, min(num_items, self.block // self.per_pair))
        rows = max(1, self.block // (cols * self.per_pair))
        return torch.cat([
            torch.cat([self._score(user_rows.unsqueeze(1), item_cols.unsqueeze(0))
                       for item_cols in self.items.split(cols)], 1)
            for user_rows in self.users[users].split(rows)])


class SumScorer:
    """The sum of several scorers' scores."""

    def __init__(self, *scorers):
        self.scorers = scorers

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        return sum(s.candidates(users, items) for s in self.scorers)

    def all_items(self, users: Tensor) -> Tensor:
        return sum(s.all_items(users) for s in self.scorers)


class NCF(Recommender):
    """What GMF, MLP and NeuMF share: a logit per pair, binary cross-entropy, ``predict``."""

    losses = ("ce", "nce")
    predict: nn.Linear
    _config: dict

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """The logit of each (users[n], items[n]) pair ([n]), with gradients."""
        return self.predict(self.features(users, items)).squeeze(-1)

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(users, items), target)

    def parts(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "gmf", None), getattr(self, "mlp", None)) if m is not None]

    def item_vectors(self) -> Tensor:
        """The item embeddings (of both parts, concatenated, for NeuMF)."""
        return torch.cat([part.item.weight.detach() for part in self.parts()], 1)

    def config(self) -> dict:
        return dict(self._config)


class GMF(NCF):
    """Generalized Matrix Factorization: logit = h . (p_u * q_i) + b."""

    def __init__(self, train: Interactions, factors: int = 8):
        super().__init__(train)
        self.gmf = GMFPart(train.num_users, train.num_items, factors)
        self.predict = linear(factors, 1)
        self._config = dict(factors=int(factors))

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        return self.gmf(users, items)

    @torch.no_grad()
    def scorer(self) -> VectorScorer:
        return self.gmf.scorer(self.predict.weight[0], self.predict.bias[0])


class MLP(NCF):
    """NCF's MLP: logit = h . mlp([p_u ; q_i]) + b."""

    def __init__(self, train: Interactions, layers: Sequence[int] = (64, 32, 16, 8)):
        super().__init__(train)
        self.mlp = MLPPart(train.num_users, train.num_items, layers)
        self.predict = linear(self.mlp.widths[-1], 1)
        self._config = dict(layers=list(self.mlp.widths))

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        return self.mlp(users, items)

    @torch.no_grad()
    def scorer(self) -> MLPScorer:
        return self.mlp.scorer(self.predict.weight[0], self.predict.bias[0])


class NeuMF(NCF):
    """NeuMF: logit = h . [p_u * q_i ; mlp([p'_u ; q'_i])] + b, each part with its own embeddings.

    With ``gmf_checkpoint`` and ``mlp_checkpoint`` (checkpoints of trained ``gmf`` and ``mlp``
    runs, same data, same ``factors`` / ``layers``) it is NeuMF-p: both parts are copied and the
    prediction layer is [alpha * h_gmf ; (1 - alpha) * h_mlp] with bias alpha * b_gmf +
    (1 - alpha) * b_mlp, so it starts out predicting alpha * GMF + (1 - alpha) * MLP logits.
    The parts must have trained on this model's training part (same data, same split), or they
    have seen its test items: ``dmfx train`` checks the data and split its checkpoints record;
    here only the weights' shapes are checked. Without checkpoints ``alpha`` has no effect.
    """

    def __init__(self, train: Interactions, factors: int = 8, layers: Sequence[int] = (64, 32, 16, 8),
                 alpha: float = 0.5, gmf_checkpoint: str = "", mlp_checkpoint: str = ""):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if bool(gmf_checkpoint) != bool(mlp_checkpoint):
            raise ValueError("NeuMF-p needs both gmf_checkpoint and mlp_checkpoint (or neither), "
                             f"got gmf_checkpoint={gmf_checkpoint!r}, mlp_checkpoint={mlp_checkpoint!r}")
        super().__init__(train)
        self.gmf = GMFPart(train.num_users, train.num_items, factors)
        self.mlp = MLPPart(train.num_users, train.num_items, layers)
        self.predict = linear(int(factors) + self.mlp.widths[-1], 1)
        self._config = dict(factors=int(factors), layers=list(self.mlp.widths), alpha=float(alpha),
                            gmf_checkpoint=str(gmf_checkpoint), mlp_checkpoint=str(mlp_checkpoint))
        if gmf_checkpoint:
            with torch.no_grad():
                h_gmf, b_gmf = self._load_part(gmf_checkpoint, "gmf", "factors", int(factors))
                h_mlp, b_mlp = self._load_part(mlp_checkpoint, "mlp", "layers", list(self.mlp.widths))
                self.predict.weight.copy_(torch.cat([alpha * h_gmf, (1 - alpha) * h_mlp], 1))
                self.predict.bias.copy_(alpha * b_gmf + (1 - alpha) * b_mlp)

    def _load_part(self, path: str, kind: str, key: str, expected) -> tuple[Tensor, Tensor]:
        """Copies part ``kind`` from a checkpoint (the run's result, as ``model.pt`` holds it);
        returns its prediction layer's (weight, bias)."""
        saved = load_checkpoint(path)
        model = saved.get("model") if isinstance(saved, dict) else None
        if not isinstance(model, dict) or "kind" not in model:
            raise ValueError(f"{kind}_checkpoint {path} does not record its model kind")
        if model["kind"] != kind:
            raise ValueError(f"{kind}_checkpoint {path} holds a {model['kind']!r} model, not {kind!r}")
        found = model.get("config", {}).get(key)
        if (list(found) if isinstance(found, (list, tuple)) else found) != expected:
            raise ValueError(f"{kind}_checkpoint {path} has {key}={found}, but NeuMF has {key}={expected}")
        state = result_weights(path, saved)
        part = getattr(self, kind)
        prefix = kind + "."
        weights = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
        for name, value in part.state_dict().items():
            if name not in weights or weights[name].shape != value.shape:
                shape = tuple(weights[name].shape) if name in weights else "missing"
                raise ValueError(f"{kind}_checkpoint {path}: {prefix}{name} is {shape}, NeuMF "
                                 f"needs {tuple(value.shape)} (another data set?)")
        part.load_state_dict(weights)
        return state["predict.weight"].to(self.predict.weight), state["predict.bias"].to(self.predict.bias)

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        return torch.cat([self.gmf(users, items), self.mlp(users, items)], -1)

    @torch.no_grad()
    def scorer(self) -> SumScorer:
        h, factors = self.predict.weight[0], self._config["factors"]
        return SumScorer(self.gmf.scorer(h[:factors]),
                         self.mlp.scorer(h[factors:], self.predict.bias[0]))
