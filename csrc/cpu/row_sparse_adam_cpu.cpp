#include "row_sparse_adam_cpu.h"

#include "../common/macros.h"

namespace dmfx {
namespace cpu {

template <typename scalar_t>
DMFX_CPU_CLONES void row_sparse_adam(scalar_t* weight, scalar_t* exp_avg, scalar_t* exp_avg_sq,
                                     int64_t weight_rows, int64_t width, const int64_t* rows,
                                     const scalar_t* grad_rows, const AdamStep& step,
                                     int64_t i_begin, int64_t i_end) {
  const AdamConstants<scalar_t> c(step);  // a local: kept in registers, so the row loop vectorises
  for (int64_t i = i_begin; i < i_end; ++i) {
    const int64_t r = rows[i];
    if (r < 0 || r >= weight_rows) continue;
    scalar_t* __restrict__ w = weight + r * width;
    scalar_t* __restrict__ m = exp_avg + r * width;
    scalar_t* __restrict__ v = exp_avg_sq + r * width;
    const scalar_t* __restrict__ g = grad_rows + i * width;
    for (int64_t h = 0; h < width; ++h) adam_update(w[h], m[h], v[h], g[h], c);
  }
}

template void row_sparse_adam<float>(float*, float*, float*, int64_t, int64_t, const int64_t*,
                                     const float*, const AdamStep&, int64_t, int64_t);
template void row_sparse_adam<double>(double*, double*, double*, int64_t, int64_t,
                                      const int64_t*, const double*, const AdamStep&, int64_t,
                                      int64_t);

}  // namespace cpu
}  // namespace dmfx
