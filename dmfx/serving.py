"""Using a trained model: top-k lists for many users or for new users, written as CSV or
Parquet, and an export of its vectors and towers for serving outside dmfx.

Everything here reads a model file (``OUTPUT/model.pt`` of ``dmfx train``) through
:func:`dmfx.experiment.load_trained`; no data file is needed.
"""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .checkpoint import atomic_write, make_folder
from .data import CSR, DataFormatError, as_csr
from .data.interactions import _FLOAT32_MAX
from .experiment import Trained
from .models import VectorScorer
from .models.base import _positive_int

__all__ = ["read_user_ids", "read_new_user", "recommend_blocks", "write_recommendations",
           "export_model", "RowTower"]


def _lines(path) -> list[tuple[int, str]]:
    """``(line number in the file, text)`` of the lines of ``path`` that hold something: blank
    lines and ``#`` comments are skipped but counted. A UTF-8 byte-order mark (what some
    editors on Windows write) is not part of the first line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_user_ids(path, trained: Trained) -> np.ndarray:
    """Internal ids of the raw user ids in ``path`` (one per line; blank lines and ``#``
    comments skipped). An unknown id raises KeyError naming it and its line; a user held out
    of training (``dmfx train --held-out-users``: :attr:`Trained.held_out_users`) raises
    ValueError, as the model knows none of their ratings: recommend for them from their
    ratings (``--ratings``, :func:`read_new_user`)."""
    users = []
    held_out = set(trained.held_out_users.tolist())
    for number, raw in _lines(path):
        try:
            user = trained.user_index(raw)
        except KeyError:
            raise KeyError(f"{path}:{number}: unknown user {raw!r} (not in this model's data)") from None
        if user in held_out:
            raise ValueError(f"{path}:{number}: user {raw!r} {HELD_OUT}")
        users.append(user)
    if not users:
        raise ValueError(f"{path} names no user")
    return np.asarray(users, dtype=np.int64)


HELD_OUT = ("was held out of training (dmfx train --held-out-users): the model knows none of "
            "their ratings; recommend for them from their ratings: dmfx recommend --ratings FILE "
            "(model.recommend_rows in Python)")



def read_new_user(path, trained: Trained) -> tuple[CSR, list]:
    """A new user's ratings from ``path`` as one CSR row over the model's items, and the raw ids
    of the items the model does not know (left out). Lines are ``ITEM`` or ``ITEM RATING``,
    separated by a comma, tab or spaces; ``ITEM`` alone counts as rating 1. Ratings must be
    finite, >= 0 and within float32's range, as in training data; an item rated twice keeps its
    later line, as the readers keep a user's latest rating. Errors name the file's line."""
    rated, unknown = {}, []
    for number, line in _lines(path):
        fields = line.replace(",", " ").replace("\t", " ").split()
        if len(fields) > 2:
            raise DataFormatError(f"{path}:{number}: expected ITEM or ITEM RATING, got {line!r}")
        try:
            rating = float(fields[1]) if len(fields) == 2 else 1.0
        except ValueError:
            raise DataFormatError(f"{path}:{number}: rating {fields[1]!r} is not a number") from None
        if not np.isfinite(rating) or rating < 0:
            raise DataFormatError(f"{path}:{number}: rating {fields[1]!r} is not a finite "
                                  "number >= 0")
        if rating > _FLOAT32_MAX:
            raise DataFormatError(f"{path}:{number}: rating {fields[1]!r} is out of float32 "
                                  f"range (at most {_FLOAT32_MAX:.6g})")
        try:
            item = trained.item_index(fields[0])
        except KeyError:
            unknown.append(fields[0])
            continue
        rated[item] = rating  # a later line replaces an earlier one
    if not rated:
        raise ValueError(f"{path} rates no item this model knows"
                         + (f" (unknown: {', '.join(unknown[:5])})" if unknown else ""))
    row = sp.csr_matrix((list(rated.values()), ([0] * len(rated), list(rated))),
                        shape=(1, len(trained.item_ids)))
    return as_csr(row, name=str(path)), unknown


def recommend_blocks(trained: Trained, users: np.ndarray, k: int, *, exclude: Optional[CSR],
                     block: Optional[int] = None, progress: bool = False
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(users, items, scores)`` blocks of the top ``k`` of every user in ``users``: each block
    (``block`` users, a positive integer; default :meth:`Recommender.users_per_block`) is scored
    on the model's device and reduced to its top ``k`` there -- against a tile of items at a
    time for vector models, else against all items -- so memory holds about 256 MB of scores,
    never users x items.

    Exactly the items in ``exclude`` (users x items, as :meth:`Recommender.recommend` takes it)
    are left out; ``exclude=None`` leaves out none, not even the training items. ``dmfx
    recommend`` passes ``trained.interacted()``: training, validation and test items."""
    from tqdm.auto import tqdm

    if block is not None:
        block = _positive_int(block, "block")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    model = trained.model
    if exclude is not None:  # checked and converted once, not once per block
        exclude = model._exclude_matrix(exclude)
    scorer = model._eval_scorer()
    block = block or model.users_per_block(scorer=scorer)
    ids = torch.as_tensor(users, device=model.device)
    with tqdm(total=len(users), unit="user", desc="recommend", disable=not progress) as bar:
        for start in range(0, len(users), block):
            chunk = ids[start:start + block]
            items, scores = model.recommend(chunk, k, exclude_seen=False, exclude=exclude,
                                            scorer=scorer, batch_size=block)
            bar.update(len(chunk))
            yield users[start:start + block], items.cpu().numpy(), scores.cpu().numpy()


