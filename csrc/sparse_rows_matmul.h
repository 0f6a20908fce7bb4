#pragma once
// sparse_rows_matmul: the argument checks and signatures its CPU (csrc/cpu) and CUDA (csrc/cuda)
// implementations share, so both raise the same errors.
#include <ATen/ATen.h>

#include "checks.h"

namespace dmfx {
namespace sparse_rows_matmul {

constexpr const char* kOp = "dmfx.sparse_rows_matmul";

// Checked, contiguous arguments of one call. `dense` is the tensor that sets dtype and device:
// weight in the forward, grad_out in the weight backward.
struct Args : CsrArgs {
  at::Tensor values;  // contiguous, or undefined for an all-ones matrix

  Args(const at::Tensor& indptr, const at::Tensor& indices,
       const c10::optional<at::Tensor>& values_, const at::Tensor& rows, const at::Tensor& dense,
       const char* dense_name)
      : CsrArgs(kOp, indptr, indices, rows, "rows", "num_rows", dense, dense_name) {
    check_floating(kOp, dense_name, dense);
    TORCH_CHECK_VALUE(dense.dim() == 2, kOp, ": ", dense_name, " must be 2-D, got shape ",
                      dense.sizes());
    if (values_.has_value()) {
      const at::Tensor& v = *values_;
      check_same_dtype(kOp, "values", v, dense_name, dense);
      check_same_device(kOp, "values", v, dense_name, dense);
      TORCH_CHECK_VALUE(v.dim() == 1 && v.numel() == nnz, kOp,
                        ": values must be 1-D with one entry per index (", nnz, "), got shape ",
                        v.sizes());
      values = v.contiguous();
    }
  }

  template <typename scalar_t, typename index_t>
  CsrBatch<scalar_t, index_t> view() const {
    return CsrArgs::view<scalar_t, index_t>(values.defined() ? values.data_ptr<scalar_t>()
                                                             : nullptr);
  }

  CsrNames names(int64_t weight_rows) const {
    return {"rows", num_rows, nnz, weight_rows, "weight.size(0)"};
  }
};

inline void check_backward_weight(const Args& a, const at::Tensor& grad_out,
                                  int64_t num_weight_rows) {
  TORCH_CHECK_VALUE(grad_out.size(0) == a.batch, kOp, ": grad_out has ", grad_out.size(0),
                    " rows but rows has ", a.batch, " entries");
  TORCH_CHECK_VALUE(num_weight_rows >= 0, kOp, ": num_weight_rows must be >= 0, got ",
                    num_weight_rows);
}

inline void check_backward_values(const Args& a, const at::Tensor& weight,
                                  const at::Tensor& grad_out) {
  check_same_dtype(kOp, "grad_out", grad_out, "weight", weight);
  check_same_device(kOp, "grad_out", grad_out, "weight", weight);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == a.batch &&
                        grad_out.size(1) == weight.size(1),
                    kOp, ": grad_out must have shape [", a.batch, ", ", weight.size(1), "], got ",
                    grad_out.sizes());
}

// The values gradient gives each entry of a row that the batch reads the sum over that row's
// slots; rows sharing entries would have two writers on CUDA. Validation reads only the rows a
// call reads, each valid alone, so an indptr that decreases between two of them passes it: with
// validate, the values backward refuses it here, after its row checks (rows are in range), on
// both devices alike (on CUDA one more sync). The read rows in id order must not start before
// the previous distinct one ends (which also refuses a decreasing indptr whose rows happen
// not to overlap).
inline void check_rows_disjoint(const Args& a) {
  if (a.batch < 2) return;
  const at::Tensor ptr = a.indptr.to(at::kLong);
  const at::Tensor sorted = std::get<0>(at::sort(a.rows));
  const at::Tensor prev = sorted.slice(0, 0, a.batch - 1), next = sorted.slice(0, 1);
  const at::Tensor prev_end = ptr.index_select(0, prev + 1);
  const at::Tensor next_begin = ptr.index_select(0, next);
  const at::Tensor bad = ((next != prev) & (next_begin < prev_end)).nonzero();
  if (bad.size(0) == 0) return;
  const int64_t i = bad[0][0].item<int64_t>();
  const at::Tensor found =
      at::stack({prev[i], next[i], prev_end[i], next_begin[i]}).cpu();
  const int64_t* f = found.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(false, kOp, ": indptr decreases between rows ", f[0], " and ", f[1],
                    ": indptr[", f[0] + 1, "] = ", f[2], " > indptr[", f[1], "] = ", f[3],
                    " (rows can then share entries, and the gradient of values needs rows apart)");
}

// The kernels' signatures, as the dispatcher calls them.
using ForwardFn = at::Tensor(const at::Tensor& indptr, const at::Tensor& indices,
                             const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                             const at::Tensor& weight, bool validate);
using BackwardValuesFn = at::Tensor(const at::Tensor& indptr, const at::Tensor& indices,
                                    const at::Tensor& rows, const at::Tensor& weight,
                                    const at::Tensor& grad_out, bool validate);

}  // namespace sparse_rows_matmul
}  // namespace dmfx
