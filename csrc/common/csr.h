#pragma once
// Checked access to one CSR row, shared by every kernel that walks a row. Reports carry the
// serial-order keys of csrc/common/error.h, so CPU and CUDA name the same first problem.
#include <cstdint>

#include "error.h"

namespace dmfx {

// A CSR matrix (values may be null: all ones) plus the rows of it a batch asks for.
template <typename scalar_t, typename index_t>
struct CsrBatch {
  const index_t* indptr;
  const index_t* indices;
  const scalar_t* values;
  int64_t num_rows;
  int64_t nnz;
  const int64_t* rows;
  int64_t batch;
};

// indptr[0] == 0 and indptr[num_rows] == nnz; checked once per call, whatever the batch size.
template <typename index_t>
DMFX_HOST_DEVICE inline void check_indptr_ends(const index_t* indptr, int64_t num_rows,
                                               int64_t nnz, int64_t* error) {
  if (error == nullptr) return;
  if (static_cast<int64_t>(indptr[0]) != 0) {
    report_error(error, kIndptrEndsKey, kIndptrEnds, 0, indptr[0]);
  } else if (static_cast<int64_t>(indptr[num_rows]) != nnz) {
    report_error(error, kIndptrEndsKey, kIndptrEnds, num_rows, indptr[num_rows]);
  }
}

// Bounds of CSR row `row` (asked for by batch slot `slot`); false, with the problem recorded,
// when the row id or its indptr entries are unusable.
template <typename index_t>
DMFX_HOST_DEVICE inline bool checked_row_range(const index_t* indptr, int64_t num_rows,
                                               int64_t nnz, int64_t row, int64_t slot,
                                               int64_t* error, int64_t* begin, int64_t* end) {
  if (row < 0 || row >= num_rows) {
    report_error(error, csr_key(slot, -1), kRowOutOfRange, slot, row);
    return false;
  }
  const int64_t b = indptr[row];
  const int64_t e = indptr[row + 1];
  // The report names the entry at fault: the start when it lies outside [0, nnz], else the end.
  if (b < 0 || b > nnz) {
    report_error(error, csr_key(slot, -1), kBadIndptr, row, b);
    return false;
  }
  if (e < b || e > nnz) {
    report_error(error, csr_key(slot, -1), kBadIndptrEnd, row, e);
    return false;
  }
  *begin = b;
  *end = e;
  return true;
}

// Entry k of the row read by batch slot `slot` (row starting at `begin`) is a column id outside
// [0, limit): recorded; the caller skips the entry.
DMFX_HOST_DEVICE inline void report_bad_index(int64_t* error, int64_t slot, int64_t begin,
                                              int64_t k, int64_t column) {
  report_error(error, csr_key(slot, k - begin), kIndexOutOfRange, k, column);
}

// The columns of one row are strictly ascending and inside [0, limit): what the negative sampler's
// binary search needs. O(end - begin), so callers run it only when asked to validate.
template <typename index_t>
DMFX_HOST_DEVICE inline bool check_row_sorted(const index_t* indices, int64_t begin, int64_t end,
                                              int64_t limit, int64_t row, int64_t slot,
                                              int64_t* error) {
  for (int64_t k = begin; k < end; ++k) {
    const int64_t c = indices[k];
    if (c < 0 || c >= limit) {
      report_bad_index(error, slot, begin, k, c);
      return false;
    }
    if (k > begin && c <= static_cast<int64_t>(indices[k - 1])) {
      report_error(error, csr_key(slot, k - begin), kRowNotSorted, row, k);
      return false;
    }
  }
  return true;
}

}  // namespace dmfx
