"""Readers for common ratings file formats, each returning :class:`Interactions`.

A file is read in chunks of :data:`CHUNK_BYTES`, each chunk's ids turned into
integer codes at once (:class:`~dmfx.data._idcodes.IdCoder`), so that a parse
holds Python strings for one chunk's ids at most, never for every rating, and
its peak memory stays a small multiple of the arrays it returns (2 to 2.5
times for 5M Amazon-style ratings, where one whole-file parse took 7.6 times;
``benchmarks/ingest_memory.py``).  The chunks are parsed by pyarrow's
streaming CSV reader where pyarrow is installed (``pip install
dmfx[parquet]``) and the file is one it reads exactly as ``np.loadtxt`` does,
else by ``np.loadtxt`` (its C tokenizer reads MovieLens-1M in well under a
second); the result is the same.  When parsing fails, or yields a negative or
non-finite rating, the file is scanned again line by line in Python purely to
produce a precise :class:`DataFormatError` naming the file, the 1-based line
number and what was expected; the slow path therefore only runs on bad input.

Every reader accepts gzip-compressed input transparently (detected by the
gzip magic bytes, not by the file name).  Fields are split on the separator
only: quoted fields are not supported, as no supported format uses them.

Every problem with a file's contents, a truncated or corrupt gzip or zip
stream included, is a :class:`DataFormatError` whose one-line message starts
with the file name (and the line, where there is one).  Ratings must be finite
and >= 0: the losses use rating / largest rating as a target in [0, 1].
Ratings that look like counts (see :func:`read_file`) are kept as they
are, with a ``UserWarning``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import BinaryIO, Literal, TextIO

import numpy as np

from ._idcodes import IdCoder, gather
from .cache import cached
from .errors import DataFormatError
from .interactions import Interactions, read_npz

__all__ = [
    "FORMATS",
    "read_amazon_csv",
    "read_delimited",
    "read_file",
    "read_movielens_100k",
    "read_movielens_csv",
    "read_movielens_dat",
]

PathLike = str | os.PathLike[str]
Column = Literal["user", "item", "rating", "timestamp"] | None
IdKind = Literal["int", "str", "auto"]

_UIRT: tuple[Column, ...] = ("user", "item", "rating", "timestamp")
_ML_CSV_HEADER = "userId,movieId,rating,timestamp"
# loadtxt only splits on one character; multi-character separators such as
# MovieLens' "::" are rewritten to this control character on the fly.
_UNIT_SEPARATOR = "\x1f"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_INT64 = np.iinfo(np.int64)
# Text parsed per chunk (characters for np.loadtxt, bytes for pyarrow, which takes at most 1 MiB):
# bounds what a parse holds beyond its result (np.loadtxt makes a Python string of every id of a
# chunk).  Larger chunks are no faster.  Tests shrink it so that ids span chunks.
CHUNK_BYTES = 4 << 20
# Counts rather than ratings: whole numbers, the largest above any common rating
# scale (1-5, 1-10), and a heavy tail (the median at most a tenth of the largest).
_RATING_SCALE_MAX = 10
_COUNT_TAIL = 10


def _magic(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _open_binary(path: PathLike) -> BinaryIO:
    if _magic(path).startswith(_GZIP_MAGIC):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _open_text(path: PathLike) -> TextIO:
    # utf-8-sig drops a byte-order mark that spreadsheet exports like to add.
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig")


@contextlib.contextmanager
def _reading(path: PathLike) -> Iterator[None]:
    """Turn a truncated or corrupt gzip stream, met wherever the file is read, into a DataFormatError."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            f"{os.fspath(path)}: expected gzip-compressed text, got a truncated or corrupt gzip stream ({exc})"
        ) from exc


