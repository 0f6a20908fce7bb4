"""Readers for common ratings file formats, each returning :class:`Interactions`.

Parsing goes through ``np.loadtxt`` (its C tokenizer reads MovieLens-1M in
well under a second).  When that fails, or yields a non-finite rating, the
file is scanned again line by line in Python purely to produce a precise
:class:`DataFormatError` naming the file, the 1-based line number and what
was expected; the slow path therefore only runs on bad input.

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

import gzip
import io
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO, Literal, TextIO

import numpy as np

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


@contextmanager
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
            if not _is_float(text):
                problem = f"expected a numeric rating, got {text!r}"
            elif not math.isfinite(float(text)):
                problem = f"expected a finite rating, got {text!r}"
            elif float(text) < 0:
                problem = f"expected a rating >= 0, got {text!r} (targets are rating / largest rating)"
        elif column == "timestamp":
            problem = _int_problem(text, "timestamp")
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


def _ids(values: np.ndarray, id_kind: IdKind) -> np.ndarray:
    """Raw id column as int64 or str; "auto" picks int only when it round-trips.

    The round-trip check keeps ids such as ``"007"`` (or Amazon ASINs that
    happen to be all digits) from being merged with ``"7"``.
    """
    if id_kind == "int":
        return values.astype(np.int64, copy=False)
    text = values.astype(str)
    if id_kind == "auto" and len(text):
        try:
            as_int = text.astype(np.int64)
        except (ValueError, OverflowError):
            return text
        if bool(np.all(as_int.astype(str) == text)):
            return as_int
    return text


def _warn_if_counts(name: str, ratings: np.ndarray) -> None:
    largest, median = float(ratings.max()), float(np.median(ratings))
    if (
        largest > _RATING_SCALE_MAX
        and median * _COUNT_TAIL <= largest
        and bool(np.all(ratings == np.round(ratings)))
    ):
        warnings.warn(
            f"{name}: the ratings look like counts (whole numbers up to {largest:g}, median {median:g}); "
            f"they are kept as ratings, so the largest count scales every target; for implicit feedback "
            f"train on 0/1 input with --input binary --loss ce",
            UserWarning,
        )


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
    first line must carry.
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
    field_types = {"rating": "f8", "timestamp": "i8", None: "O"}
    id_type = "i8" if id_kind == "int" else "O"
    dtype = np.dtype([(f"f{k}", field_types.get(c, id_type)) for k, c in enumerate(columns)])
    first_data_line = 2 if header else 1

    with _reading(path), _open_text(path) as f:
        if header:
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
        lines: Iterable[str] = f
        delimiter = sep
        if sep is not None and len(sep) > 1:
            lines = (line.replace(sep, _UNIT_SEPARATOR) for line in f)
            delimiter = _UNIT_SEPARATOR
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                table = np.loadtxt(lines, dtype=dtype, delimiter=delimiter, comments=None, ndmin=1)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _diagnose(path, sep, columns, bool(header), id_kind, exc) from exc

    if table.shape[0] == 0:
        raise DataFormatError(
            f"{name}:{first_data_line}: expected {_describe(columns, sep)} "
            f"({_field_names(columns)}), got no data"
        )
    field = {c: table[f"f{k}"] for k, c in enumerate(columns) if c is not None}
    if "rating" in field:
        ratings = field["rating"]
        if not bool(np.isfinite(ratings).all() and (ratings >= 0).all()):
            raise _diagnose(path, sep, columns, bool(header), id_kind, "negative or non-finite rating")
        _warn_if_counts(name, ratings)
    else:
        ratings = np.ones(len(table), dtype=np.float32)
    return Interactions.from_arrays(
        _ids(field["user"], id_kind),
        _ids(field["item"], id_kind),
        ratings,
        field.get("timestamp"),
    )


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

    Ids are kept as strings: ASINs may be all digits with leading zeros.
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
    rating field is not a number is taken as a header.
    """
    head = _head(path, 1)
    name = os.fspath(path)
    if not head:
        raise DataFormatError(f"{name}:1: expected user{sep}item[{sep}rating[{sep}timestamp]], got an empty file")
    lineno, line = head[0]
    fields = line.split(sep)
    if not 2 <= len(fields) <= 4:
        raise DataFormatError(
            f"{name}:{lineno}: expected 2 to 4 fields separated by {sep!r} "
            f"(user, item[, rating[, timestamp]]), got {len(fields)}; "
            f"use read_delimited(path, sep, columns=...) for other layouts"
        )
    header = len(fields) >= 3 and not _is_float(fields[2])
    return read_delimited(path, sep, _UIRT[: len(fields)], header=header)


def read_file(path: PathLike, sep: str | None = None, fmt: str | None = None) -> Interactions:
    """Read a ratings file, detecting its format unless ``fmt`` or ``sep`` is given.

    Detection (gzip is undone first): ``.npz`` archives of
    :meth:`Interactions.save_npz`; a first line containing ``::`` is a
    MovieLens ``ratings.dat``; a ``userId,movieId`` header a MovieLens
    ``ratings.csv``; four tab-separated integers a MovieLens ``u.data``; four
    comma-separated fields with a numeric third one an Amazon ratings CSV;
    otherwise 3 or 4 fields separated by tabs, commas or runs of whitespace,
    the third numeric, are ``user item rating [timestamp]`` (a header line
    before them is skipped).  ``fmt`` names one of :data:`FORMATS`
    explicitly; ``sep`` reads any delimited ``user,item[,rating[,timestamp]]``
    file.

    Implicit feedback counts (plays, clicks) are read as ratings, unchanged.
    When the ratings look like counts (whole numbers, the largest above 10
    and at least ten times the median) a ``UserWarning`` says so: the nce
    loss divides every rating by the largest, which leaves all but the heaviest
    pairs with targets near 0.  Such data is usually trained as 0/1 input
    (``--input binary``: each observed pair is 1) with the ``ce`` loss.
    """
    name = os.fspath(path)
    if fmt is not None:
        if sep is not None:
            raise ValueError("give either fmt= or sep=, not both")
        if fmt not in FORMATS:
            raise ValueError(f"unknown fmt {fmt!r}; known formats: {', '.join(FORMATS)}")
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
        raise DataFormatError(
            f"{name}: a zip archive that is not an Interactions .npz; extract its ratings file, "
            f"or use load_dataset(name, data=PATH) for a registered data set"
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
        return read_amazon_csv(path)
    layout = _generic_layout(head)
    if layout is not None:
        generic_sep, width, header = layout
        return read_delimited(path, generic_sep, _UIRT[:width], header=header)
    raise DataFormatError(
        f"{name}:{lineno}: cannot tell the format from {line[:80]!r}; understood formats: "
        f"{_UNDERSTOOD}; for any other delimited user,item[,rating[,timestamp]] file pass sep="
    )
