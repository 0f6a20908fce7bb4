"""What a run records about where its numbers came from, and the per-epoch log it appends.

:func:`environment` is the software and machine a run used (``metrics.json`` ``environment``):
the dmfx version and git commit, how the kernels were built, the versions of Python, torch,
numpy, scipy and CUDA, the GPU, the thread count and the device. It never fails: what cannot be
found out is ``"unknown"`` (the commit) or ``None`` (a build flag of an extension that is not
there, the GPU of a CPU run).

:class:`EpochLog` is ``OUTPUT/epochs.jsonl``: one JSON object per finished epoch, appended and
flushed to disk as training goes, so a dashboard (or ``tail -f``) can follow a run.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import scipy
import torch

from . import __version__
from .checkpoint import _finite, atomic_write

__all__ = ["environment", "git_commit", "EpochLog"]


def git_commit(root: str | os.PathLike | None = None) -> dict:
    """``{"commit": hash, "modified": bool}`` of the git checkout dmfx runs from (``root``: the
    folder holding the ``dmfx`` package), ``{"commit": "unknown", "modified": None}`` when dmfx is
    installed rather than run from a checkout, or git is missing or refuses. git is run only
    where the folder has a ``.git`` (a folder, or a file in a worktree)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    unknown = {"commit": "unknown", "modified": None}
    if not (root / ".git").exists():
        return unknown

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # Tracked files only: untracked ones (run folders, data) do not change what ran.
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"commit": commit, "modified": modified}


def _build() -> dict:
    """How the dmfx extension was built; None for what a missing or older build cannot say."""
    try:
        from . import _C, ops
    except ImportError:
        return {"cpu_kernels": False, "openmp": None, "cuda_kernels": None}
    openmp = getattr(_C, "openmp_enabled", None)
    return {"cpu_kernels": True, "openmp": openmp() if openmp else None,
            "cuda_kernels": ops.cuda_enabled()}


def _gpu_name(device) -> str | None:
    """The name of the CUDA ``device``; None for another device or one that cannot be asked."""
    if not isinstance(device, torch.device) or device.type != "cuda":
        return None
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # no GPU, no CUDA build, an index beyond the GPUs: AssertionError, ...
        return None


def environment(device: torch.device | str = "cpu") -> dict:
    """The software and machine of a run on ``device`` (see the module docstring).

    Keys: ``dmfx`` (``version``, ``commit``, ``modified``: tracked files differ from the
    commit), ``build`` (``cpu_kernels``, ``openmp``, ``cuda_kernels``), ``python``, ``torch``,
    ``numpy``, ``scipy``, ``cuda`` (the CUDA version torch was built with, None for a CPU
    build), ``gpu`` (the device's name on CUDA, else None), ``threads`` (torch's CPU threads),
    ``device`` and ``platform``. A device this machine lacks (``"cuda"`` without a GPU, a
    ``"cuda:N"`` beyond its GPUs) or that torch cannot parse gives ``gpu`` None and ``device``
    as given: it never fails."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        device = str(device)
    return {
        "dmfx": {"version": __version__, **git_commit()},
        "build": _build(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cuda": torch.version.cuda,
        "gpu": _gpu_name(device),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "platform": platform.platform(),
    }


def _line(entry: dict) -> str:
    # One line per epoch; JSON has no literal for NaN or infinity, so they become null.
    return json.dumps(_finite(entry), allow_nan=False) + "\n"


class EpochLog:
    """``OUTPUT/epochs.jsonl``: the history entries of a run, one JSON object per line.

    A fresh run starts the file empty. A resumed run first makes the file match the checkpoint
    it continues from (``history``: the checkpoint's entries, epochs 1..N): if the file holds
    exactly those epochs it is kept and appended to; otherwise (a kill between the checkpoint
    and its line, a torn last line, lines of epochs after the checkpoint, which the resumed run
    trains again) it is rewritten, in one atomic replace, from the checkpoint's history. Each
    line is appended with one write, then flushed and fsynced."""

    def __init__(self, path: str | os.PathLike, history: list | None = None):
        self.path = Path(path)
        history = history or []
        if self._epochs() != [entry["epoch"] for entry in history]:
            text = "".join(_line(entry) for entry in history)
            atomic_write(self.path, lambda f: f.write(text.encode()))

    def _epochs(self) -> list | None:
        """The epochs of the file's lines; None for a missing file, a line that is not an
        epoch entry, or a last line without its line end (the next append would join it). An
        empty list for an empty file."""
        try:
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                return None
            return [json.loads(line)["epoch"] for line in text.splitlines()]
        except (OSError, ValueError, KeyError, TypeError):  # ValueError: also bytes not UTF-8
            return None

    def append(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(_line(entry))
            f.flush()
            os.fsync(f.fileno())
