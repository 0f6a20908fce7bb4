// sparse_rows_matmul: autograd and autocast, the device-independent wrappers. They call the op
// back through the dispatcher, which picks the CPU (csrc/cpu/sparse_rows_matmul_op.cpp) or CUDA
// (csrc/cuda/sparse_rows_matmul_op.cpp) kernel.
#include <torch/autograd.h>
#include <torch/library.h>

#include "once_differentiable.h"
#include "redispatch.h"
#include "sparse_rows_matmul.h"

namespace dmfx {
namespace sparse_rows_matmul {
namespace {

// Autograd in C++ rather than torch.library.register_autograd: the Python formula cost ~30 us
// a call on each side (measured), as much as the kernels of a small batch.
// Named as torch names its nodes: grad_fn reprs and profiles show this name.
class SparseRowsMatmulBackward : public torch::autograd::Function<SparseRowsMatmulBackward> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& indptr,
                            const at::Tensor& indices, const c10::optional<at::Tensor>& values,
                            const at::Tensor& rows, const at::Tensor& weight, bool validate) {
    static const auto op = typed_op<ForwardFn>("dmfx::sparse_rows_matmul");
    ctx->save_for_backward({indptr, indices, values.value_or(at::Tensor()), rows, weight});
    ctx->saved_data["validate"] = validate;
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(indptr, indices, values, rows, weight, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto values_op =
        typed_op<BackwardValuesFn>("dmfx::sparse_rows_matmul_backward_values");
    // The schema's row count is a SymInt (the kernels take it as int64_t), so that tracing with
    // dynamic shapes can pass a symbolic size.
    static const auto weight_op =
        typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const at::Tensor&, const at::Tensor&, c10::SymInt, bool)>(
            "dmfx::sparse_rows_matmul_backward_weight");
    const auto saved = ctx->get_saved_variables();
    check_not_double_backward(kOp, grads, saved);
    const at::Tensor &indptr = saved[0], &indices = saved[1], &rows = saved[3],
                     &weight = saved[4];
    const bool has_values = saved[2].defined();
    const c10::optional<at::Tensor> values =
        has_values ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    const at::Tensor& grad = grads[0];
    at::Tensor grad_values, grad_weight;
    // Input edges count only tensors given: indptr, indices, [values], rows, weight.
    // The forward validated the rows and indices: only the values gradient checks again, for
    // rows that share entries (csrc/sparse_rows_matmul.h, check_rows_disjoint).
    if (has_values && ctx->needs_input_grad(2)) {
      grad_values = values_op.call(indptr, indices, rows, weight, grad,
                                   ctx->saved_data["validate"].toBool());
    }
    if (ctx->needs_input_grad(has_values ? 4 : 3)) {
      grad_weight = weight_op.call(indptr, indices, values, rows, grad, weight.sym_size(0), false);
    }
    return {at::Tensor(), at::Tensor(), grad_values, at::Tensor(), grad_weight, at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& indptr, const at::Tensor& indices,
                            const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                            const at::Tensor& weight, bool validate) {
  return SparseRowsMatmulBackward::apply(indptr, indices, values, rows, weight, validate);
}

// Under autocast the op runs in float32: a float16 / bfloat16 weight or values (say, computed
// inside the autocast region) is cast up. The op is a gather bound by reading table rows, so
// half precision would buy little speed, and its sums over rows of thousands of entries would
// lose accuracy; the first-layer tables themselves are float32 parameters.
template <c10::DeviceType kDevice>
at::Tensor forward_autocast(const at::Tensor& indptr, const at::Tensor& indices,
                            const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                            const at::Tensor& weight, bool validate) {
  static const auto op = typed_op<ForwardFn>("dmfx::sparse_rows_matmul");
  const AutocastFloat32<kDevice> autocast;
  return op.call(indptr, indices, autocast.cast(values), rows, autocast.cast(weight), validate);
}

}  // namespace
}  // namespace sparse_rows_matmul

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("sparse_rows_matmul", &sparse_rows_matmul::forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, Autocast, m) {
  m.impl("sparse_rows_matmul", &sparse_rows_matmul::forward_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dmfx, AutocastCPU, m) {
  m.impl("sparse_rows_matmul", &sparse_rows_matmul::forward_autocast<c10::DeviceType::CPU>);
}

}  // namespace dmfx
