#include "sparse_rows_matmul_cpu.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "../common/csr.h"
#include "../common/macros.h"
#include "vec.h"

namespace dmfx {
namespace cpu {

namespace {

// How many nonzeros ahead the dense row of a future nonzero is prefetched: the rows are scattered
// over a table larger than L1/L2, and their addresses are known early (the index array).
constexpr int64_t kPrefetchAhead = 4;

// out_row[h0, h0 + kV * L) = sum_k v_k * dense[id_k][h0, h0 + kV * L) over k in [begin, end),
// ids already checked. The kV vectors of partial sums stay in registers for the whole sparse row,
// instead of a load-add-store of out_row per nonzero.
template <int64_t kV, typename scalar_t, typename id_t>
DMFX_VEC_INLINE void gather_block(const id_t* __restrict__ ids, const scalar_t* __restrict__ vals,
                         int64_t begin, int64_t end, const scalar_t* __restrict__ dense,
                         int64_t width, int64_t h0, scalar_t* __restrict__ out_row) {
  using V = vec_t<scalar_t>;
  constexpr int64_t L = kLanes<scalar_t>;
  constexpr int64_t kLineElems = 64 / sizeof(scalar_t);
  // Zeroed one register at a time: `V acc[kV] = {}` became a `rep stos` of a stack copy, a
  // quarter of the weight backward, whose rows are short.
  V acc[kV];
  for (int64_t j = 0; j < kV; ++j) acc[j] = V{};
  for (int64_t k = begin; k < end; ++k) {
    if (k + kPrefetchAhead < end) {
      const scalar_t* ahead = dense + static_cast<int64_t>(ids[k + kPrefetchAhead]) * width + h0;
      for (int64_t e = 0; e < kV * L; e += kLineElems) __builtin_prefetch(ahead + e);
    }
    const scalar_t v = vals ? vals[k] : scalar_t(1);
    const scalar_t* w = dense + static_cast<int64_t>(ids[k]) * width + h0;
    for (int64_t j = 0; j < kV; ++j) acc[j] += v * load(w + j * L);
  }
  for (int64_t j = 0; j < kV; ++j) store(out_row + h0 + j * L, acc[j]);
}

// The last n < L columns.
template <typename scalar_t, typename id_t>
DMFX_VEC_INLINE void gather_tail(const id_t* ids, const scalar_t* vals, int64_t begin, int64_t end,
                        const scalar_t* dense, int64_t width, int64_t h0, int64_t n,
                        scalar_t* out_row) {
  scalar_t acc[kLanes<scalar_t>] = {};
  for (int64_t k = begin; k < end; ++k) {
    const scalar_t v = vals ? vals[k] : scalar_t(1);
    const scalar_t* w = dense + static_cast<int64_t>(ids[k]) * width + h0;
    for (int64_t j = 0; j < n; ++j) acc[j] += v * w[j];
  }
  for (int64_t j = 0; j < n; ++j) out_row[h0 + j] = acc[j];
}

// out[i][h_begin, h_end) = sum_k v_k * dense[id_k][h_begin, h_end) over k in
// [bounds(i).first, bounds(i).second), for i < count; h_begin is a multiple of the lane count.
// Block-column by block-column over all `count` rows, not row by row: one pass touches a single
// block (up to 8 vectors) of each dense row, so the part of a table larger than L2 that is in use
// still fits in L2. Each pass keeps its sums in registers.
template <typename scalar_t, typename id_t, typename Bounds>
DMFX_VEC_INLINE void gather_rows(const id_t* ids, const scalar_t* vals, Bounds bounds,
                                 int64_t count, const scalar_t* dense, int64_t width,
                                 int64_t h_begin, int64_t h_end, scalar_t* out) {
  constexpr int64_t L = kLanes<scalar_t>;
  int64_t h0 = h_begin;
  for (; h0 + 8 * L <= h_end; h0 += 8 * L) {
    for (int64_t i = 0; i < count; ++i) {
      const auto r = bounds(i);
      gather_block<8>(ids, vals, r.first, r.second, dense, width, h0, out + i * width);
    }
  }
  if (h0 + 4 * L <= h_end) {
    for (int64_t i = 0; i < count; ++i) {
      const auto r = bounds(i);
      gather_block<4>(ids, vals, r.first, r.second, dense, width, h0, out + i * width);
    }
    h0 += 4 * L;
  }
  if (h0 + 2 * L <= h_end) {
    for (int64_t i = 0; i < count; ++i) {
      const auto r = bounds(i);
      gather_block<2>(ids, vals, r.first, r.second, dense, width, h0, out + i * width);
    }
    h0 += 2 * L;
  }
  if (h0 + L <= h_end) {
    for (int64_t i = 0; i < count; ++i) {
      const auto r = bounds(i);
      gather_block<1>(ids, vals, r.first, r.second, dense, width, h0, out + i * width);
    }
    h0 += L;
  }
  if (h0 < h_end) {
    for (int64_t i = 0; i < count; ++i) {
      const auto r = bounds(i);
      gather_tail(ids, vals, r.first, r.second, dense, width, h0, h_end - h0, out + i * width);
    }
  }
}

// First out-of-range id of a row, recorded; the row then takes the slow path that skips it.
template <typename index_t>
inline bool row_ids_in_range(const index_t* indices, int64_t begin, int64_t end, int64_t limit,
                             int64_t slot, int64_t* error) {
  for (int64_t k = begin; k < end; ++k) {
    const int64_t c = indices[k];
    if (c < 0 || c >= limit) {
      report_bad_index(error, slot, begin, k, c);
      return false;
    }
  }
  return true;
}

}  // namespace

template <typename scalar_t, typename index_t>
DMFX_CPU_CLONES void sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr,
                                                const scalar_t* weight, int64_t weight_rows,
                                                int64_t width, scalar_t* out, int64_t b_begin,
                                                int64_t b_end, int64_t h_begin, int64_t h_end,
                                                int64_t* error) {
  // Checked bounds of every row first; an unusable row (recorded in `error`) gets the empty range
  // (zeros), and one with an out-of-range id is redone below without that id.
  std::vector<std::pair<int64_t, int64_t>> bounds(b_end - b_begin, {0, 0});
  std::vector<int64_t> rows_with_bad_ids;
  for (int64_t b = b_begin; b < b_end; ++b) {
    int64_t begin, end;
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, error, &begin,
                           &end)) {
      continue;
    }
    if (row_ids_in_range(csr.indices, begin, end, weight_rows, b, error)) {
      bounds[b - b_begin] = {begin, end};
    } else {
      rows_with_bad_ids.push_back(b);
    }
  }
  gather_rows(csr.indices, csr.values, [&](int64_t i) { return bounds[i]; }, b_end - b_begin,
              weight, width, h_begin, h_end, out + b_begin * width);
  for (const int64_t b : rows_with_bad_ids) {
    scalar_t* o = out + b * width;
    const int64_t begin = csr.indptr[csr.rows[b]], end = csr.indptr[csr.rows[b] + 1];
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) continue;
      const scalar_t v = csr.values ? csr.values[k] : scalar_t(1);
      for (int64_t h = h_begin; h < h_end; ++h) o[h] += v * weight[c * width + h];
    }
  }
}

