"""The cache directory, and a cache of parsed ratings files so that a re-run skips the parse.

:func:`dmfx.data.read_file` and :func:`dmfx.data.load_dataset` keep the
:class:`Interactions` parsed from a text ratings file of at least :data:`CACHE_MIN_BYTES`
in ``<cache>/parsed/``; reading the same file again loads that entry instead of parsing.
``<cache>`` is ``cache_dir`` where a caller names one, else :func:`default_cache_dir`.

An entry is an uncompressed ``.npz`` (the arrays of :meth:`Interactions.save_npz` plus a key):
one file, so it is replaced atomically; uncompressed, so loading it is a copy at disk speed
rather than a decompression (under a second for 5M ratings, against seconds to parse them);
and zip's CRC-32 of every member, checked on loading, catches a damaged entry.  (A folder of ``.npy`` files could be
memory-mapped, but it cannot be replaced in one step, nothing would check its bytes, and the
:class:`Interactions` would hold read-only arrays backed by a file that a later run may
replace.)

The key is the file's absolute path, size, modification and status-change times and inode,
how it was read, the entry layout :data:`FORMAT_VERSION` and the dmfx version: any change to
the file, a file renamed over it, or a new dmfx makes the entry stale.  A stale, damaged or
unreadable entry is never used: the file is parsed again and the entry rewritten.
What the parse warned about (duplicated rows dropped, ratings that look like counts) is kept
with the entry and warned again when the entry is loaded, as if the file had been parsed.
``DMFX_NO_CACHE=1`` (or ``cache=False`` to those functions) neither reads nor writes entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._files import atomic_write
from .._version import __version__
from .errors import DataFormatError
from .interactions import Interactions, read_npz

__all__ = ["CACHE_MIN_BYTES", "FORMAT_VERSION", "cached", "caching_enabled", "default_cache_dir"]

CACHE_MIN_BYTES = 1 << 20
"""Smaller files are parsed every time: that takes well under a second, and their entries would
only clutter the cache."""

FORMAT_VERSION = 2
"""Layout of an entry and of what the readers put in it; bump it when either changes (2: empty
ids refused, comma files of integer ids read as integers, two-column headers detected, the
parse's warnings kept)."""

_KEY_MEMBER = "dmfx_cache_key"
_WARNINGS_MEMBER = "dmfx_warnings"


def default_cache_dir() -> Path:
    """``$DMFX_CACHE`` if set, else ``~/.cache/dmfx``."""
    return Path(os.environ.get("DMFX_CACHE") or Path.home() / ".cache" / "dmfx").expanduser()


def caching_enabled() -> bool:
    """False when ``$DMFX_NO_CACHE`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("DMFX_NO_CACHE", "") in ("", "0")


def _key(path: Path, how: str) -> str | None:
    """The entry key of the regular file ``path`` read ``how``; None when it is not to be cached."""
    try:
        st = path.stat()
    except OSError:
        return None  # the reader reports it
    if not path.is_file() or st.st_size < CACHE_MIN_BYTES:
        return None
    return json.dumps({
        "format": FORMAT_VERSION, "dmfx": __version__, "path": str(path), "how": how,
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
    }, sort_keys=True)


def _load(entry: Path, key: str) -> tuple[Interactions, list[str]] | None:
    """The interactions stored in ``entry`` under ``key`` and the parse's warnings; None when it
    is missing, stale or damaged."""
    if not entry.is_file():
        return None
    try:
        loaded = np.load(entry, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return None
        with loaded as npz:
            if _KEY_MEMBER not in npz.files or str(npz[_KEY_MEMBER]) != key:
                return None
            said = [str(m) for m in npz[_WARNINGS_MEMBER]] if _WARNINGS_MEMBER in npz.files else []
        return read_npz(entry), said  # read_npz checks every member's CRC and the arrays
    # The errors of np.load on a file that is not a sound npz (read_npz turns its own into DataFormatError).
    except (DataFormatError, OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error):
        return None


def _store(entry: Path, key: str, data: Interactions, said: list[str]) -> None:
    arrays = {"user_ids": data.user_ids, "item_ids": data.item_ids, "users": data.users,
              "items": data.items, "ratings": data.ratings,
              _WARNINGS_MEMBER: np.array(said, dtype=str)}
    if data.timestamps is not None:
        arrays["timestamps"] = data.timestamps
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: an entry torn by a crash fails its CRC check and is rewritten.
        atomic_write(entry, lambda f: np.savez(f, **arrays, **{_KEY_MEMBER: np.array(key)}),
                     fsync=False)
    except OSError as exc:
        warnings.warn(f"could not write the parse cache entry {entry} ({exc}); the file will be parsed "
                      f"again next time (DMFX_NO_CACHE=1 stops these attempts)", UserWarning, stacklevel=3)


def cached(
    path: str | os.PathLike[str],
    how: str,
    read: Callable[[], Interactions],
    cache_dir: str | os.PathLike[str] | None = None,
    enabled: bool = True,
) -> Interactions:
    """``read()``, or what it returned when the file ``path`` was last read ``how``.

    ``how`` names the reader and its options, so that one file read two ways has two entries.
    A miss stores the result unless the file changed while it was read; failing to store only
    warns.  The UserWarnings ``read()`` gave are stored with it and given again on a hit.
    Errors of ``read()`` propagate unchanged.
    """
    resolved = Path(path).resolve()
    key = _key(resolved, how) if enabled and caching_enabled() else None
    if key is None:
        return read()
    name = hashlib.sha256(json.dumps([str(resolved), how]).encode()).hexdigest()[:32]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = root / "parsed" / f"{name}.npz"
    hit = _load(entry, key)
    if hit is not None:
        data, said = hit
        for message in said:
            warnings.warn(message, UserWarning, stacklevel=2)
        return data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every one recorded; given on below under the caller's filters
        data = read()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if _key(resolved, how) == key:
        _store(entry, key, data, [str(w.message) for w in caught if w.category is UserWarning])
    return data
