"""One epoch of negatives: ``NEG`` items per observed pair, each user repeated per its degree.

dmfx draws each negative exactly (a binary search over the user's free items); the peer is the
vectorised torch rejection sampler of dmfx.reference (redraw hits until none is left). The
peer builds its sorted key table on every call, as it would once per epoch in training.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import dmfx
from dmfx import reference
from benchmarks.harness import measure, median_s
from benchmarks.matrices import row_of_entry


@dataclass(frozen=True)
class Case:
    matrix: str
    negatives: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"{self.matrix}-neg{self.negatives}"


CASES = [Case("ml-1m", 7), Case("2m-1m-50m", 4, cuda_only=True, big=True)]
# "dmfx" is the trainer's call (validate=False); "dmfx-validate" also checks ids and row order.
CONTENDERS = ["dmfx", "dmfx-validate", "reference"]


@functools.lru_cache(maxsize=1)
def _epoch_users(csr) -> torch.Tensor:
    # The users of every observed pair, shuffled as an epoch's pairs are: sorted users would let
    # a sampler reuse one row for long runs, which training never does.
    users = row_of_entry(csr)
    g = torch.Generator().manual_seed(0)
    return users[torch.randperm(users.numel(), generator=g).to(users.device)]


def _assert_negatives(csr, users: torch.Tensor, out: torch.Tensor, num_negatives: int) -> None:
    """``out`` is a valid sample: [B, n] int64 item ids, none of them an item of its user."""
    assert out.shape == (users.numel(), num_negatives) and out.dtype == torch.int64
    num_items = csr.shape[1]
    assert bool(((out >= 0) & (out < num_items)).all()), "item id out of range"
    # Rows ascending and columns ascending within a row: the keys are already sorted.
    keys = row_of_entry(csr) * num_items + csr.indices
    query = (users.unsqueeze(1) * num_items + out).reshape(-1)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    assert not bool((keys[pos] == query).any()), "a sampled item is a positive of its user"


def test_sample_negatives(benchmark, matrix, case, contender):
    csr = matrix(case.matrix)
    users = _epoch_users(csr)
    args = (csr.indptr, csr.indices, users, csr.shape[1], case.negatives)
    fn = {
        "dmfx": functools.partial(dmfx.ops.sample_negatives, *args, validate=False),
        "dmfx-validate": functools.partial(dmfx.ops.sample_negatives, *args),
        "reference": functools.partial(reference.sample_negatives, *args),
    }[contender]
    # The draws are random, so "agree" means: both honour the same contract on this input.
    _assert_negatives(csr, users, fn(), case.negatives)
    samples = users.numel() * case.negatives
    measure(benchmark, fn, group=f"sample_negatives epoch {case.id}", contender=contender,
            samples=samples)
    if not benchmark.disabled:
        benchmark.extra_info["samples_per_s"] = samples / median_s(benchmark)
