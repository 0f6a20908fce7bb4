"""GMF, MLP and NeuMF (NCF): the forward math, the scoring paths, NeuMF-p, learning, round trips."""
from dataclasses import replace

import pytest
import torch

from conftest import clustered
from dmfx.data import leave_one_out
from dmfx.evaluate import evaluate
from dmfx.models import GMF, MLP, NeuMF, ItemPop, build_model
from dmfx.models.ncf import MLPScorer
from dmfx.checkpoint import load_checkpoint, save_checkpoint
from dmfx.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split(clustered_split):
    return clustered_split


@pytest.fixture(scope="module")
def itempop_ndcg(split):
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(progress=False))
    return evaluate(pop, split, "test")["ndcg@10"]


def randomize(model, std=0.5, seed=0):
    """Parameters of order 1 (not N(0, 0.01)), so ReLUs cut and every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def mlp_reference(model, users, items):
    """NCF's MLP written out: [p_u ; q_i] through Linear + ReLU layers."""
    x = torch.cat([model.mlp.user.weight[users], model.mlp.item.weight[items]], -1)
    for layer in model.mlp.layers:
        x = torch.relu(x @ layer.weight.T + layer.bias)
    return x


def gmf_reference(model, users, items):
    return model.gmf.user.weight[users] * model.gmf.item.weight[items]


def reference_logits(model, users, items):
    parts = {GMF: [gmf_reference], MLP: [mlp_reference], NeuMF: [gmf_reference, mlp_reference]}
    x = torch.cat([f(model, users, items) for f in parts[type(model)]], -1)
    return x @ model.predict.weight[0] + model.predict.bias[0]


def check_scoring_paths(model, block=None):
    """logits == scorer.candidates == scorer.all_items == score() == the written-out formula."""
    g = torch.Generator().manual_seed(1)
    users = torch.randint(model.num_users, (7,), generator=g)
    items = torch.randint(model.num_items, (7, 5), generator=g)
    every = torch.arange(model.num_items)
    expected = reference_logits(model, users.repeat_interleave(5), items.reshape(-1)).view(7, 5)
    expected_all = torch.stack([reference_logits(model, u.expand(model.num_items), every) for u in users])
    scorer = model.scorer()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(users.repeat_interleave(5), items.reshape(-1)).view(7, 5), expected)
    torch.testing.assert_close(scorer.candidates(users, items), expected)
    torch.testing.assert_close(scorer.all_items(users), expected_all)
    torch.testing.assert_close(model.score(users, items), expected)
    torch.testing.assert_close(model.score(users, items[:, 0]), expected[:, 0])
    assert scorer.all_items(users[:0]).shape == (0, model.num_items)


def test_gmf_logit_and_loss_are_the_formula(split):
    model = randomize(GMF(split.train, factors=6))
    check_scoring_paths(model)
    users, items = torch.tensor([0, 5, 5, 9]), torch.tensor([3, 3, 7, 299])
    h, b = model.predict.weight[0], model.predict.bias[0]
    p, q = model.gmf.user.weight, model.gmf.item.weight
    logit = torch.stack([(h * p[u] * q[i]).sum() + b for u, i in zip(users, items)])
    target = torch.tensor([1.0, 0.0, 0.6, 0.0])  # ce targets and an nce one
    expected = -(target * torch.log(torch.sigmoid(logit))
                 + (1 - target) * torch.log(1 - torch.sigmoid(logit))).mean()
    torch.testing.assert_close(model.loss(users, items, target), expected)
    torch.testing.assert_close(model.item_vectors(), q.detach())


