"""The dmfx operators as PyTorch custom ops: DMF's three hot spots (the first layer's sparse
products, the fused cosine + mu-clamp + nce loss, the negative sampler), EINMF's hybrid loss and
the row-wise Adam step of sparse first-layer gradients.

Each op is registered in the ``torch.ops.dmfx`` namespace by the C++ extension, one kernel per
device (CPU always; CUDA where built: a build without CUDA kernels raises ``NotImplementedError``
"dmfx was built without CUDA kernels" for CUDA tensors), with autograd and autocast in C++ so a
call costs no Python beyond its wrapper; this module adds the fake (meta) kernels, so the ops
work under ``torch.compile(fullgraph=True)``, ``torch.export`` and ``torch.library.opcheck``.
Pure-PyTorch twins of every op live in :mod:`dmfx.reference`.

Validation. Kernels never read out of bounds, whatever their input: an out-of-range id or a
broken ``indptr`` entry is skipped. With ``validate=True`` (the default) such a problem raises a
Python exception naming the argument; on CUDA that costs one small device-to-host copy (a
sync) per call. When an input has several problems, the one named is the first a serial pass
would meet (the ``indptr`` ends, then batch row by batch row: the row, its entries in order),
the same on every run, thread count and device. Hot loops over data already checked once (the
trainer) pass ``validate=False``: no checks, no sync, and a bad entry then contributes nothing
instead of raising. (One sync remains on CUDA in the weight gradient of
:func:`sparse_rows_matmul`: it sorts the batch's entries by column, and the sort is sized on the
host.) The row checks read only the rows a call reads, each valid alone, so they do not see an
``indptr`` that decreases between two of them, whose rows can then share entries (dmfx's CSR
builders never make one). The forward and the weight gradient are still each row's sums; the ``values``
gradient, which writes each entry once, refuses an ``indptr`` that decreases between the rows a
call reads with ``validate=True`` (whether or not they then overlap; its backward
then checks the batch again: two syncs on CUDA, only when ``values`` needs a gradient), and
without it its CUDA kernel keeps one row's part of a shared entry (the CPU one adds them).

Argument checks. The CPU kernels, the CUDA kernels and the fake kernels check shapes, dtypes
and devices alike and raise the same exceptions (``TypeError`` for a dtype, ``ValueError`` for
a shape, value or device, ``IndexError`` for an id out of range), naming the argument. All
tensor arguments of a call must be on one device: a mix (a meta tensor beside CPU ones
included) raises ``ValueError``.

Precision. The loss ops take float16 and bfloat16 inputs too and compute (and return the loss)
in float32; under ``torch.autocast`` (CUDA, or CPU) every op runs in float32, as torch's own
losses do. :func:`sparse_rows_matmul` takes float32 and float64 tables.

Determinism. Every op gives the same bits run after run on a device (the CUDA kernels sum in a
fixed order, without float atomics), so ``torch.use_deterministic_algorithms(True)`` holds.

Derivatives. The differentiable ops are differentiable once: their backward is not itself
differentiable, so a backward through one of them with ``create_graph=True`` (a gradient
penalty, a Hessian) raises ``RuntimeError`` instead of returning a wrong second derivative.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

try:
    from . import _C
except ImportError as error:  # not built, or built against another torch / Python
    raise ImportError(
        f"dmfx's ops need the compiled extension dmfx._C, which did not load ({error}). "
        "Build it from the repository root with `make setup`, or in an environment that "
        "already has torch with `pip install --no-build-isolation -e .` (or "
        "`python setup.py build_ext --inplace`). dmfx.data and dmfx.reference work without it."
    ) from error

__all__ = ["sparse_rows_matmul", "cosine_nce_loss", "hybrid_bce_loss", "sample_negatives",
           "row_sparse_adam_", "batch_entries", "cuda_enabled"]


def cuda_enabled() -> bool:
    """Whether this build of dmfx contains the CUDA kernels."""
    return _C.cuda_enabled()


# ------------------------------------------------------------------ the fake kernels' checks
# The fake (meta) kernels run wherever the real ones do not: under torch.compile, torch.export
# and FakeTensorMode, and for any call with a meta tensor (Meta outranks CPU in the dispatcher,
# whatever the devices of the other tensors). They repeat the real kernels' argument checks
# (csrc/checks.h and csrc/<op>.h), in the same order, with the same messages and exception types,
# so a traced program fails where an eager one would, and a meta tensor beside CPU ones is
# refused instead of yielding an uninitialised CPU result.

_INDEX_DTYPES = (torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float32, torch.float64)
_LOSS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1
# Dtype names as the C++ checks print them (c10::ScalarType).
_C10_NAMES = {
    torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float",
    torch.float64: "Double", torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short",
    torch.int32: "Int", torch.int64: "Long", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype))


def _num(x: float) -> str:
    """A float as the C++ checks print it (ostream's default, %g)."""
    return f"{x:g}"


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_dense_tensors(op: str, names: str, *tensors) -> None:
    """Each of ``tensors`` (named by the comma-separated ``names``; None skipped) is a strided
    tensor: the dispatcher would say "Expected a value of type 'Tensor'" or "Could not run ...
    'SparseCPU' backend" instead, naming no argument or no remedy."""
    for i, t in enumerate(tensors):
        if t is None or (isinstance(t, Tensor) and t.layout == torch.strided):
            continue
        name = names.split(", ")[i]  # only on the error path: this runs on every op call
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}"
                        " (a sparse matrix goes in as its CSR arrays: dmfx.data.as_csr)")


