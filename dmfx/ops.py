"""The dmfx operators: the three hot spots of DMF as PyTorch custom ops.

Each op is registered in the ``torch.ops.dmfx`` namespace by the C++ extension (CPU kernels
always, CUDA kernels where built, autograd in C++ so a call costs no Python beyond its wrapper);
this module adds the fake (meta) kernels, so the ops work under ``torch.compile(fullgraph=True)``,
``torch.export`` and ``torch.library.opcheck``.
Pure-PyTorch twins of every op live in :mod:`dmfx.reference`.

Validation. Kernels never read out of bounds, whatever their input: an out-of-range id or a
broken ``indptr`` entry is skipped. With ``validate=True`` (the default) such a problem raises a
Python exception naming the argument; on CUDA that costs one 24-byte device-to-host copy (a
sync) per call. Hot loops over data already checked once (the trainer) pass ``validate=False``:
no sync, and a bad entry then contributes nothing instead of raising.

Devices. All tensor arguments of a call must be on one device: a mix (a meta tensor beside CPU
ones included) raises ``ValueError`` naming the argument, from the kernels and the fake kernels
alike.
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


def _check_one_device(op: str, ref_name: str, ref: Tensor, **tensors: Optional[Tensor]) -> None:
    """The fake kernels' twin of check_same_device (csrc/checks.h), with the same message.

    The dispatcher sends a call with any meta tensor to the fake kernel (Meta outranks CPU),
    whatever the devices of the other tensors, and tracing sends every call there; unchecked,
    a meta tensor beside CPU ones gets an uninitialised CPU result.
    """
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"dmfx.{op}: {name} is on {t.device} but {ref_name} is on "
                             f"{ref.device}; all tensors must be on one device")


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
            sort of the batch's column ids (and one sync on CUDA). Eager autograd only.

    Returns:
        ``[B, H]`` tensor. Differentiable with respect to ``weight`` and ``values``.
    """
    if sparse_grad:
        return _SparseGradRowsMatmul.apply(indptr, indices, values, rows, weight, validate)
    return torch.ops.dmfx.sparse_rows_matmul(indptr, indices, values, rows, weight, validate)


@torch.library.register_fake("dmfx::sparse_rows_matmul")
def _sparse_rows_matmul_fake(indptr, indices, values, rows, weight, validate=True):
    _check_one_device("sparse_rows_matmul", "weight", weight, indptr=indptr, indices=indices,
                      rows=rows, values=values)
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    return weight.new_empty((rows.shape[0], weight.shape[1]))


@torch.library.register_fake("dmfx::sparse_rows_matmul_backward_weight")
def _sparse_rows_matmul_backward_weight_fake(
    indptr, indices, values, rows, grad_out, num_weight_rows, validate=True
):
    _check_one_device("sparse_rows_matmul", "grad_out", grad_out, indptr=indptr,
                      indices=indices, rows=rows, values=values)
    return grad_out.new_empty((num_weight_rows, grad_out.shape[1]))


@torch.library.register_fake("dmfx::sparse_rows_matmul_backward_values")
def _sparse_rows_matmul_backward_values_fake(indptr, indices, rows, weight, grad_out, validate=True):
    _check_one_device("sparse_rows_matmul", "weight", weight, indptr=indptr, indices=indices,
                      rows=rows, grad_out=grad_out)
    return weight.new_empty((indices.shape[0],))