def _decode(path: PathLike, raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError:
        raise DataFormatError(f"{os.fspath(path)}:{lineno}: expected UTF-8 text, got undecodable bytes") from None


def _undecodable(path: PathLike) -> DataFormatError:
    """The error for the first line that is not UTF-8, once decoding the text stream failed."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                _decode(path, raw, lineno)
            except DataFormatError as exc:
                return exc
    return DataFormatError(f"{os.fspath(path)}: expected UTF-8 text, got undecodable bytes")


def _describe(columns: Sequence[Column], sep: str | None) -> str:
    return f"{len(columns)} fields separated by {'whitespace' if sep is None else repr(sep)}"


def _field_names(columns: Sequence[Column]) -> str:
    return ", ".join(c or "(ignored)" for c in columns)


def _loadtxt_syntax(text: str) -> bool:
    # Python's int() and float() also take digit-group underscores and
    # non-ASCII digits, which np.loadtxt refuses.
    core = text.strip()
    return core.isascii() and "_" not in core


def _is_int(text: str) -> bool:
    """Whether ``text`` is an integer as np.loadtxt reads one (range not checked)."""
    try:
        int(text)
    except ValueError:
        return False
    return _loadtxt_syntax(text)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return _loadtxt_syntax(text)


def _int_problem(text: str, what: str) -> str | None:
    if not _is_int(text):
        return f"expected an integer {what}, got {text!r}"
    if not _INT64.min <= int(text) <= _INT64.max:
        return f"expected an integer {what} in the int64 range, got {text!r}"
    return None


def _rating_problem(text: str) -> str | None:
    """What is wrong with one rating field, or None: the losses divide by the largest rating,
    for targets in [0, 1]."""
    if not _is_float(text):
        return f"expected a numeric rating, got {text!r}"
    if not math.isfinite(float(text)):
        return f"expected a finite rating, got {text!r}"
    if float(text) < 0:
        return f"expected a rating >= 0, got {text!r} (targets are rating / largest rating)"
    return None


def _check_fields(fields: list[str], columns: Sequence[Column], sep: str | None, id_kind: IdKind) -> str | None:
    """What is wrong with one split line, or None; mirrors the fast path's parsing."""
    if len(fields) != len(columns):
        return (
            f"expected {_describe(columns, sep)}, got {len(fields)} "
            f"(fields: {_field_names(columns)})"
        )
    for column, text in zip(columns, fields, strict=True):
        problem = None
        if column == "rating":
            problem = _rating_problem(text)
        elif column == "timestamp":
            problem = _int_problem(text, "timestamp")
        elif column in ("user", "item") and not text:
            problem = f"expected {'an item' if column == 'item' else 'a user'} id, got an empty field"
        elif column in ("user", "item") and id_kind == "int":
            problem = _int_problem(text, f"{column} id")
        if problem is not None:
            return problem
    return None


def _diagnose(
    path: PathLike,
    sep: str | None,
    columns: Sequence[Column],
    has_header: bool,
    id_kind: IdKind,
    cause: object,
) -> DataFormatError:
    """Re-scan the file to locate the first bad line after the fast path failed."""
    name = os.fspath(path)
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = _decode(path, raw, lineno)
            except DataFormatError as exc:
                return exc
            if has_header and lineno == 1:
                continue
            line = line.rstrip("\r\n")
            if not line or (sep is None and not line.strip()):
                continue  # loadtxt skips these too
            if not line.strip():
                return DataFormatError(f"{name}:{lineno}: expected {_describe(columns, sep)}, got a blank line")
            problem = _check_fields(line.split(sep), columns, sep, id_kind)
            if problem is not None:
                return DataFormatError(f"{name}:{lineno}: {problem}")
    return DataFormatError(f"{name}: could not parse as {_describe(columns, sep)}: {cause}")


# The start of the warning's text after the file name, for filters.
COUNTS_WARNING = ".*: the ratings look like counts"


def _warn_if_counts(name: str, ratings: np.ndarray) -> None:
    largest = float(ratings.max())
    if largest <= _RATING_SCALE_MAX:
        return  # before the median, which copies every rating
    median = float(np.median(ratings))
    if (
        median * _COUNT_TAIL <= largest
        and bool(np.all(ratings == np.round(ratings)))
    ):
        warnings.warn(
            f"{name}: the ratings look like counts (whole numbers up to {largest:g}, median {median:g}); "
            f"they are kept as ratings, so the largest count scales every target; for implicit feedback "
            f"train on 0/1 input with --input binary --loss ce",
            UserWarning,
        )


def cached_with_count_check(path: PathLike, how: str, read: Callable[[], Interactions],
                            cache_dir=None, enabled: bool = True) -> Interactions:
    """:func:`dmfx.data.cache.cached`, warning about count-like ratings (see
    :func:`_warn_if_counts`) whether the file was parsed or its parse loaded from the cache."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=COUNTS_WARNING, category=UserWarning)
        data = cached(path, how, read, cache_dir, enabled=enabled)
    _warn_if_counts(os.fspath(path), data.ratings)
    return data


def _strings(values: np.ndarray) -> np.ndarray:
    """Python strings (np.loadtxt's object column) as bytes (``S``) where all are ASCII, else unicode.

    Both read back as the strings ``values.astype(str)`` gives; IdCoder sorts bytes faster.
    """
    try:
        return values.astype("S")
    except UnicodeEncodeError:
        return values.astype(str)


def _skip_header(f: TextIO, path: PathLike, header: bool | str) -> None:
    """Read the header line of ``f``, which must be ``header`` where that is a string."""
    name = os.fspath(path)
    try:
        first = f.readline()
    except UnicodeDecodeError as exc:
        raise _undecodable(path) from exc
    if not first:
        expected = f"header {header!r}" if isinstance(header, str) else "a header line"
        raise DataFormatError(f"{name}:1: expected {expected}, got an empty file")
    got = first.strip()
    if isinstance(header, str) and got != header:
        raise DataFormatError(f"{name}:1: expected header {header!r}, got {got!r}")


# What one chunk of a file yields: for "user" and "item" (values, rows), the ids of the rows
# being ``values[rows]`` (``values`` themselves where ``rows`` is None); for "rating" and
# "timestamp" one value per row.
_Chunk = dict[str, "tuple[np.ndarray, np.ndarray | None] | np.ndarray"]


class _Gathered:
    """A file's columns gathered chunk by chunk: ids by their coders, numbers as read.

    Ratings stay float64 until the end, as np.loadtxt read them, so that the count warning sees
    the same values as when the whole file was parsed at once.
    """

    def __init__(self, id_kind: IdKind) -> None:
        self.coders = {c: IdCoder(auto_int=id_kind == "auto") for c in ("user", "item")}
        self.numbers: dict[str, list[np.ndarray]] = {"rating": [], "timestamp": []}
        self.rows = 0

    def add(self, chunk: _Chunk, diagnose: Callable[[object], DataFormatError]) -> None:
        ratings = chunk.get("rating")
        if ratings is not None and not bool(np.isfinite(ratings).all() and (ratings >= 0).all()):
            raise diagnose("negative or non-finite rating")
        for column in self.coders:
            values = chunk[column][0]
            # An empty field would be one id for every such row; bytes and unicode alike.
            if values.dtype.kind in "SU" and bool((values == values.dtype.type()).any()):
                raise diagnose(f"empty {column} id")
        for column, value in chunk.items():
            if column in self.coders:
                self.coders[column].add(*value)
            else:
                self.numbers[column].append(value)
        values, rows = chunk["user"]
        self.rows += len(values if rows is None else rows)

    def interactions(self, name: str) -> Interactions:
        """The gathered file as Interactions; the chunks are released as they are copied.

        Of rows that repeat a (user, item) pair the latest is kept (see
        :meth:`Interactions.from_arrays`), with a warning that says how many were dropped.
        """
        if self.numbers["rating"]:
            ratings = gather(self.numbers["rating"], np.float64)
            _warn_if_counts(name, ratings)
            ratings = ratings.astype(np.float32)
        else:
            ratings = np.ones(self.rows, dtype=np.float32)
        timestamps = gather(self.numbers["timestamp"], np.int64) if self.numbers["timestamp"] else None
        user_ids, users = self.coders["user"].finish()
        item_ids, items = self.coders["item"].finish()
        data = Interactions._latest(user_ids, item_ids, users, items, ratings, timestamps)
        dropped = self.rows - data.nnz
        if dropped:
            warnings.warn(f"{name}: {dropped} duplicated (user, item) row{'s' if dropped > 1 else ''}; "
                          f"kept the latest of each", UserWarning)
        return data


def _loadtxt_chunks(
    path: PathLike,
    sep: str | None,
    columns: Sequence[Column],
    header: bool | str,
    id_kind: IdKind,
    diagnose: Callable[[object], DataFormatError],
) -> Iterator[_Chunk]:
    """The file in chunks of about CHUNK_BYTES characters, each cut at a line end and parsed by
    ``np.loadtxt`` exactly as one call on the whole text would parse those lines."""
    field_types = {"rating": "f8", "timestamp": "i8", None: "O"}
    id_type = "i8" if id_kind == "int" else "O"
    dtype = np.dtype([(f"f{k}", field_types.get(c, id_type)) for k, c in enumerate(columns)])
    delimiter = sep if sep is None or len(sep) == 1 else _UNIT_SEPARATOR
    data_line = first_line = 2 if header else 1
    with _reading(path), _open_text(path) as f:
        if header:
            _skip_header(f, path, header)
        while True:
            try:
                text = f.read(CHUNK_BYTES)
                if text and not text.endswith("\n"):
                    text += f.readline()
            except UnicodeDecodeError as exc:
                raise diagnose(exc) from exc
            if not text:
                return
            if delimiter != sep:
                text = text.replace(sep, delimiter)  # type: ignore[arg-type]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                    table = np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=delimiter, comments=None, ndmin=1)
            except ValueError as exc:
                # np.loadtxt's own message, shown where the line scan finds nothing, counts rows
                # from the start of this chunk.
                cause = exc if first_line == data_line else f"{exc} (rows counted from line {first_line})"
                raise diagnose(cause) from exc
            first_line += text.count("\n")
            del text
            chunk: _Chunk = {}
            for k, column in enumerate(columns):
                if column in ("user", "item"):
                    values = table[f"f{k}"]
                    # Copies either way, so that the chunk's table is freed.
                    chunk[column] = (np.ascontiguousarray(values) if id_kind == "int" else _strings(values), None)
                elif column is not None:
                    chunk[column] = np.ascontiguousarray(table[f"f{k}"])
            yield chunk


@functools.cache
def _pyarrow() -> ModuleType | None:
    """pyarrow with its csv and compute modules loaded, or None where it is not installed."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
    except ImportError:
        return None
    return pyarrow


# Numbers as pyarrow may convert them: forms that np.loadtxt reads to the same value.  Others
# (a leading "+", padding, "nan"; and hexadecimal, which pyarrow's cast would take) leave the
# file to np.loadtxt.
_INT_TEXT = r"^-?[0-9]+$"
_FLOAT_TEXT = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


def _arrow_numbers(pa: ModuleType, text: object, kind: type) -> np.ndarray | None:
    """A pyarrow string array as int64 or float64 (``kind``), or None unless every entry is plain."""
    plain = pa.compute.match_substring_regex(text, _INT_TEXT if kind is int else _FLOAT_TEXT)
    if not pa.compute.all(plain, min_count=0).as_py():
        return None
    return pa.compute.cast(text, pa.int64() if kind is int else pa.float64()).to_numpy()


def _arrow_strings(pa: ModuleType, text: object) -> np.ndarray:
    """A pyarrow string array as numpy strings: bytes (``S``) where all are ASCII, built in C
    (NUL-padded to one width, then viewed), else unicode through Python strings."""
    pc = pa.compute
    if not pc.all(pc.string_is_ascii(text), min_count=0).as_py():
        return text.to_numpy(zero_copy_only=False).astype(str)  # type: ignore[attr-defined]
    width = max(pc.max(pc.binary_length(text)).as_py() or 0, 1)
    padded = pc.utf8_rpad(text, width=width, padding="\0")
    start = int(np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset])
    return np.frombuffer(padded.buffers()[2], dtype=f"S{width}", count=len(padded), offset=start)


class _NotForArrow(Exception):
    """The file holds something that only np.loadtxt reads as the readers always have."""


def _arrow_chunks(pa: ModuleType, path: PathLike, sep: str, columns: Sequence[Column], header: bool | str,
                  id_kind: IdKind) -> Iterator[_Chunk]:
    """The file in blocks as pyarrow's streaming CSV reader parses them: CHUNK_BYTES bytes, at
    most 1 MiB (pyarrow's default; larger blocks leave its threads idle).

    Ids and ratings come dictionary-encoded: each block's distinct values are converted once.
    Every field is converted, ignored ones included, so that all of the text is checked to be
    UTF-8 as np.loadtxt's path checks it.  Raises _NotForArrow for a number that is not plain.
    """
    csv = pa.csv
    names = [f"f{k}" for k in range(len(columns))]
    coded = pa.dictionary(pa.int32(), pa.string())
    types = {n: coded if c in ("user", "item", "rating") else pa.string() for n, c in zip(names, columns)}
    stream = gzip.open(path, "rb") if _magic(path).startswith(_GZIP_MAGIC) else pa.input_stream(
        os.fspath(path), compression=None)  # compression=None: by magic bytes, as everywhere here
    with stream, csv.open_csv(
        stream,
        read_options=csv.ReadOptions(column_names=names, skip_rows=int(bool(header)),
                                     block_size=min(CHUNK_BYTES, 1 << 20)),
        parse_options=csv.ParseOptions(delimiter=sep, quote_char=False, double_quote=False, escape_char=False,
                                       newlines_in_values=False, ignore_empty_lines=True),
        convert_options=csv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                           quoted_strings_can_be_null=False),
    ) as reader:
        for batch in reader:
            chunk: _Chunk = {}
            for name, column in zip(names, columns):
                array = batch.column(name)
                if column in ("user", "item"):
                    if id_kind == "int":
                        values = _arrow_numbers(pa, array.dictionary, int)
                        if values is None:
                            raise _NotForArrow
                    else:
                        values = _arrow_strings(pa, array.dictionary)
                    chunk[column] = (values, array.indices.to_numpy())
                elif column == "rating":
                    values = _arrow_numbers(pa, array.dictionary, float)
                    if values is None:
                        raise _NotForArrow
                    chunk[column] = values[array.indices.to_numpy()]
                elif column == "timestamp":
                    values = _arrow_numbers(pa, array, int)
                    if values is None:
                        raise _NotForArrow
                    chunk[column] = values
            yield chunk


