// hybrid_bce_loss: argument checks, the CPU / CUDA registrations and autograd.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "checks.h"
#include "common/hybrid_bce.h"
#include "dispatch.h"
#include "reduction.h"
#include "output_alloc.h"
#include "cpu/hybrid_bce_loss_cpu.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/hybrid_bce_loss_cuda.h"
#endif

namespace dmfx {

namespace {

constexpr const char* kOp = "dmfx.hybrid_bce_loss";

// Elements per CPU task: a forward element costs an exp, a log1p and a division in SIMD lanes
// (~2 ns, float, AVX2), a backward element an exp and a division (~0.7 ns), so a task of this many
// runs for several microseconds, well above the cost of waking a thread.
constexpr int64_t kForwardGrain = at::internal::GRAIN_SIZE / 8;
constexpr int64_t kBackwardGrain = at::internal::GRAIN_SIZE / 4;

void check_inputs(const at::Tensor& logits, const at::Tensor& implicit_target,
                  const at::Tensor& explicit_target, double eta) {
  check_floating(kOp, "logits", logits);
  check_same_dtype(kOp, "implicit_target", implicit_target, "logits", logits);
  check_same_dtype(kOp, "explicit_target", explicit_target, "logits", logits);
  check_same_device(kOp, "implicit_target", implicit_target, "logits", logits);
  check_same_device(kOp, "explicit_target", explicit_target, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() == 1, kOp, ": logits must be 1-D [batch], got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(implicit_target.sizes() == logits.sizes(), kOp,
                    ": implicit_target must have the shape of logits ", logits.sizes(), ", got ",
                    implicit_target.sizes());
  TORCH_CHECK_VALUE(explicit_target.sizes() == logits.sizes(), kOp,
                    ": explicit_target must have the shape of logits ", logits.sizes(), ", got ",
                    explicit_target.sizes());
  // Checked on every call, validate or not: it is a host value, so the check costs nothing.
  TORCH_CHECK_VALUE(eta >= 0 && eta <= 1, kOp, ": eta must lie in [0, 1], got ", eta);
}

// Raises for a non-empty record {kTargetOutOfRange, element, which target}. On CUDA this copies
// the 24-byte record to the host (the op's one sync, made only when asked to validate); reading
// the bad value for the message costs a second copy, on the error path only.
void raise_if_bad_target(const at::Tensor& record, const at::Tensor& implicit_target,
                         const at::Tensor& explicit_target) {
  const at::Tensor host = record.is_cpu() ? record : record.cpu();
  const int64_t* r = host.data_ptr<int64_t>();
  if (r[0] == kOk) return;
  TORCH_CHECK(r[0] == kTargetOutOfRange, kOp, ": kernel reported unknown error code ", r[0]);
  const bool implicit = r[2] == kImplicitTarget;
  const at::Tensor& target = implicit ? implicit_target : explicit_target;
  TORCH_CHECK_VALUE(false, kOp, ": ", implicit ? "implicit_target" : "explicit_target", "[",
                    r[1], "] = ", target[r[1]].item<double>(), " is not in [0, 1]; ",
                    implicit ? "implicit targets are 1 (observed) or 0 (sampled negative)"
                             : "explicit targets are rating / max rating, 0 for sampled "
                               "negatives");
}

at::Tensor forward(const at::Tensor& logits_, const at::Tensor& implicit_target_,
                   const at::Tensor& explicit_target_, double eta,
                   c10::string_view reduction_name, bool validate) {
  check_inputs(logits_, implicit_target_, explicit_target_, eta);
  const Reduction reduction = parse_reduction(kOp, reduction_name);
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor implicit_target = implicit_target_.contiguous();
  const at::Tensor explicit_target = explicit_target_.contiguous();
  const int64_t batch = logits.size(0);
  // Without validation no record at all: the kernels skip the checks (and on CUDA, the memset).
  at::Tensor error = validate ? new_error_record(logits.device()) : at::Tensor();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "hybrid_bce_loss", [&] {
    const scalar_t* xp = logits.data_ptr<scalar_t>();
    const scalar_t* ip = implicit_target.data_ptr<scalar_t>();
    const scalar_t* ep = explicit_target.data_ptr<scalar_t>();
    int64_t* e = validate ? error.data_ptr<int64_t>() : nullptr;
    if (logits.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(logits.device());
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
      if (reduction == Reduction::kNone) {
        result = at::empty({batch}, logits.options());
        C10_CUDA_CHECK(cuda::hybrid_bce_loss_forward<scalar_t>(
            xp, ip, ep, batch, eta, result.data_ptr<scalar_t>(), nullptr, false, nullptr, e,
            stream));
      } else {
        result = at::empty({}, logits.options());
        const at::Tensor workspace = at::empty({cuda::hybrid_bce_loss_workspace_size(batch)},
                                               logits.options().dtype(at::kDouble));
        C10_CUDA_CHECK(cuda::hybrid_bce_loss_forward<scalar_t>(
            xp, ip, ep, batch, eta, nullptr, result.data_ptr<scalar_t>(),
            reduction == Reduction::kMean, workspace.data_ptr<double>(), e, stream));
      }
#endif
    } else if (reduction == Reduction::kNone) {
      result = at::empty({batch}, logits.options());
      scalar_t* lp = result.data_ptr<scalar_t>();
      at::parallel_for(0, batch, kForwardGrain, [&](int64_t b0, int64_t b1) {
        cpu::hybrid_bce_loss_forward(xp, ip, ep, eta, lp, b0, b1, e);
      });
    } else {
      // Partial sums in double, combined in a fixed order: deterministic for a thread count.
      const double total = at::parallel_reduce(
          0, batch, kForwardGrain, 0.0,
          [&](int64_t b0, int64_t b1, double acc) {
            return acc + cpu::hybrid_bce_loss_forward<scalar_t>(xp, ip, ep, eta, nullptr, b0, b1,
                                                                 e);
          },
          std::plus<double>());
      // The mean of an empty batch is 0 / 0 = NaN, as torch's mean and cosine_nce_loss give.
      const double value = reduction == Reduction::kSum ? total : total / batch;
      result = at::scalar_tensor(value, logits.options());
    }
  });
  if (validate) raise_if_bad_target(error, implicit_target_, explicit_target_);
  return result;
}

at::Tensor backward(const at::Tensor& grad_, const at::Tensor& logits_,
                    const at::Tensor& implicit_target_, const at::Tensor& explicit_target_,
                    double eta, c10::string_view reduction_name) {
  check_inputs(logits_, implicit_target_, explicit_target_, eta);
  const Reduction reduction = parse_reduction(kOp, reduction_name);
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor implicit_target = implicit_target_.contiguous();
  const at::Tensor explicit_target = explicit_target_.contiguous();
  const int64_t batch = logits.size(0);
  check_same_device(kOp, "grad", grad_, "logits", logits);
  const UpstreamGrad upstream =
      upstream_grad(kOp, grad_, logits.scalar_type(), batch, reduction, reduction_name);
  const at::Tensor& grad = upstream.grad;
  const int64_t grad_stride = upstream.stride;
  const double grad_scale = upstream.scale;
  at::Tensor grad_logits = empty_output(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "hybrid_bce_loss_backward", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = logits.data_ptr<scalar_t>();
    const scalar_t* ip = implicit_target.data_ptr<scalar_t>();
    const scalar_t* ep = explicit_target.data_ptr<scalar_t>();
    scalar_t* out = grad_logits.data_ptr<scalar_t>();
    if (logits.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(logits.device());
      C10_CUDA_CHECK(cuda::hybrid_bce_loss_backward(gp, grad_stride, grad_scale, xp, ip, ep,
                                                    batch, eta, out,
                                                    c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      at::parallel_for(0, batch, kBackwardGrain, [&](int64_t b0, int64_t b1) {
        cpu::hybrid_bce_loss_backward(gp, grad_stride, grad_scale, xp, ip, ep, eta, out, b0, b1);
      });
    }
  });
  return grad_logits;
}

// Autograd in C++ rather than torch.library.register_autograd, as for cosine_nce_loss: the
// Python formula would cost more per call than the kernels of a training batch.
class HybridBceLossFunction : public torch::autograd::Function<HybridBceLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& implicit_target, const at::Tensor& explicit_target,
                            double eta, c10::string_view reduction, bool validate) {
    static const auto op = typed_op<decltype(dmfx::forward)>("dmfx::hybrid_bce_loss");
    ctx->save_for_backward({logits, implicit_target, explicit_target});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["reduction"] = std::string(reduction);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(logits, implicit_target, explicit_target, eta, reduction, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op =
        typed_op<decltype(dmfx::backward)>("dmfx::hybrid_bce_loss_backward");
    const auto saved = ctx->get_saved_variables();
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
      if (ctx->needs_input_grad(1)) grad_implicit = d_target * eta;
      if (ctx->needs_input_grad(2)) grad_explicit = d_target * (1 - eta);
    }
    return {grad_logits, grad_implicit, grad_explicit, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& logits, const at::Tensor& implicit_target,
                            const at::Tensor& explicit_target, double eta,
                            c10::string_view reduction, bool validate) {
  return HybridBceLossFunction::apply(logits, implicit_target, explicit_target, eta, reduction,
                                      validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("hybrid_bce_loss", &forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("hybrid_bce_loss", &forward);
  m.impl("hybrid_bce_loss_backward", &backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("hybrid_bce_loss", &forward);
  m.impl("hybrid_bce_loss_backward", &backward);
}
#endif

}  // namespace dmfx
