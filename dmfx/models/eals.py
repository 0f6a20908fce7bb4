"""eALS: element-wise alternating least squares with popularity-aware weights on the missing
data (He et al., SIGIR 2016, "Fast Matrix Factorization for Online Recommendation with
Implicit Feedback").

Objective (Eq. 7 of the paper with ``r_ui = 1`` and ``w_ui = 1`` on the observed pairs ``R``)::

    L = sum_{(u,i) in R} (1 - p_u.q_i)^2 + sum_u sum_{i not in R_u} c_i (p_u.q_i)^2
        + reg (sum_u ||p_u||^2 + sum_i ||q_i||^2),
    c_i = w0 f_i^alpha / sum_j f_j^alpha,   f_i = number of training interactions of item i.

One epoch is one sweep of Algorithm 1: every user vector by coordinate descent over the factors
``f = 0..K-1`` (Eq. 12, with the cache ``S^q = sum_i c_i q_i q_i^T`` and the predictions of the
observed pairs), then every item vector likewise (Eq. 13, ``S^p = P^T P``). Each coordinate step
is the exact minimiser of ``L`` in that coordinate, so ``L`` never increases. Users are
independent given ``Q`` (and items given ``P``), so each factor's update is applied to all users
(items) at once: exactly the paper's sequential sweep, vectorised. The work is done in float64;
the factors are stored in float32 parameters.

Users and items without training interactions are updated too (the authors' code skips them,
keeping their random initial vectors): such an item has ``c_i = 0`` when ``alpha > 0``, so only
the regularisation acts on it and its vector goes to 0, and it scores exactly 0.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Interactions
from .base import Recommender, VectorScorer

__all__ = ["EALS", "ALSEpochs", "missing_weights"]

INIT_STD = 0.01  # the paper's N(0, 0.01) initialisation


def missing_weights(train: Interactions, w0: float, alpha: float) -> np.ndarray:
    """``c_i = w0 f_i^alpha / sum_j f_j^alpha`` (float64), ``f_i`` the item's training count.
    (``alpha = 0`` weighs every item ``w0 / num_items``, the uniform weighting.)"""
    powered = np.bincount(train.items, minlength=train.num_items).astype(np.float64) ** alpha
    total = powered.sum()
    return w0 * powered / total if total > 0 else np.zeros(train.num_items)


def _coordinate_updates(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor, pred: Tensor,
                        row_scale: Tensor, col_scale: Tensor, cache: Tensor, reg: float,
                        factors: Iterable[int]) -> None:
    """Exact coordinate-descent steps on the rows of ``x`` (``y`` fixed), in place.

    The missing weight of (row r, column j) is ``row_scale[r] * col_scale[j]``: for users
    ``1 * c_j``, for items ``c_r * 1``. ``cache = y^T diag(col_scale) y``; ``pred`` holds
    ``x[rows] . y[cols]`` of the observed entries and is kept current. For factor f (Eq. 12/13)::

        x_rf = [sum_{j in R_r} (1 - (1 - m_rj) rhat^f_rj) y_jf - a_r sum_{k != f} x_rk S_kf]
               / [sum_{j in R_r} (1 - m_rj) y_jf^2 + a_r S_ff + reg]

    with ``rhat^f = pred - x_rf y_jf``, ``m_rj = a_r b_j`` and ``a = row_scale``.
    """
    num_rows = x.shape[0]
    missing = row_scale[rows] * col_scale[cols]  # m_rj of the observed entries
    for f in factors:
        y_f = y[cols, f]
        x_f = x[:, f]
        rhat = pred - x_f[rows] * y_f
        data_num = torch.zeros(num_rows, dtype=x.dtype, device=x.device).index_add_(
            0, rows, (1.0 - (1.0 - missing) * rhat) * y_f)
        data_den = torch.zeros(num_rows, dtype=x.dtype, device=x.device).index_add_(
            0, rows, (1.0 - missing) * y_f * y_f)
        others = x @ cache[:, f] - x_f * cache[f, f]  # sum_{k != f} x_rk S_kf
        numerator = data_num - row_scale * others
        denominator = data_den + row_scale * cache[f, f] + reg
        # The denominator is sum_{R_r} y^2 + sum_{j not in R_r} m y^2 + reg >= 0; where it is 0
        # the objective does not depend on x_rf: keep 0.
        new = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0)
        pred.copy_(rhat + new[rows] * y_f)
        x[:, f] = new


def _counted(factors: Iterable[int], bar) -> Iterator[int]:
    """``factors``, ticking ``bar`` after each one's update."""
    for f in factors:
        yield f
        bar.update()