def _read_with_arrow(path: PathLike, sep: str | None, columns: Sequence[Column], header: bool | str,
                     id_kind: IdKind, diagnose: Callable[[object], DataFormatError]) -> _Gathered | None:
    """The file parsed by pyarrow (its parser is multithreaded and makes no Python objects), or None.

    None where pyarrow is not installed, the separator is not one ASCII character, or the file
    holds anything pyarrow would not read exactly as np.loadtxt does, bad input included: the
    np.loadtxt path then reads it, and reports what is wrong.  A file without data rows reads
    as None too, so that the messages about empty files come from one place.
    """
    pa = _pyarrow()
    if pa is None or sep is None or len(sep) != 1 or not sep.isascii() or sep in "\r\n":
        return None
    if header:
        try:
            with _reading(path), _open_text(path) as f:
                _skip_header(f, path, header)
        except DataFormatError:
            return None
    gathered = _Gathered(id_kind)
    try:
        with contextlib.closing(_arrow_chunks(pa, path, sep, columns, header, id_kind)) as chunks:
            for chunk in chunks:
                gathered.add(chunk, diagnose)
    except DataFormatError:
        raise  # a bad rating, located by diagnose
    # ArrowInvalid for text it cannot parse or convert; OSError, EOFError and zlib.error from a
    # damaged gzip stream.
    except (_NotForArrow, pa.ArrowException, OSError, EOFError, zlib.error):
        return None
    return gathered if gathered.rows else None


