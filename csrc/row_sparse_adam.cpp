// row_sparse_adam_: the device-independent wrappers of an in-place op, autograd (refusal) and the
// version counters. They call the op back through the dispatcher, which picks the CPU
// (csrc/cpu/row_sparse_adam_op.cpp) or CUDA (csrc/cuda/row_sparse_adam_op.cpp) kernel.
#include <torch/autograd.h>
#include <torch/library.h>

#include "redispatch.h"
#include "row_sparse_adam.h"

namespace dmfx {
namespace row_sparse_adam {
namespace {

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

void update_autograd(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                     const at::Tensor& rows, const at::Tensor& grad_rows, double lr, double beta1,
                     double beta2, double eps, int64_t step, bool validate) {
  static const auto op = typed_op<Fn>("dmfx::row_sparse_adam_");
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
void update_inplace(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                    const at::Tensor& rows, const at::Tensor& grad_rows, double lr, double beta1,
                    double beta2, double eps, int64_t step, bool validate) {
  static const auto op = typed_op<Fn>("dmfx::row_sparse_adam_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps, step, validate);
  }
  for (const at::Tensor* t : {&weight, &exp_avg, &exp_avg_sq}) {
    torch::autograd::impl::bump_version(*t);
  }
}

}  // namespace
}  // namespace row_sparse_adam

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("row_sparse_adam_", &row_sparse_adam::update_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, ADInplaceOrView, m) {
  m.impl("row_sparse_adam_", &row_sparse_adam::update_inplace);
}

}  // namespace dmfx
