// row_sparse_adam_: argument checks, the CPU / CUDA registrations, and the autograd and version
// counter handling of an in-place op.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <utility>

#include "checks.h"
#include "dispatch.h"
#include "cpu/row_sparse_adam_cpu.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/row_sparse_adam_cuda.h"
#endif

namespace dmfx {

namespace {

constexpr const char* kOp = "dmfx.row_sparse_adam_";

void check_state(const char* name, const at::Tensor& t, const at::Tensor& weight) {
  check_same_dtype(kOp, name, t, "weight", weight);
  check_same_device(kOp, name, t, "weight", weight);
  TORCH_CHECK_VALUE(t.sizes() == weight.sizes(), kOp, ": ", name, " must have the shape of weight ",
                    weight.sizes(), ", got ", t.sizes());
  // Updated in place through a raw pointer: a strided view would be written in the wrong places.
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", name, " must be contiguous (it is updated in "
                    "place)");
}

// The kernels update the three state tensors in place through restrict pointers while reading rows
// and grad_rows: memory shared by any two of them mixes the updates (NaN weights). All of them are
// contiguous here, so the status is exact (never TooHard).
void check_no_overlap(const char* name, const at::Tensor& t, const char* other_name,
                      const at::Tensor& other) {
  TORCH_CHECK_VALUE(at::get_overlap_status(t, other) == at::MemOverlapStatus::No, kOp, ": ", name,
                    " and ", other_name, " share memory (the same tensor, or overlapping views "
                    "of one); each must be a tensor of its own");
}

void row_sparse_adam_(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                      const at::Tensor& rows_, const at::Tensor& grad_rows_, double lr,
                      double beta1, double beta2, double eps, int64_t step, bool validate) {
  check_floating(kOp, "weight", weight);
  TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": weight must be 2-D, got shape ", weight.sizes());
  check_state("weight", weight, weight);
  check_state("exp_avg", exp_avg, weight);
  check_state("exp_avg_sq", exp_avg_sq, weight);
  check_index_vector(kOp, "rows", rows_);
  check_same_device(kOp, "rows", rows_, "weight", weight);
  check_same_dtype(kOp, "grad_rows", grad_rows_, "weight", weight);
  check_same_device(kOp, "grad_rows", grad_rows_, "weight", weight);
  const int64_t weight_rows = weight.size(0), width = weight.size(1), n = rows_.numel();
  TORCH_CHECK_VALUE(grad_rows_.dim() == 2 && grad_rows_.size(0) == n &&
                        grad_rows_.size(1) == width,
                    kOp, ": grad_rows must have shape [", n, ", ", width, "] (one row per entry "
                    "of rows), got ", grad_rows_.sizes());
  TORCH_CHECK_VALUE(lr >= 0, kOp, ": lr must be >= 0, got ", lr);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, kOp,
                    ": beta1 and beta2 must lie in [0, 1), got ", beta1, " and ", beta2);
  TORCH_CHECK_VALUE(eps > 0, kOp, ": eps must be > 0, got ", eps);
  TORCH_CHECK_VALUE(step >= 1, kOp, ": step must be >= 1 (the count including this update), got ",
                    step);
  const at::Tensor rows = rows_.to(at::kLong).contiguous();
  const at::Tensor grad_rows = grad_rows_.contiguous();
  check_no_overlap("exp_avg", exp_avg, "weight", weight);
  check_no_overlap("exp_avg_sq", exp_avg_sq, "weight", weight);
  check_no_overlap("exp_avg_sq", exp_avg_sq, "exp_avg", exp_avg);
  for (const auto& [name, read] : {std::pair<const char*, const at::Tensor&>{"rows", rows},
                                   {"grad_rows", grad_rows}}) {
    check_no_overlap(name, read, "weight", weight);
    check_no_overlap(name, read, "exp_avg", exp_avg);
    check_no_overlap(name, read, "exp_avg_sq", exp_avg_sq);
  }
  if (validate && n > 0) {
    // Out-of-range rows are skipped by the kernels whatever happens; repeated rows would race.
    // On CUDA these checks cost a sync, hence the flag.
    const auto [lo, hi] = at::aminmax(rows);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_INDEX(lo_v >= 0 && hi_v < weight_rows, kOp, ": rows must lie in [0, ",
                      weight_rows, ") (the rows of weight), got values in [", lo_v, ", ", hi_v,
                      "]");
    const int64_t distinct = std::get<0>(at::_unique(rows, /*sorted=*/false)).numel();
    TORCH_CHECK_VALUE(distinct == n, kOp, ": rows must be distinct (a coalesced row-sparse "
                      "gradient), got ", n - distinct, " repeated entries");
  }
  const AdamStep s = adam_step(lr, beta1, beta2, eps, step);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "row_sparse_adam_", [&] {
    scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const int64_t* r = rows.data_ptr<int64_t>();
    const scalar_t* g = grad_rows.data_ptr<scalar_t>();
    if (weight.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(weight.device());
      C10_CUDA_CHECK(cuda::row_sparse_adam(w, m, v, weight_rows, width, r, g, n, s,
                                           c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      at::parallel_for(0, n, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * width + 1)),
                       [&](int64_t i0, int64_t i1) {
                         cpu::row_sparse_adam(w, m, v, weight_rows, width, r, g, s, i0, i1);
                       });
    }
  });
}