def _check_index_vector(op: str, name: str, t: Tensor) -> None:
    torch._check_type(t.dtype in _INDEX_DTYPES,
                      lambda: f"{op}: {name} must be an int32 or int64 tensor, got {_name(t.dtype)}")
    torch._check_value(t.dim() == 1, lambda: f"{op}: {name} must be 1-D, got shape {_shape(t)}")


def _check_floating(op: str, name: str, t: Tensor) -> None:
    torch._check_type(t.dtype in _FLOAT_DTYPES,
                      lambda: f"{op}: {name} must be float32 or float64, got {_name(t.dtype)}")


def _check_loss_floating(op: str, name: str, t: Tensor) -> None:
    torch._check_type(t.dtype in _LOSS_DTYPES,
                      lambda: f"{op}: {name} must be float16, bfloat16, float32 or float64, got "
                              f"{_name(t.dtype)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss is computed and returned in (csrc/checks.h compute_dtype)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_same_dtype(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    torch._check_type(t.dtype == ref.dtype,
                      lambda: f"{op}: {name} ({_name(t.dtype)}) must have the dtype of {ref_name} "
                              f"({_name(ref.dtype)})")


def _check_same_device(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                         "all tensors must be on one device")


def _check_csr(op, indptr, indices, rows, rows_name, num_rows_name, ref, ref_name):
    """csrc/checks.h CsrArgs."""
    _check_index_vector(op, "indptr", indptr)
    _check_index_vector(op, "indices", indices)
    _check_index_vector(op, rows_name, rows)
    torch._check_type(indices.dtype == indptr.dtype,
                      lambda: f"{op}: indices and indptr must share one index dtype, got "
                              f"{_name(indices.dtype)} and {_name(indptr.dtype)}")
    torch._check_value(indptr.shape[0] >= 1,
                       lambda: f"{op}: indptr must have {num_rows_name} + 1 >= 1 entries, got an "
                               "empty tensor")
    if ref is not indptr:
        _check_same_device(op, "indptr", indptr, ref_name, ref)
    _check_same_device(op, "indices", indices, ref_name, ref)
    _check_same_device(op, rows_name, rows, ref_name, ref)
    torch._check_value(rows.shape[0] <= _INT32_MAX,
                       lambda: f"{op}: at most 2^31 - 1 {rows_name} per call, got {rows.shape[0]}")


def _check_reduction(op: str, reduction: str) -> None:
    torch._check_value(reduction in ("none", "mean", "sum"),
                       lambda: f"{op}: reduction must be 'none', 'mean' or 'sum', got '{reduction}'")


def _check_upstream_grad(op: str, grad: Tensor, batch, reduction: str) -> None:
    """csrc/reduction.h upstream_grad."""
    if reduction == "none":
        torch._check_value(grad.dim() == 1 and grad.shape[0] == batch,
                           lambda: f"{op}: grad must have shape [{batch}] for reduction 'none', "
                                   f"got {_shape(grad)}")
    else:
        torch._check_value(grad.numel() == 1,
                           lambda: f"{op}: grad must be a scalar for reduction '{reduction}', got "
                                   f"shape {_shape(grad)}")


# --------------------------------------------------------------------------- sparse_rows_matmul


