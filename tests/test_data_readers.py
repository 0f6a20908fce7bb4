"""Readers, format detection and their error messages."""

from __future__ import annotations

import gzip
import io
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dmfx.data import (
    DataFormatError,
    Interactions,
    leave_one_out,
    load_dataset,
    read_amazon_csv,
    read_delimited,
    read_file,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
    read_npz,
    readers,
    synthetic,
)

FIXTURES = Path(__file__).parent / "fixtures"
# The fixtures' ratings.dat repeats a pair on purpose; the tests that are about it check the warning.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*duplicated \(user, item\) row:UserWarning")


def triples(x: Interactions) -> set[tuple[object, object, float]]:
    """(raw user, raw item, rating) of every interaction, for order-free comparison."""
    return {
        (x.user_ids[u].item(), x.item_ids[i].item(), float(r))
        for u, i, r in zip(x.users, x.items, x.ratings)
    }


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def gzipped(path: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    with open(path, "rb") as src, gzip.open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


# --- well-formed inputs -----------------------------------------------------------


def test_movielens_100k_reader() -> None:
    x = read_movielens_100k(FIXTURES / "u.data")
    assert x.user_ids.tolist() == [22, 186, 196]
    assert x.item_ids.tolist() == [242, 302, 377]
    assert x.users.dtype == np.int64 and x.ratings.dtype == np.float32
    assert triples(x) == {(196, 242, 3.0), (186, 302, 3.0), (22, 377, 1.0), (196, 377, 4.0)}
    # file order is kept: the first line is user 196 / item 242
    assert (x.user_ids[x.users[0]], x.item_ids[x.items[0]], x.timestamps[0]) == (196, 242, 881250949)


def test_movielens_dat_reader_keeps_latest_duplicate() -> None:
    with pytest.warns(UserWarning, match=r"ratings\.dat: 1 duplicated \(user, item\) row; kept the latest of each"):
        x = read_movielens_dat(FIXTURES / "ratings.dat")
    assert x.num_users == 3 and x.num_items == 3
    # (1, 10) occurs twice: the later timestamp (rating 5) wins although it comes first
    assert x.nnz == 5
    assert triples(x) == {(1, 10, 5.0), (1, 20, 3.0), (2, 10, 4.0), (2, 30, 1.0), (3, 20, 2.0)}
    k = np.flatnonzero((x.users == x.user_index(1)) & (x.items == x.item_index(10)))
    assert x.timestamps[k].tolist() == [978300760]


def test_duplicates_without_timestamps_keep_last_occurrence() -> None:
    x = Interactions.from_arrays(["a", "a", "b", "a"], ["x", "y", "x", "x"], [1, 2, 3, 4])
    assert x.nnz == 3
    assert triples(x) == {("a", "y", 2.0), ("b", "x", 3.0), ("a", "x", 4.0)}


def test_movielens_csv_reader_half_stars() -> None:
    x = read_movielens_csv(FIXTURES / "ratings.csv")
    assert x.user_ids.tolist() == [1, 7]
    assert triples(x) == {(1, 31, 2.5), (1, 1029, 3.0), (7, 31, 4.5), (7, 1061, 0.5)}
    assert x.timestamps.tolist() == [1260759144, 1260759179, 1260759185, 1260759205]


def test_amazon_reader_keeps_string_ids_with_leading_zeros() -> None:
    x = read_amazon_csv(FIXTURES / "amazon.csv")
    assert x.item_ids.tolist() == ["0001527665", "B00005JNOG"]
    assert x.user_ids.tolist() == ["A1B2C3D4E5F6G7", "A3SGXH7AUHU8GW", "A9Z8Y7X6W5V4U3"]
    assert ("A3SGXH7AUHU8GW", "0001527665", 5.0) in triples(x)
    assert x.item_index("0001527665") == 0
    with pytest.raises(KeyError, match="unknown item id 1527665"):
        x.item_index(1527665)


def test_read_delimited_columns_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.txt", "item;ignored;user\n5;x;u1\n6;y;u1\n5;z;u2\n")
    x = read_delimited(path, ";", columns=("item", None, "user"), header=True)
    assert x.timestamps is None
    assert x.ratings.tolist() == [1.0, 1.0, 1.0]
    assert x.item_ids.tolist() == [5, 6]  # canonical integers become int64
    assert x.item_ids.dtype == np.int64
    assert x.user_ids.tolist() == ["u1", "u2"]


def test_read_delimited_keeps_non_canonical_integer_ids_as_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "zips.csv", "007,1,4\n7,1,3\n")
    x = read_delimited(path, ",", columns=("user", "item", "rating"))
    assert x.user_ids.tolist() == ["007", "7"]


