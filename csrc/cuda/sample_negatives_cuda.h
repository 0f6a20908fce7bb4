#pragma once
// CUDA launcher of sample_negatives (semantics as in csrc/cpu/sample_negatives_cpu.h, over the
// whole batch; the same seed gives the same samples as the CPU kernel). Torch-free.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dmfx {
namespace cuda {

// With a non-null error, also checks what the CPU op checks when validating (the indptr ends,
// every user's row, its order, a free item left), even when the output is empty, and records the
// problem the CPU would name.
template <typename index_t>
cudaError_t sample_negatives(const index_t* indptr, const index_t* indices, int64_t num_users,
                             int64_t nnz, const int64_t* users, int64_t batch, int64_t num_items,
                             int64_t num_negatives, uint64_t seed, int64_t* out, int64_t* error,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
