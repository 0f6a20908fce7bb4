#include "hybrid_bce_loss_cuda.h"

#include "../common/error.h"
#include "../common/hybrid_bce.h"

namespace dmfx {
namespace cuda {

namespace {

constexpr int kThreads = 256;
// Grid-stride loops over at most this many blocks: enough to fill an H100 (132 SMs x 2048
// threads), and a bound that depends on the batch size alone, so the reduced forward adds its
// partial sums in the same order on every device.
constexpr int64_t kMaxBlocks = 1024;

int64_t blocks_for(int64_t batch) {
  const int64_t wanted = (batch + kThreads - 1) / kThreads;
  return wanted < kMaxBlocks ? wanted : kMaxBlocks;
}

// The sum of `value` over the block, in a fixed order; valid in thread 0.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

// Per-element losses into `loss`, or (null `loss`) one partial sum per block into `partials`.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ logits,
                               const scalar_t* __restrict__ implicit_target,
                               const scalar_t* __restrict__ explicit_target, int64_t batch,
                               scalar_t w_implicit, scalar_t w_explicit,
                               scalar_t* __restrict__ loss, double* __restrict__ partials,
                               int64_t* error) {
  double sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < batch;
       b += stride) {
    const scalar_t it = implicit_target[b], et = explicit_target[b];
    if (error != nullptr) {
      if (!in_unit_interval(it)) {
        report_error(error, b, kTargetOutOfRange, b, kImplicitTarget);
      } else if (!in_unit_interval(et)) {
        report_error(error, b, kTargetOutOfRange, b, kExplicitTarget);
      }
    }
    const scalar_t l =
        bce_with_logits<scalar_t>(logits[b], blended_target(it, et, w_implicit, w_explicit),
                                  blended_complement(it, et, w_implicit, w_explicit));
    if (loss != nullptr) {
      loss[b] = l;
    } else {
      sum += l;
    }
  }
  if (partials != nullptr) {  // uniform over the block: every thread reaches block_sum
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
  }
}

// One block: the partial sums in a fixed order, then the sum or the mean (0 / 0 = NaN for an
// empty batch, as on the CPU).
template <typename scalar_t>
__global__ void finish_kernel(const double* __restrict__ partials, int64_t count, int64_t batch,
                              bool mean, scalar_t* __restrict__ out) {
  double sum = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    out[0] = static_cast<scalar_t>(mean ? sum / static_cast<double>(batch) : sum);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, int64_t grad_stride,
                                scalar_t grad_scale, const scalar_t* __restrict__ logits,
                                const scalar_t* __restrict__ implicit_target,
                                const scalar_t* __restrict__ explicit_target, int64_t batch,
                                scalar_t w_implicit, scalar_t w_explicit,
                                scalar_t* __restrict__ grad_logits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < batch;
       b += stride) {
    const scalar_t it = implicit_target[b], et = explicit_target[b];
    const scalar_t t = blended_target(it, et, w_implicit, w_explicit);
    const scalar_t c = blended_complement(it, et, w_implicit, w_explicit);
    grad_logits[b] =
        bce_with_logits_grad<scalar_t>(logits[b], t, c) * (grad[b * grad_stride] * grad_scale);
  }
}

}  // namespace

int64_t hybrid_bce_loss_workspace_size(int64_t batch) { return blocks_for(batch); }

template <typename scalar_t>
cudaError_t hybrid_bce_loss_forward(const scalar_t* logits, const scalar_t* implicit_target,
                                    const scalar_t* explicit_target, int64_t batch, double eta,
                                    scalar_t* loss, scalar_t* reduced, bool mean,
                                    double* workspace, int64_t* error, cudaStream_t stream) {
  // The weights as the CPU kernel rounds them: eta = 0 and 1 give exactly 1 and 0.
  const scalar_t w_implicit = static_cast<scalar_t>(eta);
  const scalar_t w_explicit = scalar_t(1) - w_implicit;
  const int64_t blocks = blocks_for(batch);
  if (blocks > 0) {
    forward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        logits, implicit_target, explicit_target, batch, w_implicit, w_explicit, loss,
        reduced != nullptr ? workspace : nullptr, error);
  }
  if (reduced != nullptr) {  // also for an empty batch: its sum is 0, its mean NaN
    finish_kernel<<<1, kThreads, 0, stream>>>(workspace, blocks, batch, mean, reduced);
  }
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t hybrid_bce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                                     const scalar_t* logits, const scalar_t* implicit_target,
                                     const scalar_t* explicit_target, int64_t batch, double eta,
                                     scalar_t* grad_logits, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const scalar_t w_implicit = static_cast<scalar_t>(eta);
  const scalar_t w_explicit = scalar_t(1) - w_implicit;
  backward_kernel<<<static_cast<unsigned>(blocks_for(batch)), kThreads, 0, stream>>>(
      grad, grad_stride, static_cast<scalar_t>(grad_scale), logits, implicit_target,
      explicit_target, batch, w_implicit, w_explicit, grad_logits);
  return cudaGetLastError();
}

template cudaError_t hybrid_bce_loss_forward<float>(const float*, const float*, const float*,
                                                    int64_t, double, float*, float*, bool,
                                                    double*, int64_t*, cudaStream_t);
template cudaError_t hybrid_bce_loss_forward<double>(const double*, const double*, const double*,
                                                     int64_t, double, double*, double*, bool,
                                                     double*, int64_t*, cudaStream_t);
template cudaError_t hybrid_bce_loss_backward<float>(const float*, int64_t, double, const float*,
                                                     const float*, const float*, int64_t, double,
                                                     float*, cudaStream_t);
template cudaError_t hybrid_bce_loss_backward<double>(const double*, int64_t, double,
                                                      const double*, const double*,
                                                      const double*, int64_t, double, double*,
                                                      cudaStream_t);

}  // namespace cuda
}  // namespace dmfx
