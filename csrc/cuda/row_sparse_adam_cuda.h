#pragma once
// CUDA launcher of row_sparse_adam_ (semantics as in csrc/cpu/row_sparse_adam_cpu.h, over all
// n rows). Torch-free.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/adam.h"

namespace dmfx {
namespace cuda {

template <typename scalar_t>
cudaError_t row_sparse_adam(scalar_t* weight, scalar_t* exp_avg, scalar_t* exp_avg_sq,
                            int64_t weight_rows, int64_t width, const int64_t* rows,
                            const scalar_t* grad_rows, int64_t n, const AdamStep& step,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
