"""Batch recommendation: the top 10 unseen items of every user, 100k users x 1M items.

The model is a 64-factor BPR with random weights over synthetic data (100k users, 1M items,
5M interactions, power-law popularity); what is timed does not depend on the weights.

- ``dmfx``: :func:`dmfx.serving.recommend_blocks`: blocks of 1024 users scored against a tile
  of items at a time (about 256 MB of scores), the users' interacted items set to -inf, a
  running top-k kept on the device.
- ``torch-dense``: what a script without dmfx writes within the same memory: blocks of users
  scored against every item, ``U[b] @ V.T`` (16 users at 1M items fill 256 MB), a dense boolean
  mask of the block's interacted items built with ``index_put_``, ``masked_fill``,
  ``torch.topk``.

Memory is bounded the same for both; materialising 100k x 1M scores (400 GB) is not a
contender. With 16 users a block, the dense peer reads the whole item table (256 MB) per 16
users; the item tiles let one tile serve 1024 users from cache. The lists are checked to agree before timing. One round each: a
call takes minutes on a 2-core CPU.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from dmfx.bench import device_name
from dmfx.data import leave_one_out, synthetic
from dmfx.experiment import Trained
from dmfx.models import build_model
from dmfx.serving import recommend_blocks

# DMFX_BENCH_RECOMMEND=USERS,ITEMS,NNZ times another shape (e.g. a quick 2000,50000,100000).
USERS, ITEMS, NNZ = (int(v) for v in os.environ.get("DMFX_BENCH_RECOMMEND",
                                                      "100000,1000000,5000000").split(","))
K = 10


@functools.lru_cache(maxsize=2)
def _trained(device: str) -> Trained:
    data = synthetic(USERS, ITEMS, NNZ, seed=0)
    split = leave_one_out(data, num_negatives=0, seed=0, valid=False, min_interactions=2)
    torch.manual_seed(0)
    model = build_model("bpr", split.train, {"factors": 64}, device)
    torch.nn.init.normal_(model.user.weight)
    torch.nn.init.normal_(model.item.weight)
    return Trained(model, split)


def _dmfx(trained, users, exclude):
    return [b[1] for b in recommend_blocks(trained, users, K, exclude=exclude)]


def _torch_dense(trained, users, exclude):
    model = trained.model
    user_vectors, item_vectors = model.user.weight.detach(), model.item.weight.detach()
    block = model.users_per_block()
    indptr, indices = exclude.indptr.long(), exclude.indices.long()
    out = []
    for start in range(0, len(users), block):
        b = torch.as_tensor(users[start:start + block], device=user_vectors.device)
        scores = user_vectors[b] @ item_vectors.T
        counts = indptr[b + 1] - indptr[b]
        owner = torch.repeat_interleave(torch.arange(len(b), device=b.device), counts)
        starts = torch.repeat_interleave(indptr[b], counts)
        offsets = torch.arange(len(owner), device=b.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask.index_put_((owner, indices[starts + offsets]), torch.tensor(True, device=b.device))
        out.append(torch.topk(scores.masked_fill_(mask, -torch.inf), K, dim=1).indices.cpu().numpy())
    return out


CONTENDERS = {"dmfx": _dmfx, "torch-dense": _torch_dense}


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_recommend_100k_users_x_1m_items(benchmark, device, contender):
    trained = _trained(str(device))
    exclude = trained.interacted(device=device)
    fn = CONTENDERS[contender]
    head = np.arange(64)  # agree with dmfx on the first users before timing
    got, ref = np.concatenate(fn(trained, head, exclude)), np.concatenate(_dmfx(trained, head, exclude))
    assert np.array_equal(np.sort(got, 1), np.sort(ref, 1)), contender
    benchmark.group = f"recommend top-{K}, {USERS:,} users x {ITEMS:,} items"
    benchmark.extra_info.update(contender=contender, device=device_name(device),
                                dense_block=trained.model.users_per_block())
    users = np.arange(USERS)
    benchmark.pedantic(fn, args=(trained, users, exclude), rounds=1, iterations=1)