def _read_table(
    path: PathLike,
    sep: str | None,
    columns: Sequence[Column],
    *,
    header: bool | str,
    id_kind: IdKind,
) -> Interactions:
    """Parse a delimited file whose fields are named by ``columns``.

    ``sep=None`` splits on runs of whitespace.  ``header`` is False (no
    header), True (skip the first line) or the exact header text that the
    first line must carry.  The file is read in chunks (see CHUNK_BYTES), by
    pyarrow where it can and np.loadtxt otherwise, with the same result.
    """
    if sep == "":
        raise ValueError("sep must be a non-empty string or None (whitespace)")
    named = [c for c in columns if c is not None]
    unknown = sorted(set(named) - {"user", "item", "rating", "timestamp"})
    if unknown or len(named) != len(set(named)) or "user" not in named or "item" not in named:
        raise ValueError(
            f"columns must name 'user' and 'item' once each, optionally 'rating' and "
            f"'timestamp', and None for ignored fields; got {tuple(columns)}"
        )
    name = os.fspath(path)
    diagnose = functools.partial(_diagnose, path, sep, columns, bool(header), id_kind)
    gathered = _read_with_arrow(path, sep, columns, header, id_kind, diagnose)
    if gathered is None:
        gathered = _Gathered(id_kind)
        with contextlib.closing(_loadtxt_chunks(path, sep, columns, header, id_kind, diagnose)) as chunks:
            for chunk in chunks:
                gathered.add(chunk, diagnose)
    if gathered.rows == 0:
        raise DataFormatError(
            f"{name}:{2 if header else 1}: expected {_describe(columns, sep)} "
            f"({_field_names(columns)}), got no data"
        )
    return gathered.interactions(name)