@pytest.mark.parametrize("layers", [[64, 32, 16, 8], [10, 6], [8]], ids=["4-layer", "1-layer", "no-hidden"])
def test_mlp_scoring_paths_agree(split, layers):
    model = randomize(MLP(split.train, layers=layers))
    assert model.mlp.user.weight.shape == (split.train.num_users, layers[0] // 2)
    check_scoring_paths(model)
    # Scoring in blocks of a few pairs gives the same scores as in one block.
    users, h, b = torch.arange(0, 200, 9), model.predict.weight[0], model.predict.bias[0]
    with torch.no_grad():
        whole = model.mlp.scorer(h, b)
        tiny = MLPScorer(model.mlp.head, *model.mlp.halves(), max(layers), h, b, block=3 * max(layers))
    torch.testing.assert_close(tiny.all_items(users), whole.all_items(users))
    items = torch.randint(split.train.num_items, (len(users), 11))
    torch.testing.assert_close(tiny.candidates(users, items), whole.candidates(users, items))


def test_neumf_scoring_paths_agree(split):
    model = randomize(NeuMF(split.train, factors=5, layers=[16, 8, 4]))
    assert model.predict.weight.shape == (1, 5 + 4)
    check_scoring_paths(model)
    assert model.item_vectors().shape == (split.train.num_items, 5 + 8)


def test_initialisation_follows_ncf(split):
    torch.manual_seed(0)
    model = NeuMF(split.train)
    for table in (model.gmf.user, model.gmf.item, model.mlp.user, model.mlp.item):
        assert abs(table.weight.std().item() - 0.01) < 1e-3
    assert abs(model.predict.weight.std().item() - 0.01) < 5e-3
    assert torch.all(model.predict.bias == 0) and all(torch.all(l.bias == 0) for l in model.mlp.layers)


@pytest.mark.parametrize("cls", [GMF, MLP, NeuMF])
def test_learns_and_beats_itempop(split, itempop_ndcg, cls):
    torch.manual_seed(0)
    model = cls(split.train)
    state = model.fit(split, TrainConfig(epochs=6, batch_size=256, lr=1e-2, num_negatives=4,
                                         loss="ce", patience=0, progress=False))
    losses = [entry["loss"] for entry in state.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert evaluate(model, split, "test")["ndcg@10"] > itempop_ndcg + 0.1, itempop_ndcg


@pytest.mark.parametrize("cls", [GMF, MLP, NeuMF])
def test_state_dict_and_config_round_trip(split, cls):
    model = randomize(cls(split.train))
    fresh = build_model(model.name, split.train, model.config())
    assert fresh.config() == model.config()
    fresh.load_state_dict(model.state_dict())
    users = torch.arange(split.train.num_users)
    assert torch.equal(fresh.scorer().all_items(users), model.scorer().all_items(users))
    top, _ = fresh.similar_items(torch.tensor([0, 1]), k=5)
    assert top.shape == (2, 5) and not (top == torch.tensor([[0], [1]])).any()


def save(path, model, kind=None, best=True, config=None):
    """A checkpoint as training writes it: the weights as the best epoch, a last epoch of zeros."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    last = {k: torch.zeros_like(v) for k, v in weights.items()} if best else weights
    save_checkpoint(path, {"model_state": last, "train_state": {"best_state": weights if best else None},
                           "model": {"kind": kind or model.name, "config": config or model.config()}})
    return str(path)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_neumf_p_fuses_the_pretrained_logits(split, tmp_path, alpha):
    gmf, mlp = randomize(GMF(split.train, factors=6), seed=1), randomize(MLP(split.train, layers=[16, 8]), seed=2)
    model = NeuMF(split.train, factors=6, layers=[16, 8], alpha=alpha,
                  gmf_checkpoint=save(tmp_path / "gmf.pt", gmf, best=True),
                  mlp_checkpoint=save(tmp_path / "mlp.pt", mlp, best=False))
    for part, source in ((model.gmf, gmf.gmf), (model.mlp, mlp.mlp)):
        for key, value in source.state_dict().items():
            assert torch.equal(part.state_dict()[key], value), key
    users = torch.arange(split.train.num_users).repeat_interleave(3)
    items = torch.randint(split.train.num_items, (len(users),), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = alpha * gmf.logits(users, items) + (1 - alpha) * mlp.logits(users, items)
        torch.testing.assert_close(model.logits(users, items), expected, rtol=1e-5, atol=1e-6)
    every = torch.arange(split.train.num_users)
    torch.testing.assert_close(model.scorer().all_items(every),
                               alpha * gmf.scorer().all_items(every) + (1 - alpha) * mlp.scorer().all_items(every),
                               rtol=1e-5, atol=1e-6)


def test_neumf_p_from_checkpoints_written_by_training(split, tmp_path):
    paths, config = {}, TrainConfig(epochs=1, lr=1e-2, num_negatives=1, loss="ce", progress=False)
    for model in (GMF(split.train, factors=4), MLP(split.train, layers=[8, 4])):
        paths[model.name] = tmp_path / f"{model.name}.pt"
        model.fit(split, config, checkpoint=paths[model.name])  # the kind is recorded by fit
        assert load_checkpoint(paths[model.name])["train_state"]["best_state"] is not None
    model = build_model("neumf", split.train, dict(factors=4, layers=[8, 4], gmf_checkpoint=str(paths["gmf"]),
                                                   mlp_checkpoint=str(paths["mlp"])))
    assert evaluate(model, split, "valid")["ndcg@10"] > 0
    # A checkpoint written before fit recorded its model still resumes.
    saved = load_checkpoint(paths["gmf"])
    del saved["model"]
    save_checkpoint(paths["gmf"], saved)
    state = GMF(split.train, factors=4).fit(split, replace(config, epochs=2),
                                            checkpoint=paths["gmf"], resume=True)
    assert [entry["epoch"] for entry in state.history] == [1, 2]


def test_neumf_p_takes_each_part_s_result(split, tmp_path):
    # A run cut by max_steps inside an epoch whose evaluation made it the best: its result (as
    # model.pt and `dmfx evaluate` take it) is the last weights, not the earlier best epoch.
    from dmfx.checkpoint import CheckpointError
    gmf, mlp = randomize(GMF(split.train, factors=6), seed=1), MLP(split.train, layers=[16, 8])
    older = {k: torch.zeros_like(v) for k, v in gmf.state_dict().items()}
    record = {"kind": "gmf", "config": gmf.config()}
    cut = {"epoch": 2, "steps": 5}
    path = tmp_path / "gmf.pt"
    save_checkpoint(path, {"model_state": gmf.state_dict(), "model": record, "train_state": {
        "best_state": older, "partial": {**cut, "evaluated_best": True}}})
    model = NeuMF(split.train, factors=6, layers=[16, 8], gmf_checkpoint=str(path),
                  mlp_checkpoint=save(tmp_path / "mlp.pt", mlp))
    assert torch.equal(model.gmf.user.weight, gmf.gmf.user.weight)
    # Written inside the first epoch, before any evaluation: no result to start from.
    save_checkpoint(path, {"model_state": gmf.state_dict(), "model": record, "train_state": {
        "best_state": None, "partial": cut}})
    with pytest.raises(CheckpointError, match="5 steps into epoch 2, before any epoch was evaluated"):
        NeuMF(split.train, factors=6, layers=[16, 8], gmf_checkpoint=str(path),
              mlp_checkpoint=str(tmp_path / "mlp.pt"))


def test_neumf_p_rejects_mismatches(split, tmp_path):
    gmf, mlp = GMF(split.train, factors=6), MLP(split.train, layers=[16, 8])
    g, m = save(tmp_path / "gmf.pt", gmf), save(tmp_path / "mlp.pt", mlp)

    def neumf(**kw):
        return NeuMF(split.train, **{"factors": 6, "layers": [16, 8], "gmf_checkpoint": g, "mlp_checkpoint": m, **kw})

    neumf()  # the matching pair loads
    with pytest.raises(ValueError, match=r"gmf_checkpoint .*gmf\.pt has factors=6, but NeuMF has factors=8"):
        neumf(factors=8)
    with pytest.raises(ValueError, match=r"layers=\[16, 8\], but NeuMF has layers=\[32, 16, 8\]"):
        neumf(layers=[32, 16, 8])
    with pytest.raises(ValueError, match=r"mlp_checkpoint .*mlp\.pt.* layers=\[16, 8\]"):
        neumf(layers=[16, 4])
    with pytest.raises(ValueError, match="holds a 'gmf' model, not 'mlp'"):
        neumf(mlp_checkpoint=g)
    with pytest.raises(ValueError, match="holds a 'mlp' model, not 'gmf'"):
        neumf(gmf_checkpoint=m)
    with pytest.raises(ValueError, match="both gmf_checkpoint and mlp_checkpoint"):
        neumf(mlp_checkpoint="")
    with pytest.raises(ValueError, match="both gmf_checkpoint and mlp_checkpoint"):
        neumf(gmf_checkpoint="")
    other = GMF(leave_one_out(clustered(num_users=150), num_negatives=30).train, factors=6)
    with pytest.raises(ValueError, match=r"gmf\.user\.weight is \(150, 6\), NeuMF needs \(200, 6\)"):
        neumf(gmf_checkpoint=save(tmp_path / "other.pt", other))
    save_checkpoint(tmp_path / "bare.pt", {"model_state": gmf.state_dict()})
    with pytest.raises(ValueError, match="does not record its model kind"):
        neumf(gmf_checkpoint=str(tmp_path / "bare.pt"))
    with pytest.raises(FileNotFoundError):
        neumf(gmf_checkpoint=str(tmp_path / "missing.pt"))


def test_invalid_arguments(split):
    train = split.train
    for build, match in [
        (lambda: GMF(train, factors=0), "factors"),
        (lambda: MLP(train, layers=[63, 8]), "even"),
        (lambda: MLP(train, layers=[]), "layers"),
        (lambda: MLP(train, layers=[64, 0, 8]), "layers"),
        (lambda: NeuMF(train, factors=-1), "factors"),
        (lambda: NeuMF(train, alpha=1.5), "alpha"),
        (lambda: NeuMF(train, alpha=-0.1), "alpha"),
    ]:
        with pytest.raises(ValueError, match=match):
            build()
    with pytest.raises(ValueError, match="loss"):
        GMF(train).fit(split, TrainConfig(loss="bpr", num_negatives=1, progress=False))
