#pragma once
// sample_negatives: the argument checks its CPU (csrc/cpu) and CUDA (csrc/cuda) implementations
// share, so both raise the same errors.
#include <ATen/ATen.h>

#include "checks.h"

namespace dmfx {
namespace sample_negatives {

constexpr const char* kOp = "dmfx.sample_negatives";

struct Args : CsrArgs {
  Args(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& users,
       int64_t num_items, int64_t num_negatives)
      : CsrArgs(kOp, indptr, indices, users, "users", "num_users", indptr, "indptr") {
    TORCH_CHECK_VALUE(num_items > 0, kOp, ": num_items must be positive, got ", num_items);
    TORCH_CHECK_VALUE(num_negatives >= 0, kOp, ": num_negatives must be >= 0, got ",
                      num_negatives);
  }

  CsrNames names(int64_t num_items) const {
    return {"users", num_rows, nnz, num_items, "num_items"};
  }
};

}  // namespace sample_negatives
}  // namespace dmfx
