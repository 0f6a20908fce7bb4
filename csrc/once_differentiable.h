#pragma once
// The ops are differentiable once: their backward kernels have no derivatives of their own.
#include <torch/autograd.h>

#include <algorithm>

namespace dmfx {

// Called at the start of a backward. With create_graph=True autograd runs the backward in grad
// mode, and an input that requires grad there would have the backward kernels recorded through
// torch's autograd fallback, whose derivative is silently zero (a UserWarning at most): refuse
// instead. Tracing (AOTAutograd) runs the backward without grad mode, so it never trips this.
inline void check_not_double_backward(const char* op, const torch::autograd::variable_list& grads,
                                      const torch::autograd::variable_list& saved) {
  if (!at::GradMode::is_enabled()) return;
  const auto requires_grad = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  TORCH_CHECK(std::none_of(grads.begin(), grads.end(), requires_grad) &&
                  std::none_of(saved.begin(), saved.end(), requires_grad),
              op, ": double backward (create_graph=True through this op) is not supported: its "
              "backward is not differentiable");
}

}  // namespace dmfx
