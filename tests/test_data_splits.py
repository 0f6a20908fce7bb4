"""Leave-one-out splits with negatives, and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmfx.data import (DataFormatError, Interactions, Split, leave_one_out, load_dataset,
                       ratio_split, read_file, synthetic)
from dmfx.evaluate import evaluate
from dmfx.models import build_model


def pair_keys(x: Interactions) -> set[tuple[int, int]]:
    return set(zip(x.users.tolist(), x.items.tolist()))


@pytest.fixture(scope="module")
def ml100k() -> Interactions:
    return load_dataset("ml-100k")


@pytest.fixture(scope="module")
def ml100k_split(ml100k: Interactions) -> Split:
    return leave_one_out(ml100k, num_negatives=100, seed=0)


# --- leave_one_out ------------------------------------------------------------------


def test_test_item_is_latest_interaction(ml100k: Interactions, ml100k_split: Split) -> None:
    split = ml100k_split
    assert len(split.test_users) == ml100k.num_users  # every ML-100K user has >= 20 ratings
    for u, item in zip(split.test_users[:200], split.test_items[:200]):
        mine = ml100k.users == u
        ts = ml100k.timestamps[mine]
        latest = ml100k.items[mine][ts == ts.max()]
        assert item == latest[-1]  # ties: the one last in file order wins


def test_held_out_items_are_not_in_train(ml100k: Interactions, ml100k_split: Split) -> None:
    split = ml100k_split
    train = pair_keys(split.train)
    test = set(zip(split.test_users.tolist(), split.test_items.tolist()))
    valid = set(zip(split.valid_users.tolist(), split.valid_items.tolist()))
    assert not train & test and not train & valid and not test & valid
    assert np.all(split.valid_items != split.test_items)
    np.testing.assert_array_equal(split.valid_users, split.test_users)
    assert split.train.nnz + len(test) + len(valid) == ml100k.nnz
    assert train | test | valid == pair_keys(ml100k)
    assert (split.train.num_users, split.train.num_items) == (ml100k.num_users, ml100k.num_items)


def test_negatives_are_unseen_distinct_and_in_range(ml100k: Interactions, ml100k_split: Split) -> None:
    seen = pair_keys(ml100k)
    for users, negatives in (
        (ml100k_split.test_users, ml100k_split.test_negatives),
        (ml100k_split.valid_users, ml100k_split.valid_negatives),
    ):
        # int32: half the memory of int64 (0.8 KB per user for 2 x 100 items)
        assert negatives.shape == (ml100k.num_users, 100) and negatives.dtype == np.int32
        assert negatives.min() >= 0 and negatives.max() < ml100k.num_items
        sorted_rows = np.sort(negatives, axis=1)
        assert np.all(np.diff(sorted_rows, axis=1) > 0), "negatives repeat within a row"
        assert not any((u, i) in seen for u, row in zip(users.tolist(), negatives.tolist()) for i in row)
    assert not np.array_equal(ml100k_split.test_negatives, ml100k_split.valid_negatives)


def test_negatives_cover_the_catalogue_uniformly() -> None:
    """Over many users, every unseen item should be drawn at a similar rate."""
    x = synthetic(3000, 60, 6000, seed=2, user_alpha=0.0, item_alpha=0.0)
    split = leave_one_out(x, num_negatives=20, seed=1, valid=False, min_interactions=2)
    counts = np.bincount(split.test_negatives.ravel(), minlength=x.num_items)
    expected = counts.sum() / x.num_items
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected


def test_same_seed_same_split_different_seed_different(ml100k: Interactions, ml100k_split: Split) -> None:
    again = leave_one_out(ml100k, num_negatives=100, seed=0)
    for name in ("valid_items", "test_items", "valid_negatives", "test_negatives"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ml100k_split, name))
    np.testing.assert_array_equal(again.train.items, ml100k_split.train.items)
    other = leave_one_out(ml100k, num_negatives=100, seed=1)
    np.testing.assert_array_equal(other.test_items, ml100k_split.test_items)  # deterministic rule
    assert not np.array_equal(other.valid_items, ml100k_split.valid_items)
    assert not np.array_equal(other.test_negatives, ml100k_split.test_negatives)


def test_test_side_does_not_depend_on_validation(ml100k: Interactions, ml100k_split: Split) -> None:
    no_valid = leave_one_out(ml100k, num_negatives=100, seed=0, valid=False)
    np.testing.assert_array_equal(no_valid.test_items, ml100k_split.test_items)
    np.testing.assert_array_equal(no_valid.test_negatives, ml100k_split.test_negatives)
    assert no_valid.valid_users.shape == (0,) and no_valid.valid_negatives.shape == (0, 100)
    assert no_valid.train.nnz == ml100k.nnz - ml100k.num_users


def test_users_below_threshold_stay_in_train() -> None:
    users = ["a"] * 4 + ["b"] * 2 + ["c"] * 3 + ["d"]
    items = [1, 2, 3, 4, 1, 2, 5, 6, 7, 1]
    times = [1, 2, 3, 4, 9, 8, 3, 2, 1, 5]
    catalogue = list(range(100, 130))  # extra items so negatives exist
    x = Interactions.from_arrays(users + ["z"] * 30, items + catalogue, np.ones(40), times + list(range(30)))
    split = leave_one_out(x, num_negatives=5, seed=0, min_interactions=3)
    evaluated = set(x.user_ids[split.test_users].tolist())
    assert evaluated == {"a", "c", "z"}
    train_users = set(x.user_ids[split.train.users].tolist())
    assert {"b", "d"} <= train_users
    assert (split.train.users == x.user_index("b")).sum() == 2
    # latest by timestamp: a -> 4, c -> 5 (timestamps decrease through c's lines)
    test = dict(zip(x.user_ids[split.test_users].tolist(), x.item_ids[split.test_items].tolist()))
    assert test["a"] == 4 and test["c"] == 5
    strict = leave_one_out(x, num_negatives=5, seed=0, min_interactions=5)
    assert set(x.user_ids[strict.test_users].tolist()) == {"z"}


def test_with_timestamps_the_holdout_is_latest(ml100k_split: Split) -> None:
    assert ml100k_split.holdout == "latest"
    assert "holdout='latest'" in repr(ml100k_split)


def test_without_timestamps_the_test_item_is_random() -> None:
    """File order would make the test item whatever the file is sorted by; here each user's
    lines are sorted by item, so a file-order rule would always pick the last of five."""
    users = np.repeat(np.arange(2000), 5)
    items = np.tile(np.arange(5), 2000)
    x = Interactions.from_arrays(users, items, np.ones(len(users)))
    split = leave_one_out(x, num_negatives=0, seed=0)
    assert split.holdout == "random"
    shares = np.bincount(split.test_items, minlength=5) / len(split.test_items)
    assert np.all(np.abs(shares - 0.2) < 0.03), shares
    assert np.all(split.valid_items != split.test_items)
    again = leave_one_out(x, num_negatives=0, seed=0)
    np.testing.assert_array_equal(again.test_items, split.test_items)
    np.testing.assert_array_equal(again.valid_items, split.valid_items)
    other = leave_one_out(x, num_negatives=0, seed=1)
    assert not np.array_equal(other.test_items, split.test_items)
    no_valid = leave_one_out(x, num_negatives=0, seed=0, valid=False)
    np.testing.assert_array_equal(no_valid.test_items, split.test_items)


def write_play_counts(path: Path, num_users: int = 300, num_items: int = 500, seed: int = 0) -> None:
    """A Last.fm-like ``user_artists.dat``: header, ``user<TAB>artist<TAB>plays``, no timestamps,
    each user's lines sorted by artist id; popularity falls with the id (as when artists are
    numbered in order of first appearance) and play counts are heavy-tailed."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_items + 1)
    popularity /= popularity.sum()
    lines = ["userID\tartistID\tweight"]
    for user in range(1, num_users + 1):
        items = np.sort(rng.choice(num_items, size=int(rng.integers(5, 30)), replace=False, p=popularity)) + 1
        plays = np.ceil(rng.lognormal(4, 1.5, len(items))).astype(int)
        lines += [f"{user}\t{item}\t{n}" for item, n in zip(items, plays)]
    path.write_text("\n".join(lines) + "\n")


