"""DMF, LFM and ItemPop: shapes, the towers' math, the once-per-distinct-id forward, scoring."""
import numpy as np
import pytest
import torch

from dmfx import reference
from dmfx.data import synthetic
from dmfx.models import DMF, LFM, ItemPop


@pytest.fixture(scope="module")
def data():
    return synthetic(40, 50, 600, seed=1)


def test_dmf_tower_matches_dense_reference(data):
    torch.manual_seed(0)
    model = DMF(data.csr("rating"), data.csr("rating", transpose=True), user_layers=(12, 5),
                item_layers=(9, 5))
    users = torch.tensor([0, 3, 3, 7])
    dense = torch.as_tensor(data.to_scipy("rating").toarray())
    tower = model.user_tower
    expected = torch.relu(tower.mlp.layers[0](dense[users] @ tower.first))  # Eq. 6: l1 = Y W1
    torch.testing.assert_close(tower(users), expected)


def test_binary_input_uses_ones(data):
    torch.manual_seed(0)
    model = DMF(data.csr("binary"), data.csr("binary", transpose=True), binary=True)
    users = torch.tensor([1, 2])
    dense = torch.as_tensor(data.to_scipy("binary").toarray())
    first = dense[users] @ model.user_tower.first
    torch.testing.assert_close(model.user_tower.mlp(first), model.user_tower(users))


def test_loss_matches_reference_and_runs_each_distinct_id_once(data, monkeypatch):
    torch.manual_seed(0)
    model = DMF(data.csr("rating"), data.csr("rating", transpose=True), (8, 4), (8, 4))
    users = torch.tensor([0, 0, 5, 5, 5, 9])
    items = torch.tensor([1, 2, 1, 1, 3, 4])
    target = torch.tensor([1.0, 0.0, 0.8, 0.8, 0.0, 0.6])
    seen = []
    original = type(model.user_tower).forward
    monkeypatch.setattr(type(model.user_tower), "forward",
                        lambda self, rows: seen.append(rows.clone()) or original(self, rows))
    loss = model.loss(users, items, target)
    assert seen[0].tolist() == [0, 5, 9] and seen[1].tolist() == [1, 2, 3, 4]
    p = original(model.user_tower, users)
    q = original(model.item_tower, items)
    torch.testing.assert_close(loss, reference.cosine_nce_loss(p, q, target))
    loss.backward()
    assert model.user_tower.first.grad.abs().sum() > 0


def test_init_follows_the_paper(data):
    torch.manual_seed(0)
    model = DMF(data.csr("rating"), data.csr("rating", transpose=True), (64, 64), (64, 64))
    assert model.user_tower.first.std().item() == pytest.approx(0.01, rel=0.1)


def test_mismatched_latent_sizes_are_rejected(data):
    with pytest.raises(ValueError, match="one latent size"):
        DMF(data.csr(), data.csr(transpose=True), user_layers=(8, 4), item_layers=(8, 5))
    with pytest.raises(ValueError, match="Y transposed"):
        DMF(data.csr(), data.csr(), (8, 4), (8, 4))


def test_scorer_is_cosine_of_tower_outputs(data):
    torch.manual_seed(0)
    model = LFM(data.num_users, data.num_items, (8, 4), (8, 4))
    scorer = model.scorer()
    users, items = torch.tensor([2, 3]), torch.tensor([[0, 1], [4, 5]])
    p = model.user_tower(users)
    q = model.item_tower(items.flatten()).view(2, 2, -1)
    expected = torch.nn.functional.cosine_similarity(p.unsqueeze(1), q, dim=-1)
    torch.testing.assert_close(scorer.candidates(users, items), expected)
    torch.testing.assert_close(scorer.all_items(users)[:, [0, 1]][0], expected[0])


def test_itempop_scores_by_popularity():
    model = ItemPop(2, 4, np.array([1, 1, 1, 3, 3, 0]))
    scores = model.scorer().all_items(torch.tensor([0, 1]))
    assert scores.tolist() == [[1, 3, 0, 2]] * 2