def _long_format(blocks, user_ids: np.ndarray, item_ids: np.ndarray):
    """Rows (user, rank, item, score) of each block, padding (item -1) dropped."""
    for users, items, scores in blocks:
        k = items.shape[1]
        keep = items >= 0
        yield (np.repeat(user_ids[users], k).reshape(-1, k)[keep],
               np.broadcast_to(np.arange(1, k + 1), items.shape)[keep],
               item_ids[items[keep]], scores[keep])


def write_recommendations(path, blocks, trained: Trained, *,
                          user_ids: Optional[np.ndarray] = None) -> int:
    """Writes the blocks of :func:`recommend_blocks` to ``path`` with raw ids, one row per
    (user, rank): CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, needs pyarrow). The file
    appears whole or not at all; missing folders above it are created. ``user_ids`` names the
    blocks' users (default: the model's raw user ids). Returns the number of rows."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        raise ValueError(f"--output: expected a .csv, .tsv or .parquet file, got {path}")
    user_ids = trained.user_ids if user_ids is None else user_ids
    rows = _long_format(blocks, user_ids, trained.item_ids)
    count = 0

    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("writing .parquet needs pyarrow (pip install pyarrow); or write "
                             ".csv") from None

        def write(f):
            nonlocal count
            writer = None
            for users, ranks, items, scores in rows:
                table = pa.table({"user": users, "rank": ranks.astype(np.int32), "item": items,
                                  "score": scores.astype(np.float32)})
                writer = writer or pq.ParquetWriter(f, table.schema)
                writer.write_table(table)
                count += len(users)
            if writer is None:  # no user: an empty file with the schema
                empty = pa.table({"user": user_ids[:0], "rank": np.zeros(0, np.int32),
                                  "item": trained.item_ids[:0], "score": np.zeros(0, np.float32)})
                writer = pq.ParquetWriter(f, empty.schema)
            writer.close()
    else:
        sep = "\t" if suffix == ".tsv" else ","

        def write(f):
            nonlocal count
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            # The csv module quotes an id holding the separator, a quote or a line break, so
            # csv.reader and pandas.read_csv read back the fields written.
            out = csv.writer(text, delimiter=sep, lineterminator="\n")
            out.writerow(("user", "rank", "item", "score"))
            for users, ranks, items, scores in rows:
                out.writerows((u, r, i, f"{s:.6g}")
                              for u, r, i, s in zip(users.tolist(), ranks.tolist(),
                                                    items.tolist(), scores.tolist()))
                count += len(users)
            text.flush()
            text.detach()

    make_folder(Path(path).parent)
    atomic_write(path, write)
    return count


class RowTower(nn.Module):
    """A DMF tower as a function of rating rows alone, for ``torch.export``: ``(indptr [n + 1],
    indices [nnz], values [nnz])`` of n rows (int64 ids, float32 ratings; columns ascending
    within a row) -> ``[n, d]`` float32 vectors whose dot products are the model's scores:
    normalised for a cosine-scored DMF (``normalize``), as they come out of the tower for
    ``score="dot"``. The tower computes in its weights' dtype (a float64 DMF in float64).

    Holds CPU copies of the tower's weights (its first layer shared with it where it is on the
    CPU already, the later layers copied): building one leaves ``tower`` as it was."""

    def __init__(self, tower: nn.Module, normalize: bool):
        super().__init__()
        self.first = nn.Parameter(tower.first.detach().cpu(), requires_grad=False)
        self.mlp = copy.deepcopy(tower.mlp).cpu()
        self.binary = tower.binary
        self.normalize = normalize

    def forward(self, indptr: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        rows = torch.arange(indptr.shape[0] - 1, device=indptr.device)
        h = ops.sparse_rows_matmul(indptr, indices,
                                   None if self.binary else values.to(self.first.dtype), rows,
                                   self.first)
        out = self.mlp(h)
        return (F.normalize(out, dim=1) if self.normalize else out).float()


def _export_tower(tower: RowTower, example: CSR, path: Path) -> None:
    import torch.fx.experimental._config as fx_config

    dynamic = torch.export.Dim.DYNAMIC
    args = (example.indptr.long(), example.indices.long(), example.values.float())
    # Size-oblivious guards: without them export assumes every dynamic size is >= 2, and the
    # exported tower would refuse a batch of one row, the commonest serving call.
    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(tower, args, dynamic_shapes=({0: dynamic},) * 3)
    torch.export.save(program, str(path))


@torch.no_grad()
def export_model(trained: Trained, output) -> dict:
    """Writes to the folder ``output``: ``user_vectors.npy`` and ``item_vectors.npy`` (float32,
    one row per user of ``user_ids.npy`` and per internal item id; a user's score of an item is
    the dot product, plus ``item_bias.npy`` where the model has one), ``user_ids.npy`` /
    ``item_ids.npy`` (raw ids of the rows), ``seen.npz`` (scipy CSR of the training
    interactions, a row per user of ``user_ids.npy``, to leave out), and for DMF
    ``user_tower.pt2`` / ``item_tower.pt2``: the towers as ``torch.export`` programs over rating
    rows (load with ``torch.export.load`` after ``import dmfx.ops``, which registers the ops), which
    embed users and items the model never saw. Returns the ``meta.json`` it writes.

    Users held out of training (``dmfx train --held-out-users``:
    :attr:`Trained.held_out_users`) are left out of the user files (``user_vectors.npy``,
    ``user_ids.npy``, ``seen.npz``): the model knows none of their ratings, so its vector for
    them is that of a user without any; a server that does not find them embeds them from their
    ratings with ``user_tower.pt2``, as any new user. Then the rows are no longer the internal
    ids, and ``meta.json`` counts them (``held_out_users``). Without held-out users row ``u`` is
    internal user ``u``.

    The model is used where it is (vectors are computed on its device and copied to the CPU;
    the towers are exported from CPU copies): ``trained.model`` is not moved or changed."""
    model = trained.model
    scorer = model._eval_scorer()
    if not isinstance(scorer, VectorScorer):
        raise ValueError(f"{model.name} has no vectors to export: its score of a pair is not "
                         "the dot product of a user vector and an item vector; its model file "
                         "is what serves it (dmfx recommend)")
    out = make_folder(output)

    def save_npy(name: str, array: np.ndarray) -> None:
        atomic_write(out / name, lambda f: np.save(f, array, allow_pickle=False))

    def numpy(tensor: Tensor) -> np.ndarray:
        # detached: some scorers hand out their parameters themselves (GMF's, BPR-MF's tables)
        return tensor.detach().float().cpu().numpy()

    held_out = trained.held_out_users
    kept = np.setdiff1d(np.arange(model.num_users), held_out) if len(held_out) else slice(None)
    save_npy("user_vectors.npy", numpy(scorer.users)[kept])
    save_npy("item_vectors.npy", numpy(scorer.items))
    files = ["user_vectors.npy", "item_vectors.npy", "user_ids.npy", "item_ids.npy", "seen.npz"]
    if scorer.item_bias is not None:
        save_npy("item_bias.npy", numpy(scorer.item_bias))
        files.append("item_bias.npy")
    save_npy("user_ids.npy", trained.user_ids[kept])
    save_npy("item_ids.npy", trained.item_ids)
    seen = trained.split.train.to_scipy("binary")[kept].tocsr()
    atomic_write(out / "seen.npz", lambda f: sp.save_npz(f, seen))
    normalised = getattr(model, "score_kind", None) == "cosine"
    if hasattr(model, "embed_users"):
        train, values = trained.split.train, model.config()["input"]
        for side, tower in (("user", model.user_tower), ("item", model.item_tower)):
            # A few real rows to trace with (with ratings: a held-out user's row is empty); the
            # program takes any number of rows.
            matrix = train.to_scipy(values, transpose=side == "item").tocsr()
            rated = np.flatnonzero(np.diff(matrix.indptr))[:3]
            example = as_csr(matrix[rated] if len(rated) else matrix[:3], name=side)
            _export_tower(RowTower(tower, normalised).eval(), example,
                          out / f"{side}_tower.pt2")
            files.append(f"{side}_tower.pt2")
    from . import __version__

    meta = {"dmfx": __version__, "model": model.name, "config": model.config(),
            "users": model.num_users - len(held_out), "items": model.num_items,
            "held_out_users": len(held_out),
            "dim": int(scorer.users.shape[1]),
            "score": "user_vectors[u] @ item_vectors[i]"
                     + (" + item_bias[i]" if scorer.item_bias is not None else ""),
            "normalised": normalised, "files": files}
    atomic_write(out / "meta.json", lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return meta
