"""What a run is made of, kept apart from the CLI so scripts can rebuild a run from its files:
where the data comes from and how it is split, which model was trained on it, and fingerprints
that tell whether the data read now is the data the model was trained on.

A run folder holds two files. ``checkpoint.pt`` (rewritten every epoch, or more often) is for ``--resume``: the
last and best weights, the optimizer state and the data *settings*; using it re-reads the data
file. ``model.pt`` (written once training ends) is the trained model on its own: the best
weights, the model settings and the split itself (training interactions, held-out items and
their sampled candidates, the raw-id maps), so evaluating, recommending and exporting need no
data file. The split is kept rather than the data file because it is what every use needs and
it is compact: int32 ids and float32 ratings are 12 bytes per training interaction (600 MB for
50M ratings) plus 4 bytes per sampled candidate (800 MB for 2M users x 100 candidates x 2),
small beside the first-layer tables of such a model (3 GB at 1M + 2M rows x 256 float32).
Timestamps are not kept: the split is already made.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint, result_weights, save_checkpoint
from .data import (CSR, Interactions, Split, leave_one_out, load_dataset, ratio_split, read_atomic,
                   read_file)
from .models import Recommender, build_model

__all__ = ["DataSpec", "Trained", "fingerprint", "file_digest", "data_record", "split_state",
           "split_from_state", "save_model", "load_trained", "check_device"]


PROTOCOLS = ("loo", "random", "atomic")


@dataclass
class DataSpec:
    """A data set by name (``dataset``, optionally read from a local copy ``data``) or any
    ratings file (``data`` alone, with ``sep``: ``dataset`` left at None), split with ``seed``
    by ``protocol``: ``"loo"`` (leave-one-out, the DMF paper's) or ``"random"`` (``ratios`` of
    all interactions for train, validation and test, the EINMF paper's); or ``"atomic"``: a
    split already made, read from the folder ``data`` (``FOLDER/NAME``, RecBole's atomic files
    as :func:`dmfx.data.write_atomic` writes them; ``seed`` and ``eval_negatives`` only draw
    sampled items where the folder has none). Neither ``dataset`` nor ``data``: the bundled
    ``"ml-100k"``."""

    dataset: Optional[str] = None
    data: Optional[str] = None
    sep: Optional[str] = None
    seed: int = 0
    eval_negatives: int = 100
    protocol: str = "loo"
    ratios: tuple = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got "
                             f"{self.protocol!r}")
        self.ratios = tuple(float(r) for r in self.ratios)
        if self.protocol == "atomic" and (self.data is None or self.dataset is not None):
            raise ValueError("protocol='atomic' reads a split folder: give it as data='FOLDER/NAME' "
                             "(what `dmfx split` wrote; --data FOLDER/NAME of the command), "
                             "without a dataset")
        if self.dataset is None and self.data is None:
            self.dataset = "ml-100k"  # the bundled data set
        # Absolute, so a checkpoint's data is found from any working directory.
        if self.data is not None:
            self.data = str(Path(self.data).expanduser().resolve())
        self._atomic = None  # (interactions, split) once read; not a field: not recorded

    def _read_atomic(self) -> tuple[Interactions, Split]:
        if self._atomic is None:
            folder = Path(self.data)
            self._atomic = read_atomic(folder.parent, folder.name, self.eval_negatives, self.seed)
        return self._atomic

    def load(self) -> Interactions:
        if self.protocol == "atomic":
            return self._read_atomic()[0]
        if self.dataset is None:
            if self.data is None:
                raise ValueError("give a data set name (dataset) or a ratings file (data)")
            return read_file(self.data, sep=self.sep)
        return load_dataset(self.dataset, data=self.data)

    def split(self, interactions: Interactions | None = None) -> Split:
        if self.protocol == "atomic":
            return self._read_atomic()[1]
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


def _array_state(array: np.ndarray):
    """A numpy array as what ``torch.load(weights_only=True)`` reads back: string ids as a list,
    integers as int32 where they fit (ids and indices; halves the file), the rest as is."""
    if array.dtype.kind in "UO":
        return array.astype(str).tolist()
    if array.dtype.kind in "iu" and (array.size == 0 or (int(array.min()) >= -2**31
                                                          and int(array.max()) < 2**31)):
        array = array.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(array))


def _array_from_state(value) -> np.ndarray:
    if isinstance(value, list):
        return np.asarray(value, dtype=str)
    array = value.numpy()
    return array.astype(np.int64) if array.dtype.kind in "iu" else array


def split_state(split: Split) -> dict:
    """``split`` as plain tensors and lists (see the module docstring); training timestamps are
    left out."""
    train = split.train
    state = {"train": {name: _array_state(getattr(train, name))
                       for name in ("user_ids", "item_ids", "users", "items", "ratings")}}
    for f in fields(split):
        if f.name != "train":
            value = getattr(split, f.name)
            state[f.name] = _array_state(value) if isinstance(value, np.ndarray) else value
    return state


def split_from_state(state: dict, source=None) -> Split:
    """The inverse of :func:`split_state`; ``source`` (the file it was read from) names it in
    the error of a damaged one."""
    try:
        train = Interactions(**{k: _array_from_state(v) for k, v in state["train"].items()})
        rest = {k: _array_from_state(v) if isinstance(v, (list, torch.Tensor)) else v
                for k, v in state.items() if k != "train"}
        return Split(train=train, **rest)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        where = f"{source}: " if source is not None else ""
        raise CheckpointError(f"{where}the stored split is damaged ({error})") from None


def save_model(path, model: Recommender, split: Split, data: dict,
               state: Optional[dict] = None) -> None:
    """Writes the self-contained model file (atomically): ``state`` (default: the model's own
    weights), the model's settings, ``split`` and the ``data`` record of :func:`data_record`."""
    save_checkpoint(path, {
        "model": {"kind": model.name, "config": model.config()},
        "model_state": state if state is not None else model.state_dict(),
        "split": split_state(split),
        "data": data,
    })


@dataclass
class Trained:
    """A trained model with the split it was trained and evaluated on (:func:`load_trained`).

    ``held_out_users``: internal ids of the users a ``dmfx train --held-out-users`` run held out
    of training (sorted; empty otherwise). They are among the model's users, but with no
    training row, validation or test item: the model knows none of their ratings and would
    rank for them as for a user without any. ``dmfx recommend`` refuses them (``--user``,
    ``--users-file``; their ratings go through ``--ratings``) and leaves them out of
    ``--all-users``; ``dmfx export`` leaves them out of the user files."""

    model: Recommender
    split: Split
    held_out_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def user_ids(self) -> np.ndarray:
        return self.split.train.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.split.train.item_ids

    def user_index(self, raw_id) -> int:
        return self.split.train.user_index(raw_id)

    def item_index(self, raw_id) -> int:
        return self.split.train.item_index(raw_id)

    def interacted(self, device=None) -> CSR:
        """Every known (user, item) pair as a binary CSR: the training pairs and the held-out
        (validation and test) ones, which ``dmfx recommend`` leaves out as well. Pass it as
        ``model.recommend(users, exclude=trained.interacted())`` for the same lists from Python:
        ``model.recommend`` alone leaves out the training pairs only."""
        s = self.split
        users = np.concatenate([s.train.users, s.valid_users, s.test_users])
        items = np.concatenate([s.train.items, s.valid_items, s.test_items])
        keys = np.unique(users * s.train.num_items + items)
        known = Interactions(s.train.user_ids, s.train.item_ids, keys // s.train.num_items,
                             keys % s.train.num_items, np.ones(len(keys), np.float32))
        return known.csr("binary", device=device)


def check_device(device, what: str = "device") -> torch.device:
    """``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device) as a
    device of this machine that dmfx runs on; a ValueError naming ``what`` (the argument, or
    its flag: ``"--device"``) otherwise. ``"auto"``: the GPU where there is one and the dmfx
    build has CUDA kernels, else the CPU."""
    from . import ops

    def shown(value) -> str:
        return f"{what} {value}" if what.startswith("--") else f"{what}={str(value)!r}"

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and ops.cuda_enabled() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{what}: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda" and not (torch.cuda.is_available() and ops.cuda_enabled()):
        raise ValueError(f"{shown('cuda')} needs a GPU and a dmfx build with CUDA kernels "
                         f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels: "
                         f"{ops.cuda_enabled()})")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{shown(device)}: this machine has {torch.cuda.device_count()} GPU(s)")
    return parsed


def _users_without_rows(split: Split) -> np.ndarray:
    """The users with no training row, validation or test item in ``split``: those
    :func:`dmfx.inductive.hold_out_users` took out (every other user keeps a row somewhere)."""
    known = np.zeros(split.train.num_users, dtype=bool)
    for users in (split.train.users, split.valid_users, split.test_users):
        known[users] = True
    return np.flatnonzero(~known).astype(np.int64)


def load_trained(path: str, device: torch.device | str = "cpu", *, data: Optional[str] = None,
                 allow_data_change: bool = False) -> Trained:
    """The model of a ``dmfx train`` run (its best validation epoch) with its split.

    ``device``: where the model goes (see :func:`check_device`; a device this machine lacks is
    a ValueError). From ``model.pt`` everything comes from the file. From ``checkpoint.pt`` the
    data and split are rebuilt from the data settings stored in it: ``data`` reads the ratings
    from another path (the file was moved); it must still hold the data the model was trained
    on. A data file whose bytes or contents differ from the recorded ones is refused before it
    is parsed, unless ``allow_data_change`` (then the model is used on the data as it is now, if
    its shape still fits). The result's ``held_out_users`` are the users a ``--held-out-users``
    run kept out of training (see :class:`Trained`)."""
    device = check_device(device)
    saved = load_checkpoint(path)
    if "data" not in saved or "model" not in saved:
        raise CheckpointError(f"{path} is not a dmfx model file or train checkpoint")
    if "shards" in saved:  # the weights are in the ranks' files, for --resume only
        raise CheckpointError(f"{path} is the checkpoint of a --distributed sharded run; evaluate "
                              f"and recommend take the run's model.pt")
    if "split" in saved and (data is not None or allow_data_change):
        raise ValueError(f"{path} holds its own data; --data and --allow-data-change apply "
                         "only to a checkpoint.pt")
    try:  # the file's records, as this version of dmfx writes them
        kind, config = saved["model"]["kind"], saved["model"]["config"]
        if "split" in saved:
            split = split_from_state(saved["split"], source=path)
            held_out = (_users_without_rows(split) if isinstance(saved["data"], dict)
                        and saved["data"].get("held_out_users") is not None else None)
        else:
            split, held_out = _split_from_data(path, saved["data"], data, allow_data_change)
        weights = result_weights(path, saved)
    except KeyError as error:
        raise CheckpointError(f"{path} has no {error.args[0]!r} record: not written by this "
                              "version of dmfx") from None
    except TypeError as error:  # DataSpec(**record) with a setting it does not know
        raise CheckpointError(f"{path} holds records this version of dmfx does not read "
                              f"({error})") from None
    model = build_model(kind, split.train, config, device, restore=True)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        # torch's first line only names the model ("Error(s) in loading state_dict for LFM:");
        # the next one says which weights do not fit and how.
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:300]
        if "split" in saved:  # no data was read: the file disagrees with itself
            raise CheckpointError(f"{path}: its weights do not fit the model settings and split "
                                  f"it holds ({reason}); the file is damaged") from None
        raise CheckpointError(f"{path} does not fit the data read now ({reason})") from None
    if held_out is None:
        return Trained(model, split)
    return Trained(model, split, held_out_users=np.asarray(held_out, dtype=np.int64))


