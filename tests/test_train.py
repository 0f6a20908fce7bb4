"""The trainer: it learns, it is reproducible, and a killed run resumes to the same weights."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dmfx import reference
from dmfx.data import leave_one_out, synthetic
from dmfx.evaluate import evaluate
from dmfx.models import DMF
from dmfx.models import dmf as dmf_module
from dmfx.models import EALS
from dmfx.train import BatchPairs, EpochPairs, SplitAdam, TrainConfig, fit, make_optimizer


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic(80, 200, 2400, seed=3), num_negatives=30, seed=0)


def make_model(split, seed=0, sparse_grad=False):
    torch.manual_seed(seed)
    return DMF(split.train, (24, 8), (24, 8), sparse_grad=sparse_grad)


def config(**kwargs):
    defaults = dict(epochs=3, batch_size=64, lr=3e-3, patience=0, progress=False)
    return TrainConfig(**{**defaults, **kwargs})


def test_epoch_pairs_follow_algorithm_1(split):
    pairs = EpochPairs(split, config(num_negatives=3), torch.device("cpu"))
    users, items, targets, order = pairs.epoch(1)
    nnz = split.train.nnz
    assert users.numel() == 4 * nnz and sorted(order.tolist()) == list(range(4 * nnz))
    # observed pairs: rating / max rating; negatives: 0 and never a training item of the user
    torch.testing.assert_close(targets[:nnz], torch.from_numpy(split.train.ratings) / 5)
    assert (targets[nnz:] == 0).all()
    seen = set(zip(split.train.users.tolist(), split.train.items.tolist()))
    assert not seen & set(zip(users[nnz:].tolist(), items[nnz:].tolist()))
    again = EpochPairs(split, config(num_negatives=3), torch.device("cpu"))
    assert torch.equal(again.epoch(1)[1], items)
    assert not torch.equal(pairs.epoch(2)[1], items)


def test_resample_once_keeps_the_negatives(split):
    pairs = EpochPairs(split, config(resample="once"), torch.device("cpu"))
    assert torch.equal(pairs.epoch(1)[1], pairs.epoch(2)[1])


def test_ce_targets_are_one(split):
    pairs = EpochPairs(split, config(loss="ce"), torch.device("cpu"))
    _, _, targets, _ = pairs.epoch(1)
    assert (targets[: split.train.nnz] == 1).all()


@pytest.mark.parametrize("loss", ["nce", "bpr"])
def test_batch_pairs_take_every_observed_pair_once_with_its_negatives(split, loss):
    k, batch_size = 3, 50
    pairs = BatchPairs(split, config(num_negatives=k, loss=loss, pairs="batch",
                                     batch_size=batch_size), torch.device("cpu"))
    count, batches = pairs.batches(1, batch_size)
    batches = list(batches)
    per = batch_size // (k if loss == "bpr" else k + 1)
    nnz = split.train.nnz
    assert count == len(batches) == -(-nnz // per)
    seen = set(zip(split.train.users.tolist(), split.train.items.tolist()))
    rating = {(u, i): r for u, i, r in zip(split.train.users.tolist(), split.train.items.tolist(),
                                         split.train.ratings.tolist())}
    observed = []
    for users, items, targets in batches:
        n = users.numel() // (k if loss == "bpr" else k + 1)
        assert n == per or users is batches[-1][0]
        if loss == "bpr":  # each observed pair k times, each time with one sampled item
            pos = list(zip(users[::k].tolist(), items[::k].tolist()))
            assert not seen & set(zip(users.tolist(), targets.tolist()))
        else:  # observed pairs first (rating / max rating), then their negatives (target 0)
            pos = list(zip(users[:n].tolist(), items[:n].tolist()))
            torch.testing.assert_close(targets[:n], torch.tensor([rating[p] / 5 for p in pos]))
            assert (targets[n:] == 0).all()
            assert torch.equal(users[n:], users[:n].repeat_interleave(k))
            assert not seen & set(zip(users[n:].tolist(), items[n:].tolist()))
        observed += pos
    assert sorted(observed) == sorted(seen)
    # a pure function of (seed, epoch): the same batches again, others in the next epoch
    again = list(BatchPairs(split, pairs.config, torch.device("cpu")).batches(1, batch_size)[1])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, batches))
    assert not torch.equal(next(pairs.batches(2, batch_size)[1])[1], batches[0][1])


def test_batch_pairs_train_and_resume_to_the_same_weights(split, tmp_path):
    uninterrupted = make_model(split)
    state = fit(uninterrupted, split, config(epochs=3, pairs="batch"), checkpoint=tmp_path / "a.pt")
    assert state.history[-1]["loss"] < state.history[0]["loss"]

    def kill_after_epoch_1(epoch, entry):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(make_model(split), split, config(epochs=3, pairs="batch"),
            checkpoint=tmp_path / "b.pt", on_epoch_end=kill_after_epoch_1)
    resumed = make_model(split, seed=5)
    fit(resumed, split, config(epochs=3, pairs="batch"), checkpoint=tmp_path / "b.pt", resume=True)
    for (name, x), y in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def same_history(a, b):
    """The history entries less what depends on the clock."""
    timeless = lambda h: {k: v for k, v in h.items() if k not in ("seconds", "pairs_per_s",
                                                                   "peak_memory_mb")}
    return [timeless(h) for h in a] == [timeless(h) for h in b]


def test_max_steps_bounds_the_steps_of_the_whole_run(split, tmp_path):
    per_epoch = -(-split.train.nnz * 8 // 64)
    limit = per_epoch + 5
    cut = make_model(split)
    state = fit(cut, split, config(epochs=5, max_steps=limit), checkpoint=tmp_path / "c.pt")
    assert [(h["steps"], h["batches"]) for h in state.history] == [(per_epoch, per_epoch),
                                                                   (5, per_epoch)]
    assert state.steps == limit
    # The cut epoch is evaluated, and the checkpoint keeps it unfinished.
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["train_state"]
    assert (saved["epoch"], saved["steps"], saved["partial"]["steps"]) == (1, limit, 5)
    assert len(saved["history"]) == 1
    # A resume without more steps ends as the cut run did.
    again = make_model(split, seed=7)
    same = fit(again, split, config(epochs=5, max_steps=limit), checkpoint=tmp_path / "c.pt",
               resume=True)
    assert same_history(same.history, state.history) and same.best_epoch == state.best_epoch
    assert_same_weights(again, cut)
    # A larger limit finishes the cut epoch: as a run that never stopped at the first limit.
    more = fit(make_model(split), split, config(epochs=5, max_steps=limit + 3),
               checkpoint=tmp_path / "c.pt", resume=True)
    assert [h["steps"] for h in more.history] == [per_epoch, 8] and more.steps == limit + 3
    straight = fit(make_model(split), split, config(epochs=5, max_steps=limit + 3))
    assert same_history(more.history, straight.history)
    with pytest.raises(ValueError, match="max_steps counts gradient steps; EALS"):
        fit(EALS(split.train), split, config(max_steps=3))
    with pytest.raises(ValueError, match="checkpoint_every counts gradient steps; EALS"):
        fit(EALS(split.train), split, config(checkpoint_every=3))


@pytest.mark.parametrize("pairs", ["epoch", "batch"])
def test_a_run_killed_inside_an_epoch_resumes_from_its_last_checkpoint(split, tmp_path,
                                                                       monkeypatch, pairs):
    from dmfx.train import GradientEpochs
    per_epoch = -(-split.train.nnz * 8 // 64)
    every = 7
    uninterrupted = make_model(split)
    whole = fit(uninterrupted, split, config(epochs=2, pairs=pairs))
    # Killed inside epoch 2, 3 steps after its checkpoint at step 2 * every.
    kill_at = per_epoch + 2 * every + 3
    step, taken = GradientEpochs.step, []

    def dying(self, *args):
        taken.append(1)
        if len(taken) == kill_at:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(GradientEpochs, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(split), split, config(epochs=2, pairs=pairs, checkpoint_every=every),
            checkpoint=tmp_path / "k.pt")
    monkeypatch.setattr(GradientEpochs, "step", step)
    saved = torch.load(tmp_path / "k.pt", weights_only=True)["train_state"]
    assert (saved["epoch"], saved["partial"]["epoch"], saved["partial"]["steps"]) == \
        (1, 2, 2 * every)
    assert saved["steps"] == per_epoch + 2 * every
    resumed = make_model(split, seed=5)
    state = fit(resumed, split, config(epochs=2, pairs=pairs), checkpoint=tmp_path / "k.pt",
                resume=True)
    assert_same_weights(uninterrupted, resumed)
    assert same_history(state.history, whole.history) and state.steps == 2 * per_epoch
    assert state.partial is None


def test_training_learns(split):
    model = make_model(split)
    before = evaluate(model, split, "valid")["ndcg@10"]
    state = fit(model, split, config(epochs=8))
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < losses[0]
    assert all(set(h) >= {"epoch", "loss", "seconds", "pairs_per_s", "valid"} for h in state.history)
    assert evaluate(model, split, "valid")["ndcg@10"] > before
    assert evaluate(model, split, "test")["hr@10"] > 10 / 31  # chance with 30 negatives


def test_same_seed_same_weights(split):
    a, b = make_model(split), make_model(split)
    fit(a, split, config(epochs=2))
    fit(b, split, config(epochs=2))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_early_stopping_keeps_the_best_epoch(split):
    model = make_model(split)
    state = fit(model, split, config(epochs=30, lr=3e-2, patience=2))
    best = max(h["valid"]["ndcg@10"] for h in state.history)
    assert state.history[state.best_epoch - 1]["valid"]["ndcg@10"] == best
    assert len(state.history) == state.best_epoch + 2 or len(state.history) == 30
    assert evaluate(model, split, "valid")["ndcg@10"] == pytest.approx(best)
    assert state.best_state is None  # loaded into the model, not kept twice


def test_without_validation_a_large_loss_is_not_a_bad_epoch(split):
    # eALS's loss is a sum in the thousands: minus it is below any metric's floor of old (-1)
    no_valid = leave_one_out(synthetic(80, 200, 2400, seed=3), num_negatives=30, seed=0,
                             valid=False)
    state = fit(EALS(no_valid.train, factors=4), no_valid, config(epochs=4, patience=1))
    assert min(h["loss"] for h in state.history) > 1
    assert len(state.history) == 4 and state.best_epoch == 4


def diverging_at(epoch, monkeypatch):
    """Makes GradientEpochs' epoch ``epoch`` diverge: its weights and loss become NaN."""
    from dmfx.train import GradientEpochs
    run = GradientEpochs.run

    def diverging(self, e, **kwargs):
        stats = run(self, e, **kwargs)
        if e == epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
            stats["loss"] = float("nan")
        return stats

    monkeypatch.setattr(GradientEpochs, "run", diverging)


