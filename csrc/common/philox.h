#pragma once
// Philox4x32-10 (Salmon et al., SC 2011): a counter-based generator, so sample s of a call is a
// pure function of (seed, s). That makes the sampler reproducible from a seed with any thread
// layout, and lets the CPU and CUDA kernels share this code.
#include <cstdint>

#include "macros.h"

namespace dmfx {

DMFX_HOST_DEVICE inline uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// 64 random bits for counter `counter` under key `seed`.
DMFX_HOST_DEVICE inline uint64_t philox_u64(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return (static_cast<uint64_t>(c1) << 32) | c0;
}

// Uniform integer in [0, bound), bound >= 1, by the multiply-shift map (bias < bound / 2^64).
DMFX_HOST_DEVICE inline int64_t uniform_below(uint64_t bits, uint64_t bound) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(bits, bound));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(bits) * bound) >> 64);
#endif
}

}  // namespace dmfx
