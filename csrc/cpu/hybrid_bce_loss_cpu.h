#pragma once
// CPU kernels of the hybrid explicit-implicit loss (EINMF, Eq. 16) over elements [begin, end) of
// logits, implicit_target and explicit_target (all [batch]). Math in csrc/common/hybrid_bce.h:
// one binary cross-entropy per element against the blended target eta ir + (1 - eta) e.
#include <cstdint>

namespace dmfx {
namespace cpu {

// Per-element losses into `loss` when it is non-null; returns their sum (accumulated in double).
// With a non-null `error`, a target outside [0, 1] (or NaN) is recorded: position = element,
// value = kImplicitTarget or kExplicitTarget (csrc/common/hybrid_bce.h). A null `error` skips the
// check. Every element gets the same SIMD math whatever its position, so the losses do not depend
// on how threads split the batch.
template <typename scalar_t>
double hybrid_bce_loss_forward(const scalar_t* logits, const scalar_t* implicit_target,
                               const scalar_t* explicit_target, double eta, scalar_t* loss,
                               int64_t begin, int64_t end, int64_t* error);

// grad_logits for elements [begin, end). The upstream gradient of element b is
// grad[b * grad_stride] * grad_scale: stride 1 for reduction "none", 0 (one scalar) for "sum" and
// "mean" (scale 1 / batch for "mean").
template <typename scalar_t>
void hybrid_bce_loss_backward(const scalar_t* grad, int64_t grad_stride, double grad_scale,
                              const scalar_t* logits, const scalar_t* implicit_target,
                              const scalar_t* explicit_target, double eta, scalar_t* grad_logits,
                              int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace dmfx
