"""What every recommender of dmfx provides to the trainer and the evaluator."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class Scorer(Protocol):
    """Scores of (user, item) pairs from state computed once (e.g. all tower outputs)."""

    def candidates(self, users: Tensor, items: Tensor) -> Tensor:
        """``[n, c]`` scores of ``users[k]`` against ``items[k, :]``."""

    def all_items(self, users: Tensor) -> Tensor:
        """``[n, num_items]`` scores of each user against every item."""


class Recommender(nn.Module):
    """A model the trainer can fit and the evaluator can rank with.

    Subclasses implement :meth:`loss` (mean loss of a batch of (user, item, target) triples)
    and :meth:`scorer`. Models without trainable parameters (ItemPop) set ``trainable = False``.
    """

    trainable = True

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def scorer(self) -> Scorer:
        raise NotImplementedError

    def sparse_grad_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are row-sparse COO tensors (the trainer gives them
        :class:`dmfx.optim.RowSparseAdam`); none by default."""
        return []

    def config(self) -> dict:
        """The constructor arguments that rebuild this model (stored in checkpoints)."""
        raise NotImplementedError
