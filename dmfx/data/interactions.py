"""The :class:`Interactions` container that every other part of dmfx consumes.

A ratings data set is kept as parallel numpy arrays (one entry per observed
``(user, item)`` pair) plus the two id maps that translate between the raw ids
found in the file and the contiguous internal indices the model uses.  The
interaction matrix ``Y`` of the DMF paper is derived from it on demand, as a
CSR (rows = users) or, transposed, as the CSC of ``Y`` (rows = items).

Round trips with the formats other libraries hold: :meth:`Interactions.from_scipy` /
:meth:`~Interactions.to_scipy` (a sparse matrix: indices, no raw ids),
:meth:`Interactions.from_pandas` / :meth:`~Interactions.to_pandas` (a table of raw ids), and
:meth:`~Interactions.csr` for the ops.
"""

from __future__ import annotations

import lzma
import operator
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
import torch

from .errors import DataFormatError
from .sparse import CSR, as_csr

if TYPE_CHECKING:  # optional: imported where it is used
    import pandas

__all__ = ["CSR", "Interactions", "read_npz"]

Values = Literal["rating", "binary"]

_NPZ_REQUIRED = ("user_ids", "item_ids", "users", "items", "ratings")
# numpy dtype kinds each column of Interactions.from_pandas may hold (strings come as objects;
# tz-aware datetimes as datetime64, converted to UTC first).
_DATAFRAME_KINDS = {
    "user": ("iuOUS", "integers or strings"),
    "item": ("iuOUS", "integers or strings"),
    "rating": ("iufb", "numbers or booleans"),
    "timestamp": ("iuM", "integers or datetimes (datetime64, naive or tz-aware)"),
}


