#pragma once
// Lets the per-element math below be shared verbatim by the CPU and CUDA kernels.
#if defined(__CUDACC__)
#define DMFX_HOST_DEVICE __host__ __device__
#else
#define DMFX_HOST_DEVICE
#endif
