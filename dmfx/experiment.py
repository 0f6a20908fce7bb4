"""What a run is made of, kept apart from the CLI so scripts can rebuild a run from a checkpoint:
where the data comes from and how it is split, which model was trained on it, and fingerprints
that tell whether the data read now is the data the model was trained on."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .data import Interactions, Split, leave_one_out, load_dataset, ratio_split, read_file
from .models import Recommender, build_model

__all__ = ["DataSpec", "fingerprint", "file_digest", "data_record", "restore"]


PROTOCOLS = ("loo", "random")


@dataclass
class DataSpec:
    """A data set by name (``dataset``, optionally read from a local copy ``data``) or any
    ratings file (``data`` alone, with ``sep``), split with ``seed`` by ``protocol``:
    ``"loo"`` (leave-one-out, the DMF paper's) or ``"random"`` (``ratios`` of all interactions
    for train, validation and test, the EINMF paper's)."""

    dataset: Optional[str] = "ml-100k"
    data: Optional[str] = None
    sep: Optional[str] = None
    seed: int = 0
    eval_negatives: int = 100
    protocol: str = "loo"
    ratios: tuple = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"split must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        self.ratios = tuple(float(r) for r in self.ratios)
        # Absolute, so a checkpoint's data is found from any working directory.
        if self.data is not None:
            self.data = str(Path(self.data).expanduser().resolve())

    def load(self) -> Interactions:
        if self.dataset is None:
            if self.data is None:
                raise ValueError("give a data set name (--dataset) or a ratings file (--data)")
            return read_file(self.data, sep=self.sep)
        return load_dataset(self.dataset, data=self.data)

    def split(self, interactions: Interactions | None = None) -> Split:
        data = interactions if interactions is not None else self.load()
        if self.protocol == "random":
            return ratio_split(data, self.ratios, num_negatives=self.eval_negatives, seed=self.seed)
        return leave_one_out(data, num_negatives=self.eval_negatives, seed=self.seed)

    @property
    def name(self) -> str:
        if self.dataset is not None:
            return self.dataset
        return Path(self.data).stem if self.data else "data"


def fingerprint(data: Interactions) -> dict:
    """Shape, interaction count and a content hash of ``data`` (ids, pairs, ratings, times)."""
    h = hashlib.sha256()
    for array in (data.user_ids, data.item_ids, data.users, data.items, data.ratings,
                  data.timestamps):
        if array is not None:
            h.update(str(array.dtype).encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return {"users": data.num_users, "items": data.num_items, "nnz": data.nnz,
            "sha256": h.hexdigest()}


def file_digest(path: str) -> Optional[dict]:
    """Size and hash of a data file (None for a folder), compared before the file is parsed."""
    if not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def data_record(spec: DataSpec, data: Interactions) -> dict:
    """What a checkpoint keeps of its data: where it came from and what it was."""
    return {"spec": asdict(spec), "file": file_digest(spec.data) if spec.data else None,
            "fingerprint": fingerprint(data)}


def restore(path: str, device: torch.device | str = "cpu", *, data: Optional[str] = None,
            allow_data_change: bool = False) -> tuple[Recommender, Interactions, Split]:
    """The model of a ``dmfx train`` checkpoint (its best validation epoch), with its data and
    split rebuilt from the data settings stored in the checkpoint.

    ``data`` reads the ratings from another path (the file was moved); it must still hold the
    data the model was trained on. A data file whose bytes or contents differ from the recorded
    ones is refused before it is parsed, unless ``allow_data_change`` (then the model is used on
    the data as it is now, if its shape still fits)."""
    saved = load_checkpoint(path)
    if "data" not in saved or "model" not in saved:
        raise CheckpointError(f"{path} is not a dmfx train checkpoint")
    record = saved["data"]
    spec = DataSpec(**{**record["spec"], **({"data": data} if data is not None else {})})
    change = "; pass --allow-data-change to use the model on it anyway"
    if spec.data and record["file"] and not allow_data_change:
        if not Path(spec.data).exists():
            raise FileNotFoundError(f"{path} was trained on {spec.data}, which is gone; pass "
                                    "--data with its new place")
        if file_digest(spec.data) != record["file"]:
            raise CheckpointError(f"{spec.data} is not the file {path} was trained on (its size "
                                  f"or hash differs){change}")
    interactions = spec.load()
    if fingerprint(interactions) != record["fingerprint"] and not allow_data_change:
        raise CheckpointError(f"the data read now is not the data {path} was trained on "
                              f"(was {record['fingerprint']}, now {fingerprint(interactions)})"
                              f"{change}")
    split = spec.split(interactions)
    model = build_model(saved["model"]["kind"], split.train, saved["model"]["config"], device,
                        restore=True)
    # The run's result is its best validation epoch; model_state is the last one (for --resume).
    best = saved.get("train_state", {}).get("best_state")
    try:
        model.load_state_dict(best if best is not None else saved["model_state"])
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} does not fit the data read now ({first})") from None
    return model, interactions, split
