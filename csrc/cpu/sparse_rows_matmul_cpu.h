#pragma once
// CPU kernels of sparse_rows_matmul: out[b] = sum_k values[k] * weight[indices[k]] over the CSR
// row rows[b]. Each function does one slice of the work so the caller (torch's thread pool, or a
// plain loop in the C++ tests) decides the parallelism.
#include <cstdint>

#include "../common/csr.h"

namespace dmfx {
namespace cpu {

// The caller checks the indptr ends (check_indptr_ends) once per call; the functions below check
// the rows they read.
//
// Writes out[b][h_begin, h_end) for b in [b_begin, b_end); out is batch x width, weight is
// weight_rows x width. Any column range works; one starting at a multiple of 32 bytes keeps the
// SIMD vectors whole. Slicing columns as well as rows lets threads split a small batch by columns: each then reads
// only its part of every table row, a smaller working set than the whole rows of half the batch.
template <typename scalar_t, typename index_t>
void sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr, const scalar_t* weight,
                                int64_t weight_rows, int64_t width, scalar_t* out,
                                int64_t b_begin, int64_t b_end, int64_t h_begin, int64_t h_end,
                                int64_t* error);

// The weight gradient is the forward of the batch's transpose: grad_weight[c] = sum over the
// batch entries (b, c, v) of v * grad_out[b]. The batch is transposed once (a counting sort by
// column, O(batch nnz)) so every row of grad_weight is then a gather written exactly once:
// threads own disjoint tiles of it, no atomics, no zero-fill pass, no read-modify-write.
//
// Step 1: col_ptr (weight_rows + 1 entries, zeroed by the caller) becomes the column pointer of
// the transposed batch; returns its entry count. Out-of-range ids are recorded and skipped.
template <typename scalar_t, typename index_t>
int64_t batch_transpose_counts(const CsrBatch<scalar_t, index_t>& csr, int64_t weight_rows,
                               int64_t* col_ptr, int64_t* error);

// Step 2: slots[e] (the batch slot b) and, when csr.values is set, slot_values[e] (v) of every
// entry, grouped by column. Uses cursor (weight_rows entries) as scratch.
template <typename scalar_t, typename index_t>
void batch_transpose_fill(const CsrBatch<scalar_t, index_t>& csr, int64_t weight_rows,
                          const int64_t* col_ptr, int64_t* cursor, int32_t* slots,
                          scalar_t* slot_values);

// Step 3: writes grad_weight[c][h_begin, h_end) for c in [c_begin, c_end) (zeros for columns
// the batch misses); h_begin as in the forward. slot_values null means all ones.
template <typename scalar_t>
void sparse_rows_matmul_backward_weight(const int64_t* col_ptr, const int32_t* slots,
                                        const scalar_t* slot_values, const scalar_t* grad_out,
                                        int64_t width, scalar_t* grad_weight, int64_t c_begin,
                                        int64_t c_end, int64_t h_begin, int64_t h_end);

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
