#include "hybrid_bce_loss_cpu.h"

#include "../common/error.h"
#include "../common/hybrid_bce.h"
#include "../common/macros.h"
#include "vec.h"

// The formulas of csrc/common/hybrid_bce.h over SIMD vectors of elements. Per element the work is
// one exp and one log1p (forward) or one exp and one division (backward) on three or four loads:
// through glibc's scalar expf / log1pf that math, not memory, would bound the kernels, so e^y and
// log1p(u) are written out here for vectors, on the ranges the loss needs (y <= 0, u in [0, 1]):
// Cephes' expf / exp and fdlibm's log, the usual reductions, accurate to about 1-2 ulp.

namespace dmfx {
namespace cpu {

namespace {

// The integer vector a comparison of vec_t<scalar_t> gives, and the IEEE layout for 2^n.
template <typename scalar_t>
struct VecInt;
template <>
struct VecInt<float> {
  typedef int32_t type __attribute__((vector_size(32)));
  static constexpr int kMantissaBits = 23;
  static constexpr int kBias = 127;
};
template <>
struct VecInt<double> {
  typedef int64_t type __attribute__((vector_size(32)));
  static constexpr int kMantissaBits = 52;
  static constexpr int kBias = 1023;
};

template <typename scalar_t>
using ivec_t = typename VecInt<scalar_t>::type;

// kLanes sums in double (a float vector's losses widened to two AVX registers).
template <typename scalar_t>
struct AccVec {
  typedef double type __attribute__((vector_size(sizeof(double) * kLanes<scalar_t>)));
};
template <typename scalar_t>
using acc_vec_t = typename AccVec<scalar_t>::type;

template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> splat(scalar_t s) {
  return vec_t<scalar_t>{} + s;
}

template <typename scalar_t>
struct ExpConstants;
template <>
struct ExpConstants<float> {
  static constexpr float kLowest = -104.0f;  // e^-104 rounds to 0: below the least subnormal
  static constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;  // 9 bits: n * kLn2Hi is exact
  static constexpr float kLn2Lo = -2.12194440e-4f;
};
template <>
struct ExpConstants<double> {
  static constexpr double kLowest = -746.0;
  static constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kLog2e = 1.44269504088896338700e+00;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 bits (fdlibm)
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
};

// e^r for |r| <= ln(2) / 2.
DMFX_VEC_INLINE vec_t<float> exp_reduced(const vec_t<float>& r) {
  using V = vec_t<float>;
  const V z = r * r;
  V p = splat(1.9875691500e-4f);  // Cephes expf
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * z + r + 1.0f;
}

DMFX_VEC_INLINE vec_t<double> exp_reduced(const vec_t<double>& r) {
  using V = vec_t<double>;
  const V z = r * r;  // Cephes exp: Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
  V p = splat(1.26177193074810590878e-4);
  p = p * z + 3.02994407707441961300e-2;
  p = p * z + 9.99999999999999999910e-1;
  p = p * r;
  V q = splat(3.00198505138664455042e-6);
  q = q * z + 2.52448340349684104192e-3;
  q = q * z + 2.27265548208155028766e-1;
  q = q * z + 2.00000000000000000009e0;
  return 1.0 + 2.0 * (p / (q - p));
}

// 2^n for integer n with a normal result.
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> pow2(const ivec_t<scalar_t>& n) {
  return (vec_t<scalar_t>)((n + VecInt<scalar_t>::kBias) << VecInt<scalar_t>::kMantissaBits);
}

// e^y for y <= 0 (or NaN, which it keeps): y = n ln 2 + r, e^y = e^r 2^n, with 2^n applied as two
// normal factors 2^(n/2): a result below the least normal number rounds once, to its subnormal.
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> exp_nonpositive(const vec_t<scalar_t>& y_in) {
  using V = vec_t<scalar_t>;
  using I = ivec_t<scalar_t>;
  using C = ExpConstants<scalar_t>;
  const V lowest = splat(C::kLowest), shifter = splat(C::kShifter);
  const V y = y_in < lowest ? lowest : y_in;  // NaN fails the test and stays
  const V shifted = y * C::kLog2e + shifter;
  const V n = shifted - shifter;  // round(y / ln 2)
  const I ni = (I)shifted - (I)shifter;
  const V r = (y - n * C::kLn2Hi) - n * C::kLn2Lo;
  const I half = ni >> 1;
  return exp_reduced(r) * pow2<scalar_t>(half) * pow2<scalar_t>(ni - half);
}

// fdlibm's minimax R(z) ~ 2 z / 3 + 2 z^2 / 5 + ... for log(1 + f) = 2 atanh(s), s = f / (2 + f),
// z = s^2, |s| <= 3 - 2 sqrt(2).
DMFX_VEC_INLINE vec_t<float> log_series(const vec_t<float>& z) {
  using V = vec_t<float>;
  V p = splat(0.24279078841f);  // e_logf.c
  p = p * z + 0.28498786688f;
  p = p * z + 0.40000972152f;
  p = p * z + 0.66666662693f;
  return p * z;
}

DMFX_VEC_INLINE vec_t<double> log_series(const vec_t<double>& z) {
  using V = vec_t<double>;
  V p = splat(1.479819860511658591e-01);  // e_log.c
  p = p * z + 1.531383769920937332e-01;
  p = p * z + 1.818357216161805012e-01;
  p = p * z + 2.222219843214978396e-01;
  p = p * z + 2.857142874366239149e-01;
  p = p * z + 3.999999999940941908e-01;
  p = p * z + 6.666666666666735130e-01;
  return p * z;
}

// log(1 + u) for u in [0, 1] (or NaN, which it keeps). Below sqrt(2) - 1, f = u itself (tiny u
// stay exact); above, 1 + u = 2 (1 + f) with f = (u - 1) / 2 in (-0.3, 0].
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> log1p_unit(const vec_t<scalar_t>& u) {
  using V = vec_t<scalar_t>;
  using C = ExpConstants<scalar_t>;
  const auto big = u > splat(static_cast<scalar_t>(0.41421356237309504880));
  const V one = splat(scalar_t(1)), half = splat(scalar_t(0.5));
  const V f = big ? (u - one) * half : u;
  const V s = f / (f + scalar_t(2));
  const V hfsq = half * f * f;
  const V log1pf = f - (hfsq - s * (hfsq + log_series(s * s)));
  const V zero{};
  return (log1pf + (big ? splat(C::kLn2Lo) : zero)) + (big ? splat(C::kLn2Hi) : zero);
}

template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> neg_abs(const vec_t<scalar_t>& x) {
  return x < vec_t<scalar_t>{} ? x : -x;  // NaN: -NaN, still NaN
}

// bce_with_logits of csrc/common/hybrid_bce.h, lane by lane.
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> bce_with_logits(const vec_t<scalar_t>& x,
                                                const vec_t<scalar_t>& t,
                                                const vec_t<scalar_t>& c) {
  using V = vec_t<scalar_t>;
  const V zero{};
  const V linear = x > zero ? c * x : -t * x;
  return linear + log1p_unit<scalar_t>(exp_nonpositive<scalar_t>(neg_abs<scalar_t>(x)));
}

// bce_with_logits_grad of csrc/common/hybrid_bce.h: sigmoid(x) - t.
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> bce_with_logits_grad(const vec_t<scalar_t>& x,
                                                     const vec_t<scalar_t>& t,
                                                     const vec_t<scalar_t>& c) {
  using V = vec_t<scalar_t>;
  const V e = exp_nonpositive<scalar_t>(neg_abs<scalar_t>(x));
  const V s = e / (scalar_t(1) + e);
  return x >= V{} ? c - s : s - t;
}

// The weights eta and 1 - eta of the blended target, as vectors.
template <typename scalar_t>
struct BlendWeights {
  vec_t<scalar_t> implicit_w, explicit_w;
};

template <typename scalar_t>
DMFX_VEC_INLINE BlendWeights<scalar_t> blend_weights(double eta) {
  // 1 - eta in scalar_t: the weights of eta = 0 and 1 are exactly 1 and 0.
  const scalar_t w = static_cast<scalar_t>(eta);
  return {splat(w), splat(scalar_t(1) - w)};
}

// The blended target t and its complement c = 1 - t, as csrc/common/hybrid_bce.h forms them.
template <typename scalar_t>
struct Blend {
  vec_t<scalar_t> t, c;
};

template <typename scalar_t>
DMFX_VEC_INLINE Blend<scalar_t> blend(const BlendWeights<scalar_t>& w,
                                      const vec_t<scalar_t>& implicit_target,
                                      const vec_t<scalar_t>& explicit_target) {
  const scalar_t one(1);
  return {w.implicit_w * implicit_target + w.explicit_w * explicit_target,
          w.implicit_w * (one - implicit_target) + w.explicit_w * (one - explicit_target)};
}

// The elements [i, end) (fewer than a vector) copied into a zero-padded vector, so the tail gets
// the same math as the body.
template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> load_tail(const scalar_t* p, int64_t n) {
  vec_t<scalar_t> v{};
  for (int64_t j = 0; j < n; ++j) v[j] = p[j];
  return v;
}

template <typename scalar_t>
void report_bad_targets(const scalar_t* implicit_target, const scalar_t* explicit_target,
                        int64_t begin, int64_t end, int64_t* error) {
  for (int64_t b = begin; b < end; ++b) {
    if (!in_unit_interval(implicit_target[b])) {
      report_error(error, b, kTargetOutOfRange, b, kImplicitTarget);
      return;
    }
    if (!in_unit_interval(explicit_target[b])) {
      report_error(error, b, kTargetOutOfRange, b, kExplicitTarget);
      return;
    }
  }
}

}  // namespace

template <typename scalar_t>
DMFX_CPU_CLONES double hybrid_bce_loss_forward(const scalar_t* logits,
                                               const scalar_t* implicit_target,
                                               const scalar_t* explicit_target, double eta,
                                               scalar_t* loss, int64_t begin, int64_t end,
                                               int64_t* error) {
  using V = vec_t<scalar_t>;
  using I = ivec_t<scalar_t>;
  using A = acc_vec_t<scalar_t>;
  constexpr int64_t L = kLanes<scalar_t>;
  const BlendWeights<scalar_t> w = blend_weights<scalar_t>(eta);
  const V zero{}, one = splat(scalar_t(1));
  A acc{};
  I outside{};  // lanes that saw a target outside [0, 1]: the chunk is rescanned only then
  int64_t b = begin;
  for (; b + L <= end; b += L) {
    const V it = load(implicit_target + b), et = load(explicit_target + b);
    if (error) outside |= ~((it >= zero) & (it <= one) & (et >= zero) & (et <= one));
    const Blend<scalar_t> tc = blend(w, it, et);
    const V l = bce_with_logits<scalar_t>(load(logits + b), tc.t, tc.c);
    if (loss) store(loss + b, l);
    acc += __builtin_convertvector(l, A);
  }
  double total = 0;
  for (int64_t j = 0; j < L; ++j) total += acc[j];
  if (b < end) {
    const int64_t n = end - b;
    const V it = load_tail(implicit_target + b, n), et = load_tail(explicit_target + b, n);
    if (error) outside |= ~((it >= zero) & (it <= one) & (et >= zero) & (et <= one));
    const Blend<scalar_t> tc = blend(w, it, et);
    const V l = bce_with_logits<scalar_t>(load_tail(logits + b, n), tc.t, tc.c);
    for (int64_t j = 0; j < n; ++j) {
      if (loss) loss[b + j] = l[j];
      total += l[j];
    }
  }
  if (error) {
    bool any = false;
    for (int64_t j = 0; j < L; ++j) any |= outside[j] != 0;
    if (any) report_bad_targets(implicit_target, explicit_target, begin, end, error);
  }
  return total;
}

template <typename scalar_t>
DMFX_CPU_CLONES void hybrid_bce_loss_backward(const scalar_t* grad, int64_t grad_stride,
                                              double grad_scale, const scalar_t* logits,
                                              const scalar_t* implicit_target,
                                              const scalar_t* explicit_target, double eta,
                                              scalar_t* grad_logits, int64_t begin, int64_t end) {
  using V = vec_t<scalar_t>;
  constexpr int64_t L = kLanes<scalar_t>;
  const BlendWeights<scalar_t> w = blend_weights<scalar_t>(eta);
  const V scale = splat(static_cast<scalar_t>(grad_scale));
  const V upstream0 = grad_stride == 0 ? splat(grad[0]) * scale : V{};
  int64_t b = begin;
  for (; b + L <= end; b += L) {
    const Blend<scalar_t> tc = blend(w, load(implicit_target + b), load(explicit_target + b));
    const V upstream = grad_stride == 0 ? upstream0 : load(grad + b) * scale;
    store(grad_logits + b,
          bce_with_logits_grad<scalar_t>(load(logits + b), tc.t, tc.c) * upstream);
  }
  if (b < end) {
    const int64_t n = end - b;
    const Blend<scalar_t> tc =
        blend(w, load_tail(implicit_target + b, n), load_tail(explicit_target + b, n));
    const V upstream = grad_stride == 0 ? upstream0 : load_tail(grad + b, n) * scale;
    const V g = bce_with_logits_grad<scalar_t>(load_tail(logits + b, n), tc.t, tc.c) * upstream;
    for (int64_t j = 0; j < n; ++j) grad_logits[b + j] = g[j];
  }
}

template double hybrid_bce_loss_forward<float>(const float*, const float*, const float*, double,
                                               float*, int64_t, int64_t, int64_t*);
template double hybrid_bce_loss_forward<double>(const double*, const double*, const double*,
                                                double, double*, int64_t, int64_t, int64_t*);
template void hybrid_bce_loss_backward<float>(const float*, int64_t, double, const float*,
                                              const float*, const float*, double, float*,
                                              int64_t, int64_t);
template void hybrid_bce_loss_backward<double>(const double*, int64_t, double, const double*,
                                               const double*, const double*, double, double*,
                                               int64_t, int64_t);

}  // namespace cpu
}  // namespace dmfx
