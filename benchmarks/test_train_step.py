"""Whole DMF-2-nce training steps (forward, backward, Adam): dmfx vs PyTorch peers.

Every contender starts from the same weights and takes the same ``STEPS`` consecutive batches of
one epoch's pairs (each observed pair plus 7 sampled negatives, shuffled), so a round is a slice of
a real epoch. ``extra_info`` has ``pairs_per_s`` and ``epoch_s``: the median step times the steps
of a whole epoch (training only, no evaluation).

- ``dmfx``: the trainer's step — :class:`dmfx.models.DMF` (each distinct user / item of the batch
  once through ``sparse_rows_matmul``, fused ``cosine_nce_loss``) and fused Adam.
- ``dmfx-sparse-grad``: the same with ``sparse_grad=True`` (``--sparse-grad``): row-sparse
  first-layer gradients and SparseAdam, so the step no longer touches every row of the tables.
- ``dense-input``: RecBole's DMF method — each pair's rating rows written into a dense ``B x N``
  (and ``B x M``) tensor by ``index_put_``, a bias-free ``Linear`` first layer, no deduplication;
  the same later layers, the eager cosine + clamp + nce, torch's default Adam.
- ``embedding_bag``: careful eager PyTorch — distinct ids once, ``F.embedding_bag`` with the
  ratings as ``per_sample_weights``, the eager loss, torch's default Adam.

Before timing, each peer's loss on the first batch is checked against dmfx's (same weights), so the
table never compares different models.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import assert_agree, measure, median_s
from benchmarks.matrices import SHAPES, to_device
from dmfx import reference
from dmfx.data import CSR, Interactions, leave_one_out, load_dataset, synthetic
from dmfx.models import DMF
from dmfx.train import TrainConfig, make_optimizer

NEGATIVES = 7
STEPS = 20  # steps per timed call


@dataclass(frozen=True)
class Case:
    data: str  # "ml-100k" (the bundled MovieLens-100K, training split) or a benchmarks.matrices shape
    batch: int
    layers: tuple  # tower widths, both towers
    cuda_only: bool = False
    big: bool = False
    contenders: tuple = ()  # empty: all of CONTENDERS

    @property
    def id(self) -> str:
        widths = "-".join(map(str, self.layers))
        return f"{self.data}-h{widths}-B{self.batch}"


CASES = [
    Case("ml-100k", 256, (256, 64)),  # the paper's DMF-2 and batch: dmfx train's defaults
    Case("ml-100k", 256, (64, 64, 64)),  # RecBole's DMF defaults (embedding 64, hidden [64, 64])
    Case("ml-1m", 256, (256, 64)),
    Case("ml-1m", 8192, (256, 64), cuda_only=True),  # the dense input alone is 10 GB a step on CPU
    # A 92k-row user-tower table: dense Adam moves all of it every step, SparseAdam what a batch
    # touches.
    Case("amazon-movies", 256, (256, 64)),
    # Tables of 1M and 200k rows, of which a batch touches ~0.5 %: dense Adam's step costs the
    # tables, the row-sparse one the batch (the peers' step costs the tables too).
    Case("200k-1m-5m", 256, (64, 64), contenders=("dmfx", "dmfx-sparse-grad")),
    Case("2m-1m-50m", 8192, (64, 64), cuda_only=True, big=True,
         contenders=("dmfx", "dmfx-sparse-grad", "embedding_bag")),
]
CONTENDERS = ["dmfx", "dmfx-sparse-grad", "dense-input", "embedding_bag"]


@dataclass
class Problem:
    train: Interactions  # what DMF is built from
    user_csr: CSR  # Y, users x items, ratings
    item_csr: CSR  # Y transposed
    batches: list  # (users, items, targets) of STEPS batches
    pairs_per_epoch: int


@functools.lru_cache(maxsize=2)
def _matrices(data: str, device: torch.device):
    if data == "ml-100k":
        interactions = leave_one_out(load_dataset("ml-100k"), seed=0).train
    else:
        shape = SHAPES[data]
        interactions = synthetic(shape.num_users, shape.num_items, shape.nnz, seed=0)
    return (interactions, to_device(interactions.csr("rating"), device),
            to_device(interactions.csr("rating", transpose=True), device))


@functools.lru_cache(maxsize=2)
def _problem(case: Case, device: torch.device) -> Problem:
    from dmfx import ops

    train, user_csr, item_csr = _matrices(case.data, device)
    counts = user_csr.indptr.diff()
    users = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    negatives = ops.sample_negatives(user_csr.indptr, user_csr.indices, users, user_csr.shape[1],
                                     NEGATIVES, seed=0)
    all_users = torch.cat([users, users.repeat_interleave(NEGATIVES)])
    all_items = torch.cat([user_csr.indices.long(), negatives.flatten()])
    targets = torch.cat([user_csr.values / user_csr.values.max(),
                         user_csr.values.new_zeros(negatives.numel())])
    order = torch.randperm(all_users.numel(), generator=torch.Generator().manual_seed(0))
    take = order[: STEPS * case.batch].to(device)
    batches = list(zip(all_users[take].split(case.batch), all_items[take].split(case.batch),
                       targets[take].split(case.batch)))
    return Problem(train, user_csr, item_csr, batches, all_users.numel())


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
    """DMF in careful eager PyTorch: distinct ids once, first layer by F.embedding_bag."""

    def __init__(self, model: DMF, user_csr: CSR, item_csr: CSR):
        super().__init__(model)
        self.user_csr, self.item_csr = user_csr, item_csr

    @staticmethod
    def _tower(csr: CSR, first, mlp, ids):
        distinct, slot = torch.unique(ids, return_inverse=True)
        starts, ends = csr.indptr[distinct].long(), csr.indptr[distinct + 1].long()
        counts = ends - starts
        offsets = torch.cumsum(counts, 0) - counts
        flat = torch.arange(int(counts.sum()), device=ids.device) + torch.repeat_interleave(
            starts - offsets, counts)
        h = F.embedding_bag(csr.indices[flat], first, offsets, mode="sum",
                            per_sample_weights=csr.values[flat])
        return mlp(h)[slot]

    def loss(self, users, items, targets):
        p = self._tower(self.user_csr, self.user_first, self.user_mlp, users)
        q = self._tower(self.item_csr, self.item_first, self.item_mlp, items)
        return reference.cosine_nce_loss(p, q, targets, self.mu)


def _contender(name: str, case: Case, problem: Problem):
    torch.manual_seed(0)
    model = DMF(problem.train, case.layers, case.layers,
                sparse_grad=name == "dmfx-sparse-grad").to(problem.user_csr.indptr.device)
    first_batch = problem.batches[0]
    if name.startswith("dmfx"):
        optimizer = make_optimizer(model, TrainConfig(lr=1e-4))  # the trainer's
        net = model
    else:
        peer = {"dense-input": DenseInputDMF, "embedding_bag": EmbeddingBagDMF}[name]
        net = peer(model, problem.user_csr, problem.item_csr)
        with torch.no_grad():
            assert_agree([net.loss(*first_batch)], [model.loss(*first_batch)],
                         what=f"{name} loss vs dmfx")
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def fn():
        for users, items, targets in problem.batches:
            optimizer.zero_grad(set_to_none=True)
            loss = net.loss(users, items, targets)
            loss.backward()
            optimizer.step()
        return loss

    return fn


def test_train_step(benchmark, device, case, contender):
    problem = _problem(case, device)
    fn = _contender(contender, case, problem)
    measure(benchmark, fn, group=f"DMF training step {case.id}", contender=contender,
            steps_per_call=STEPS, batch=case.batch)
    if not benchmark.disabled:
        step_s = median_s(benchmark) / STEPS
        benchmark.extra_info["pairs_per_s"] = case.batch / step_s
        benchmark.extra_info["epoch_s"] = step_s * -(-problem.pairs_per_epoch // case.batch)