def test_a_diverged_epoch_stops_training_and_keeps_the_best_weights(split, tmp_path, monkeypatch):
    diverging_at(3, monkeypatch)
    model = make_model(split)
    with pytest.warns(RuntimeWarning, match=r"epoch 3: the training loss is nan.*lr=0.003.*"
                                            r"keeps epoch 2"):
        state = fit(model, split, config(epochs=5), checkpoint=tmp_path / "c.pt")
    assert [h["epoch"] for h in state.history] == [1, 2] and state.best_epoch == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert evaluate(model, split, "valid")["ndcg@10"] == state.history[1]["valid"]["ndcg@10"]
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved["train_state"]["epoch"] == 2  # the diverged epoch is not checkpointed


def test_a_run_diverging_inside_an_epoch_resumes_to_the_same_end(split, tmp_path, monkeypatch):
    from dmfx.train import GradientEpochs
    per_epoch = -(-split.train.nnz * 8 // 64)
    step, taken = GradientEpochs.step, []

    def poisoned(self, *args):  # from this step of epoch 2 on, the weights and losses are NaN
        taken.append(1)
        if len(taken) >= per_epoch + 12:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return step(self, *args)

    monkeypatch.setattr(GradientEpochs, "step", poisoned)
    with pytest.warns(RuntimeWarning, match="epoch 2: the training loss is nan"):
        whole = fit(make_model(split), split, config(epochs=3, checkpoint_every=5),
                    checkpoint=tmp_path / "d.pt")
    saved = torch.load(tmp_path / "d.pt", weights_only=True)["train_state"]
    # The last checkpoint is the one before the NaN: step 10 of epoch 2.
    assert (saved["epoch"], saved["partial"]["steps"]) == (1, 10)
    taken.clear()
    taken += [1] * (per_epoch + 10)  # the resumed run's steps continue the count
    resumed_model = make_model(split, seed=3)
    with pytest.warns(RuntimeWarning, match="epoch 2: the training loss is nan"):
        resumed = fit(resumed_model, split, config(epochs=3, checkpoint_every=5),
                      checkpoint=tmp_path / "d.pt", resume=True)
    assert resumed.steps == whole.steps == per_epoch
    assert same_history(resumed.history, whole.history)


def test_a_checkpoint_gives_the_result_of_its_run():
    from dmfx.checkpoint import CheckpointError, result_weights
    last, best = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    cut = {"epoch": 2, "steps": 5}
    assert result_weights("c.pt", {"model_state": last, "train_state": {"best_state": best}}) is best
    # an epoch cut by max_steps whose evaluation made it the best: the last weights
    assert result_weights("c.pt", {"model_state": last, "train_state": {
        "best_state": best, "partial": {**cut, "evaluated_best": True}}}) is last
    assert result_weights("c.pt", {"model_state": last, "train_state": {
        "best_state": best, "partial": {**cut, "evaluated_best": False}}}) is best
    with pytest.raises(CheckpointError, match="5 steps into epoch 2, before any epoch was "
                                              "evaluated"):
        result_weights("c.pt", {"model_state": last, "train_state": {"best_state": None,
                                                                      "partial": cut}})


def test_divergence_in_the_first_epoch_is_an_error(split, monkeypatch):
    diverging_at(1, monkeypatch)
    with pytest.raises(FloatingPointError, match="epoch 1: the training loss is nan.*no earlier"):
        fit(make_model(split), split, config(epochs=3))


def test_resuming_a_stopped_run_trains_no_more(split, tmp_path):
    first = fit(make_model(split), split, config(epochs=30, lr=3e-2, patience=1),
                checkpoint=tmp_path / "c.pt")
    assert len(first.history) < 30
    again = fit(make_model(split), split, config(epochs=30, lr=3e-2, patience=1),
                checkpoint=tmp_path / "c.pt", resume=True)
    assert again.history == first.history


@pytest.mark.parametrize("sparse_grad", [False, True], ids=["adam", "sparse-adam"])
def test_killed_run_resumes_to_the_same_weights(split, tmp_path, sparse_grad):
    uninterrupted = make_model(split, sparse_grad=sparse_grad)
    fit(uninterrupted, split, config(epochs=4, patience=3), checkpoint=tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch, entry):
        if epoch == 2:
            raise Killed  # the checkpoint of epoch 2 is on disk; epoch 3 never happens

    with pytest.raises(Killed):
        fit(make_model(split, sparse_grad=sparse_grad), split, config(epochs=4, patience=3),
            checkpoint=tmp_path / "b.pt", on_epoch_end=kill_after_epoch_2)
    resumed = make_model(split, seed=123, sparse_grad=sparse_grad)  # a different init: the checkpoint must override it
    state = fit(resumed, split, config(epochs=4, patience=3), checkpoint=tmp_path / "b.pt",
                resume=True)
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]
    for (name, x), y in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name


