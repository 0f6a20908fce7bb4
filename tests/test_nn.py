"""dmfx.nn against the torch layers it replaces, on the same weights: outputs and gradients."""
import io

import numpy as np
import pytest
import torch
from torch import nn

import dmfx.nn as dnn
from dmfx import ops, reference
from dmfx.data import CSR
from dmfx.nn import CosineNCELoss, HybridBCELoss, SparseRowLinear
from conftest import random_csr

F64 = torch.float64


def make_csr(num_rows, num_cols, *, index_dtype=torch.int64, seed=0, binary=False) -> CSR:
    """A dmfx CSR (float64 values) with an empty row 0, a one-entry row 1 and a full row 3."""
    c = random_csr(num_rows, num_cols, density=0.3, seed=seed, index_dtype=index_dtype)
    return CSR(c.indptr, c.indices, None if binary else c.values, (num_rows, num_cols))


def dense(csr: CSR) -> torch.Tensor:
    values = csr.values if csr.values is not None else torch.ones(csr.indices.numel(), dtype=F64)
    return torch.sparse_csr_tensor(csr.indptr.long(), csr.indices.long(), values,
                                   csr.shape).to_dense()


# Empty row 0, one-entry row 1, full row 3, repeats, and unordered ids.
ROWS = torch.tensor([0, 1, 3, 3, 5, 2, 0, 7, 1])


# ---------------------------------------------------------------- SparseRowLinear vs nn.Linear


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("in_features,out_features", [(13, 5), (37, 33), (9, 1), (6, 6)])
@pytest.mark.parametrize("binary", [False, True], ids=["values", "binary"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_linear(index_dtype, in_features, out_features, binary, bias):
    torch.manual_seed(0)
    csr = make_csr(8, in_features, index_dtype=index_dtype, binary=binary)
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=F64)
    layer = SparseRowLinear.from_linear(linear)
    assert layer.weight.shape == (in_features, out_features) and layer.weight.is_contiguous()
    rows = ROWS.to(index_dtype)

    out = layer(csr, rows)
    expected = linear(dense(csr)[ROWS])
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(layer.weight.grad, linear.weight.grad.t())
    if bias:
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad)
        torch.testing.assert_close(out[0], linear.bias)  # an empty row gives the bias
    else:
        assert layer.bias is None
        assert (out[0] == 0).all()


def test_one_row_batch_and_empty_batch():
    csr = make_csr(8, 10)
    linear = nn.Linear(10, 4, bias=False, dtype=F64)
    layer = SparseRowLinear.from_linear(linear)
    torch.testing.assert_close(layer(csr, torch.tensor([1])), linear(dense(csr)[[1]]))
    assert layer(csr, torch.tensor([], dtype=torch.long)).shape == (0, 4)


def test_torch_sparse_csr_input_and_duck_typed_csr():
    csr = make_csr(8, 11)
    layer = SparseRowLinear(11, 3, dtype=F64)
    expected = layer(csr, ROWS)
    torch.testing.assert_close(layer(dense(csr).to_sparse_csr(), ROWS), expected)
    torch.testing.assert_close(layer.bind(dense(csr).to_sparse_csr())(ROWS), expected)
    conftest_csr = random_csr(8, 11, density=0.3, seed=0)  # indptr/indices/values, no shape
    torch.testing.assert_close(layer(conftest_csr, ROWS), expected)


# ----------------------------------------------------------- SparseRowLinear vs nn.EmbeddingBag


def bag_inputs(csr: CSR, rows: torch.Tensor):
    """The batch as EmbeddingBag input: column ids, one bag per row, values as weights."""
    local_indptr, columns, values = ops.batch_entries(csr.indptr, csr.indices, csr.values, rows)
    return columns, local_indptr[:-1], values


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_matches_embedding_bag(index_dtype, sparse):
    torch.manual_seed(0)
    csr = make_csr(8, 21, index_dtype=index_dtype)
    bag = nn.EmbeddingBag(21, 7, mode="sum", sparse=sparse, dtype=F64)
    layer = SparseRowLinear.from_embedding_bag(bag)
    assert layer.sparse_grad is sparse
    rows = ROWS.to(index_dtype)
    columns, offsets, values = bag_inputs(csr, rows)

    out = layer(csr, rows)
    expected = bag(columns, offsets, per_sample_weights=values)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert layer.weight.grad.is_sparse is sparse
    torch.testing.assert_close(layer.weight.grad.to_dense(), bag.weight.grad.to_dense())


