"""dmfx's ops as ``torch.nn`` modules, to drop into an existing PyTorch recommender.

* :class:`SparseRowLinear`: ``matrix[rows] @ W`` for a sparse ``matrix`` (a user's rating row
  times the first layer of a tower), reading only the stored entries. It replaces
  ``nn.Linear(in_features, out_features, bias=False)`` applied to dense rows and
  ``nn.EmbeddingBag(mode="sum")`` with ``per_sample_weights``; ``from_linear`` and
  ``from_embedding_bag`` convert a trained layer (``to_linear``, ``to_embedding_bag`` back).
* :class:`CosineNCELoss`: cosine + mu-clamp + normalized cross-entropy (DMF, Eqs. 8, 12-13).
* :class:`HybridBCELoss`: EINMF's hybrid explicit-implicit loss (Eqs. 14-16), from logits.

Example::

    from dmfx import nn as dnn
    Y = train.csr("rating")                           # users x items, dmfx.data.CSR
    first = dnn.SparseRowLinear(Y.shape[1], 256)      # was nn.Linear(num_items, 256, bias=False)
    h = first(Y, users)                               # [B, 256] == Linear(Y_dense[users])
    loss = dnn.CosineNCELoss(mu=1e-6)(p, q, target)
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch
from torch import Tensor, nn

from . import ops
from .data.sparse import _check_parts, _coalesced, _csr_parts, _one_index_dtype

__all__ = ["SparseRowLinear", "CosineNCELoss", "HybridBCELoss"]

_REDUCTIONS = ("mean", "sum", "none")
_MATRIX = "SparseRowLinear: matrix"  # the argument's name in the converter's messages
# The state_dict metadata entry that marks a weight stored [in_features, out_features] by
# SparseRowLinear (nn.Linear stores [out, in]): see SparseRowLinear._load_from_state_dict.
_LAYOUT_KEY, _LAYOUT = "dmfx_weight_layout", "in_features,out_features"


# ------------------------------------------------------------------------ argument checks


def _check_size(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
    return int(value)


def _check_flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {value!r}")
    return value


def _check_real(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    return float(value)


def _check_csr_tensors(indices: Any, values: Any) -> None:
    """The parts of a CSR-like matrix that nothing has checked to be tensors yet."""
    if not isinstance(indices, Tensor):
        raise TypeError(f"{_MATRIX} indices must be a tensor, got {type(indices).__name__}")
    if values is not None and not isinstance(values, Tensor):
        raise TypeError(f"{_MATRIX} values must be a tensor or None, got {type(values).__name__}")


def _check_rows(rows: Any) -> None:
    """``rows`` must be a dense tensor (the op's dispatcher would say less of anything else)."""
    if not isinstance(rows, Tensor):
        raise TypeError("SparseRowLinear: rows must be a tensor of int32/int64 row ids (as "
                        f"nn.Embedding takes), got {type(rows).__name__}: wrap it with "
                        "torch.as_tensor(rows)")
    if rows.layout != torch.strided:
        raise TypeError("SparseRowLinear: rows must be a dense (strided) tensor of row ids, got "
                        f"a tensor with layout {rows.layout}")


def _checked(indptr: Tensor, indices: Tensor, values: Optional[Tensor],
             shape: Optional[tuple[int, int]], in_features: int, dtype: torch.dtype,
             logical: bool):
    """A CSR read in place, checked whole; where its values were bools (``logical``) and a row
    holds an entry twice, coalesced with OR (a copy), so that duplicates give what the bool
    matrix holds."""
    shape, canonical = _check_parts(indptr, indices, values,
                                    (indptr.numel() - 1, in_features) if shape is None else shape,
                                    _MATRIX, "column", dtype)
    if logical and not canonical:
        indptr, indices, values, _ = _coalesced(indptr, indices, values, shape, True, False, True)
    return indptr, indices, values


def _check_reduction(owner: str, reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


# ------------------------------------------------------------------------- SparseRowLinear


class SparseRowLinear(nn.Module):
    r"""Rows of a sparse matrix times a weight: ``y = matrix[rows] @ weight (+ bias)``.

    The first layer of a DMF tower (a user's whole rating row times :math:`W_1`), computed by
    :func:`dmfx.ops.sparse_rows_matmul`: a row costs its stored entries, not the matrix width.
    It computes what these layers compute, on the same weights:

    * ``nn.Linear(in_features, out_features, bias=False)`` on the dense rows
      ``matrix.to_dense()[rows]`` (``bias=True`` for a Linear with bias), and
    * ``nn.EmbeddingBag(in_features, out_features, mode="sum")`` on the batch's column ids, one
      bag per row, with the stored values as ``per_sample_weights``.

    :meth:`from_linear` and :meth:`from_embedding_bag` convert a trained layer, and
    :meth:`to_linear` and :meth:`to_embedding_bag` convert back.

    Calling it. ``layer(matrix, rows)``: ``matrix`` in any format :func:`dmfx.data.as_csr`
    reads -- a :class:`dmfx.data.CSR` (from ``Interactions.csr()``; any object with
    ``indptr``, ``indices``, ``values`` tensors and optionally ``shape`` works, ``values=None``
    meaning a 1 per stored entry), a ``scipy.sparse`` matrix, a torch sparse CSR, CSC or COO
    tensor; ``rows`` a dense int32/int64 ``[B]`` tensor of row ids, repeats allowed (a list or
    numpy array raises TypeError naming ``rows``, as ``nn.Embedding`` refuses one). A CSR input
    (dmfx, scipy or torch) is read in place, at no cost beyond the rows the op reads, which it
    checks (``validate``; a ``shape`` whose row count disagrees with ``indptr``'s length is
    refused on the host, without a device sync); the other formats are converted on every call
    (a copy of the whole matrix): convert once with :func:`dmfx.data.as_csr`, or bind. Under
    ``torch.compile`` pass a :class:`dmfx.data.CSR` or bind the matrix: a torch sparse tensor
    passed per call makes the layer's call run eagerly (dynamo traces no sparse tensors: a
    graph break, which ``fullgraph=True`` refuses), and scipy matrices are not supported there.
    The layer holds only its parameters, as ``nn.Linear`` and ``nn.EmbeddingBag`` do, so one
    layer serves any matrix with ``in_features`` columns: the training matrix, or at inference
    an updated one holding a new user's row (no retraining). For the usual case of one fixed
    matrix (Y for the user tower, Y transposed for the item tower), ``layer.bind(matrix)`` keeps
    it in the module and the layer is then called on ids alone, ``layer(rows)``, like an
    ``nn.Embedding``; the bound tensors are non-persistent buffers (they follow
    ``.to()``/``.cuda()``/``.double()`` and stay out of the state_dict). Explicit wins: a bound
    layer called as ``layer(matrix, rows)`` reads ``matrix``. Output: ``[B, out_features]``, in
    the weight's dtype.

    Values, one rule for every format. float32/float64 values passed per call must be in the
    weight's dtype: the other one raises TypeError naming both dtypes (as ``nn.Linear`` refuses a
    float64 input to a float32 layer; cast the matrix, or bind it, which casts once). Values of
    any other dtype -- bool, integers (a 0/1 or a ratings matrix), float16, bfloat16 -- are
    converted to the weight's dtype (a copy of the values on every call; bind converts once),
    so the layer computes ``nn.Linear`` on ``matrix.to_dense()[rows].to(weight.dtype)``.
    Duplicate entries (a row holding a column twice) count as their sum, bool ones as their
    OR, which is what scipy's ``tocsr()`` and torch's ``coalesce()`` give; so a bool CSR passed
    per call is checked on every call, and coalesced where it holds duplicates.

    Weight layout. ``weight`` has shape ``[in_features, out_features]``: row ``i`` is what
    column ``i`` of the matrix contributes, the layout the op gathers from (contiguous
    ``out_features``-wide rows) and its row-sparse gradient is indexed by, and the layout of
    ``nn.EmbeddingBag.weight`` and ``nn.Embedding.weight``. ``nn.Linear.weight`` is the transpose,
    ``[out_features, in_features]``: storing that instead would cost a full transposed copy of
    the table on every call, and a row-sparse gradient would be column-sparse. So
    ``SparseRowLinear.weight == linear.weight.t()``, and its state_dict stores ``weight`` as
    ``[in_features, out_features]`` (the parameter as it is, as ``state_dict`` conventions want).

    Loading state dicts. ``state_dict`` stores ``weight`` as ``[in_features, out_features]``
    and marks that layout in the state dict's metadata (an entry of the module's
    ``state_dict._metadata``, which ``torch.save`` keeps and a plain ``dict`` copy or safetensors
    drops). ``load_state_dict`` reads:

    * a marked weight (this layer's own state dict) as it is: a weight of another shape is a
      size mismatch;
    * an unmarked square weight (``in_features == out_features``, where the two layouts have
      one shape) not at all: it raises, whoever saved it (nn.Linear, nn.EmbeddingBag, any module
      whatever its class version, SparseRowLinear with the metadata dropped, or SparseRowLinear
      of a dmfx version before the mark). Load it into the layer it came from and convert that
      with :meth:`from_linear` / :meth:`from_embedding_bag`, or copy it in knowing its layout
      (``layer.weight.data.copy_(w)`` for this layer's own ``[in, out]`` weight);
    * an unmarked ``[out_features, in_features]`` weight as ``nn.Linear``'s, transposed on load
      (``bias`` included, for a layer built with ``bias=True``). Shapes cannot tell it from an
      ``nn.EmbeddingBag(out_features, in_features)`` weight, or from a
      ``SparseRowLinear(out_features, in_features)`` one whose metadata was dropped: those are
      read as nn.Linear's too;
    * an unmarked ``[in_features, out_features]`` weight (``nn.EmbeddingBag``'s, or this layer's
      with the metadata dropped) as it is.

    Args:
        in_features: columns of the matrix (items for the user tower, users for the item one).
        out_features: width of the output.
        bias: add a learnt bias (default False: DMF's first layer and EmbeddingBag have none;
            keyword-only because ``nn.Linear``'s default is True). Added after the op, so an
            empty row gives the bias, as ``nn.Linear`` on a zero row does.
        sparse_grad: the gradient of ``weight`` is a row-sparse COO tensor over the rows a batch
            touches (``nn.EmbeddingBag(sparse=True)``'s behaviour): pair it with
            :class:`dmfx.optim.RowSparseAdam` (and a dense optimizer for ``bias``). Eager
            autograd only (not under ``torch.compile``).
        validate: raise on out-of-range ids or a broken ``indptr`` (on CUDA one sync per call);
            ``False`` for data checked once (see :mod:`dmfx.ops`).
        device, dtype: of the parameters (float32 or float64).

    Init. :meth:`reset_parameters` draws ``weight`` and ``bias`` from
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))``, the distribution of ``nn.Linear``'s default
    (kaiming-uniform with ``a=sqrt(5)``, fan-in ``in_features``), so a swapped-in layer starts
    like the one it replaces. The DMF paper's init is ``nn.init.normal_(layer.weight, 0, 0.01)``
    (what :class:`dmfx.models.DMF` uses).
    """

    # 2: weight stored [in_features, out_features] (1 would be nn.Linear's [out, in]). Loading
    # does not rely on it (another module may record version 2): the state dict's metadata
    # carries a dedicated mark, _LAYOUT_KEY.
    _version = 2

    in_features: int
    out_features: int
    weight: Tensor
    bias: Optional[Tensor]
    indptr: Optional[Tensor]
    indices: Optional[Tensor]
    values: Optional[Tensor]

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False,
                 sparse_grad: bool = False, validate: bool = True, device=None, dtype=None):
        super().__init__()
        owner = "SparseRowLinear"
        self.in_features = _check_size(owner, "in_features", in_features)
        self.out_features = _check_size(owner, "out_features", out_features)
        _check_flag(owner, "bias", bias)
        self.sparse_grad = _check_flag(owner, "sparse_grad", sparse_grad)
        self.validate = _check_flag(owner, "validate", validate)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{owner}: dtype must be torch.float32 or torch.float64, got {dtype}")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.in_features, self.out_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        for name in ("indptr", "indices", "values"):
            self.register_buffer(name, None, persistent=False)
        self._bound_shape: Optional[tuple[int, int]] = None
        self.reset_parameters()

    # -- parameters

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(in_features), 1/sqrt(in_features))`` for ``weight`` and ``bias``: the
        distribution of ``nn.Linear``'s default init (not its exact values, which are drawn
        in the ``[out, in]`` order)."""
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # -- the matrix

    def bind(self, matrix: Any) -> "SparseRowLinear":
        """Keep ``matrix`` in the module so that ``layer(rows)`` reads it; returns ``self``.

        ``matrix``: any format :func:`dmfx.data.as_csr` reads, checked once here (``indptr``,
        ids in range, finite values). Its CSR tensors become non-persistent buffers on the
        weight's device with values in the weight's dtype (values of any dtype are cast, float64
        to a float32 weight included; duplicates count as their sum, bool ones as their OR):
        views of a CSR input already there in that dtype (no copy; a scipy CSR's arrays
        included), else copies (a converted format, a move, a cast, a bool CSR with
        duplicates coalesced). ``bind(None)`` forgets the matrix.
        """
        if matrix is None:
            self.indptr = self.indices = self.values = None
            self._bound_shape = None
            return self
        indptr, indices, values, shape, logical = _csr_parts(matrix, _MATRIX,
                                                             dtype=self._value_dtype())
        _check_csr_tensors(indices, values)
        self._check_width(shape)
        indptr, indices = _one_index_dtype(indptr, indices, _MATRIX)
        # Checked once here: the bound matrix is read by every call.
        indptr, indices, values = _checked(indptr, indices, values, shape, self.in_features,
                                           self.weight.dtype, logical)
        device = self.weight.device
        self.indptr = indptr.detach().to(device)
        self.indices = indices.detach().to(device)
        self.values = None if values is None else values.detach().to(device, self.weight.dtype)
        self._bound_shape = (indptr.numel() - 1, self.in_features)
        return self

    @property
    def bound(self) -> bool:
        """Whether a matrix is bound (see :meth:`bind`)."""
        return self.indptr is not None

    def forward(self, matrix: Any, rows: Optional[Tensor] = None) -> Tensor:
        """``layer(matrix, rows)``, or ``layer(rows)`` with a bound matrix; ``[B, out_features]``.
        """
        if rows is None:
            rows = matrix
            if self.indptr is None:
                raise TypeError("SparseRowLinear: called with one argument, the rows, but no "
                                "matrix is bound: call layer(matrix, rows) or bind one with "
                                "layer.bind(matrix)")
            if not isinstance(rows, Tensor) or rows.layout != torch.strided:
                got = (f"a tensor with layout {rows.layout}" if isinstance(rows, Tensor)
                       else type(rows).__name__)
                raise TypeError("SparseRowLinear: with a bound matrix the one argument is the "
                                f"rows, a dense id tensor; got {got}")
            indptr, indices, values = self.indptr, self.indices, self.values
        else:
            _check_rows(rows)
            if isinstance(matrix, Tensor) and matrix.layout != torch.strided:
                return self._forward_sparse_tensor(matrix, rows)
            indptr, indices, values = self._per_call(matrix)
        return self._apply_op(indptr, indices, values, rows)

    def _per_call(self, matrix: Any):
        """``(indptr, indices, values)`` of a matrix passed per call (see the class docstring):
        a CSR's arrays as they are, other formats converted."""
        indptr, indices, values, shape, logical = _csr_parts(matrix, _MATRIX,
                                                             dtype=self._value_dtype())
        _check_csr_tensors(indices, values)
        self._check_width(shape)
        indptr, indices = _one_index_dtype(indptr, indices, _MATRIX)  # as bind and as_csr
        if logical:  # checked whole: its duplicates must be found and OR-ed
            indptr, indices, values = _checked(indptr, indices, values, shape,
                                               self.in_features, self.weight.dtype, True)
        if values is not None and values.dtype != self.weight.dtype:
            # Only float32 vs float64 is left here: other dtypes were converted.
            raise TypeError(f"{_MATRIX} values are {values.dtype} but the layer's weight is "
                            f"{self.weight.dtype}: cast the matrix's values to "
                            f"{self.weight.dtype}, or bind it (bind casts once)")
        return indptr, indices, values

    def _apply_op(self, indptr: Tensor, indices: Tensor, values: Optional[Tensor],
                  rows: Tensor) -> Tensor:
        out = ops.sparse_rows_matmul(indptr, indices, values, rows, self.weight,
                                     validate=self.validate, sparse_grad=self.sparse_grad)
        if self.bias is not None:
            out = out + self.bias
        return out

    @torch.compiler.disable
    def _forward_sparse_tensor(self, matrix: Tensor, rows: Tensor) -> Tensor:
        """The call on a torch sparse tensor, always eager: torch.compile traces no sparse
        tensors (dynamo fails inside on the views of one), so under it this part runs as
        plain Python, as a scipy matrix's does."""
        return self._apply_op(*self._per_call(matrix), rows)

    def _value_dtype(self) -> torch.dtype:
        """The weight's dtype, which a matrix's values are converted to: float32 or float64,
        the op's (after ``.half()``, say, the layer cannot compute)."""
        dtype = self.weight.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"SparseRowLinear: the weight is {dtype}, but the op computes in "
                            "float32 or float64 only: convert the layer with .float() or "
                            ".double()")
        return dtype

    def _check_width(self, shape: Optional[tuple[int, int]]) -> None:
        if shape is not None and shape[1] != self.in_features:
            raise ValueError(f"{_MATRIX} has {shape[1]} columns but the layer's in_features is "
                             f"{self.in_features}")

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
        if self.sparse_grad:
            text += ", sparse_grad=True"
        if not self.validate:
            text += ", validate=False"
        if self._bound_shape is not None:
            text += f", bound={self._bound_shape[0]}x{self._bound_shape[1]}"
        return text

    # -- conversions

    @classmethod
    def _from_weight(cls, weight: Tensor, bias: Optional[Tensor], *, sparse_grad: bool,
                     validate: bool, requires_grad: bool) -> "SparseRowLinear":
        """A layer around copies of ``weight`` ([in, out]) and ``bias``, without drawing an
        init (so a conversion leaves the random number generator alone)."""
        in_features, out_features = weight.shape
        layer = cls(in_features, out_features, bias=bias is not None, sparse_grad=sparse_grad,
                    validate=validate, device="meta", dtype=weight.dtype)
        layer.weight = nn.Parameter(weight.detach().clone(memory_format=torch.contiguous_format),
                                    requires_grad=requires_grad)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, sparse_grad: bool = False,
                    validate: bool = True) -> "SparseRowLinear":
        """The layer computing ``linear`` on dense rows, from a copy of its weights.

        ``weight`` becomes ``linear.weight.t()`` (contiguous); a bias is kept (the layer then
        has ``bias=True``). Device, dtype and ``requires_grad`` are kept.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseRowLinear.from_linear: linear must be an nn.Linear, got "
                            f"{type(linear).__name__}")
        if isinstance(linear.weight, nn.parameter.UninitializedParameter):
            raise ValueError("SparseRowLinear.from_linear: linear is a lazy layer whose weight is "
                             "not initialized yet; run it once first")
        return cls._from_weight(linear.weight.t(), linear.bias, sparse_grad=sparse_grad,
                                validate=validate, requires_grad=linear.weight.requires_grad)

    @classmethod
    def from_embedding_bag(cls, bag: nn.EmbeddingBag, *, sparse_grad: Optional[bool] = None,
                           validate: bool = True) -> "SparseRowLinear":
        """The layer computing ``bag`` (``mode="sum"``), from a copy of its weights.

        ``bag(ids, offsets, per_sample_weights=w)`` with one bag per CSR row equals
        ``layer(matrix, rows)`` with ``matrix`` holding ``ids`` as column indices and ``w`` as
        values (``per_sample_weights=None``: values None). ``weight`` is copied as it is (one
        layout); ``sparse_grad`` defaults to ``bag.sparse``. A ``padding_idx`` row is copied as
        zeros, so entries pointing at it add nothing, as in the bag (but it is an ordinary row
        here, which trains if the matrix references it). Refused: modes other than ``"sum"``,
        ``max_norm`` and ``scale_grad_by_freq``, which the op does not implement.
        """
        owner = "SparseRowLinear.from_embedding_bag"
        if not isinstance(bag, nn.EmbeddingBag):
            raise TypeError(f"{owner}: bag must be an nn.EmbeddingBag, got {type(bag).__name__}")
        if bag.mode != "sum":
            raise ValueError(f"{owner}: bag.mode must be 'sum', got {bag.mode!r}")
        if bag.max_norm is not None:
            raise ValueError(f"{owner}: bag.max_norm must be None (renormalising rows at lookup "
                             f"is not supported), got {bag.max_norm}")
        if bag.scale_grad_by_freq:
            raise ValueError(f"{owner}: bag.scale_grad_by_freq must be False")
        weight = bag.weight.detach()
        if bag.padding_idx is not None:
            weight = weight.clone()
            weight[bag.padding_idx] = 0
        return cls._from_weight(weight, None,
                                sparse_grad=bag.sparse if sparse_grad is None else sparse_grad,
                                validate=validate, requires_grad=bag.weight.requires_grad)

    def to_linear(self) -> nn.Linear:
        """The ``nn.Linear`` computing this layer on dense rows, from a copy of its weights:
        the inverse of :meth:`from_linear` (``linear.weight`` is ``weight.t()``, contiguous;
        the bias is kept). Device, dtype and ``requires_grad`` are kept; no init is drawn."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=self.weight.dtype)
        linear.weight = nn.Parameter(
            self.weight.detach().t().clone(memory_format=torch.contiguous_format),
            requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(),
                                       requires_grad=self.bias.requires_grad)
        return linear

    def to_embedding_bag(self) -> nn.EmbeddingBag:
        """The ``nn.EmbeddingBag(mode="sum")`` computing this layer, from a copy of its
        weights: the inverse of :meth:`from_embedding_bag` (one weight layout; ``sparse`` is
        ``sparse_grad``). Device, dtype and ``requires_grad`` are kept; no init is drawn.
        A layer with a bias raises ValueError: a bag has none (use :meth:`to_linear`)."""
        if self.bias is not None:
            raise ValueError("SparseRowLinear.to_embedding_bag: the layer has a bias, which "
                             "nn.EmbeddingBag has not; use to_linear()")
        bag = nn.EmbeddingBag(self.in_features, self.out_features, mode="sum",
                              sparse=self.sparse_grad, device="meta", dtype=self.weight.dtype)
        bag.weight = nn.Parameter(self.weight.detach().clone(),
                                  requires_grad=self.weight.requires_grad)
        return bag

    # -- state dicts

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Mark the layout in the module's metadata entry (torch.save keeps it; a plain dict
        # copy or safetensors drops it), which is what tells a square weight's layout on load.
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})[_LAYOUT_KEY] = _LAYOUT

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        ours = (self.in_features, self.out_features)
        linears = (self.out_features, self.in_features)
        rejected = False
        # Only the mark written by _save_to_state_dict says "SparseRowLinear's layout": the
        # class version is not enough (any module may record version 2).
        marked = local_metadata.get(_LAYOUT_KEY) == _LAYOUT
        if isinstance(weight, Tensor) and weight.dim() == 2 and not marked:
            if ours == linears and tuple(weight.shape) == ours:
                rejected = True
                error_msgs.append(
                    f"SparseRowLinear: {key} is square ({ours[0]} x {ours[1]}) and its state "
                    "dict does not mark it as saved by SparseRowLinear (saved by another module, "
                    "or its metadata was dropped: a plain dict, safetensors), so its layout "
                    "cannot be told from its shape: nn.Linear stores [out_features, "
                    "in_features], SparseRowLinear and nn.EmbeddingBag [in_features, "
                    "out_features]. Load it into the layer it came from and convert that with "
                    "SparseRowLinear.from_linear or SparseRowLinear.from_embedding_bag, or, "
                    "knowing its layout, copy it in: layer.weight.data.copy_(w) for [in, out], "
                    "layer.weight.data.copy_(w.t()) for nn.Linear's [out, in].")
                del state_dict[key]
            elif ours != linears and tuple(weight.shape) == linears:
                state_dict[key] = weight.t().contiguous()  # nn.Linear's [out, in]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if rejected and key in missing_keys:
            missing_keys.remove(key)