def test_sparse_grad_moves_only_the_touched_first_layer_rows(split):
    model = make_model(split, sparse_grad=True)
    optimizer = make_optimizer(model, config())
    assert isinstance(optimizer, SplitAdam)
    users, items = torch.tensor([0, 1, 1]), torch.tensor([5, 7, 9])
    before = model.user_tower.first.detach().clone()
    optimizer.zero_grad()
    model.loss(users, items, torch.tensor([0.8, 0.0, 0.0])).backward()
    optimizer.step()
    train = split.train.csr()
    touched = torch.zeros(split.train.num_items, dtype=torch.bool)
    for u in (0, 1):
        touched[train.indices[train.indptr[u]:train.indptr[u + 1]].long()] = True
    moved = (model.user_tower.first.detach() != before).any(dim=1)
    assert torch.equal(moved, touched)


def test_sparse_grad_learns(split):
    model = make_model(split, sparse_grad=True)
    state = fit(model, split, config(epochs=8))
    assert state.history[-1]["loss"] < state.history[0]["loss"]
    assert evaluate(model, split, "test")["hr@10"] > 10 / 31


def test_sparse_grad_with_one_layer_towers_trains_and_resumes(split, tmp_path):
    # every parameter is then a row-sparse first layer: no dense optimizer at all
    def one_layer():
        torch.manual_seed(0)
        return DMF(split.train, (8,), (8,), sparse_grad=True)

    whole = one_layer()
    fit(whole, split, config(epochs=2))
    model = one_layer()
    state = fit(model, split, config(epochs=1), checkpoint=tmp_path / "c.pt")
    assert state.history[0]["loss"] > 0
    fit(model, split, config(epochs=2), checkpoint=tmp_path / "c.pt", resume=True)
    for (name, x), y in zip(whole.state_dict().items(), model.state_dict().values()):
        assert torch.equal(x, y), name