_INT64_MAX = int(np.iinfo(np.int64).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _beyond_int64(what: str, ids: list) -> ValueError:
    """The error for integer ids that int64 cannot hold (Python ints, of any size)."""
    largest, smallest = max(ids), min(ids)
    if largest > _INT64_MAX:
        return ValueError(f"{what} holds ids above 2**63 - 1 ({largest}), which int64 ids "
                          "cannot hold: pass them as strings")
    return ValueError(f"{what} holds ids below -2**63 ({smallest}), which int64 ids cannot "
                      "hold: pass them as strings")


def _as_id_array(raw: object, what: str) -> np.ndarray:
    """Raw ids as a 1-D int64 or unicode array.

    Object and bytes arrays become unicode so that sorting and searching run
    in C rather than through Python comparisons.
    """
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > _INT64_MAX:
        raise _beyond_int64(what, [int(arr.max())])
    if arr.dtype.kind in "iu" or (arr.size == 0 and arr.dtype.kind not in "USO"):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        try:
            return np.char.decode(arr, "utf-8") if arr.size else arr.astype(str)
        except UnicodeDecodeError:
            raise ValueError(f"{what} holds bytes that are not UTF-8 text") from None
    if arr.dtype.kind == "O":
        # One kind of id: as text, the int 1 and the string "1" would become one id.
        kinds = {"str" if isinstance(x, str) else "int"
                 if isinstance(x, (int, np.integer)) and not isinstance(x, bool) else
                 type(x).__name__ for x in arr.tolist()}
        if kinds <= {"str"}:
            return arr.astype(str)
        if kinds == {"int"}:
            ints = np.array(arr.tolist())
            if ints.dtype.kind in "iu":  # else numpy fell back to float64 or object: too big
                return _as_id_array(ints, what)
            raise _beyond_int64(what, [int(x) for x in arr.tolist()])
        raise TypeError(f"{what} must hold integers or strings, one kind for all, got "
                        f"{', '.join(sorted(kinds))}")
    if arr.dtype.kind == "f" and not isinstance(raw, np.ndarray):
        # numpy makes float64 of a sequence of Python ints that int64 cannot hold
        items = np.asarray(raw, dtype=object).tolist()
        if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            raise _beyond_int64(what, items)
    raise TypeError(f"{what} must hold integers or strings, got dtype {arr.dtype}")


def _as_index_array(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > _INT64_MAX:  # the cast would wrap
        raise ValueError(f"{what} holds values above 2**63 - 1 ({arr.max()}), which int64 "
                         "cannot hold")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_ratings(values: object, what: str) -> np.ndarray:
    """Ratings as the 1-D float32 array Interactions stores; a finite value beyond float32's
    range (which the cast would make infinite) raises, naming ``what``."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        finite = arr[np.isfinite(arr)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        if largest > _FLOAT32_MAX:
            raise ValueError(f"{what} holds ratings beyond float32's range ({largest:g}), the "
                             "dtype ratings are stored in")
    return np.asarray(arr, dtype=np.float32).reshape(-1)


def _coerce_raw_id(raw_id: object, ids: np.ndarray) -> object | None:
    """Convert a raw id to the kind stored in ``ids``; None when impossible.

    A command line hands over ``"196"`` for MovieLens' integer ids and an API
    caller may pass ``196`` for string ids, so both directions are accepted.
    """
    if ids.dtype.kind in "iu":
        if isinstance(raw_id, (str, np.str_)):
            try:
                return int(raw_id)
            except ValueError:
                return None
        try:
            return operator.index(raw_id)  # type: ignore[arg-type]
        except TypeError:
            return None
    return str(raw_id)


def _import_pandas(caller: str):
    try:
        import pandas
    except ImportError as error:
        raise ImportError(
            f"{caller} needs pandas, which is not installed: pip install pandas "
            "(or pip install 'dmfx[pandas]')"
        ) from error
    return pandas


def _lookup(ids: np.ndarray, raw_id: object, what: str) -> int:
    key = _coerce_raw_id(raw_id, ids)
    if key is not None and len(ids):
        try:
            pos = int(np.searchsorted(ids, key))
        except (OverflowError, TypeError):
            pos = len(ids)
        if pos < len(ids) and ids[pos] == key:
            return pos
    raise KeyError(
        f"unknown {what} id {raw_id!r}: not among the {len(ids)} {what} ids of this data set "
        f"(first ones: {', '.join(map(str, ids[:3]))})"
    )


def _latest_per_pair(
    users: np.ndarray, items: np.ndarray, num_items: int, timestamps: np.ndarray | None
) -> np.ndarray | None:
    """Positions of the interaction to keep for each distinct (user, item) pair.

    The kept one is the latest by timestamp, ties and missing timestamps going
    to the last occurrence; positions come back in file order so that
    "last occurrence" stays meaningful downstream.  None when there are no
    duplicates, which is the common case and saves a copy.
    """
    keys = users * num_items + items
    if timestamps is None:
        order = np.argsort(keys, kind="stable")
    else:
        order = np.lexsort((timestamps, keys))  # lexsort is stable: file order breaks ties
    sorted_keys = keys[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    if last.all():
        return None
    return np.sort(order[last])


@dataclass(frozen=True, eq=False, repr=False)
class Interactions:
    """Observed (user, item, rating[, timestamp]) interactions with their id maps.

    ``user_ids[k]`` is the raw id of internal user ``k`` (likewise
    ``item_ids``); both are strictly increasing, which makes the mapping
    deterministic and lets :meth:`user_index` binary-search.  ``users``,
    ``items``, ``ratings`` and ``timestamps`` are parallel arrays with one
    entry per interaction.  Each (user, item) pair occurs at most once; use
    :meth:`from_arrays` to build from raw data, which removes duplicates by
    keeping the latest one (by timestamp, else the last occurrence).  The
    constructor itself only validates shapes, dtypes and index ranges.
    The arrays are shared, not copied: treat them as read-only.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "user_ids", _as_id_array(self.user_ids, "user_ids"))
        setattr_(self, "item_ids", _as_id_array(self.item_ids, "item_ids"))
        setattr_(self, "users", _as_index_array(self.users, "users"))
        setattr_(self, "items", _as_index_array(self.items, "items"))
        ratings = np.ascontiguousarray(self.ratings, dtype=np.float32)
        if ratings.ndim != 1:
            raise ValueError(f"ratings must be 1-D, got shape {ratings.shape}")
        setattr_(self, "ratings", ratings)
        if self.timestamps is not None:
            setattr_(self, "timestamps", _as_index_array(self.timestamps, "timestamps"))

        n = len(self.users)
        for name in ("items", "ratings", "timestamps"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries but users has {n}")
        for name, ids in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
                raise ValueError(f"{name} must be strictly increasing (sorted, unique)")
        for name, idx, size in (
            ("users", self.users, len(self.user_ids)),
            ("items", self.items, len(self.item_ids)),
        ):
            if n and (int(idx.min()) < 0 or int(idx.max()) >= size):
                raise ValueError(f"{name} must lie in [0, {size}), got [{idx.min()}, {idx.max()}]")
        if n and not bool(np.isfinite(ratings).all()):
            raise ValueError("ratings must be finite")

    @classmethod
    def from_arrays(
        cls,
        users_raw: object,
        items_raw: object,
        ratings: object,
        timestamps: object | None = None,
    ) -> Interactions:
        """Build from raw ids, mapping sorted raw ids to contiguous indices.

        Duplicated (user, item) pairs keep only the latest interaction by
        timestamp (ties, or no timestamps: the last occurrence), because a
        re-rating supersedes the earlier one.  Surviving interactions keep
        their input order.

        Integer ids must fit int64 (larger ones, e.g. uint64 hashes above
        ``2**63 - 1``, raise ValueError: pass them as strings), as must
        timestamps; ratings are stored as float32, and a finite rating beyond
        its range raises ValueError.  Messages name these parameters.
        """
        u_raw = _as_id_array(users_raw, "users_raw")
        i_raw = _as_id_array(items_raw, "items_raw")
        user_ids, users = np.unique(u_raw, return_inverse=True)
        item_ids, items = np.unique(i_raw, return_inverse=True)
        users = users.reshape(-1).astype(np.int64, copy=False)
        items = items.reshape(-1).astype(np.int64, copy=False)
        rat = _as_ratings(ratings, "ratings")
        ts = None if timestamps is None else _as_index_array(timestamps, "timestamps")
        if len(items) != len(users) or len(rat) != len(users) or \
                (ts is not None and len(ts) != len(users)):
            raise ValueError(
                f"users_raw, items_raw, ratings{'' if ts is None else ' and timestamps'} differ "
                f"in length ({len(users)}, {len(items)}, {len(rat)}"
                f"{'' if ts is None else f', {len(ts)}'})"
            )
        return cls._latest(user_ids, item_ids, users, items, rat, ts)

    @classmethod
    def _latest(
        cls,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray,
        timestamps: np.ndarray | None,
    ) -> Interactions:
        """The constructor after dropping all but the latest of each duplicated pair, as :meth:`from_arrays`.

        For callers that have the id maps and int64 indices already (the readers build them chunk by chunk).
        """
        keep = _latest_per_pair(users, items, len(item_ids), timestamps)
        if keep is not None:
            users, items, ratings = users[keep], items[keep], ratings[keep]
            timestamps = None if timestamps is None else timestamps[keep]
        return cls(user_ids, item_ids, users, items, ratings, timestamps)

    @classmethod
    def from_scipy(
        cls, matrix: object, *, user_ids: object | None = None, item_ids: object | None = None
    ) -> Interactions:
        """Build from a users x items matrix: one interaction per stored entry, rated its value.

        ``matrix`` is a ``scipy.sparse`` matrix or array of any format, or anything else
        :func:`dmfx.data.as_csr` reads (a torch sparse CSR/CSC/COO tensor, a :class:`CSR`).
        Entries stored twice at one (user, item) are summed, as scipy does (a COO with
        duplicates stands for their sum; contrast :meth:`from_arrays`, where a re-rating
        supersedes).  Explicitly stored zeros are interactions rated 0: call
        ``matrix.eliminate_zeros()`` first to drop them.  Every row is a user and every column
        an item, with interactions or without, so ``(num_users, num_items) == matrix.shape``;
        ``user_ids`` / ``item_ids`` (strictly increasing, one per row / column; default
        ``0 .. n - 1``) are their raw ids.  Interactions come in row order; the arrays are
        copies (the matrix stays the caller's).  Bad input (not 2-D, negative ids, non-finite
        values) raises ValueError naming ``matrix``.

        Round trip: ``Interactions.from_scipy(data.to_scipy(), user_ids=data.user_ids,
        item_ids=data.item_ids)`` has ``data``'s id maps and interactions (in row order; no
        timestamps, which a matrix does not hold).
        """
        csr = as_csr(matrix, name="matrix", device="cpu", index_dtype=torch.int64)
        num_users, num_items = csr.shape
        ids = {}
        for name, given, size, what in (("user_ids", user_ids, num_users, "rows"),
                                        ("item_ids", item_ids, num_items, "columns")):
            ids[name] = np.arange(size) if given is None else _as_id_array(given, name)
            if len(ids[name]) != size:
                raise ValueError(
                    f"{name} has {len(ids[name])} entries but matrix has {size} {what}"
                )
        users = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(csr.indptr.numpy()))
        return cls(ids["user_ids"], ids["item_ids"], users, csr.indices.numpy().copy(),
                   csr.values.numpy().copy())

    @classmethod
    def from_pandas(
        cls,
        df: pandas.DataFrame,
        *,
        user: str = "user",
        item: str = "item",
        rating: str | None = "rating",
        timestamp: str | None = None,
    ) -> Interactions:
        """Build from a pandas DataFrame with one row per interaction.

        ``user`` and ``item`` name the columns of raw ids (integers or strings, mapped to
        indices as :meth:`from_arrays` does); ``rating`` the column of ratings, numbers or
        booleans (True is rated 1.0 and False 0.0, an interaction rated 0 like any other: drop
        the False rows first if they mean "no interaction"; None: there is no such column,
        every interaction is rated 1.0, implicit feedback); ``timestamp`` an optional column
        of integer timestamps or of datetimes (``datetime64`` of any unit, naive or tz-aware),
        which become integer seconds since the Unix epoch (tz-aware ones in UTC, naive ones
        taken as UTC; fractions of a second are dropped, rounding down).  Duplicated (user,
        item) pairs keep the latest interaction, as in :meth:`from_arrays`.  The columns are
        read as numpy arrays and the interactions built from copies.  Needs pandas
        (``pip install 'dmfx[pandas]'``).

        Round trip: ``Interactions.from_pandas(data.to_pandas(), timestamp="timestamp")``
        (``timestamp`` only if ``data`` has timestamps) equals ``data`` -- same id maps,
        interactions in the same order -- when every user and item has an interaction (a
        table has no row for one without).  Timestamps read from datetimes come back from
        :meth:`to_pandas` as those integer seconds, not as datetimes.

        Raises (every message names this method's argument and its column, e.g.
        ``user='uid': column 'uid' ...``):
            ImportError: pandas is not installed.
            TypeError: ``df`` is not a DataFrame, or a column holds the wrong kind of values
                (ids must be integers or strings, one kind per column; ratings numbers or
                booleans; timestamps integers or datetimes).
            KeyError: a named column is missing (the message lists the columns).
            ValueError: a column has missing values (NaT among datetimes too), a rating is not
                finite or beyond float32's range (ratings are stored as float32), or integer
                ids or timestamps lie outside int64's range (ids that large must be strings).
        """
        pd = _import_pandas("Interactions.from_pandas")
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        arrays: dict[str, np.ndarray] = {}
        for argument, column in (("user", user), ("item", item), ("rating", rating),
                                 ("timestamp", timestamp)):
            if column is None and argument in ("rating", "timestamp"):
                continue
            if column not in df.columns:
                raise KeyError(f"{argument}={column!r}: df has no column {column!r} (its "
                               f"columns: {', '.join(map(repr, df.columns))})")
            series = df[column]
            if not isinstance(series, pd.Series):
                raise ValueError(f"{argument}={column!r}: df has several columns named "
                                 f"{column!r}")
            missing = int(series.isna().sum())
            if missing:
                raise ValueError(f"{argument}={column!r}: column {column!r} has {missing} "
                                 "missing value(s); drop or fill them first")
            if argument == "timestamp" and pd.api.types.is_datetime64_any_dtype(series.dtype) \
                    and series.dt.tz is not None:
                # to_numpy would give Timestamp objects; the same instants in UTC, naive,
                # come as datetime64.
                series = series.dt.tz_convert(None)
            values = series.to_numpy()
            kinds, wanted = _DATAFRAME_KINDS[argument]
            if values.dtype.kind not in kinds:
                raise TypeError(f"{argument}={column!r}: column {column!r} must hold {wanted}, "
                                f"got dtype {series.dtype}")
            arrays[argument] = values
        # Checked and converted here, so that errors name this method's arguments and columns
        # (from_arrays' would name its own parameters).
        named = {argument: f"{argument}={column!r}: column {column!r}" for argument, column in
                 (("user", user), ("item", item), ("rating", rating), ("timestamp", timestamp))}
        users_raw = _as_id_array(arrays["user"], named["user"])
        items_raw = _as_id_array(arrays["item"], named["item"])
        if "rating" in arrays:
            if not bool(np.isfinite(arrays["rating"]).all()):
                raise ValueError(f"{named['rating']} holds non-finite ratings")
            ratings = _as_ratings(arrays["rating"], named["rating"])
        else:
            ratings = np.ones(len(df), dtype=np.float32)
        if "timestamp" in arrays and arrays["timestamp"].dtype.kind == "M":
            # numpy's cast to whole seconds rounds down, before the epoch too.
            arrays["timestamp"] = arrays["timestamp"].astype("datetime64[s]").view(np.int64)
        timestamps = (_as_index_array(arrays["timestamp"], named["timestamp"])
                      if "timestamp" in arrays else None)
        return cls.from_arrays(users_raw, items_raw, ratings, timestamps)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        return len(self.users)

    @property
    def max_rating(self) -> float:
        """Largest rating, the normaliser of the paper's cross-entropy loss."""
        if self.nnz == 0:
            raise ValueError("max_rating is undefined for an empty Interactions")
        return float(self.ratings.max())

    def user_index(self, raw_id: object) -> int:
        """Internal index of a raw user id (``"196"`` and ``196`` both work)."""
        return _lookup(self.user_ids, raw_id, "user")

    def item_index(self, raw_id: object) -> int:
        """Internal index of a raw item id (``"242"`` and ``242`` both work)."""
        return _lookup(self.item_ids, raw_id, "item")

    def to_scipy(self, values: Values = "rating", transpose: bool = False) -> sp.csr_matrix:
        """``Y`` (users x items) or, with ``transpose``, ``Y^T`` as scipy CSR.

        ``values="rating"`` stores the ratings (the paper's Eq. 2),
        ``"binary"`` stores 1.0 for every observed pair (Eq. 1).  Column
        indices are sorted ascending within each row.  :meth:`from_scipy`
        reads it back.
        """
        if values == "rating":
            data = self.ratings
        elif values == "binary":
            data = np.ones(self.nnz, dtype=np.float32)
        else:
            raise ValueError(f"values must be 'rating' or 'binary', got {values!r}")
        if transpose:
            rows, cols, shape = self.items, self.users, (self.num_items, self.num_users)
        else:
            rows, cols, shape = self.users, self.items, (self.num_users, self.num_items)
        # COO -> CSR sorts indices within rows and sums duplicates; the nnz
        # check turns a silent sum into an error for hand-built inputs.
        matrix = sp.coo_matrix((data, (rows, cols)), shape=shape).tocsr()
        matrix.sort_indices()
        if matrix.nnz != self.nnz:
            raise ValueError(
                "duplicate (user, item) pairs; build with Interactions.from_arrays, which removes them"
            )
        return matrix

    def to_pandas(self) -> pandas.DataFrame:
        """One row per interaction: columns ``user`` and ``item`` (raw ids), ``rating``
        (float32) and, with timestamps, ``timestamp`` -- what :meth:`from_pandas` reads.

        The columns are copies.  Needs pandas (``pip install 'dmfx[pandas]'``).
        """
        pd = _import_pandas("Interactions.to_pandas")
        columns = {
            "user": self.user_ids[self.users],
            "item": self.item_ids[self.items],
            "rating": self.ratings.copy(),
        }
        if self.timestamps is not None:
            columns["timestamp"] = self.timestamps.copy()
        return pd.DataFrame(columns)

    def csr(
        self,
        values: Values = "rating",
        transpose: bool = False,
        device: torch.device | str | None = None,
        index_dtype: torch.dtype | None = None,
    ) -> CSR:
        """``Y`` as a :class:`CSR` of torch tensors (``transpose``: ``Y^T``, the CSC of ``Y``).

        Column indices within each row are sorted strictly ascending; the
        negative sampler relies on this.  ``index_dtype`` is ``torch.int64``
        or ``torch.int32`` (the latter checked to fit); by default int32
        where the interactions and both dimensions fit it, which saves 4 bytes
        per interaction in every copy a model or sampler keeps.  Values are
        float32.
        """
        if index_dtype is None:
            fits = max(self.nnz, self.num_users, self.num_items) <= torch.iinfo(torch.int32).max
            index_dtype = torch.int32 if fits else torch.int64
        return as_csr(self.to_scipy(values, transpose), device=device, index_dtype=index_dtype,
                      name="interactions")

    def check_unique_pairs(self) -> None:
        """Raises ``ValueError`` where a (user, item) pair occurs more than once, which the
        constructor does not check (it would sort every pair); the splitters do, since a pair
        held out and also left in train would be trained on."""
        keys = np.sort(self.users * self.num_items + self.items)
        again = np.flatnonzero(keys[1:] == keys[:-1])
        if len(again):
            key = int(keys[again[0]])
            raise ValueError(
                f"user {self.user_ids[key // self.num_items].item()!r}, item "
                f"{self.item_ids[key % self.num_items].item()!r} occurs more than once; build "
                "the interactions with Interactions.from_arrays, which keeps the latest")

    def select(self, mask: np.ndarray) -> Interactions:
        """The interactions where the boolean ``mask`` is True, with the same id maps.

        Keeping the id maps keeps ``num_users``/``num_items`` fixed, so a train
        split and its evaluation items share one index space.
        """
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.nnz,):
            raise ValueError(
                f"mask must be a boolean array of shape ({self.nnz},), "
                f"got dtype {mask.dtype} shape {mask.shape}"
            )
        return Interactions(
            self.user_ids,
            self.item_ids,
            self.users[mask],
            self.items[mask],
            self.ratings[mask],
            None if self.timestamps is None else self.timestamps[mask],
        )

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write raw ids, indices, ratings and timestamps to a compressed ``.npz``.

        numpy appends ``.npz`` to a path without that suffix.  Read it back
        with :func:`read_npz`; no pickling is involved either way.
        """
        arrays = {
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "users": self.users,
            "items": self.items,
            "ratings": self.ratings,
        }
        if self.timestamps is not None:
            arrays["timestamps"] = self.timestamps
        np.savez_compressed(path, **arrays)

    @classmethod
    def read_npz(cls, path: str | os.PathLike[str]) -> Interactions:
        """Read an ``.npz`` written by :meth:`save_npz` (also exported as ``dmfx.data.read_npz``)."""
        name = os.fspath(path)
        expected = f"{name}: expected an .npz written by Interactions.save_npz"
        try:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded as npz:
                    arrays = {key: npz[key] for key in npz.files}
        # A damaged archive fails in zipfile (RuntimeError: a member flagged as encrypted),
        # a decompressor or numpy's header parser.
        except (OSError, ValueError, RuntimeError, EOFError, zlib.error, lzma.LZMAError,
                zipfile.BadZipFile, NotImplementedError) as exc:
            raise DataFormatError(f"{expected} ({exc})") from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFormatError(f"{expected}, got a single .npy array")
        missing = [key for key in _NPZ_REQUIRED if key not in arrays]
        if missing:
            raise DataFormatError(
                f"{name}: expected arrays {', '.join(_NPZ_REQUIRED)} (as written by "
                f"Interactions.save_npz), missing {', '.join(missing)}"
            )
        try:
            data = cls(
                arrays["user_ids"],
                arrays["item_ids"],
                arrays["users"],
                arrays["items"],
                arrays["ratings"],
                arrays.get("timestamps"),
            )
            data.check_unique_pairs()  # a file of another tool's may repeat one
            return data
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{name}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"Interactions(num_users={self.num_users}, num_items={self.num_items}, "
            f"nnz={self.nnz}, timestamps={self.timestamps is not None})"
        )


# Function form, listed next to the text readers in ``readers.FORMATS``.
read_npz = Interactions.read_npz