def read_movielens_100k(path: PathLike) -> Interactions:
    """MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``."""
    return _read_table(path, "\t", _UIRT, header=False, id_kind="int")


def read_movielens_dat(path: PathLike) -> Interactions:
    """MovieLens-1M/10M ``ratings.dat``: ``user::item::rating::timestamp``."""
    return _read_table(path, "::", _UIRT, header=False, id_kind="int")


def read_movielens_csv(path: PathLike) -> Interactions:
    """MovieLens "latest" ``ratings.csv`` with header ``userId,movieId,rating,timestamp``."""
    return _read_table(path, ",", _UIRT, header=_ML_CSV_HEADER, id_kind="int")


def read_amazon_csv(path: PathLike) -> Interactions:
    """Amazon "ratings only" CSV: ``user,item,rating,timestamp`` without header.

    Ids are kept as strings: ASINs may be all digits with leading zeros.  (:func:`read_file`
    detects such a file but reads its ids as :func:`read_delimited` does, integers where every
    one is a canonical integer; ``fmt="amazon-csv"`` reads it here.)
    """
    return _read_table(path, ",", _UIRT, header=False, id_kind="str")


def read_delimited(
    path: PathLike,
    sep: str | None,
    columns: Sequence[Column] = _UIRT,
    header: bool = False,
) -> Interactions:
    """Any delimited file; ``columns`` says which field is which.

    Each entry of ``columns`` is ``"user"``, ``"item"``, ``"rating"``,
    ``"timestamp"`` or None for a field to ignore; every line must have
    exactly ``len(columns)`` fields, split on ``sep`` (None: runs of
    whitespace).  Without a rating column every rating is 1.0 (implicit
    feedback); without a timestamp column ``timestamps`` is None.  Ids become
    int64 when every id is a canonical integer, else strings.  ``header=True``
    skips the first line.
    """
    return _read_table(path, sep, tuple(columns), header=header, id_kind="auto")


