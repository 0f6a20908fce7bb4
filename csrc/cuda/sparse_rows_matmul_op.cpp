// sparse_rows_matmul on CUDA: buffers and steps around the kernels of sparse_rows_matmul_cuda.cu,
// registered for the CUDA dispatch key (compiled in CUDA builds only). Every sum is made in a
// fixed order (see the kernel header), so the op honours torch.use_deterministic_algorithms.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../sparse_rows_matmul.h"
#include "sparse_rows_matmul_cuda.h"

namespace dmfx {
namespace sparse_rows_matmul {
namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Checked bounds of every batch row: begin[b] and items[b] = length + 1 (csr_batch_rows).
template <typename index_t>
std::tuple<at::Tensor, at::Tensor> batch_rows(const Args& a, int64_t* error) {
  at::Tensor begin = at::empty({a.batch}, a.rows.options());
  at::Tensor items = at::empty({a.batch}, a.rows.options());
  C10_CUDA_CHECK(cuda::csr_batch_rows(a.indptr.data_ptr<index_t>(), a.num_rows, a.nnz,
                                      a.rows.data_ptr<int64_t>(), a.batch,
                                      begin.data_ptr<int64_t>(), items.data_ptr<int64_t>(), error,
                                      stream()));
  return {begin, items};
}

// out[s] = sum of the entries of segment s (see cuda::segment_gather), with its carry buffers.
template <typename scalar_t, typename id_t>
void gather(const at::Tensor& begin, const at::Tensor& items_end, const id_t* ids,
            const scalar_t* values, int64_t id_limit, const at::Tensor& dense, int64_t entries_hint,
            at::Tensor& out, int64_t* error) {
  const int64_t segments = out.size(0), width = out.size(1);
  const int64_t workers = cuda::segment_gather_workers(segments, entries_hint);
  at::Tensor carry = at::empty({workers, width}, out.options());
  at::Tensor carry_segment = at::empty({workers}, begin.options());
  const cudaError_t status = cuda::segment_gather(
      begin.data_ptr<int64_t>(), items_end.data_ptr<int64_t>(), segments, ids, values, id_limit,
      dense.data_ptr<scalar_t>(), width, out.data_ptr<scalar_t>(), carry.data_ptr<scalar_t>(),
      carry_segment.data_ptr<int64_t>(), workers, error, stream());
  C10_CUDA_CHECK(status);
}

at::Tensor forward(const at::Tensor& indptr, const at::Tensor& indices,
                   const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                   const at::Tensor& weight_, bool validate) {
  const Args a(indptr, indices, values, rows, weight_, "weight");
  const at::Tensor weight = weight_.contiguous();
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor out = at::empty({a.batch, width}, weight.options());
  const at::Tensor error = new_error_record(weight.device(), validate);
  int64_t* e = error_ptr(error);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const auto [begin, items] = batch_rows<index_t>(a, e);
      gather<scalar_t, index_t>(begin, at::cumsum(items, 0), csr.indices, csr.values,
                                weight_rows, weight, a.nnz, out, e);
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
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_weight = at::empty({num_weight_rows, grad_out.size(1)}, grad_out.options());
  const at::Tensor error = new_error_record(grad_out.device(), validate);
  int64_t* e = error_ptr(error);
  const auto long_options = a.rows.options();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const auto [begin, items] = batch_rows<index_t>(a, e);
      // The batch transposed, as on the CPU: its entries grouped by column, each column's in
      // slot order (a stable sort), so every row of grad_weight is one ordered gather of
      // grad_out rows instead of a scatter of float atomics. Sizing the sort is the op's one
      // sync: the batch's entry count lives on the GPU.
      const at::Tensor entries_end = at::cumsum(items - 1, 0);
      const int64_t entries = a.batch > 0 ? entries_end[a.batch - 1].item<int64_t>() : 0;
      at::Tensor key = at::empty({entries}, long_options);
      at::Tensor slot = at::empty({entries}, long_options);
      at::Tensor value = csr.values ? at::empty({entries}, grad_out.options()) : at::Tensor();
      C10_CUDA_CHECK(cuda::batch_entries_by_slot(
          csr, begin.data_ptr<int64_t>(), entries_end.data_ptr<int64_t>(), entries,
          num_weight_rows, key.data_ptr<int64_t>(), slot.data_ptr<int64_t>(),
          value.defined() ? value.data_ptr<scalar_t>() : nullptr, e, stream()));
      const auto [sorted_key, permutation] = at::sort(key, /*stable=*/true, 0, false);
      const at::Tensor sorted_slot = slot.index_select(0, permutation);
      const at::Tensor sorted_value =
          value.defined() ? value.index_select(0, permutation) : at::Tensor();
      // Column c's entries start at col_ptr[c]; out-of-range ids (key weight_rows) sort last.
      const at::Tensor col_ptr =
          at::searchsorted(sorted_key, at::arange(num_weight_rows + 1, long_options));
      const at::Tensor col_items_end =
          col_ptr.slice(0, 1) + at::arange(1, num_weight_rows + 1, long_options);
      gather<scalar_t, int64_t>(col_ptr.slice(0, 0, num_weight_rows).contiguous(), col_items_end,
                                sorted_slot.data_ptr<int64_t>(),
                                sorted_value.defined() ? sorted_value.data_ptr<scalar_t>()
                                                       : nullptr,
                                a.batch, grad_out, entries, grad_weight, nullptr);
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
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor grad_values = at::zeros({a.nnz}, weight.options());
  const at::Tensor error = new_error_record(weight.device(), validate);
  int64_t* e = error_ptr(error);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const auto [begin, items] = batch_rows<index_t>(a, e);
      if (a.batch == 0) return;
      // Slots grouped by row (stably: in slot order); only each run's first slot lays out the
      // row's entries, and the kernel sums the run for each entry, without atomics.
      const auto [sorted_rows, order] = at::sort(a.rows, /*stable=*/true, 0, false);
      at::Tensor first_of_run = at::ones({a.batch}, a.rows.options().dtype(at::kBool));
      first_of_run.slice(0, 1).copy_(sorted_rows.slice(0, 1) !=
                                     sorted_rows.slice(0, 0, a.batch - 1));
      const at::Tensor lengths = at::where(first_of_run, items.index_select(0, order) - 1, 0);
      const at::Tensor entries_end = at::cumsum(lengths, 0);
      C10_CUDA_CHECK(cuda::backward_values(
          csr, begin.data_ptr<int64_t>(), order.data_ptr<int64_t>(),
          sorted_rows.data_ptr<int64_t>(), entries_end.data_ptr<int64_t>(),
          weight.data_ptr<scalar_t>(), weight_rows, grad_out.data_ptr<scalar_t>(), width,
          grad_values.data_ptr<scalar_t>(), e, stream()));
    });
  });
  raise_if_error(kOp, error, a.names(weight_rows));
  if (validate) check_rows_disjoint(a);
  return grad_values;
}

}  // namespace
}  // namespace sparse_rows_matmul

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("sparse_rows_matmul", &sparse_rows_matmul::forward);
  m.impl("sparse_rows_matmul_backward_weight", &sparse_rows_matmul::backward_weight);
  m.impl("sparse_rows_matmul_backward_values", &sparse_rows_matmul::backward_values);
}

}  // namespace dmfx
