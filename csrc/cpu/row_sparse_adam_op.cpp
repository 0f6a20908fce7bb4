// row_sparse_adam_ on CPU: the kernel of row_sparse_adam_cpu.cpp over torch's thread pool,
// registered for the CPU dispatch key.
#include <torch/library.h>

#include "../row_sparse_adam.h"
#include "parallel.h"
#include "row_sparse_adam_cpu.h"

namespace dmfx {
namespace row_sparse_adam {
namespace {

void update(at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq, const at::Tensor& rows,
            const at::Tensor& grad_rows, double lr, double beta1, double beta2, double eps,
            int64_t step, bool validate) {
  const Args a(weight, exp_avg, exp_avg_sq, rows, grad_rows, lr, beta1, beta2, eps, step,
               validate);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "row_sparse_adam_", [&] {
    scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const int64_t* r = a.rows.data_ptr<int64_t>();
    const scalar_t* g = a.grad_rows.data_ptr<scalar_t>();
    at::parallel_for(0, a.n, cpu::grain(8 * a.width + 1), [&](int64_t i0, int64_t i1) {
      cpu::row_sparse_adam(w, m, v, a.weight_rows, a.width, r, g, a.step, i0, i1);
    });
  });
}

}  // namespace
}  // namespace row_sparse_adam

TORCH_LIBRARY_IMPL(dmfx, CPU, m) { m.impl("row_sparse_adam_", &row_sparse_adam::update); }

}  // namespace dmfx
