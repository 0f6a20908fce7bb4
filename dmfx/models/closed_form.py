"""The "epoch" of a model computed in one pass over the training data (ItemPop, ItemKNN)."""
from __future__ import annotations


class ClosedFormEpoch:
    """Runs ``model.fit_closed_form(split.train)`` once; the trainer then stops (``converged``)."""

    def __init__(self, model, split):
        self.model, self.train = model, split.train
        self.converged = False

    def run(self, epoch: int) -> dict:
        stats = self.model.fit_closed_form(self.train)
        self.converged = True
        return stats

    def state_dict(self) -> dict:
        return {"converged": self.converged}

    def load_state_dict(self, state: dict) -> None:
        self.converged = state["converged"]
