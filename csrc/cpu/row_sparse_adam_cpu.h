#pragma once
// CPU kernel of row_sparse_adam_: Adam on the rows of a table that a row-sparse gradient names.
#include <cstdint>

#include "../common/adam.h"

namespace dmfx {
namespace cpu {

// For i in [i_begin, i_end): row r = rows[i] of weight, exp_avg and exp_avg_sq (each
// weight_rows x width, row-major) takes one Adam step with gradient grad_rows[i] (n x width).
// A row outside [0, weight_rows) is skipped (the caller validates). Rows must be distinct across
// concurrently running slices.
template <typename scalar_t>
void row_sparse_adam(scalar_t* weight, scalar_t* exp_avg, scalar_t* exp_avg_sq,
                     int64_t weight_rows, int64_t width, const int64_t* rows,
                     const scalar_t* grad_rows, const AdamStep& step, int64_t i_begin,
                     int64_t i_end);

}  // namespace cpu
}  // namespace dmfx