def test_gzip_input_is_transparent(tmp_path: Path) -> None:
    plain = read_movielens_dat(FIXTURES / "ratings.dat")
    packed = read_movielens_dat(gzipped(FIXTURES / "ratings.dat", tmp_path, "ratings.dat.gz"))
    assert triples(packed) == triples(plain)
    # detection looks at the content, not the name
    assert triples(read_file(gzipped(FIXTURES / "amazon.csv", tmp_path, "noext"))) == triples(
        read_amazon_csv(FIXTURES / "amazon.csv")
    )


def test_blank_lines_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "r.dat", "1::2::3::4\r\n\r\n5::6::1::8\r\n\r\n")
    x = read_movielens_dat(path)
    assert triples(x) == {(1, 2, 3.0), (5, 6, 1.0)}


# --- read_file detection ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "reader"),
    [
        ("u.data", read_movielens_100k),
        ("ratings.dat", read_movielens_dat),
        ("ratings.csv", read_movielens_csv),
        ("amazon.csv", read_amazon_csv),
    ],
)
def test_read_file_detects_text_formats(fixture: str, reader, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected = triples(reader(FIXTURES / fixture))
    assert triples(read_file(FIXTURES / fixture)) == expected
    assert triples(read_file(gzipped(FIXTURES / fixture, tmp_path, fixture + ".gz"))) == expected


def test_read_file_npz_round_trip(tmp_path: Path) -> None:
    original = read_amazon_csv(FIXTURES / "amazon.csv")
    original.save_npz(tmp_path / "amazon.npz")
    back = read_file(tmp_path / "amazon.npz")
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    no_time = synthetic(5, 4, 6, seed=1)
    no_time = Interactions(no_time.user_ids, no_time.item_ids, no_time.users, no_time.items, no_time.ratings)
    no_time.save_npz(tmp_path / "plain.npz")
    assert read_file(tmp_path / "plain.npz").timestamps is None


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc"])
def test_read_file_takes_a_scipy_sparse_npz(fmt: str, tmp_path: Path) -> None:
    import scipy.sparse as sp

    data = synthetic(6, 9, 20, seed=2)
    sp.save_npz(tmp_path / "y.npz", data.to_scipy("rating").asformat(fmt))
    back = read_file(tmp_path / "y.npz")
    assert (back.to_scipy("rating") != data.to_scipy("rating")).nnz == 0
    np.testing.assert_array_equal(back.user_ids, np.arange(6))
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(DataFormatError, match="neither an Interactions .npz nor a scipy.sparse one"):
        read_file(tmp_path / "other.npz")


def test_read_file_with_sep_and_fmt(tmp_path: Path) -> None:
    path = write(tmp_path, "data.psv", "user|item|score\nu1|i1|4\nu2|i1|2\n")
    x = read_file(path, sep="|")
    assert triples(x) == {("u1", "i1", 4.0), ("u2", "i1", 2.0)}
    assert triples(read_file(FIXTURES / "ratings.dat", fmt="ml-dat")) == triples(
        read_movielens_dat(FIXTURES / "ratings.dat")
    )
    with pytest.raises(ValueError, match="known formats: npz, ml-100k"):
        read_file(path, fmt="parquet")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t228\n"),
        ("plays.tsv", "2\t51\t13883\n2\t52\t11690\n3\t51\t228\n"),
        ("plays.txt", "2  51 13883\n2 52\t11690\n\n 3 51 228 \n"),
        ("plays.csv", "user,item,plays\n2,51,13883\n2,52,11690\n3,51,228\n"),
    ],
)
def test_read_file_detects_user_item_weight(name: str, text: str, tmp_path: Path) -> None:
    x = read_file(write(tmp_path, name, text))
    assert triples(x) == {(2, 51, 13883.0), (2, 52, 11690.0), (3, 51, 228.0)}
    assert x.timestamps is None


def test_read_file_detects_whitespace_with_timestamps(tmp_path: Path) -> None:
    x = read_file(write(tmp_path, "ratings.txt", "u1 i1 4.5 881250949\nu2  i1 3 881250950\n"))
    assert triples(x) == {("u1", "i1", 4.5), ("u2", "i1", 3.0)}
    assert x.timestamps.tolist() == [881250949, 881250950]


def test_read_file_unknown_format_lists_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "data.txt", "alice likes bob\n")
    with pytest.raises(DataFormatError) as err:
        read_file(path)
    message = str(err.value)
    assert "data.txt:1:" in message
    assert "MovieLens ratings.dat" in message and "Amazon" in message and "sep=" in message