def test_config_errors():
    with pytest.raises(ValueError, match="resample"):
        TrainConfig(resample="always")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="pairs must be one of epoch, batch"):
        TrainConfig(pairs="all")
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        TrainConfig(max_steps=-1)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        TrainConfig(checkpoint_every=-1)
    with pytest.raises(ValueError, match="resample 'once' keeps every pair's negatives"):
        TrainConfig(pairs="batch", resample="once")


class _ReferenceOps:
    """The dmfx.ops the models call, swapped for their pure-PyTorch twins (same signatures)."""

    @staticmethod
    def sparse_rows_matmul(indptr, indices, values, rows, weight, *, validate=True,
                           sparse_grad=False):
        return reference.sparse_rows_matmul(indptr, indices, values, rows, weight)

    @staticmethod
    def cosine_nce_loss(p, q, target, mu=1e-6, reduction="mean", *, validate=True):
        return reference.cosine_nce_loss(p, q, target, mu, reduction)


def test_training_on_dmfx_ops_equals_training_on_the_reference_twins(split, monkeypatch):
    """The fast path trains the same model: float64, equal epochs, same weights and metrics."""
    fast = make_model(split).double()
    fit(fast, split, config(epochs=2, batch_size=256))
    monkeypatch.setattr(dmf_module, "ops", _ReferenceOps)
    plain = make_model(split).double()
    fit(plain, split, config(epochs=2, batch_size=256))
    for (name, x), y in zip(fast.state_dict().items(), plain.state_dict().values()):
        # Summation order differs (kernels vs index_add), and Adam's m / sqrt(v) amplifies
        # rounding where gradients are near zero: ~1e-5 of the weights' scale after 2 epochs.
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-5, msg=name)
    assert evaluate(fast, split, "test") == pytest.approx(evaluate(plain, split, "test"))


