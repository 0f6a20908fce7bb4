#pragma once
// cosine_nce_loss: the argument checks and signatures its CPU (csrc/cpu) and CUDA (csrc/cuda)
// implementations share, so both raise the same errors.
#include <ATen/ATen.h>

#include <limits>
#include <tuple>

#include "checks.h"
#include "reduction.h"

namespace dmfx {
namespace cosine_nce_loss {

constexpr const char* kOp = "dmfx.cosine_nce_loss";

inline void raise_bad_target(int64_t position) {
  TORCH_CHECK_VALUE(false, kOp, ": target[", position,
                    "] is not in [0, 1]; nce targets are rating / max rating, ce targets 0 or 1");
}

// Checked inputs of one call, contiguous and in the dtype the kernels compute in (float32 for
// half-precision p and q; the loss comes out in it too).
struct Inputs {
  at::Tensor p, q, target;
  int64_t batch, dim;
  Reduction reduction;

  Inputs(const at::Tensor& p_, const at::Tensor& q_, const at::Tensor& target_, double mu,
         c10::string_view reduction_name, bool validate = false) {
    check_loss_floating(kOp, "p", p_);
    check_same_dtype(kOp, "q", q_, "p", p_);
    TORCH_CHECK_TYPE(at::isFloatingType(target_.scalar_type()), kOp,
                     ": target must be a floating tensor, got ", target_.scalar_type());
    check_same_device(kOp, "q", q_, "p", p_);
    check_same_device(kOp, "target", target_, "p", p_);
    TORCH_CHECK_VALUE(p_.dim() == 2, kOp, ": p must be 2-D [batch, dim], got shape ",
                      p_.sizes());
    TORCH_CHECK_VALUE(q_.sizes() == p_.sizes(), kOp, ": q must have the shape of p ",
                      p_.sizes(), ", got ", q_.sizes());
    TORCH_CHECK_VALUE(target_.dim() == 1 && target_.size(0) == p_.size(0), kOp,
                      ": target must be 1-D with one entry per row of p (", p_.size(0),
                      "), got shape ", target_.sizes());
    TORCH_CHECK_VALUE(mu > 0 && mu < 0.5, kOp, ": mu must lie in (0, 0.5) so that ",
                      "mu < 1 - mu, got ", mu);
    const at::ScalarType dtype = compute_dtype(p_.scalar_type());
    // The kernels clamp in the compute dtype: a mu below its normal range would round to a
    // subnormal or 0 there, and log(mu) to a loss of inf and NaN gradients.
    const bool is_double = dtype == at::kDouble;
    const double smallest = is_double ? std::numeric_limits<double>::min()
                                      : static_cast<double>(std::numeric_limits<float>::min());
    TORCH_CHECK_VALUE(mu >= smallest, kOp, ": mu must be at least ", smallest,
                      ", the smallest normal ", is_double ? "float64" : "float32",
                      " (the dtype this call computes in), got ", mu);
    reduction = parse_reduction(kOp, reduction_name);
    // The kernels check the target in the compute dtype, where a float64 entry just outside
    // [0, 1] (1 + 1e-9) rounds into it: such a target is checked before the cast.
    if (validate && target_.scalar_type() == at::kDouble && dtype != at::kDouble) {
      const at::Tensor bad = ((target_ >= 0) & (target_ <= 1)).logical_not().nonzero();
      if (bad.numel() > 0) raise_bad_target(bad[0][0].item<int64_t>());
    }
    p = p_.to(dtype).contiguous();
    q = q_.to(dtype).contiguous();
    target = target_.to(dtype).contiguous();
    batch = p.size(0);
    dim = p.size(1);
  }
};

// Raises for a non-empty record {kTargetOutOfRange, row}.
inline void raise_if_bad_target(const at::Tensor& record) {
  const ErrorReport r = read_error(record);
  if (r.code == kOk) return;
  TORCH_CHECK(r.code == kTargetOutOfRange, kOp, ": kernel reported unknown error code ", r.code);
  raise_bad_target(r.position);
}

// The kernels' signatures, as the dispatcher calls them.
using ForwardFn = at::Tensor(const at::Tensor& p, const at::Tensor& q, const at::Tensor& target,
                             double mu, c10::string_view reduction, bool validate);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& grad, const at::Tensor& p,
                                                      const at::Tensor& q,
                                                      const at::Tensor& target, double mu,
                                                      c10::string_view reduction);

}  // namespace cosine_nce_loss
}  // namespace dmfx
