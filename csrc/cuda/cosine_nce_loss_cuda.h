#pragma once
// CUDA launchers of the fused cosine + mu-clamp + nce loss (semantics as in
// csrc/cpu/cosine_nce_loss_cpu.h, over the whole batch). Torch-free.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dmfx {
namespace cuda {

// Per-row losses into loss (batch). One pass over p, q and target. A non-null error records a
// target outside [0, 1] (as the CPU kernel does); a null one skips the check.
template <typename scalar_t>
cudaError_t cosine_nce_loss_forward(const scalar_t* p, const scalar_t* q, const scalar_t* target,
                                    int64_t batch, int64_t dim, double mu, scalar_t* loss,
                                    int64_t* error, cudaStream_t stream);

// grad_p and grad_q in one pass; upstream gradient of row b is grad[b * grad_stride] * grad_scale.
template <typename scalar_t>
cudaError_t cosine_nce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                                     const scalar_t* p, const scalar_t* q, const scalar_t* target,
                                     int64_t batch, int64_t dim, double mu, scalar_t* grad_p,
                                     scalar_t* grad_q, cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