FORMATS: dict[str, Callable[[PathLike], Interactions]] = {
    "npz": read_npz,
    "ml-100k": read_movielens_100k,
    "ml-dat": read_movielens_dat,
    "ml-csv": read_movielens_csv,
    "amazon-csv": read_amazon_csv,
}
"""Format names accepted by ``read_file(fmt=...)``."""

_UNDERSTOOD = (
    ".npz from Interactions.save_npz; MovieLens u.data (user item rating timestamp, tab-separated); "
    "MovieLens ratings.dat (user::item::rating::timestamp); MovieLens ratings.csv (header "
    "userId,movieId,rating,timestamp); Amazon ratings CSV (user,item,rating,timestamp, no header); "
    "user item rating[ timestamp] separated by tabs, commas or spaces, optionally after a header line; "
    "any of the text formats gzip-compressed"
)
# Separators tried, in this order, for the generic ``user item rating [timestamp]``
# layout; None is runs of whitespace.
_GENERIC_SEPS = ("\t", ",", None)


def _head(path: PathLike, count: int) -> list[tuple[int, str]]:
    """1-based numbers and texts of the first ``count`` non-blank lines (fewer in a shorter file)."""
    head: list[tuple[int, str]] = []
    with _reading(path), _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    head.append((lineno, line.rstrip("\r\n")))
                    if len(head) == count:
                        break
        except UnicodeDecodeError as exc:
            raise _undecodable(path) from exc
    return head


