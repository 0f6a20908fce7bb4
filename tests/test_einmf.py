"""EINMF: the latent vectors from [R | IR], the hybrid model's scoring paths, the hybrid loss,
the trainer's two targets, learning and round trips."""
import pytest
import torch
import torch.nn.functional as F

from dmfx.data import leave_one_out, synthetic
from dmfx.evaluate import evaluate
from dmfx.models import EINMF, ItemPop, build_model, train_config
from dmfx.models.einmf import explicit_implicit_rows
from dmfx.train import EpochPairs, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split(clustered_split):
    return clustered_split


def dense(train, transpose=False):
    """R (ratings) and IR (0/1) as dense matrices, users x items (or items x users)."""
    r = torch.zeros(train.num_users, train.num_items, dtype=torch.float64)
    r[torch.from_numpy(train.users).long(), torch.from_numpy(train.items).long()] = \
        torch.from_numpy(train.ratings).double()
    r = r.T if transpose else r
    return r, (r != 0).double()


def randomize(model, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.double()


@pytest.mark.parametrize("transpose", [False, True], ids=["users", "items"])
def test_rows_of_r_beside_ir(split, transpose):
    m = explicit_implicit_rows(split.train, transpose)
    r, ir = dense(split.train, transpose)
    full = torch.zeros(m.shape, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(m.shape[0]), m.indptr.long().diff())
    full[rows, m.indices.long()] = m.values.double()
    assert torch.equal(full, torch.cat([r, ir], 1))
    for row in range(0, m.shape[0], 17):  # sorted within each row, as the ops expect
        cols = m.indices[m.indptr[row]:m.indptr[row + 1]]
        assert torch.all(cols[1:] > cols[:-1])


def reference_logits(model, train, users, items):
    """Eq. 9-11 written out on dense R and IR (dropout off)."""
    wu, wi = model.user_latent.weight, model.item_latent.weight
    if model.config()["input"] == "rows":
        (r, ir), n_items, n_users = dense(train), model.num_items, model.num_users
        p = r @ wu[:n_items] + ir @ wu[n_items:]
        q = r.T @ wi[:n_users] + ir.T @ wi[n_users:]
    else:
        p = wu[:model.num_users] + wu[model.num_users:]
        q = wi[:model.num_items] + wi[model.num_items:]
    p, q = p[users], q[items]
    x = torch.cat([p, q], 1)
    for layer in model.mlp:
        x = torch.relu(x @ layer.weight.T + layer.bias)
    return torch.cat([p * q, x], 1) @ model.predict.weight[0] + model.predict.bias[0]


@pytest.mark.parametrize("input", ["rows", "ids"])
def test_scoring_paths_are_the_formula(split, input):
    model = randomize(EINMF(split.train, factors=6, layers=[10, 4], input=input)).eval()
    g = torch.Generator().manual_seed(1)
    users = torch.randint(model.num_users, (7,), generator=g)
    items = torch.randint(model.num_items, (7, 5), generator=g)
    pair_users = users.repeat_interleave(5)
    expected = reference_logits(model, split.train, pair_users, items.reshape(-1)).view(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(pair_users, items.reshape(-1)).view(7, 5), expected)
    scorer = model.scorer()
    torch.testing.assert_close(scorer.candidates(users, items), expected)
    every = torch.arange(model.num_items)
    expected_all = torch.stack([reference_logits(model, split.train, u.expand(model.num_items), every) for u in users])
    torch.testing.assert_close(scorer.all_items(users), expected_all)
    torch.testing.assert_close(model.score(users, items), expected)
    assert model.item_vectors().shape == (model.num_items, 6)


@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_loss_is_the_eta_weighted_pair_of_cross_entropies(split, eta):
    model = randomize(EINMF(split.train, factors=4, layers=[6], eta=eta)).eval()
    users, items = torch.tensor([0, 5, 5, 9]), torch.tensor([3, 3, 7, 299])
    target = torch.tensor([[1.0, 0.8], [0.0, 0.0], [1.0, 0.2], [1.0, 1.0]], dtype=torch.float64)
    logits = model.logits(users, items)
    expected = (eta * F.binary_cross_entropy_with_logits(logits, target[:, 0])
                + (1 - eta) * F.binary_cross_entropy_with_logits(logits, target[:, 1]))
    torch.testing.assert_close(model.loss(users, items, target), expected)


def test_dropout_acts_in_training_only(split):
    model = EINMF(split.train, factors=4, layers=[64], dropout=0.5)
    randomize(model)
    users, items = torch.arange(20), torch.arange(20)
    model.train()
    torch.manual_seed(0)
    a = model.logits(users, items)
    b = model.logits(users, items)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model.logits(users, items), model.logits(users, items))
    # scoring never drops out, even on a model left in training mode (as fit leaves it)
    expected_scores, expected_top = model.score(users, items), model.recommend(users, k=5)
    torch.testing.assert_close(expected_scores, model.logits(users, items))
    model.train()
    torch.testing.assert_close(model.score(users, items), expected_scores)
    for got, expected in zip(model.recommend(users, k=5), expected_top):
        torch.testing.assert_close(got, expected)


