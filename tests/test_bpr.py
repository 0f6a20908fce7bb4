"""BPR-MF: the pairwise loss, its scores, training with loss="bpr", round trips and arguments."""
import math

import pytest
import torch

from dmfx.evaluate import evaluate
from dmfx.models import BPR, ItemPop, VectorScorer, build_model
from dmfx.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split(clustered_split):
    return clustered_split


def randomized(train, seed=0, **kwargs) -> BPR:
    model = BPR(train, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def test_pairwise_loss_is_the_formula(split):
    model = randomized(split.train, factors=5, reg=0.01)
    users, pos, neg = torch.tensor([0, 0, 7, 199]), torch.tensor([1, 2, 3, 4]), torch.tensor([9, 9, 299, 0])
    P, Q = model.user.weight.tolist(), model.item.weight.tolist()
    total = 0.0
    for u, i, j in zip(users.tolist(), pos.tolist(), neg.tolist()):
        x = sum(a * (b - c) for a, b, c in zip(P[u], Q[i], Q[j]))
        norms = sum(a * a for a in P[u]) + sum(b * b for b in Q[i]) + sum(c * c for c in Q[j])
        total += -math.log(1 / (1 + math.exp(-x))) + 0.01 * norms
    loss = model.pairwise_loss(users, pos, neg)
    assert loss.item() == pytest.approx(total / 4, rel=1e-5)
    loss.backward()  # gradients reach both tables
    assert model.user.weight.grad.abs().sum() > 0 and model.item.weight.grad.abs().sum() > 0
    # int32 ids, as the negative sampler may hand them over, give the same loss
    torch.testing.assert_close(model.pairwise_loss(users.int(), pos.int(), neg.int()), loss.detach())


def test_scores_are_dot_products(split):
    model = randomized(split.train, factors=3)
    scorer = model.scorer()
    assert isinstance(scorer, VectorScorer)
    users, items = torch.tensor([0, 4, 4]), torch.tensor([[1, 2], [1, 299], [0, 0]])
    expected = torch.einsum("nd,ncd->nc", model.user.weight[users], model.item.weight[items]).detach()
    torch.testing.assert_close(model.score(users, items), expected)
    torch.testing.assert_close(scorer.all_items(users), (model.user.weight[users] @ model.item.weight.T).detach())
    assert model.item_vectors().shape == (split.train.num_items, 3)


def test_initialisation(split):
    torch.manual_seed(0)
    model = BPR(split.train)
    assert model.user.weight.shape == (200, 64) and model.item.weight.shape == (300, 64)
    assert abs(model.item.weight.std().item() - 0.01) < 1e-3


def test_learns_with_the_bpr_loss_and_beats_itempop(split):
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    pop_ndcg = evaluate(pop, split, "test")["ndcg@10"]
    torch.manual_seed(0)
    model = BPR(split.train)
    state = model.fit(split, TrainConfig(epochs=5, batch_size=256, lr=1e-2, num_negatives=1, loss="bpr",
                                         patience=0, progress=False))
    losses = [entry["loss"] for entry in state.history]
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # N(0, 0.01) factors: x_uij ~ 0
    assert losses[-1] < 0.3 * losses[0], losses
    assert evaluate(model, split, "test")["ndcg@10"] > pop_ndcg + 0.2, pop_ndcg


def test_only_the_bpr_loss(split):
    model = BPR(split.train)
    with pytest.raises(NotImplementedError):
        model.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="bpr"):
        model.fit(split, TrainConfig(loss="ce", progress=False))


def test_state_dict_and_config_round_trip(split):
    model = randomized(split.train, factors=7, reg=0.5)
    assert model.config() == {"factors": 7, "reg": 0.5}
    fresh = build_model("bpr", split.train, model.config())
    fresh.load_state_dict(model.state_dict())
    users = torch.arange(split.train.num_users)
    assert torch.equal(fresh.scorer().all_items(users), model.scorer().all_items(users))
    assert torch.equal(fresh.recommend(users[:5], k=10)[0], model.recommend(users[:5], k=10)[0])


@pytest.mark.parametrize("kwargs, match", [(dict(factors=0), "factors"), (dict(factors=2.5), "factors"),
                                           (dict(reg=-1e-3), "reg"), (dict(reg=float("nan")), "reg")])
def test_invalid_arguments(split, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BPR(split.train, **kwargs)
