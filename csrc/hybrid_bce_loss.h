#pragma once
// hybrid_bce_loss: the argument checks and signatures its CPU (csrc/cpu) and CUDA (csrc/cuda)
// implementations share, so both raise the same errors.
#include <ATen/ATen.h>

#include "checks.h"
#include "common/hybrid_bce.h"
#include "reduction.h"

namespace dmfx {
namespace hybrid_bce_loss {

constexpr const char* kOp = "dmfx.hybrid_bce_loss";

// Checked inputs of one call, contiguous and in the dtype the kernels compute in (float32 for
// half-precision logits; the loss comes out in it too).
struct Inputs {
  at::Tensor logits, implicit_target, explicit_target;
  int64_t batch;
  Reduction reduction;

  Inputs(const at::Tensor& logits_, const at::Tensor& implicit_target_,
         const at::Tensor& explicit_target_, double eta, c10::string_view reduction_name) {
    check_loss_floating(kOp, "logits", logits_);
    check_same_dtype(kOp, "implicit_target", implicit_target_, "logits", logits_);
    check_same_dtype(kOp, "explicit_target", explicit_target_, "logits", logits_);
    check_same_device(kOp, "implicit_target", implicit_target_, "logits", logits_);
    check_same_device(kOp, "explicit_target", explicit_target_, "logits", logits_);
    TORCH_CHECK_VALUE(logits_.dim() == 1, kOp, ": logits must be 1-D [batch], got shape ",
                      logits_.sizes());
    TORCH_CHECK_VALUE(implicit_target_.sizes() == logits_.sizes(), kOp,
                      ": implicit_target must have the shape of logits ", logits_.sizes(),
                      ", got ", implicit_target_.sizes());
    TORCH_CHECK_VALUE(explicit_target_.sizes() == logits_.sizes(), kOp,
                      ": explicit_target must have the shape of logits ", logits_.sizes(),
                      ", got ", explicit_target_.sizes());
    // Checked on every call, validate or not: it is a host value, so the check costs nothing.
    TORCH_CHECK_VALUE(eta >= 0 && eta <= 1, kOp, ": eta must lie in [0, 1], got ", eta);
    reduction = parse_reduction(kOp, reduction_name);
    const at::ScalarType dtype = compute_dtype(logits_.scalar_type());
    logits = logits_.to(dtype).contiguous();
    implicit_target = implicit_target_.to(dtype).contiguous();
    explicit_target = explicit_target_.to(dtype).contiguous();
    batch = logits.size(0);
  }
};

// Raises for a non-empty record {kTargetOutOfRange, element, which target}. Reading the bad value
// for the message costs a second copy on CUDA, on the error path only.
inline void raise_if_bad_target(const at::Tensor& record, const at::Tensor& implicit_target,
                                const at::Tensor& explicit_target) {
  const ErrorReport r = read_error(record);
  if (r.code == kOk) return;
  TORCH_CHECK(r.code == kTargetOutOfRange, kOp, ": kernel reported unknown error code ", r.code);
  const bool implicit = r.value == kImplicitTarget;
  const at::Tensor& target = implicit ? implicit_target : explicit_target;
  TORCH_CHECK_VALUE(false, kOp, ": ", implicit ? "implicit_target" : "explicit_target", "[",
                    r.position, "] = ", target[r.position].item<double>(), " is not in [0, 1]; ",
                    implicit ? "implicit targets are 1 (observed) or 0 (sampled negative)"
                             : "explicit targets are rating / max rating, 0 for sampled "
                               "negatives");
}

// The kernels' signatures, as the dispatcher calls them.
using ForwardFn = at::Tensor(const at::Tensor& logits, const at::Tensor& implicit_target,
                             const at::Tensor& explicit_target, double eta,
                             c10::string_view reduction, bool validate);
using BackwardFn = at::Tensor(const at::Tensor& grad, const at::Tensor& logits,
                              const at::Tensor& implicit_target,
                              const at::Tensor& explicit_target, double eta,
                              c10::string_view reduction);

}  // namespace hybrid_bce_loss
}  // namespace dmfx
