// sparse_rows_matmul on CPU: the scheduling of the kernels in sparse_rows_matmul_cpu.cpp over
// torch's thread pool, registered for the CPU dispatch key.
#include <torch/library.h>

#include <algorithm>

#include "../sparse_rows_matmul.h"
#include "output_alloc.h"
#include "parallel.h"
#include "sparse_rows_matmul_cpu.h"

namespace dmfx {
namespace sparse_rows_matmul {
namespace {

at::Tensor forward(const at::Tensor& indptr, const at::Tensor& indices,
                   const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                   const at::Tensor& weight_, bool validate) {
  const Args a(indptr, indices, values, rows, weight_, "weight");
  const at::Tensor weight = weight_.contiguous();
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor out = empty_output({a.batch, width}, weight.options());
  const at::Tensor error = new_error_record(weight.device(), validate);
  int64_t* e = error_ptr(error);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* w = weight.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      check_indptr_ends(csr.indptr, csr.num_rows, csr.nnz, e);
      const int64_t avg_nnz = a.nnz / std::max<int64_t>(1, a.num_rows);
      cpu::parallel_tiles<scalar_t>(a.batch, width, avg_nnz + 1,
                                    [&](int64_t b0, int64_t b1, int64_t h0, int64_t h1) {
                                      cpu::sparse_rows_matmul_forward(csr, w, weight_rows, width,
                                                                      o, b0, b1, h0, h1, e);
                                    });
    });
  });
  raise_if_error(kOp, error, a.names(weight_rows));
  return out;
}

at::Tensor backward_weight(const at::Tensor& indptr, const at::Tensor& indices,
                           const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                           const at::Tensor& grad_out_, int64_t num_weight_rows, bool validate) {
  const Args a(indptr, indices, values, rows, grad_out_, "grad_out");
  const at::Tensor grad_out = grad_out_.contiguous();
  check_backward_weight(a, grad_out, num_weight_rows);
  const int64_t width = grad_out.size(1);
  const at::Tensor error = new_error_record(grad_out.device(), validate);
  int64_t* e = error_ptr(error);
  at::Tensor grad_weight;
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      check_indptr_ends(csr.indptr, csr.num_rows, csr.nnz, e);
      // Transpose the batch (serial counting sort, O(batch nnz)), then every thread gathers
      // the tiles of grad_weight it owns; see the kernel header.
      const auto long_options = grad_out.options().dtype(at::kLong);
      at::Tensor col_ptr = at::zeros({num_weight_rows + 1}, long_options);
      int64_t* cp = col_ptr.data_ptr<int64_t>();
      const int64_t entries = cpu::batch_transpose_counts(csr, num_weight_rows, cp, e);
      at::Tensor cursor = at::empty({num_weight_rows}, long_options);
      at::Tensor slots = at::empty({entries}, grad_out.options().dtype(at::kInt));
      at::Tensor slot_values;
      if (csr.values) slot_values = at::empty({entries}, grad_out.options());
      scalar_t* sv = csr.values ? slot_values.data_ptr<scalar_t>() : nullptr;
      cpu::batch_transpose_fill(csr, num_weight_rows, cp, cursor.data_ptr<int64_t>(),
                                slots.data_ptr<int32_t>(), sv);
      grad_weight = empty_output({num_weight_rows, width}, grad_out.options());
      scalar_t* gw = grad_weight.data_ptr<scalar_t>();
      const int32_t* sl = slots.data_ptr<int32_t>();
      const int64_t per_row = entries / std::max<int64_t>(1, num_weight_rows) + 1;
      cpu::parallel_tiles<scalar_t>(num_weight_rows, width, per_row,
                                    [&](int64_t c0, int64_t c1, int64_t h0, int64_t h1) {
                                      cpu::sparse_rows_matmul_backward_weight<scalar_t>(
                                          cp, sl, sv, g, width, gw, c0, c1, h0, h1);
                                    });
    });
  });
  raise_if_error(kOp, error, a.names(num_weight_rows));
  return grad_weight;
}

at::Tensor backward_values(const at::Tensor& indptr, const at::Tensor& indices,
                           const at::Tensor& rows, const at::Tensor& weight_,
                           const at::Tensor& grad_out_, bool validate) {
  const Args a(indptr, indices, c10::nullopt, rows, weight_, "weight");
  check_backward_values(a, weight_, grad_out_);
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous();
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor grad_values = at::zeros({a.nnz}, weight.options());
  const at::Tensor error = new_error_record(weight.device(), validate);
  int64_t* e = error_ptr(error);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* w = weight.data_ptr<scalar_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      scalar_t* gv = grad_values.data_ptr<scalar_t>();
      check_indptr_ends(csr.indptr, csr.num_rows, csr.nnz, e);
      // Threads own disjoint ranges of nnz slots, so repeated rows never race.
      at::parallel_for(0, std::max<int64_t>(1, a.nnz), cpu::grain(width + a.batch),
                       [&](int64_t k0, int64_t k1) {
                         cpu::sparse_rows_matmul_backward_values(csr, w, weight_rows, g, width,
                                                                 gv, k0, k1, e);
                       });
    });
  });
  raise_if_error(kOp, error, a.names(weight_rows));
  if (validate) check_rows_disjoint(a);
  return grad_values;
}

}  // namespace
}  // namespace sparse_rows_matmul

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("sparse_rows_matmul", &sparse_rows_matmul::forward);
  m.impl("sparse_rows_matmul_backward_weight", &sparse_rows_matmul::backward_weight);
  m.impl("sparse_rows_matmul_backward_values", &sparse_rows_matmul::backward_values);
}

}  // namespace dmfx
