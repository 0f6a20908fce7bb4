#pragma once
// CUDA launchers of sparse_rows_matmul (semantics as in csrc/cpu/sparse_rows_matmul_cpu.h, over
// the whole batch). Plain CUDA runtime types only, so this header and its .cu stay free of torch.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/csr.h"

namespace dmfx {
namespace cuda {

template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr,
                                       const scalar_t* weight, int64_t weight_rows,
                                       int64_t width, scalar_t* out, int64_t* error,
                                       cudaStream_t stream);

// grad_weight (weight_rows x width) must be zeroed by the caller.
template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_backward_weight(const CsrBatch<scalar_t, index_t>& csr,
                                               const scalar_t* grad_out, int64_t weight_rows,
                                               int64_t width, scalar_t* grad_weight,
                                               int64_t* error, cudaStream_t stream);

// grad_values (nnz) must be zeroed by the caller.
template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_backward_values(const CsrBatch<scalar_t, index_t>& csr,
                                               const scalar_t* weight, int64_t weight_rows,
                                               const scalar_t* grad_out, int64_t width,
                                               scalar_t* grad_values, int64_t* error,
                                               cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
