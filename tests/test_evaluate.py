"""Ranking metrics against hand-computed cases, both protocols, blocked full ranking."""
import math

import numpy as np
import pytest
import torch

from dmfx.data import CSR, Interactions, Split
from dmfx.evaluate import (evaluate, evaluate_per_user, load_ranks, metrics_from_ranks,
                           parse_protocol, query_metrics, rank_full, rank_sampled,
                           ranks_from_scores, save_ranks)
from dmfx.models import Recommender
from dmfx.models.base import topk_items

D = [1 / math.log2(r + 2) for r in range(10)]  # the NDCG discount of 0-based rank r


class TableScorer:
    """Scores from a fixed user x item table."""

    def __init__(self, table):
        self.table = torch.as_tensor(np.asarray(table), dtype=torch.float32)

    def candidates(self, users, items):
        return self.table[users.unsqueeze(1), items]

    def all_items(self, users):
        return self.table[users]


class TableModel(Recommender):
    """A recommender whose scores are a fixed table (user 0 saw items 0 and 1 by default)."""

    def __init__(self, table, train=None):
        num_users, num_items = np.shape(table)
        super().__init__(train or Interactions(np.arange(num_users), np.arange(num_items),
                                               [0, 0], [0, 1], [1.0, 1.0]))
        self.table = table

    def scorer(self):
        return TableScorer(self.table)


def csr(rows, num_items):
    """A binary CSR with the given item lists per user."""
    indptr = torch.tensor(np.cumsum([0] + [len(r) for r in rows]))
    indices = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    return CSR(indptr, indices, torch.ones(len(indices)), (len(rows), num_items))


def test_parse_protocol():
    assert parse_protocol("sampled:100") == ("sampled", 100)
    assert parse_protocol("full") == ("full", 0)
    for bad in ("sampled:0", "sampled", "sampled:x", "full:5", "all", ""):
        with pytest.raises(ValueError, match="expected sampled:N"):
            parse_protocol(bad)


def test_ranks_count_strictly_better_items():
    target = torch.tensor([0.9, 0.5, 0.1])
    others = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.4, 0.7], [0.2, 0.3, 0.4]])
    assert ranks_from_scores(target, others).tolist() == [0, 2, 3]


def test_ties_are_broken_uniformly():
    target = torch.zeros(20000)
    others = torch.zeros(20000, 3)  # all tied: rank uniform over 0..3
    counts = torch.bincount(ranks_from_scores(target, others, torch.Generator().manual_seed(0)))
    assert counts.tolist() == pytest.approx([5000] * 4, rel=0.05)


def test_nan_scores_rank_last():
    nan = float("nan")
    target = torch.tensor([nan, 0.5, nan])
    others = torch.tensor([[0.1, 0.2], [nan, 0.4], [-torch.inf, -torch.inf]])
    ranks = ranks_from_scores(target, others, torch.Generator().manual_seed(0)).tolist()
    assert ranks[:2] == [2, 0] and ranks[2] in (0, 1, 2)  # NaN ties with -inf


def test_a_nan_model_gets_chance_level_not_a_perfect_score():
    # A diverged model (every score NaN) scores like a constant one under both protocols.
    num_users, num_items = 3000, 11
    train = Interactions(np.arange(num_users), np.arange(num_items), [], [], [])
    users, items = np.arange(num_users), np.zeros(num_users, dtype=np.int64)
    negatives = np.tile(np.arange(1, num_items), (num_users, 1))
    split = Split(train, valid_users=users[:0], valid_items=items[:0], test_users=users,
                  test_items=items, valid_negatives=negatives[:0], test_negatives=negatives)
    model = TableModel(np.full((num_users, num_items), np.nan, dtype=np.float32), train)
    m = evaluate(model, split, "test", ks=(1,), protocols=("sampled", "full"))
    assert m["hr@1"] == pytest.approx(1 / num_items, abs=0.015)
    assert m["full_hr@1"] == pytest.approx(1 / num_items, abs=0.015)


def test_nan_scored_items_are_left_out_of_recommendations():
    nan = float("nan")
    for generator in (None, torch.Generator().manual_seed(0)):
        top, values = topk_items(torch.tensor([[0.3, nan, 0.1, nan]]), 4, generator=generator)
        assert top.tolist() == [[0, 2, -1, -1]]
        assert values.tolist() == [[pytest.approx(0.3), pytest.approx(0.1), -math.inf, -math.inf]]


