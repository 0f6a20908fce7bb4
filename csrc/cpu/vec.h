#pragma once
// A 32-byte SIMD vector of float (8 lanes) or double (4) in GCC / Clang vector extensions: AVX
// registers in the AVX2 clones of the kernels, pairs of SSE registers in the baseline build.
// Written out because the compiler will not split a float reduction into lanes by itself (that
// reassociates the sum) and keeps arrays of partial sums in memory rather than registers.
#include <cstdint>

#define DMFX_VEC_INLINE inline __attribute__((always_inline))

// Helpers that take or return vectors are always inlined into the (cloned) kernels, so they are
// compiled for the clone's ISA and never pass a vector across a call: the ABI note GCC gives for
// 32-byte vectors without AVX (-Wpsabi) does not apply. GCC reports it where each kernel file
// defines such a helper, so the build turns it off for the CPU kernel files (CMakeLists.txt,
// setup.py) rather than this header for every includer.

namespace dmfx {
namespace cpu {

template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  // The same vector at any float-aligned address: one unaligned load / store instruction.
  typedef float unaligned __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8), may_alias));
};

template <typename scalar_t>
using vec_t = typename Vec<scalar_t>::type;

template <typename scalar_t>
constexpr int64_t kLanes = 32 / sizeof(scalar_t);

template <typename scalar_t>
DMFX_VEC_INLINE vec_t<scalar_t> load(const scalar_t* ptr) {
  return *reinterpret_cast<const typename Vec<scalar_t>::unaligned*>(ptr);
}

// Not a memcpy: GCC lowered that to a spill of the vector and 16-byte copies.
template <typename scalar_t>
DMFX_VEC_INLINE void store(scalar_t* ptr, const vec_t<scalar_t>& v) {
  *reinterpret_cast<typename Vec<scalar_t>::unaligned*>(ptr) = v;
}

template <typename scalar_t>
DMFX_VEC_INLINE scalar_t lane_sum(const vec_t<scalar_t>& v) {
  scalar_t s = 0;
  for (int64_t j = 0; j < kLanes<scalar_t>; ++j) s += v[j];
  return s;
}

}  // namespace cpu
}  // namespace dmfx
