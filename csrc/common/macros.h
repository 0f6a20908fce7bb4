#pragma once
// Lets the per-element math below be shared verbatim by the CPU and CUDA kernels.
#if defined(__CUDACC__)
#define DMFX_HOST_DEVICE __host__ __device__
#else
#define DMFX_HOST_DEVICE
#endif

// CPU kernels are built for the baseline x86-64 ISA (SSE2) so one binary runs everywhere; GCC
// also emits an AVX2 + FMA clone of each marked function and picks one at load time (ifunc).
// Functions inlined into a marked one are compiled for the clone's ISA too.
#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__)
#define DMFX_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DMFX_CPU_CLONES
#endif
