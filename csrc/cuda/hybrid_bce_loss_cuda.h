#pragma once
// CUDA launchers of the hybrid explicit-implicit loss (semantics as in
// csrc/cpu/hybrid_bce_loss_cpu.h, over the whole batch). Torch-free.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dmfx {
namespace cuda {

// Doubles of workspace the reduced forward needs for a batch (one partial sum per block).
int64_t hybrid_bce_loss_workspace_size(int64_t batch);

// One pass over logits and both targets. Exactly one of `loss` and `reduced` is non-null:
// `loss` gets the per-element losses ([batch]); `reduced` gets one value, the sum of the losses,
// or their mean when `mean` (NaN for an empty batch), summed in double in a fixed order (the same
// result for the same batch size, run after run). `workspace` holds
// hybrid_bce_loss_workspace_size(batch) doubles when `reduced` is used. A non-null `error` records
// a target outside [0, 1] (as the CPU kernel does); a null one skips the check.
template <typename scalar_t>
cudaError_t hybrid_bce_loss_forward(const scalar_t* logits, const scalar_t* implicit_target,
                                    const scalar_t* explicit_target, int64_t batch, double eta,
                                    scalar_t* loss, scalar_t* reduced, bool mean,
                                    double* workspace, int64_t* error, cudaStream_t stream);

// grad_logits in one pass; upstream gradient of element b is grad[b * grad_stride] * grad_scale.
template <typename scalar_t>
cudaError_t hybrid_bce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                                     const scalar_t* logits, const scalar_t* implicit_target,
                                     const scalar_t* explicit_target, int64_t batch, double eta,
                                     scalar_t* grad_logits, cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
