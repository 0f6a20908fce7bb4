"""The files of a run folder: checkpoints, atomic writes and the lock that keeps one run per folder.

A checkpoint is read with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain
containers: a crafted file cannot run code when it is evaluated, queried or resumed. Every file is
written under a name unique to its writer and renamed into place, so neither a kill nor a second
writer can leave a torn file behind.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ._files import atomic_write

__all__ = ["CheckpointError", "RunFolderBusy", "RunLock", "save_checkpoint", "load_checkpoint",
           "result_weights", "atomic_write", "json_text", "write_json", "make_folder"]

FORMAT = "dmfx-checkpoint"
# Bumped whenever the layout of the saved dict changes; other versions are refused by name.
VERSION = 1
# A training checkpoint of the first releases, saved before FORMAT and VERSION were, recognised
# by its keys so that it is refused as what it is, not as a foreign file.
_TRAINING_KEYS = {"model_state", "runner", "train_state", "train_config", "data", "model"}
# torch.save writes a zip archive: its first bytes tell a torch file from any other.
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A file is not a readable dmfx checkpoint, or does not fit the data or settings it is used
    with. The message is one line and names the file."""


class RunFolderBusy(RuntimeError):
    """Another process holds the lock of a run folder."""


def _finite(value):
    """NaN and infinities become None: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value) -> str:
    """Valid JSON, indented: non-finite numbers become null."""
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, value) -> None:
    text = json_text(value)
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **payload}, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, mmap: bool = False) -> dict:
    """A checkpoint written by :func:`save_checkpoint`; anything else raises :class:`CheckpointError`.

    ``mmap=True`` maps the tensors' storage from the file instead of reading it: for a caller
    that wants the records and few of the weights (they are read when touched)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        zipped = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # garbage, torn or foreign files fail in many ways inside torch
        # torch's own messages are not passed on: they advise loading with weights_only=False,
        # which would run the file's code.
        if zipped and not zipfile.is_zipfile(path):  # the archive's directory is at its end
            reason = "torn or truncated: a torch checkpoint cut short"
        elif zipped and isinstance(error, pickle.UnpicklingError):
            reason = "a torch file that holds objects other than tensors and plain data"
        else:
            reason = "not a torch checkpoint, or it holds objects other than tensors and plain data"
        raise CheckpointError(f"{path} is not a readable dmfx checkpoint ({reason})") from None
    if isinstance(saved, dict) and "format" not in saved and _TRAINING_KEYS <= saved.keys():
        raise CheckpointError(f"{path} was written by an early dmfx, before checkpoint format "
                              f"version 1, whose data record this dmfx cannot check; train again")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dmfx checkpoint")
    if saved.get("version") != VERSION:
        raise CheckpointError(f"{path} is a dmfx checkpoint of format version "
                              f"{saved.get('version')!r}; this dmfx reads version {VERSION}")
    return saved


def make_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created with its parents where missing, as every dmfx command creates the
    folder it writes to. One that cannot be made raises a one-line OSError that names why: a
    file in the way, or the file system's reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        taken = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{taken} exists and is not a folder" if taken is not None else \
            f"cannot create the folder {folder} ({error.strerror or error})"
        raise OSError(f"--output: {reason}") from None
    return folder


class RunLock:
    """An exclusive lock on a run folder, held while a run writes into it.

    ``flock`` on ``FOLDER/.lock``: the kernel releases it when the process dies, even by SIGKILL,
    so a killed run never leaves the folder locked. Taking it also proves the folder is writable,
    before any time is spent training. Stale temporary files of killed writers are removed.
    A run that wrote nothing (it failed on its data, say) leaves nothing: the lock file and the
    folders it made are removed again, so a failed command does not litter ``runs/``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._file = None
        self._made: list[Path] = []
        self._before: set[str] = set()

    def __enter__(self) -> "RunLock":
        self._made = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        make_folder(self.folder)
        self._before = {p.name for p in self.folder.iterdir()}
        self._file = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunFolderBusy(f"{self.folder} is in use by another dmfx run (pid {holder}); "
                                "wait for it to finish or choose another --output") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        # Only a lock file this run made, beside nothing it wrote, goes; removed while held.
        wrote_nothing = ".lock" not in self._before and \
            {p.name for p in self.folder.iterdir()} == self._before | {".lock"}
        if wrote_nothing:
            (self.folder / ".lock").unlink()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        for folder in self._made if wrote_nothing else ():  # deepest first; a used one is kept
            try:
                folder.rmdir()
            except OSError:
                break


def result_weights(path, saved: dict) -> dict:
    """A checkpoint's result: its best validation epoch. model_state holds the last weights
    (--resume), which are the result when the run ended in an epoch cut by --max-steps whose
    evaluation made it the best (as in model.pt)."""
    state = saved.get("train_state") or {}
    partial = state.get("partial")
    if partial and partial.get("evaluated_best"):
        return saved["model_state"]
    if state.get("best_state") is not None:
        return state["best_state"]
    if partial:
        raise CheckpointError(f"{path} was written {partial['steps']} steps into epoch "
                              f"{partial['epoch']}, before any epoch was evaluated: it holds no "
                              "result yet (--resume continues it)")
    return saved["model_state"]