def sparse_rows_matmul(
    indptr: Tensor,
    indices: Tensor,
    values: Optional[Tensor],
    rows: Tensor,
    weight: Tensor,
    *,
    validate: bool = True,
    sparse_grad: bool = False,
) -> Tensor:
    """Rows of a CSR matrix times a dense matrix: ``out[b] = A[rows[b]] @ weight``.

    ``out[b] = sum(values[k] * weight[indices[k]] for k in range(indptr[r], indptr[r + 1]))``
    with ``r = rows[b]``. This is the first layer of a DMF tower: the user tower passes the CSR
    of Y (users x items) and the item tower the CSR of Y transposed. Only the stored entries of a
    row are read, so a row costs its nnz, not the matrix width.

    Args:
        indptr: int32/int64 ``[num_rows + 1]``, CSR row pointer.
        indices: column ids ``[nnz]``, same dtype as ``indptr``; each must be ``< weight.size(0)``.
        values: ``[nnz]`` entries in ``weight``'s dtype, or None for an all-ones (0/1) matrix.
        rows: int32/int64 ``[B]`` row ids to compute; repeats are fine.
        weight: float32/float64 ``[weight_rows, H]``.
        validate: raise on bad ids (see the module docstring).
        sparse_grad: the gradient of ``weight`` is a row-sparse COO tensor holding only the
            rows the batch touches (the columns of its CSR rows), as ``nn.Embedding(sparse=True)``
            gives; pair it with :class:`dmfx.optim.RowSparseAdam`. A backward then costs the batch's
            nnz, not ``weight.size(0) * H``: for tables far larger than a batch touches. Costs a
            sort of the batch's column ids (and a few syncs on CUDA, to size the sparse
            gradient). Eager autograd only: under ``torch.compile`` the call runs eagerly (a
            graph break; with ``fullgraph=True``, an error naming ``_sparse_grad_rows_matmul``).

    Returns:
        ``[B, H]`` tensor. Differentiable with respect to ``weight`` and ``values``, once:
        double backward (``create_graph=True`` through this op) raises ``RuntimeError``.
    """
    _check_dense_tensors(_SRM, "indptr, indices, values, rows, weight", indptr, indices, values,
                         rows, weight)
    if sparse_grad:
        return _sparse_grad_rows_matmul(indptr, indices, values, rows, weight, validate)
    return torch.ops.dmfx.sparse_rows_matmul(indptr, indices, values, rows, weight, validate)


_eager_sparse_grad = None


def _sparse_grad_rows_matmul(indptr, indices, values, rows, weight, validate):
    """:func:`sparse_rows_matmul` with ``sparse_grad=True``, always run eagerly: sized by data
    (the batch's entries and touched rows), its backward cannot be traced, so compiled code
    calls it rather than tracing into it. Wrapped on first use: ``torch.compiler.disable``
    imports torch._dynamo (~2 s), which ``import dmfx.ops`` should not pay."""
    global _eager_sparse_grad
    if _eager_sparse_grad is None:
        _eager_sparse_grad = torch.compiler.disable(_SparseGradRowsMatmul.apply)
    return _eager_sparse_grad(indptr, indices, values, rows, weight, validate)


_SRM = "dmfx.sparse_rows_matmul"


def _check_sparse_rows_matmul(indptr, indices, values, rows, dense, dense_name):
    """csrc/sparse_rows_matmul.h Args."""
    _check_csr(_SRM, indptr, indices, rows, "rows", "num_rows", dense, dense_name)
    _check_floating(_SRM, dense_name, dense)
    torch._check_value(dense.dim() == 2,
                       lambda: f"{_SRM}: {dense_name} must be 2-D, got shape {_shape(dense)}")
    if values is not None:
        _check_same_dtype(_SRM, "values", values, dense_name, dense)
        _check_same_device(_SRM, "values", values, dense_name, dense)
        torch._check_value(values.dim() == 1 and values.shape[0] == indices.shape[0],
                           lambda: f"{_SRM}: values must be 1-D with one entry per index "
                                   f"({indices.shape[0]}), got shape {_shape(values)}")


@torch.library.register_fake("dmfx::sparse_rows_matmul")
def _sparse_rows_matmul_fake(indptr, indices, values, rows, weight, validate=True):
    _check_sparse_rows_matmul(indptr, indices, values, rows, weight, "weight")
    return weight.new_empty((rows.shape[0], weight.shape[1]))


@torch.library.register_fake("dmfx::sparse_rows_matmul_backward_weight")
def _sparse_rows_matmul_backward_weight_fake(
    indptr, indices, values, rows, grad_out, num_weight_rows, validate=True
):
    _check_sparse_rows_matmul(indptr, indices, values, rows, grad_out, "grad_out")
    torch._check_value(grad_out.shape[0] == rows.shape[0],
                       lambda: f"{_SRM}: grad_out has {grad_out.shape[0]} rows but rows has "
                               f"{rows.shape[0]} entries")
    torch._check_value(num_weight_rows >= 0,
                       lambda: f"{_SRM}: num_weight_rows must be >= 0, got {num_weight_rows}")
    return grad_out.new_empty((num_weight_rows, grad_out.shape[1]))


@torch.library.register_fake("dmfx::sparse_rows_matmul_backward_values")
def _sparse_rows_matmul_backward_values_fake(indptr, indices, rows, weight, grad_out, validate=True):
    _check_sparse_rows_matmul(indptr, indices, None, rows, weight, "weight")
    _check_same_dtype(_SRM, "grad_out", grad_out, "weight", weight)
    _check_same_device(_SRM, "grad_out", grad_out, "weight", weight)
    torch._check_value(
        grad_out.dim() == 2 and grad_out.shape[0] == rows.shape[0]
        and grad_out.shape[1] == weight.shape[1],
        lambda: f"{_SRM}: grad_out must have shape [{rows.shape[0]}, {weight.shape[1]}], got "
                f"{_shape(grad_out)}")
    return weight.new_empty((indices.shape[0],))


