"""dmfx.integrations.recbole against RecBole 1.2.1's own DMF, through RecBole's pipeline.

RecBole pins numpy < 2 and friends, so it is not in dmfx's main environment: these tests skip
there and run under `make recbole-check` (.venv-recbole). The import-error test runs everywhere.
"""
import importlib
import os
import sys

import numpy as np
import pytest
import torch

try:
    import recbole  # noqa: F401
    HAVE_RECBOLE = True
except ImportError:
    HAVE_RECBOLE = False

# RecBole's own deprecation notices (pandas chained assignment, torch.cuda.amp, sparse tensor
# constructors in its DMF) are not about the code under test.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning:recbole"),
              pytest.mark.filterwarnings("ignore::UserWarning:recbole")]

requires_recbole = pytest.mark.skipif(
    not HAVE_RECBOLE, reason="RecBole 1.2.1 lives in its own environment: `make recbole-check`")

NUM_USERS, NUM_ITEMS = 50, 70  # RecBole adds a padding id: 51 x 71, never square with 64


def write_inter(folder, name, duplicate=False, seed=0):
    """A small ratings file in RecBole's atomic layout: FOLDER/NAME/NAME.inter."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, NUM_USERS + 1):
        items = rng.choice(np.arange(1, NUM_ITEMS + 1), size=rng.integers(8, 20), replace=False)
        rows += [(user, item, int(rng.integers(1, 6)), 880000000 + len(rows)) for item in items]
    if duplicate:  # enough repeated pairs that the random split leaves some in training
        rows += [row[:2] + (5, row[3] + 1) for row in rows[:40]]
    os.makedirs(folder / name, exist_ok=True)
    with open(folder / name / f"{name}.inter", "w") as handle:
        handle.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        handle.writelines("\t".join(map(str, row)) + "\n" for row in rows)


def config_dict(folder, **overrides):
    values = {
        "data_path": str(folder),
        "checkpoint_dir": str(folder / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "train_batch_size": 128,
        "eval_batch_size": 256,
        "metrics": ["Hit", "NDCG"],
        "valid_metric": "NDCG@10",
        "show_progress": False,
        "state": "ERROR",
    }
    values.update(overrides)
    return values


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny data set's folder; RecBole's trainer writes its TensorBoard logs to the working
    directory, so that is the test's own."""
    monkeypatch.chdir(tmp_path)
    write_inter(tmp_path, "tiny")
    return tmp_path


def build_pair(folder, **overrides):
    """RecBole's DMF and DmfxDMF, each built as RecBole's quick start builds a model (seed, data
    set, split, seed, model), on the same split."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender.dmf import DMF
    from recbole.utils import init_seed

    from dmfx.integrations.recbole import DmfxDMF, make_config

    cfg = config_dict(folder, **overrides)
    ref_config = Config(model="DMF", dataset="tiny", config_dict=cfg)
    init_seed(ref_config["seed"], ref_config["reproducibility"])
    train, valid, _ = data_preparation(ref_config, create_dataset(ref_config))
    init_seed(ref_config["seed"], ref_config["reproducibility"])
    ref = DMF(ref_config, train._dataset)
    ours_config = make_config(DmfxDMF, "tiny", config_dict=cfg)
    init_seed(ours_config["seed"], ours_config["reproducibility"])
    ours = DmfxDMF(ours_config, train._dataset)
    return ref, ours, train, valid


def close(actual, expected):
    """Equal up to float32 rounding, relative to the tensor's scale (gradients here are ~1e-6)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * scale + 1e-12)


def capture_first_layers(model):
    """Record the outputs of user_linear and item_linear, keeping their gradients."""
    seen = {}

    def hook(name):
        def keep(module, inputs, output):
            output.retain_grad()
            seen[name] = output
        return keep

    model.user_linear.register_forward_hook(hook("user"))
    model.item_linear.register_forward_hook(hook("item"))
    return seen


