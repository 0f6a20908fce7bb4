"""DMF, LFM and ItemPop: shapes, the towers' math, the once-per-distinct-id forward, scoring."""
import math

import numpy as np
import pytest
import torch

from dmfx import reference
from dmfx.data import CSR, Interactions, synthetic
from dmfx.models import DMF, LFM, MODELS, ItemPop, build_model, topk_items, train_config


@pytest.fixture(scope="module")
def data():
    return synthetic(40, 50, 600, seed=1)


def test_dmf_tower_matches_dense_reference(data):
    torch.manual_seed(0)
    model = DMF(data, user_layers=(12, 5), item_layers=(9, 5))
    users = torch.tensor([0, 3, 3, 7])
    dense = torch.as_tensor(data.to_scipy("rating").toarray())
    tower = model.user_tower
    expected = torch.relu(tower.mlp.layers[0](dense[users] @ tower.first))  # Eq. 6: l1 = Y W1
    torch.testing.assert_close(tower(users), expected)


def test_binary_input_uses_ones(data):
    torch.manual_seed(0)
    model = DMF(data, input="binary")
    users = torch.tensor([1, 2])
    dense = torch.as_tensor(data.to_scipy("binary").toarray())
    first = dense[users] @ model.user_tower.first
    torch.testing.assert_close(model.user_tower.mlp(first), model.user_tower(users))


def test_loss_matches_reference_and_runs_each_distinct_id_once(data, monkeypatch):
    torch.manual_seed(0)
    model = DMF(data, (8, 4), (8, 4))
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pair_vectors_do_not_wait_for_the_gpu(data):
    torch.manual_seed(0)
    model = DMF(data, (8, 4), (8, 4)).cuda()
    users = torch.tensor([0, 0, 5, 5, 5, 9], device="cuda")
    items = torch.tensor([1, 2, 1, 1, 3, 4], device="cuda")
    model.pair_vectors(users, items)  # first call: lazy initialisation may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        p, q = model.pair_vectors(users, items)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(p.cpu(), model.cpu().user_tower(users.cpu()))
    torch.testing.assert_close(q.cpu(), model.item_tower(items.cpu()))


def test_init_follows_the_paper(data):
    torch.manual_seed(0)
    model = DMF(data, (64, 64), (64, 64))
    assert model.user_tower.first.std().item() == pytest.approx(0.01, rel=0.1)


def test_mismatched_latent_sizes_are_rejected(data):
    with pytest.raises(ValueError, match="one latent size"):
        DMF(data, user_layers=(8, 4), item_layers=(8, 5))
    with pytest.raises(ValueError, match="input must be"):
        DMF(data, input="ratings")


def test_scorer_is_cosine_of_tower_outputs(data):
    torch.manual_seed(0)
    model = LFM(data, (8, 4), (8, 4))
    scorer = model.scorer()
    users, items = torch.tensor([2, 3]), torch.tensor([[0, 1], [4, 5]])
    p = model.user_tower(users)
    q = model.item_tower(items.flatten()).view(2, 2, -1)
    expected = torch.nn.functional.cosine_similarity(p.unsqueeze(1), q, dim=-1)
    torch.testing.assert_close(scorer.candidates(users, items), expected)
    torch.testing.assert_close(scorer.all_items(users)[:, [0, 1]][0], expected[0])


def test_itempop_scores_by_popularity():
    train = Interactions(np.arange(3), np.arange(4), np.array([0, 1, 2, 0, 1, 2]),
                         np.array([1, 1, 1, 3, 3, 0]), np.ones(6))
    model = ItemPop(train)
    model.fit_closed_form(train)
    scores = model.scorer().all_items(torch.tensor([0, 1]))
    assert scores.tolist() == [[1, 3, 0, 2]] * 2


# -- the interface every model shares -------------------------------------------------------


