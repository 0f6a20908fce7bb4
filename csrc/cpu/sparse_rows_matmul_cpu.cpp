#include "sparse_rows_matmul_cpu.h"

#include <algorithm>

#include "../common/csr.h"

namespace dmfx {
namespace cpu {

template <typename scalar_t, typename index_t>
void sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr, const scalar_t* weight,
                                int64_t weight_rows, int64_t width, scalar_t* out,
                                int64_t b_begin, int64_t b_end, int64_t* error) {
  if (b_begin == 0) check_indptr_ends(csr.indptr, csr.num_rows, csr.nnz, error);
  for (int64_t b = b_begin; b < b_end; ++b) {
    scalar_t* __restrict__ o = out + b * width;
    std::fill(o, o + width, scalar_t(0));
    int64_t begin, end;
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, error, &begin,
                           &end)) {
      continue;
    }
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) {
        report_error(error, kIndexOutOfRange, k, c);
        continue;
      }
      const scalar_t v = csr.values ? csr.values[k] : scalar_t(1);
      const scalar_t* __restrict__ w = weight + c * width;
      for (int64_t h = 0; h < width; ++h) o[h] += v * w[h];
    }
  }
}

template <typename scalar_t, typename index_t>
void sparse_rows_matmul_backward_weight(const CsrBatch<scalar_t, index_t>& csr,
                                        const scalar_t* grad_out, int64_t weight_rows,
                                        int64_t width, scalar_t* grad_weight, int64_t c_begin,
                                        int64_t c_end, int64_t* error) {
  for (int64_t b = 0; b < csr.batch; ++b) {
    int64_t begin, end;
    if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b, error, &begin,
                           &end)) {
      continue;
    }
    const scalar_t* __restrict__ g = grad_out + b * width;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = csr.indices[k];
      if (c < 0 || c >= weight_rows) {
        report_error(error, kIndexOutOfRange, k, c);
        continue;
      }
      if (c < c_begin || c >= c_end) continue;
      const scalar_t v = csr.values ? csr.values[k] : scalar_t(1);
      scalar_t* __restrict__ gw = grad_weight + c * width;
      for (int64_t h = 0; h < width; ++h) gw[h] += v * g[h];
    }
  }
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
        report_error(error, kIndexOutOfRange, k, c);
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
      int64_t, int64_t, int64_t*);                                                             \
  template void sparse_rows_matmul_backward_weight<scalar_t, index_t>(                         \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, int64_t, scalar_t*,        \
      int64_t, int64_t, int64_t*);                                                             \
  template void sparse_rows_matmul_backward_values<scalar_t, index_t>(                         \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, const scalar_t*, int64_t,  \
      scalar_t*, int64_t, int64_t, int64_t*);

DMFX_INSTANTIATE(float, int32_t)
DMFX_INSTANTIATE(float, int64_t)
DMFX_INSTANTIATE(double, int32_t)
DMFX_INSTANTIATE(double, int64_t)
#undef DMFX_INSTANTIATE

}  // namespace cpu
}  // namespace dmfx