def test_play_counts_without_timestamps_evaluate_itempop_sensibly(tmp_path: Path) -> None:
    """Holding out each user's last line here would hold out their least popular artist, which
    puts ItemPop at HR@10 = 0.0, below the 10/101 of a random ranking."""
    path = tmp_path / "user_artists.dat"
    write_play_counts(path)
    with pytest.warns(UserWarning, match="look like counts"):
        data = read_file(path)
    assert (data.num_users, data.timestamps) == (300, None)
    split = leave_one_out(data, num_negatives=100, seed=0)
    assert split.holdout == "random"
    model = build_model("itempop", split.train)
    model.fit_closed_form(split.train)
    hr = evaluate(model, split, "test")["hr@10"]
    assert hr > 3 * 10 / 101, hr


@pytest.mark.parametrize("valid", [True, False])
def test_no_user_to_evaluate_is_an_error(valid: bool) -> None:
    """Without the check every metric would be the mean of nothing: NaN."""
    one_each = Interactions.from_arrays(np.arange(50), np.arange(50) % 7, np.ones(50))
    with pytest.raises(ValueError, match="no user can be evaluated: .* at least min_interactions=3 interactions, "
                                         "but the most any of the 50 users has is 1"):
        leave_one_out(one_each, num_negatives=3, seed=0, valid=valid, min_interactions=3)
    two_each = Interactions.from_arrays(np.arange(100) % 50, np.arange(100) % 9, np.ones(100))
    with pytest.raises(ValueError, match="holds out a test and a validation item only for users with at least"):
        leave_one_out(two_each, num_negatives=3, seed=0)


