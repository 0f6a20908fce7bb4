#pragma once
// row_sparse_adam_: the argument checks its CPU (csrc/cpu) and CUDA (csrc/cuda) implementations
// share, so both raise the same errors.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <utility>

#include "checks.h"
#include "common/adam.h"

namespace dmfx {
namespace row_sparse_adam {

constexpr const char* kOp = "dmfx.row_sparse_adam_";

inline void check_state(const char* name, const at::Tensor& t, const at::Tensor& weight) {
  check_same_dtype(kOp, name, t, "weight", weight);
  check_same_device(kOp, name, t, "weight", weight);
  TORCH_CHECK_VALUE(t.sizes() == weight.sizes(), kOp, ": ", name, " must have the shape of weight ",
                    weight.sizes(), ", got ", t.sizes());
  // Updated in place through a raw pointer: a strided view would be written in the wrong places.
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", name, " must be contiguous (it is updated in "
                    "place)");
}

// The kernels update the three state tensors in place through restrict pointers while reading rows
// and grad_rows: memory shared by any two of them mixes the updates (NaN weights). All of them are
// contiguous here, so the status is exact (never TooHard).
inline void check_no_overlap(const char* name, const at::Tensor& t, const char* other_name,
                             const at::Tensor& other) {
  TORCH_CHECK_VALUE(at::get_overlap_status(t, other) == at::MemOverlapStatus::No, kOp, ": ", name,
                    " and ", other_name, " share memory (the same tensor, or overlapping views "
                    "of one); each must be a tensor of its own");
}

// Checked arguments of one call: rows as contiguous int64, grad_rows contiguous, the update's
// constants.
struct Args {
  at::Tensor rows, grad_rows;
  int64_t weight_rows, width, n;
  AdamStep step;

  Args(const at::Tensor& weight, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
       const at::Tensor& rows_, const at::Tensor& grad_rows_, double lr, double beta1,
       double beta2, double eps, int64_t step_count, bool validate) {
    check_floating(kOp, "weight", weight);
    TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": weight must be 2-D, got shape ", weight.sizes());
    check_state("weight", weight, weight);
    check_state("exp_avg", exp_avg, weight);
    check_state("exp_avg_sq", exp_avg_sq, weight);
    check_index_vector(kOp, "rows", rows_);
    check_same_device(kOp, "rows", rows_, "weight", weight);
    check_same_dtype(kOp, "grad_rows", grad_rows_, "weight", weight);
    check_same_device(kOp, "grad_rows", grad_rows_, "weight", weight);
    weight_rows = weight.size(0);
    width = weight.size(1);
    n = rows_.numel();
    TORCH_CHECK_VALUE(grad_rows_.dim() == 2 && grad_rows_.size(0) == n &&
                          grad_rows_.size(1) == width,
                      kOp, ": grad_rows must have shape [", n, ", ", width, "] (one row per entry "
                      "of rows), got ", grad_rows_.sizes());
    TORCH_CHECK_VALUE(lr >= 0, kOp, ": lr must be >= 0, got ", lr);
    TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, kOp,
                      ": beta1 and beta2 must lie in [0, 1), got ", beta1, " and ", beta2);
    TORCH_CHECK_VALUE(eps > 0, kOp, ": eps must be > 0, got ", eps);
    TORCH_CHECK_VALUE(step_count >= 1, kOp,
                      ": step must be >= 1 (the count including this update), got ", step_count);
    rows = rows_.to(at::kLong).contiguous();
    grad_rows = grad_rows_.contiguous();
    check_no_overlap("exp_avg", exp_avg, "weight", weight);
    check_no_overlap("exp_avg_sq", exp_avg_sq, "weight", weight);
    check_no_overlap("exp_avg_sq", exp_avg_sq, "exp_avg", exp_avg);
    for (const auto& [name, read] : {std::pair<const char*, const at::Tensor&>{"rows", rows},
                                     {"grad_rows", grad_rows}}) {
      check_no_overlap(name, read, "weight", weight);
      check_no_overlap(name, read, "exp_avg", exp_avg);
      check_no_overlap(name, read, "exp_avg_sq", exp_avg_sq);
    }
    if (validate && n > 0) {
      // Out-of-range rows are skipped by the kernels whatever happens; repeated rows would race.
      // On CUDA these checks cost three syncs (the two bounds, the distinct count), hence the flag.
      const auto [lo, hi] = at::aminmax(rows);
      const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
      TORCH_CHECK_INDEX(lo_v >= 0 && hi_v < weight_rows, kOp, ": rows must lie in [0, ",
                        weight_rows, ") (the rows of weight), got values in [", lo_v, ", ", hi_v,
                        "]");
      const int64_t distinct = std::get<0>(at::_unique(rows, /*sorted=*/false)).numel();
      TORCH_CHECK_VALUE(distinct == n, kOp, ": rows must be distinct (a coalesced row-sparse "
                        "gradient), got ", n - distinct, " repeated entries");
    }
    step = adam_step(lr, beta1, beta2, eps, step_count);
  }
};

// The kernels' signature, as the dispatcher calls them.
using Fn = void(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                const at::Tensor& rows, const at::Tensor& grad_rows, double lr, double beta1,
                double beta2, double eps, int64_t step, bool validate);

}  // namespace row_sparse_adam
}  // namespace dmfx
