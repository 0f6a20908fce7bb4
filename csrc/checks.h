#pragma once
// Argument checks shared by the ops' CPU and CUDA implementations, so both devices raise the
// same errors. Each names the op and the argument, and raises the Python exception type that
// fits: TypeError (dtype), ValueError (shape, value, device), IndexError (an id out of range).
#include <ATen/ATen.h>

#include <limits>
#include <string>

#include "common/csr.h"
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

// The loss ops also take float16 / bfloat16 (tower outputs under autocast or in half), which
// they compute in float32; see compute_dtype.
inline void check_loss_floating(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                   op, ": ", name, " must be float16, bfloat16, float32 or float64, got ", s);
}

// The dtype a loss is computed and returned in: float32 for half-precision inputs, whose sums
// and logs over a batch would lose too much in half.
inline at::ScalarType compute_dtype(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 ? at::kFloat : s;
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

// How a CSR-reading op names its arguments in messages.
struct CsrNames {
  const char* rows;     // the batch of row ids ("rows", "users")
  int64_t num_rows;     // rows of the CSR matrix
  int64_t nnz;
  int64_t num_cols;     // the bound on indices
  std::string cols_of;  // what that bound is, e.g. "weight.size(0)"
};

// The CSR arguments of sparse_rows_matmul and sample_negatives, checked and contiguous: indptr
// and indices of one index dtype, a batch of row ids (int64 here), all on the device of `ref`.
struct CsrArgs {
  at::Tensor indptr, indices, rows;
  int64_t num_rows, nnz, batch;

  CsrArgs(const char* op, const at::Tensor& indptr_, const at::Tensor& indices_,
          const at::Tensor& rows_, const char* rows_name, const char* num_rows_name,
          const at::Tensor& ref, const char* ref_name) {
    check_index_vector(op, "indptr", indptr_);
    check_index_vector(op, "indices", indices_);
    check_index_vector(op, rows_name, rows_);
    TORCH_CHECK_TYPE(indices_.scalar_type() == indptr_.scalar_type(), op,
                     ": indices and indptr must share one index dtype, got ",
                     indices_.scalar_type(), " and ", indptr_.scalar_type());
    TORCH_CHECK_VALUE(indptr_.numel() >= 1, op, ": indptr must have ", num_rows_name,
                      " + 1 >= 1 entries, got an empty tensor");
    if (&ref != &indptr_) check_same_device(op, "indptr", indptr_, ref_name, ref);
    check_same_device(op, "indices", indices_, ref_name, ref);
    check_same_device(op, rows_name, rows_, ref_name, ref);
    // The error keys (csrc/common/error.h) and the CPU transpose number slots in 31 bits.
    TORCH_CHECK_VALUE(rows_.numel() <= std::numeric_limits<int32_t>::max(), op, ": at most ",
                      "2^31 - 1 ", rows_name, " per call, got ", rows_.numel());
    indptr = indptr_.contiguous();
    indices = indices_.contiguous();
    rows = rows_.to(at::kLong).contiguous();
    num_rows = indptr.numel() - 1;
    nnz = indices.numel();
    batch = rows.numel();
  }

  template <typename scalar_t, typename index_t>
  CsrBatch<scalar_t, index_t> view(const scalar_t* values) const {
    return {indptr.data_ptr<index_t>(), indices.data_ptr<index_t>(), values, num_rows, nnz,
            rows.data_ptr<int64_t>(), batch};
  }
};

// The record the kernels fill (csrc/common/error.h), or none at all without validation: the
// kernels then skip their checks, and on CUDA nothing is allocated or zeroed.
inline at::Tensor new_error_record(const at::Device& device, bool validate) {
  if (!validate) return at::Tensor();
  return at::zeros({kErrorRecordSize}, at::TensorOptions().dtype(at::kLong).device(device));
}

inline int64_t* error_ptr(const at::Tensor& record) {
  return record.defined() ? record.data_ptr<int64_t>() : nullptr;
}

// The record on the host ({} without one). On CUDA this copies 40 bytes: the one sync an op
// makes, and only when asked to validate.
struct ErrorReport {
  int64_t code = kOk, position = 0, value = 0;
};

inline ErrorReport read_error(const at::Tensor& record) {
  if (!record.defined()) return {};
  const at::Tensor host = record.is_cpu() ? record : record.cpu();
  const int64_t* r = host.data_ptr<int64_t>();
  if (r[kRank] == 0) return {};
  return {r[kCode], r[kPosition], r[kValue]};
}

// Raises for a non-empty record of a CSR-reading op.
inline void raise_if_error(const char* op, const at::Tensor& record, const CsrNames& names) {
  const ErrorReport r = read_error(record);
  const int64_t pos = r.position, val = r.value;
  switch (r.code) {
    case kOk:
      return;
    case kRowOutOfRange:
      TORCH_CHECK_INDEX(false, op, ": ", names.rows, "[", pos, "] = ", val,
                        " is out of range for a CSR matrix with ", names.num_rows,
                        " rows (indptr has ", names.num_rows + 1, " entries)");
    case kBadIndptr:
    case kBadIndptrEnd:
      TORCH_CHECK_VALUE(false, op, ": indptr is not a valid CSR row pointer at row ", pos,
                        ": indptr[", r.code == kBadIndptr ? pos : pos + 1, "] = ", val,
                        ", and indptr must be non-decreasing within [0, nnz = ", names.nnz, "]");
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
    default:
      TORCH_CHECK(false, op, ": kernel reported unknown error code ", r.code);
  }
}

}  // namespace dmfx