def test_epoch_pairs_carry_both_targets(split):
    config = TrainConfig(loss="hybrid", num_negatives=3, progress=False)
    pairs = EpochPairs(split, config, torch.device("cpu"))
    users, items, targets, _ = pairs.epoch(1)
    nnz = split.train.nnz
    assert targets.shape == (nnz * 4, 2)
    torch.testing.assert_close(targets[:nnz, 0], torch.ones(nnz))
    torch.testing.assert_close(targets[:nnz, 1],
                               torch.from_numpy(split.train.ratings) / split.train.max_rating)
    assert torch.all(targets[nnz:] == 0)


@pytest.mark.parametrize("input", ["rows", "ids"])
def test_learns_and_beats_itempop(split, input):
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    baseline = evaluate(pop, split, "test")["ndcg@10"]
    torch.manual_seed(0)
    model = EINMF(split.train, factors=16, layers=[16, 8], input=input)
    state = model.fit(split, TrainConfig(epochs=6, batch_size=256, lr=3e-3, num_negatives=4,
                                         loss="hybrid", patience=0, progress=False))
    losses = [entry["loss"] for entry in state.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert evaluate(model, split, "test")["ndcg@10"] > baseline + 0.1, baseline


def test_registry_defaults_follow_the_paper(split):
    model = build_model("einmf", split.train)
    assert model.config() == dict(factors=64, layers=[64, 32, 16], dropout=0.2, eta=0.6, input="rows")
    config = train_config("einmf")
    assert (config.lr, config.batch_size, config.num_negatives, config.loss, config.epochs,
            config.patience) == (1e-4, 1024, 4, "hybrid", 100, 10)
    assert abs(model.user_latent.weight.std().item() - 0.01) < 1e-3


def test_bad_arguments(split):
    train = split.train
    for kwargs, match in [(dict(factors=0), "factors"), (dict(layers=[]), "layers"),
                          (dict(layers=[8, 0]), "layers"), (dict(dropout=1.0), "dropout"),
                          (dict(eta=1.5), "eta"), (dict(eta=-0.1), "eta"),
                          (dict(input="onehot"), "input")]:
        with pytest.raises(ValueError, match=match):
            EINMF(train, **kwargs)
    with pytest.raises(ValueError, match="loss"):
        EINMF(train).fit(split, TrainConfig(loss="nce", progress=False))


def test_state_dict_round_trip():
    split = leave_one_out(synthetic(40, 150, 600, seed=1), num_negatives=20, seed=0)
    model = randomize(EINMF(split.train, factors=4, layers=[6])).float().eval()
    again = build_model("einmf", split.train, model.config(), restore=True)
    again.load_state_dict(model.state_dict())
    users = torch.arange(split.train.num_users)
    torch.testing.assert_close(again.eval().scorer().all_items(users), model.scorer().all_items(users))


def test_a_resumed_run_draws_the_same_dropout_masks(split, tmp_path):
    def trained(phases, path):
        for i, epochs in enumerate(phases):
            torch.manual_seed(i)  # a new process starts from another global generator state
            model = EINMF(split.train, factors=4, layers=[8], dropout=0.5)
            config = TrainConfig(loss="hybrid", epochs=epochs, batch_size=256, lr=1e-2,
                                 patience=0, progress=False)
            model.fit(split, config, checkpoint=path, resume=i > 0)
        return model

    whole = trained([2], tmp_path / "a.pt")
    resumed = trained([1, 2], tmp_path / "b.pt")
    for (name, x), y in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_run_resumed_inside_an_epoch_draws_the_same_dropout_masks(split, tmp_path):
    def trained(limits, path):
        for i, limit in enumerate(limits):
            torch.manual_seed(i)  # a new process starts from another global generator state
            model = EINMF(split.train, factors=4, layers=[8], dropout=0.5)
            config = TrainConfig(loss="hybrid", epochs=2, batch_size=256, lr=1e-2, patience=0,
                                 max_steps=limit, progress=False)
            model.fit(split, config, checkpoint=path, resume=i > 0)
        return model

    whole = trained([0], tmp_path / "a.pt")
    resumed = trained([3, 0], tmp_path / "b.pt")  # cut after 3 steps of epoch 1
    for (name, x), y in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name
