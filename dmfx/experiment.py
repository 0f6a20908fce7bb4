"""What a run is made of, kept apart from the CLI so scripts can rebuild a run from a checkpoint:
where the data comes from and how it is split, and which model was trained on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .data import Interactions, Split, leave_one_out, load_dataset, read_file
from .models import Recommender, build_model
from .train import load_checkpoint

__all__ = ["DataSpec", "restore"]


@dataclass
class DataSpec:
    """A data set by name (``dataset``, optionally read from a local copy ``data``) or any
    ratings file (``data`` alone, with ``sep``), split leave-one-out with ``seed``."""

    dataset: Optional[str] = "ml-100k"
    data: Optional[str] = None
    sep: Optional[str] = None
    seed: int = 0
    eval_negatives: int = 100

    def load(self) -> Interactions:
        if self.dataset is None:
            if self.data is None:
                raise ValueError("give a data set name (--dataset) or a ratings file (--data)")
            return read_file(self.data, sep=self.sep)
        return load_dataset(self.dataset, data=self.data)

    def split(self, interactions: Interactions | None = None) -> Split:
        data = interactions if interactions is not None else self.load()
        return leave_one_out(data, num_negatives=self.eval_negatives, seed=self.seed)

    @property
    def name(self) -> str:
        if self.dataset is not None:
            return self.dataset
        return Path(self.data).stem if self.data else "data"


def restore(path: str, device: torch.device | str = "cpu"
            ) -> tuple[Recommender, Interactions, Split]:
    """The model of a ``dmfx train`` checkpoint (its best validation epoch), with its data and
    split rebuilt from the data settings stored in the checkpoint."""
    saved = load_checkpoint(path)
    if "data" not in saved or "model" not in saved:
        raise ValueError(f"{path} is not a dmfx train checkpoint")
    spec = DataSpec(**saved["data"])
    data = spec.load()
    split = spec.split(data)
    model = build_model(saved["model"]["kind"], split.train, saved["model"]["config"], device,
                        restore=True)
    # The run's result is its best validation epoch; model_state is the last one (for --resume).
    best = saved.get("train_state", {}).get("best_state")
    model.load_state_dict(best if best is not None else saved["model_state"])
    return model, data, split
