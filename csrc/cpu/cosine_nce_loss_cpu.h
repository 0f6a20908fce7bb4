#pragma once
// CPU kernels of the fused cosine + mu-clamp + nce loss over rows [b_begin, b_end) of p, q
// (batch x dim, row-major) and target (batch). Math in csrc/common/cosine_nce.h.
#include <cstdint>

namespace dmfx {
namespace cpu {

// Per-row losses into `loss` when it is non-null; returns their sum (accumulated in double).
// Targets outside [0, 1] (or NaN) are recorded in `error`.
template <typename scalar_t>
double cosine_nce_loss_forward(const scalar_t* p, const scalar_t* q, const scalar_t* target,
                               int64_t dim, double mu, scalar_t* loss, int64_t b_begin,
                               int64_t b_end, int64_t* error);

// grad_p, grad_q for rows [b_begin, b_end). The upstream gradient of row b is
// grad[b * grad_stride] * grad_scale: stride 1 for reduction "none", 0 (one scalar) for "sum" and
// "mean" (scale 1 / batch for "mean").
template <typename scalar_t>
void cosine_nce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                              const scalar_t* p, const scalar_t* q, const scalar_t* target,
                              int64_t dim, double mu, scalar_t* grad_p, scalar_t* grad_q,
                              int64_t b_begin, int64_t b_end);

}  // namespace cpu
}  // namespace dmfx
