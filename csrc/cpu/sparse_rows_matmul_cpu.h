#pragma once
// CPU kernels of sparse_rows_matmul: out[b] = sum_k values[k] * weight[indices[k]] over the CSR
// row rows[b]. Each function does one slice of the work so the caller (torch's thread pool, or a
// plain loop in the C++ tests) decides the parallelism.
#include <cstdint>

#include "../common/csr.h"

namespace dmfx {
namespace cpu {

// Writes out[b] for b in [b_begin, b_end); out is batch x width, weight is weight_rows x width.
template <typename scalar_t, typename index_t>
void sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr, const scalar_t* weight,
                                int64_t weight_rows, int64_t width, scalar_t* out,
                                int64_t b_begin, int64_t b_end, int64_t* error);

// grad_weight[c] += values[k] * grad_out[b] for every (b, k) whose column c lies in
// [c_begin, c_end). Slices own disjoint rows of grad_weight, so they run in parallel without
// atomics; grad_weight must be zeroed by the caller.
template <typename scalar_t, typename index_t>
void sparse_rows_matmul_backward_weight(const CsrBatch<scalar_t, index_t>& csr,
                                        const scalar_t* grad_out, int64_t weight_rows,
                                        int64_t width, scalar_t* grad_weight, int64_t c_begin,
                                        int64_t c_end, int64_t* error);

// grad_values[k] += <grad_out[b], weight[indices[k]]> for nnz slots k in [k_begin, k_end)
// (repeated rows in the batch accumulate). grad_values must be zeroed by the caller.
template <typename scalar_t, typename index_t>
void sparse_rows_matmul_backward_values(const CsrBatch<scalar_t, index_t>& csr,
                                        const scalar_t* weight, int64_t weight_rows,
                                        const scalar_t* grad_out, int64_t width,
                                        scalar_t* grad_values, int64_t k_begin, int64_t k_end,
                                        int64_t* error);

}  // namespace cpu
}  // namespace dmfx