def batch_entries(indptr: Tensor, indices: Tensor, values: Optional[Tensor], rows: Tensor):
    """The CSR rows ``rows`` as a batch-local CSR: ``(local_indptr, columns, values)``.

    ``local_indptr`` has ``len(rows) + 1`` entries (``indptr``'s dtype); ``values`` is None when
    the given one is. On CUDA, sizing the result costs one sync. Nothing is checked: a row id
    out of range, or a row whose ``indptr`` entries are broken, gets no entries, as the kernels
    skip it without validation (a negative id is not counted from the end).
    """
    rows = rows.long()
    num_rows = indptr.numel() - 1
    # Clamped ids only keep the gathers in bounds; the rows they stand for are dropped below.
    clamped = rows.clamp(0, num_rows)
    starts = indptr[clamped].long()
    ends = indptr[(clamped + 1).clamp(max=num_rows)].long()
    usable = ((rows >= 0) & (rows < num_rows) & (starts >= 0) & (ends >= starts)
              & (ends <= indices.numel()))
    counts = torch.where(usable, ends - starts, 0)
    local_indptr = torch.zeros(rows.numel() + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(counts, 0, out=local_indptr[1:])
    total = int(local_indptr[-1])
    if total > torch.iinfo(indptr.dtype).max:  # its offsets would wrap
        raise ValueError(f"dmfx.batch_entries: the batch's rows hold {total:,} entries, more than "
                         f"{indptr.dtype} offsets can count: use int64 indptr")
    position = torch.arange(total, device=rows.device) + torch.repeat_interleave(
        starts - local_indptr[:-1], counts, output_size=total)
    return (local_indptr.to(indptr.dtype), indices[position],
            None if values is None else values[position])


def _row_sparse_weight_grad(indptr, indices, values, rows, grad, weight_shape):
    """d out / d weight as a coalesced COO tensor over the rows the batch touches.

    The batch's entries sorted (stably) by column are the CSR of the batch's transpose, so the
    gradient rows are the forward op over that CSR, summed in slot order as the dense gradient
    is. On CUDA this costs the two syncs that size the result (the batch's entries, the columns
    it touches) and no more: the dense weight gradient would size its own sort again.

    Bad entries (unvalidated input) contribute nothing, as in the dense gradient: bad rows get
    none from :func:`batch_entries`, and a column outside the table becomes the stand-in
    ``weight_shape[0]``, which is appended once so that it is always the last column touched:
    the rows to keep are all but the last, without a sync to find out.
    """
    local_indptr, columns, local_values = batch_entries(indptr, indices, values, rows)
    columns = columns.long()
    outside = columns.new_full((1,), weight_shape[0])
    columns = torch.where((columns >= 0) & (columns < weight_shape[0]), columns, outside)
    touched, compact = torch.unique(torch.cat([columns, outside]), return_inverse=True)
    touched = touched[:-1]  # sorted: coalesced
    compact, order = torch.sort(compact[:-1], stable=True)
    device = rows.device
    slots = torch.repeat_interleave(torch.arange(rows.numel(), device=device),
                                    torch.diff(local_indptr.long()), output_size=columns.numel())
    # The entries of the stand-in column sort last and lie past the transposed CSR's last row.
    transposed_indptr = torch.searchsorted(compact, torch.arange(touched.numel() + 1,
                                                                 device=device))
    grad_rows = torch.ops.dmfx.sparse_rows_matmul(
        transposed_indptr, slots[order], None if local_values is None else local_values[order],
        torch.arange(touched.numel(), device=device), grad, False)
    # Built sorted, duplicate-free and in range above, so no invariant check is needed.
    return torch.sparse_coo_tensor(touched.unsqueeze(0), grad_rows, weight_shape,
                                   is_coalesced=True, check_invariants=False)


class _SparseGradRowsMatmul(torch.autograd.Function):
    """sparse_rows_matmul whose weight gradient is row-sparse (see ``sparse_grad``)."""

    @staticmethod
    def forward(ctx, indptr, indices, values, rows, weight, validate):
        ctx.save_for_backward(indptr, indices, values, rows, weight)
        ctx.validate = validate  # the values gradient checks for rows that share entries
        return torch.ops.dmfx.sparse_rows_matmul(indptr, indices, values, rows, weight, validate)

    @staticmethod
    def backward(ctx, grad):
        indptr, indices, values, rows, weight = ctx.saved_tensors
        # As the C++ backward of the dense path does (csrc/once_differentiable.h).
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (grad, values, weight)):
            raise RuntimeError(f"{_SRM}: double backward (create_graph=True through this op) is "
                               "not supported: its backward is not differentiable")
        grad = grad.contiguous()
        # Under autocast the forward ran on float32 copies of half values / weight (the op's
        # autocast kernel): so does the backward; autograd casts the gradients back.
        values = None if values is None else values.to(grad.dtype)
        weight = weight.to(grad.dtype)
        grad_values = grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_values = torch.ops.dmfx.sparse_rows_matmul_backward_values(
                indptr, indices, rows, weight, grad, ctx.validate)
        if ctx.needs_input_grad[4]:
            grad_weight = _row_sparse_weight_grad(indptr, indices, values, rows, grad,
                                                  weight.shape)
        return None, None, grad_values, None, grad_weight, None


