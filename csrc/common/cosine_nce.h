#pragma once
// Per-pair math of the fused cosine + mu-clamp + nce loss, shared by the CPU and CUDA kernels.
//   cos    = <p, q> / (|p| |q|), defined as 0 when either vector is zero
//   yhat   = clamp(cos, mu, 1 - mu)   (Eq. 13 of the DMF paper, plus the upper bound log(1 - yhat)
//                                      needs)
//   loss   = -(t log yhat + (1 - t) log(1 - yhat))
// The clamp passes gradient only for mu <= cos <= 1 - mu (as torch.clamp does), so a zero vector
// (cos = 0 < mu) gets loss -(t log mu + (1 - t) log(1 - mu)) and a zero gradient: never NaN.
// NaN in, NaN out: a NaN (or infinity) in p or q makes cos NaN, which the clamp keeps (as
// torch.clamp does), so the row's loss and both its gradients are NaN; a NaN target makes the
// loss NaN, and the gradients too where the clamp passes them. Every comparison below is written
// so that NaN fails it and falls through to the arithmetic: std::min / std::max / fmin would
// turn a NaN cosine into mu or 1 - mu.
#include <cmath>

#include "macros.h"

namespace dmfx {

template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t cosine_from_sums(acc_t dot, acc_t pp, acc_t qq) {
  using std::sqrt;
  const acc_t denom = sqrt(pp) * sqrt(qq);
  return denom == acc_t(0) ? acc_t(0) : dot / denom;
}

// log(1 + x) for x in (-1, 0]. On the host, Goldberg's formula over log: as accurate as log1p (a
// few ulp, exact for tiny x) and several times faster than glibc's log1pf, which dominated the
// CPU forward. The GPU's log1p is already fast.
template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t log1p_nonpositive(acc_t x) {
#if defined(__CUDA_ARCH__)
  return log1p(x);
#else
  using std::log;
  const acc_t u = acc_t(1) + x;
  return u == acc_t(1) ? x : log(u) * x / (u - acc_t(1));
#endif
}

template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t nce_loss(acc_t cos, acc_t target, acc_t mu) {
  using std::log;
  const acc_t yhat = cos < mu ? mu : (cos > acc_t(1) - mu ? acc_t(1) - mu : cos);
  // A term with a zero coefficient is skipped, not computed and multiplied by 0: the same value
  // (both logs are finite), one log instead of two for the sampled negatives (t = 0).
  acc_t loss = 0;
  if (target != acc_t(0)) loss -= target * log(yhat);
  if (target != acc_t(1)) loss -= (acc_t(1) - target) * log1p_nonpositive(-yhat);
  return loss;
}

// d loss / d cos: NaN for a NaN cos.
template <typename acc_t>
DMFX_HOST_DEVICE inline acc_t nce_grad_cos(acc_t cos, acc_t target, acc_t mu) {
  if (cos < mu || cos > acc_t(1) - mu) return acc_t(0);
  return (acc_t(1) - target) / (acc_t(1) - cos) - target / cos;
}

// With g = upstream gradient * d loss / d cos, the gradients are
//   d/dp = g (q / (|p||q|) - cos p / |p|^2) = coef_q * q - coef_p * p   (and symmetrically for q).
// Finite nonzero g implies cos >= mu > 0 and hence nonzero norms; a NaN g (a NaN row) passes the
// g != 0 test too and makes every coefficient NaN.
template <typename acc_t>
struct CosineGradCoefficients {
  acc_t cross;   // g / (|p||q|): multiplies the other vector
  acc_t self_p;  // g cos / |p|^2: multiplies p in d/dp
  acc_t self_q;  // g cos / |q|^2: multiplies q in d/dq
};

template <typename acc_t>
DMFX_HOST_DEVICE inline CosineGradCoefficients<acc_t> cosine_grad_coefficients(acc_t g, acc_t cos,
                                                                              acc_t pp, acc_t qq) {
  using std::sqrt;
  CosineGradCoefficients<acc_t> c{acc_t(0), acc_t(0), acc_t(0)};
  if (g != acc_t(0)) {
    // Two divisions instead of three (they dominate this per-row math on the CPU).
    const acc_t inv_p = acc_t(1) / sqrt(pp), inv_q = acc_t(1) / sqrt(qq);
    c.cross = g * inv_p * inv_q;
    c.self_p = g * cos * inv_p * inv_p;
    c.self_q = g * cos * inv_q * inv_q;
  }
  return c;
}

}  // namespace dmfx