@requires_recbole
@pytest.mark.parametrize("matrix_type", ["01", "rating"])
def test_first_layers_and_gradients_match_recbole_dmf(tiny, matrix_type):
    from dmfx.nn import SparseRowLinear

    ref, ours, train, _ = build_pair(tiny, inter_matrix_type=matrix_type)
    assert isinstance(ours.user_linear, SparseRowLinear) and ours.user_linear.bound
    assert isinstance(ours.item_linear, SparseRowLinear) and ours.item_linear.bound
    # Same seed, same weights: the conversion draws nothing from the generator.
    assert torch.equal(ours.user_linear.weight, ref.user_linear.weight.t())
    assert torch.equal(ours.item_linear.weight, ref.item_linear.weight.t())
    for a, b in zip(ours.user_fc_layers.parameters(), ref.user_fc_layers.parameters()):
        assert torch.equal(a, b)

    batch = next(iter(train))
    if matrix_type == "rating":  # targets are rating / max rating, not only 0 and 1
        target = batch["rating"] * batch["label"] / ref.max_rating
        assert ((target > 0) & (target < 1)).any()
    ref_out, our_out = capture_first_layers(ref), capture_first_layers(ours)
    ref_loss, our_loss = ref.calculate_loss(batch), ours.calculate_loss(batch)
    ref_loss.backward()
    our_loss.backward()

    close(our_loss, ref_loss)
    for tower in ("user", "item"):
        close(our_out[tower], ref_out[tower])
        assert our_out[tower].abs().sum() > 0
        close(our_out[tower].grad, ref_out[tower].grad)
    close(ours.user_linear.weight.grad, ref.user_linear.weight.grad.t())
    close(ours.item_linear.weight.grad, ref.item_linear.weight.grad.t())
    for a, b in zip(ours.item_fc_layers.parameters(), ref.item_fc_layers.parameters()):
        close(a.grad, b.grad)


@requires_recbole
def test_full_sort_scores_match_recbole_dmf(tiny):
    """On trained-like weights: at the N(0, 0.01) start every score lies within 2e-7 of 0.5,
    so the comparison could not tell a reversed ranking from the right one."""
    ref, ours, _, valid = build_pair(tiny)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    interaction = next(iter(valid))[0]
    with torch.no_grad():
        expected = ref.full_sort_predict(interaction)
        actual = ours.full_sort_predict(interaction)
    assert actual.shape == (len(interaction) * ref.n_items,)
    assert expected.std() > 1e-3  # scores spread: a ranking to compare
    close(actual, expected)


@requires_recbole
def test_recbole_dmf_state_dict_loads(tiny):
    """A trained RecBole DMF converts: its state dict (nn.Linear layout) loads into DmfxDMF."""
    ref, ours, train, _ = build_pair(tiny)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights DmfxDMF did not start from
    ours.load_state_dict(ref.state_dict())
    batch = next(iter(train))
    user, item = batch["user_id"], batch["item_id"]
    with torch.no_grad():
        close(ours(user, item), ref(user, item))


@requires_recbole
def test_training_run_through_recbole_trainer(tiny):
    from dmfx.integrations.recbole import DmfxDMF, run_recbole

    result = run_recbole(model=DmfxDMF, dataset="tiny",
                         config_dict=config_dict(tiny, epochs=2))
    saved = list((tiny / "saved").glob("DmfxDMF-*.pth"))
    assert len(saved) == 1  # the best epoch, which load_best_model read back on this torch
    assert set(result["test_result"]) == {"hit@10", "ndcg@10"}
    assert all(0 <= value <= 1 for value in result["test_result"].values())
    assert result["best_valid_score"] == result["best_valid_result"]["ndcg@10"]


@requires_recbole
def test_training_gives_recbole_dmfs_numbers(tiny):
    """Same seed, same data, same trainer: RecBole's DMF and DmfxDMF end with the same
    validation and test metrics (float32 sums in another order may move a score by an ulp)."""
    from dmfx.integrations.recbole import DmfxDMF, run_recbole

    results = {name: run_recbole(model=model, dataset="tiny",
                                 config_dict=config_dict(tiny, epochs=3,
                                                         checkpoint_dir=str(tiny / name)))
               for name, model in (("recbole", "DMF"), ("dmfx", DmfxDMF))}
    assert results["recbole"]["test_result"]["hit@10"] > 0
    for part in ("best_valid_result", "test_result"):
        for metric, value in results["recbole"][part].items():
            assert results["dmfx"][part][metric] == pytest.approx(value, abs=1e-4), (part, metric)


@requires_recbole
def test_duplicate_pairs_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_inter(tmp_path, "tiny", duplicate=True)
    with pytest.raises(ValueError, match="rm_dup_inter"):
        build_pair(tmp_path)


def test_import_without_recbole_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "recbole", None)  # `import recbole` now fails
    monkeypatch.delitem(sys.modules, "dmfx.integrations.recbole", raising=False)
    with pytest.raises(ImportError, match="make recbole-check"):
        importlib.import_module("dmfx.integrations.recbole")
