"""Coding raw ids chunk by chunk, for readers that never hold one raw id per rating.

A reader hands :class:`IdCoder` the raw ids of one chunk of the file at a time; the coder keeps
each distinct id once and one integer code per row.  :meth:`IdCoder.finish` then gives the
distinct ids sorted and each row's position among them: exactly the ``np.unique(all raw ids,
return_inverse=True)`` of :meth:`Interactions.from_arrays`, without the array of all raw ids.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IdCoder", "canonical_ints", "gather"]

_Run = tuple[np.ndarray, np.ndarray]  # distinct ids, sorted, and their codes

# Ids coded per pass at least: chunks smaller than this (pyarrow's 1 MiB blocks) wait to be
# coded together, as every pass searches all runs once.
_BATCH = 1 << 18


def canonical_ints(text: np.ndarray) -> np.ndarray | None:
    """``text`` (a unicode array) as int64 when every entry is an int64 written canonically, else None.

    Canonical (``str(int(t)) == t``) keeps ids such as ``"007"`` (or Amazon ASINs that happen to be
    all digits) from being merged with ``"7"``.
    """
    try:
        as_int = text.astype(np.int64)
    except (ValueError, OverflowError):
        return None
    return as_int if bool(np.all(as_int.astype(str) == text)) else None


def gather(parts: list[np.ndarray], dtype: type, index: np.ndarray | None = None) -> np.ndarray:
    """The chunks of one column (mapped through ``index``) as one array; ``parts`` ends empty.

    Each chunk is dropped once copied, so the column is held about once rather than twice.
    """
    out = np.empty(sum(len(p) for p in parts), dtype=dtype)
    parts.reverse()
    start = 0
    while parts:
        part = parts.pop()
        out[start : start + len(part)] = part if index is None else index[part]
        start += len(part)
    return out


class IdCoder:
    """Distinct raw ids met so far, each coded by the order in which it was first met.

    Ids come as int64, as unicode strings, or as bytes (``S``) where they are ASCII, which
    sort twice as fast and take a quarter of the memory; numpy compares and strips trailing
    NULs the same way for both, and a unicode chunk turns the bytes met so far into unicode.

    The ids are kept as sorted runs of (id, code), newest last.  A run is merged into the one
    before it once that one is no more than twice its size, as in a log-structured merge tree,
    so that there are O(log n) runs to search and each id is copied O(log n) times in all;
    one sorted table with every chunk's new ids inserted would copy the whole table per chunk.

    ``auto_int``: the ids are strings, and :meth:`finish` turns them into int64 when every one
    is a canonical integer (see :func:`canonical_ints`).
    """

    def __init__(self, auto_int: bool = False) -> None:
        self._auto_int = auto_int
        self._runs: list[_Run] = []
        self._size = 0
        self._waiting: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._waiting_values = 0
        self._codes: list[np.ndarray] = []

    def add(self, values: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Code the next chunk: one id per row, or (``rows`` given) the ids ``values[rows]``."""
        self._waiting.append((values, rows))
        self._waiting_values += len(values)
        if self._waiting_values >= _BATCH:
            self._code_waiting()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, indices)``: the distinct ids sorted (int64 or unicode), and each row's position
        among them (int64).  The coder is spent afterwards."""
        self._code_waiting()
        run = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        while self._runs:
            run = _merge(self._runs.pop(), run)
        ids, codes = run
        if ids.dtype.kind == "S":
            ids = ids.astype(str)  # ASCII: the same strings, the same order
        index = np.empty(len(ids), dtype=np.int64)
        index[codes] = np.arange(len(ids))
        if self._auto_int and len(ids):
            as_int = canonical_ints(ids)
            if as_int is not None:
                order = np.argsort(as_int, kind="stable")  # "10" < "9" as strings
                rank = np.empty(len(order), dtype=np.int64)
                rank[order] = np.arange(len(order))
                ids, index = as_int[order], rank[index]
        return ids, gather(self._codes, np.int64, index)

    def _code_waiting(self) -> None:
        if not self._waiting:
            return
        values = self._waiting[0][0] if len(self._waiting) == 1 else np.concatenate([v for v, _ in self._waiting])
        codes = self._encode(values)
        start = 0
        for values, rows in self._waiting:
            part = codes[start : start + len(values)]
            self._codes.append(part if rows is None else part[rows])
            start += len(values)
        self._waiting, self._waiting_values = [], 0

    def _encode(self, values: np.ndarray) -> np.ndarray:
        """int64 codes of ``values``, new ids getting the next codes."""
        uniques, inverse = np.unique(values, return_inverse=True)
        if self._runs:
            uniques = self._common_dtype(uniques)
        codes = np.full(len(uniques), -1, dtype=np.int64)
        for ids, id_codes in self._runs:
            pos = np.searchsorted(ids, uniques).clip(max=len(ids) - 1)
            hit = ids[pos] == uniques
            codes[hit] = id_codes[pos[hit]]
        new = codes < 0
        fresh = uniques[new]
        if len(fresh):
            codes[new] = np.arange(self._size, self._size + len(fresh))
            self._size += len(fresh)
            run = (fresh, codes[new])
            while self._runs and len(self._runs[-1][0]) <= 2 * len(run[0]):
                run = _merge(self._runs.pop(), run)
            self._runs.append(run)
        return codes[inverse.reshape(-1)]

    def _common_dtype(self, uniques: np.ndarray) -> np.ndarray:
        """``uniques`` in the runs' dtype, widening the runs first where that takes longer strings
        (or unicode).  Both sides must share one dtype: ``np.insert`` truncates longer strings."""
        dtype = np.result_type(self._runs[0][0], uniques)
        if dtype != self._runs[0][0].dtype:
            self._runs = [(ids.astype(dtype), codes) for ids, codes in self._runs]
        return uniques.astype(dtype, copy=False)


def _merge(older: _Run, newer: _Run) -> _Run:
    """One sorted run of two disjoint sorted runs of one dtype."""
    (ids, codes), (more_ids, more_codes) = older, newer
    if not len(more_ids):
        return older
    if not len(ids):
        return newer
    where = np.searchsorted(ids, more_ids)
    return np.insert(ids, where, more_ids), np.insert(codes, where, more_codes)