def test_read_file_rejects_foreign_zip(tmp_path: Path) -> None:
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(FIXTURES / "ratings.dat", "ml-1m/ratings.dat")
    with pytest.raises(DataFormatError, match="extract its ratings file"):
        read_file(path)


# --- malformed inputs: the message names the file, the line and the expectation -----


@pytest.mark.parametrize(
    ("reader", "name", "text", "line", "expected"),
    [
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1::3::4::5\n2::3::4\n", 3,
         "expected 4 fields separated by '::', got 3"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1::3::x::5\n", 2, "expected a numeric rating, got 'x'"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n\n1::3::nan::5\n", 3, "expected a finite rating, got 'nan'"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1::3::inf::5\n", 2, "expected a finite rating"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\nu7::3::4::5\n", 2, "expected an integer user id, got 'u7'"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1::3::4::yesterday\n", 2, "expected an integer timestamp"),
        (read_movielens_100k, "u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n", 2,
         "expected 4 fields separated by '\\t', got 5"),
        (read_movielens_100k, "u.data", "1\t2\t3\t4\n1 2 3 4\n", 2, "expected 4 fields separated by '\\t', got 1"),
        (read_movielens_100k, "u.data", "1\t2\t3\t4\n   \n", 2, "got a blank line"),
        (read_movielens_csv, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,2,,4\n", 3,
         "expected a numeric rating, got ''"),
        (read_movielens_csv, "ratings.csv", "user,movie,rating,time\n1,2,3.5,4\n", 1,
         "expected header 'userId,movieId,rating,timestamp'"),
        (read_amazon_csv, "amazon.csv", "A1,B1,5.0,1\nA2,B2,5.0\n", 2, "expected 4 fields separated by ',', got 3"),
        (read_amazon_csv, "amazon.csv", "A1,B1,five,1\n", 1, "expected a numeric rating, got 'five'"),
        (read_movielens_100k, "u.data", "1\t2\t3\t4\n99999999999999999999\t2\t3\t4\n", 2,
         "expected an integer user id in the int64 range, got '99999999999999999999'"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1::3::4::99999999999999999999\n", 2,
         "expected an integer timestamp in the int64 range"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n1_000::3::4::5\n", 2,
         "expected an integer user id, got '1_000'"),
        (read_movielens_dat, "ratings.dat", "1::2::3::4\n\n1::3::-1::5\n", 3, "expected a rating >= 0, got '-1'"),
        (read_amazon_csv, "amazon.csv", "A1,B1,5.0,1\nA2,B2,-2.5,2\n", 2, "expected a rating >= 0"),
        (read_file, "plays.tsv", "1\t2\t3\n1\t3\t-4\n", 2, "expected a rating >= 0, got '-4'"),
    ],
)
def test_malformed_line_is_located(reader, name: str, text: str, line: int, expected: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, name, text)
    with pytest.raises(DataFormatError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ")
    assert expected in message


def test_error_line_numbers_survive_gzip_and_late_errors(tmp_path: Path) -> None:
    good = "".join(f"{u}::{u % 7}::3::{u}\n" for u in range(5000))
    path = write(tmp_path, "big.dat", good + "9::9::3\n")
    with pytest.raises(DataFormatError, match=r"big\.dat:5001: expected 4 fields"):
        read_movielens_dat(path)
    packed = gzipped(path, tmp_path, "big.dat.gz")
    with pytest.raises(DataFormatError, match=r"big\.dat\.gz:5001: expected 4 fields"):
        read_movielens_dat(packed)


def test_missing_column_in_read_delimited(tmp_path: Path) -> None:
    path = write(tmp_path, "three.csv", "u1,i1,5\nu2,i2\n")
    with pytest.raises(DataFormatError, match=r"three\.csv:2: expected 3 fields separated by ',', got 2"):
        read_delimited(path, ",", columns=("user", "item", "rating"))


@pytest.mark.parametrize(
    "reader",
    [
        read_movielens_100k,
        read_movielens_dat,
        read_movielens_csv,
        read_amazon_csv,
        read_file,
        lambda path: read_file(path, sep=","),
        lambda path: read_delimited(path, None, ("user", "item")),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_empty_file(reader, packed: bool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "empty.txt"
    path.write_bytes(gzip.compress(b"") if packed else b"")
    with pytest.raises(DataFormatError, match=r"empty\.txt:1: expected .*(empty file|no data)"):
        reader(path)


def test_empty_npz(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.npz", "")
    for read in (read_npz, lambda p: read_file(p, fmt="npz")):
        with pytest.raises(DataFormatError, match=r"empty\.npz: expected an \.npz written by Interactions\.save_npz"):
            read(path)


def test_header_only_file_has_no_data(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:2: expected 4 fields .* got no data"):
        read_movielens_csv(path)


def test_read_delimited_rejects_bad_column_spec(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "1,2\n")
    with pytest.raises(ValueError, match="columns must name 'user' and 'item'"):
        read_delimited(path, ",", columns=("user", "score"))  # type: ignore[arg-type]


def test_undecodable_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t3\t4\n\xff\xfe\t1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: expected UTF-8 text"):
        read_movielens_100k(path)


@pytest.mark.parametrize(
    ("reader", "text", "line"),
    [
        (read_file, b"1\t2\t3\t4\n\xff\xfe\t1\t2\t3\n", 2),  # while detecting the format
        (read_file, b"\xe9\t1\t2\n", 1),
        (read_movielens_csv, b"userId,movieId,rating,timestamp\n1,2,3,4\n1,\xff,3,4\n", 3),  # past the header
        (read_movielens_csv, b"userId,movieId\xff,rating,timestamp\n1,2,3,4\n", 1),  # in the header
    ],
)
def test_undecodable_bytes_are_located_everywhere(reader, text: bytes, line: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ratings"
    path.write_bytes(text)
    with pytest.raises(DataFormatError, match=rf"^{path}:{line}: expected UTF-8 text, got undecodable bytes$"):
        reader(path)


def _gzip_damaged(kind: str) -> bytes:
    text = "".join(f"{u}\t{u * 7 % 13}\t{u % 5 + 1}\t{880_000_000 + u}\n" for u in range(1, 300))
    packed = gzip.compress(text.encode(), mtime=0)
    if kind == "truncated":  # EOFError inside gzip
        return packed[: len(packed) // 2]
    if kind == "corrupt":  # zlib.error
        return packed[:20] + bytes(b ^ 0xFF for b in packed[20:40]) + packed[40:]
    return packed[:-8] + bytes(8)  # "bad-crc": gzip.BadGzipFile


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "bad-crc"])
@pytest.mark.parametrize("reader", [read_file, read_movielens_100k, lambda path: read_file(path, sep="\t")])
def test_damaged_gzip_is_a_data_format_error(reader, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "u.data.gz"
    path.write_bytes(_gzip_damaged(kind))
    with pytest.raises(DataFormatError, match=rf"^{path}: expected gzip-compressed text, got a truncated or corrupt"):
        reader(path)


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    synthetic(20, 10, 60, seed=0).save_npz(buffer)
    return buffer.getvalue()


def test_damaged_npz_is_a_data_format_error(tmp_path: Path) -> None:
    whole = _npz_bytes()
    truncated = tmp_path / "truncated.npz"  # zipfile.BadZipFile while detecting
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"truncated\.npz: expected a zip archive, got a truncated or corrupt"):
        read_file(truncated)
    with pytest.raises(DataFormatError, match=r"truncated\.npz: expected an \.npz"):
        read_npz(truncated)
    # Damaged compressed data inside an intact archive: zlib.error or a CRC mismatch on reading.
    corrupt = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        start = archive.getinfo("users.npy").header_offset + 60
    corrupt.write_bytes(whole[:start] + bytes(b ^ 0xFF for b in whole[start : start + 16]) + whole[start + 16 :])
    with pytest.raises(DataFormatError, match=r"corrupt\.npz: expected an \.npz written by Interactions\.save_npz"):
        read_file(corrupt)
    array = tmp_path / "array.npy"
    np.save(array, np.arange(3))
    with pytest.raises(DataFormatError, match=r"array\.npy: expected an \.npz .*, got a single \.npy array"):
        read_npz(array)


def test_counts_are_kept_with_a_warning(tmp_path: Path) -> None:
    plays = [1, 2, 3, 1, 5, 250, 1, 4, 2]
    text = "".join(f"u{k % 3}\ta{k}\t{n}\n" for k, n in enumerate(plays))
    path = write(tmp_path, "plays.tsv", text)
    with pytest.warns(UserWarning, match=r"plays\.tsv: the ratings look like counts .* --input binary --loss ce"):
        x = read_file(path)
    assert sorted(x.ratings.tolist()) == sorted(map(float, plays))


@pytest.mark.parametrize(
    "ratings",
    [[1, 2, 3, 4, 5], [0.5, 4.5, 5, 3], [1, 10, 7, 3], [40, 100, 75, 90, 15], [1, 1, 1, 1]],
    ids=["stars", "half-stars", "1-10", "0-100", "implicit"],
)
def test_rating_scales_do_not_warn(ratings: list[float], tmp_path: Path) -> None:
    path = write(tmp_path, "r.tsv", "".join(f"u{k % 2}\ti{k}\t{r}\n" for k, r in enumerate(ratings)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = read_file(path)
    assert sorted(x.ratings.tolist()) == sorted(map(float, ratings))


# --- what the readers used to accept silently -----------------------------------------


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "loadtxt"])
def test_duplicated_rows_warn_once_per_file_with_their_count(arrow: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not arrow:
        monkeypatch.setattr(readers, "_pyarrow", lambda: None)
    path = write(tmp_path, "dup.csv", "u1,i1,5,100\nu1,i1,3,50\nu1,i2,4,101\nu2,i1,1,7\n"
                                      "u1,i1,2,60\nu2,i1,2,8\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = read_file(path)
    assert [str(w.message) for w in caught] == [f"{path}: 3 duplicated (user, item) rows; kept the latest of each"]
    assert triples(x) == {("u1", "i1", 5.0), ("u1", "i2", 4.0), ("u2", "i1", 2.0)}  # the latest by timestamp


def test_the_bundled_data_reads_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset("ml-100k").nnz == 100_000


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "loadtxt"])
@pytest.mark.parametrize(
    ("reader", "text", "line", "expected"),
    [
        (read_file, ",i0,1,100\n,i1,2,101\nu1,i0,1,100\n", 1, "expected a user id, got an empty field"),
        (read_amazon_csv, "A1,B1,5,1\nA2,B2,4,2\n\nA2,,4,3\n", 4, "expected an item id, got an empty field"),
        (lambda path: read_delimited(path, ",", ("user", "item")), "\u00e91,i1\n\u00e92,i1\n,i2\n", 3,
         "expected a user id, got an empty field"),  # unicode ids rather than bytes
        (lambda path: read_file(path, sep="\t"), "u\ti\tr\nu1\ti1\t1\n\ti2\t1\n", 3,
         "expected a user id, got an empty field"),
    ],
    ids=["detected", "amazon", "unicode", "sep"],
)
def test_an_empty_id_field_is_located(reader, text: str, line: int, expected: str, arrow: bool,  # type: ignore[no-untyped-def]
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty field used to be the id '' of every row that had one."""
    if not arrow:
        monkeypatch.setattr(readers, "_pyarrow", lambda: None)
    path = write(tmp_path, "r.csv", text)
    with pytest.raises(DataFormatError, match=rf"^{path}:{line}: {expected}$"):
        reader(path)


def test_the_same_rows_as_csv_and_tsv_read_alike(tmp_path: Path) -> None:
    """A four-field comma file was read as an Amazon CSV, with string ids ("10" < "9"): another
    id order, and another split, than the same rows tab-separated."""
    rng = np.random.default_rng(0)
    columns = (rng.integers(0, 30, 600), rng.integers(0, 50, 600), rng.integers(1, 6, 600), rng.permutation(600))
    rows = {(int(u), int(i)): (int(r), int(t)) for u, i, r, t in zip(*columns)}  # distinct pairs
    for sep, name in ((",", "r.csv"), ("\t", "r.tsv")):
        write(tmp_path, name, "".join(sep.join(map(str, (*k, *v))) + "\n" for k, v in rows.items()))
    csv, tsv = read_file(tmp_path / "r.csv"), read_file(tmp_path / "r.tsv")
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        a, b = getattr(csv, name), getattr(tsv, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    a, b = (leave_one_out(x, num_negatives=5, seed=0) for x in (csv, tsv))
    assert np.array_equal(a.test_items, b.test_items) and np.array_equal(a.test_negatives, b.test_negatives)
    # ids that are not canonical integers stay strings, as ASINs must
    leading = read_file(write(tmp_path, "asin.csv", "0001,B00X,5,100\n1,B00Y,4,101\n"))
    assert leading.user_ids.tolist() == ["0001", "1"]


@pytest.mark.parametrize(
    ("text", "user_ids", "nnz"),
    [
        ("user_id,item_id\n1,1\n1,2\n2,1\n", [1, 2], 3),  # the header was user 'user_id'
        ("user_id,item_id\r\n\r\n1,1\r\n1,2\r\n", [1], 2),
        ("1,1\n1,2\n2,1\n", [1, 2], 3),
        ("user,5\n1,1\n2,1\n", ["1", "2", "user"], 3),  # a number in the first line: not names
    ],
)
def test_sep_detects_the_header_of_a_two_field_file(text: str, user_ids: list, nnz: int, tmp_path: Path) -> None:
    x = read_file(write(tmp_path, "pairs.csv", text), sep=",")
    assert x.user_ids.tolist() == user_ids and x.nnz == nnz
