"""Ranking metrics against hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from dmfx.models import Recommender
from dmfx.data import CSR, Interactions
from dmfx.evaluate import (evaluate_full, evaluate_per_user, evaluate_sampled, metrics_from_ranks,
                           ranks_from_scores)


class TableScorer:
    """Scores from a fixed user x item table."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def candidates(self, users, items):
        return self.table[users.unsqueeze(1), items]

    def all_items(self, users):
        return self.table[users]


def test_ranks_count_strictly_better_items():
    target = torch.tensor([0.9, 0.5, 0.1])
    others = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.4, 0.7], [0.2, 0.3, 0.4]])
    assert ranks_from_scores(target, others).tolist() == [0, 2, 3]


def test_ties_are_broken_uniformly():
    target = torch.zeros(20000)
    others = torch.zeros(20000, 3)  # all tied: rank uniform over 0..3
    counts = torch.bincount(ranks_from_scores(target, others, torch.Generator().manual_seed(0)))
    assert counts.tolist() == pytest.approx([5000] * 4, rel=0.05)


def test_hr_and_ndcg_by_hand():
    ranks = torch.tensor([0, 1, 9, 10, 50])
    m = metrics_from_ranks(ranks, ks=(1, 10))
    assert m["hr@1"] == pytest.approx(1 / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)


def test_sampled_protocol_by_hand():
    table = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4]])
    users = np.array([0, 1])
    items = np.array([2, 0])  # user 0's item beats 2 of 3 candidates: rank 1; user 1's is last
    negatives = np.array([[0, 1, 3], [1, 2, 3]])
    m = evaluate_sampled(TableScorer(table), users, items, negatives, ks=(1, 2))
    assert m == pytest.approx({"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 0.5,
                               "ndcg@2": 0.5 / math.log2(3)})


class TableModel(Recommender):
    """A recommender whose scores are a fixed table; user 0 saw items 0 and 1 in training."""

    def __init__(self, table):
        num_users, num_items = np.shape(table)
        super().__init__(Interactions(np.arange(num_users), np.arange(num_items), [0, 0], [0, 1],
                                      [1.0, 1.0]))
        self.table = table

    def scorer(self):
        return TableScorer(self.table)


def test_full_ranking_masks_seen_items():
    model = TableModel([[0.9, 0.8, 0.5, 0.2, 0.1]])
    # item 0 and 1 were seen in training: the held-out item 2 ranks first among the rest
    m = evaluate_full(model, np.array([0]), np.array([2]), model.seen, ks=(1,))
    assert m == {"full_hr@1": 1.0, "full_ndcg@1": 1.0, "full_recall@1": 1.0}
    unmasked = CSR(torch.tensor([0, 0]), torch.zeros(0, dtype=torch.long), torch.ones(0), (1, 5))
    m = evaluate_full(model, np.array([0]), np.array([2]), unmasked, ks=(2, 3))
    assert m["full_hr@2"] == 0.0 and m["full_hr@3"] == 1.0
    assert m["full_ndcg@3"] == pytest.approx(0.5)


def test_full_ranking_breaks_ties_at_random():
    # every item scores alike: the held-out item's position is uniform over the 5 items
    model = TableModel(np.zeros((4000, 5)))
    users = np.arange(4000)
    nothing = CSR(torch.zeros(4001, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                  torch.ones(0), (4000, 5))
    m = evaluate_full(model, users, np.full(4000, 3), nothing, ks=(1, 2))
    assert m["full_hr@1"] == pytest.approx(0.2, abs=0.03)
    assert m["full_hr@2"] == pytest.approx(0.4, abs=0.03)


def test_per_user_metrics_by_hand():
    # user 0 ranks items 0..5 in order; user 1 in reverse. Held out: user 0 {1, 4}, user 1 {0}.
    model = TableModel([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    users, items = np.array([0, 1, 0]), np.array([1, 0, 4])
    m = evaluate_per_user(model, users, items, None, ks=(2, 5))
    d = [1 / math.log2(r + 2) for r in range(6)]
    # user 0: hits at positions 1 and 4; ideal: 2 hits at positions 0, 1. user 1: item 0 is last.
    assert m["user_hr@2"] == pytest.approx(0.5) and m["user_hr@5"] == pytest.approx(0.5)
    assert m["user_ndcg@2"] == pytest.approx((d[1] / (d[0] + d[1])) / 2)
    assert m["user_ndcg@5"] == pytest.approx(((d[1] + d[4]) / (d[0] + d[1])) / 2)
    # leaving out items 0 and 2 of user 0 moves item 1 to the top and item 4 to position 2
    exclude = CSR(torch.tensor([0, 2, 2]), torch.tensor([0, 2]), torch.ones(2), (2, 6))
    m = evaluate_per_user(model, users, items, exclude, ks=(3,))
    assert m["user_ndcg@3"] == pytest.approx(((d[0] + d[2]) / (d[0] + d[1]) + 0) / 2)


def test_per_user_metrics_of_a_random_split_against_brute_force():
    from dmfx.data import ratio_split, synthetic
    from dmfx.evaluate import evaluate
    from dmfx.models import ItemPop
    from dmfx.train import TrainConfig

    split = ratio_split(synthetic(60, 80, 1500, seed=1), num_negatives=10, seed=0)
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    m = evaluate(pop, split, "test", ks=(10,), per_user="all")
    counts = np.bincount(split.train.items, minlength=80)
    top = list(np.argsort(-counts, kind="stable")[:10])  # ItemPop's list (ties aside)
    held = {}
    for u, i in zip(split.test_users, split.test_items):
        held.setdefault(u, set()).add(i)
    assert counts[top[-1]] > np.sort(counts)[-11]  # the top-10 set is unique on this data
    hr = np.mean([any(i in s for i in top) for s in held.values()])
    assert m["user_hr@10"] == pytest.approx(hr)
    assert 0 < m["user_ndcg@10"] <= m["user_hr@10"] <= 1
