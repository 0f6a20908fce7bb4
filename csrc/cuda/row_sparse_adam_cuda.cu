#include "row_sparse_adam_cuda.h"

#include <algorithm>

namespace dmfx {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// One thread per (row, column) element, grid-stride: consecutive threads walk a row, so the
// reads and writes of each table row coalesce.
template <typename scalar_t>
__global__ void row_sparse_adam_kernel(scalar_t* __restrict__ weight,
                                       scalar_t* __restrict__ exp_avg,
                                       scalar_t* __restrict__ exp_avg_sq, int64_t weight_rows,
                                       int64_t width, const int64_t* __restrict__ rows,
                                       const scalar_t* __restrict__ grad_rows, int64_t total,
                                       AdamStep step) {
  const AdamConstants<scalar_t> c(step);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / width, h = e - i * width;
    const int64_t r = rows[i];
    if (r < 0 || r >= weight_rows) continue;
    const int64_t k = r * width + h;
    adam_update(weight[k], exp_avg[k], exp_avg_sq[k], grad_rows[e], c);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t row_sparse_adam(scalar_t* weight, scalar_t* exp_avg, scalar_t* exp_avg_sq,
                            int64_t weight_rows, int64_t width, const int64_t* rows,
                            const scalar_t* grad_rows, int64_t n, const AdamStep& step,
                            cudaStream_t stream) {
  const int64_t total = n * width;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  row_sparse_adam_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      weight, exp_avg, exp_avg_sq, weight_rows, width, rows, grad_rows, total, step);
  return cudaGetLastError();
}

template cudaError_t row_sparse_adam<float>(float*, float*, float*, int64_t, int64_t,
                                            const int64_t*, const float*, int64_t,
                                            const AdamStep&, cudaStream_t);
template cudaError_t row_sparse_adam<double>(double*, double*, double*, int64_t, int64_t,
                                             const int64_t*, const double*, int64_t,
                                             const AdamStep&, cudaStream_t);

}  // namespace cuda
}  // namespace dmfx
