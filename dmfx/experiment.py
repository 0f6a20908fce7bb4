"""What a run is made of, kept apart from the CLI so scripts can rebuild a run from a checkpoint:
where the data comes from and how it is split, and which model is built on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .data import Interactions, Split, leave_one_out, load_dataset, read_file
from .models import DMF, LFM, ItemPop, Recommender

MODELS = ("dmf", "lfm", "itempop")


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
        from pathlib import Path

        return Path(self.data).stem if self.data else "data"


def build_model(kind: str, train: Interactions, config: dict, device: torch.device | str = "cpu") -> Recommender:
    """``kind`` in :data:`MODELS`; ``config`` holds the model's constructor arguments."""
    if kind == "dmf":
        values = "binary" if config.get("binary") else "rating"
        model = DMF(train.csr(values, device=device), train.csr(values, transpose=True, device=device),
                    **config)
    elif kind == "lfm":
        model = LFM(train.num_users, train.num_items, **config)
    elif kind == "itempop":
        model = ItemPop(train.num_users, train.num_items, train.items)
    else:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    return model.to(device)
