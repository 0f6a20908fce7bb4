"""eALS against brute force on dense matrices (coordinate steps, fixed points, objective), and
that it learns."""
import numpy as np
import pytest
import torch

from dmfx.data import Interactions, Split, leave_one_out, synthetic
from dmfx.evaluate import evaluate
from dmfx.models import EALS, ItemPop
from dmfx.models.eals import missing_weights
from dmfx.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

REG, W0, ALPHA, K = 0.05, 4.0, 0.5, 3


def random_matrix(num_users=9, num_items=7, density=0.4, seed=0) -> np.ndarray:
    """A random 0/1 matrix with an empty user (0) and an item without interactions (1)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((num_users, num_items)) < density).astype(np.float64)
    dense[0] = 0
    dense[:, 1] = 0
    return dense


def split_of(dense: np.ndarray) -> Split:
    users, items = np.nonzero(dense)
    train = Interactions(np.arange(dense.shape[0]), np.arange(dense.shape[1]), users, items,
                         np.ones(len(users)))
    empty = np.zeros(0, dtype=np.int64)
    return Split(train, empty, empty, empty, empty, np.zeros((0, 0), np.int64),
                 np.zeros((0, 0), np.int64))


def dense_weights(dense: np.ndarray, w0=W0, alpha=ALPHA) -> np.ndarray:
    """W: 1 on observed pairs, c_i = w0 f_i^alpha / sum_j f_j^alpha on the missing ones."""
    powered = dense.sum(0) ** alpha
    c = w0 * powered / powered.sum()
    return np.where(dense > 0, 1.0, c[None, :])


def dense_objective(dense, p, q, reg=REG) -> float:
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return float((dense_weights(dense) * (dense - p @ q.T) ** 2).sum()
                 + reg * ((p ** 2).sum() + (q ** 2).sum()))


def setup(seed=0, scale=0.5):
    dense = random_matrix(seed=seed)
    split = split_of(dense)
    model = EALS(split.train, factors=K, reg=REG, w0=W0, alpha=ALPHA)
    runner = model.epoch_runner(split, TrainConfig(progress=False))
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(dense.shape[0], K, generator=g, dtype=torch.float64) * scale
    q = torch.randn(dense.shape[1], K, generator=g, dtype=torch.float64) * scale
    return dense, model, runner, p, q


def exact_coordinate_minimum(objective, x: np.ndarray, index) -> float:
    """argmin_t objective(x with x[index] = t): the objective is quadratic in t."""
    def at(t):
        y = x.copy()
        y[index] = t
        return objective(y)
    a = (at(1.0) + at(-1.0) - 2 * at(0.0)) / 2
    b = (at(1.0) - at(-1.0)) / 2
    return -b / (2 * a)


def test_missing_weights():
    dense = random_matrix()
    train = split_of(dense).train
    c = missing_weights(train, W0, ALPHA)
    np.testing.assert_allclose(c, dense_weights(dense).min(0) * (dense.sum(0) > 0), rtol=1e-12)
    assert c[1] == 0 and c.sum() == pytest.approx(W0)
    np.testing.assert_allclose(missing_weights(train, 3.0, 0.0), np.full(7, 3.0 / 7))  # uniform


@pytest.mark.parametrize("seed", [0, 1])
def test_one_coordinate_step_is_the_exact_minimiser(seed):
    dense, _, runner, p, q = setup(seed)
    for f in range(K):
        updated = runner.update_users(p.clone(), q, factors=[f]).numpy()
        for u in range(dense.shape[0]):
            best = exact_coordinate_minimum(lambda x: dense_objective(dense, x, q), p.numpy(), (u, f))
            assert updated[u, f] == pytest.approx(best, rel=1e-9, abs=1e-12)
        others = [k for k in range(K) if k != f]
        np.testing.assert_array_equal(updated[:, others], p.numpy()[:, others])
        assert dense_objective(dense, updated, q) <= dense_objective(dense, p, q)

        updated = runner.update_items(p, q.clone(), factors=[f]).numpy()
        for i in range(dense.shape[1]):
            best = exact_coordinate_minimum(lambda x: dense_objective(dense, p, x), q.numpy(), (i, f))
            assert updated[i, f] == pytest.approx(best, rel=1e-9, abs=1e-12)
        np.testing.assert_array_equal(updated[:, others], q.numpy()[:, others])


def ridge_users(dense, q):
    """P_u = (Q^T C_u Q + reg I)^-1 Q^T C_u r_u for every user (C_u = diag of W's row u)."""
    w, q = dense_weights(dense), q.numpy()
    return np.stack([np.linalg.solve(q.T @ (w[u, :, None] * q) + REG * np.eye(K),
                                     q.T @ (w[u] * dense[u])) for u in range(dense.shape[0])])


def ridge_items(dense, p):
    w, p = dense_weights(dense), p.numpy()
    return np.stack([np.linalg.solve(p.T @ (w[:, i, None] * p) + REG * np.eye(K),
                                     p.T @ (w[:, i] * dense[:, i])) for i in range(dense.shape[1])])


def test_user_sweeps_converge_to_the_weighted_ridge_solution():
    dense, _, runner, p, q = setup(seed=2)
    exact = ridge_users(dense, q)
    for _ in range(300):
        runner.update_users(p, q)
    np.testing.assert_allclose(p.numpy(), exact, rtol=1e-7, atol=1e-9)
    # ... which is a fixed point of a sweep
    fixed = torch.from_numpy(exact)
    np.testing.assert_allclose(runner.update_users(fixed.clone(), q).numpy(), exact, atol=1e-12)


def test_item_sweeps_converge_to_the_weighted_ridge_solution():
    dense, _, runner, p, q = setup(seed=3)
    exact = ridge_items(dense, p)
    fixed = torch.from_numpy(exact)
    np.testing.assert_allclose(runner.update_items(p, fixed.clone()).numpy(), exact, atol=1e-12)
    for _ in range(300):
        runner.update_items(p, q)
    np.testing.assert_allclose(q.numpy(), exact, rtol=1e-7, atol=1e-9)


def test_run_reports_the_objective_and_never_increases_it():
    dense, model, runner, _, _ = setup(seed=4)
    assert runner.converged is False
    losses = []
    for epoch in range(1, 16):
        p_before = model.user_factors.clone()
        loss = runner.run(epoch)["loss"]
        assert not torch.equal(model.user_factors, p_before)
        assert model.user_factors.dtype == torch.float32
        assert loss == pytest.approx(dense_objective(dense, model.user_factors, model.item_factors),
                                     rel=1e-10)
        losses.append(loss)
    assert all(b <= a + 1e-9 * abs(a) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0]
    assert runner.objective(model.user_factors.double(), model.item_factors.double()) == \
        pytest.approx(losses[-1], rel=1e-12)
    runner.load_state_dict(runner.state_dict())


def test_initialisation_is_reproducible():
    train = split_of(random_matrix()).train
    torch.manual_seed(7)
    a = EALS(train, factors=5)
    torch.manual_seed(7)
    b = EALS(train, factors=5)
    assert torch.equal(a.user_factors, b.user_factors) and torch.equal(a.item_factors, b.item_factors)
    assert a.user_factors.shape == (9, 5) and a.item_factors.shape == (7, 5)
    assert 0.003 < float(a.user_factors.std()) < 0.03


def test_bad_parameters():
    train = split_of(random_matrix()).train
    for name, bad in [("factors", 0), ("factors", 2.5), ("reg", -0.1), ("w0", -1.0),
                      ("alpha", -0.5), ("reg", float("nan"))]:
        with pytest.raises(ValueError, match=name):
            EALS(train, **{name: bad})
    assert EALS(train, factors=4, reg=0.0, w0=0.0, alpha=0.0).config() == \
        {"factors": 4, "reg": 0.0, "w0": 0.0, "alpha": 0.0}


@pytest.fixture(scope="module")
def split(clustered_split):
    return clustered_split


PARAMS = dict(factors=16, reg=0.01, w0=64.0, alpha=0.4)


def test_learns_and_beats_itempop(split):
    pop = ItemPop(split.train)
    pop.fit(split, TrainConfig(epochs=1, patience=0, progress=False))
    torch.manual_seed(0)
    model = EALS(split.train, **PARAMS)
    state = model.fit(split, TrainConfig(epochs=8, patience=0, progress=False))
    assert state.epoch == 8
    losses = [entry["loss"] for entry in state.history]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    ours, theirs = evaluate(model, split, "test"), evaluate(pop, split, "test")
    assert ours["ndcg@10"] > theirs["ndcg@10"] + 0.1, (ours, theirs)

    torch.manual_seed(1)
    fresh = EALS(split.train, **model.config())
    fresh.load_state_dict(model.state_dict())
    users = torch.arange(split.train.num_users)
    assert torch.equal(fresh.scorer().all_items(users), model.scorer().all_items(users))
    assert evaluate(fresh, split, "test") == ours


def test_resume_retraces_the_run(split, tmp_path):
    config = TrainConfig(epochs=4, patience=0, progress=False)
    torch.manual_seed(0)
    whole = EALS(split.train, **PARAMS).fit(split, config)
    path = tmp_path / "eals.pt"
    torch.manual_seed(0)
    EALS(split.train, **PARAMS).fit(split, TrainConfig(epochs=2, patience=0, progress=False),
                                    checkpoint=path)
    torch.manual_seed(5)  # a different start: everything comes from the checkpoint
    resumed = EALS(split.train, **PARAMS).fit(split, config, checkpoint=path, resume=True)
    assert [e["loss"] for e in resumed.history] == pytest.approx(
        [e["loss"] for e in whole.history], rel=1e-12)


def test_on_device(split, device):
    torch.manual_seed(0)
    model = EALS(split.train, **PARAMS)
    reference = EALS(split.train, **PARAMS)
    reference.load_state_dict(model.state_dict())
    expected = reference.epoch_runner(split, None).run(1)["loss"]
    model.to(device)
    assert model.epoch_runner(split, None).run(1)["loss"] == pytest.approx(expected, rel=1e-6)
    users = torch.arange(split.train.num_users)
    torch.testing.assert_close(model.scorer().all_items(users.to(device)).cpu(),
                               reference.scorer().all_items(users), rtol=1e-4, atol=1e-6)


def test_an_epoch_shows_its_factor_sweeps_in_a_progress_bar(capsys):
    """eALS epochs can take minutes (a sweep per factor over every user and item): the Python
    API's fit shows a bar per epoch, as the gradient models' batches do; progress=False none."""
    split = leave_one_out(synthetic(30, 40, 300, seed=1), num_negatives=10, seed=0)
    EALS(split.train, factors=3).fit(split, TrainConfig(epochs=1, progress=True))
    err = capsys.readouterr().err
    assert "epoch 1" in err and "/6 " in err and "factor" in err
    EALS(split.train, factors=3).fit(split, TrainConfig(epochs=1, progress=False))
    assert "epoch 1" not in capsys.readouterr().err
