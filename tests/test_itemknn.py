"""ItemKNN against a brute-force reference (dense loops), and that it learns."""
import numpy as np
import pytest
import torch

from dmfx.data import Interactions
from dmfx.evaluate import evaluate
from dmfx.models import ItemKNN, ItemPop
from dmfx.models.itemknn import cosine_knn
from dmfx.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def interactions_of(dense: np.ndarray) -> Interactions:
    users, items = np.nonzero(dense)
    return Interactions(np.arange(dense.shape[0]), np.arange(dense.shape[1]), users, items,
                        np.ones(len(users)))


def random_matrix(num_users, num_items, density, seed) -> np.ndarray:
    """A random 0/1 matrix with an empty user, an item without interactions (item 1) and two
    identical item columns (items 3 and 5), whose equal similarities to others make ties."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((num_users, num_items)) < density).astype(np.float64)
    dense[0] = 0
    dense[:, 1] = 0
    dense[:, 5] = dense[:, 3]
    dense[2, [3, 5]] = 1  # items 3 and 5 are not empty
    return dense


def reference_knn(dense: np.ndarray, k: int, neighbourhood: str = "history"):
    """S_k (float32 [N, N]) by loops over item pairs: cosine of the binary columns (float64,
    stored as float32), each item's top-k other items, ties to the smaller id; and the scores
    (float64): Y S_k for the neighbourhoods of the user's items, Y S_k^T for the target's."""
    num_items = dense.shape[1]
    counts = dense.sum(0)
    s_k = np.zeros((num_items, num_items), dtype=np.float32)
    for i in range(num_items):
        ranked = []
        for j in range(num_items):
            if j == i:
                continue
            together = float(np.dot(dense[:, i], dense[:, j]))
            cos = np.float32(together / np.sqrt(float(counts[i] * counts[j]))) if together else np.float32(0)
            ranked.append((-float(cos), j, cos))
        for _, j, cos in sorted(ranked)[:k]:
            s_k[i, j] = cos
    s = s_k.astype(np.float64)
    return s_k, dense @ (s if neighbourhood == "history" else s.T)


def stored_s_k(model: ItemKNN) -> np.ndarray:
    ids, sims = model.neighbour_ids.cpu().numpy(), model.neighbour_sims.cpu().numpy()
    s_k = np.zeros((model.num_items, model.num_items), dtype=np.float32)
    rows = np.repeat(np.arange(model.num_items), ids.shape[1])
    np.add.at(s_k, (rows, ids.ravel()), sims.ravel())
    return s_k


def fitted(dense: np.ndarray, k: int, neighbourhood: str = "history") -> ItemKNN:
    train = interactions_of(dense)
    model = ItemKNN(train, neighbours=k, neighbourhood=neighbourhood)
    model.fit_closed_form(train)
    return model


@pytest.mark.parametrize("neighbourhood", ["target", "history"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 9, 20])  # 8 = num_items - 1; 9, 20: more than exist
def test_matches_brute_force(seed, k, neighbourhood):
    dense = random_matrix(12, 9, 0.35, seed)
    model = fitted(dense, k, neighbourhood)
    s_ref, scores_ref = reference_knn(dense, k, neighbourhood)
    np.testing.assert_array_equal(stored_s_k(model), s_ref)

    ids, sims = model.neighbour_ids.numpy(), model.neighbour_sims.numpy()
    assert ids.shape == sims.shape == (9, k)
    own = np.arange(9)[:, None]
    assert not np.any((ids == own) & (sims != 0)), "an item is never its own neighbour"
    assert np.all((sims > 0) | (ids == own)), "padding is the item itself with similarity 0"
    assert np.all(np.diff(sims, axis=1) <= 0), "most similar first"
    assert np.all(sims[1] == 0) and not np.any((ids == 1) & (sims > 0)), "item 1 is empty"

    users = torch.arange(12)
    all_items = model.scorer().all_items(users)
    np.testing.assert_allclose(all_items.numpy(), scores_ref, rtol=1e-6, atol=1e-6)
    assert torch.all(all_items[:, 1] == 0) and torch.all(all_items[0] == 0)
    # candidates (here: every item, shuffled per user) agree exactly with all_items
    g = torch.Generator().manual_seed(seed)
    candidates = torch.stack([torch.randperm(9, generator=g) for _ in users])
    torch.testing.assert_close(model.score(users, candidates), all_items.gather(1, candidates),
                               rtol=0, atol=0)
    torch.testing.assert_close(model.score(users, candidates[:, 0]),
                               all_items.gather(1, candidates[:, :1]).squeeze(1), rtol=0, atol=0)


def test_ties_go_to_the_smaller_id():
    # Item 0 co-occurs equally with the identical items 3 and 5; with k=1 it keeps item 3.
    dense = np.zeros((4, 6))
    dense[0, [0, 3, 5]] = 1
    dense[1, [0, 2]] = 1
    dense[2, [2, 4]] = 1
    dense[3, [2, 3, 5]] = 1
    model = fitted(dense, 1)
    assert model.neighbour_ids[0, 0] == 3  # cos(0, 3) = cos(0, 5) = 1/2 > cos(0, 2)
    assert model.neighbour_ids[3, 0] == 5 and model.neighbour_ids[5, 0] == 3
    np.testing.assert_array_equal(stored_s_k(model), reference_knn(dense, 1)[0])


def test_chunked_similarity_equals_one_chunk():
    dense = random_matrix(40, 30, 0.2, seed=3)
    matrix = interactions_of(dense).to_scipy("binary")
    whole_ids, whole_sims = cosine_knn(matrix, 5)
    for budget in (1, 17, 200):
        ids, sims = cosine_knn(matrix, 5, chunk_entries=budget)
        np.testing.assert_array_equal(ids, whole_ids)
        np.testing.assert_array_equal(sims, whole_sims)
    s_ref, _ = reference_knn(dense, 5)
    model = fitted(dense, 5)
    np.testing.assert_array_equal(stored_s_k(model), s_ref)


def test_similar_items():
    dense = random_matrix(12, 9, 0.35, seed=4)
    model = fitted(dense, 4)
    s_ref, _ = reference_knn(dense, 4)
    items = torch.arange(9)
    top, sims = model.similar_items(items, k=6)
    assert top.shape == sims.shape == (9, 6)
    for i in range(9):
        positive = np.sort(s_ref[i][s_ref[i] > 0])[::-1]
        n = len(positive)
        assert i not in top[i].tolist()
        np.testing.assert_array_equal(sims[i, :n].numpy(), positive)  # the stored top, in order
        np.testing.assert_array_equal(s_ref[i, top[i, :n].numpy()], positive)
        assert torch.all(top[i, n:] == -1) and torch.all(torch.isneginf(sims[i, n:]))
    assert torch.all(top[1] == -1)  # the item without interactions has no neighbours
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        model.similar_items(items, k=0)


def test_bad_parameters():
    train = interactions_of(random_matrix(5, 6, 0.5, seed=0))
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="neighbours"):
            ItemKNN(train, neighbours=bad)
    assert ItemKNN(train, neighbours=3).config() == {"neighbours": 3, "neighbourhood": "target"}
    with pytest.raises(ValueError, match="neighbourhood must be one of target, history"):
        ItemKNN(train, neighbourhood="user")


@pytest.fixture(scope="module")
def split(clustered_split):
    return clustered_split


def test_learns_and_beats_itempop(split):
    config = TrainConfig(epochs=3, patience=0, progress=False)
    pop = ItemPop(split.train)
    pop.fit(split, config)
    model = ItemKNN(split.train, neighbours=20)
    state = model.fit(split, config)
    assert state.epoch == 1  # computed in one pass
    ours, theirs = evaluate(model, split, "test"), evaluate(pop, split, "test")
    assert ours["ndcg@10"] > theirs["ndcg@10"] + 0.1, (ours, theirs)

    fresh = ItemKNN(split.train, **model.config())
    assert not torch.equal(fresh.neighbour_sims, model.neighbour_sims)
    fresh.load_state_dict(model.state_dict())
    users = torch.arange(split.train.num_users)
    assert torch.equal(fresh.scorer().all_items(users), model.scorer().all_items(users))
    assert evaluate(fresh, split, "test") == ours


def test_on_device(split, device):
    model = ItemKNN(split.train, neighbours=10)
    model.fit_closed_form(split.train)
    users = torch.arange(split.train.num_users)
    expected = model.scorer().all_items(users)
    moved = model.to(device)
    got = moved.scorer().all_items(users.to(device)).cpu()
    torch.testing.assert_close(got, expected)
    items = torch.as_tensor(split.test_negatives[:, :5])
    torch.testing.assert_close(moved.score(torch.as_tensor(split.test_users).to(device),
                                           items.to(device)).cpu(),
                               expected[torch.as_tensor(split.test_users)[:, None], items])
    top, _ = moved.recommend(users.to(device)[:3], k=5)
    assert top.shape == (3, 5)


@pytest.mark.parametrize("neighbourhood", ["target", "history"])
def test_scoring_in_small_batches_equals_one_batch(split, neighbourhood, monkeypatch):
    """Scores are computed in batches of bounded product size (a batch of 8192 evaluation rows
    of heavy users took over 20 GB at once); any batching gives the same scores."""
    from dmfx.models import itemknn

    model = ItemKNN(split.train, neighbours=15, neighbourhood=neighbourhood)
    model.fit(split, TrainConfig(progress=False))
    users = torch.tensor([3, 3, 0, 7, 150, 3, 42])  # repeated users, as a random split's rows
    items = torch.randint(split.train.num_items, (len(users), 9), generator=torch.Generator().manual_seed(0))
    whole = model.scorer()
    all_whole, cand_whole = whole.all_items(users), whole.candidates(users, items)
    # each distinct user's product once, read for each of their rows
    assert torch.equal(cand_whole, all_whole.gather(1, items))
    monkeypatch.setattr(itemknn, "BATCH_ENTRIES", 1)  # one user per batch
    tiny = model.scorer()
    assert len(list(tiny._batches(users))) == len(users)
    assert torch.equal(tiny.all_items(users), all_whole)
    assert torch.equal(tiny.candidates(users, items), cand_whole)
    distinct = torch.unique(users)
    monkeypatch.setattr(itemknn, "BATCH_ENTRIES", int(tiny.user_cost[distinct[:2]].sum()))
    some = model.scorer()  # a few distinct users per batch
    assert 1 < len(list(some._batches(distinct))) < len(distinct)
    assert torch.equal(some.candidates(users, items), cand_whole)