# ------------------------------------------------------------------------------ cosine_nce_loss


def cosine_nce_loss(
    p: Tensor,
    q: Tensor,
    target: Tensor,
    mu: float = 1e-6,
    reduction: str = "mean",
    *,
    validate: bool = True,
) -> Tensor:
    """Fused cosine + mu-clamp + normalized cross-entropy (DMF, Eqs. 8, 12 and 13).

    ``yhat_b = clamp(cos(p_b, q_b), mu, 1 - mu)`` and
    ``loss_b = -(t_b log yhat_b + (1 - t_b) log(1 - yhat_b))``. For the paper's nce loss
    ``t = rating / max rating`` on observed pairs and 0 on sampled negatives; for ce, 0/1.

    The upper clamp ``1 - mu`` keeps ``log(1 - yhat)`` finite. The clamp passes gradient only
    when ``mu <= cos <= 1 - mu`` (as ``torch.clamp`` does). A zero vector has cosine 0 by
    definition, so its pair gets ``yhat = mu``, a finite loss and a zero gradient, never NaN.

    NaN is never clamped away: a NaN (or infinity) in ``p_b`` or ``q_b`` makes ``yhat_b``, the
    loss and the gradients of ``p_b`` and ``q_b`` NaN, as in
    :func:`dmfx.reference.cosine_nce_loss`.
    A NaN target raises with ``validate=True``; without validation its loss is NaN (and so are
    the row's gradients, unless the clamp is active there).

    The squared norms are summed in the compute dtype, unscaled (as in the reference and in
    ``F.cosine_similarity``): in float32 a vector longer than about 1.8e19 overflows its squared
    norm to inf, and its pair's cosine comes out 0 (``yhat = mu``, zero gradient) or NaN instead
    of its value. Such outputs mean a diverged model; train in float64 if they are real.

    Args:
        p, q: ``[B, k]`` tower outputs, one dtype: float32 or float64, or float16 / bfloat16
            (computed in float32; the loss is float32).
        target: ``[B]`` targets in [0, 1].
        mu: the clamp, in (0, 0.5), and a normal number of the compute dtype (at least
            ``torch.finfo(torch.float32).tiny``, about 1.2e-38, for float32 and half inputs):
            a smaller one would round to a subnormal or 0 there and the loss to inf.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. The mean of an empty batch is NaN, as in
            torch.
        validate: raise when a target lies outside [0, 1] or is NaN (on CUDA: one sync; two
            for a float64 target beside float32 inputs, checked before its cast).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``. Differentiable in ``p``, ``q`` and
        ``target``, once: double backward (``create_graph=True`` through this op) raises
        ``RuntimeError``.
    """
    _check_dense_tensors(_CNL, "p, q, target", p, q, target)
    return torch.ops.dmfx.cosine_nce_loss(p, q, target, mu, reduction, validate)


_CNL = "dmfx.cosine_nce_loss"


def check_mu(owner: str, mu: float) -> None:
    """The range of the cosine clamp ``mu`` (ValueError naming ``owner``), for the op and the
    modules and models that hold a mu for it, so that they refuse it when built."""
    torch._check_value(0 < mu < 0.5,
                       lambda: f"{owner}: mu must lie in (0, 0.5) so that mu < 1 - mu, got {_num(mu)}")


def _check_cosine_nce_loss(p, q, target, mu, reduction):
    """csrc/cosine_nce_loss.h Inputs."""
    _check_loss_floating(_CNL, "p", p)
    _check_same_dtype(_CNL, "q", q, "p", p)
    torch._check_type(target.dtype.is_floating_point,
                      lambda: f"{_CNL}: target must be a floating tensor, got {_name(target.dtype)}")
    _check_same_device(_CNL, "q", q, "p", p)
    _check_same_device(_CNL, "target", target, "p", p)
    torch._check_value(p.dim() == 2,
                       lambda: f"{_CNL}: p must be 2-D [batch, dim], got shape {_shape(p)}")
    torch._check_value(q.shape == p.shape,
                       lambda: f"{_CNL}: q must have the shape of p {_shape(p)}, got {_shape(q)}")
    torch._check_value(target.dim() == 1 and target.shape[0] == p.shape[0],
                       lambda: f"{_CNL}: target must be 1-D with one entry per row of p "
                               f"({p.shape[0]}), got shape {_shape(target)}")
    check_mu(_CNL, mu)
    dtype = _compute_dtype(p.dtype)
    smallest = torch.finfo(dtype).tiny
    torch._check_value(mu >= smallest,
                       lambda: f"{_CNL}: mu must be at least {_num(smallest)}, the smallest normal "
                               f"{str(dtype).removeprefix('torch.')} (the dtype this call computes "
                               f"in), got {_num(mu)}")
    _check_reduction(_CNL, reduction)