def batch_entries(indptr: Tensor, indices: Tensor, values: Optional[Tensor], rows: Tensor):
    """The CSR rows ``rows`` as a batch-local CSR: ``(local_indptr, columns, values)``.

    ``local_indptr`` has ``len(rows) + 1`` entries (``indptr``'s dtype); ``values`` is None when
    the given one is. On CUDA, sizing the result costs one sync.
    """
    rows = rows.long()
    starts = indptr[rows].long()
    counts = indptr[rows + 1].long() - starts
    local_indptr = torch.zeros(rows.numel() + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(counts, 0, out=local_indptr[1:])
    total = int(local_indptr[-1])
    position = torch.arange(total, device=rows.device) + torch.repeat_interleave(
        starts - local_indptr[:-1], counts, output_size=total)
    return (local_indptr.to(indptr.dtype), indices[position],
            None if values is None else values[position])


def _row_sparse_weight_grad(indptr, indices, values, rows, grad, weight_shape):
    """d out / d weight as a coalesced COO tensor over the rows the batch touches."""
    local_indptr, columns, local_values = batch_entries(indptr, indices, values, rows)
    touched, compact = torch.unique(columns, return_inverse=True)  # sorted: coalesced
    local_rows = torch.arange(rows.numel(), device=rows.device)
    grad_rows = torch.ops.dmfx.sparse_rows_matmul_backward_weight(
        local_indptr, compact.to(local_indptr.dtype), local_values, local_rows, grad,
        touched.numel(), False)
    # Built sorted and duplicate-free above, so no invariant check is needed.
    return torch.sparse_coo_tensor(touched.long().unsqueeze(0), grad_rows, weight_shape,
                                   is_coalesced=True, check_invariants=False)


class _SparseGradRowsMatmul(torch.autograd.Function):
    """sparse_rows_matmul whose weight gradient is row-sparse (see ``sparse_grad``)."""

    @staticmethod
    def forward(ctx, indptr, indices, values, rows, weight, validate):
        ctx.save_for_backward(indptr, indices, values, rows, weight)
        return torch.ops.dmfx.sparse_rows_matmul(indptr, indices, values, rows, weight, validate)

    @staticmethod
    def backward(ctx, grad):
        indptr, indices, values, rows, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_values = torch.ops.dmfx.sparse_rows_matmul_backward_values(
                indptr, indices, rows, weight, grad, False)
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

    Args:
        p, q: float32/float64 ``[B, k]`` tower outputs.
        target: ``[B]`` targets in [0, 1].
        mu: the clamp, in (0, 0.5).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. The mean of an empty batch is NaN, as in
            torch.
        validate: raise when a target lies outside [0, 1] or is NaN (on CUDA: one sync).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``. Differentiable in ``p``, ``q`` and
        ``target``.
    """
    return torch.ops.dmfx.cosine_nce_loss(p, q, target, mu, reduction, validate)


@torch.library.register_fake("dmfx::cosine_nce_loss")
def _cosine_nce_loss_fake(p, q, target, mu=1e-6, reduction="mean", validate=True):
    _check_one_device("cosine_nce_loss", "p", p, q=q, target=target)
    return p.new_empty((p.shape[0],) if reduction == "none" else ())


@torch.library.register_fake("dmfx::cosine_nce_loss_backward")
def _cosine_nce_loss_backward_fake(grad, p, q, target, mu, reduction):
    _check_one_device("cosine_nce_loss", "p", p, q=q, target=target, grad=grad)
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
    ``F.binary_cross_entropy`` on probabilities has.

    NaN is never hidden: a NaN logit gives a NaN loss (and gradient) for its element, as in
    :func:`dmfx.reference.hybrid_bce_loss`. A target outside [0, 1] or NaN raises with
    ``validate=True``; without validation it is used as it is (a NaN target gives a NaN loss).

    Args:
        logits: float32/float64 ``[B]`` scores before the sigmoid.
        implicit_target, explicit_target: ``[B]`` targets in [0, 1], in the dtype of ``logits``.
        eta: the weight of the implicit loss, in [0, 1] (checked on every call: a host value).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. The mean of an empty batch is NaN, as in
            torch and :func:`cosine_nce_loss`; its sum is 0.
        validate: raise when a target lies outside [0, 1] or is NaN (on CUDA: one sync).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``. Differentiable in ``logits`` and, as in
        :func:`cosine_nce_loss`, in both targets (``d loss / d ir = -eta * logits``,
        ``d loss / d e = -(1 - eta) * logits``, per element and upstream gradient).
    """
    return torch.ops.dmfx.hybrid_bce_loss(logits, implicit_target, explicit_target, eta,
                                          reduction, validate)


@torch.library.register_fake("dmfx::hybrid_bce_loss")
def _hybrid_bce_loss_fake(logits, implicit_target, explicit_target, eta, reduction="mean",
                          validate=True):
    _check_one_device("hybrid_bce_loss", "logits", logits, implicit_target=implicit_target,
                      explicit_target=explicit_target)
    return logits.new_empty((logits.shape[0],) if reduction == "none" else ())


@torch.library.register_fake("dmfx::hybrid_bce_loss_backward")
def _hybrid_bce_loss_backward_fake(grad, logits, implicit_target, explicit_target, eta, reduction):
    _check_one_device("hybrid_bce_loss", "logits", logits, implicit_target=implicit_target,
                      explicit_target=explicit_target, grad=grad)
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
    ``validate=True`` also checks that order for the rows it reads (O(row length)).

    Args:
        indptr, indices: CSR of the user x item interactions (int32 or int64, one dtype).
        users: int32/int64 ``[B]`` user ids; repeats are fine.
        num_items: the number of items (columns).
        num_negatives: draws per user.
        seed: the samples are a pure function of ``seed`` (the same on CPU and CUDA). Without
            it, a seed is drawn from ``generator`` (default: torch's default CPU generator, so
            ``torch.manual_seed`` makes calls reproducible). A CUDA generator costs a sync.
        validate: raise on bad ids, unsorted rows, or a user who interacted with every item.

    Returns:
        int64 ``[B, num_negatives]`` on the device of ``users``. Without validation, a user with
        no free item gets -1.
    """
    if seed is not None and generator is not None:
        raise ValueError("dmfx.sample_negatives: give seed or generator, not both")
    if seed is None:
        device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.empty((), dtype=torch.int64, device=device).random_(generator=generator))
    return torch.ops.dmfx.sample_negatives(
        indptr, indices, users, num_items, num_negatives, seed, validate
    )


@torch.library.register_fake("dmfx::sample_negatives")
def _sample_negatives_fake(indptr, indices, users, num_items, num_negatives, seed, validate=True):
    _check_one_device("sample_negatives", "indptr", indptr, indices=indices, users=users)
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
    with gradient ``grad_rows[i]`` by torch's Adam formula (no weight decay, no amsgrad), with
    bias corrections for ``step`` (the count including this update). Other rows are untouched,
    moments included: the semantics of ``torch.optim.SparseAdam``, in one pass over the touched
    rows. This is what a row-sparse gradient of :func:`sparse_rows_matmul` (``sparse_grad=True``)
    feeds; :class:`dmfx.optim.RowSparseAdam` wraps it as an optimizer.

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
        validate: raise when a row id is out of range or repeated (on CUDA: a sync). Without it,
            an out-of-range row is skipped and repeated rows race.
    """
    torch.ops.dmfx.row_sparse_adam_(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1,
                                    beta2, eps, step, validate)


@torch.library.register_fake("dmfx::row_sparse_adam_")
def _row_sparse_adam_fake(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps,
                          step, validate=True):
    _check_one_device("row_sparse_adam_", "weight", weight, exp_avg=exp_avg,
                      exp_avg_sq=exp_avg_sq, rows=rows, grad_rows=grad_rows)
