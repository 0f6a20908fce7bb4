"""Peak memory and time of reading an Amazon-style ratings CSV of N ratings into Interactions.

    DMFX_INGEST_N=5000000 nice .venv/bin/python -m benchmarks.ingest_memory

A measurement, not a test: nothing is asserted.  The file is written once into a temporary
folder: ``user,item,rating,timestamp`` lines without header, as Amazon's "ratings only" CSVs,
with 14-character user ids (``A`` and 13 letters or digits), 10-character item ids (ASIN-like
``B...`` and, for a third of the items, ten digits with leading zeros), ratings ``1.0``-``5.0``
and 10-digit timestamps; 0.45 N users and 0.044 N items (the shape of Amazon Movies & TV), drawn
by :func:`dmfx.data.synthetic`'s power laws.  ``N`` comes from ``DMFX_INGEST_N`` (default
200,000).

Each contender runs in a fresh child process, so that ``ru_maxrss`` (a process's peak resident
set) is its own; the file is written by another child, because Linux carries a parent's peak
into a child's ``ru_maxrss`` across fork and exec:

- ``whole-file``: the readers before chunked reading, kept here as they were: one
  ``np.loadtxt`` of the whole file with the ids as Python strings, then
  ``Interactions.from_arrays``;
- ``chunked loadtxt``: ``read_amazon_csv`` with pyarrow hidden, i.e. ``np.loadtxt`` per chunk;
- ``chunked pyarrow``: ``read_amazon_csv`` as installed (pyarrow's streaming CSV reader);
- ``cache miss``: ``read_file`` with an empty cache: the chunked read (pyarrow where installed)
  and writing the cache entry;
- ``cache hit``: ``read_file`` again, loading that entry.

``peak RSS`` is the child's peak; ``over start`` subtracts the peak before the read (the
interpreter, numpy and torch, which ``dmfx.data`` imports; pyarrow is imported during the read,
so its ~30 MB count).  ``result`` is the bytes of the returned arrays (ids, indices, ratings,
timestamps).  Prints the machine and versions, then a markdown table.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONTENDERS = ("whole-file", "chunked loadtxt", "chunked pyarrow", "cache miss", "cache hit")
_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


def _digits(values: np.ndarray, width: int, base: int) -> np.ndarray:
    """``values`` (non-negative int64) as ``width`` ASCII digits of ``base`` each, one row per value."""
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values.copy()
    for column in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, base)
        out[:, column] = _ALPHABET[digit]
    return out


def _distinct(rng: np.random.Generator, count: int, space: int) -> np.ndarray:
    """``count`` distinct random integers below ``space``, in random order."""
    step = space // count
    return rng.permutation(count) * step + rng.integers(0, step, size=count)


def write_ratings(path: Path, n: int, seed: int = 0) -> None:
    from dmfx.data import synthetic

    rng = np.random.default_rng(seed)
    num_users, num_items = max(1, int(0.45 * n)), max(1, int(0.044 * n))
    data = synthetic(num_users, num_items, n, seed=seed)
    users = np.empty((num_users, 14), dtype=np.uint8)
    users[:, 0] = ord("A")
    users[:, 1:] = _digits(_distinct(rng, num_users, 36**12), 13, 36)
    items = np.empty((num_items, 10), dtype=np.uint8)
    digits_only = rng.random(num_items) < 1 / 3
    items[digits_only] = _digits(_distinct(rng, int(digits_only.sum()), 10**8), 10, 10)
    items[~digits_only, 0] = ord("B")
    items[~digits_only, 1:] = _digits(_distinct(rng, int((~digits_only).sum()), 36**9), 9, 36)
    # Fixed-width lines: user(14) , item(10) , rating(3) , timestamp(10) \n
    lines = np.empty((n, 41), dtype=np.uint8)
    lines[:, 0:14] = users[data.users]
    lines[:, 15:25] = items[data.items]
    lines[:, 26] = ord("0") + data.ratings.astype(np.uint8)
    lines[:, 27:29] = np.frombuffer(b".0", dtype=np.uint8)
    lines[:, 30:40] = _digits(data.timestamps + 400_000_000, 10, 10)
    lines[:, [14, 25, 29]] = ord(",")
    lines[:, 40] = ord("\n")
    path.write_bytes(lines.tobytes())


def _whole_file(path: Path):
    """The readers' Amazon path before chunked reading (the happy path of ``_read_table``)."""
    import warnings

    from dmfx.data import Interactions
    from dmfx.data.readers import _open_text, _warn_if_counts

    dtype = np.dtype([("f0", "O"), ("f1", "O"), ("f2", "f8"), ("f3", "i8")])
    with _open_text(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = np.loadtxt(f, dtype=dtype, delimiter=",", comments=None, ndmin=1)
    ratings = table["f2"]
    assert bool(np.isfinite(ratings).all() and (ratings >= 0).all())
    _warn_if_counts(str(path), ratings)
    return Interactions.from_arrays(table["f0"].astype(str), table["f1"].astype(str), ratings, table["f3"])


def _child(contender: str, path: Path) -> None:
    """Read ``path`` as ``contender`` and print the figures as one JSON line."""
    from dmfx.data import read_amazon_csv, read_file, readers

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if contender == "whole-file":
        data = _whole_file(path)
    elif contender == "chunked loadtxt":
        readers._pyarrow = lambda: None
        data = read_amazon_csv(path)
    elif contender == "chunked pyarrow":
        if readers._pyarrow() is None:
            print(json.dumps({"skipped": "pyarrow is not installed"}))
            return
        data = read_amazon_csv(path)
    else:  # the cache: "cache miss" runs first and writes the entry that "cache hit" loads
        data = read_file(path)
    seconds = time.perf_counter() - start
    arrays = (data.user_ids, data.item_ids, data.users, data.items, data.ratings, data.timestamps)
    print(json.dumps({
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "start_mb": start_rss / 1024,
        "result_mb": sum(a.nbytes for a in arrays if a is not None) / 2**20,
        "nnz": data.nnz, "users": data.num_users, "items": data.num_items,
    }))


def _run(contender: str, path: Path, env: dict) -> dict | None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest_memory", "--child", contender, str(path)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if contender != "write" else None


def main() -> None:
    if sys.argv[1:3] == ["--child", "write"]:
        write_ratings(Path(sys.argv[3]), int(os.environ.get("DMFX_INGEST_N", "200000")))
        return
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], Path(sys.argv[3]))
        return
    n = int(os.environ.get("DMFX_INGEST_N", "200000"))
    with tempfile.TemporaryDirectory(prefix="dmfx-ingest-") as tmp:
        path = Path(tmp) / "ratings.csv"
        start = time.perf_counter()
        _run("write", path, dict(os.environ))
        print(f"wrote {n:,} ratings ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        env = {**os.environ, "DMFX_CACHE": str(Path(tmp) / "cache")}
        env.pop("DMFX_NO_CACHE", None)
        rows, shapes = [], set()
        for contender in CONTENDERS:
            result = _run(contender, path, env)
            print(f"{contender}: {result}", file=sys.stderr)
            if "skipped" in result:
                rows.append(f"| {contender} | skipped: {result['skipped']} | | | |")
                continue
            shapes.add((result["nnz"], result["users"], result["items"]))
            rows.append(f"| {contender} | {result['seconds']:.2f} | {result['peak_mb']:,.0f} | "
                        f"{result['peak_mb'] - result['start_mb']:,.0f} | {result['result_mb']:,.0f} |")
    # Every contender must have read the same interactions for the figures to compare.
    (nnz, users, items), = shapes
    try:
        pyarrow = importlib.metadata.version("pyarrow")
    except importlib.metadata.PackageNotFoundError:
        pyarrow = "not installed"
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, numpy {np.__version__}, pyarrow {pyarrow}; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print(f"{n:,} lines: {nnz:,} ratings, {users:,} users, {items:,} items\n")
    print("| contender | seconds | peak RSS (MB) | over start (MB) | result (MB) |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
