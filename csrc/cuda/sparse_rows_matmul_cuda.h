#pragma once
// CUDA kernels of sparse_rows_matmul (semantics as in csrc/cpu/sparse_rows_matmul_cpu.h, over
// the whole batch). Plain CUDA runtime types only, so this header and its .cu stay free of torch;
// csrc/cuda/sparse_rows_matmul_op.cpp allocates the buffers and runs the steps in order.
//
// Every sum is made in a fixed order that depends on the input alone, never on how blocks are
// scheduled, and without float atomics: the results are the same bit for bit, run after run.
//
// Work is cut by entries, not by rows, so a row with a million entries is spread over the whole
// GPU instead of one block. A batch of `segments` (batch rows, or for the weight gradient the
// rows of grad_weight) is laid out as "items": segment s has its entries then one end marker, and
// items_end[s] is the inclusive running count of items through segment s. Equal ranges of items
// go to warps; a warp that meets a segment's end marker writes that output row, and its partial
// sums of a segment it did not finish go to a carry slot that a second pass adds in order.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/csr.h"

namespace dmfx {
namespace cuda {

// For every batch slot b: begin[b] = indptr[rows[b]] and items[b] = row length + 1 (length 0
// for an unusable row). With a non-null error, records the row problems and the indptr ends
// (checked even for an empty batch, as on the CPU).
template <typename index_t>
cudaError_t csr_batch_rows(const index_t* indptr, int64_t num_rows, int64_t nnz,
                           const int64_t* rows, int64_t batch, int64_t* begin, int64_t* items,
                           int64_t* error, cudaStream_t stream);

// Warps for segment_gather: depends on the sizes alone, so the partition (and with it the order
// of every sum) does too. `entries_hint` is the number of entries, or a bound on it.
int64_t segment_gather_workers(int64_t segments, int64_t entries_hint);

// out[s][:] = sum over the entries k of segment s (ids[begin[s] + i], i < length) of
// values[k] * dense[ids[k]][:] (values null: ones); entries with an id outside [0, id_limit) are
// skipped and, with a non-null error, reported as entry i of batch slot s (CSR keys). carry holds
// workers x width scalars and carry_segment workers entries. Widths up to 512 take one pass over
// the entries; wider ones a pass per 512 columns (re-reading only the ids).
template <typename scalar_t, typename id_t>
cudaError_t segment_gather(const int64_t* begin, const int64_t* items_end, int64_t segments,
                           const id_t* ids, const scalar_t* values, int64_t id_limit,
                           const scalar_t* dense, int64_t width, scalar_t* out, scalar_t* carry,
                           int64_t* carry_segment, int64_t workers, int64_t* error,
                           cudaStream_t stream);

// The weight gradient's transpose of the batch, step 1 of 2 (the op sorts in between): for each
// of the `entries` entries e of the batch (slot b = the segment of e by entries_end, the
// inclusive running count of row lengths), key[e] = its column (weight_rows if out of range:
// sorted last and never read), slot[e] = b and, with values, value[e].
template <typename scalar_t, typename index_t>
cudaError_t batch_entries_by_slot(const CsrBatch<scalar_t, index_t>& csr, const int64_t* begin,
                                  const int64_t* entries_end, int64_t entries,
                                  int64_t weight_rows, int64_t* key, int64_t* slot,
                                  scalar_t* value, int64_t* error, cudaStream_t stream);

// grad_values[k] = sum over the batch slots b reading entry k of <grad_out[b], weight[c_k]>.
// `order` lists the batch slots sorted (stably) by row, sorted_rows their rows; entries_end is
// the inclusive running count, over that order, of the row lengths of each run's first slot (0
// for the others). Each entry is written once, summing its run in slot order; grad_values must be
// zeroed by the caller (entries no slot reads stay 0).
template <typename scalar_t, typename index_t>
cudaError_t backward_values(const CsrBatch<scalar_t, index_t>& csr, const int64_t* begin,
                            const int64_t* order, const int64_t* sorted_rows,
                            const int64_t* entries_end, const scalar_t* weight,
                            int64_t weight_rows, const scalar_t* grad_out, int64_t width,
                            scalar_t* grad_values, int64_t* error, cudaStream_t stream);

}  // namespace cuda
}  // namespace dmfx
