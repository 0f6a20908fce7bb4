#pragma once
// Typed handles to dmfx ops, for the C++ autograd formulas that call them below autograd.
#include <ATen/core/dispatch/Dispatcher.h>

namespace dmfx {

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace dmfx
