"""Fuzzing the readers: whatever the bytes, reading gives Interactions or a DataFormatError.

Inputs start as valid files of every layout the readers know, with a share of their fields
swapped for odd tokens (huge, negative or non-finite numbers, non-ASCII digits, NUL, CR, a
byte-order mark), lines of another width, or another separator; then they are packed as plain
text, gzip or zip (a ratings member, or an Interactions ``.npz``) and damaged before or after
packing: truncated, bytes flipped, bytes inserted. Plain random bytes are mixed in. Each input
is read by ``read_file`` (detecting, and with a random ``sep``), one explicit reader,
``read_delimited`` with random columns, and ``load_dataset(name, data=PATH)``.

Property: every call returns :class:`Interactions` or raises :class:`DataFormatError` (or
:class:`DatasetUnavailableError`) with a one-line message that starts with the file's path; a
call still running after ``HANG_S`` is a hang (a guard, not a timing: a tiny file reads in
milliseconds). Two seeds run, 0 and a fresh one (test ids ``seed0`` and ``fresh``;
``DMFX_FUZZ_SEED=N`` picks the fresh one, to rerun a failure); every failure message names
the seed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from dmfx.data import (
    FORMATS,
    DataFormatError,
    DatasetUnavailableError,
    Interactions,
    load_dataset,
    read_delimited,
    read_file,
)

# Mutated files repeat (user, item) pairs at random: the readers warn, which is not what is fuzzed.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*duplicated \(user, item\) row:UserWarning")

INPUTS_PER_SEED = 1000  # x 5 calls: about 2 s per seed
# A tiny file reads in milliseconds: this catches a hang or a runaway blow-up, with room for a
# 2-core machine busy with other work.
HANG_S = 60.0


def _fresh_seed() -> int:
    if os.environ.get("DMFX_FUZZ_SEED"):
        return int(os.environ["DMFX_FUZZ_SEED"])
    # pytest-xdist workers collect on their own and must agree on the test ids: they share
    # this run's id, so the seed is drawn from it there.
    run_uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_uid:
        return int.from_bytes(hashlib.sha256(run_uid.encode()).digest()[:4], "little")
    return secrets.randbits(32)


SEEDS = [0, _fresh_seed()]

SEPS = ["\t", ",", "::", " ", ";", "|"]
ODD_TOKENS = [
    "", " ", "-1", "-0.5", "0", "1e3", "nan", "-inf", "Infinity", "9" * 20, "-" + "9" * 20,
    "1_000", "\u0663", "007", "x", "\u00e9", "\x00", "\r", "\x1f", "\ufeff1", "3.0", "0x10",
]
# (separator, fields, header line or None): the layouts read_file detects, then any.
LAYOUTS = [
    ("\t", 4, None),
    ("::", 4, None),
    (",", 4, "userId,movieId,rating,timestamp"),
    (",", 4, None),
    ("\t", 3, None),
    ("\t", 3, "userID\tartistID\tweight"),
    (" ", 3, None),
    (" ", 4, None),
]
ZIP_MEMBER = "ml-100k/u.data"


def _field(rng: np.random.Generator, column: int, odd: float) -> str:
    if rng.random() < odd:
        return str(rng.choice(ODD_TOKENS))
    if column < 2:
        return str(rng.integers(1, 40)) if rng.random() < 0.8 else f"A{rng.integers(1, 40):03d}"
    if column == 2:
        return str(rng.integers(1, 6)) if rng.random() < 0.8 else str(rng.integers(1, 5000))
    return str(rng.integers(880_000_000, 890_000_000))


def _text(rng: np.random.Generator) -> bytes:
    if rng.random() < 0.8:
        sep, width, header = LAYOUTS[rng.integers(len(LAYOUTS))]
    else:
        sep, width, header = str(rng.choice(SEPS)), int(rng.integers(1, 7)), None
    odd = float(rng.choice([0.0, 0.0, 0.02, 0.2]))
    lines = [header] if header else []
    for _ in range(rng.integers(0, 40)):
        if rng.random() < odd:  # a line of another width or with another separator
            line_sep, line_width = str(rng.choice(SEPS)), int(rng.integers(1, 7))
        else:
            line_sep, line_width = sep, width
        lines.append(line_sep.join(_field(rng, c, odd) for c in range(line_width)))
    end = "\r\n" if rng.random() < 0.2 else "\n"
    return (end.join(lines) + end * int(rng.integers(0, 3))).encode()


def _damage(rng: np.random.Generator, data: bytes) -> bytes:
    kind = rng.integers(4)
    if kind == 0 or not data:
        return data
    buf = bytearray(data)
    if kind == 1:
        return bytes(buf[: rng.integers(len(buf))])
    if kind == 2:
        for pos in rng.integers(len(buf), size=rng.integers(1, 4)):
            buf[pos] = int(rng.integers(256))
        return bytes(buf)
    pos = int(rng.integers(len(buf) + 1))
    return bytes(buf[:pos] + rng.bytes(int(rng.integers(1, 8))) + buf[pos:])


def _zip(member: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, payload)
    return buffer.getvalue()


def _npz(rng: np.random.Generator) -> bytes:
    n = int(rng.integers(1, 20))
    x = Interactions.from_arrays(rng.integers(0, 9, n), rng.integers(0, 9, n), rng.integers(1, 6, n),
                                 rng.integers(0, 99, n) if rng.random() < 0.5 else None)
    buffer = io.BytesIO()
    x.save_npz(buffer)
    return buffer.getvalue()


def _input(rng: np.random.Generator) -> bytes:
    container = rng.integers(6)
    if container == 0:
        return rng.bytes(int(rng.integers(0, 300)))
    if container == 1:
        return _damage(rng, _npz(rng))
    text = _text(rng)
    if rng.random() < 0.5:
        text = _damage(rng, text)
    if container == 2:
        return _damage(rng, gzip.compress(text))
    if container == 3:
        return _damage(rng, _zip(ZIP_MEMBER, text))
    return text


def _columns(rng: np.random.Generator) -> tuple[str | None, ...]:
    names: list[str | None] = ["user", "item"]
    names += [c for c in ("rating", "timestamp") if rng.random() < 0.5]
    names += [None] * int(rng.integers(0, 2))
    return tuple(names[k] for k in rng.permutation(len(names)))


def _calls(rng: np.random.Generator, path: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    sep = str(rng.choice(SEPS))
    fmt = str(rng.choice(list(FORMATS)))
    columns = _columns(rng)
    yield "read_file(path)", lambda: read_file(path)
    yield f"read_file(path, sep={sep!r})", lambda: read_file(path, sep=sep)
    yield f"read_file(path, fmt={fmt!r})", lambda: read_file(path, fmt=fmt)
    yield f"read_delimited(path, {sep!r}, {columns})", lambda: read_delimited(path, sep, columns)
    yield "load_dataset('ml-100k', data=path)", lambda: load_dataset("ml-100k", data=path)


class _Hang(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _Hang in the main thread once ``seconds`` have passed, so a hang fails the test."""

    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.filterwarnings("ignore:.*look like counts:UserWarning")
