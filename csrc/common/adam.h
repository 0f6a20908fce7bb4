#pragma once
// One Adam update of one element, shared by the CPU and CUDA row-sparse Adam kernels. The
// formula is torch.optim.Adam's without weight decay or amsgrad (SparseAdam's differs: it adds
// eps to sqrt(v) before the bias correction):
//   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2,
//   w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dmfx {

// The per-step constants, computed once on the host.
struct AdamStep {
  double beta1, beta2, eps;
  double step_size;            // lr / (1 - beta1^t)
  double sqrt_bias_correction2;  // sqrt(1 - beta2^t)
};

inline AdamStep adam_step(double lr, double beta1, double beta2, double eps, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {beta1, beta2, eps, lr / bc1, std::sqrt(bc2)};
}

// The constants in the parameters' dtype, made once per launch / slice: held in locals, the
// CPU loop over a row vectorises (no reloads through a struct the writes might alias).
template <typename scalar_t>
struct AdamConstants {
  scalar_t beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, sqrt_bias_correction2;

  DMFX_HOST_DEVICE explicit AdamConstants(const AdamStep& s)
      : beta1(static_cast<scalar_t>(s.beta1)),
        one_minus_beta1(static_cast<scalar_t>(1.0 - s.beta1)),
        beta2(static_cast<scalar_t>(s.beta2)),
        one_minus_beta2(static_cast<scalar_t>(1.0 - s.beta2)),
        eps(static_cast<scalar_t>(s.eps)),
        step_size(static_cast<scalar_t>(s.step_size)),
        sqrt_bias_correction2(static_cast<scalar_t>(s.sqrt_bias_correction2)) {}
};

template <typename scalar_t>
DMFX_HOST_DEVICE inline void adam_update(scalar_t& w, scalar_t& m, scalar_t& v, scalar_t g,
                                         const AdamConstants<scalar_t>& c) {
  using std::sqrt;
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * g * g;
  w -= c.step_size * m / (sqrt(v) / c.sqrt_bias_correction2 + c.eps);
}

}  // namespace dmfx
