// cosine_nce_loss on CUDA: the kernels of cosine_nce_loss_cuda.cu, registered for the CUDA
// dispatch key (compiled in CUDA builds only).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cosine_nce_loss.h"
#include "cosine_nce_loss_cuda.h"

namespace dmfx {
namespace cosine_nce_loss {
namespace {

at::Tensor forward(const at::Tensor& p_, const at::Tensor& q_, const at::Tensor& target_,
                   double mu, c10::string_view reduction_name, bool validate) {
  const Inputs in(p_, q_, target_, mu, reduction_name, validate);
  const c10::cuda::CUDAGuard guard(in.p.device());
  const at::Tensor error = new_error_record(in.p.device(), validate);
  at::Tensor loss = at::empty({in.batch}, in.p.options());
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "cosine_nce_loss", [&] {
    C10_CUDA_CHECK(cuda::cosine_nce_loss_forward(
        in.p.data_ptr<scalar_t>(), in.q.data_ptr<scalar_t>(), in.target.data_ptr<scalar_t>(),
        in.batch, in.dim, mu, loss.data_ptr<scalar_t>(), error_ptr(error),
        c10::cuda::getCurrentCUDAStream().stream()));
  });
  raise_if_bad_target(error);
  return in.reduction == Reduction::kNone  ? loss
         : in.reduction == Reduction::kSum ? loss.sum()
                                           : loss.mean();
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& p_,
                                            const at::Tensor& q_, const at::Tensor& target_,
                                            double mu, c10::string_view reduction_name) {
  const Inputs in(p_, q_, target_, mu, reduction_name);
  check_same_device(kOp, "grad", grad_, "p", in.p);
  const UpstreamGrad up = upstream_grad(kOp, grad_, in.p.scalar_type(), in.batch, in.reduction,
                                        reduction_name);
  const c10::cuda::CUDAGuard guard(in.p.device());
  at::Tensor grad_p = at::empty_like(in.p), grad_q = at::empty_like(in.q);
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "cosine_nce_loss_backward", [&] {
    C10_CUDA_CHECK(cuda::cosine_nce_loss_backward(
        up.grad.data_ptr<scalar_t>(), up.stride, up.scale, in.p.data_ptr<scalar_t>(),
        in.q.data_ptr<scalar_t>(), in.target.data_ptr<scalar_t>(), in.batch, in.dim, mu,
        grad_p.data_ptr<scalar_t>(), grad_q.data_ptr<scalar_t>(),
        c10::cuda::getCurrentCUDAStream().stream()));
  });
  return {grad_p.to(p_.scalar_type()), grad_q.to(q_.scalar_type())};
}

}  // namespace
}  // namespace cosine_nce_loss

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("cosine_nce_loss", &cosine_nce_loss::forward);
  m.impl("cosine_nce_loss_backward", &cosine_nce_loss::backward);
}

}  // namespace dmfx