def test_peak_memory_counts_a_large_allocation():
    # A fresh process (ru_maxrss starts from the parent's peak, so compare with what it holds).
    code = ("import os, torch; from dmfx.train import peak_memory_mb as p; "
            "held = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20; "
            "x = torch.ones(300 * 2**20 // 4); print(held(), p(torch.device('cpu')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    held, peak = map(float, result.stdout.split())
    assert held > 300 and peak >= held - 1  # MB: the 300 MB tensor, touched by ones()


@pytest.mark.parametrize("ratings", [[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 3.0, 1.0]], ids=["zeros", "negative"])
def test_nce_targets_need_a_positive_rating_scale(ratings):
    from dmfx.data import Interactions

    data = Interactions([0, 1], [0, 1, 2], [0, 0, 1, 1], [0, 1, 1, 2], ratings)
    for loss in ("nce", "hybrid"):
        with pytest.raises(ValueError, match="needs ratings >= 0 with a positive maximum"):
            EpochPairs(SimpleNamespace(train=data), TrainConfig(loss=loss, progress=False),
                       torch.device("cpu"))
    EpochPairs(SimpleNamespace(train=data), TrainConfig(loss="ce", progress=False), torch.device("cpu"))


@pytest.mark.parametrize("pairs", ["epoch", "batch"])
def test_a_user_who_rated_every_item_is_named_before_training(pairs):
    from dataclasses import replace

    from dmfx.data import Interactions
    rng = np.random.default_rng(0)
    users = np.concatenate([np.zeros(12, int), np.repeat(np.arange(1, 30), 5)])
    items = np.concatenate([np.arange(12)] + [rng.choice(12, 5, replace=False) for _ in range(29)])
    data = Interactions.from_arrays(users, items, np.ones(len(users)))
    split = replace(leave_one_out(data, num_negatives=0, seed=0, valid=False), train=data)
    with pytest.raises(ValueError, match="user 0 .* has interacted with all 12 items"):
        fit(DMF(split.train, (8,), (8,)), split, config(epochs=1, pairs=pairs))


@pytest.mark.parametrize("name, pairs", [("gmf", "epoch"), ("gmf", "batch"), ("bpr", "epoch"),
                                         ("dmf", "epoch")])
def test_a_training_part_without_interactions_is_refused(name, pairs):
    """It took one empty batch and stopped with 'the model diverged' (ce and bpr losses)."""
    from dmfx.data import Interactions, Split
    from dmfx.models import build_model, train_config

    data = synthetic(8, 10, 40, seed=0)
    empty = Interactions(data.user_ids, data.item_ids, np.zeros(0, np.int64),
                         np.zeros(0, np.int64), np.zeros(0, np.float32))
    split = Split(empty, *(np.zeros(0, np.int64),) * 4, *(np.zeros((0, 0), np.int64),) * 2, "latest")
    model = build_model(name, data)
    with pytest.raises(ValueError, match="the training part has no interactions"):
        model.fit(split, train_config(name, epochs=1, progress=False, pairs=pairs))


def test_a_checkpoint_error_of_the_restore_reaches_the_caller_unchanged(split, tmp_path,
                                                                       monkeypatch):
    """What the restore says of the files (e.g. a sharded run's missing shard) is the message,
    not rewrapped as "does not fit this model" and cut short."""
    from dmfx.checkpoint import CheckpointError
    from dmfx.train import LocalRun

    fit(make_model(split), split, config(epochs=1), checkpoint=tmp_path / "e.pt")
    reason = f"{tmp_path / 'e.pt'} continues from epoch 1, but this rank's shard " + "x" * 300

    def missing(*args):
        raise CheckpointError(reason)

    monkeypatch.setattr(LocalRun, "restore", missing)
    with pytest.raises(CheckpointError) as caught:
        fit(make_model(split), split, config(epochs=2), checkpoint=tmp_path / "e.pt", resume=True)
    assert str(caught.value) == reason
