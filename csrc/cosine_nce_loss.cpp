// cosine_nce_loss: argument checks, the CPU / CUDA registrations and autograd.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "checks.h"
#include "dispatch.h"
#include "reduction.h"
#include "output_alloc.h"
#include "cpu/cosine_nce_loss_cpu.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/cosine_nce_loss_cuda.h"
#endif

namespace dmfx {

namespace {

constexpr const char* kOp = "dmfx.cosine_nce_loss";

// Checks p, q, target and mu; returns target contiguous and in p's dtype.
at::Tensor check_inputs(const at::Tensor& p, const at::Tensor& q, const at::Tensor& target,
                        double mu) {
  check_floating(kOp, "p", p);
  check_same_dtype(kOp, "q", q, "p", p);
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()), kOp,
                   ": target must be a floating tensor, got ", target.scalar_type());
  check_same_device(kOp, "q", q, "p", p);
  check_same_device(kOp, "target", target, "p", p);
  TORCH_CHECK_VALUE(p.dim() == 2, kOp, ": p must be 2-D [batch, dim], got shape ", p.sizes());
  TORCH_CHECK_VALUE(q.sizes() == p.sizes(), kOp, ": q must have the shape of p ", p.sizes(),
                    ", got ", q.sizes());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == p.size(0), kOp,
                    ": target must be 1-D with one entry per row of p (", p.size(0),
                    "), got shape ", target.sizes());
  TORCH_CHECK_VALUE(mu > 0 && mu < 0.5, kOp, ": mu must lie in (0, 0.5) so that ",
                    "mu < 1 - mu, got ", mu);
  return target.to(p.scalar_type()).contiguous();
}

at::Tensor forward(const at::Tensor& p_, const at::Tensor& q_, const at::Tensor& target_,
                   double mu, c10::string_view reduction_name, bool validate) {
  const at::Tensor target = check_inputs(p_, q_, target_, mu);
  const Reduction reduction = parse_reduction(kOp, reduction_name);
  const at::Tensor p = p_.contiguous(), q = q_.contiguous();
  const int64_t batch = p.size(0), dim = p.size(1);
  at::Tensor error = new_error_record(p.device());
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "cosine_nce_loss", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    int64_t* e = error.data_ptr<int64_t>();
    if (p.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(p.device());
      at::Tensor loss = at::empty({batch}, p.options());
      C10_CUDA_CHECK(cuda::cosine_nce_loss_forward(pp, qp, tp, batch, dim, mu,
                                                   loss.data_ptr<scalar_t>(), e,
                                                   c10::cuda::getCurrentCUDAStream().stream()));
      result = reduction == Reduction::kNone ? loss
               : reduction == Reduction::kSum ? loss.sum()
                                               : loss.mean();
#endif
    } else if (reduction == Reduction::kNone) {
      result = at::empty({batch}, p.options());
      scalar_t* lp = result.data_ptr<scalar_t>();
      at::parallel_for(0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (3 * dim + 16)),
                       [&](int64_t b0, int64_t b1) {
                         cpu::cosine_nce_loss_forward(pp, qp, tp, dim, mu, lp, b0, b1, e);
                       });
    } else {
      // Partial sums in double, combined in a fixed order: deterministic for a thread count.
      const double total = at::parallel_reduce(
          0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (3 * dim + 16)), 0.0,
          [&](int64_t b0, int64_t b1, double acc) {
            return acc + cpu::cosine_nce_loss_forward<scalar_t>(pp, qp, tp, dim, mu, nullptr, b0,
                                                                b1, e);
          },
          std::plus<double>());
      const double value = reduction == Reduction::kSum ? total : total / batch;
      result = at::scalar_tensor(value, p.options());
    }
  });
  if (validate) raise_if_error(kOp, error, CsrNames{"p", batch, 0, 0, ""});
  return result;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& p_,
                                            const at::Tensor& q_, const at::Tensor& target_,
                                            double mu, c10::string_view reduction_name) {
  const at::Tensor target = check_inputs(p_, q_, target_, mu);
  const Reduction reduction = parse_reduction(kOp, reduction_name);
  const at::Tensor p = p_.contiguous(), q = q_.contiguous();
  const int64_t batch = p.size(0), dim = p.size(1);
  check_same_device(kOp, "grad", grad_, "p", p);
  const UpstreamGrad upstream =
      upstream_grad(kOp, grad_, p.scalar_type(), batch, reduction, reduction_name);
  const at::Tensor& grad = upstream.grad;
  const int64_t grad_stride = upstream.stride;
  const double grad_scale = upstream.scale;
  at::Tensor grad_p = empty_output(p.sizes(), p.options());
  at::Tensor grad_q = empty_output(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "cosine_nce_loss_backward", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    scalar_t* out_p = grad_p.data_ptr<scalar_t>();
    scalar_t* out_q = grad_q.data_ptr<scalar_t>();
    if (p.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(p.device());
      C10_CUDA_CHECK(cuda::cosine_nce_loss_backward(gp, grad_stride, grad_scale, pp, qp, tp, batch,
                                                    dim, mu, out_p, out_q,
                                                    c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      at::parallel_for(0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (5 * dim + 16)),
                       [&](int64_t b0, int64_t b1) {
                         cpu::cosine_nce_loss_backward(gp, grad_stride, grad_scale, pp, qp, tp,
                                                       dim, mu, out_p, out_q, b0, b1);
                       });
    }
  });
  return {grad_p, grad_q};
}

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
class CosineNceLossFunction : public torch::autograd::Function<CosineNceLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& p,
                            const at::Tensor& q, const at::Tensor& target, double mu,
                            c10::string_view reduction, bool validate) {
    static const auto op = typed_op<decltype(dmfx::forward)>("dmfx::cosine_nce_loss");
    ctx->save_for_backward({p, q, target});
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["reduction"] = std::string(reduction);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(p, q, target, mu, reduction, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = typed_op<decltype(dmfx::backward)>("dmfx::cosine_nce_loss_backward");
    const auto saved = ctx->get_saved_variables();
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
      const at::Tensor yhat = clamped_cosine(p.detach(), q.detach(), mu);
      const at::Tensor scale =
          reduction == "mean" ? grad / c10::Scalar(p.sym_size(0)) : grad;
      grad_target = (scale * (at::log1p(-yhat) - at::log(yhat))).to(target.scalar_type());
    }
    return {grad_p, grad_q, grad_target, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& p, const at::Tensor& q, const at::Tensor& target,
                            double mu, c10::string_view reduction, bool validate) {
  return CosineNceLossFunction::apply(p, q, target, mu, reduction, validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("cosine_nce_loss", &forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("cosine_nce_loss", &forward);
  m.impl("cosine_nce_loss_backward", &backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("cosine_nce_loss", &forward);
  m.impl("cosine_nce_loss_backward", &backward);
}
#endif

}  // namespace dmfx
