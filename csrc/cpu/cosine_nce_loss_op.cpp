// cosine_nce_loss on CPU: the kernels of cosine_nce_loss_cpu.cpp over torch's thread pool,
// registered for the CPU dispatch key.
#include <torch/library.h>

#include "../cosine_nce_loss.h"
#include "cosine_nce_loss_cpu.h"
#include "output_alloc.h"
#include "parallel.h"

namespace dmfx {
namespace cosine_nce_loss {
namespace {

at::Tensor forward(const at::Tensor& p_, const at::Tensor& q_, const at::Tensor& target_,
                   double mu, c10::string_view reduction_name, bool validate) {
  const Inputs in(p_, q_, target_, mu, reduction_name, validate);
  const at::Tensor error = new_error_record(in.p.device(), validate);
  int64_t* e = error_ptr(error);
  const int64_t batch = in.batch, dim = in.dim, grain = cpu::grain(3 * dim + 16);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "cosine_nce_loss", [&] {
    const scalar_t* pp = in.p.data_ptr<scalar_t>();
    const scalar_t* qp = in.q.data_ptr<scalar_t>();
    const scalar_t* tp = in.target.data_ptr<scalar_t>();
    if (in.reduction == Reduction::kNone) {
      result = at::empty({batch}, in.p.options());
      scalar_t* lp = result.data_ptr<scalar_t>();
      at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
        cpu::cosine_nce_loss_forward(pp, qp, tp, dim, mu, lp, b0, b1, e);
      });
    } else {
      const double total = cpu::blocked_sum(batch, [&](int64_t b0, int64_t b1) {
        return cpu::cosine_nce_loss_forward<scalar_t>(pp, qp, tp, dim, mu, nullptr, b0, b1, e);
      });
      const double value = in.reduction == Reduction::kSum ? total : total / batch;
      result = at::scalar_tensor(value, in.p.options());
    }
  });
  raise_if_bad_target(error);
  return result;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& p_,
                                            const at::Tensor& q_, const at::Tensor& target_,
                                            double mu, c10::string_view reduction_name) {
  const Inputs in(p_, q_, target_, mu, reduction_name);
  check_same_device(kOp, "grad", grad_, "p", in.p);
  const UpstreamGrad up = upstream_grad(kOp, grad_, in.p.scalar_type(), in.batch, in.reduction,
                                        reduction_name);
  const int64_t dim = in.dim;
  at::Tensor grad_p = empty_output(in.p.sizes(), in.p.options());
  at::Tensor grad_q = empty_output(in.q.sizes(), in.q.options());
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "cosine_nce_loss_backward", [&] {
    const scalar_t* gp = up.grad.data_ptr<scalar_t>();
    const scalar_t* pp = in.p.data_ptr<scalar_t>();
    const scalar_t* qp = in.q.data_ptr<scalar_t>();
    const scalar_t* tp = in.target.data_ptr<scalar_t>();
    scalar_t* out_p = grad_p.data_ptr<scalar_t>();
    scalar_t* out_q = grad_q.data_ptr<scalar_t>();
    at::parallel_for(0, in.batch, cpu::grain(5 * dim + 16), [&](int64_t b0, int64_t b1) {
      cpu::cosine_nce_loss_backward(gp, up.stride, up.scale, pp, qp, tp, dim, mu, out_p, out_q,
                                    b0, b1);
    });
  });
  return {grad_p.to(p_.scalar_type()), grad_q.to(q_.scalar_type())};
}

}  // namespace
}  // namespace cosine_nce_loss

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("cosine_nce_loss", &cosine_nce_loss::forward);
  m.impl("cosine_nce_loss_backward", &cosine_nce_loss::backward);
}

}  // namespace dmfx
