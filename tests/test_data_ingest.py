"""Chunked reading and the parse cache: the same Interactions as one whole-file parse, and a cache
that is used only while the file is unchanged.

The files are small; ``CHUNK_BYTES`` (and the id coder's batch) are shrunk so that every chunk
holds a line or two and ids recur, widen and first appear across chunks.  Each reader runs with
both engines: pyarrow's streaming CSV reader (where pyarrow is installed and the separator is one
character) and ``np.loadtxt`` per chunk.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dmfx.data import (
    DataFormatError,
    Interactions,
    cache,
    load_dataset,
    read_amazon_csv,
    read_delimited,
    read_file,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
    readers,
)
from dmfx.data._idcodes import IdCoder

FIELDS = ("user_ids", "item_ids", "users", "items", "ratings", "timestamps")
# The files below rate pairs again on purpose (see lines()); the tests about that check the warning.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*duplicated \(user, item\) row:UserWarning")


def assert_same(got: Interactions, want: Interactions) -> None:
    """Same ids (values and dtype, so the same string width), indices, ratings and timestamps."""
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, f"{name}: {a.dtype} != {b.dtype}"
            np.testing.assert_array_equal(a, b, err_msg=name)


def whole_file(path: Path, sep: str | None, columns: tuple, header: bool, id_kind: str) -> Interactions:
    """What the readers returned before they read in chunks: one ``np.loadtxt`` of the whole text
    (ids as Python strings unless integers), then ``Interactions.from_arrays``."""
    types = {"rating": "f8", "timestamp": "i8", None: "O"}
    dtype = np.dtype([(f"f{k}", types.get(c, "i8" if id_kind == "int" else "O")) for k, c in enumerate(columns)])
    with gzip.open(path, "rt") if path.read_bytes()[:2] == b"\x1f\x8b" else open(path) as f:
        if header:
            f.readline()
        text = f.read()
    if sep is not None and len(sep) > 1:
        text, sep = text.replace(sep, "\x1f"), "\x1f"
    table = np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=sep, comments=None, ndmin=1)
    field = {c: table[f"f{k}"] for k, c in enumerate(columns) if c is not None}

    def ids(values: np.ndarray) -> np.ndarray:
        if id_kind == "int":
            return values
        text = values.astype(str)
        if id_kind == "auto":
            try:
                as_int = text.astype(np.int64)
            except (ValueError, OverflowError):
                return text
            if np.all(as_int.astype(str) == text):
                return as_int
        return text

    ratings = field.get("rating", np.ones(len(table)))
    return Interactions.from_arrays(ids(field["user"]), ids(field["item"]), ratings, field.get("timestamp"))


def lines(rng: np.random.Generator, n: int, user: Callable[[int], str],
          item: Callable[[int], str]) -> list[list[str]]:
    """``n`` (user, item, rating, timestamp) rows whose ids get longer (and new) as the file goes
    on, with pairs rated again later: once with a later timestamp, once with an earlier one."""
    rows = []
    for k in range(n):
        scale = 4 + k  # later rows draw from a larger pool: longer, newer ids
        rating = str(rng.choice(["1", "2", "3.5", "4", "5", "0.5"]))
        rows.append([user(int(rng.integers(scale))), item(int(rng.integers(scale))), rating,
                     str(880_000_000 + int(rng.integers(10**6)))])
    for k in rng.choice(n, size=n // 5, replace=False):
        again = list(rows[k])
        again[2] = str(rng.integers(1, 6))
        again[3] = str(int(again[3]) + int(rng.choice([-5, 5])))
        rows.append(again)
    return rows


def amazon_user(k: int) -> str:
    return "A" + format(k * 7919, "X")


def amazon_item(k: int) -> str:
    return f"{k:010d}" if k % 3 == 0 else "B" + format(k * 31, "X")


UIRT = ("user", "item", "rating", "timestamp")
# (file name, reader, sep, columns, header line or None, id kind, user id, item id)
CASES = {
    "amazon-csv": ("ratings.csv", read_amazon_csv, ",", UIRT, None, "str", amazon_user, amazon_item),
    "ml-100k": ("u.data", read_movielens_100k, "\t", UIRT, None, "int", str, str),
    "ml-dat": ("ratings.dat", read_movielens_dat, "::", UIRT, None, "int", str, str),
    "ml-csv": ("ratings.csv", read_movielens_csv, ",", UIRT, "userId,movieId,rating,timestamp", "int", str, str),
    "delimited-auto-int": ("clicks.tsv", lambda p: read_delimited(p, "\t", ("item", None, "user"), header=True),
                           "\t", ("item", None, "user"), "item\tx\tuser", "auto", str, str),
    "delimited-auto-str": ("clicks.txt", lambda p: read_delimited(p, None, ("user", "item", "rating")), None,
                           ("user", "item", "rating"), None, "auto", lambda k: "007" if k == 7 else str(k), str),
    "non-ascii": ("r.csv", read_amazon_csv, ",", UIRT, None, "str",
                  lambda k: f"\u00e9{k}" if k > 20 else f"u{k}", amazon_item),
}


def write_case(tmp_path: Path, case: str, n: int = 60, packed: bool = False) -> tuple[Path, tuple]:
    name, reader, sep, columns, header, id_kind, user, item = CASES[case]
    rows = lines(np.random.default_rng(0), n, user, item)
    picked = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
    out = [sep.join(row[picked[c]] if c is not None else "x" for c in columns) if sep is not None
           else "  ".join(row[picked[c]] for c in columns) for row in rows]
    text = "".join(line + "\n" for line in ([header] if header else []) + out)
    path = tmp_path / (name + (".gz" if packed else ""))
    path.write_bytes(gzip.compress(text.encode()) if packed else text.encode())
    return path, (reader, sep, columns, header is not None, id_kind)


@pytest.fixture(params=["pyarrow", "loadtxt"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list | None:
    """Tiny chunks read by one engine; for pyarrow, the list of what its path returned."""
    monkeypatch.setattr(readers, "CHUNK_BYTES", 64)
    monkeypatch.setattr("dmfx.data._idcodes._BATCH", 3)
    if request.param == "loadtxt":
        monkeypatch.setattr(readers, "_pyarrow", lambda: None)
        return None
    if readers._pyarrow() is None:
        pytest.skip("pyarrow is not installed (pip install dmfx[parquet])")
    returned: list = []
    real = readers._read_with_arrow

    def spy(*args: object) -> object:
        returned.append(real(*args))
        return returned[-1]

    monkeypatch.setattr(readers, "_read_with_arrow", spy)
    return returned


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", list(CASES))
def test_chunked_read_equals_whole_file_read(case: str, packed: bool, engine: list | None, tmp_path: Path) -> None:
    path, (reader, sep, columns, header, id_kind) = write_case(tmp_path, case, packed=packed)
    want = whole_file(path, sep, columns, header, id_kind)
    with pytest.warns(UserWarning) as caught:
        got = reader(path)
    assert_same(got, want)
    assert got.nnz < 72  # duplicates across chunks were dropped, keeping the latest
    assert [str(w.message) for w in caught] == [
        f"{path}: {72 - got.nnz} duplicated (user, item) rows; kept the latest of each"]
    if engine is not None and sep is not None and len(sep) == 1:
        assert engine[-1] is not None, "the pyarrow path fell back to np.loadtxt"
    if case == "delimited-auto-int":
        assert got.user_ids.dtype == np.int64 and got.user_ids[-1] >= 10  # sorted as integers
    if case == "delimited-auto-str":
        assert "007" in got.user_ids.tolist() and "7" not in got.user_ids.tolist()


def test_chunked_read_equals_whole_file_read_at_default_chunks(tmp_path: Path) -> None:
    path, (reader, sep, columns, header, id_kind) = write_case(tmp_path, "amazon-csv", n=3000)
    assert_same(reader(path), whole_file(path, sep, columns, header, id_kind))


GOOD = "".join(f"A{k},B{k % 3},{k % 5 + 1}.0,{880_000_000 + k}\n" for k in range(8))


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        ("A9,B9,-1.0,9", "expected a rating >= 0"),
        ("A9,B9,nan,9", "expected a finite rating"),
        ("A9,B9,1.0", "expected 4 fields separated by ','"),
        ("A9,B9,1.0,0x9", "expected an integer timestamp, got '0x9'"),  # pyarrow's cast takes hex
        ("A9,B9,1.0,99999999999999999999", "expected an integer timestamp in the int64 range"),
    ],
)
def test_late_bad_line_is_located_by_both_engines(last: str, expected: str, engine: list | None,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "amazon.csv"
    path.write_text(GOOD + last + "\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:9: {expected}"):
        read_amazon_csv(path)


@pytest.mark.parametrize("last", ["A9,B9,+1,9", "A9,B9, 2.5 ,9", "A9,B9,1e0,+9", "A9 ,B9,1,9"])
def test_numbers_only_np_loadtxt_reads_are_read_alike(last: str, engine: list | None, tmp_path: Path) -> None:
    path = tmp_path / "amazon.csv"
    path.write_text(GOOD + last + "\n")
    assert_same(read_amazon_csv(path), whole_file(path, ",", UIRT, False, "str"))


@pytest.mark.parametrize("kind", ["int", "str", "auto"])
def test_id_coder_equals_np_unique(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dmfx.data._idcodes._BATCH", 5)
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 300, size=2000) * rng.integers(1, 4, size=2000) ** 5
    values = raw if kind == "int" else raw.astype(str)
    coder = IdCoder(auto_int=kind == "auto")
    start = 0
    while start < len(values):
        step = int(rng.integers(1, 40))
        part = values[start : start + step]
        # As pyarrow gives them: a block's distinct values and each row's position among them.
        distinct, rows = np.unique(part, return_inverse=True) if step % 2 else (part, None)
        coder.add(distinct.astype("S") if kind != "int" and step % 3 == 0 else distinct, rows)
        start += step
    ids, indices = coder.finish()
    want_ids, want_indices = np.unique(raw if kind != "str" else values, return_inverse=True)
    assert ids.dtype == want_ids.dtype
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(indices, want_indices)


# --- the parse cache ------------------------------------------------------------------------


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    """The cache on, for files of any size, under tmp_path; yields a list that grows by one per parse."""
    monkeypatch.setenv("DMFX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DMFX_NO_CACHE", raising=False)
    monkeypatch.setattr(cache, "CACHE_MIN_BYTES", 0)
    calls: list = []
    real = readers._read_table

    def counting(*args: object, **kwargs: object) -> Interactions:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(readers, "_read_table", counting)
    return calls


def entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "parsed").glob("*.npz"))


def test_second_read_comes_from_the_cache(parses: list, tmp_path: Path) -> None:
    path, _ = write_case(tmp_path, "amazon-csv")
    first = read_file(path)
    assert len(parses) == 1 and len(entries(tmp_path)) == 1
    again = read_file(path)
    assert len(parses) == 1, "the second read must load the cache entry"
    assert_same(again, first)
    read_file(path, sep=",")  # read another way: its own entry
    assert len(parses) == 2 and len(entries(tmp_path)) == 2


def test_count_like_ratings_warn_once_per_read_parsed_or_cached(parses: list, tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_text("".join(f"u{k % 3}\ta{k}\t{n}\n" for k, n in enumerate([1, 2, 3, 1, 5, 250, 1])))
    for _ in range(2):  # parsed, then loaded from the cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read_file(path)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and messages[0].startswith(f"{path}: the ratings look like counts")
    assert len(parses) == 1


def test_duplicated_rows_warn_when_parsed_and_when_cached(parses: list, tmp_path: Path) -> None:
    """The cache keeps the parse's result, in which the duplicates are gone, and the parse's
    warning with it: a cached read warns as the parse did."""
    path = tmp_path / "dup.tsv"
    path.write_text("u1\ti1\t5\nu1\ti1\t3\nu2\ti1\t4\n")
    said = f"{path}: 1 duplicated (user, item) row; kept the latest of each"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_file(path)
        again = read_file(path)
    assert [str(w.message) for w in caught] == [said, said] and len(parses) == 1
    assert_same(again, first)
    with warnings.catch_warnings():  # the caller's filters apply to the warning given again
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="duplicated"):
            read_file(path)


def test_a_changed_file_is_parsed_again(parses: list, tmp_path: Path) -> None:
    path, _ = write_case(tmp_path, "amazon-csv")
    read_file(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    read_file(path)
    assert len(parses) == 2
    with open(path, "a") as f:
        f.write("ANEWUSER,BNEWITEM,5.0,890000000\n")
    x = read_file(path)
    assert len(parses) == 3
    assert x.user_ids[x.user_index("ANEWUSER")] == "ANEWUSER"
    read_file(path)
    assert len(parses) == 3
    assert len(entries(tmp_path)) == 1, "a stale entry is replaced, not kept beside the new one"


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage", "empty"])
def test_a_damaged_entry_is_ignored_and_rewritten(damage: str, parses: list, tmp_path: Path) -> None:
    path, _ = write_case(tmp_path, "amazon-csv")
    want = read_file(path)
    (entry,) = entries(tmp_path)
    data = entry.read_bytes()
    middle = len(data) // 2
    entry.write_bytes({
        "flipped": data[:middle] + bytes(b ^ 0x55 for b in data[middle : middle + 8]) + data[middle + 8 :],
        "truncated": data[: middle],
        "garbage": b"PK\x03\x04" + bytes(range(256)) * 4,
        "empty": b"",
    }[damage])
    assert_same(read_file(path), want)
    assert len(parses) == 2
    assert_same(read_file(path), want)
    assert len(parses) == 2, "the damaged entry was rewritten"


def test_the_cache_can_be_turned_off(parses: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write_case(tmp_path, "amazon-csv")
    read_file(path, cache=False)
    read_file(path, cache=False)
    assert len(parses) == 2 and not entries(tmp_path)
    monkeypatch.setenv("DMFX_NO_CACHE", "1")
    read_file(path)
    load_dataset("amazon-music", data=path)
    assert len(parses) == 4 and not entries(tmp_path)
    monkeypatch.setenv("DMFX_NO_CACHE", "0")
    read_file(path)
    read_file(path)
    assert len(parses) == 5


def test_load_dataset_caches_a_local_copy_before_its_filter(parses: list, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "ratings_Digital_Music.csv"  # 30 users, 25 of them with the 20 ratings the filter asks
    path.write_text("".join(f"A{u:05d},B{i:05d},{rng.integers(1, 6)}.0,{1_400_000_000 + u * 40 + i}\n"
                            for u in range(30) for i in rng.choice(40, size=25 if u < 25 else 3, replace=False)))
    want = load_dataset("amazon-music", data=path, cache=False)
    assert len(parses) == 1
    first = load_dataset("amazon-music", data=path)
    second = load_dataset("amazon-music", data=path, cache_dir=tmp_path / "cache")
    assert len(parses) == 2, "the second load must come from the cache"
    assert want.nnz == 25 * 25
    assert_same(first, want)
    assert_same(second, want)


def test_small_and_binary_files_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMFX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DMFX_NO_CACHE", raising=False)
    path, _ = write_case(tmp_path, "amazon-csv")
    assert path.stat().st_size < cache.CACHE_MIN_BYTES
    read_file(path).save_npz(tmp_path / "x.npz")
    monkeypatch.setattr(cache, "CACHE_MIN_BYTES", 0)
    read_file(tmp_path / "x.npz")
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_only_warns(parses: list, tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    path, _ = write_case(tmp_path, "amazon-csv")
    with pytest.warns(UserWarning, match="could not write the parse cache entry"):
        x = read_file(path)
    assert x.nnz > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_file(path)
    assert len(parses) == 2
