"""Splits in RecBole's atomic-file layout, so another library runs on exactly the same split.

:func:`write_atomic` writes a :class:`~dmfx.data.Split` to ``FOLDER/NAME/``:

* ``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter`` -- the interactions of each
  part, tab-separated with RecBole's typed header
  ``user_id:token  item_id:token  rating:float  timestamp:float`` (no timestamp column for data
  without timestamps), raw ids as in the ratings file, rows in dmfx's order;
* ``NAME.user`` / ``NAME.item`` -- every user / item id (header ``user_id:token`` /
  ``item_id:token``), in dmfx's internal order, so ids without a held-out row keep their index;
* ``NAME.valid.neg`` / ``NAME.test.neg`` -- the sampled protocol's items, one line per row of
  the matching ``.inter`` file (``user_id:token  item_id:token  neg_items:token_seq``, the N
  items space-separated); absent when the split has none (``--protocol full``);
* ``NAME.dmfx.json`` -- what the text cannot say: the id types (integer or string), the rule
  that chose the test items and the number of sampled items.

:func:`read_atomic` reads such a folder back into the identical split (ids, order, negatives).
Files written by another tool work too: without ``.user`` / ``.item`` the ids are those of the
``.inter`` files (sorted; integers where every id is one), and without ``.neg`` files the
sampled items are drawn from ``seed`` by the sampler of :func:`dmfx.data.leave_one_out` (never
an item the user has in any part), row by row in the ``.inter`` files' order: the seed and that
order fix them.  Reading refuses, naming the file and line, what would make the split wrong: a
(user, item) pair in two parts (a held-out pair that is also trained on) or twice in one, a
rating that is not a finite number >= 0, a timestamp that is not a number, and a ``.neg`` item
that the user has in any part (the held-out item included).

RecBole (``benchmark_filename`` loads pre-split files, ``data_path/dataset/dataset.PART.inter``)::

    data_path: FOLDER
    dataset: NAME
    benchmark_filename: [train, valid, test]
    load_col: {inter: [user_id, item_id, rating, timestamp]}
    eval_args: {mode: full}       # full ranking; RecBole draws its own sampled items (uni100)

RecBole's sampled modes draw their own negatives; the ``.neg`` files carry dmfx's for a library
that can take them.
"""
from __future__ import annotations

import codecs
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from ._keys import sorted_contains
from .errors import DataFormatError
from .interactions import Interactions
from .readers import _int_problem, _is_float, _rating_problem, _undecodable
from .splits import Split, _check_unseen, _negatives_dtype, _sample_negatives

__all__ = ["write_atomic", "read_atomic"]

_PARTS = ("train", "valid", "test")
_ROWS_PER_WRITE = 1 << 16


def _tokens(ids: np.ndarray, what: str, space_ok: bool = True) -> np.ndarray:
    """Raw ids as text that RecBole's tab-separated files (and space-separated lists) hold."""
    text = ids.astype(str)
    bad = np.char.find(text, "\t") >= 0
    bad |= np.char.find(text, "\n") >= 0
    if not space_ok:
        bad |= np.char.find(text, " ") >= 0
    if bad.any():
        raise ValueError(f"{what} id {str(text[bad][0])!r} cannot be written as a RecBole token "
                         f"(tabs and line breaks{'' if space_ok else ', and spaces in the .neg lists'} "
                         "separate fields)")
    return text