def test_topk_orders_like_the_scores_and_pads():
    scores = torch.tensor([[0.5, -2.0, -0.0, 3.0, -1e-30, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    exclude = CSR(torch.tensor([0, 1, 6]), torch.tensor([3, 0, 1, 2, 3, 4]), torch.ones(6), (2, 6))
    items, values = topk_items(scores, 4, exclude, torch.tensor([0, 1]))
    # -0.0 and 0.0 tie (the lower item first); -1e-30 ranks below them and above -2
    assert items[0].tolist() == [0, 2, 5, 4]
    assert items[1].tolist() == [5, -1, -1, -1] and torch.isneginf(values[1, 1:]).all()


def _best_by_score_then_id(scores: torch.Tensor, k: int) -> list:
    """Each row's k best columns by (score descending, column ascending), -inf as -1."""
    out = []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]
        out.append([c if row[c] > -math.inf else -1 for c in order] + [-1] * (k - len(order)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_topk_orders_equal_scores_by_item_id_so_lists_nest(seed):
    """Many exact ties, some at the k-th place with tied items left out (torch.topk keeps an
    arbitrary one of them): without a generator the lower item id comes first, so the top k is
    a prefix of the top k + 1."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-2, 3, (7, 40), generator=gen).float()
    scores[torch.rand(7, 40, generator=gen) < 0.2] = -math.inf
    scores[0] = 0.0  # every item ties
    longest = topk_items(scores, 45)[0]
    for k in (1, 2, 5, 17, 40, 45):
        items, values = topk_items(scores, k)
        assert items.tolist() == _best_by_score_then_id(scores, k)
        assert torch.equal(items, longest[:, :k])
        chosen = items.clamp(min=0)
        torch.testing.assert_close(values, torch.where(items >= 0, scores.gather(1, chosen),
                                                       -math.inf))


def test_topk_breaks_ties_uniformly_with_a_generator():
    g = torch.Generator().manual_seed(0)
    first = topk_items(torch.zeros(3000, 4), 1, generator=g)[0][:, 0]
    assert torch.bincount(first, minlength=4).tolist() == pytest.approx([750] * 4, rel=0.12)
    again = topk_items(torch.zeros(3000, 4), 1, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(again[:, 0], first)


def test_recommend_leaves_out_the_training_items(data):
    torch.manual_seed(0)
    model = LFM(data, (8,), (8,))
    users = torch.arange(data.num_users)
    items, scores = model.recommend(users, 5)
    assert items.shape == (data.num_users, 5) and (scores[:, :-1] >= scores[:, 1:]).all()
    for u in range(data.num_users):
        assert not set(items[u].tolist()) & set(data.items[data.users == u].tolist())
    all_scores = model.scorer().all_items(users)
    torch.testing.assert_close(scores, all_scores.gather(1, items))
    unfiltered, _ = model.recommend(users, 5, exclude_seen=False)
    torch.testing.assert_close(unfiltered, all_scores.topk(5).indices)


def test_score_and_similar_items(data):
    torch.manual_seed(0)
    model = DMF(data, (8, 4), (8, 4))
    users, items = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6])
    expected = model.scorer().candidates(users, items.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(model.score(users, items), expected)
    assert model.score(users, torch.tensor([[1, 2], [3, 4], [5, 6]])).shape == (3, 2)
    with pytest.raises(IndexError, match="items must lie in"):
        model.score(users, torch.tensor([0, 1, data.num_items]))
    with pytest.raises(ValueError, match="one shape"):
        model.score(users, torch.tensor([0, 1]))
    # ids of another rank are refused in one line, not deep inside torch
    with pytest.raises(ValueError, match=r"users must be 1-D, got shape \(1, 3\)"):
        model.score(users.unsqueeze(0), items.unsqueeze(0))
    with pytest.raises(ValueError, match=r"users must be 1-D, got shape \(\)"):
        model.recommend(torch.tensor(0))
    with pytest.raises(ValueError, match=r"items must be 1-D, got shape \(1, 2\)"):
        model.similar_items(torch.tensor([[3, 7]]))
    with pytest.raises(TypeError, match="items must hold integer ids"):
        model.similar_items(torch.tensor([3.0]))
    # unsigned numpy ids are ids too
    torch.testing.assert_close(model.score(np.array([0, 1, 2], dtype=np.uint32), items), expected)
    similar, sims = model.similar_items(torch.tensor([3, 7]), 4)
    assert 3 not in similar[0].tolist() and 7 not in similar[1].tolist()
    vectors = torch.nn.functional.normalize(model.item_vectors(), dim=1)
    torch.testing.assert_close(sims[0], vectors[similar[0]] @ vectors[3])


def test_registry_is_the_source_of_defaults(data):
    for name, spec in MODELS.items():
        params = {"neighbours": 5} if name == "itemknn" else {}
        model = build_model(name, data, params)
        assert model.name == name
        assert set(model.config()) == set(spec.params)
    assert build_model("dmf", data).config()["user_layers"] == MODELS["dmf"].params["user_layers"].default
    assert train_config("dmf").lr == MODELS["dmf"].train["lr"]
    assert train_config("gmf", lr=0.5).lr == 0.5 and train_config("gmf").loss == "ce"
    with pytest.raises(ValueError, match="has no parameter neighbours"):
        build_model("dmf", data, {"neighbours": 3})
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        build_model("svd", data)
    with pytest.raises(ValueError, match="lr does not apply to model itemknn"):
        train_config("itemknn", lr=0.1)
    with pytest.raises(ValueError, match="trains with loss bpr"):
        train_config("bpr", loss="nce")


@pytest.mark.parametrize("activation", ["eq6", "hidden", "all", "none"])
def test_activation_puts_the_relus_where_it_says(data, activation):
    torch.manual_seed(0)
    model = DMF(data, (12, 7, 5), (12, 7, 5), activation=activation)
    tower, users = model.user_tower, torch.tensor([0, 3, 9])
    relu = {"eq6": (False, True, True), "hidden": (True, True, False),
            "all": (True, True, True), "none": (False, False, False)}[activation]
    x = torch.as_tensor(data.to_scipy("rating").toarray())[users] @ tower.first
    for layer, after in zip([None, *tower.mlp.layers], relu):
        x = x if layer is None else layer(x)
        x = torch.relu(x) if after else x
    torch.testing.assert_close(tower(users), x)


def test_dot_score_is_a_logit_with_binary_cross_entropy(data):
    torch.manual_seed(0)
    model = DMF(data, (8, 4), (8, 4), score="dot")
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    target = torch.tensor([1.0, 0.4, 0.0])
    p, q = model.user_tower(users), model.item_tower(items)
    logits = (p * q).sum(1)
    torch.testing.assert_close(model.loss(users, items, target),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
    torch.testing.assert_close(model.score(users, items), logits)
    with pytest.raises(ValueError, match="score must be one of"):
        DMF(data, score="sigmoid")
    with pytest.raises(ValueError, match="activation must be one of"):
        DMF(data, activation="relu")


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.trainer == "gradient"])
def test_float64_models_train_and_score_new_rows_in_float64(data, name):
    """A float64 model's targets, loss and scores stay float64 (EINMF's hybrid loss refused the
    trainer's float32 targets; NCF's cross-entropy came out float32)."""
    from dmfx.data import leave_one_out
    split = leave_one_out(data, num_negatives=5, seed=0)
    model = build_model(name, split.train).double()
    losses = []
    original = model.pairwise_loss if name == "bpr" else model.loss

    def loss(*args):
        losses.append(original(*args))
        return losses[-1]
    setattr(model, "pairwise_loss" if name == "bpr" else "loss", loss)
    model.fit(split, train_config(name, epochs=1, progress=False, batch_size=64))
    assert losses and all(v.dtype == torch.float64 for v in losses)
    assert model.scorer().all_items(torch.arange(3)).dtype == torch.float64
    if type(model).can_score_rows(model.config()):
        rows = split.train.csr("rating")
        assert model.scorer_for_rows(rows).all_items(torch.arange(3)).dtype == torch.float64


# -- recommend's arguments -----------------------------------------------------------------------


def _lfm(data):
    torch.manual_seed(0)
    return LFM(data, (8,), (8,))


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "dense-with-generator"])
def test_recommend_checks_the_shape_of_exclude(data, tiled):
    import scipy.sparse as sp

    model = _lfm(data)
    extra = {} if tiled else {"generator": torch.Generator().manual_seed(0)}
    users = torch.tensor([3, 30])
    seen = data.to_scipy("binary")
    for wrong in (seen.T.tocsr(),                                   # items x users by mistake
                  seen[:10],                                        # fewer rows than users
                  sp.hstack([seen, sp.csr_matrix((data.num_users, 7))]).tocsr(),  # extra items
                  seen[:, :20]):                                    # fewer items
        with pytest.raises(ValueError, match=r"exclude must be users x items, shape \(40, 50\)"):
            model.recommend(users, k=3, exclude=wrong, **extra)
        with pytest.raises(ValueError, match="exclude must be users x items"):
            model.recommend(users, k=3, exclude=CSR(*_parts(wrong)), **extra)  # dmfx's CSR
    # scipy and torch sparse matrices are read as recommend_rows reads them
    expected = model.recommend(users, k=5, **extra)[0]
    torch_csr = torch.sparse_csr_tensor(torch.from_numpy(seen.indptr).long(),
                                        torch.from_numpy(seen.indices).long(),
                                        torch.from_numpy(seen.data).float(), seen.shape)
    for exclude in (seen, seen.tocoo(), torch_csr):
        extra = {} if tiled else {"generator": torch.Generator().manual_seed(0)}
        assert torch.equal(model.recommend(users, k=5, exclude=exclude, **extra)[0], expected)


def _parts(matrix):
    matrix = matrix.tocsr()
    return (torch.from_numpy(matrix.indptr).long(), torch.from_numpy(matrix.indices).long(),
            torch.from_numpy(matrix.data).float(), matrix.shape)


def test_topk_functions_refuse_an_exclude_of_another_width():
    from dmfx.models.base import VectorScorer, topk_items_tiled
    exclude = CSR(torch.tensor([0, 1]), torch.tensor([4]), torch.ones(1), (1, 6))
    with pytest.raises(ValueError, match="exclude must have 5 columns"):
        topk_items(torch.zeros(1, 5), 2, exclude, torch.tensor([0]))
    scorer = VectorScorer(torch.ones(1, 2), torch.ones(5, 2))
    with pytest.raises(ValueError, match="exclude must have 5 columns"):
        topk_items_tiled(scorer, torch.tensor([0]), 2, 5, 2, exclude)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_recommend_refuses_a_batch_size_that_is_not_a_positive_integer(data, bad):
    model = _lfm(data)
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
        model.recommend(torch.arange(5), k=3, batch_size=bad)
    expected = model.recommend(torch.arange(5), k=3)
    got = model.recommend(torch.arange(5), k=3, batch_size=np.int64(2))
    assert torch.equal(got[0], expected[0])


def test_empty_sequences_are_empty_batches(data):
    model = _lfm(data)
    items, scores = model.recommend([], k=4)
    assert items.shape == scores.shape == (0, 4) and items.dtype == torch.long
    assert model.score([], []).shape == (0,)
    assert model.similar_items([], k=2)[0].shape == (0, 2)
    with pytest.raises(TypeError, match="must hold integer ids"):
        model.recommend([0.0], k=4)  # a float id is still refused


def test_recommend_rows_refuses_negative_ratings(data):
    import scipy.sparse as sp

    model = build_model("itempop", data)
    model.fit_closed_form(data)
    with pytest.raises(ValueError, match="rows must hold ratings >= 0"):
        model.recommend_rows(sp.csr_matrix(([-1.0], ([0], [3])), shape=(1, data.num_items)), k=3)
    model.recommend_rows(sp.csr_matrix(([0.0], ([0], [3])), shape=(1, data.num_items)), k=3)
    # The towers read rating rows and columns: the same domain.
    dmf = build_model("dmf", data, {"user_layers": [8, 4], "item_layers": [8, 4]})
    negative_row = sp.csr_matrix(([-1.0], ([0], [3])), shape=(1, data.num_items))
    with pytest.raises(ValueError, match="rows must hold ratings >= 0"):
        dmf.embed_users(negative_row)
    with pytest.raises(ValueError, match="columns must hold ratings >= 0"):
        dmf.embed_items(sp.csr_matrix(([-1.0], ([3], [0])), shape=(data.num_users, 1)))
    with pytest.raises(ValueError, match="rows must hold ratings >= 0"):
        build_model("einmf", data).scorer_for_rows(negative_row)


def test_concurrent_scoring_leaves_the_training_flags_as_they_were(data):
    """Thread A switches the model to eval mode to score; thread B starts scoring meanwhile.
    B must not take A's eval mode for the model's own (it restored eval after A restored
    training), and every score is computed in eval mode."""
    import threading

    model = _lfm(data)
    model.train()
    model.item_tower.eval()  # a submodule the caller put in eval mode stays there
    original = model.scorer
    inside_b, release_b = threading.Event(), threading.Event()
    modes, calls = [], []

    def scorer():
        modes.append((model.training, model.user_tower.training))
        calls.append(threading.current_thread())
        if len(calls) == 1:  # thread A (this one): start B while in eval mode
            b.start()
            inside_b.wait(timeout=1)  # B gets here only if nothing keeps it out meanwhile
        else:
            inside_b.set()
            release_b.wait(timeout=10)  # ... and finishes after A
        return original()

    model.scorer = scorer
    b = threading.Thread(target=lambda: model.recommend(torch.arange(4), k=2))
    model.recommend(torch.arange(4), k=2)
    release_b.set()
    b.join()
    assert modes == [(False, False), (False, False)]
    assert model.training and model.user_tower.training and not model.item_tower.training