def test_coverage_leaves_out_items_scored_nan_or_minus_inf():
    # The top-K lists behind coverage are recommend's: items scored NaN or -inf are not shown.
    split = tiny_split()
    table = np.array(TABLE, dtype=np.float32)
    table[:, 4], table[:, 5] = np.nan, -np.inf
    found = {}
    m = evaluate(TableModel(table, split.train), split, "test", ks=(2,), protocols=("full",),
                 rankings=found)
    assert not np.isin(found["full"].top, [4, 5]).any()
    assert m["full_coverage@2"] == pytest.approx(2 / 6)  # items 3 (users 0, 1) and 2 (user 1)
    everything_nan = np.full_like(table, np.nan)
    m = evaluate(TableModel(everything_nan, split.train), split, "test", ks=(2,),
                 protocols=("full",))
    assert m["full_coverage@2"] == 0


def test_one_held_out_item_by_hand():
    m = metrics_from_ranks([0, 1, 9, 10, 50], ks=(1, 10))
    assert m == pytest.approx({
        "hr@1": 1 / 5, "ndcg@1": 1 / 5, "recall@1": 1 / 5, "precision@1": 1 / 5,
        "mrr@1": 1 / 5, "map@1": 1 / 5,
        "hr@10": 3 / 5, "ndcg@10": (D[0] + D[1] + D[9]) / 5, "recall@10": 3 / 5,
        "precision@10": 3 / 50, "mrr@10": (1 + 1 / 2 + 1 / 10) / 5, "map@10": (1 + 1 / 2 + 1 / 10) / 5,
    })
    assert all(math.isnan(v) for v in metrics_from_ranks([], ks=(5,)).values())


def test_several_held_out_items_by_hand():
    # user 7: ranks 1 and 4; user 3: rank 7 (a miss); user 5: ranks 0, 1, 2 (nothing else left)
    queries = [7, 3, 5, 7, 5, 5]
    ranks = [4, 7, 2, 1, 0, 1]
    ids, per_user = query_metrics(ranks, queries, ks=(2, 5))
    assert ids.tolist() == [3, 5, 7]
    expected = {
        "hr@2": [0, 1, 1], "recall@2": [0, 2 / 3, 1 / 2], "precision@2": [0, 1, 1 / 2],
        "ndcg@2": [0, 1, D[1] / (D[0] + D[1])], "mrr@2": [0, 1, 1 / 2],
        "map@2": [0, (1 + 1) / 2, (1 / 2) / 2],
        "hr@5": [0, 1, 1], "recall@5": [0, 1, 1], "precision@5": [0, 3 / 5, 2 / 5],
        "ndcg@5": [0, 1, (D[1] + D[4]) / (D[0] + D[1])], "mrr@5": [0, 1, 1 / 2],
        "map@5": [0, (1 + 1 + 1) / 3, (1 / 2 + 2 / 5) / 2],
    }
    assert set(per_user) == set(expected)
    for key, values in expected.items():
        assert per_user[key] == pytest.approx(values), key
    means = metrics_from_ranks(ranks, ks=(2, 5), prefix="full_", queries=queries)
    assert means == pytest.approx({f"full_{k}": np.mean(v) for k, v in expected.items()})


def tiny_split():
    """3 users x 6 items. Train: user 0 {0, 1}, user 1 {0}, user 2 {0, 1, 2, 3}; validation
    items 2, 1, 4; test items: user 0 {3}, user 1 {2, 5}, user 2 {5} (everything else seen)."""
    train = Interactions(np.arange(3), np.arange(6), [0, 0, 1, 2, 2, 2, 2], [0, 1, 0, 0, 1, 2, 3],
                         np.ones(7))
    return Split(train, valid_users=np.array([0, 1, 2]), valid_items=np.array([2, 1, 4]),
                 test_users=np.array([0, 1, 1, 2]), test_items=np.array([3, 2, 5, 5]),
                 valid_negatives=np.array([[4, 5], [3, 4], [5, 5]]),
                 test_negatives=np.array([[4, 5], [3, 4], [3, 4], [4, 4]]), holdout="ratio")