def test_embedding_bag_without_weights_is_a_binary_matrix():
    csr = make_csr(8, 12, binary=True)
    bag = nn.EmbeddingBag(12, 5, mode="sum", dtype=F64)
    columns, offsets, _ = bag_inputs(csr, ROWS)
    torch.testing.assert_close(SparseRowLinear.from_embedding_bag(bag)(csr, ROWS),
                               bag(columns, offsets))


def test_embedding_bag_padding_idx():
    csr = make_csr(8, 12)  # row 3 is full, so it holds the padding column
    bag = nn.EmbeddingBag(12, 5, mode="sum", padding_idx=4, dtype=F64)
    with torch.no_grad():
        bag.weight[4] = 3.0  # ignored by the bag whatever it holds
    layer = SparseRowLinear.from_embedding_bag(bag)
    columns, offsets, values = bag_inputs(csr, ROWS)
    torch.testing.assert_close(layer(csr, ROWS), bag(columns, offsets, per_sample_weights=values))
    assert bag.weight[4].eq(3).all()  # the bag itself is untouched


@pytest.mark.parametrize("kwargs,name", [
    (dict(mode="mean"), "mode"), (dict(mode="max"), "mode"),
    (dict(max_norm=1.0), "max_norm"), (dict(scale_grad_by_freq=True), "scale_grad_by_freq"),
])
def test_from_embedding_bag_refuses_what_the_op_does_not_compute(kwargs, name):
    kwargs = {"mode": "sum", **kwargs}  # nn.EmbeddingBag's default mode is "mean"
    with pytest.raises(ValueError, match=name):
        SparseRowLinear.from_embedding_bag(nn.EmbeddingBag(5, 3, **kwargs))


# ------------------------------------------------------------------------------- conversions


