"""Whole DMF-nce training steps (forward, backward, Adam): dmfx vs PyTorch peers.

Every contender starts from the same weights and takes the same ``steps`` batches of pairs drawn
at random from one epoch's (each observed pair plus ``negatives`` sampled negatives), so a call
is what a slice of a shuffled epoch would be. :func:`rates` gives ``pairs_per_s`` and ``epoch_s``: the median step
times the steps of a whole epoch (training only, no evaluation).

Every contender gets the trainer's optimizer, :func:`dmfx.train.make_optimizer` (torch's fused
Adam where torch has it for the parameters' device and dtype), so the table compares the models'
steps, not two Adam implementations:

- ``dmfx``: the trainer's step — :class:`dmfx.models.DMF` (each distinct user / item of the batch
  once through ``sparse_rows_matmul`` on the CPU, every pair's on CUDA, where ``torch.unique``'s
  host sync would cost more; fused ``cosine_nce_loss``) and fused Adam.
- ``dmfx-sparse-grad``: the same with ``sparse_grad=True`` (``--sparse-grad``): row-sparse
  first-layer gradients and the row-wise Adam (``RowSparseAdam``), so the step no longer
  touches every row of the tables.
- ``dense-input``: RecBole's DMF method — each pair's rating rows written into a dense ``B x N``
  (and ``B x M``) tensor by ``index_put_``, a bias-free ``Linear`` first layer, no deduplication;
  the same later layers, the eager cosine + clamp + nce. Its optimizer is dmfx's fused Adam, not
  the default ``torch.optim.Adam`` RecBole's trainer builds (slower on the CPU, where torch's
  default is the per-tensor loop): the comparison is of the methods' steps.
  ``benchmarks/recbole_side_by_side.py`` times RecBole itself.
- ``embedding_bag``: careful eager PyTorch — the same work as dmfx's (distinct ids once on the
  CPU, every pair on CUDA), ``F.embedding_bag`` with the ratings as ``per_sample_weights``, one
  host sync a step (the two towers' gathered sizes read together), the eager loss, fused Adam.

Before timing, each peer is checked against dmfx from the same initial weights: its loss on the
first batch, then one step (forward, backward, its optimizer) on that batch and its loss on the
second, so a table never compares different models, gradients or optimizers.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops, reference
from ..data import CSR, Interactions
from ..models import DMF
from ..train import TrainConfig, make_optimizer
from .core import BASELINE, DENSE_LIMIT_BYTES, Contender, Op, Unavailable, assert_agree
from .inputs import has_negatives, row_of_entry, to_device

CONTENDERS = (BASELINE, "dmfx-sparse-grad", "dense-input", "embedding_bag")
NEGATIVES = 7
STEPS = 20  # steps per timed call
LR = 1e-4  # the trainer's default
# The check's tolerance on the two losses. Float32 summation order moves them by ~1e-6; a wrong
# gradient or update moves the second-batch loss by far more than this (the tests check one).
CHECK_RTOL = 1e-4


@dataclass
class Problem:
    train: Interactions  # what DMF is built from
    user_csr: CSR  # Y, users x items, ratings
    item_csr: CSR  # Y transposed
    layers: tuple  # tower widths, both towers
    batches: list  # (users, items, targets) of up to STEPS batches
    batch: int
    pairs_per_epoch: int
    # dmfx's losses the peers are checked against (see _reference), computed on first use.
    reference: tuple | None = field(default=None, repr=False)


def problem(train: Interactions, batch: int, layers, device: torch.device,
            negatives: int = NEGATIVES, steps: int = STEPS) -> Problem:
    user_csr = to_device(train.csr("rating"), device)
    item_csr = to_device(train.csr("rating", transpose=True), device)
    users = row_of_entry(user_csr)
    # An epoch holds every observed pair and `negatives` sampled ones per observed pair of a user
    # who leaves an item unrated. The timed batches are pairs drawn from it at random, as a
    # shuffled epoch deals them, built alone: the whole epoch would be ~10 GB at 50M ratings.
    sampleable = has_negatives(user_csr).nonzero().squeeze(1)
    nnz = users.numel()
    pairs_per_epoch = nnz + sampleable.numel() * negatives
    g = torch.Generator().manual_seed(0)
    take = torch.randint(pairs_per_epoch, (steps * batch,), generator=g).to(device)
    observed = take < nnz
    entry = take[observed]
    owner = sampleable[(take[~observed] - nnz) // negatives]  # the observed pair it belongs to
    drawn = ops.sample_negatives(user_csr.indptr, user_csr.indices, users[owner],
                                 user_csr.shape[1], 1, seed=0).squeeze(1)
    all_users, all_items = torch.empty_like(take), torch.empty_like(take)
    targets = user_csr.values.new_zeros(take.numel())
    all_users[observed], all_items[observed] = users[entry], user_csr.indices[entry].long()
    all_users[~observed], all_items[~observed] = users[owner], drawn.long()
    targets[observed] = user_csr.values[entry] / user_csr.values.max()
    batches = list(zip(all_users.split(batch), all_items.split(batch), targets.split(batch)))
    return Problem(train, user_csr, item_csr, tuple(layers), batches, batch, pairs_per_epoch)


def _padded_rows(csr: CSR):
    """RecBole's history matrices: each row's ids and values padded to the longest row; the
    padding id is one past the last column (a scratch column dropped after the scatter)."""
    counts = csr.indptr.diff()
    width = int(counts.max())
    device = csr.indptr.device
    ids = torch.full((counts.numel(), width), csr.shape[1], dtype=torch.long, device=device)
    vals = torch.zeros((counts.numel(), width), dtype=csr.values.dtype, device=device)
    row = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    col = torch.arange(csr.indices.numel(), device=device) - csr.indptr[:-1].long()[row]
    ids[row, col] = csr.indices.long()
    vals[row, col] = csr.values
    return ids, vals


class PeerDMF(nn.Module):
    """A pure-PyTorch DMF starting from a copy of a dmfx model's weights."""

    def __init__(self, model: DMF):
        super().__init__()
        self.mu = model.mu
        self.user_first = nn.Parameter(model.user_tower.first.detach().clone())
        self.item_first = nn.Parameter(model.item_tower.first.detach().clone())
        self.user_mlp = copy.deepcopy(model.user_tower.mlp)
        self.item_mlp = copy.deepcopy(model.item_tower.mlp)

    def sparse_grad_parameters(self) -> list:
        """None: dense gradients, so :func:`dmfx.train.make_optimizer` gives every parameter the
        trainer's (fused) Adam, as it gives dmfx's."""
        return []


