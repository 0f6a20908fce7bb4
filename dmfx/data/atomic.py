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
an item the user has in any part).

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

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .interactions import Interactions
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


def _read_table(path: Path) -> dict:
    """Columns of an atomic file by field name (``user_id:token`` -> ``user_id``), as text."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    names = [h.split(":", 1)[0] for h in header]
    for n, row in enumerate(rows, 2):
        if len(row) != len(names):
            raise ValueError(f"{path}:{n}: {len(row)} fields where the header has {len(names)}")
    columns = list(zip(*rows)) if rows else [()] * len(names)
    return {name: np.asarray(column, dtype=str) for name, column in zip(names, columns)}


def _plain_int(token: str) -> bool:
    return token.lstrip("-").isdigit() and token == str(int(token))


def _as_ids(text: np.ndarray, kind: Optional[str]) -> np.ndarray:
    if kind is None:  # another tool's files: integers where every id is a plain integer
        kind = "int" if len(text) and all(_plain_int(t) for t in text) else "str"
    return text.astype(np.int64) if kind == "int" else text


def _as_times(text: np.ndarray) -> np.ndarray:
    """Integer timestamps exactly; another tool's fractional ones rounded down."""
    try:
        return text.astype(np.int64)
    except ValueError:
        return np.floor(text.astype(np.float64)).astype(np.int64)


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
    for part, table in tables.items():
        missing = {"user_id", "item_id"} - set(table)
        if missing:
            raise ValueError(f"{base / f'{name}.{part}.inter'} has no {', '.join(sorted(missing))} field")
    maps = {}
    for what in ("user", "item"):
        listed = base / f"{name}.{what}"
        text = (_read_table(listed)[f"{what}_id"] if listed.is_file()
                else np.concatenate([t[f"{what}_id"] for t in tables.values()]))
        ids = np.unique(_as_ids(text, kinds.get(what)))
        maps[what] = ids
    has_time = all("timestamp" in t for t in tables.values())
    rows = {}
    for part, table in tables.items():
        users = _index(maps["user"], _as_ids(table["user_id"], kinds.get("user") or _kind(maps["user"])), "user")
        items = _index(maps["item"], _as_ids(table["item_id"], kinds.get("item") or _kind(maps["item"])), "item")
        ratings = table["rating"].astype(np.float32) if "rating" in table else np.ones(len(users), np.float32)
        times = _as_times(table["timestamp"]) if has_time else None
        rows[part] = (users, items, ratings, times)
    everything = Interactions(maps["user"], maps["item"],
                              *(np.concatenate([r[k] for r in rows.values()]) for k in range(3)),
                              np.concatenate([r[3] for r in rows.values()]) if has_time else None)
    train = Interactions(maps["user"], maps["item"], *rows["train"])
    seen_keys = np.sort(everything.users * everything.num_items + everything.items)
    counts = np.bincount(everything.users, minlength=everything.num_users)
    negatives = {}
    for stream, part in zip(np.random.SeedSequence(seed).spawn(2), ("valid", "test")):
        users = rows[part][0]
        listed = base / f"{name}.{part}.neg"
        if listed.is_file():
            lists = _read_table(listed)["neg_items"]
            flat = _index(maps["item"], _as_ids(np.asarray(" ".join(lists).split(), dtype=str),
                                                kinds.get("item") or _kind(maps["item"])), "item")
            negatives[part] = (flat.reshape(len(lists), -1) if len(lists) else np.zeros((0, 0))
                               ).astype(_negatives_dtype(len(maps["item"])))
            if len(negatives[part]) != len(users):
                raise ValueError(f"{listed} has {len(lists)} lines for {len(users)} {part} rows")
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


def _index(ids: np.ndarray, raw: np.ndarray, what: str) -> np.ndarray:
    """Internal indices of raw ids in the sorted map ``ids``; unknown ids are an error."""
    pos = np.searchsorted(ids, raw).clip(max=max(len(ids) - 1, 0))
    bad = ids[pos] != raw if len(ids) else np.ones(len(raw), bool)
    if len(raw) and bad.any():
        raise ValueError(f"{what} id {raw[bad][0].item()!r} is not in the {what} list")
    return pos.astype(np.int64)
