// row_sparse_adam_ on CUDA: the kernel of row_sparse_adam_cuda.cu, registered for the CUDA
// dispatch key (compiled in CUDA builds only).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../row_sparse_adam.h"
#include "row_sparse_adam_cuda.h"

namespace dmfx {
namespace row_sparse_adam {
namespace {

void update(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq, const at::Tensor& rows,
            const at::Tensor& grad_rows, double lr, double beta1, double beta2, double eps,
            int64_t step, bool validate) {
  const Args a(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps, step,
               validate);
  const c10::cuda::CUDAGuard guard(weight.device());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "row_sparse_adam_", [&] {
    C10_CUDA_CHECK(cuda::row_sparse_adam(
        weight.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
        exp_avg_sq.data_ptr<scalar_t>(), a.weight_rows, a.width, a.rows.data_ptr<int64_t>(),
        a.grad_rows.data_ptr<scalar_t>(), a.n, a.step,
        c10::cuda::getCurrentCUDAStream().stream()));
  });
}

}  // namespace
}  // namespace row_sparse_adam

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) { m.impl("row_sparse_adam_", &row_sparse_adam::update); }

}  // namespace dmfx
