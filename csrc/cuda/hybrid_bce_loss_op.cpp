// hybrid_bce_loss on CUDA: the kernels of hybrid_bce_loss_cuda.cu, registered for the CUDA
// dispatch key (compiled in CUDA builds only).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../hybrid_bce_loss.h"
#include "hybrid_bce_loss_cuda.h"

namespace dmfx {
namespace hybrid_bce_loss {
namespace {

at::Tensor forward(const at::Tensor& logits_, const at::Tensor& implicit_target_,
                   const at::Tensor& explicit_target_, double eta,
                   c10::string_view reduction_name, bool validate) {
  const Inputs in(logits_, implicit_target_, explicit_target_, eta, reduction_name);
  const int64_t batch = in.batch;
  const c10::cuda::CUDAGuard guard(in.logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor error = new_error_record(in.logits.device(), validate);
  int64_t* e = error_ptr(error);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "hybrid_bce_loss", [&] {
    const scalar_t* xp = in.logits.data_ptr<scalar_t>();
    const scalar_t* ip = in.implicit_target.data_ptr<scalar_t>();
    const scalar_t* ep = in.explicit_target.data_ptr<scalar_t>();
    if (in.reduction == Reduction::kNone) {
      result = at::empty({batch}, in.logits.options());
      C10_CUDA_CHECK(cuda::hybrid_bce_loss_forward<scalar_t>(
          xp, ip, ep, batch, eta, result.data_ptr<scalar_t>(), nullptr, false, nullptr, e,
          stream));
    } else {
      result = at::empty({}, in.logits.options());
      const at::Tensor workspace = at::empty({cuda::hybrid_bce_loss_workspace_size(batch)},
                                             in.logits.options().dtype(at::kDouble));
      C10_CUDA_CHECK(cuda::hybrid_bce_loss_forward<scalar_t>(
          xp, ip, ep, batch, eta, nullptr, result.data_ptr<scalar_t>(),
          in.reduction == Reduction::kMean, workspace.data_ptr<double>(), e, stream));
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
  const c10::cuda::CUDAGuard guard(in.logits.device());
  at::Tensor grad_logits = at::empty_like(in.logits);
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "hybrid_bce_loss_backward", [&] {
    C10_CUDA_CHECK(cuda::hybrid_bce_loss_backward(
        up.grad.data_ptr<scalar_t>(), up.stride, up.scale, in.logits.data_ptr<scalar_t>(),
        in.implicit_target.data_ptr<scalar_t>(), in.explicit_target.data_ptr<scalar_t>(),
        in.batch, eta, grad_logits.data_ptr<scalar_t>(),
        c10::cuda::getCurrentCUDAStream().stream()));
  });
  return grad_logits.to(logits_.scalar_type());
}

}  // namespace
}  // namespace hybrid_bce_loss

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("hybrid_bce_loss", &hybrid_bce_loss::forward);
  m.impl("hybrid_bce_loss_backward", &hybrid_bce_loss::backward);
}

}  // namespace dmfx