def test_one_evaluable_user_gives_both_sides() -> None:
    x = Interactions.from_arrays([0, 0, 0] + list(range(1, 20)), [0, 1, 2] + list(range(3, 22)), np.ones(22))
    split = leave_one_out(x, num_negatives=5, seed=0)
    assert split.test_users.tolist() == split.valid_users.tolist() == [0]


def test_too_few_unseen_items_is_an_error() -> None:
    x = synthetic(50, 30, 300, seed=0)
    with pytest.raises(ValueError, match="leaving fewer than num_negatives=29 unseen items"):
        leave_one_out(x, num_negatives=29, seed=0)


def test_dense_users_use_exact_sampling() -> None:
    """Users who rated most of the catalogue still get k distinct unseen items."""
    users = np.repeat(np.arange(20), 35)
    items = np.concatenate([np.random.default_rng(u).choice(45, 35, replace=False) for u in range(20)])
    x = Interactions.from_arrays(users, items, np.ones(len(users)))
    split = leave_one_out(x, num_negatives=10, seed=3)
    seen = pair_keys(x)
    for u, row in zip(split.test_users.tolist(), split.test_negatives.tolist()):
        assert len(set(row)) == 10 and not any((u, i) in seen for i in row)


# --- synthetic ----------------------------------------------------------------------


