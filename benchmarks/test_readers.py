"""Reading an ML-1M-sized ratings file: dmfx's readers vs numpy.loadtxt and a Python line loop.

The files hold the ``synthetic`` ML-1M shape (6,040 users, 3,706 items, 1,000,209 ratings with
timestamps), once as ML-1M's ``user::item::rating::timestamp`` (``read_movielens_dat``) and once
tab-separated as ML-100K's ``u.data`` (``read_movielens_100k``); each is written once per module.

- ``dmfx``: the reader as installed: the file in chunks, parsed by pyarrow's streaming CSV reader
  where pyarrow is installed and the separator is one character (the tab file), else by
  ``np.loadtxt``; the ids coded chunk by chunk, then the duplicate removal of
  ``Interactions.from_arrays``.
- ``dmfx-loadtxt``: the same reader with pyarrow hidden, so every chunk goes through
  ``np.loadtxt`` (tab file only: the ``::`` file is read so by ``dmfx`` already).
- ``numpy.loadtxt``: only the parse into an int64 array, the floor under dmfx's time (tab file
  only: loadtxt takes one-character delimiters).
- ``python``: ``str.split`` per line into lists, then arrays, as a hand-written reader would.

The peers stop at the parsed columns; before timing, ``Interactions.from_arrays`` of their
columns is checked to equal what dmfx read. Readers run on the CPU only, so a ``--device cuda``
run skips them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import measure
from dmfx.bench import SHAPES
from dmfx.data import Interactions, read_movielens_100k, read_movielens_dat, readers, synthetic

NNZ = 1_000_209  # ML-1M's ratings


@dataclass(frozen=True)
class Case:
    sep: str
    id: str
    contenders: tuple = ()  # empty: all of CONTENDERS
    cuda_only: bool = False
    big: bool = False


CASES = [Case("::", "ml-1m-dat", contenders=("dmfx", "python")), Case("\t", "ml-1m-tsv")]
CONTENDERS = ["dmfx", "dmfx-loadtxt", "numpy.loadtxt", "python"]
READERS = {"::": read_movielens_dat, "\t": read_movielens_100k}


@functools.lru_cache(maxsize=1)
def _data() -> Interactions:
    shape = SHAPES["ml-1m"]
    return synthetic(shape.num_users, shape.num_items, NNZ, seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``files(sep)``: the path of the data written with ``sep``, written on first use."""
    folder = tmp_path_factory.mktemp("readers")
    written = {}

    def get(sep: str) -> Path:
        if sep not in written:
            x = _data()
            rows = zip(x.user_ids[x.users].tolist(), x.item_ids[x.items].tolist(),
                       x.ratings.astype(np.int64).tolist(), x.timestamps.tolist())
            path = folder / f"ratings{len(written)}.txt"
            path.write_text("".join(f"{u}{sep}{i}{sep}{r}{sep}{t}\n" for u, i, r, t in rows))
            written[sep] = path
        return written[sep]

    return get


def _python(path: Path, sep: str) -> list[np.ndarray]:
    users, items, ratings, times = [], [], [], []
    with open(path) as f:
        for line in f:
            u, i, r, t = line.split(sep)
            users.append(int(u))
            items.append(int(i))
            ratings.append(float(r))
            times.append(int(t))
    return [np.array(users), np.array(items), np.array(ratings), np.array(times)]


def _without_pyarrow(path: Path, sep: str) -> Interactions:
    """dmfx's reader as it reads where pyarrow is not installed."""
    saved = readers._pyarrow
    readers._pyarrow = lambda: None
    try:
        return READERS[sep](path)
    finally:
        readers._pyarrow = saved


def _loadtxt(path: Path, sep: str) -> list[np.ndarray]:
    return list(np.loadtxt(path, dtype=np.int64, delimiter=sep, comments=None, ndmin=2).T)


@functools.lru_cache(maxsize=None)
def _expected(path: Path, sep: str) -> Interactions:
    return READERS[sep](path)


def _assert_same(got: list[np.ndarray] | Interactions, want: Interactions, what: str) -> None:
    if not isinstance(got, Interactions):
        got = Interactions.from_arrays(*got)
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{what}: {name}")


def test_read_ratings(benchmark, device, files, case, contender):
    if device.type != "cpu":
        pytest.skip("the readers run on the CPU: timed by the CPU run")
    path = files(case.sep)
    fn = {
        "dmfx": functools.partial(READERS[case.sep], path),
        "dmfx-loadtxt": functools.partial(_without_pyarrow, path, case.sep),
        "numpy.loadtxt": functools.partial(_loadtxt, path, case.sep),
        "python": functools.partial(_python, path, case.sep),
    }[contender]
    want = _expected(path, case.sep)
    assert want.nnz == NNZ
    if contender != "dmfx":
        _assert_same(fn(), want, f"{contender} vs dmfx")
    measure(benchmark, fn, group=f"read ratings {case.id}", contender=contender, lines=NNZ)