template <typename scalar_t, typename index_t>
int64_t batch_transpose_counts(const CsrBatch<scalar_t, index_t>& csr, int64_t weight_rows,
                               int64_t* col_ptr, int64_t* error) {
  for (int64_t b = 0; b < csr.batch; ++b) {
    int64_t begin, end;
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, error, &begin,
                           &end)) {
      continue;
    }
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) {
        report_bad_index(error, b, begin, k, c);
        continue;
      }
      ++col_ptr[c + 1];
    }
  }
  for (int64_t c = 0; c < weight_rows; ++c) col_ptr[c + 1] += col_ptr[c];
  return col_ptr[weight_rows];
}

template <typename scalar_t, typename index_t>
void batch_transpose_fill(const CsrBatch<scalar_t, index_t>& csr, int64_t weight_rows,
                          const int64_t* col_ptr, int64_t* cursor, int32_t* slots,
                          scalar_t* slot_values) {
  std::copy(col_ptr, col_ptr + weight_rows, cursor);
  for (int64_t b = 0; b < csr.batch; ++b) {
    int64_t begin, end;
    // Problems were recorded by the counting pass.
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, nullptr, &begin,
                           &end)) {
      continue;
    }
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) continue;
      const int64_t e = cursor[c]++;
      slots[e] = static_cast<int32_t>(b);
      if (slot_values) slot_values[e] = csr.values[k];
    }
  }
}

