"""Atomic file writes, shared by checkpoints, run files, downloads and the parse cache.

Free of torch, so that :mod:`dmfx.data` imports without it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; written files get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object], *,
                 fsync: bool = True) -> None:
    """Calls ``write`` on a fresh temporary file beside ``path`` and renames it into place: readers
    see the old file or the new one, never a mix. The temporary name is unique to this writer and
    the file is removed if writing fails (a full disk, an exception). ``fsync=False`` skips
    flushing to disk before the rename, for files whose readers detect a torn one themselves."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
