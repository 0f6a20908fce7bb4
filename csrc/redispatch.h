#pragma once
// Calling dmfx ops again through the dispatcher, from the device-independent wrappers registered
// at the Autograd and Autocast keys: they adjust the call (record the graph, cast the inputs) and
// hand it on, so the dispatcher picks the CPU or CUDA kernel below them.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace dmfx {

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Autocast runs the ops in float32 (torch's "fp32" cast policy, as for its own losses): float16
// and bfloat16 tensors of the autocast device are cast, float64 and other devices left alone.
// Registered for CUDA (Autocast) and CPU (AutocastCPU); the guard keeps the cast call from
// coming back here.
template <c10::DeviceType kDevice>
struct AutocastFloat32 {
  static constexpr c10::DispatchKey kKey = kDevice == c10::DeviceType::CUDA
                                               ? c10::DispatchKey::Autocast
                                               : c10::DispatchKey::AutocastCPU;
  c10::impl::ExcludeDispatchKeyGuard guard{kKey};

  static at::Tensor cast(const at::Tensor& t) {
    return at::autocast::cached_cast(at::kFloat, t, kDevice);
  }
  static c10::optional<at::Tensor> cast(const c10::optional<at::Tensor>& t) {
    return at::autocast::cached_cast(at::kFloat, t, kDevice);
  }
};

}  // namespace dmfx