def _generic_layout(head: list[tuple[int, str]]) -> tuple[str | None, int, bool] | None:
    """(sep, number of fields, header) of a ``user item rating [timestamp]`` file, or None.

    The first line has 3 or 4 fields and a numeric third one; or it is a
    header and the second line is such a line.
    """
    for sep in _GENERIC_SEPS:
        first, *rest = (line.split(sep) for _, line in head)
        if len(first) not in (3, 4):
            continue
        if _is_float(first[2]):
            return sep, len(first), False
        if rest and len(rest[0]) == len(first) and _is_float(rest[0][2]):
            return sep, len(first), True
    return None


def _read_sniffed(path: PathLike, sep: str) -> Interactions:
    """``read_delimited`` with columns and header guessed from the first line.

    2, 3 or 4 fields mean user,item[,rating[,timestamp]]; a first line whose
    rating field is not a number is taken as a header, and so is a first line of
    two fields that are not numbers followed by a line of two integer ids.
    """
    head = _head(path, 2)
    name = os.fspath(path)
    if not head:
        raise DataFormatError(f"{name}:1: expected user{sep}item[{sep}rating[{sep}timestamp]], got an empty file")
    lineno, line = head[0]
    fields = line.split(sep)
    if not 2 <= len(fields) <= 4:
        raise DataFormatError(
            f"{name}:{lineno}: expected 2 to 4 fields separated by {sep!r} "
            f"(user, item[, rating[, timestamp]]), got {len(fields)}; "
            f"use read_delimited(path, sep, columns=...) for other layouts (on the command line: "
            f"a file of those columns)"
        )
    if len(fields) >= 3:
        header = not _is_float(fields[2])
    else:  # no rating to look at: names above integer ids (string ids cannot tell them apart)
        second = head[1][1].split(sep) if len(head) > 1 else []
        header = (not any(_is_float(f) for f in fields) and len(second) == 2
                  and all(_is_int(f) for f in second))
    return read_delimited(path, sep, _UIRT[: len(fields)], header=header)


def read_file(path: PathLike, sep: str | None = None, fmt: str | None = None, cache: bool = True) -> Interactions:
    """Read a ratings file, detecting its format unless ``fmt`` or ``sep`` is given.

    Detection (gzip is undone first): ``.npz`` archives of
    :meth:`Interactions.save_npz`; a first line containing ``::`` is a
    MovieLens ``ratings.dat``; a ``userId,movieId`` header a MovieLens
    ``ratings.csv``; four tab-separated integers a MovieLens ``u.data``; four
    comma-separated fields with a numeric third one an Amazon-style
    ``user,item,rating,timestamp`` CSV; otherwise 3 or 4 fields separated by
    tabs, commas or runs of whitespace, the third numeric, are ``user item
    rating [timestamp]`` (a header line before them is skipped).  Detected
    files other than MovieLens' get ids as :func:`read_delimited` gives them:
    int64 where every id of the column is a canonical integer, else strings
    (a column with an ASIN such as ``B00005JNOG`` or an id such as ``0001``
    stays strings); ``fmt="amazon-csv"`` keeps every id a string.  ``fmt``
    names one of :data:`FORMATS` explicitly; ``sep`` reads any delimited
    ``user,item[,rating[,timestamp]]`` file.

    Rows that repeat a (user, item) pair keep the latest (by timestamp, else
    the last in the file), as :meth:`Interactions.from_arrays` does; the text
    readers warn how many rows were dropped (again when the parse comes from
    the cache).

    Implicit feedback counts (plays, clicks) are read as ratings, unchanged.
    When the ratings look like counts (whole numbers, the largest above 10
    and at least ten times the median) a ``UserWarning`` says so: the nce
    loss divides every rating by the largest, which leaves all but the heaviest
    pairs with targets near 0.  Such data is usually trained as 0/1 input
    (``--input binary``: each observed pair is 1) with the ``ce`` loss.

    A text file of at least :data:`dmfx.data.cache.CACHE_MIN_BYTES` is parsed
    once: what was read is kept in the cache directory and loaded from there
    until the file changes.  ``cache=False`` (or ``DMFX_NO_CACHE=1``) parses
    it every time and writes nothing.
    """
    if fmt is not None:
        if sep is not None:
            raise ValueError("give either fmt= or sep=, not both")
        if fmt not in FORMATS:
            raise ValueError(f"unknown fmt {fmt!r}; known formats: {', '.join(FORMATS)}")
    if fmt == "npz" or (fmt is None and sep is None and _magic(path) == _ZIP_MAGIC):
        return _read_file(path, sep, fmt)  # binary already: nothing to gain from a cache
    return cached_with_count_check(path, f"read_file(sep={sep!r}, fmt={fmt!r})",
                                   lambda: _read_file(path, sep, fmt), enabled=cache)