def _split_from_data(path: str, record: dict, data: Optional[str],
                     allow_data_change: bool) -> tuple[Split, Optional[np.ndarray]]:
    """The split of a checkpoint re-made from its data settings, and the users it held out of
    training (None: none)."""
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"--data: no file at {data}")
    spec = DataSpec(**{**record["spec"], **({"data": data} if data is not None else {})})
    change = "; pass --allow-data-change to use the model on it anyway"
    if spec.data and record["file"] and not allow_data_change:
        if not Path(spec.data).exists():
            raise FileNotFoundError(f"{path} was trained on {spec.data}, which is gone; pass "
                                    "--data with its new place (or use the run's model.pt)")
        if file_digest(spec.data) != record["file"]:
            raise CheckpointError(f"{spec.data} is not the file {path} was trained on (its size "
                                  f"or hash differs){change}")
    interactions = spec.load()
    if fingerprint(interactions) != record["fingerprint"] and not allow_data_change:
        raise CheckpointError(f"the data read now is not the data {path} was trained on "
                              f"(was {record['fingerprint']}, now {fingerprint(interactions)})"
                              f"{change}")
    split = spec.split(interactions)
    if record.get("held_out_users") is None:
        return split, None
    from .inductive import hold_out_users

    split, new = hold_out_users(split, record["held_out_users"], seed=spec.seed)
    return split, np.sort(new.users)