TABLE = [[0.9, 0.8, 0.7, 0.5, 0.6, 0.4],
         [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
         [0.5, 0.5, 0.5, 0.5, 0.1, 0.9]]


def test_full_ranking_by_hand():
    split = tiny_split()
    model = TableModel(TABLE, split.train)
    found = {}
    m = evaluate(model, split, "test", ks=(1, 2), protocols=("full",), rankings=found)
    full = found["full"]
    # user 0 ranks 4 (0.6) above its test item 3 (0.5); items 0-2 are masked (train, valid)
    # user 1: 5, 4, 3, 2 once 0 and 1 are masked; user 2: only item 5 is left
    assert full.ranks.tolist() == [1, 3, 0, 0] and full.candidates.tolist() == [3, 4, 4, 1]
    assert full.top.tolist() == [[4, 3], [5, 4], [5, -1]]
    u0 = {"hr": (0, 1), "recall": (0, 1), "precision": (0, 1 / 2), "ndcg": (0, D[1]),
          "mrr": (0, 1 / 2), "map": (0, 1 / 2)}
    u1 = {"hr": (1, 1), "recall": (1 / 2, 1 / 2), "precision": (1, 1 / 2),
          "ndcg": (1, D[0] / (D[0] + D[1])), "mrr": (1, 1), "map": (1, 1 / 2)}
    u2 = {"hr": (1, 1), "recall": (1, 1), "precision": (1, 1 / 2), "ndcg": (1, 1), "mrr": (1, 1),
          "map": (1, 1)}
    expected = {f"full_{name}@{k}": np.mean([u[name][i] for u in (u0, u1, u2)])
                for name in u0 for i, k in enumerate((1, 2))}
    expected.update({"full_coverage@1": 2 / 6, "full_coverage@2": 3 / 6})
    assert m == pytest.approx(expected)
    # validation masks only the training items: the test items stay candidates
    evaluate(model, split, "valid", ks=(1,), protocols=("full",), rankings=found)
    assert found["full"].ranks.tolist() == [0, 4, 1]


def test_sampled_protocol_by_hand():
    split = tiny_split()
    found = {}
    m = evaluate(TableModel(TABLE, split.train), split, "test", ks=(1, 2), protocols=("sampled",),
                 rankings=found)
    # each row among its own two negatives: 3 vs {4, 5}; 2 vs {3, 4}; 5 vs {3, 4}; 5 vs {4, 4}
    assert found["sampled"].ranks.tolist() == [1, 2, 0, 0]
    assert found["sampled"].candidates.tolist() == [3, 3, 3, 3]
    assert m["hr@1"] == pytest.approx(2 / 4) and m["hr@2"] == pytest.approx(3 / 4)
    assert m["ndcg@2"] == pytest.approx((D[1] + 2) / 4)
    assert m["mrr@2"] == m["map@2"] == pytest.approx((1 / 2 + 2) / 4)
    assert m["precision@2"] == pytest.approx(3 / 8) and "coverage@2" not in m
    assert set(evaluate(TableModel(TABLE, split.train), split, "test")) >= {"hr@10", "full_hr@10"}


def test_bad_protocols_are_refused():
    split = tiny_split()
    model = TableModel(TABLE, split.train)
    with pytest.raises(ValueError, match="protocols must be among sampled, full"):
        evaluate(model, split, protocols=("all",))
    bare = Split(split.train, split.valid_users, split.valid_items, split.test_users,
                 split.test_items, np.zeros((3, 0), int), np.zeros((4, 0), int))
    with pytest.raises(ValueError, match="without"):
        evaluate(model, bare, protocols=("sampled",))
    assert set(evaluate(model, bare)) == {f"full_{m}@10" for m in
                                          ("hr", "ndcg", "recall", "precision", "mrr", "map",
                                           "coverage")}


@pytest.mark.parametrize("seed", [0, 1])
def test_blocked_full_ranking_equals_the_dense_reference(seed):
    rng = np.random.default_rng(seed)
    num_users, num_items = 30, 25
    table = np.round(rng.random((num_users, num_items)), 1)  # many ties
    seen = [sorted(rng.choice(num_items, rng.integers(0, 10), replace=False).tolist())
            for _ in range(num_users)]
    seen[4] = [i for i in range(num_items) if i not in (3, 7)]  # everything but its test items
    users = np.array([u for u in range(num_users) for _ in range(1 + u % 3)])
    items = np.array([rng.choice([i for i in range(num_items) if i not in seen[u]])
                      for u in users])
    items[users == 4] = [3, 7]
    keep = np.unique(users * num_items + items, return_index=True)[1]
    users, items = users[np.sort(keep)], items[np.sort(keep)]
    exclude = csr(seen, num_items)
    scorer = TableScorer(table)
    one = rank_full(scorer, users, items, exclude, num_items, k=6, block_entries=num_items)
    all_ = rank_full(scorer, users, items, exclude, num_items, k=6, block_entries=1 << 20)
    for name in ("ranks", "candidates", "top"):
        assert np.array_equal(getattr(one, name), getattr(all_, name)), name
    # the dense reference: a rank lies among the items that tie with it, and the top lists are
    # those of Recommender.recommend under the same tie-breaking draws
    for n, (u, i) in enumerate(zip(users, items)):
        free = np.setdiff1d(np.arange(num_items), seen[u])
        greater = (table[u, free] > table[u, i]).sum()
        equal = (table[u, free] == table[u, i]).sum() - 1
        assert greater <= one.ranks[n] <= greater + equal
        assert one.candidates[n] == len(free)
        assert (one.ranks[n] < 6) == (i in one.top[np.searchsorted(np.unique(users), u)])
    model = TableModel(table)
    expected, _ = model.recommend(torch.as_tensor(np.unique(users)), 6, exclude=exclude,
                                  generator=torch.Generator().manual_seed(0))
    assert np.array_equal(one.top, expected.numpy())
    assert one.top[4].tolist()[:2] in ([3, 7], [7, 3]) and one.top[4, 2:].tolist() == [-1] * 4
    rows = np.flatnonzero(users == 4)
    assert sorted(one.ranks[rows].tolist()) == [0, 1]


def test_the_tie_seed_reorders_equal_scores_only():
    from dmfx.data import ratio_split, synthetic
    from dmfx.models import ItemPop
    from dmfx.train import TrainConfig

    split = ratio_split(synthetic(60, 80, 1500, seed=1), num_negatives=10, seed=0)
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    pop.popularity.fill_(1.0)  # every item alike: the metrics are the tie-break's alone
    runs = [evaluate(pop, split, "test", ks=(10,), per_user="unseen", tie_seed=s) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] == evaluate(pop, split, "test", ks=(10,),
                                                      per_user="unseen")
    assert all(runs[0][key] != runs[2][key] for key in ("hr@10", "full_hr@10", "user_hr@10"))
    distinct = TableModel(np.arange(60 * 80, dtype=np.float32).reshape(60, 80), split.train)
    assert (evaluate(distinct, split, "test", ks=(10,), tie_seed=0)
            == evaluate(distinct, split, "test", ks=(10,), tie_seed=5))


def test_full_ranking_breaks_ties_at_random():
    # every item scores alike: the held-out item's place is uniform over the 5 items
    scorer = TableScorer(np.zeros((4000, 5)))
    ranking = rank_full(scorer, np.arange(4000), np.full(4000, 3), None, 5)
    assert np.bincount(ranking.ranks).tolist() == pytest.approx([800] * 5, rel=0.1)


def test_full_ranking_per_user_equals_the_einmf_metrics():
    from dmfx.data import ratio_split, synthetic
    from dmfx.models import ItemPop
    from dmfx.train import TrainConfig

    split = ratio_split(synthetic(60, 80, 1500, seed=1), num_negatives=10, seed=0)
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    m = evaluate(pop, split, "test", ks=(5, 10), per_user="unseen")
    for k in (5, 10):
        assert m[f"full_hr@{k}"] == pytest.approx(m[f"user_hr@{k}"])
        assert m[f"full_ndcg@{k}"] == pytest.approx(m[f"user_ndcg@{k}"])
        assert m[f"full_recall@{k}"] <= m[f"full_hr@{k}"]


def test_per_user_metrics_by_hand():
    # user 0 ranks items 0..5 in order; user 1 in reverse. Held out: user 0 {1, 4}, user 1 {0}.
    model = TableModel([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    users, items = np.array([0, 1, 0]), np.array([1, 0, 4])
    m = evaluate_per_user(model, users, items, None, ks=(2, 5))
    assert m["user_hr@2"] == pytest.approx(0.5) and m["user_hr@5"] == pytest.approx(0.5)
    assert m["user_ndcg@2"] == pytest.approx((D[1] / (D[0] + D[1])) / 2)
    assert m["user_ndcg@5"] == pytest.approx(((D[1] + D[4]) / (D[0] + D[1])) / 2)
    exclude = CSR(torch.tensor([0, 2, 2]), torch.tensor([0, 2]), torch.ones(2), (2, 6))
    m = evaluate_per_user(model, users, items, exclude, ks=(3,))
    assert m["user_ndcg@3"] == pytest.approx(((D[0] + D[2]) / (D[0] + D[1]) + 0) / 2)


def test_ranks_file_round_trip(tmp_path):
    split = tiny_split()
    model = TableModel(TABLE, split.train)
    found = {}
    evaluate(model, split, "test", rankings=found)
    ids = np.array(["a", "b", "c"]), np.arange(10, 16)
    save_ranks(tmp_path / "ranks.npz", {("test", p): r for p, r in found.items()}, *ids)
    loaded, user_ids, item_ids = load_ranks(tmp_path / "ranks.npz")
    assert sorted(loaded) == [("test", "full"), ("test", "sampled")]
    for protocol, ranking in found.items():
        back = loaded[("test", protocol)]
        for name in ("users", "items", "ranks", "candidates"):
            assert np.array_equal(getattr(back, name), getattr(ranking, name))
    assert user_ids.tolist() == ["a", "b", "c"] and item_ids.tolist() == list(range(10, 16))
    assert list(tmp_path.iterdir()) == [tmp_path / "ranks.npz"]


def test_rank_sampled_matches_the_scores():
    scorer = TableScorer([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4]])
    ranking = rank_sampled(scorer, np.array([0, 1]), np.array([2, 0]), np.array([[0, 1, 3], [1, 2, 3]]))
    assert ranking.ranks.tolist() == [1, 3] and ranking.queries.tolist() == [0, 1]


def test_both_protocols_compare_float64_scores_as_float32():
    """Two float64 scores that round to one float32 tie under both protocols alike."""
    scorer = TableScorer([[0.5, 0.5 + 1e-12, 0.1]])
    scorer.table = scorer.table.double()
    scorer.table[0, 1] = 0.5 + 1e-12
    ranks = {rank_full(scorer, np.array([0]), np.array([0]), None, 3, k=3,
                       seed=seed).ranks[0] for seed in range(20)}
    sampled = {rank_sampled(scorer, np.array([0]), np.array([0]), np.array([[1, 2]]),
                            seed=seed).ranks[0] for seed in range(20)}
    assert ranks == sampled == {0, 1}  # a tie, broken at random, not always rank 1


@pytest.mark.usefixtures("one_thread")
def test_early_stopping_under_full_ranking(tmp_path):
    from dmfx.checkpoint import load_checkpoint, save_checkpoint
    from dmfx.data import leave_one_out, synthetic
    from dmfx.models import DMF
    from dmfx.train import TrainConfig, fit

    split = leave_one_out(synthetic(40, 80, 800, seed=3), num_negatives=0, seed=0)
    torch.manual_seed(0)
    model = DMF(split.train, (16, 8), (16, 8))
    config = TrainConfig(epochs=8, batch_size=64, lr=3e-2, patience=2, progress=False,
                         protocol="full")
    state = fit(model, split, config, checkpoint=tmp_path / "c.pt")
    watched = [h["valid"]["full_ndcg@10"] for h in state.history]
    assert all(set(h["valid"]) == {f"full_{m}@10" for m in ("hr", "ndcg", "recall", "precision",
                                                             "mrr", "map", "coverage")}
               for h in state.history)
    assert watched[state.best_epoch - 1] == max(watched)
    assert len(state.history) in (state.best_epoch + 2, 8)
    assert evaluate(model, split, "valid", protocols=("full",))["full_ndcg@10"] == pytest.approx(
        max(watched))
    with pytest.raises(ValueError, match="protocol must be one of sampled, full"):
        TrainConfig(protocol="sampled:100")
    # a checkpoint written before the setting existed was validated under sampled, the default
    saved = load_checkpoint(tmp_path / "c.pt")
    del saved["train_config"]["protocol"]
    save_checkpoint(tmp_path / "c.pt", saved)
    from dmfx.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="protocol 'sampled' -> 'full'"):
        fit(DMF(split.train, (16, 8), (16, 8)), split, config, checkpoint=tmp_path / "c.pt",
            resume=True)
