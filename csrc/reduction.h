#pragma once
// The `reduction` argument of the fused losses ("none", "mean", "sum") and what it means for
// the backward pass: the upstream gradient is one value per element (none) or one scalar (mean,
// sum; mean also divides by the batch).
#include <ATen/ATen.h>

#include <algorithm>
#include <string>

namespace dmfx {

enum class Reduction { kNone, kMean, kSum };

inline Reduction parse_reduction(const char* op, c10::string_view reduction) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "mean") return Reduction::kMean;
  if (reduction == "sum") return Reduction::kSum;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'none', 'mean' or 'sum', got '",
                    std::string(reduction), "'");
}

// The upstream gradient of a batch of `batch` losses as the kernels read it: element n's factor
// is grad[n * stride] * scale.
struct UpstreamGrad {
  at::Tensor grad;  // contiguous, in the loss's dtype
  int64_t stride;
  double scale;
};

inline UpstreamGrad upstream_grad(const char* op, const at::Tensor& grad, at::ScalarType dtype,
                                  int64_t batch, Reduction reduction,
                                  c10::string_view reduction_name) {
  if (reduction == Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == batch, op, ": grad must have shape [",
                      batch, "] for reduction 'none', got ", grad.sizes());
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must be a scalar for reduction '",
                      std::string(reduction_name), "', got shape ", grad.sizes());
  }
  return {grad.to(dtype).contiguous(), reduction == Reduction::kNone ? 1 : 0,
          reduction == Reduction::kMean ? 1.0 / std::max<int64_t>(1, batch) : 1.0};
}

}  // namespace dmfx