def test_synthetic_shape_and_invariants() -> None:
    x = synthetic(500, 300, 8000, seed=4)
    assert (x.num_users, x.num_items, x.nnz) == (500, 300, 8000)
    assert len(pair_keys(x)) == 8000, "duplicate pairs"
    assert np.bincount(x.users, minlength=500).min() >= 1
    assert np.bincount(x.items, minlength=300).min() >= 1
    assert set(np.unique(x.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(x.timestamps) > 0)
    assert x.user_ids.tolist() == list(range(500))


def test_synthetic_is_deterministic_by_seed() -> None:
    a, b, c = synthetic(200, 100, 2000, seed=9), synthetic(200, 100, 2000, seed=9), synthetic(200, 100, 2000, seed=10)
    for name in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert pair_keys(a) != pair_keys(c)


def test_synthetic_is_heavy_tailed() -> None:
    x = synthetic(5000, 2000, 100_000, seed=0)
    items = np.sort(np.bincount(x.items, minlength=x.num_items))[::-1]
    users = np.sort(np.bincount(x.users, minlength=x.num_users))[::-1]
    assert items[:200].sum() > 0.4 * x.nnz  # top 10% of items
    assert users[:500].sum() > 0.25 * x.nnz  # top 10% of users
    flat = synthetic(5000, 2000, 100_000, seed=0, user_alpha=0.0, item_alpha=0.0)
    flat_items = np.sort(np.bincount(flat.items, minlength=flat.num_items))[::-1]
    assert flat_items[:200].sum() < 0.15 * flat.nnz


def test_synthetic_ratings_follow_latent_factors() -> None:
    """Ratings carry item effects: item means spread far more than rating noise would."""
    x = synthetic(400, 200, 20_000, seed=5, rank=2, rating_scale=3)
    assert set(np.unique(x.ratings).tolist()) == {1.0, 2.0, 3.0}
    dense = x.to_scipy().toarray()
    observed = dense > 0
    item_means = dense.sum(0) / np.maximum(observed.sum(0), 1)
    assert item_means.std() > 0.2  # pure noise around 2.0 would give ~0.1 at ~100 ratings/item


def test_synthetic_validates_arguments() -> None:
    with pytest.raises(ValueError, match="sparse data only"):
        synthetic(10, 10, 60)
    with pytest.raises(ValueError, match="num_users"):
        synthetic(0, 10, 0)
    assert synthetic(10, 10, 0).nnz == 0
    small = synthetic(10, 20, 5, seed=0)  # fewer pairs than ids: no coverage promise
    assert small.nnz == 5 and len(pair_keys(small)) == 5


def test_ratio_split_invariants():
    from dmfx.data import ratio_split

    data = synthetic(120, 200, 3000, seed=4)
    split = ratio_split(data, (0.8, 0.1, 0.1), num_negatives=20, seed=3)
    train_keys = set(zip(split.train.users.tolist(), split.train.items.tolist()))
    valid_keys = set(zip(split.valid_users.tolist(), split.valid_items.tolist()))
    test_keys = set(zip(split.test_users.tolist(), split.test_items.tolist()))
    every = set(zip(data.users.tolist(), data.items.tolist()))
    # disjoint, and together the whole data set
    assert not (train_keys & valid_keys or train_keys & test_keys or valid_keys & test_keys)
    assert train_keys | valid_keys | test_keys == every
    assert len(split.valid_users) == len(valid_keys) and len(split.test_users) == len(test_keys)
    # the shares, up to the users moved back to train
    assert abs(len(test_keys) - 300) <= 15 and abs(len(valid_keys) - 300) <= 15
    # every evaluated user has training data
    trained = set(split.train.users.tolist())
    assert set(split.test_users.tolist()) <= trained and set(split.valid_users.tolist()) <= trained
    # negatives: never an item the user interacted with anywhere, distinct per row
    for users, negatives in ((split.test_users, split.test_negatives), (split.valid_users, split.valid_negatives)):
        assert negatives.shape == (len(users), 20)
        for u, row in zip(users.tolist(), negatives.tolist()):
            assert len(set(row)) == 20 and not any((u, i) in every for i in row)
    assert split.holdout == "ratio"
    again = ratio_split(data, (0.8, 0.1, 0.1), num_negatives=20, seed=3)
    assert np.array_equal(again.test_items, split.test_items)
    assert np.array_equal(again.test_negatives, split.test_negatives)


def test_ratio_split_keeps_a_training_interaction_per_user_and_checks_ratios():
    from dmfx.data import Interactions, ratio_split

    # users with 1 or 2 interactions: a random split often holds out all of them
    data = Interactions(np.arange(30), np.arange(40), np.repeat(np.arange(30), 2),
                        (np.arange(60) * 7) % 40, np.ones(60))
    split = ratio_split(data, (0.5, 0.0, 0.5), num_negatives=5, seed=0)
    assert set(split.train.users.tolist()) == set(range(30)) and len(split.valid_users) == 0
    for ratios in [(0.8, 0.1), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (0.9, 0.1, 0.0), (1.2, -0.1, -0.1)]:
        with pytest.raises(ValueError, match="ratios"):
            ratio_split(data, ratios)
    with pytest.raises(ValueError, match="num_negatives=39"):
        ratio_split(data, num_negatives=39)



def test_the_split_depends_on_row_order_only_where_documented() -> None:
    """The docstrings' promise: with distinct timestamps leave_one_out does not depend on the
    order of the interactions (a file's row order); without them, and for ratio_split, the order
    is an input as much as the seed."""
    from dmfx.data import ratio_split

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(40), 12)
    items = np.tile(np.arange(12), 40) + 12 * rng.integers(0, 30, 480)  # 12 distinct per user
    stamps, shuffled = rng.permutation(480), rng.permutation(480)

    def rows(timed: bool) -> list[Interactions]:
        return [Interactions.from_arrays(users[o], items[o], np.ones(480), stamps[o] if timed else None)
                for o in (np.arange(480), shuffled)]

    def pairs(x: Interactions, users: np.ndarray, items: np.ndarray) -> list:
        return sorted(zip(x.user_ids[users].tolist(), x.item_ids[items].tolist()))

    for timed in (True, False):
        held_out = [pairs(x, s.test_users, s.test_items) + pairs(x, s.valid_users, s.valid_items)
                    for x in rows(timed) for s in [leave_one_out(x, num_negatives=5, seed=0)]]
        assert (held_out[0] == held_out[1]) == timed
    test = [pairs(x, s.test_users, s.test_items) for x in rows(True) for s in [ratio_split(x, seed=0)]]
    assert test[0] != test[1]


