#include "cosine_nce_loss_cpu.h"

#include "../common/cosine_nce.h"
#include "../common/error.h"
#include "../common/macros.h"
#include "vec.h"

namespace dmfx {
namespace cpu {

namespace {

template <typename scalar_t>
struct RowSums {
  scalar_t dot = 0, pp = 0, qq = 0;
};

// The three reductions of a row in SIMD lanes, two vectors per sum so consecutive adds are
// independent (a single running sum is bound by the add latency).
template <typename scalar_t>
DMFX_VEC_INLINE RowSums<scalar_t> row_sums(const scalar_t* __restrict__ p, const scalar_t* __restrict__ q,
                                  int64_t dim) {
  using V = vec_t<scalar_t>;
  constexpr int64_t L = kLanes<scalar_t>;
  V dot0{}, dot1{}, pp0{}, pp1{}, qq0{}, qq1{};
  int64_t d = 0;
  for (; d + 2 * L <= dim; d += 2 * L) {
    const V p0 = load(p + d), p1 = load(p + d + L), q0 = load(q + d), q1 = load(q + d + L);
    dot0 += p0 * q0;
    dot1 += p1 * q1;
    pp0 += p0 * p0;
    pp1 += p1 * p1;
    qq0 += q0 * q0;
    qq1 += q1 * q1;
  }
  if (d + L <= dim) {
    const V p0 = load(p + d), q0 = load(q + d);
    dot0 += p0 * q0;
    pp0 += p0 * p0;
    qq0 += q0 * q0;
    d += L;
  }
  RowSums<scalar_t> s{lane_sum<scalar_t>(dot0 + dot1), lane_sum<scalar_t>(pp0 + pp1),
                      lane_sum<scalar_t>(qq0 + qq1)};
  for (; d < dim; ++d) {
    s.dot += p[d] * q[d];
    s.pp += p[d] * p[d];
    s.qq += q[d] * q[d];
  }
  return s;
}

}  // namespace

template <typename scalar_t>
DMFX_CPU_CLONES double cosine_nce_loss_forward(const scalar_t* p, const scalar_t* q,
                                               const scalar_t* target, int64_t dim, double mu,
                                               scalar_t* loss, int64_t b_begin, int64_t b_end,
                                               int64_t* error) {
  double total = 0;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const auto s = row_sums(p + b * dim, q + b * dim, dim);
    const scalar_t t = target[b];
    if (!(t >= scalar_t(0) && t <= scalar_t(1))) report_error(error, b, kTargetOutOfRange, b, 0);
    const scalar_t cos = cosine_from_sums<scalar_t>(s.dot, s.pp, s.qq);
    const scalar_t l = nce_loss<scalar_t>(cos, t, static_cast<scalar_t>(mu));
    if (loss) loss[b] = l;
    total += l;
  }
  return total;
}

template <typename scalar_t>
DMFX_CPU_CLONES void cosine_nce_loss_backward(const scalar_t* grad, int64_t grad_stride,
                                              double grad_scale, const scalar_t* p,
                                              const scalar_t* q, const scalar_t* target,
                                              int64_t dim, double mu, scalar_t* grad_p,
                                              scalar_t* grad_q, int64_t b_begin, int64_t b_end) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    const scalar_t* __restrict__ pb = p + b * dim;
    const scalar_t* __restrict__ qb = q + b * dim;
    const auto s = row_sums(pb, qb, dim);
    const scalar_t cos = cosine_from_sums<scalar_t>(s.dot, s.pp, s.qq);
    const scalar_t g = grad[b * grad_stride] * static_cast<scalar_t>(grad_scale) *
                       nce_grad_cos<scalar_t>(cos, target[b], static_cast<scalar_t>(mu));
    const auto c = cosine_grad_coefficients<scalar_t>(g, cos, s.pp, s.qq);
    scalar_t* __restrict__ gp = grad_p + b * dim;
    scalar_t* __restrict__ gq = grad_q + b * dim;
    for (int64_t d = 0; d < dim; ++d) {
      gp[d] = c.cross * qb[d] - c.self_p * pb[d];
      gq[d] = c.cross * pb[d] - c.self_q * qb[d];
    }
  }
}

template double cosine_nce_loss_forward<float>(const float*, const float*, const float*, int64_t,
                                               double, float*, int64_t, int64_t, int64_t*);
template double cosine_nce_loss_forward<double>(const double*, const double*, const double*,
                                                int64_t, double, double*, int64_t, int64_t,
                                                int64_t*);
template void cosine_nce_loss_backward<float>(const float*, int64_t, double, const float*,
                                              const float*, const float*, int64_t, double, float*,
                                              float*, int64_t, int64_t);
template void cosine_nce_loss_backward<double>(const double*, int64_t, double, const double*,
                                               const double*, const double*, int64_t, double,
                                               double*, double*, int64_t, int64_t);

}  // namespace cpu
}  // namespace dmfx