class DenseInputDMF(PeerDMF):
    """DMF the way RecBole's DMF computes it: a dense B x N row per pair, then Linear."""

    def __init__(self, model: DMF, user_csr: CSR, item_csr: CSR):
        super().__init__(model)
        self.user_history = _padded_rows(user_csr)
        self.item_history = _padded_rows(item_csr)

    @staticmethod
    def _dense(history, ids: torch.Tensor, columns: int) -> torch.Tensor:
        hist_ids, hist_vals = history
        rows = torch.arange(ids.numel(), device=ids.device).repeat_interleave(hist_ids.shape[1])
        dense = torch.zeros(ids.numel(), columns + 1, device=ids.device, dtype=hist_vals.dtype)
        dense.index_put_((rows, hist_ids[ids].flatten()), hist_vals[ids].flatten())
        return dense[:, :columns]

    def loss(self, users, items, targets):
        p = self.user_mlp(self._dense(self.user_history, users, self.user_first.shape[0])
                          @ self.user_first)
        q = self.item_mlp(self._dense(self.item_history, items, self.item_first.shape[0])
                          @ self.item_first)
        return reference.cosine_nce_loss(p, q, targets, self.mu)


class EmbeddingBagDMF(PeerDMF):
    """DMF in careful eager PyTorch, first layer by F.embedding_bag: the work of dmfx's
    ``pair_vectors`` (distinct ids once on the CPU; on CUDA every pair's row, as ``torch.unique``
    would wait for the GPU) and one host sync a step, for the sizes of both gathers at once."""

    def __init__(self, model: DMF, user_csr: CSR, item_csr: CSR):
        super().__init__(model)
        self.user_csr, self.item_csr = user_csr, item_csr

    @staticmethod
    def _bags(csr: CSR, ids: torch.Tensor, distinct: bool):
        """The rows to gather (each distinct id once, or every pair's) with ``slot``, each pair's
        row among them (None: one each), and their entries' starts, counts and offsets in the
        flat bag arrays."""
        if distinct:
            rows, slot = torch.unique(ids, return_inverse=True)
        else:
            rows, slot = ids, None
        starts = csr.indptr.index_select(0, rows).long()
        counts = csr.indptr.index_select(0, rows + 1).long() - starts
        offsets = torch.cumsum(counts, 0) - counts
        return slot, starts, counts, offsets

    @staticmethod
    def _tower(csr: CSR, first, mlp, bags, total: int):
        slot, starts, counts, offsets = bags
        # Position k of the flat arrays holds entry starts[b] + (k - offsets[b]) of bag b.
        flat = torch.arange(total, device=starts.device) + torch.repeat_interleave(
            starts - offsets, counts, output_size=total)
        h = F.embedding_bag(csr.indices.index_select(0, flat), first, offsets, mode="sum",
                            per_sample_weights=csr.values.index_select(0, flat))
        out = mlp(h)
        # index_select, not [slot]: its backward is an index_add, [slot]'s sorts the ids first.
        return out if slot is None else out.index_select(0, slot)

    def loss(self, users, items, targets):
        distinct = not users.is_cuda  # as dmfx's pair_vectors
        user_bags = self._bags(self.user_csr, users, distinct)
        item_bags = self._bags(self.item_csr, items, distinct)
        # The step's one host sync: both gathers' sizes, read together.
        user_total, item_total = torch.stack(
            [user_bags[2].sum(), item_bags[2].sum()]).tolist()
        p = self._tower(self.user_csr, self.user_first, self.user_mlp, user_bags, user_total)
        q = self._tower(self.item_csr, self.item_first, self.item_mlp, item_bags, item_total)
        return reference.cosine_nce_loss(p, q, targets, self.mu)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the allocator caches but no tensor holds is free too
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_dense_size(p: Problem) -> None:
    """The dense-input peer must be one someone would run (its per-step rows within
    ``DENSE_LIMIT_BYTES``) and fit: its padded histories are a one-off cost, but at, say,
    2M x 1M x 50M they alone would exhaust the device."""
    users, items = p.user_csr.shape
    rows = p.batch * (users + items) * 4
    if rows > DENSE_LIMIT_BYTES:
        raise Unavailable(f"its dense B x N + B x M rows would take {rows / 2**30:.1f} GiB a step")
    width = int(p.user_csr.indptr.diff().max()) * users + int(p.item_csr.indptr.diff().max()) * items
    history, free = width * (8 + 4), _free_bytes(p.user_csr.indptr.device)  # int64 ids, float32
    if 2 * history > free:
        raise Unavailable(f"its padded rating histories would take {history / 2**30:.1f} GiB of "
                          f"the {free / 2**30:.1f} GiB free")