@torch.library.register_fake("dmfx::cosine_nce_loss")
def _cosine_nce_loss_fake(p, q, target, mu=1e-6, reduction="mean", validate=True):
    _check_cosine_nce_loss(p, q, target, mu, reduction)
    return p.new_empty((p.shape[0],) if reduction == "none" else (),
                       dtype=_compute_dtype(p.dtype))


@torch.library.register_fake("dmfx::cosine_nce_loss_backward")
def _cosine_nce_loss_backward_fake(grad, p, q, target, mu, reduction):
    _check_cosine_nce_loss(p, q, target, mu, reduction)
    _check_same_device(_CNL, "grad", grad, "p", p)
    _check_upstream_grad(_CNL, grad, p.shape[0], reduction)
    return torch.empty_like(p), torch.empty_like(q)


# ------------------------------------------------------------------------------ hybrid_bce_loss


def hybrid_bce_loss(
    logits: Tensor,
    implicit_target: Tensor,
    explicit_target: Tensor,
    eta: float,
    reduction: str = "mean",
    *,
    validate: bool = True,
) -> Tensor:
    """EINMF's hybrid explicit-implicit loss (Eqs. 14-16), fused, from logits.

    With ``yhat = sigmoid(logits)`` and ``bce(yhat, t) = -(t log yhat + (1 - t) log(1 - yhat))``,
    ``loss_b = eta * bce(yhat_b, ir_b) + (1 - eta) * bce(yhat_b, e_b)``: ``ir`` the implicit
    target (1 observed, 0 sampled negative), ``e`` the explicit one (rating / max rating, 0 for
    negatives). ``eta = 1`` is pure implicit feedback, ``eta = 0`` pure explicit.

    Cross-entropy is linear in its target, so this is one
    ``F.binary_cross_entropy_with_logits(logits, t)`` against the blended target
    ``t = eta * ir + (1 - eta) * e``, and the kernels compute it so, in one pass over the batch
    forward and one backward (gradient ``(sigmoid(logits) - t) * upstream``, ``/ B`` for the
    mean). They work from the logits (``log yhat = -softplus(-x)``,
    ``log(1 - yhat) = -softplus(x)``), so any finite logit, however large (``1e4``, ``-1e30``),
    gives a finite loss and gradient: no ``log(0)``, and no ``-100`` clamp as
    ``F.binary_cross_entropy`` on probabilities has. ``1 - t`` is blended from ``1 - ir`` and
    ``1 - e`` rather than formed from the rounded ``t``, so a confident positive's small loss and
    gradient keep their float32 digits where ``t`` is close to 1.

    NaN is never hidden: a NaN logit gives a NaN loss (and gradient) for its element, as in
    :func:`dmfx.reference.hybrid_bce_loss`. A target outside [0, 1] or NaN raises with
    ``validate=True``; without validation it is used as it is (a NaN target gives a NaN loss).

    Args:
        logits: ``[B]`` scores before the sigmoid: float32 or float64, or float16 / bfloat16
            (computed in float32; the loss is float32).
        implicit_target, explicit_target: ``[B]`` targets in [0, 1], in the dtype of ``logits``.
        eta: the weight of the implicit loss, in [0, 1] (checked on every call: a host value).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. The mean of an empty batch is NaN, as in
            torch and :func:`cosine_nce_loss`; its sum is 0.
        validate: raise when a target lies outside [0, 1] or is NaN (on CUDA: one sync).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``. Differentiable in ``logits`` and, as in
        :func:`cosine_nce_loss`, in both targets (``d loss / d ir = -eta * logits``,
        ``d loss / d e = -(1 - eta) * logits``, per element and upstream gradient), once:
        double backward (``create_graph=True`` through this op) raises ``RuntimeError``.
    """
    _check_dense_tensors(_HBL, "logits, implicit_target, explicit_target", logits,
                         implicit_target, explicit_target)
    return torch.ops.dmfx.hybrid_bce_loss(logits, implicit_target, explicit_target, eta,
                                          reduction, validate)


_HBL = "dmfx.hybrid_bce_loss"


def _check_hybrid_bce_loss(logits, implicit_target, explicit_target, eta, reduction):
    """csrc/hybrid_bce_loss.h Inputs."""
    _check_loss_floating(_HBL, "logits", logits)
    _check_same_dtype(_HBL, "implicit_target", implicit_target, "logits", logits)
    _check_same_dtype(_HBL, "explicit_target", explicit_target, "logits", logits)
    _check_same_device(_HBL, "implicit_target", implicit_target, "logits", logits)
    _check_same_device(_HBL, "explicit_target", explicit_target, "logits", logits)
    torch._check_value(logits.dim() == 1,
                       lambda: f"{_HBL}: logits must be 1-D [batch], got shape {_shape(logits)}")
    for name, t in (("implicit_target", implicit_target), ("explicit_target", explicit_target)):
        torch._check_value(t.shape == logits.shape,
                           lambda: f"{_HBL}: {name} must have the shape of logits "
                                   f"{_shape(logits)}, got {_shape(t)}")
    torch._check_value(0 <= eta <= 1, lambda: f"{_HBL}: eta must lie in [0, 1], got {_num(eta)}")
    _check_reduction(_HBL, reduction)


