"""One epoch of negatives: ``negatives`` items per observed pair, each user repeated per its degree.

dmfx draws each negative exactly (a binary search over the user's free items); the peer is the
vectorised torch rejection sampler of dmfx.reference (redraw hits until none is left). The
peer builds its sorted key table on every call, as it would once per epoch in training.

- ``dmfx``: the trainer's call (``validate=False``); ``dmfx-validate`` also checks ids and row order.
- ``reference``: :func:`dmfx.reference.sample_negatives`.

The draws are random, so "agree" means: every contender, dmfx included, honours the same
contract on this input (shape, ids in range, no item of the user).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import ops, reference
from ..data import CSR
from .core import BASELINE, CheckFailed, Contender, Op
from .inputs import has_negatives, row_of_entry

CONTENDERS = (BASELINE, "dmfx-validate", "reference")


@dataclass
class Problem:
    csr: CSR
    users: torch.Tensor  # one per observed pair, shuffled
    negatives: int  # per pair

    @property
    def samples(self) -> int:
        return self.users.numel() * self.negatives


def problem(csr: CSR, negatives: int) -> Problem:
    # The users of every observed pair, shuffled as an epoch's pairs are: sorted users would let
    # a sampler reuse one row for long runs, which training never does.
    users = row_of_entry(csr)[has_negatives(csr)]
    g = torch.Generator().manual_seed(0)
    return Problem(csr, users[torch.randperm(users.numel(), generator=g).to(users.device)], negatives)


def assert_valid(p: Problem, out: torch.Tensor, what: str) -> None:
    """``out`` is a valid sample: [B, n] int64 item ids, none of them an item of its user."""
    csr = p.csr
    num_items = csr.shape[1]
    if out.shape != (p.users.numel(), p.negatives) or out.dtype != torch.int64:
        raise CheckFailed(f"{what}: got {out.dtype} {tuple(out.shape)}, want int64 "
                          f"{(p.users.numel(), p.negatives)}")
    if not bool(((out >= 0) & (out < num_items)).all()):
        raise CheckFailed(f"{what}: item id out of range")
    # Rows ascending and columns ascending within a row: the keys are already sorted.
    keys = row_of_entry(csr) * num_items + csr.indices
    query = (p.users.unsqueeze(1) * num_items + out).reshape(-1)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    if bool((keys[pos] == query).any()):
        raise CheckFailed(f"{what}: a sampled item is a positive of its user")


def prepare(p: Problem, name: str) -> Contender:
    csr = p.csr
    args = (csr.indptr, csr.indices, p.users, csr.shape[1], p.negatives)
    fn = {
        BASELINE: functools.partial(ops.sample_negatives, *args, validate=False),
        "dmfx-validate": functools.partial(ops.sample_negatives, *args),
        "reference": functools.partial(reference.sample_negatives, *args),
    }[name]
    assert_valid(p, fn(), name)
    return Contender(name, fn, "valid sample: shape, ids in range, no item of the user")


def describe(p: Problem) -> str:
    return (f"one epoch of negatives: {p.negatives} per observed pair, {p.samples:,} draws "
            f"over {p.csr.shape[0]:,} x {p.csr.shape[1]:,}")


def rates(p: Problem, median_s: float) -> dict:
    return {"samples_per_s": p.samples / median_s}


OP = Op("sample_negatives", CONTENDERS, prepare, describe, rates)
