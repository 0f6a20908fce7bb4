// hybrid_bce_loss: autograd and autocast, the device-independent wrappers. They call the ops back
// through the dispatcher, which picks the CPU (csrc/cpu/hybrid_bce_loss_op.cpp) or CUDA
// (csrc/cuda/hybrid_bce_loss_op.cpp) kernel.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "hybrid_bce_loss.h"
#include "once_differentiable.h"
#include "redispatch.h"

namespace dmfx {
namespace hybrid_bce_loss {
namespace {

// Autograd in C++ rather than torch.library.register_autograd, as for cosine_nce_loss: the
// Python formula would cost more per call than the kernels of a training batch.
// Named as torch names its nodes: grad_fn reprs and profiles show this name.
class HybridBceLossBackward : public torch::autograd::Function<HybridBceLossBackward> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& implicit_target, const at::Tensor& explicit_target,
                            double eta, c10::string_view reduction, bool validate) {
    static const auto op = typed_op<ForwardFn>("dmfx::hybrid_bce_loss");
    ctx->save_for_backward({logits, implicit_target, explicit_target});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["reduction"] = std::string(reduction);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(logits, implicit_target, explicit_target, eta, reduction, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = typed_op<BackwardFn>("dmfx::hybrid_bce_loss_backward");
    const auto saved = ctx->get_saved_variables();
    check_not_double_backward(kOp, grads, saved);
    const at::Tensor &logits = saved[0], &implicit_target = saved[1], &explicit_target = saved[2];
    const double eta = ctx->saved_data["eta"].toDouble();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const at::Tensor& grad = grads[0];
    at::Tensor grad_logits, grad_implicit, grad_explicit;
    if (ctx->needs_input_grad(0)) {
      grad_logits = op.call(grad, logits, implicit_target, explicit_target, eta, reduction);
    }
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      // Rarely wanted (targets are data), so a composite: the loss is linear in the blended
      // target t with d loss / d t = -logit, and t = eta ir + (1 - eta) e.
      const at::Tensor scale =
          reduction == "mean" ? grad / c10::Scalar(logits.sym_size(0)) : grad;
      const at::Tensor d_target = -(scale * logits.detach());
      if (ctx->needs_input_grad(1)) {
        grad_implicit = (d_target * eta).to(implicit_target.scalar_type());
      }
      if (ctx->needs_input_grad(2)) {
        grad_explicit = (d_target * (1 - eta)).to(explicit_target.scalar_type());
      }
    }
    return {grad_logits, grad_implicit, grad_explicit, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& logits, const at::Tensor& implicit_target,
                            const at::Tensor& explicit_target, double eta,
                            c10::string_view reduction, bool validate) {
  return HybridBceLossBackward::apply(logits, implicit_target, explicit_target, eta, reduction,
                                      validate);
}

// Under autocast the loss runs in float32, as torch's binary_cross_entropy_with_logits does:
// float16 / bfloat16 logits from the autocast region meet float32 targets from the data.
template <c10::DeviceType kDevice>
at::Tensor forward_autocast(const at::Tensor& logits, const at::Tensor& implicit_target,
                            const at::Tensor& explicit_target, double eta,
                            c10::string_view reduction, bool validate) {
  static const auto op = typed_op<ForwardFn>("dmfx::hybrid_bce_loss");
  const AutocastFloat32<kDevice> autocast;
  return op.call(autocast.cast(logits), autocast.cast(implicit_target),
                 autocast.cast(explicit_target), eta, reduction, validate);
}

}  // namespace
}  // namespace hybrid_bce_loss

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("hybrid_bce_loss", &hybrid_bce_loss::forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, Autocast, m) {
  m.impl("hybrid_bce_loss", &hybrid_bce_loss::forward_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dmfx, AutocastCPU, m) {
  m.impl("hybrid_bce_loss", &hybrid_bce_loss::forward_autocast<c10::DeviceType::CPU>);
}

}  // namespace dmfx
