"""Whole DMF-2-nce training steps (forward, backward, Adam): dmfx vs PyTorch peers.

The contenders (dmfx's trainer step, with ``sparse_grad=True``, RecBole's dense-input method and
``F.embedding_bag`` towers), the 20 batches of pairs drawn from a real epoch they all take, the
same initial weights and optimizer (the trainer's fused Adam) and the check of each peer against
dmfx (its first-batch loss, and its second-batch loss after one step on the first) are
:mod:`dmfx.bench.train_step`'s, shared with ``dmfx bench``; this file picks the data and tower
sizes and times them with pytest-benchmark. ``extra_info`` has ``pairs_per_s`` and ``epoch_s``:
the median step times the steps of a whole epoch (training only, no evaluation).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.harness import measure, median_s, prepared
from dmfx.bench import SHAPES
from dmfx.bench import train_step as op
from dmfx.data import Interactions, leave_one_out, load_dataset, synthetic


@dataclass(frozen=True)
class Case:
    data: str  # "ml-100k" (the bundled MovieLens-100K, training split) or a dmfx.bench.SHAPES name
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
CONTENDERS = op.CONTENDERS


@functools.lru_cache(maxsize=2)
def _interactions(data: str) -> Interactions:
    if data == "ml-100k":
        return leave_one_out(load_dataset("ml-100k"), seed=0).train
    shape = SHAPES[data]
    return synthetic(shape.num_users, shape.num_items, shape.nnz, seed=0)


@functools.lru_cache(maxsize=2)
def _problem(case: Case, device: torch.device) -> op.Problem:
    return op.problem(_interactions(case.data), case.batch, case.layers, device)


def test_train_step(benchmark, device, case, contender):
    problem = _problem(case, device)
    fn = prepared(op.OP, problem, contender)
    measure(benchmark, fn, group=f"DMF training step {case.id}", contender=contender,
            steps_per_call=len(problem.batches), batch=case.batch)
    if not benchmark.disabled:
        benchmark.extra_info.update(op.OP.rates(problem, median_s(benchmark)))