def test_a_pair_stored_twice_is_refused_not_split_across_parts(tmp_path):
    """The constructor does not check that pairs are unique: leave_one_out put one copy in
    test and kept the other in train (trained on the test item)."""
    twice = Interactions([0], [0, 1, 2, 3, 4], [0, 0, 0, 0], [0, 1, 2, 0], [1, 1, 1, 1],
                         [1, 2, 3, 4])
    for split in (lambda d: leave_one_out(d, num_negatives=1),
                  lambda d: ratio_split(d, num_negatives=0)):
        with pytest.raises(ValueError, match="user 0, item 0 occurs more than once"):
            split(twice)
    twice.save_npz(tmp_path / "twice.npz")
    with pytest.raises(DataFormatError, match=r"twice\.npz: user 0, item 0 occurs more than once"):
        Interactions.read_npz(tmp_path / "twice.npz")


def test_ids_of_mixed_kinds_are_refused_not_merged():
    """As text, the int 1 and the string '1' became one user and one of their rows was dropped."""
    with pytest.raises(TypeError, match="users_raw must hold integers or strings, one kind for "
                                        "all, got int, str"):
        Interactions.from_arrays(np.array([1, "1", 2], dtype=object), [5, 6, 7], [1, 1, 1])
    with pytest.raises(TypeError, match="got NoneType, float, str"):
        Interactions.from_arrays(np.array(["a", None, 1.5], dtype=object), [5, 6, 7], [1, 1, 1])
    ints = Interactions.from_arrays(np.array([3, 1], dtype=object), [5, 6], [1, 1])
    assert ints.user_ids.dtype == np.int64 and ints.user_ids.tolist() == [1, 3]
    text = Interactions.from_arrays(np.array(["b", "a"], dtype=object), np.array([b"x", b"\xc3\xa9"]), [1, 1])
    assert text.item_ids.tolist() == ["x", "é"]
    with pytest.raises(ValueError, match="items_raw holds bytes that are not UTF-8"):
        Interactions.from_arrays([1], np.array([b"\xff"]), [1])
    with pytest.raises(ValueError, match=r"timestamps differ in length \(3, 3, 3, 2\)"):
        Interactions.from_arrays([1, 2, 3], [1, 2, 3], [1, 1, 1], [5, 6])


def test_string_ids_stay_strings_when_a_filter_leaves_none():
    empty = Interactions.from_arrays(np.array([], dtype=str), np.array([], dtype=str), [])
    assert empty.user_ids.dtype.kind == "U" and empty.item_ids.dtype.kind == "U"


def test_a_part_rounded_to_nothing_is_named():
    data = Interactions.from_arrays([0] * 5, [0, 1, 2, 3, 4], [1] * 5)  # 4.0 and 4.5 round to 4
    with pytest.raises(ValueError, match="no interaction is left for validation: 5 interactions "
                                         "are too few"):
        ratio_split(data, (0.8, 0.1, 0.1), num_negatives=0)
