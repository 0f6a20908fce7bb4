#pragma once
// Argument checks shared by the op glue. Each names the op and the argument, and raises the
// Python exception type that fits: TypeError (dtype), ValueError (shape, value, device),
// IndexError (an id out of range).
#include <ATen/ATen.h>

#include <string>

#include "common/error.h"

namespace dmfx {

inline void check_index_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be an int32 or int64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " (", t.scalar_type(),
                   ") must have the dtype of ", ref_name, " (", ref.scalar_type(), ")");
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device(), "; all tensors must be on one device");
}

// The {code, position, value} record the kernels fill (csrc/common/error.h).
inline at::Tensor new_error_record(const at::Device& device) {
  return at::zeros({kErrorRecordSize}, at::TensorOptions().dtype(at::kLong).device(device));
}

// How a CSR-reading op names its arguments in messages.
struct CsrNames {
  const char* rows;     // the batch of row ids ("rows", "users")
  int64_t num_rows;     // rows of the CSR matrix
  int64_t nnz;
  int64_t num_cols;     // the bound on indices
  std::string cols_of;  // what that bound is, e.g. "weight.size(0)"
};

// Raises for a non-empty record. On CUDA this copies 24 bytes to the host: the one sync an op
// makes, and only when asked to validate.
inline void raise_if_error(const char* op, const at::Tensor& record, const CsrNames& names) {
  const at::Tensor host = record.is_cpu() ? record : record.cpu();
  const int64_t* r = host.data_ptr<int64_t>();
  const int64_t pos = r[1], val = r[2];
  switch (r[0]) {
    case kOk:
      return;
    case kRowOutOfRange:
      TORCH_CHECK_INDEX(false, op, ": ", names.rows, "[", pos, "] = ", val,
                        " is out of range for a CSR matrix with ", names.num_rows,
                        " rows (indptr has ", names.num_rows + 1, " entries)");
    case kBadIndptr:
      TORCH_CHECK_VALUE(false, op, ": indptr is not a valid CSR row pointer at row ", pos,
                        ": indptr[", pos, "] = ", val, ", and indptr must be non-decreasing ",
                        "within [0, nnz = ", names.nnz, "]");
    case kIndptrEnds:
      TORCH_CHECK_VALUE(false, op, ": indptr[", pos, "] = ", val, " but must be ",
                        pos == 0 ? int64_t(0) : names.nnz,
                        pos == 0 ? "" : " (the length of indices)");
    case kIndexOutOfRange:
      TORCH_CHECK_INDEX(false, op, ": indices[", pos, "] = ", val, " is out of range [0, ",
                        names.num_cols, ") given by ", names.cols_of);
    case kRowNotSorted:
      TORCH_CHECK_VALUE(false, op, ": indices of CSR row ", pos,
                        " are not strictly ascending (at indices[", val,
                        "]); sort the columns of each row (dmfx.data builds them sorted)");
    case kNoNegativeLeft:
      TORCH_CHECK_VALUE(false, op, ": user ", val, " (", names.rows, "[", pos,
                        "]) has interacted with all ", names.num_cols,
                        " items, so no negative item can be sampled for it");
    case kTargetOutOfRange:
      TORCH_CHECK_VALUE(false, op, ": target[", pos,
                        "] is not in [0, 1]; nce targets are rating / max rating, ce targets 0 or 1");
    default:
      TORCH_CHECK(false, op, ": kernel reported unknown error code ", r[0]);
  }
}

}  // namespace dmfx