# ---------------------------------------------------------------------------------- losses


class CosineNCELoss(nn.Module):
    """DMF's loss: ``clamp(cos(p, q), mu, 1 - mu)`` and normalized cross-entropy with ``target``.

    Module form of :func:`dmfx.ops.cosine_nce_loss` (fused, with its NaN and zero-vector
    behaviour); ``forward(p, q, target)`` with ``p``, ``q`` float ``[B, k]`` and ``target``
    ``[B]`` in [0, 1] (rating / max rating, 0 for sampled negatives) gives a scalar, or ``[B]``
    for ``reduction="none"``.

    Args:
        mu: the clamp, in (0, 0.5) (Eq. 13).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: raise on a target outside [0, 1] or NaN (on CUDA one sync per call).
    """

    def __init__(self, mu: float = 1e-6, reduction: str = "mean", validate: bool = True):
        super().__init__()
        owner = "CosineNCELoss"
        mu = _check_real(owner, "mu", mu)
        ops.check_mu(owner, mu)
        self.mu = mu
        self.reduction = _check_reduction(owner, reduction)
        self.validate = _check_flag(owner, "validate", validate)

    def forward(self, p: Tensor, q: Tensor, target: Tensor) -> Tensor:
        return ops.cosine_nce_loss(p, q, target, self.mu, self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        text = f"mu={self.mu}, reduction={self.reduction!r}"
        return text if self.validate else text + ", validate=False"


class HybridBCELoss(nn.Module):
    """EINMF's loss: ``eta * bce(sigmoid(logits), implicit) + (1 - eta) * bce(.., explicit)``.

    Module form of :func:`dmfx.ops.hybrid_bce_loss` (fused, stable for any finite logit);
    ``forward(logits, implicit_target, explicit_target)`` with ``[B]`` tensors of one float
    dtype gives a scalar, or ``[B]`` for ``reduction="none"``.

    Args:
        eta: the weight of the implicit loss, in [0, 1] (1: implicit only, 0: explicit only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: raise on a target outside [0, 1] or NaN (on CUDA one sync per call).
    """

    def __init__(self, eta: float = 0.6, reduction: str = "mean", validate: bool = True):
        super().__init__()
        owner = "HybridBCELoss"
        eta = _check_real(owner, "eta", eta)
        if not 0 <= eta <= 1:
            raise ValueError(f"{owner}: eta must lie in [0, 1], got {eta}")
        self.eta = eta
        self.reduction = _check_reduction(owner, reduction)
        self.validate = _check_flag(owner, "validate", validate)

    def forward(self, logits: Tensor, implicit_target: Tensor, explicit_target: Tensor) -> Tensor:
        return ops.hybrid_bce_loss(logits, implicit_target, explicit_target, self.eta,
                                   self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        text = f"eta={self.eta}, reduction={self.reduction!r}"
        return text if self.validate else text + ", validate=False"
