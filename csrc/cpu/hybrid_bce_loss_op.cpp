// hybrid_bce_loss on CPU: the kernels of hybrid_bce_loss_cpu.cpp over torch's thread pool,
// registered for the CPU dispatch key.
#include <torch/library.h>

#include "../hybrid_bce_loss.h"
#include "hybrid_bce_loss_cpu.h"
#include "output_alloc.h"
#include "parallel.h"

namespace dmfx {
namespace hybrid_bce_loss {
namespace {

// Elements per task: a forward element costs an exp, a log1p and a division in SIMD lanes
// (~2 ns, float, AVX2), a backward element an exp and a division (~0.7 ns), so a task of this many
// runs for several microseconds, well above the cost of waking a thread.
const int64_t kForwardGrain = cpu::grain(8);
const int64_t kBackwardGrain = cpu::grain(4);

at::Tensor forward(const at::Tensor& logits_, const at::Tensor& implicit_target_,
                   const at::Tensor& explicit_target_, double eta,
                   c10::string_view reduction_name, bool validate) {
  const Inputs in(logits_, implicit_target_, explicit_target_, eta, reduction_name);
  const int64_t batch = in.batch;
  const at::Tensor error = new_error_record(in.logits.device(), validate);
  int64_t* e = error_ptr(error);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "hybrid_bce_loss", [&] {
    const scalar_t* xp = in.logits.data_ptr<scalar_t>();
    const scalar_t* ip = in.implicit_target.data_ptr<scalar_t>();
    const scalar_t* ep = in.explicit_target.data_ptr<scalar_t>();
    if (in.reduction == Reduction::kNone) {
      result = at::empty({batch}, in.logits.options());
      scalar_t* lp = result.data_ptr<scalar_t>();
      at::parallel_for(0, batch, kForwardGrain, [&](int64_t b0, int64_t b1) {
        cpu::hybrid_bce_loss_forward(xp, ip, ep, eta, lp, b0, b1, e);
      });
    } else {
      const double total = cpu::blocked_sum(batch, [&](int64_t b0, int64_t b1) {
        return cpu::hybrid_bce_loss_forward<scalar_t>(xp, ip, ep, eta, nullptr, b0, b1, e);
      });
      // The mean of an empty batch is 0 / 0 = NaN, as torch's mean and cosine_nce_loss give.
      const double value = in.reduction == Reduction::kSum ? total : total / batch;
      result = at::scalar_tensor(value, in.logits.options());
    }
  });
  raise_if_bad_target(error, in.implicit_target, in.explicit_target);
  return result;
}

at::Tensor backward(const at::Tensor& grad_, const at::Tensor& logits_,
                    const at::Tensor& implicit_target_, const at::Tensor& explicit_target_,
                    double eta, c10::string_view reduction_name) {
  const Inputs in(logits_, implicit_target_, explicit_target_, eta, reduction_name);
  check_same_device(kOp, "grad", grad_, "logits", in.logits);
  const UpstreamGrad up = upstream_grad(kOp, grad_, in.logits.scalar_type(), in.batch,
                                        in.reduction, reduction_name);
  at::Tensor grad_logits = empty_output(in.logits.sizes(), in.logits.options());
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "hybrid_bce_loss_backward", [&] {
    const scalar_t* gp = up.grad.data_ptr<scalar_t>();
    const scalar_t* xp = in.logits.data_ptr<scalar_t>();
    const scalar_t* ip = in.implicit_target.data_ptr<scalar_t>();
    const scalar_t* ep = in.explicit_target.data_ptr<scalar_t>();
    scalar_t* out = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, in.batch, kBackwardGrain, [&](int64_t b0, int64_t b1) {
      cpu::hybrid_bce_loss_backward(gp, up.stride, up.scale, xp, ip, ep, eta, out, b0, b1);
    });
  });
  return grad_logits.to(logits_.scalar_type());
}

}  // namespace
}  // namespace hybrid_bce_loss

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("hybrid_bce_loss", &hybrid_bce_loss::forward);
  m.impl("hybrid_bce_loss_backward", &hybrid_bce_loss::backward);
}

}  // namespace dmfx