def _model(p: Problem, sparse_grad: bool = False) -> DMF:
    torch.manual_seed(0)  # every contender starts from these weights
    return DMF(p.train, p.layers, p.layers, sparse_grad=sparse_grad).to(p.user_csr.indptr.device)


def _optimizer(net):
    """The trainer's optimizer (:func:`dmfx.train.make_optimizer`), for dmfx's models and the
    peers alike: fused Adam where torch has it, ``RowSparseAdam`` for row-sparse gradients."""
    return make_optimizer(net, TrainConfig(lr=LR))


def _step(net, optimizer, batch) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = net.loss(*batch)
    loss.backward()
    optimizer.step()
    return loss


def _losses(net, optimizer, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss on batch 0 at the current weights, and the loss on batch 1 after one step
    (forward, backward, ``optimizer``) on batch 0: the second reads the gradients and the
    optimizer's update, not only the forward."""
    first = _step(net, optimizer, batches[0]).detach()
    with torch.no_grad():
        second = net.loss(*batches[1 % len(batches)])
    return first, second


def _reference(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """dmfx's :func:`_losses` from the initial weights, computed once per problem (its model is
    freed before any contender's is built)."""
    if p.reference is None:
        model = _model(p)
        p.reference = _losses(model, _optimizer(model), p.batches)
    return p.reference


def _check(p: Problem, name: str, net, optimizer) -> str:
    """Raise :class:`~dmfx.bench.CheckFailed` unless ``net`` + ``optimizer`` train like dmfx's
    from the same weights. Leaves the contender one step on, which its timing does not mind."""
    want = _reference(p)
    got = _losses(net, optimizer, p.batches)
    assert_agree(got[:1], want[:1], what=f"{name} first-batch loss vs dmfx", rtol=CHECK_RTOL)
    assert_agree(got[1:], want[1:], what=f"{name} second-batch loss after one step on the first "
                 "vs dmfx", rtol=CHECK_RTOL)
    return (f"first-batch loss, and second-batch loss after one step on the first, equal dmfx's "
            f"from the same weights (rtol {CHECK_RTOL:g})")


def prepare(p: Problem, name: str) -> Contender:
    if name not in CONTENDERS:
        raise ValueError(f"unknown train_step contender {name!r}")
    if name == "dense-input":
        _check_dense_size(p)
    if name != BASELINE:
        _reference(p)  # first, so that dmfx's model is gone before this contender's is built
    if name in (BASELINE, "dmfx-sparse-grad"):
        net = _model(p, sparse_grad=name == "dmfx-sparse-grad")
    elif name == "dense-input":
        net = DenseInputDMF(_model(p), p.user_csr, p.item_csr)
    else:
        net = EmbeddingBagDMF(_model(p), p.user_csr, p.item_csr)
    optimizer = _optimizer(net)
    check = "baseline" if name == BASELINE else _check(p, name, net, optimizer)

    def fn():
        for batch in p.batches:
            loss = _step(net, optimizer, batch)
        return loss

    return Contender(name, fn, check, state=(net, optimizer))


def describe(p: Problem) -> str:
    users, items = p.user_csr.shape
    return (f"{len(p.batches)} DMF training steps (forward, backward, Adam) per call: B = {p.batch} "
            f"pairs, towers {','.join(map(str, p.layers))}, {users:,} users x {items:,} items")


def rates(p: Problem, median_s: float) -> dict:
    step_s = median_s / len(p.batches)
    return {"pairs_per_s": p.batch / step_s, "epoch_s": step_s * -(-p.pairs_per_epoch // p.batch)}


OP = Op("train_step", CONTENDERS, prepare, describe, rates)