class ALSEpochs:
    """The epochs of eALS: one user sweep and one item sweep each (``run``); never converged by
    itself (the trainer's epochs and patience decide). It holds no state of its own: each
    epoch starts from the model's factors, so a restored checkpoint resumes exactly."""

    def __init__(self, model: "EALS", split, progress: bool = False):
        train = split.train
        self.progress = progress  # a bar over each epoch's factor sweeps
        if (train.num_users, train.num_items) != (model.num_users, model.num_items):
            raise ValueError(f"train has {train.num_users} users x {train.num_items} items, the "
                             f"model {model.num_users} x {model.num_items}")
        self.model, self.reg = model, float(model.reg)
        device = model.device
        self.users = torch.as_tensor(train.users, dtype=torch.long, device=device)
        self.items = torch.as_tensor(train.items, dtype=torch.long, device=device)
        self.weights = torch.as_tensor(missing_weights(train, model.w0, model.alpha),
                                       dtype=torch.float64, device=device)
        self.user_ones = torch.ones(model.num_users, dtype=torch.float64, device=device)
        self.converged = False

    def predictions(self, p: Tensor, q: Tensor) -> Tensor:
        """``p_u . q_i`` of every observed pair."""
        return torch.einsum("ek,ek->e", p[self.users], q[self.items])

    def update_users(self, p: Tensor, q: Tensor, factors: Optional[Iterable[int]] = None) -> Tensor:
        """Coordinate steps (Eq. 12) on the user factors ``factors`` (default: all, in order) of
        every user, ``q`` fixed; ``p`` (float64) is updated in place and returned."""
        cache = (q * self.weights[:, None]).T @ q  # S^q = sum_i c_i q_i q_i^T
        factors = range(p.shape[1]) if factors is None else factors
        _coordinate_updates(p, q, self.users, self.items, self.predictions(p, q), self.user_ones,
                            self.weights, cache, self.reg, factors)
        return p

    def update_items(self, p: Tensor, q: Tensor, factors: Optional[Iterable[int]] = None) -> Tensor:
        """Coordinate steps (Eq. 13) on the item factors, ``p`` fixed; ``q`` updated in place."""
        cache = p.T @ p  # S^p = P^T P
        factors = range(q.shape[1]) if factors is None else factors
        _coordinate_updates(q, p, self.items, self.users, self.predictions(p, q), self.weights,
                            self.user_ones, cache, self.reg, factors)
        return q

    def objective(self, p: Tensor, q: Tensor) -> float:
        """``L`` in O(nnz K + (M + N) K^2): the missing term over all pairs is
        ``sum_u p_u^T S^q p_u``, minus its observed pairs."""
        pred = self.predictions(p, q)
        cache = (q * self.weights[:, None]).T @ q
        observed = ((1.0 - pred) ** 2 - self.weights[self.items] * pred ** 2).sum()
        everything = ((p @ cache) * p).sum()
        return float(observed + everything + self.reg * ((p * p).sum() + (q * q).sum()))

    def run(self, epoch: int) -> dict:
        model = self.model
        k = model.user_factors.shape[1]
        bar = tqdm(total=2 * k, desc=f"epoch {epoch}", unit="factor", leave=False,
                   disable=not self.progress, mininterval=0.5)
        with torch.no_grad(), bar:
            p, q = model.user_factors.double(), model.item_factors.double()
            self.update_users(p, q, _counted(range(k), bar))
            self.update_items(p, q, _counted(range(k), bar))
            model.user_factors.copy_(p)
            model.item_factors.copy_(q)
            # The objective of the factors as stored.
            loss = self.objective(model.user_factors.double(), model.item_factors.double())
        return {"loss": loss}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EALS(Recommender):
    """Matrix factorization of implicit feedback by eALS (He et al., SIGIR 2016); see the module
    docstring. Scores are dot products ``p_u . q_i``.

    Args:
        train: the training interactions.
        factors: latent dimension K.
        reg: L2 regularisation lambda of all user and item vectors.
        w0: overall weight of the missing entries (the paper's c0).
        alpha: popularity exponent of the missing-entry weights (0: uniform).
    """

    losses = ()

    def __init__(self, train: Interactions, factors: int = 64, reg: float = 0.01,
                 w0: float = 512.0, alpha: float = 0.4):
        if isinstance(factors, bool) or int(factors) != factors or factors < 1:
            raise ValueError(f"factors must be an integer >= 1, got {factors!r}")
        for name, value in (("reg", reg), ("w0", w0), ("alpha", alpha)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        super().__init__(train)
        self.factors, self.reg, self.w0, self.alpha = int(factors), float(reg), float(w0), float(alpha)
        self.user_factors = nn.Parameter(
            torch.empty(self.num_users, self.factors).normal_(0.0, INIT_STD), requires_grad=False)
        self.item_factors = nn.Parameter(
            torch.empty(self.num_items, self.factors).normal_(0.0, INIT_STD), requires_grad=False)

    def epoch_runner(self, split, config):
        return ALSEpochs(self, split, progress=getattr(config, "progress", False))

    @torch.no_grad()
    def scorer(self) -> VectorScorer:
        return VectorScorer(self.user_factors, self.item_factors)

    def config(self) -> dict:
        return {"factors": self.factors, "reg": self.reg, "w0": self.w0, "alpha": self.alpha}