template <typename scalar_t>
DMFX_CPU_CLONES void sparse_rows_matmul_backward_weight(const int64_t* col_ptr,
                                                        const int32_t* slots,
                                                        const scalar_t* slot_values,
                                                        const scalar_t* grad_out, int64_t width,
                                                        scalar_t* grad_weight, int64_t c_begin,
                                                        int64_t c_end, int64_t h_begin,
                                                        int64_t h_end) {
  gather_rows(slots, slot_values,
              [&](int64_t i) { return std::make_pair(col_ptr[c_begin + i], col_ptr[c_begin + i + 1]); },
              c_end - c_begin, grad_out, width, h_begin, h_end, grad_weight + c_begin * width);
}

template <typename scalar_t, typename index_t>
void sparse_rows_matmul_backward_values(const CsrBatch<scalar_t, index_t>& csr,
                                        const scalar_t* weight, int64_t weight_rows,
                                        const scalar_t* grad_out, int64_t width,
                                        scalar_t* grad_values, int64_t k_begin, int64_t k_end,
                                        int64_t* error) {
  for (int64_t b = 0; b < csr.batch; ++b) {
    int64_t begin, end;
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, error, &begin,
                           &end)) {
      continue;
    }
    const scalar_t* __restrict__ g = grad_out + b * width;
    for (int64_t k = std::max(begin, k_begin); k < std::min(end, k_end); ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) {
        report_bad_index(error, b, begin, k, c);
        continue;
      }
      const scalar_t* __restrict__ w = weight + c * width;
      scalar_t dot = 0;
      for (int64_t h = 0; h < width; ++h) dot += g[h] * w[h];
      grad_values[k] += dot;
    }
  }
}

#define DMFX_INSTANTIATE(scalar_t, index_t)                                                    \
  template void sparse_rows_matmul_forward<scalar_t, index_t>(                                 \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, int64_t, scalar_t*,        \
      int64_t, int64_t, int64_t, int64_t, int64_t*);                                           \
  template int64_t batch_transpose_counts<scalar_t, index_t>(                                  \
      const CsrBatch<scalar_t, index_t>&, int64_t, int64_t*, int64_t*);                        \
  template void batch_transpose_fill<scalar_t, index_t>(                                       \
      const CsrBatch<scalar_t, index_t>&, int64_t, const int64_t*, int64_t*, int32_t*,         \
      scalar_t*);                                                                              \
  template void sparse_rows_matmul_backward_values<scalar_t, index_t>(                         \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, const scalar_t*, int64_t,  \
      scalar_t*, int64_t, int64_t, int64_t*);

DMFX_INSTANTIATE(float, int32_t)
DMFX_INSTANTIATE(float, int64_t)
DMFX_INSTANTIATE(double, int32_t)
DMFX_INSTANTIATE(double, int64_t)
#undef DMFX_INSTANTIATE

template void sparse_rows_matmul_backward_weight<float>(const int64_t*, const int32_t*,
                                                        const float*, const float*, int64_t,
                                                        float*, int64_t, int64_t, int64_t,
                                                        int64_t);
template void sparse_rows_matmul_backward_weight<double>(const int64_t*, const int32_t*,
                                                         const double*, const double*, int64_t,
                                                         double*, int64_t, int64_t, int64_t,
                                                         int64_t);

}  // namespace cpu
}  // namespace dmfx