@torch.library.register_fake("dmfx::hybrid_bce_loss")
def _hybrid_bce_loss_fake(logits, implicit_target, explicit_target, eta, reduction="mean",
                          validate=True):
    _check_hybrid_bce_loss(logits, implicit_target, explicit_target, eta, reduction)
    return logits.new_empty((logits.shape[0],) if reduction == "none" else (),
                            dtype=_compute_dtype(logits.dtype))


@torch.library.register_fake("dmfx::hybrid_bce_loss_backward")
def _hybrid_bce_loss_backward_fake(grad, logits, implicit_target, explicit_target, eta, reduction):
    _check_hybrid_bce_loss(logits, implicit_target, explicit_target, eta, reduction)
    _check_same_device(_HBL, "grad", grad, "logits", logits)
    _check_upstream_grad(_HBL, grad, logits.shape[0], reduction)
    return torch.empty_like(logits)


# ----------------------------------------------------------------------------- sample_negatives


def sample_negatives(
    indptr: Tensor,
    indices: Tensor,
    users: Tensor,
    num_items: int,
    num_negatives: int,
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    validate: bool = True,
) -> Tensor:
    """Items each user has not interacted with, drawn uniformly with replacement.

    ``out[b, n]`` is uniform over ``[0, num_items)`` minus the CSR row ``users[b]`` of the
    interaction matrix. Each draw is exact (a binary search maps a uniform rank among the user's
    free items to the item), with no rejection loop.

    The columns of every row must be strictly ascending; :mod:`dmfx.data` builds them so.
    ``validate=True`` also checks that order for the rows it reads (O(row length)); without it,
    a row out of order or with a repeated id gives wrong samples (in range) or -1.

    Args:
        indptr, indices: CSR of the user x item interactions (int32 or int64, one dtype).
        users: int32/int64 ``[B]`` user ids; repeats are fine.
        num_items: the number of items (columns).
        num_negatives: draws per user.
        seed: an int64; the samples are a pure function of it (the same on CPU and CUDA). Without
            it, a seed is drawn from ``generator`` (default: torch's default CPU generator, so
            ``torch.manual_seed`` makes calls reproducible). A CUDA generator costs a sync.
            Traced code (``torch.compile(fullgraph=True)``, ``torch.export``,
            ``FakeTensorMode``) must pass ``seed``, drawn outside it (say,
            ``int(torch.randint(2**62, ()))`` per step): the draw reads a value back to the
            host, which a trace cannot do, so without a seed the call raises ``ValueError``
            (inside dynamo's error under ``torch.compile``; without ``fullgraph`` dynamo breaks
            the graph there and the call draws its seed eagerly). A compiled function given a
            new seed every call compiles once more for it (the seed becomes a dynamic int), not
            once per seed.
        validate: raise on bad ids, unsorted rows, or a user who interacted with every item.

    Returns:
        int64 ``[B, num_negatives]`` on the device of ``users``. Without validation, a user with
        no free item gets -1, and so does a user id outside the CSR or a row whose ``indptr``
        entries are out of order or out of range.
    """
    _check_dense_tensors("dmfx.sample_negatives", "indptr, indices, users", indptr, indices, users)
    if seed is not None and generator is not None:
        raise ValueError("dmfx.sample_negatives: give seed or generator, not both")
    if isinstance(seed, int) and not -2**63 <= seed < 2**63:
        raise ValueError(f"dmfx.sample_negatives: seed must lie in the int64 range [-2**63, "
                         f"2**63), got {seed}")
    if seed is None:
        # is_compiling() first: a constant under dynamo, which then never traces the second.
        if torch.compiler.is_compiling() or torch._guards.detect_fake_mode(users) is not None:
            raise ValueError("dmfx.sample_negatives: pass seed=... when tracing (torch.compile, "
                             "torch.export, FakeTensorMode): drawing one from a generator reads "
                             "a value back to the host, which a trace cannot do; draw it outside, "
                             "e.g. seed=int(torch.randint(2**62, ()))")
        device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.empty((), dtype=torch.int64, device=device).random_(generator=generator))
    return torch.ops.dmfx.sample_negatives(
        indptr, indices, users, num_items, num_negatives, seed, validate
    )


@torch.library.register_fake("dmfx::sample_negatives")
def _sample_negatives_fake(indptr, indices, users, num_items, num_negatives, seed, validate=True):
    op = "dmfx.sample_negatives"
    _check_csr(op, indptr, indices, users, "users", "num_users", indptr, "indptr")
    torch._check_value(num_items > 0, lambda: f"{op}: num_items must be positive, got {num_items}")
    torch._check_value(num_negatives >= 0,
                       lambda: f"{op}: num_negatives must be >= 0, got {num_negatives}")
    return users.new_empty((users.shape[0], num_negatives), dtype=torch.int64)