def _numbers(values: np.ndarray) -> np.ndarray:
    """Shortest text that reads back to the same float32 (ratings) or integer (timestamps)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    if values.dtype.kind == "f":
        shown = [np.format_float_positional(v, unique=True, trim="-") for v in distinct]
    else:
        shown = [str(v) for v in distinct]
    return np.asarray(shown, dtype=str)[inverse.reshape(-1)] if len(values) else np.zeros(0, str)


def _write_table(path: Path, header: list, columns: list) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\t".join(header) + "\n")
        rows = len(columns[0])
        for start in range(0, rows, _ROWS_PER_WRITE):
            part = [c[start:start + _ROWS_PER_WRITE] for c in columns]
            handle.write("".join("\t".join(row) + "\n" for row in zip(*part)))


def write_atomic(data: Interactions, split: Split, folder: str | os.PathLike, name: str) -> Path:
    """Writes ``split`` of ``data`` (the interactions it was made from, for the held-out rows'
    ratings and timestamps) to ``folder/name/`` as described in the module docstring; returns
    that folder."""
    if not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"name must be a plain file name (RecBole's dataset name), got {name!r}")
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    users = _tokens(data.user_ids, "user")
    items = _tokens(data.item_ids, "item", space_ok=not split.test_negatives.shape[1])
    keys = data.users * data.num_items + data.items
    order = np.argsort(keys)
    header = ["user_id:token", "item_id:token", "rating:float"]
    if data.timestamps is not None:
        header.append("timestamp:float")
    parts = {"train": (split.train.users, split.train.items), "valid": (split.valid_users,
             split.valid_items), "test": (split.test_users, split.test_items)}
    for part, (u, i) in parts.items():
        found = order[np.searchsorted(keys, u * data.num_items + i, sorter=order)
                      .clip(max=max(len(keys) - 1, 0))] if len(u) else np.zeros(0, np.int64)
        if len(u) and not np.array_equal(keys[found], u * data.num_items + i):
            raise ValueError(f"the split's {part} rows are not all interactions of data")
        columns = [users[u], items[i], _numbers(data.ratings[found])]
        if data.timestamps is not None:
            columns.append(_numbers(data.timestamps[found]))
        _write_table(out / f"{name}.{part}.inter", header, columns)
        if part != "train":
            negatives = getattr(split, f"{part}_negatives")
            path = out / f"{name}.{part}.neg"
            if negatives.shape[1]:
                lists = [" ".join(row) for row in items[negatives]]
                _write_table(path, ["user_id:token", "item_id:token", "neg_items:token_seq"],
                             [users[u], items[i], lists])
            elif path.exists():
                path.unlink()  # a stale list from an earlier export would be read back
    _write_table(out / f"{name}.user", ["user_id:token"], [users])
    _write_table(out / f"{name}.item", ["item_id:token"], [items])
    meta = {"format": "dmfx atomic split 1", "holdout": split.holdout,
            "id_types": {"user": _kind(data.user_ids), "item": _kind(data.item_ids)},
            "num_negatives": int(split.test_negatives.shape[1]),
            "timestamps": data.timestamps is not None}
    (out / f"{name}.dmfx.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def _kind(ids: np.ndarray) -> str:
    return "int" if ids.dtype.kind in "iu" else "str"


class _Table(NamedTuple):
    path: Path
    columns: dict  # field name (``user_id:token`` -> ``user_id``) -> the fields, UTF-8 bytes
    lines: np.ndarray  # the 1-based line of each row in the file, for messages


# The bytes that str.strip() removes: a line of nothing else is blank and skipped. (A line of
# only non-ASCII spaces is read as a row, and refused for its field count.)
_BLANK = np.zeros(256, bool)
_BLANK[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_CHUNK_BYTES = 1 << 22  # bounds the per-byte temporaries of one pass
_GATHER = 1 << 22  # bytes gathered at once when cutting fields


def _cut(body: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``body[starts[k]:ends[k]]`` for every k, as one numpy bytes array."""
    width = max(int((ends - starts).max(initial=0)), 1)
    out = np.zeros((len(starts), width), np.uint8)
    step = np.arange(width)
    block = max(_GATHER // width, 1)
    for lo in range(0, len(starts), block):
        at = starts[lo:lo + block, None] + step
        inside = at < ends[lo:lo + block, None]
        out[lo:lo + block][inside] = body[at[inside]]
    return out.view(f"S{width}").ravel()


def _read_table(path: Path) -> _Table:
    """The columns of an atomic file, as UTF-8 bytes, and the line each row is on. Fields are
    cut with array operations, not a Python split per line: several times faster, and no
    Python object per field (files of millions of rows)."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):  # spreadsheet exports: it would join the first name
        raw = raw[len(codecs.BOM_UTF8):]
    if b"\r" in raw:  # line ends as text mode reads them
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _undecodable(path) from None
    head = raw.find(b"\n")
    names = [h.split(":", 1)[0] for h in raw[:head if head >= 0 else len(raw)].decode().split("\t")]
    body = np.frombuffer(raw, np.uint8)[head + 1:] if head >= 0 else np.zeros(0, np.uint8)
    ends = np.flatnonzero(body == ord("\n"))
    if len(body) and body[-1] != ord("\n"):
        ends = np.append(ends, len(body))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    pieces, lines = [], []
    first = 0
    while first < len(ends):  # a few MB of lines at a time
        last = int(np.searchsorted(ends, ends[first] + _CHUNK_BYTES, side="right"))
        last = max(last, first + 1)
        lo, hi = int(starts[first]), int(ends[last - 1])
        segment = body[lo:hi]
        s, e = starts[first:last] - lo, ends[first:last] - lo
        filled = np.concatenate([[0], np.cumsum(~_BLANK[segment], dtype=np.int64)])
        kept = filled[e] - filled[s] > 0
        tabs = np.flatnonzero(segment == ord("\t"))
        line_of_tab = np.searchsorted(e, tabs, side="right")
        fields = np.bincount(line_of_tab, minlength=len(s)) + 1
        wrong = np.flatnonzero(kept & (fields != len(names)))
        if len(wrong):
            k = wrong[0]
            raise DataFormatError(f"{path}:{first + k + 2}: {fields[k]} fields where the header "
                                  f"has {len(names)}")
        tabs = tabs[kept[line_of_tab]].reshape(int(kept.sum()), len(names) - 1)
        field_starts = np.column_stack([s[kept], tabs + 1])
        field_ends = np.column_stack([tabs, e[kept]])
        pieces.append([_cut(segment, field_starts[:, k], field_ends[:, k])
                       for k in range(len(names))])
        lines.append(first + np.flatnonzero(kept) + 2)
        first = last
    columns = [np.concatenate(parts) if parts else np.zeros(0, "S1")
               for parts in (zip(*pieces) if pieces else [()] * len(names))]
    return _Table(path, dict(zip(names, columns)),
                  np.concatenate(lines) if lines else np.zeros(0, np.int64))


def _text(token: bytes) -> str:
    return token.decode("utf-8")


def _as_str(fields: np.ndarray) -> np.ndarray:
    try:
        return fields.astype(str)  # ASCII
    except UnicodeDecodeError:
        return np.char.decode(fields, "utf-8")


def _as_ids(fields: np.ndarray, kind: Optional[str], what: str, place) -> np.ndarray:
    """Ids from their fields: integers for ``kind`` "int", strings for "str"; ``None`` (another
    tool's files) takes integers where every id is a plain integer. ``place(k)`` names the file
    and line of field k for an error."""
    values = None
    if kind != "str":
        try:
            values = fields.astype(np.int64)
        except (ValueError, OverflowError):
            if kind == "int":
                k = next(k for k, f in enumerate(fields) if _int_problem(_text(f), f"{what} id"))
                raise DataFormatError(f"{place(k)}: {_int_problem(_text(fields[k]), f'{what} id')} "
                                      "(the split's .dmfx.json says its ids are integers)") from None
    if kind is None:  # plain: the integer's own text, so no id's spelling is lost
        plain = values is not None and len(fields) and np.array_equal(values.astype("S"), fields)
        kind = "int" if plain else "str"
    return values if kind == "int" else _as_str(fields)


def _floats(fields: np.ndarray) -> np.ndarray:
    """``fields`` as float64, NaN where one is not a number as the text readers read one."""
    try:
        return fields.astype(np.float64)
    except ValueError:
        return np.array([float(f) if _is_float(_text(f)) else math.nan for f in fields], np.float64)


def _refuse(table: _Table, row: int, problem: str) -> DataFormatError:
    return DataFormatError(f"{table.path}:{table.lines[row]}: {problem}")


def _as_ratings(table: _Table) -> np.ndarray:
    """The ratings, finite and >= 0 as the text readers demand: the losses divide by the
    largest rating, for targets in [0, 1]."""
    fields = table.columns["rating"]
    values = _floats(fields)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
    if len(bad):  # the text readers' message for the field
        raise _refuse(table, bad[0], _rating_problem(_text(fields[bad[0]])))
    return values.astype(np.float32)


def _as_times(table: _Table) -> np.ndarray:
    """Integer timestamps exactly; another tool's fractional ones rounded down."""
    fields = table.columns["timestamp"]
    try:
        return fields.astype(np.int64)
    except (ValueError, OverflowError):
        values = _floats(fields)
    bad = np.flatnonzero(~((values >= -2.0**63) & (values < 2.0**63)))  # NaN compares False
    if len(bad):
        raise _refuse(table, bad[0], f"expected a timestamp (a number in the int64 range), "
                                     f"got {_text(fields[bad[0]])!r}")
    return np.floor(values).astype(np.int64)


def _rows_of(table: _Table):
    return lambda k: f"{table.path}:{table.lines[k]}"


def read_atomic(folder: str | os.PathLike, name: str, num_negatives: int = 100,
                seed: int = 0) -> tuple[Interactions, Split]:
    """``(interactions of every part, split)`` from ``folder/name/`` (see the module docstring).
    ``num_negatives`` and ``seed`` draw the sampled items where the folder has no ``.neg``
    files."""
    base = Path(folder) / name
    if not (base / f"{name}.train.inter").is_file():
        raise FileNotFoundError(f"no split {name} in {folder}: {base / f'{name}.train.inter'} "
                                "is missing")
    meta_path = base / f"{name}.dmfx.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    kinds = meta.get("id_types", {})
    tables = {part: _read_table(base / f"{name}.{part}.inter") for part in _PARTS}
    for table in tables.values():
        missing = {"user_id", "item_id"} - set(table.columns)
        if missing:
            raise DataFormatError(f"{table.path} has no {', '.join(sorted(missing))} field")
    maps = {}
    for what in ("user", "item"):
        listed = base / f"{name}.{what}"
        if listed.is_file():
            table = _read_table(listed)
            if f"{what}_id" not in table.columns:
                raise DataFormatError(f"{listed} has no {what}_id field")
            ids = _as_ids(table.columns[f"{what}_id"], kinds.get(what), what, _rows_of(table))
        else:  # the ids of the parts, one kind for all of them
            fields = [t.columns[f"{what}_id"] for t in tables.values()]
            rows = np.cumsum([len(f) for f in fields])
            tables_at = list(tables.values())

            def place(k, rows=rows, tables_at=tables_at):
                part = int(np.searchsorted(rows, k, side="right"))
                return _rows_of(tables_at[part])(k - (rows[part - 1] if part else 0))
            ids = _as_ids(np.concatenate(fields), kinds.get(what), what, place)
        maps[what] = np.unique(ids)
    has_time = all("timestamp" in t.columns for t in tables.values())
    rows = {}
    for part, table in tables.items():
        columns = table.columns
        place = _rows_of(table)
        users = _index(maps["user"], _as_ids(columns["user_id"], _kind(maps["user"]), "user", place),
                       "user", place)
        items = _index(maps["item"], _as_ids(columns["item_id"], _kind(maps["item"]), "item", place),
                       "item", place)
        ratings = _as_ratings(table) if "rating" in columns else np.ones(len(users), np.float32)
        times = _as_times(table) if has_time else None
        rows[part] = (users, items, ratings, times)
    seen_keys = _distinct_keys(tables, rows, maps)
    everything = Interactions(maps["user"], maps["item"],
                              *(np.concatenate([r[k] for r in rows.values()]) for k in range(3)),
                              np.concatenate([r[3] for r in rows.values()]) if has_time else None)
    train = Interactions(maps["user"], maps["item"], *rows["train"])
    counts = np.bincount(everything.users, minlength=everything.num_users)
    negatives = {}
    for stream, part in zip(np.random.SeedSequence(seed).spawn(2), ("valid", "test")):
        users = rows[part][0]
        listed = base / f"{name}.{part}.neg"
        if listed.is_file():
            table = _read_table(listed)
            lists = table.columns["neg_items"]
            lists = lists.tolist()
            sizes = np.fromiter((len(row.split()) for row in lists), np.int64, len(lists))
            uneven = np.flatnonzero(sizes != sizes[:1])
            if len(uneven):
                raise _refuse(table, uneven[0], f"{sizes[uneven[0]]} sampled items where line "
                                                f"{table.lines[0]} has {sizes[0]}")
            width = int(sizes[0]) if len(lists) else 0

            def place(k, table=table, width=width):  # the line of the k-th listed item
                return _rows_of(table)(k // width)
            tokens = np.asarray(b" ".join(lists).split(), dtype=bytes)
            flat = _index(maps["item"], _as_ids(tokens, _kind(maps["item"]), "item", place),
                          "item", place)
            negatives[part] = flat.reshape(len(lists), width).astype(
                _negatives_dtype(len(maps["item"])))
            if len(negatives[part]) != len(users):
                raise ValueError(f"{listed} has {len(lists)} lines for {len(users)} {part} rows")
            _check_unseen_lists(table, negatives[part], rows[part], seen_keys, maps)
        else:
            count = meta.get("num_negatives", num_negatives)
            _check_unseen(everything, np.unique(users), counts, count)
            negatives[part] = _sample_negatives(np.random.default_rng(stream), users, seen_keys,
                                                counts[users], everything.num_items, count)
    holdout = meta.get("holdout") or ("ratio" if len(np.unique(rows["test"][0])) < len(rows["test"][0])
                                      else "latest" if has_time else "random")
    split = Split(train, rows["valid"][0], rows["valid"][1], rows["test"][0], rows["test"][1],
                  negatives["valid"], negatives["test"], holdout)
    return everything, split


def _distinct_keys(tables: dict, rows: dict, maps: dict) -> np.ndarray:
    """The sorted ``user * num_items + item`` keys of every part's rows, which must be distinct:
    a pair held out and also in train would be trained on, and one twice in a part is one
    interaction read twice."""
    num_items = len(maps["item"])
    keys = np.concatenate([users * num_items + items for users, items, *_ in rows.values()])
    seen_keys = np.sort(keys)
    if not len(keys) or bool(np.all(seen_keys[1:] != seen_keys[:-1])):
        return seen_keys
    order = np.argsort(keys, kind="stable")  # equal keys in reading order: train, valid, test
    again = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    k = np.argmin(order[again + 1])  # the first row that repeats an earlier one
    first, second = order[again[k]], order[again[k] + 1]
    starts = np.cumsum([0] + [len(r[0]) for r in rows.values()])
    places = []
    for pos in (first, second):
        part = int(np.searchsorted(starts, pos, side="right")) - 1
        table = tables[list(rows)[part]]
        places.append((table.path, table.lines[pos - starts[part]]))
    pair = (f"user {maps['user'][keys[first] // num_items].item()!r}, "
            f"item {maps['item'][keys[first] % num_items].item()!r}")
    (path, line), (other, other_line) = places
    if path == other:
        raise DataFormatError(f"{path} holds {pair} twice (lines {line} and {other_line}); "
                              "each (user, item) pair must be one row of one part")
    raise DataFormatError(f"{path}:{line} and {other}:{other_line} both hold {pair}; each (user, item) "
                          "pair must be one row of one part, or a held-out pair is trained on")


def _check_unseen_lists(table: _Table, negatives: np.ndarray, rows: tuple, seen_keys: np.ndarray,
                        maps: dict) -> None:
    """The sampled protocol ranks each held-out item among items its user never interacted with:
    a listed item the user has in any part (the held-out one included) would be a false negative."""
    users, items = rows[0], rows[1]
    num_items = len(maps["item"])
    keys = users[:, None] * num_items + negatives
    seen = sorted_contains(seen_keys, keys.ravel()).reshape(keys.shape)
    bad = np.flatnonzero(seen.any(axis=1))
    if len(bad):
        row = bad[0]
        item = negatives[row][seen[row]][0]
        user = maps["user"][users[row]].item()
        what = ("the row's own held-out item" if item == items[row]
                else f"an item user {user!r} interacted with")
        raise _refuse(table, row, f"sampled item {maps['item'][item].item()!r} is {what}; the sampled protocol "
                                  "ranks the held-out item among items the user never interacted with")


def _index(ids: np.ndarray, raw: np.ndarray, what: str, place) -> np.ndarray:
    """Internal indices of raw ids in the sorted map ``ids``; an unknown id is an error at its
    place (``place(k)``: file and line of the k-th)."""
    pos = np.searchsorted(ids, raw).clip(max=max(len(ids) - 1, 0))
    bad = np.flatnonzero(ids[pos] != raw if len(ids) else np.ones(len(raw), bool))
    if len(bad):
        raise DataFormatError(f"{place(bad[0])}: {what} id {raw[bad[0]].item()!r} is not in the "
                              f"{what} list")
    return pos.astype(np.int64)
