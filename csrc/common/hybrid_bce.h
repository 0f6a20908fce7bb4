#pragma once
// Per-element math of the hybrid explicit-implicit loss (EINMF, Eqs. 14-16), shared by the CUDA
// kernels and the C++ tests (the CPU kernels compute the same formulas over SIMD vectors, see
// csrc/cpu/hybrid_bce_loss_cpu.cpp). With yhat = sigmoid(x),
//   L = eta L_I + (1 - eta) L_E,  L_I = bce(yhat, ir),  L_E = bce(yhat, e),
//   bce(yhat, t) = -(t log yhat + (1 - t) log(1 - yhat)).
// Cross-entropy is linear in its target, so L = bce(yhat, t) with the blended target
//   t = eta ir + (1 - eta) e,
// one loss and one gradient per element instead of two. Its complement is blended from the
// targets' complements, c = 1 - t = eta (1 - ir) + (1 - eta) (1 - e): 1 - t formed after the
// rounding of t would lose most of a small c's digits (t = 0.9999995 in float).
// From the logit, without forming yhat:
//   log yhat = -softplus(-x), log(1 - yhat) = -softplus(x), softplus(x) = max(x, 0) + log1p(e^-|x|)
//   bce = t softplus(-x) + c softplus(x) = [x > 0 ? c x : -t x] + log1p(e^-|x|)
//   d bce / d x = sigmoid(x) - t = [x >= 0 ? c - s : s - t],  s = e^-|x| / (1 + e^-|x|)
//   d bce / d t = -x
// s is the smaller of sigmoid(x) and 1 - sigmoid(x), so a confident answer's small gradient keeps
// its digits instead of meeting a sigmoid rounded to 1.
// e^-|x| lies in [0, 1], so nothing overflows: any finite logit (1e4, -1e30) gives a finite loss
// and gradient. The linear term is exactly 0 for t = 1, x > 0 and for t = 0, x <= 0, so a
// confident right answer keeps its tiny loss log1p(e^-|x|) instead of cancelling it away.
// NaN in, NaN out: a NaN logit or target fails every comparison below and reaches the
// arithmetic, so the element's loss and gradient are NaN (an infinite logit gives NaN where
// c x or t x is 0 * inf, as the reference's t log yhat does).
#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dmfx {

// The `value` of a kTargetOutOfRange error record (csrc/common/error.h): which target was bad.
enum HybridBceTarget : int64_t { kImplicitTarget = 0, kExplicitTarget = 1 };

// eta ir + (1 - eta) e with the weights given as w_implicit = eta, w_explicit = 1 - eta.
template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t blended_target(acc_t implicit_target, acc_t explicit_target,
                                             acc_t w_implicit, acc_t w_explicit) {
  return w_implicit * implicit_target + w_explicit * explicit_target;
}

// 1 - blended_target, from the targets' own complements.
template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t blended_complement(acc_t implicit_target, acc_t explicit_target,
                                                 acc_t w_implicit, acc_t w_explicit) {
  return w_implicit * (acc_t(1) - implicit_target) + w_explicit * (acc_t(1) - explicit_target);
}

// False for NaN.
template <typename acc_t>
DMFX_HOST_DEVICE inline bool in_unit_interval(acc_t t) {
  return t >= acc_t(0) && t <= acc_t(1);
}

// t and its complement c = 1 - t, as blended_target and blended_complement give them.
template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t bce_with_logits(acc_t x, acc_t t, acc_t c) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  const acc_t linear = x > acc_t(0) ? c * x : -t * x;
  return linear + log1p(exp(-fabs(x)));
}

template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t bce_with_logits_grad(acc_t x, acc_t t, acc_t c) {
  using std::exp;
  using std::fabs;
  const acc_t e = exp(-fabs(x));
  const acc_t s = e / (acc_t(1) + e);
  return x >= acc_t(0) ? c - s : s - t;
}

}  // namespace dmfx