@pytest.mark.parametrize("seed", SEEDS, ids=["seed0", "fresh"])
def test_readers_fail_only_with_data_format_error(seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    outcomes = {"read": 0, "refused": 0}
    for case in range(INPUTS_PER_SEED):
        data = _input(rng)
        path = tmp_path / f"input{case}"
        path.write_bytes(data)
        for what, call in _calls(rng, path):
            where = f"fuzz seed {seed} (DMFX_FUZZ_SEED={seed}), input {case}, {what} on {data[:120]!r}"
            try:
                with _time_limit(HANG_S):
                    result = call()
            except _Hang:
                pytest.fail(f"{where}: still running after {HANG_S} s")
            except (DataFormatError, DatasetUnavailableError) as exc:
                message = str(exc)
                assert "\n" not in message and message.startswith(str(path)), f"{where}: {message!r}"
                outcomes["refused"] += 1
            except Exception as exc:  # any other type is a finding
                pytest.fail(f"{where}: raised {type(exc).__name__}: {exc}")
            else:
                assert isinstance(result, Interactions), where
                outcomes["read"] += 1
    # Both outcomes must be common, or the generator has drifted into testing only one side.
    assert min(outcomes.values()) > INPUTS_PER_SEED // 20, f"fuzz seed {seed}: {outcomes}"