def test_conversions_copy_and_keep_dtype_device_requires_grad():
    linear = nn.Linear(6, 4, bias=False, dtype=F64).requires_grad_(False)
    state = torch.random.get_rng_state()
    layer = SparseRowLinear.from_linear(linear, sparse_grad=True, validate=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # no init drawn
    assert (layer.weight.dtype, layer.weight.device) == (F64, linear.weight.device)
    assert not layer.weight.requires_grad
    assert layer.sparse_grad and not layer.validate
    with torch.no_grad():
        linear.weight.add_(1)
    assert not torch.equal(layer.weight, linear.weight.t())  # a copy, not a view

    bag = nn.EmbeddingBag(6, 4, mode="sum", sparse=True)
    converted = SparseRowLinear.from_embedding_bag(bag, sparse_grad=False)
    assert not converted.sparse_grad and converted.weight.dtype == torch.float32
    assert torch.equal(converted.weight, bag.weight)
    assert converted.weight.data_ptr() != bag.weight.data_ptr()


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_to_linear_inverts_from_linear(bias):
    csr = make_csr(8, 9)
    linear = nn.Linear(9, 4, bias=bias, dtype=F64)
    layer = SparseRowLinear.from_linear(linear)
    state = torch.random.get_rng_state()
    back = layer.to_linear()
    assert torch.equal(torch.random.get_rng_state(), state)  # no init drawn
    assert type(back) is nn.Linear and back.weight.is_contiguous()
    assert back.weight.dtype == F64 and (back.bias is not None) is bias
    torch.testing.assert_close(back(dense(csr)[ROWS]), layer(csr, ROWS))
    assert torch.equal(back.weight, linear.weight)
    back.load_state_dict(linear.state_dict())  # the same state_dict layout as the original
    with torch.no_grad():
        layer.weight.add_(1)
    assert torch.equal(back.weight, linear.weight)  # a copy, not a view
    frozen = SparseRowLinear(3, 2).requires_grad_(False).to_linear()
    assert not frozen.weight.requires_grad


def test_to_embedding_bag_inverts_from_embedding_bag():
    csr = make_csr(8, 12)
    bag = nn.EmbeddingBag(12, 5, mode="sum", sparse=True, dtype=F64)
    layer = SparseRowLinear.from_embedding_bag(bag)
    back = layer.to_embedding_bag()
    assert back.mode == "sum" and back.sparse and torch.equal(back.weight, bag.weight)
    columns, offsets, values = bag_inputs(csr, ROWS)
    torch.testing.assert_close(back(columns, offsets, per_sample_weights=values),
                               layer(csr, ROWS))
    assert back.weight.data_ptr() != layer.weight.data_ptr()
    with pytest.raises(ValueError, match="bias"):
        SparseRowLinear(3, 2, bias=True).to_embedding_bag()


def test_conversion_type_errors():
    with pytest.raises(TypeError, match="linear"):
        SparseRowLinear.from_linear(nn.EmbeddingBag(3, 2))
    with pytest.raises(TypeError, match="bag"):
        SparseRowLinear.from_embedding_bag(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="lazy"):
        SparseRowLinear.from_linear(nn.LazyLinear(3))


# ------------------------------------------------------------------------------- state dicts


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("shape", [(7, 3), (5, 5)], ids=["rect", "square"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_state_dict_round_trip(shape, bias):
    csr = make_csr(8, shape[0])
    source = SparseRowLinear(*shape, bias=bias, dtype=F64)
    assert list(source.state_dict()) == (["weight", "bias"] if bias else ["weight"])
    assert source.state_dict()["weight"].shape == shape
    for state in (roundtrip(source.state_dict()), dict(source.state_dict())):  # dict: no metadata
        target = SparseRowLinear(*shape, bias=bias, dtype=F64)
        if shape[0] == shape[1] and not hasattr(state, "_metadata"):
            # nothing tells a square weight's layout once the metadata is dropped: refused
            with pytest.raises(RuntimeError, match="square.*metadata was dropped"):
                target.load_state_dict(state)
            continue
        target.load_state_dict(state)
        torch.testing.assert_close(target(csr, ROWS), source(csr, ROWS), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_loads_an_nn_linear_state_dict(bias):
    csr = make_csr(8, 9)
    linear = nn.Linear(9, 4, bias=bias, dtype=F64)
    layer = SparseRowLinear(9, 4, bias=bias, dtype=F64)
    layer.load_state_dict(roundtrip(linear.state_dict()))
    assert layer.weight.shape == (9, 4) and layer.weight.is_contiguous()
    torch.testing.assert_close(layer(csr, ROWS), linear(dense(csr)[ROWS]))

    assigned = SparseRowLinear(9, 4, bias=bias, device="meta", dtype=F64)
    assigned.load_state_dict(linear.state_dict(), assign=True)
    assert assigned.weight.is_contiguous()
    torch.testing.assert_close(assigned(csr, ROWS), linear(dense(csr)[ROWS]))


def test_loads_into_a_model_where_linear_was_swapped_out():
    class Tower(nn.Module):
        def __init__(self, first):
            super().__init__()
            self.first, self.second = first, nn.Linear(4, 2, dtype=F64)

    old = Tower(nn.Linear(10, 4, bias=False, dtype=F64))
    new = Tower(SparseRowLinear(10, 4, dtype=F64))
    new.load_state_dict(roundtrip(old.state_dict()))
    csr = make_csr(8, 10)
    torch.testing.assert_close(new.first(csr, ROWS), old.first(dense(csr)[ROWS]))
    torch.testing.assert_close(new.second.weight, old.second.weight)


def test_loads_an_embedding_bag_state_dict_as_is():
    bag = nn.EmbeddingBag(9, 4, mode="sum", dtype=F64)
    layer = SparseRowLinear(9, 4, dtype=F64)
    layer.load_state_dict(bag.state_dict())
    assert torch.equal(layer.weight, bag.weight)


def test_square_foreign_state_dict_is_refused_not_guessed():
    layer = SparseRowLinear(5, 5, dtype=F64)
    before = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="square.*from_linear"):
        layer.load_state_dict(nn.Linear(5, 5, bias=False, dtype=F64).state_dict())
    assert torch.equal(layer.weight, before)  # nothing loaded
    # The way out: convert the layer it came from.
    linear = nn.Linear(5, 5, bias=False, dtype=F64)
    assert torch.equal(SparseRowLinear.from_linear(linear).weight, linear.weight.t())


class LinearV2(nn.Linear):
    """A user's nn.Linear subclass that bumped its class version to 2: [out, in] weight."""

    _version = 2


def test_the_layout_is_told_by_a_dedicated_mark_not_by_the_class_version():
    layer = SparseRowLinear(5, 5, dtype=F64)
    assert layer.state_dict()._metadata[""]["dmfx_weight_layout"] == "in_features,out_features"
    csr = make_csr(8, 5)
    # A square nn.Linear weight saved with version 2 is still nn.Linear's: refused, not loaded
    # untransposed.
    square = LinearV2(5, 5, bias=False, dtype=F64)
    before = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="square.*from_linear"):
        layer.load_state_dict(roundtrip(square.state_dict()))
    assert torch.equal(layer.weight, before)
    # A non-square one is transposed as nn.Linear's, whatever its version.
    linear = LinearV2(5, 3, bias=False, dtype=F64)
    rect = SparseRowLinear(5, 3, dtype=F64)
    rect.load_state_dict(roundtrip(linear.state_dict()))
    torch.testing.assert_close(rect(csr, ROWS), linear(dense(csr)[ROWS]))
    # Its own marked state dict of the transposed shape is a size mismatch, not transposed...
    with pytest.raises(RuntimeError, match="size mismatch"):
        SparseRowLinear(5, 3).load_state_dict(roundtrip(SparseRowLinear(3, 5).state_dict()))
    # ... and inside a model, the mark is per module.
    old = nn.Sequential(SparseRowLinear(6, 6, dtype=F64), nn.Linear(6, 6, dtype=F64))
    new = nn.Sequential(SparseRowLinear(6, 6, dtype=F64), nn.Linear(6, 6, dtype=F64))
    new.load_state_dict(roundtrip(old.state_dict()))
    assert torch.equal(new[0].weight, old[0].weight) and torch.equal(new[1].weight, old[1].weight)


def test_a_per_call_matrix_may_mix_index_dtypes_as_bind_allows():
    csr = make_csr(8, 21)
    layer = SparseRowLinear(21, 5, dtype=F64)
    mixed = CSR(csr.indptr.int(), csr.indices, csr.values, csr.shape)
    rows = torch.tensor([3, 0, 5])
    torch.testing.assert_close(layer(mixed, rows), layer(csr, rows))


def test_bias_mismatch_and_wrong_shape_raise():
    with pytest.raises(RuntimeError, match="bias"):
        SparseRowLinear(9, 4).load_state_dict(nn.Linear(9, 4).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        SparseRowLinear(9, 4).load_state_dict(nn.Linear(8, 4, bias=False).state_dict())
    # its own state dict of the transposed shape is another layer, not an nn.Linear one
    with pytest.raises(RuntimeError, match="size mismatch"):
        SparseRowLinear(4, 3).load_state_dict(SparseRowLinear(3, 4).state_dict())


# ------------------------------------------------------------------------------- sparse_grad


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_sparse_grad_has_the_dense_gradient_values(index_dtype):
    csr = make_csr(8, 17, index_dtype=index_dtype)
    dense_layer = SparseRowLinear(17, 6, bias=True, dtype=F64)
    sparse_layer = SparseRowLinear(17, 6, bias=True, sparse_grad=True, dtype=F64)
    sparse_layer.load_state_dict(dense_layer.state_dict())
    rows = ROWS.to(index_dtype)
    grad = torch.randn(len(rows), 6, dtype=F64)
    dense_layer(csr, rows).backward(grad)
    out = sparse_layer(csr, rows)
    out.backward(grad)
    torch.testing.assert_close(out, dense_layer(csr, rows))
    assert sparse_layer.weight.grad.is_sparse and not dense_layer.weight.grad.is_sparse
    torch.testing.assert_close(sparse_layer.weight.grad.to_dense(), dense_layer.weight.grad)
    torch.testing.assert_close(sparse_layer.bias.grad, dense_layer.bias.grad)


# ---------------------------------------------------------------------------- bind and init


def test_bind():
    csr = make_csr(8, 11)
    layer = SparseRowLinear(11, 3, dtype=F64)
    with pytest.raises(TypeError, match="bind"):
        layer(ROWS)
    expected = layer(csr, ROWS)
    float32_csr = csr._replace(values=csr.values.float())
    assert layer.bind(float32_csr) is layer and layer.bound
    assert layer.values.dtype == F64  # cast once, at bind
    torch.testing.assert_close(layer(ROWS), expected, rtol=1e-6, atol=1e-7)
    assert list(layer.state_dict()) == ["weight"]  # the matrix is not state
    assert "bound=8x11" in repr(layer)
    other = make_csr(8, 11, seed=5)
    torch.testing.assert_close(layer(other, ROWS), layer.bind(None)(other, ROWS))  # explicit wins
    layer.bind(float32_csr)
    layer.float()
    assert layer.values.dtype == torch.float32 and layer(ROWS).dtype == torch.float32
    with pytest.raises(ValueError, match="columns"):
        layer.bind(make_csr(8, 12))
    with pytest.raises(ValueError, match="indptr"):
        layer.bind(csr._replace(shape=(9, 11)))
    assert layer.bound  # a refused bind leaves the old matrix
    layer.bind(None)
    assert not layer.bound and "bound" not in repr(layer)


def test_reset_parameters_is_nn_linear_init_and_seeded():
    torch.manual_seed(3)
    a = SparseRowLinear(400, 50, bias=True)
    torch.manual_seed(3)
    b = SparseRowLinear(400, 50, bias=True)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    before = a.weight.detach().clone()
    a.reset_parameters()
    assert not torch.equal(a.weight, before)
    bound = 1 / 400 ** 0.5  # nn.Linear's kaiming_uniform(a=sqrt(5)) bound for fan_in 400
    assert a.weight.abs().max() <= bound and a.weight.abs().max() > 0.95 * bound
    assert a.bias.abs().max() <= bound
    with torch.no_grad():
        assert abs(float(a.weight.std()) - float(nn.Linear(400, 50).weight.std())) < 1e-3


def test_extra_repr():
    assert repr(SparseRowLinear(4, 2)) == ("SparseRowLinear(in_features=4, out_features=2, "
                                           "bias=False)")
    text = repr(SparseRowLinear(4, 2, bias=True, sparse_grad=True, validate=False))
    assert "bias=True, sparse_grad=True, validate=False" in text
    assert repr(CosineNCELoss(mu=0.01, reduction="sum")) == ("CosineNCELoss(mu=0.01, "
                                                             "reduction='sum')")
    assert repr(HybridBCELoss(validate=False)) == ("HybridBCELoss(eta=0.6, reduction='mean', "
                                                  "validate=False)")


def test_forward_argument_errors():
    layer = SparseRowLinear(11, 3, dtype=F64)
    with pytest.raises(ValueError, match="matrix has 12 columns"):
        layer(make_csr(8, 12), ROWS)
    with pytest.raises(TypeError, match="matrix"):
        layer(torch.zeros(8, 11, dtype=F64), ROWS)
    with pytest.raises(TypeError, match="matrix"):
        layer([1, 2, 3], ROWS)
    csr = make_csr(8, 11)
    with pytest.raises(TypeError, match="values"):  # float32 values, float64 weight: the op's check
        layer(csr._replace(values=csr.values.float()), ROWS)


@pytest.mark.parametrize("rows, got", [
    ([0, 1], "got list"),
    (np.array([0, 1]), "got ndarray"),
    (torch.tensor([0, 1]).to_sparse(), "layout torch.sparse_coo"),
])
def test_rows_that_are_not_a_dense_tensor_are_named(rows, got):
    """As nn.Embedding refuses a list: a TypeError naming rows, not the op's dispatcher error."""
    layer = SparseRowLinear(11, 3, dtype=F64)
    csr = make_csr(8, 11)
    with pytest.raises(TypeError, match=f"SparseRowLinear: rows must be .*{got}"):
        layer(csr, rows)
    with pytest.raises(TypeError, match=f"SparseRowLinear: rows must be .*{got}"):
        layer(dense(csr).to_sparse_csr(), rows)
    with pytest.raises(TypeError, match=f"the one argument is the rows.*{got}"):
        layer.bind(csr)(rows)


def test_a_half_precision_layer_says_what_it_computes_in():
    layer = SparseRowLinear(11, 3).half()
    with pytest.raises(TypeError, match=r"weight is torch.float16.*\.float\(\)"):
        layer(make_csr(8, 11), ROWS)
    with pytest.raises(TypeError, match=r"weight is torch.float16.*\.float\(\)"):
        layer.bind(make_csr(8, 11))


@pytest.mark.parametrize("part, given", [("values", [1.0]), ("indices", [2])])
def test_csr_like_parts_that_are_not_tensors_are_named(part, given):
    """A CSR-like object's indices and values are read as they are: a list among them is refused
    with the argument's name, by the call and by bind, not met as an AttributeError."""
    parts = dict(indptr=torch.tensor([0, 1]), indices=torch.tensor([2]),
                 values=torch.tensor([1.0], dtype=F64))
    parts[part] = given
    matrix = type("CsrLike", (), parts)()
    layer = SparseRowLinear(5, 3, dtype=F64)
    allowed = "a tensor or None" if part == "values" else "a tensor"
    expected = rf"SparseRowLinear: matrix {part} must be {allowed}, got list"
    with pytest.raises(TypeError, match=expected):
        layer(matrix, torch.tensor([0]))
    with pytest.raises(TypeError, match=expected):
        layer.bind(matrix)


@pytest.mark.parametrize("make,name,error", [
    (lambda: SparseRowLinear(-1, 3), "in_features", ValueError),
    (lambda: SparseRowLinear(4, 2.5), "out_features", TypeError),
    (lambda: SparseRowLinear(True, 3), "in_features", TypeError),
    (lambda: SparseRowLinear(4, 3, bias=1), "bias", TypeError),
    (lambda: SparseRowLinear(4, 3, sparse_grad="yes"), "sparse_grad", TypeError),
    (lambda: SparseRowLinear(4, 3, validate=None), "validate", TypeError),
    (lambda: SparseRowLinear(4, 3, dtype=torch.float16), "dtype", TypeError),
    (lambda: CosineNCELoss(mu=0), "mu", ValueError),
    (lambda: CosineNCELoss(mu=0.5), "mu", ValueError),
    (lambda: CosineNCELoss(mu=float("nan")), "mu", ValueError),
    (lambda: CosineNCELoss(mu="0.1"), "mu", TypeError),
    (lambda: CosineNCELoss(reduction="avg"), "reduction", ValueError),
    (lambda: CosineNCELoss(validate=1), "validate", TypeError),
    (lambda: HybridBCELoss(eta=1.5), "eta", ValueError),
    (lambda: HybridBCELoss(eta=-0.1), "eta", ValueError),
    (lambda: HybridBCELoss(reduction=None), "reduction", ValueError),
])
def test_bad_constructor_arguments_name_the_argument(make, name, error):
    with pytest.raises(error, match=name):
        make()


# ------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cosine_nce_loss_module(reduction):
    torch.manual_seed(0)
    p = torch.randn(10, 7, dtype=F64)
    p[2] = 0  # a zero vector
    q = torch.randn(10, 7, dtype=F64)
    target = torch.rand(10, dtype=F64)
    target[:3] = 0
    results = []
    for fn in (CosineNCELoss(1e-3, reduction),
               lambda *a: ops.cosine_nce_loss(*a, 1e-3, reduction),
               lambda *a: reference.cosine_nce_loss(*a, 1e-3, reduction)):
        pp, qq = p.clone().requires_grad_(), q.clone().requires_grad_()
        loss = fn(pp, qq, target)
        loss.sum().backward()
        results.append((loss, pp.grad, qq.grad))
    for other in results[1:]:
        for got, want in zip(results[0], other):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_hybrid_bce_loss_module(reduction, eta):
    torch.manual_seed(0)
    logits = torch.randn(12, dtype=F64) * 4
    implicit = (torch.rand(12) < 0.5).to(F64)
    explicit = implicit * torch.rand(12, dtype=F64)
    results = []
    for fn in (HybridBCELoss(eta, reduction),
               lambda *a: ops.hybrid_bce_loss(*a, eta, reduction),
               lambda *a: reference.hybrid_bce_loss(*a, eta, reduction)):
        x = logits.clone().requires_grad_()
        loss = fn(x, implicit, explicit)
        loss.sum().backward()
        results.append((loss, x.grad))
    for other in results[1:]:
        for got, want in zip(results[0], other):
            torch.testing.assert_close(got, want)


def test_loss_validation_follows_the_flag():
    p, q = torch.randn(3, 4), torch.randn(3, 4)
    bad = torch.tensor([0.0, 1.5, 1.0])
    with pytest.raises(ValueError, match="target"):
        CosineNCELoss()(p, q, bad)
    CosineNCELoss(validate=False)(p, q, bad)  # no check: used as it is
    with pytest.raises(ValueError, match="implicit_target"):
        HybridBCELoss()(torch.zeros(3), bad, torch.zeros(3))
    HybridBCELoss(validate=False)(torch.zeros(3), bad, torch.zeros(3))


# ----------------------------------------------------------------------------- torch.compile


class TwoTowerModel(nn.Module):
    """A small recommender built from the modules: bound user tower, per-call item tower."""

    def __init__(self, y: CSR):
        super().__init__()
        self.users = SparseRowLinear(y.shape[1], 8, dtype=F64).bind(y)
        self.items = SparseRowLinear(y.shape[0], 8, bias=True, dtype=F64)
        self.head = nn.Linear(8, 4, dtype=F64)
        self.nce = CosineNCELoss(mu=1e-4)
        self.hybrid = HybridBCELoss(eta=0.5)

    def forward(self, yt, users, items, target):
        p = self.head(torch.relu(self.users(users)))
        q = self.head(torch.relu(self.items(yt, items)))
        implicit = (target > 0).to(target.dtype)
        return self.nce(p, q, target) + self.hybrid((p * q).sum(1), implicit, target)


def test_torch_compile_of_a_model_using_the_modules():
    torch._dynamo.reset()
    y = make_csr(10, 14, seed=1)
    yt_dense = dense(y).t().contiguous()  # stands in for Y transposed
    s = yt_dense.to_sparse_csr()
    yt = CSR(s.crow_indices().clone(), s.col_indices().clone(), s.values().clone(), (14, 10))
    torch.manual_seed(0)
    model = TwoTowerModel(y)
    users = torch.tensor([0, 1, 3, 3, 9, 2])
    items = torch.tensor([4, 0, 13, 5, 5, 7])
    target = torch.tensor([0.8, 0.0, 1.0, 0.2, 0.0, 0.6], dtype=F64)

    eager = model(yt, users, items, target)
    eager.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = compiled(yt, users, items, target)
    got.backward()
    torch.testing.assert_close(got, eager)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], msg=name)


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_torch_compile_of_a_call_on_a_torch_sparse_tensor_runs_it_eagerly(layout):
    """dynamo traces no sparse tensors (it failed inside, an IndexError, on their views): the
    call runs eagerly and gives the eager result."""
    torch._dynamo.reset()
    csr = make_csr(8, 11)
    matrix = dense(csr).to_sparse_csr() if layout == "csr" else dense(csr).to_sparse_coo()
    layer = SparseRowLinear(11, 3, dtype=F64)
    compiled = torch.compile(layer, backend="eager")
    torch.testing.assert_close(compiled(matrix, ROWS), layer(csr, ROWS))

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.matrix, self.first, self.head = matrix, layer, nn.Linear(3, 2, dtype=F64)

        def forward(self, rows):
            return self.head(torch.relu(self.first(self.matrix, rows)))

    tower = Tower()
    torch.testing.assert_close(torch.compile(tower, backend="eager")(ROWS), tower(ROWS))


def test_all():
    assert set(dnn.__all__) == {"SparseRowLinear", "CosineNCELoss", "HybridBCELoss"}