// Autograd: the update has no derivative. With grad mode on, a tensor that requires grad is
// refused (a leaf with the message of torch's in-place ops); under torch.no_grad, where optimizers
// step (torch.optim, dmfx.optim.RowSparseAdam), the call goes on to the version bump below.
void refuse_requires_grad(const char* name, const at::Tensor& t, bool written) {
  if (!t.requires_grad()) return;
  TORCH_CHECK(!(written && t.is_leaf()), kOp, ": ", name, ": a leaf Variable that requires grad "
              "is being used in an in-place operation; update it under torch.no_grad(), as "
              "torch.optim does");
  TORCH_CHECK(false, kOp, ": ", name, " requires grad, but the update has no derivative; call it "
              "under torch.no_grad(), as torch.optim does");
}

void row_sparse_adam_autograd(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                              const at::Tensor& rows, const at::Tensor& grad_rows, double lr,
                              double beta1, double beta2, double eps, int64_t step,
                              bool validate) {
  static const auto op = typed_op<decltype(row_sparse_adam_)>("dmfx::row_sparse_adam_");
  if (at::GradMode::is_enabled()) {
    refuse_requires_grad("weight", weight, true);
    refuse_requires_grad("exp_avg", exp_avg, true);
    refuse_requires_grad("exp_avg_sq", exp_avg_sq, true);
    refuse_requires_grad("grad_rows", grad_rows, false);
  }
  at::AutoDispatchBelowAutograd guard;
  op.call(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps, step, validate);
}

// ADInplaceOrView: bumps the version counters of the three tensors written, as torch's in-place
// ops do (the dispatcher does not for a C++ custom op, whatever its schema's Tensor(a!) says), so
// a backward through a graph that saved one of them before the update raises instead of
// silently using the new values.
void row_sparse_adam_inplace(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                             const at::Tensor& rows, const at::Tensor& grad_rows, double lr,
                             double beta1, double beta2, double eps, int64_t step,
                             bool validate) {
  static const auto op = typed_op<decltype(row_sparse_adam_)>("dmfx::row_sparse_adam_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps, step, validate);
  }
  for (const at::Tensor* t : {&weight, &exp_avg, &exp_avg_sq}) {
    torch::autograd::impl::bump_version(*t);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) { m.impl("row_sparse_adam_", &row_sparse_adam_autograd); }

TORCH_LIBRARY_IMPL(dmfx, ADInplaceOrView, m) {
  m.impl("row_sparse_adam_", &row_sparse_adam_inplace);
}

TORCH_LIBRARY_IMPL(dmfx, CPU, m) { m.impl("row_sparse_adam_", &row_sparse_adam_); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dmfx, CUDA, m) { m.impl("row_sparse_adam_", &row_sparse_adam_); }
#endif

}  // namespace dmfx