def _read_scipy_npz(path: PathLike) -> Interactions:
    """A users x items matrix written by ``scipy.sparse.save_npz``: one interaction per stored
    entry, rated its value, ids the row and column numbers (:meth:`Interactions.from_scipy`)."""
    import scipy.sparse

    name = os.fspath(path)
    try:
        matrix = scipy.sparse.load_npz(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFormatError(f"{name}: expected a scipy.sparse .npz ({exc})") from exc
    try:
        return Interactions.from_scipy(matrix)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{name}: {exc}") from exc


def _read_file(path: PathLike, sep: str | None, fmt: str | None) -> Interactions:
    """:func:`read_file` without the cache, its arguments checked."""
    name = os.fspath(path)
    if fmt is not None:
        return FORMATS[fmt](path)
    if sep is not None:
        return _read_sniffed(path, sep)
    if _magic(path) == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        # UnicodeDecodeError: a member name flagged as UTF-8 that is not.
        except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{name}: expected a zip archive, got a truncated or corrupt one ({exc})") from exc
        if "users.npy" in members:
            return read_npz(path)
        if {"format.npy", "shape.npy", "data.npy"} <= set(members):
            return _read_scipy_npz(path)
        raise DataFormatError(
            f"{name}: a zip archive that is neither an Interactions .npz nor a scipy.sparse one; "
            f"extract its ratings file, or read it as a registered data set (--dataset NAME --data PATH, "
            f"load_dataset(NAME, data=PATH))"
        )
    head = _head(path, 2)
    if not head:
        raise DataFormatError(
            f"{name}:1: expected a ratings file, got an empty file; understood formats: {_UNDERSTOOD}"
        )
    lineno, line = head[0]
    tab_fields = line.split("\t")
    comma_fields = line.split(",")
    if "::" in line:
        return read_movielens_dat(path)
    if line.strip().startswith("userId,movieId"):
        return read_movielens_csv(path)
    if len(tab_fields) == 4 and all(_is_int(f) for f in tab_fields):
        return read_movielens_100k(path)
    if len(comma_fields) == 4 and _is_float(comma_fields[2]):
        # Ids as every other detected layout reads them, so that the same rows as .csv and as
        # .tsv give the same ids and split; a column with an ASIN (letters or a leading zero)
        # stays strings.
        return read_delimited(path, ",", _UIRT)
    layout = _generic_layout(head)
    if layout is not None:
        generic_sep, width, header = layout
        return read_delimited(path, generic_sep, _UIRT[:width], header=header)
    raise DataFormatError(
        f"{name}:{lineno}: cannot tell the format from {line[:80]!r}; understood formats: "
        f"{_UNDERSTOOD}; for any other delimited user,item[,rating[,timestamp]] file pass sep= "
        f"(--sep on the command line)"
    )
