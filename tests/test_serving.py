"""Using a trained model: self-contained model files, new users from their ratings, blocked
batch recommendation, CSV/Parquet output and the export for serving."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from dmfx.checkpoint import load_checkpoint
from dmfx.cli import main
from dmfx.data import CSR, Interactions, as_csr, leave_one_out, synthetic
from dmfx.experiment import Trained, load_trained, split_from_state, split_state
from dmfx.inductive import evaluate_new_users, hold_out_users
from dmfx.models import build_model
from dmfx.models.base import TILE_USERS, VectorScorer, topk_items, topk_items_tiled
from dmfx.serving import (export_model, read_new_user, read_user_ids, recommend_blocks,
                          write_recommendations)

TINY = ["--user-layers", "16,8", "--item-layers", "16,8", "--eval-negatives", "20",
        "--batch-size", "128", "--lr", "0.003", "--quiet"]


def trained_run(root, data_name: str, *flags: str):
    """``root/run``: DMF trained with ``flags`` on a small synthetic data set ``root/data_name``."""
    data = root / data_name
    synthetic(50, 90, 1200, seed=2).save_npz(data)
    out = root / "run"
    assert main(["train", "--data", str(data), *flags, "--output", str(out), *TINY]) == 0
    return out, data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A DMF run whose data file is deleted once trained."""
    root = tmp_path_factory.mktemp("serving")
    out, data = trained_run(root, "tiny.npz", "--epochs", "2")
    kept = root / "kept.npz"
    shutil.copy(data, kept)
    data.unlink()
    return out, kept


def small_split(seed=0, string_ids=False):
    data = synthetic(40, 60, 700, seed=seed)
    if string_ids:
        data = Interactions(np.array([f"u{i:03d}" for i in range(data.num_users)]),
                            np.array([f"i{i:03d}" for i in range(data.num_items)]),
                            data.users, data.items, data.ratings, data.timestamps)
    return leave_one_out(data, num_negatives=10, seed=seed)


def dmf(split, **config):
    torch.manual_seed(0)
    return build_model("dmf", split.train, {"user_layers": [16, 8], "item_layers": [16, 8],
                                            **config}, "cpu")


# -- model files -------------------------------------------------------------------------------