# ----------------------------------------------------------------------------- row_sparse_adam_


def row_sparse_adam_(
    weight: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    rows: Tensor,
    grad_rows: Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    step: int,
    validate: bool = True,
) -> None:
    """One Adam step on the rows ``rows`` of ``weight`` only, in place (lazy, row-wise Adam).

    For each ``i``, row ``r = rows[i]`` of ``weight``, ``exp_avg`` and ``exp_avg_sq`` is updated
    with gradient ``grad_rows[i]`` by ``torch.optim.Adam``'s formula (no weight decay, no
    amsgrad; eps added after the bias correction of ``sqrt(v)``), with bias corrections for
    ``step`` (the count including this update). Other rows are untouched, moments included: lazy
    as ``torch.optim.SparseAdam`` is, in one pass over the touched rows, though SparseAdam adds
    eps before the bias correction (see :mod:`dmfx.optim`). This is what a row-sparse gradient
    of :func:`sparse_rows_matmul` (``sparse_grad=True``) feeds; :class:`dmfx.optim.RowSparseAdam`
    wraps it as an optimizer.

    Like torch's in-place ops (and ``torch.optim``), it has no derivative: call it under
    ``torch.no_grad()``. With grad mode on, a tensor argument that requires grad raises
    ``RuntimeError`` (for a leaf: "a leaf Variable that requires grad is being used in an
    in-place operation"). Each call bumps the version counters of ``weight``, ``exp_avg`` and
    ``exp_avg_sq``, so a backward through a graph that saved one of them before the update
    raises ("modified by an inplace operation") instead of using the updated values.

    Args:
        weight, exp_avg, exp_avg_sq: float32/float64 ``[num_rows, H]``, contiguous, one
            dtype and device, and no memory shared between them or with ``rows`` and
            ``grad_rows`` (the same tensor twice, or overlapping views, raises ``ValueError``).
        rows: int32/int64 ``[n]`` distinct row ids.
        grad_rows: ``[n, H]``.
        validate: raise when a row id is out of range or repeated (on CUDA: three syncs, for the
            smallest and largest id and the count of distinct ones). Without it,
            an out-of-range row is skipped, and a repeated row is updated by several threads
            at once: its result is undefined (and may differ between runs).
    """
    _check_dense_tensors("dmfx.row_sparse_adam_", "weight, exp_avg, exp_avg_sq, rows, grad_rows",
                         weight, exp_avg, exp_avg_sq, rows, grad_rows)
    torch.ops.dmfx.row_sparse_adam_(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1,
                                    beta2, eps, step, validate)


@torch.library.register_fake("dmfx::row_sparse_adam_")
def _row_sparse_adam_fake(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps,
                          step, validate=True):
    """csrc/row_sparse_adam.h Args, but for the checks of values (validate) and of memory overlap,
    which need real data."""
    op = "dmfx.row_sparse_adam_"
    _check_floating(op, "weight", weight)
    torch._check_value(weight.dim() == 2,
                       lambda: f"{op}: weight must be 2-D, got shape {_shape(weight)}")
    for name, t in (("weight", weight), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _check_same_dtype(op, name, t, "weight", weight)
        _check_same_device(op, name, t, "weight", weight)
        torch._check_value(t.shape == weight.shape,
                           lambda: f"{op}: {name} must have the shape of weight "
                                   f"{_shape(weight)}, got {_shape(t)}")
        torch._check_value(t.is_contiguous(),
                           lambda: f"{op}: {name} must be contiguous (it is updated in place)")
    _check_index_vector(op, "rows", rows)
    _check_same_device(op, "rows", rows, "weight", weight)
    _check_same_dtype(op, "grad_rows", grad_rows, "weight", weight)
    _check_same_device(op, "grad_rows", grad_rows, "weight", weight)
    n, width = rows.shape[0], weight.shape[1]
    torch._check_value(
        grad_rows.dim() == 2 and grad_rows.shape[0] == n and grad_rows.shape[1] == width,
        lambda: f"{op}: grad_rows must have shape [{n}, {width}] (one row per entry of rows), "
                f"got {_shape(grad_rows)}")
    torch._check_value(lr >= 0, lambda: f"{op}: lr must be >= 0, got {_num(lr)}")
    torch._check_value(0 <= beta1 < 1 and 0 <= beta2 < 1,
                       lambda: f"{op}: beta1 and beta2 must lie in [0, 1), got {_num(beta1)} and {_num(beta2)}")
    torch._check_value(eps > 0, lambda: f"{op}: eps must be > 0, got {_num(eps)}")
    torch._check_value(step >= 1, lambda: f"{op}: step must be >= 1 (the count including this "
                                          f"update), got {step}")
