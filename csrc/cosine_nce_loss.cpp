// cosine_nce_loss: autograd and autocast, the device-independent wrappers. They call the ops back
// through the dispatcher, which picks the CPU (csrc/cpu/cosine_nce_loss_op.cpp) or CUDA
// (csrc/cuda/cosine_nce_loss_op.cpp) kernel.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "cosine_nce_loss.h"
#include "once_differentiable.h"
#include "redispatch.h"

namespace dmfx {
namespace cosine_nce_loss {
namespace {

// clamp(cos(p_b, q_b), mu, 1 - mu), the cosine of a zero vector 0: dmfx.reference.clamped_cosine.
at::Tensor clamped_cosine(const at::Tensor& p, const at::Tensor& q, double mu) {
  const at::Tensor dot = (p * q).sum(1);
  const at::Tensor denom = at::linalg_vector_norm(p, 2, {1}) * at::linalg_vector_norm(q, 2, {1});
  // == 0, not > 0: a NaN norm must give a NaN cosine (as in the kernels), not the cosine 0.
  const at::Tensor zero = denom == 0;
  const at::Tensor cos =
      at::where(zero, at::zeros_like(dot), dot / at::where(zero, at::ones_like(denom), denom));
  return cos.clamp(mu, 1 - mu);
}

// Autograd in C++ rather than torch.library.register_autograd: the Python formula cost ~30 us
// a call on each side (measured), as much as the kernels of a small batch.
// Named as torch names its nodes: grad_fn reprs and profiles show this name.
class CosineNceLossBackward : public torch::autograd::Function<CosineNceLossBackward> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& p,
                            const at::Tensor& q, const at::Tensor& target, double mu,
                            c10::string_view reduction, bool validate) {
    static const auto op = typed_op<ForwardFn>("dmfx::cosine_nce_loss");
    ctx->save_for_backward({p, q, target});
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["reduction"] = std::string(reduction);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(p, q, target, mu, reduction, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = typed_op<BackwardFn>("dmfx::cosine_nce_loss_backward");
    const auto saved = ctx->get_saved_variables();
    check_not_double_backward(kOp, grads, saved);
    const at::Tensor &p = saved[0], &q = saved[1], &target = saved[2];
    const double mu = ctx->saved_data["mu"].toDouble();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const at::Tensor& grad = grads[0];
    at::Tensor grad_p, grad_q, grad_target;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      std::tie(grad_p, grad_q) = op.call(grad, p, q, target, mu, reduction);
    }
    if (ctx->needs_input_grad(2)) {
      // Rarely wanted (targets are data), so a composite: d loss / d t = log(1 - yhat) - log yhat.
      const at::ScalarType dtype = compute_dtype(p.scalar_type());
      const at::Tensor yhat = clamped_cosine(p.detach().to(dtype), q.detach().to(dtype), mu);
      const at::Tensor scale =
          reduction == "mean" ? grad / c10::Scalar(p.sym_size(0)) : grad;
      grad_target = (scale * (at::log1p(-yhat) - at::log(yhat))).to(target.scalar_type());
    }
    return {grad_p, grad_q, grad_target, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& p, const at::Tensor& q, const at::Tensor& target,
                            double mu, c10::string_view reduction, bool validate) {
  return CosineNceLossBackward::apply(p, q, target, mu, reduction, validate);
}

// Under autocast the loss runs in float32, as torch's own losses do: float16 / bfloat16 towers
// are cast up, so p and q from two towers of different dtypes meet in one dtype.
template <c10::DeviceType kDevice>
at::Tensor forward_autocast(const at::Tensor& p, const at::Tensor& q, const at::Tensor& target,
                            double mu, c10::string_view reduction, bool validate) {
  static const auto op = typed_op<ForwardFn>("dmfx::cosine_nce_loss");
  const AutocastFloat32<kDevice> autocast;
  return op.call(autocast.cast(p), autocast.cast(q), autocast.cast(target), mu, reduction,
                 validate);
}

}  // namespace
}  // namespace cosine_nce_loss

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("cosine_nce_loss", &cosine_nce_loss::forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, Autocast, m) {
  m.impl("cosine_nce_loss", &cosine_nce_loss::forward_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dmfx, AutocastCPU, m) {
  m.impl("cosine_nce_loss", &cosine_nce_loss::forward_autocast<c10::DeviceType::CPU>);
}

}  // namespace dmfx