def test_model_file_evaluates_and_recommends_without_the_data_file(run, capsys):
    out, _ = run
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])
    assert main(["recommend", str(out / "model.pt"), "--user", "3", "-k", "4"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["1", "2", "3", "4"]
    # the resume checkpoint still points at the (now deleted) file, and says what to use instead
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 2
    assert "model.pt" in capsys.readouterr().err


def test_model_file_holds_the_best_weights_and_no_optimizer_state(run):
    out, kept = run
    model_file, checkpoint = load_checkpoint(out / "model.pt"), load_checkpoint(out / "checkpoint.pt")
    assert "optimizer" not in model_file and "train_state" not in model_file
    best = checkpoint["train_state"]["best_state"]
    assert best.keys() == model_file["model_state"].keys()
    assert all(torch.equal(best[k], model_file["model_state"][k]) for k in best)
    # the checkpoint re-read from the moved data file gives the same model and split
    a = load_trained(out / "model.pt")
    b = load_trained(out / "checkpoint.pt", data=str(kept))
    assert np.array_equal(a.split.test_negatives, b.split.test_negatives)
    assert np.array_equal(a.interacted().indices, b.interacted().indices)
    with pytest.raises(ValueError, match="holds its own data"):
        load_trained(out / "model.pt", data=str(kept))


@pytest.mark.parametrize("string_ids", [False, True], ids=["int-ids", "str-ids"])
def test_split_state_round_trips_through_a_weights_only_load(tmp_path, string_ids):
    split = small_split(string_ids=string_ids)
    torch.save(split_state(split), tmp_path / "s.pt")
    back = split_from_state(torch.load(tmp_path / "s.pt", weights_only=True))
    for name in ("user_ids", "item_ids", "users", "items", "ratings"):
        assert np.array_equal(getattr(back.train, name), getattr(split.train, name)), name
    assert back.train.user_ids.dtype.kind == split.train.user_ids.dtype.kind
    for name in ("valid_users", "valid_items", "test_users", "test_items", "valid_negatives",
                 "test_negatives"):
        assert np.array_equal(getattr(back, name), getattr(split, name)), name
    assert back.holdout == split.holdout and back.train.timestamps is None


def test_interacted_covers_training_and_held_out_pairs():
    split = small_split()
    known = Trained(None, split).interacted()
    dense = torch.zeros(known.shape)
    owner = torch.repeat_interleave(torch.arange(known.shape[0]), known.indptr.long().diff())
    dense[owner, known.indices.long()] = 1
    for users, items in ((split.train.users, split.train.items),
                         (split.test_users, split.test_items), (split.valid_users, split.valid_items)):
        assert dense[users, items].eq(1).all()
    assert int(dense.sum()) == split.train.nnz + len(split.test_users) + len(split.valid_users)


# -- new users from their ratings --------------------------------------------------------------

@pytest.mark.parametrize("input", ["rating", "binary"])
def test_embed_users_and_items_reproduce_the_stored_vectors(input):
    split = small_split()
    model = dmf(split, input=input)
    scorer = model._eval_scorer()
    y = split.train.to_scipy("rating")
    users = F.normalize(model.embed_users(y), dim=1)
    items = F.normalize(model.embed_items(y), dim=1)
    torch.testing.assert_close(users, scorer.users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, scorer.items, rtol=1e-5, atol=1e-6)


def test_embed_users_reads_every_sparse_format_alike():
    split = small_split()
    model = dmf(split)
    y = split.train.to_scipy("rating")[:6]
    expected = model.embed_users(y)
    coo = y.tocoo()
    torch_coo = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, y.shape)
    torch_csr = torch.sparse_csr_tensor(torch.from_numpy(y.indptr).long(),
                                        torch.from_numpy(y.indices).long(),
                                        torch.from_numpy(y.data), y.shape)
    dmfx_csr = CSR(torch.from_numpy(y.indptr), torch.from_numpy(y.indices),
                   torch.from_numpy(y.data), y.shape)
    # unsorted columns with a duplicate split in two: summed and sorted on the way in
    rows, cols, vals = coo.row, coo.col, coo.data
    messy = sp.coo_matrix((np.r_[vals[::-1], 0.0], (np.r_[rows[::-1], 0], np.r_[cols[::-1], cols[0]])),
                          shape=y.shape)
    for other in (y.tocsc(), coo, torch_coo, torch_csr, dmfx_csr, messy):
        torch.testing.assert_close(model.embed_users(other), expected)


def test_embed_users_refuses_rows_of_the_wrong_width_or_kind():
    model = dmf(small_split())
    with pytest.raises(ValueError, match=f"rows must have {model.num_items} columns"):
        model.embed_users(sp.csr_matrix((2, model.num_items + 1)))
    with pytest.raises(TypeError, match="rows must be"):
        model.embed_users(np.zeros((2, model.num_items)))
    with pytest.raises(ValueError, match="non-finite"):
        model.embed_users(sp.csr_matrix(([np.nan], ([0], [1])), shape=(1, model.num_items)))
    with pytest.raises(ValueError, match=f"columns must have {model.num_users} rows"):
        model.embed_items(sp.csr_matrix((model.num_users + 2, 3)))


def test_recommend_rows_of_known_users_equals_recommend():
    split = small_split()
    model = dmf(split)
    y = split.train.to_scipy("rating")
    items, scores = model.recommend_rows(y[:7], k=5)
    ref_items, ref_scores = model.recommend(torch.arange(7), k=5)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(items, ref_items)


def test_recommend_rows_leaves_out_the_rated_items_and_empty_rows_work():
    split = small_split()
    model = dmf(split)
    rated = [3, 17, 41]
    row = sp.csr_matrix(([5.0, 4.0, 1.0], ([0, 0, 0], rated)), shape=(2, model.num_items))
    items, _ = model.recommend_rows(row, k=model.num_items)
    assert not set(rated) & set(items[0].tolist())
    assert (items[0] == -1).sum() == len(rated)      # padded where rated items were
    assert (items[1] >= 0).all()                      # a user with no ratings gets every item


@pytest.mark.parametrize("name, params", [("itemknn", {"neighbours": 5}),
                                          ("einmf", {"factors": 4, "layers": [8]})])
def test_rating_row_models_score_known_users_from_their_rows_as_recommend_does(name, params):
    split = small_split()
    torch.manual_seed(0)
    model = build_model(name, split.train, params, "cpu")
    if name == "itemknn":
        model.fit_closed_form(split.train)
    else:  # trained weights are not needed, only weights away from the initial N(0, 0.01)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
    y = split.train.to_scipy("rating")
    users = torch.arange(9)
    rows_scorer, scorer = model.scorer_for_rows(y[:9]), model.scorer()
    torch.testing.assert_close(rows_scorer.all_items(users), scorer.all_items(users))
    items, scores = model.recommend_rows(y[:9], k=5)
    ref_items, ref_scores = model.recommend(users, k=5)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(items, ref_items)


def test_id_models_cannot_score_new_users_and_itempop_ranks_by_popularity():
    split = small_split()
    bpr = build_model("bpr", split.train, {"factors": 4}, "cpu")
    with pytest.raises(NotImplementedError, match="cannot score a user it was not trained on"):
        bpr.recommend_rows(sp.csr_matrix((1, bpr.num_items)), k=3)
    einmf_ids = build_model("einmf", split.train, {"factors": 4, "input": "ids"}, "cpu")
    with pytest.raises(ValueError, match="input='ids' learns a vector per user id"):
        einmf_ids.recommend_rows(sp.csr_matrix((1, bpr.num_items)), k=3)
    pop = build_model("itempop", split.train, {}, "cpu")
    pop.fit_closed_form(split.train)
    row = sp.csr_matrix(([1.0], ([0], [int(pop.popularity.argmax())])), shape=(1, pop.num_items))
    items, scores = pop.recommend_rows(row, k=3)
    expected = torch.sort(pop.popularity, descending=True).values[1:4]
    torch.testing.assert_close(scores[0], expected)


def test_hold_out_users_removes_them_from_training_and_keeps_their_test():
    split = small_split()
    kept, new = hold_out_users(split, 0.25, seed=1)
    assert len(new.users) == round(0.25 * len(split.test_users))
    assert not np.isin(kept.train.users, new.users).any()
    assert not np.isin(kept.test_users, new.users).any() and not np.isin(kept.valid_users, new.users).any()
    assert len(kept.test_users) + len(new.users) == len(split.test_users)
    # their known ratings are exactly their training rows; their test item is not among them
    y = split.train.to_scipy("rating")
    assert (new.rows != y[new.users]).nnz == 0
    at = np.searchsorted(split.test_users, new.users)
    assert np.array_equal(new.test_items, split.test_items[at])
    assert np.array_equal(new.test_negatives, split.test_negatives[at])
    assert not any(new.rows[k, item] for k, item in enumerate(new.test_items))
    assert not any(new.rows[k, item] for k, item in enumerate(new.valid_items) if item >= 0)
    at = np.searchsorted(split.valid_users, new.users)
    assert np.array_equal(new.valid_items, split.valid_items[at])
    with pytest.raises(ValueError, match="share"):
        hold_out_users(split, 1.0)


def test_new_user_metrics_equal_a_dense_reference():
    split = small_split()
    kept, new = hold_out_users(split, 0.3, seed=0)
    model = dmf(kept)
    metrics = evaluate_new_users(model, new, ks=(5, 10))
    # reference: cosine of the towers' outputs on dense rows, computed by hand
    dense = torch.as_tensor(new.rows.toarray(), dtype=torch.float32)
    p = model.user_tower.mlp(dense @ model.user_tower.first)
    q = model._eval_scorer().items
    cands = np.concatenate([new.test_items[:, None], new.test_negatives], 1)
    s = torch.einsum("nd,ncd->nc", F.normalize(p, dim=1), q[torch.as_tensor(cands)])
    ranks = (s[:, 1:] > s[:, :1]).sum(1)  # continuous scores: no ties
    assert metrics["hr@10"] == pytest.approx((ranks < 10).double().mean().item())
    assert metrics["ndcg@5"] == pytest.approx(
        torch.where(ranks < 5, 1 / torch.log2(ranks + 2.0), 0.0).mean().item())
    # full ranking: every item but the user's rated ones and validation item competes
    s_all = F.normalize(p, dim=1) @ q.T
    known = torch.as_tensor(new.rows.toarray() != 0)
    has = torch.as_tensor(new.valid_items >= 0)
    known[has.nonzero().squeeze(1), torch.as_tensor(new.valid_items)[has]] = True
    target = s_all[torch.arange(len(new.users)), torch.as_tensor(new.test_items)]
    full = ((s_all > target[:, None]) & ~known).sum(1)
    assert metrics["full_hr@10"] == pytest.approx((full < 10).double().mean().item())
    assert metrics["full_mrr@10"] == pytest.approx(
        torch.where(full < 10, 1 / (full + 1.0), 0.0).mean().item())


def test_a_float64_dmf_scores_new_users():
    split = small_split()
    model = dmf(split).double()
    rows = split.train.to_scipy("rating")[:3]
    torch.testing.assert_close(F.normalize(model.embed_users(rows), dim=1),
                               model._eval_scorer().users[:3])
    items, _ = model.recommend_rows(rows, k=5)
    assert torch.equal(items, model.recommend(torch.arange(3), k=5)[0])


def test_full_ranking_of_new_users_leaves_out_items_they_rated_0():
    from dataclasses import replace

    from dmfx.inductive import _known
    data = synthetic(40, 60, 700, seed=0)
    ratings = data.ratings.copy()
    ratings[::3] = 0  # an implicit 0, as Book-Crossing stores it
    split = leave_one_out(replace(data, ratings=ratings), num_negatives=10, seed=0)
    _, new = hold_out_users(split, 0.3, seed=0)
    rated = new.rows.tocoo()
    assert (rated.data == 0).any()
    known = _known(new).toarray() > 0
    assert known[rated.row, rated.col].all()


def test_train_with_held_out_users_reports_new_user_metrics(tmp_path, capsys):
    data = tmp_path / "d.npz"
    synthetic(50, 90, 1200, seed=2).save_npz(data)
    for model in ("dmf", "itempop", "itemknn"):
        flags = [*TINY, "--epochs", "1"] if model == "dmf" else ["--eval-negatives", "20", "--quiet"]
        out = tmp_path / model
        assert main(["train", "--data", str(data), "--model", model,
                     "--held-out-users", "0.2", "--topk", "5,10", "--output", str(out),
                     *flags]) == 0
        test = json.loads((out / "metrics.json").read_text())["test"]
        assert {"new_hr@5", "new_hr@10", "new_ndcg@10"} <= set(test)
        assert 0 <= test["new_ndcg@10"] <= test["new_hr@10"] <= 1
        # the checkpoint, re-read from the data file, redoes the same hold-out
        capsys.readouterr()
        assert main(["evaluate", str(out / "checkpoint.pt"), "--topk", "5,10"]) == 0
        assert json.loads(capsys.readouterr().out)["test"]["hr@10"] == pytest.approx(test["hr@10"])
    for model, flags in (("bpr", []), ("einmf", ["--input", "ids"])):
        assert main(["train", "--data", str(data), "--model", model, "--held-out-users", "0.2",
                     "--output", str(tmp_path / model), "--quiet", *flags]) == 2
        assert "cannot score a user it was not trained on" in capsys.readouterr().err


# -- batch recommendation ----------------------------------------------------------------------

def tied_split():
    """ItemPop on data with many equal popularities and a user who rated every item."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(12):
        chosen = np.arange(9) if u == 4 else rng.choice(9, size=3, replace=False)
        users += [u] * len(chosen)
        items += list(chosen)
    data = Interactions(np.arange(12), np.arange(9), users, items, np.ones(len(users)))
    return leave_one_out(data, num_negatives=0, seed=0, valid=False)


@pytest.mark.parametrize("block", [1, 5, 100])
def test_blocked_topk_equals_a_dense_reference(block):
    split = tied_split()
    model = build_model("itempop", split.train, {}, "cpu")
    model.fit_closed_form(split.train)
    trained = Trained(model, split)
    exclude = trained.interacted()
    users = np.array([0, 4, 7, 11, 2])
    got = list(recommend_blocks(trained, users, 4, exclude=exclude, block=block))
    assert [len(b[0]) for b in got] == [min(block, 5 - s) for s in range(0, 5, block)]
    items, scores = np.concatenate([b[1] for b in got]), np.concatenate([b[2] for b in got])
    known = sp.csr_matrix((np.ones(len(exclude.indices)), exclude.indices.numpy(),
                           exclude.indptr.numpy()), shape=exclude.shape).toarray() > 0
    pop = model.popularity.numpy()
    for row, user in enumerate(users):
        allowed = np.flatnonzero(~known[user])
        expected = np.sort(pop[allowed])[::-1][:4]
        n = len(expected)
        np.testing.assert_allclose(scores[row, :n], expected)
        assert set(items[row, :n]) <= set(allowed) and len(set(items[row, :n])) == n
        np.testing.assert_allclose(pop[items[row, :n]], scores[row, :n])
        assert (items[row, n:] == -1).all() and np.isneginf(scores[row, n:]).all()
    assert (items[1] == -1).all()  # user 4 has interacted with every item


@pytest.mark.parametrize("tile", [1, 3, 4, 7, 50])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_item_tiled_topk_equals_a_dense_reference(tile, k):
    """Small integer vectors (many exact ties), items excluded in several tiles, a user with
    every item excluded and one with fewer than k left."""
    gen = torch.Generator().manual_seed(tile * 10 + k)
    users_v = torch.randint(-2, 3, (6, 3), generator=gen).float()
    items_v = torch.randint(-2, 3, (8, 3), generator=gen).float()
    bias = torch.randint(0, 2, (8,), generator=gen).float()
    scorer = VectorScorer(users_v, items_v, item_bias=bias)
    known = torch.rand(6, 8, generator=gen) < 0.3
    known[2] = True  # nothing left
    known[5, 2:] = True  # two items left
    exclude = as_csr(sp.csr_matrix(known.numpy().astype(np.float32)))
    users = torch.tensor([5, 0, 2, 1, 3, 4])
    top, values = topk_items_tiled(scorer, users, k, 8, tile, exclude)
    dense = (users_v @ items_v.T + bias).masked_fill(known, -torch.inf)[users]
    expected = torch.sort(dense, dim=1, descending=True).values[:, :k]
    torch.testing.assert_close(values, F.pad(expected, (0, max(0, k - 8)), value=-torch.inf))
    # Equal scores by item id, whatever the tile: the same lists as the dense top-k.
    assert torch.equal(top, topk_items(dense, k)[0])
    for row, user in enumerate(users.tolist()):
        chosen = top[row][top[row] >= 0]
        assert len(set(chosen.tolist())) == len(chosen)  # distinct items
        assert not known[user, chosen].any()
        torch.testing.assert_close(dense[row, chosen], values[row, :len(chosen)])
        assert len(chosen) == min(k, int((~known[user]).sum()))
        scores_in_list = dense[row, chosen].tolist()
        assert all(scores_in_list[j] > scores_in_list[j + 1] or chosen[j] < chosen[j + 1]
                   for j in range(len(chosen) - 1))
    assert (top[2] == -1).all() and torch.isneginf(values[2]).all()


@pytest.mark.parametrize("name", ["itempop", "dmf"])
def test_recommend_lists_do_not_depend_on_k_or_batch_size(name):
    """ItemPop's counts tie often (and an untrained-looking DMF with zero weights ties
    everywhere): equal scores go to the lower item id, so every k and batch size gives the same
    lists, the shorter a prefix of the longer."""
    split = small_split()
    model = build_model(name, split.train, {}, "cpu") if name == "itempop" else dmf(split)
    if name == "dmf":
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    users = torch.arange(split.train.num_users)
    longest, _ = model.recommend(users, k=30)
    for k, batch in [(1, 1), (5, 7), (12, 40), (30, 3)]:
        items, _ = model.recommend(users, k=k, batch_size=batch)
        assert torch.equal(items, longest[:, :k])
    if name == "dmf":  # every score ties: each user's unseen items in id order
        seen = split.train.to_scipy("binary").toarray() > 0
        expected = [np.flatnonzero(~row)[:30].tolist() for row in seen]
        assert [row[row >= 0].tolist() for row in longest] == expected


def test_recommend_takes_the_tiled_path_and_agrees_with_full_blocks():
    split = small_split()
    model = dmf(split)
    scorer = model._eval_scorer()
    users = torch.arange(split.train.num_users)
    tiled = model.recommend(users, k=5)
    full = topk_items(scorer.all_items(users), 5, model.seen, users)
    assert torch.equal(tiled[0], full[0])  # continuous scores: no ties to order differently
    torch.testing.assert_close(tiled[1], full[1])
    assert model.users_per_block(scorer=scorer) >= TILE_USERS


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_written_recommendations_read_back(tmp_path, suffix):
    split = small_split(string_ids=True)
    model = dmf(split)
    trained = Trained(model, split)
    users = np.array([0, 5, 9])
    blocks = list(recommend_blocks(trained, users, 3, exclude=trained.interacted(), block=2))
    path = tmp_path / f"recs{suffix}"
    assert write_recommendations(path, iter(blocks), trained) == 9
    if suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(path).to_pydict()
        user, rank, item, score = (table[c] for c in ("user", "rank", "item", "score"))
    else:
        lines = path.read_text().splitlines()
        assert lines[0].split(suffix == ".csv" and "," or "\t") == ["user", "rank", "item", "score"]
        cols = list(zip(*(line.split("," if suffix == ".csv" else "\t") for line in lines[1:])))
        user, rank, item, score = cols[0], [int(r) for r in cols[1]], cols[2], [float(s) for s in cols[3]]
    items = np.concatenate([b[1] for b in blocks])
    assert list(user) == [split.train.user_ids[u] for u in users for _ in range(3)]
    assert list(rank) == [1, 2, 3] * 3
    assert list(item) == [split.train.item_ids[i] for i in items.ravel()]
    np.testing.assert_allclose(score, np.concatenate([b[2] for b in blocks]).ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match="--output"):
        write_recommendations(tmp_path / "recs.json", iter(blocks), trained)


def test_recommend_command_for_many_users_and_for_a_new_user(run, tmp_path, capsys):
    out, kept = run
    trained = load_trained(out / "model.pt")
    users = tmp_path / "users.txt"
    users.write_text(f"# users\n{trained.user_ids[3]}\n\n{trained.user_ids[8]}\n")
    capsys.readouterr()
    assert main(["recommend", str(out / "model.pt"), "--users-file", str(users), "-k", "3",
                 "--output", str(tmp_path / "r.csv"), "--batch-size", "1"]) == 0
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 and lines[1].startswith(f"{trained.user_ids[3]},1,")
    # a new user: the ratings of user 3 give user 3's list (its held-out items aside)
    ratings = tmp_path / "ratings.txt"
    row = trained.split.train.to_scipy("rating")[3]
    ratings.write_text("".join(f"{trained.item_ids[i]},{r:g}\n" for i, r in zip(row.indices, row.data))
                       + "no-such-item,5\n")
    assert main(["recommend", str(out / "model.pt"), "--ratings", str(ratings), "-k", "5"]) == 0
    captured = capsys.readouterr()
    assert "1 item(s) this model does not know" in captured.err
    new_items = [line.split("\t")[1] for line in captured.out.splitlines()]
    ref_items, _ = trained.model.recommend_rows(row, k=5)
    assert new_items == [str(trained.item_ids[i]) for i in ref_items[0].tolist()]
    bad = tmp_path / "bad.txt"
    bad.write_text("no-such-item\n")
    assert main(["recommend", str(out / "model.pt"), "--ratings", str(bad)]) == 2
    assert "rates no item this model knows" in capsys.readouterr().err
    users.write_text("nobody\n")
    assert main(["recommend", str(out / "model.pt"), "--users-file", str(users)]) == 2
    assert ":1: unknown user 'nobody'" in capsys.readouterr().err


def test_output_folders_are_made_and_a_file_in_their_way_is_named(run, tmp_path, capsys):
    out, _ = run
    user = str(load_trained(out / "model.pt").user_ids[3])
    # as train, export and split make their --output folder, recommend makes its file's
    nested = tmp_path / "new" / "folders" / "recs.csv"
    assert main(["recommend", str(out / "model.pt"), "--user", user, "-k", "2",
                 "--output", str(nested)]) == 0
    assert nested.read_text().startswith("user,rank,item,score\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    capsys.readouterr()
    for argv in (["recommend", str(out / "model.pt"), "--user", user,
                  "--output", str(blocker / "recs.csv")],
                 ["export", str(out / "model.pt"), "--output", str(blocker)],
                 ["export", str(out / "model.pt"), "--output", str(blocker / "serving")]):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"dmfx: error: --output: {blocker} exists and is not a folder\n"


def test_recommend_for_a_new_user_refuses_id_models_in_one_line(tmp_path, capsys):
    data = tmp_path / "d.npz"
    synthetic(30, 80, 400, seed=0).save_npz(data)
    assert main(["train", "--data", str(data), "--model", "bpr", "--epochs", "1", "--output",
                 str(tmp_path / "bpr"), "--eval-negatives", "10", "--quiet"]) == 0
    ratings = tmp_path / "ratings.txt"
    ratings.write_text("1,5\n")
    capsys.readouterr()
    assert main(["recommend", str(tmp_path / "bpr" / "model.pt"), "--ratings", str(ratings)]) == 2
    err = capsys.readouterr().err
    assert "--ratings: BPR learns a vector per user id" in err and "Traceback" not in err


def test_read_new_user_parses_separators_and_refuses_garbage(run, tmp_path):
    trained = load_trained(run[0] / "model.pt")
    a, b = trained.item_ids[2], trained.item_ids[5]
    path = tmp_path / "r.txt"
    path.write_text(f"{a}\t4\n{b} 2.5\n")
    row, unknown = read_new_user(path, trained)
    assert row.indices.tolist() == [2, 5] and row.values.tolist() == [4.0, 2.5] and not unknown
    path.write_text(f"{a},x\n")
    with pytest.raises(Exception, match=r"r.txt:1: rating 'x' is not a number"):
        read_new_user(path, trained)
    path.write_text(f"{b},3\n{a},-5\n")  # training data refuses negative ratings too
    with pytest.raises(Exception, match=r"r.txt:2: rating '-5' is not a finite number >= 0"):
        read_new_user(path, trained)
    path.write_text(f"{a},5\n{b},1\n{a},2\n")  # rated twice: the later line, not the sum
    row, _ = read_new_user(path, trained)
    assert row.indices.tolist() == [2, 5] and row.values.tolist() == [2.0, 1.0]


# -- export ------------------------------------------------------------------------------------

def test_export_writes_vectors_that_rank_like_the_model_and_towers_that_embed(run, tmp_path, capsys):
    out, _ = run
    target = tmp_path / "export"
    assert main(["export", str(out / "model.pt"), "--output", str(target)]) == 0
    meta = json.loads((target / "meta.json").read_text())
    assert meta["model"] == "dmf" and meta["normalised"]
    users, items = np.load(target / "user_vectors.npy"), np.load(target / "item_vectors.npy")
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1, rtol=1e-5)
    trained = load_trained(out / "model.pt")
    assert np.array_equal(np.load(target / "user_ids.npy"), trained.user_ids)
    seen = sp.load_npz(target / "seen.npz").toarray() > 0
    scores = users @ items.T
    scores[seen] = -np.inf
    ref_items, ref_scores = trained.model.recommend(torch.arange(5), k=3)
    np.testing.assert_allclose(np.sort(scores[:5], 1)[:, ::-1][:, :3], ref_scores.numpy(), rtol=1e-5)
    # the exported tower embeds rating rows, one row included
    tower = torch.export.load(str(target / "user_tower.pt2")).module()
    y = trained.split.train.to_scipy("rating")
    for rows in (y[:1], y[2:7]):
        csr = as_csr(rows)
        got = tower(csr.indptr.long(), csr.indices.long(), csr.values)
        torch.testing.assert_close(got, torch.from_numpy(users[: rows.shape[0]] if rows.shape[0] == 1
                                                         else users[2:7]), rtol=1e-5, atol=1e-6)
    item_tower = torch.export.load(str(target / "item_tower.pt2")).module()
    cols = as_csr(y[:, :4], transpose=True)
    torch.testing.assert_close(item_tower(cols.indptr.long(), cols.indices.long(), cols.values),
                               torch.from_numpy(items[:4]), rtol=1e-5, atol=1e-6)
    # as the docs say: a fresh process loads the towers after `import dmfx.ops`
    load = (f"import torch, dmfx.ops; torch.export.load({str(target / 'user_tower.pt2')!r})")
    subprocess.run([sys.executable, "-c", load], check=True, capture_output=True)


def test_exported_towers_of_a_dot_scored_dmf_give_its_vectors(tmp_path):
    data = tmp_path / "d.npz"
    synthetic(30, 40, 400, seed=1).save_npz(data)
    out = tmp_path / "dot"
    assert main(["train", "--data", str(data), "--score", "dot", "--activation", "none",
                 "--user-layers", "8,4", "--item-layers", "8,4", "--epochs", "1",
                 "--eval-negatives", "10", "--no-full-ranking", "--quiet", "--output",
                 str(out)]) == 0
    target = tmp_path / "export"
    assert main(["export", str(out / "model.pt"), "--output", str(target)]) == 0
    assert not json.loads((target / "meta.json").read_text())["normalised"]
    users = torch.from_numpy(np.load(target / "user_vectors.npy"))
    tower = torch.export.load(str(target / "user_tower.pt2")).module()
    csr = as_csr(load_trained(out / "model.pt").split.train.to_scipy("rating")[:3])
    torch.testing.assert_close(tower(csr.indptr.long(), csr.indices.long(), csr.values),
                               users[:3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", ["gmf", "bpr"])
def test_models_scored_by_their_tables_export(model, tmp_path):
    data = tmp_path / "d.npz"
    synthetic(30, 40, 400, seed=1).save_npz(data)
    out = tmp_path / model
    assert main(["train", "--data", str(data), "--model", model, "--factors", "4", "--epochs",
                 "1", "--eval-negatives", "10", "--no-full-ranking", "--quiet", "--output",
                 str(out)]) == 0
    target = tmp_path / "export"
    assert main(["export", str(out / "model.pt"), "--output", str(target)]) == 0
    trained = load_trained(out / "model.pt")
    users, items = np.load(target / "user_vectors.npy"), np.load(target / "item_vectors.npy")
    scores = users @ items.T
    if (target / "item_bias.npy").is_file():
        scores = scores + np.load(target / "item_bias.npy")
    pairs = torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    np.testing.assert_allclose(scores[pairs[0], pairs[1]],
                               trained.model.score(*pairs).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("model, flags", [
    ("neumf", ["--factors", "4", "--layers", "8,4", "--epochs", "1"]),
    ("itempop", []),
])
def test_export_refuses_models_without_vectors(tmp_path, capsys, model, flags):
    data = tmp_path / "d.npz"
    synthetic(30, 40, 400, seed=1).save_npz(data)
    out = tmp_path / model
    assert main(["train", "--data", str(data), "--model", model, *flags, "--eval-negatives", "10",
                 "--quiet", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "model.pt"), "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == (
        f"dmfx: error: {model} has no vectors to export: its score of a pair is not the dot "
        "product of a user vector and an item vector; its model file is what serves it "
        "(dmfx recommend)\n")


# -- users held out of training ------------------------------------------------------------------

@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """A DMF run that held a fifth of its evaluated users out of training."""
    out, _ = trained_run(tmp_path_factory.mktemp("held-out"), "d.npz", "--epochs", "1",
                         "--held-out-users", "0.2", "--no-full-ranking")
    return out


def test_load_trained_names_the_users_held_out_of_training(held_out_run):
    trained = load_trained(held_out_run / "model.pt")
    held = trained.held_out_users
    split = trained.split
    evaluated = len(split.test_users) + len(held)  # the held-out users were evaluated ones
    assert len(held) == round(0.2 * evaluated) > 0 and np.all(np.diff(held) > 0)
    for users in (split.train.users, split.valid_users, split.test_users):
        assert not np.isin(users, held).any()
    # the checkpoint, re-read from the data file, redoes the hold-out and names the same users
    assert np.array_equal(load_trained(held_out_run / "checkpoint.pt").held_out_users, held)
    # a run without held-out users has none, even where a user has no training row
    assert len(Trained(None, small_split()).held_out_users) == 0


def test_recommend_refuses_held_out_users_and_leaves_them_out_of_all_users(held_out_run,
                                                                            tmp_path, capsys):
    model = str(held_out_run / "model.pt")
    trained = load_trained(model)
    held = trained.user_ids[trained.held_out_users]
    capsys.readouterr()
    assert main(["recommend", model, "--user", str(held[0])]) == 2
    err = capsys.readouterr().err
    assert f"user {str(held[0])!r} was held out of training" in err and "--ratings" in err
    users = tmp_path / "users.txt"
    users.write_text(f"# known, then held out\n{trained.user_ids[trained.split.test_users[0]]}"
                     f"\n\n{held[1]}\n")
    assert main(["recommend", model, "--users-file", str(users)]) == 2
    assert f"users.txt:4: user {str(held[1])!r} was held out" in capsys.readouterr().err
    out = tmp_path / "all.csv"
    assert main(["recommend", model, "--all-users", "-k", "2", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{len(held)} user(s) held out of training" in err and "left out" in err
    listed = {line.split(",")[0] for line in out.read_text().splitlines()[1:]}
    assert listed == {str(u) for u in trained.user_ids} - {str(u) for u in held}
    # their ratings still give them a list
    ratings = tmp_path / "ratings.txt"
    ratings.write_text(f"{trained.item_ids[3]},4\n")
    assert main(["recommend", model, "--ratings", str(ratings), "-k", "2"]) == 0


def test_export_leaves_held_out_users_out_of_the_user_files(held_out_run, tmp_path):
    trained = load_trained(held_out_run / "model.pt")
    meta = export_model(trained, tmp_path / "x")
    kept = np.setdiff1d(np.arange(trained.model.num_users), trained.held_out_users)
    ids, vectors = np.load(tmp_path / "x" / "user_ids.npy"), np.load(tmp_path / "x" / "user_vectors.npy")
    seen = sp.load_npz(tmp_path / "x" / "seen.npz")
    assert np.array_equal(ids, trained.user_ids[kept])
    assert vectors.shape[0] == seen.shape[0] == len(kept) == meta["users"]
    assert meta["held_out_users"] == len(trained.held_out_users)
    np.testing.assert_allclose(vectors, trained.model._eval_scorer().users[kept].numpy())
    assert (seen != trained.split.train.to_scipy("binary")[kept]).nnz == 0


# -- input files and output files ------------------------------------------------------------------

def test_file_errors_name_the_files_own_line_numbers(run, tmp_path):
    trained = load_trained(run[0] / "model.pt")
    users = tmp_path / "users.txt"
    users.write_text(f"# users\n\n{trained.user_ids[3]}\n\n# more\nnobody\n")
    with pytest.raises(KeyError, match=r"users.txt:6: unknown user 'nobody'"):
        read_user_ids(users, trained)
    ratings = tmp_path / "ratings.txt"
    ratings.write_text(f"# mine\n\n{trained.item_ids[2]},4\n\n{trained.item_ids[5]},x\n")
    with pytest.raises(Exception, match=r"ratings.txt:5: rating 'x' is not a number"):
        read_new_user(ratings, trained)
    # a rating beyond float32 is not "non-finite" somewhere later: it is named here, by line
    ratings.write_text(f"\n{trained.item_ids[2]},1e39\n")
    with pytest.raises(Exception, match=r"ratings.txt:2: rating '1e39' is out of float32 range"):
        read_new_user(ratings, trained)


def test_files_with_a_utf8_byte_order_mark_read_their_first_id(run, tmp_path):
    trained = load_trained(run[0] / "model.pt")
    users = tmp_path / "users.txt"
    users.write_text(f"{trained.user_ids[3]}\n{trained.user_ids[7]}\n", encoding="utf-8-sig")
    assert read_user_ids(users, trained).tolist() == [3, 7]
    ratings = tmp_path / "ratings.txt"
    ratings.write_text(f"{trained.item_ids[2]},4\n", encoding="utf-8-sig")
    row, unknown = read_new_user(ratings, trained)
    assert row.indices.tolist() == [2] and not unknown


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_output_quotes_ids_holding_the_separator_or_quotes(tmp_path, suffix):
    import csv

    data = synthetic(20, 30, 300, seed=0)
    data = Interactions(np.array([f"u,\t{i:02d}" for i in range(data.num_users)]),
                        np.array([f'Movie {i:02d}, The "x"' for i in range(data.num_items)]),
                        data.users, data.items, data.ratings, data.timestamps)
    split = leave_one_out(data, num_negatives=5, seed=0)
    model = build_model("itempop", split.train, {}, "cpu")
    model.fit_closed_form(split.train)
    trained = Trained(model, split)
    blocks = list(recommend_blocks(trained, np.arange(3), 3, exclude=trained.interacted()))
    path = tmp_path / f"recs{suffix}"
    assert write_recommendations(path, iter(blocks), trained) == 9
    sep = "," if suffix == ".csv" else "\t"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=sep))
    assert rows[0] == ["user", "rank", "item", "score"]
    expected = [[str(trained.user_ids[u]), str(r + 1), str(trained.item_ids[i])]
                for users, items, _ in blocks for u, row in zip(users, items)
                for r, i in enumerate(row)]
    assert [row[:3] for row in rows[1:]] == expected
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(path, sep=sep)
    assert frame["item"].tolist() == [row[2] for row in expected]
    assert frame["user"].tolist() == [row[0] for row in expected]


# -- the Python API's arguments --------------------------------------------------------------------

def test_recommend_blocks_checks_block_and_leaves_out_only_what_exclude_names():
    split = small_split()
    model = dmf(split)
    trained = Trained(model, split)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match=f"block must be a positive integer, got {bad}"):
            list(recommend_blocks(trained, np.arange(5), 3, exclude=None, block=bad))
    n = model.num_items
    (_, items, _), = recommend_blocks(trained, np.array([3]), n, exclude=None)
    assert sorted(items[0].tolist()) == list(range(n))  # nothing left out, training items neither
    (_, items, _), = recommend_blocks(trained, np.array([3]), n, exclude=model.seen)
    assert (items[0] == -1).sum() == split.train.users.tolist().count(3)
    # a list of users works as an array does
    (users, _, _), = recommend_blocks(trained, [1, 2], 3, exclude=None)
    assert users.tolist() == [1, 2]


def test_new_users_built_by_hand_are_checked():
    from dmfx.inductive import NewUsers

    n = 60

    def new(rows=None, test=(1,), negatives=((3, 4),), valid=(-1,)):
        rows = sp.csr_matrix((1, n)) if rows is None else rows
        return NewUsers(np.arange(rows.shape[0]), rows, np.array(test), np.array(negatives),
                        np.array(valid))

    with pytest.raises(ValueError, match=r"test_items must lie in \[0, 60\)"):
        new(test=(-2,))  # would index item 58
    with pytest.raises(ValueError, match=r"test_items must lie in \[0, 60\)"):
        new(test=(n + 3,))
    with pytest.raises(ValueError, match=r"test_negatives must lie in \[0, 60\)"):
        new(negatives=((3, n),))
    with pytest.raises(ValueError, match=r"valid_items must lie in \[-1, 60\)"):
        new(valid=(n,))
    with pytest.raises(ValueError, match="test_items must be"):
        new(test=(1, 2))
    with pytest.raises(ValueError, match="test_negatives must be"):
        new(negatives=(3, 4))
    with pytest.raises(ValueError, match="test_items must not be among the rated items"):
        new(rows=sp.csr_matrix(([0.0], ([0], [1])), shape=(1, n)))  # rated 0 is rated
    with pytest.raises(ValueError, match="test_items must differ from valid_items"):
        new(valid=(1,))
    with pytest.raises(ValueError, match="rows must hold finite ratings >= 0"):
        new(rows=sp.csr_matrix(([-2.0], ([0], [7])), shape=(1, n)))
    assert new().test_items.dtype == np.int64
    model = dmf(small_split())
    with pytest.raises(ValueError, match=f"rows must have {model.num_items} columns"):
        evaluate_new_users(model, new(rows=sp.csr_matrix((1, n + 2))))


def test_export_of_a_float64_dmf_leaves_the_model_where_it_was(tmp_path, monkeypatch):
    split = small_split()
    model = dmf(split).double()
    model.train()
    before = {name: (p.data_ptr(), p.dtype, p.device) for name, p in model.named_parameters()}

    def moved(*args, **kwargs):
        raise AssertionError("export_model moved the caller's model")
    monkeypatch.setattr(model, "cpu", moved)
    monkeypatch.setattr(model, "to", moved)
    meta = export_model(Trained(model, split), tmp_path / "x")
    assert meta["users"] == model.num_users and meta["held_out_users"] == 0
    assert before == {name: (p.data_ptr(), p.dtype, p.device) for name, p in model.named_parameters()}
    assert model.training
    users = np.load(tmp_path / "x" / "user_vectors.npy")
    assert users.dtype == np.float32
    tower = torch.export.load(str(tmp_path / "x" / "user_tower.pt2")).module()
    csr = as_csr(split.train.to_scipy("rating")[:4])
    got = tower(csr.indptr.long(), csr.indices.long(), csr.values)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.from_numpy(users[:4]), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_export_of_a_model_on_the_gpu_leaves_it_there(tmp_path):
    if not dmfx_cuda():
        pytest.skip("dmfx was built without CUDA kernels")
    split = small_split()
    torch.manual_seed(0)
    model = build_model("dmf", split.train, {"user_layers": [16, 8], "item_layers": [16, 8]},
                        "cuda")
    export_model(Trained(model, split), tmp_path / "x")
    assert all(p.is_cuda for p in model.parameters())
    assert all(b.is_cuda for b in model.buffers())


def dmfx_cuda() -> bool:
    import dmfx

    return dmfx.cuda_enabled()


def test_load_trained_refuses_a_device_this_machine_lacks(run):
    with pytest.raises(ValueError, match="device: expected auto, cpu, cuda or cuda:N, got 'meta'"):
        load_trained(run[0] / "model.pt", device="meta")
    if not (torch.cuda.is_available() and dmfx_cuda()):
        with pytest.raises(ValueError, match="device='cuda' needs a GPU"):
            load_trained(run[0] / "model.pt", device="cuda")
    with pytest.raises(ValueError, match="device='cuda:99'|device='cuda' needs"):
        load_trained(run[0] / "model.pt", device="cuda:99")


def test_damaged_model_files_are_named_for_what_they_are(run, tmp_path):
    from dmfx.checkpoint import CheckpointError, save_checkpoint

    saved = load_checkpoint(run[0] / "model.pt")
    plain = {k: v for k, v in saved.items() if k not in ("format", "version")}
    name = next(k for k, v in plain["model_state"].items() if v.dim() == 2)
    broken = tmp_path / "weights.pt"
    save_checkpoint(broken, {**plain, "model_state": {**plain["model_state"],
                                                      name: torch.zeros(3, 3)}})
    with pytest.raises(CheckpointError) as error:
        load_trained(broken)
    assert str(error.value).startswith(f"{broken}: its weights do not fit")
    assert "data read now" not in str(error.value)  # no data was read
    damaged = tmp_path / "split.pt"
    save_checkpoint(damaged, {**plain, "split": {k: v for k, v in plain["split"].items()
                                                 if k != "test_items"}})
    with pytest.raises(CheckpointError, match=f"{damaged}: the stored split is damaged"):
        load_trained(damaged)


def test_data_spec_with_a_file_alone_reads_that_file(tmp_path):
    from dmfx.experiment import DataSpec

    data = synthetic(20, 30, 300, seed=0)
    data.save_npz(tmp_path / "ratings.npz")
    spec = DataSpec(data=str(tmp_path / "ratings.npz"))
    assert spec.dataset is None and spec.name == "ratings"
    assert spec.load().nnz == data.nnz
    assert DataSpec().dataset == "ml-100k"
    assert DataSpec(protocol="atomic", data=str(tmp_path / "splits" / "x")).dataset is None
    with pytest.raises(ValueError, match="protocol='atomic' reads a split folder: give it as "
                                         "data='FOLDER/NAME'"):
        DataSpec(dataset="ml-100k", protocol="atomic")
