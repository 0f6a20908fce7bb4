#include "cosine_nce_loss_cuda.h"

#include "../common/cosine_nce.h"
#include "../common/error.h"

namespace dmfx {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row: dims of 64-ish fill a warp

template <typename scalar_t>
struct RowSums {
  scalar_t dot, pp, qq;
};

// Lane-strided sums of one row, reduced across the warp (every lane gets the totals).
template <typename scalar_t>
__device__ RowSums<scalar_t> warp_row_sums(const scalar_t* __restrict__ p,
                                           const scalar_t* __restrict__ q, int64_t dim, int lane) {
  RowSums<scalar_t> s{0, 0, 0};
  for (int64_t d = lane; d < dim; d += 32) {
    const scalar_t pd = p[d], qd = q[d];
    s.dot += pd * qd;
    s.pp += pd * pd;
    s.qq += qd * qd;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    s.dot += __shfl_xor_sync(0xffffffffu, s.dot, offset);
    s.pp += __shfl_xor_sync(0xffffffffu, s.pp, offset);
    s.qq += __shfl_xor_sync(0xffffffffu, s.qq, offset);
  }
  return s;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ q,
                               const scalar_t* __restrict__ target, int64_t batch, int64_t dim,
                               scalar_t mu, scalar_t* __restrict__ loss, int64_t* error) {
  const int lane = threadIdx.x % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (b >= batch) return;  // whole warps leave together, so the shuffles stay converged
  const auto s = warp_row_sums(p + b * dim, q + b * dim, dim, lane);
  if (lane == 0) {
    const scalar_t t = target[b];
    if (error != nullptr && !(t >= scalar_t(0) && t <= scalar_t(1))) {
      report_error(error, b, kTargetOutOfRange, b, 0);
    }
    loss[b] = nce_loss<scalar_t>(cosine_from_sums<scalar_t>(s.dot, s.pp, s.qq), t, mu);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, int64_t grad_stride,
                                scalar_t grad_scale, const scalar_t* __restrict__ p,
                                const scalar_t* __restrict__ q,
                                const scalar_t* __restrict__ target, int64_t batch, int64_t dim,
                                scalar_t mu, scalar_t* __restrict__ grad_p,
                                scalar_t* __restrict__ grad_q) {
  const int lane = threadIdx.x % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (b >= batch) return;
  const scalar_t* pb = p + b * dim;
  const scalar_t* qb = q + b * dim;
  const auto s = warp_row_sums(pb, qb, dim, lane);
  const scalar_t cos = cosine_from_sums<scalar_t>(s.dot, s.pp, s.qq);
  const scalar_t g = grad[b * grad_stride] * grad_scale * nce_grad_cos<scalar_t>(cos, target[b], mu);
  const auto c = cosine_grad_coefficients<scalar_t>(g, cos, s.pp, s.qq);
  for (int64_t d = lane; d < dim; d += 32) {
    const scalar_t pd = pb[d], qd = qb[d];  // second read of the row hits L1
    grad_p[b * dim + d] = c.cross * qd - c.self_p * pd;
    grad_q[b * dim + d] = c.cross * pd - c.self_q * qd;
  }
}

unsigned blocks_for(int64_t batch) {
  return static_cast<unsigned>((batch + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

template <typename scalar_t>
cudaError_t cosine_nce_loss_forward(const scalar_t* p, const scalar_t* q, const scalar_t* target,
                                    int64_t batch, int64_t dim, double mu, scalar_t* loss,
                                    int64_t* error, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  forward_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(
      p, q, target, batch, dim, static_cast<scalar_t>(mu), loss, error);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t cosine_nce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                                     const scalar_t* p, const scalar_t* q, const scalar_t* target,
                                     int64_t batch, int64_t dim, double mu, scalar_t* grad_p,
                                     scalar_t* grad_q, cudaStream_t stream) {
  if (batch == 0 || dim == 0) return cudaSuccess;
  backward_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(
      grad, grad_stride, static_cast<scalar_t>(grad_scale), p, q, target, batch, dim,
      static_cast<scalar_t>(mu), grad_p, grad_q);
  return cudaGetLastError();
}

template cudaError_t cosine_nce_loss_forward<float>(const float*, const float*, const float*,
                                                    int64_t, int64_t, double, float*, int64_t*,
                                                    cudaStream_t);
template cudaError_t cosine_nce_loss_forward<double>(const double*, const double*, const double*,
                                                     int64_t, int64_t, double, double*, int64_t*,
                                                     cudaStream_t);
template cudaError_t cosine_nce_loss_backward<float>(const float*, int64_t, double, const float*,
                                                     const float*, const float*, int64_t, int64_t,
                                                     double, float*, float*, cudaStream_t);
template cudaError_t cosine_nce_loss_backward<double>(const double*, int64_t, double,
                                                      const double*, const double*,
                                                      const double*, int64_t, int64_t, double,
                                                      double*, double*, cudaStream_t);

}  // namespace cuda
}  // namespace dmfx
