// sparse_rows_matmul: argument checks, the CPU / CUDA registrations and autograd.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "checks.h"
#include "dispatch.h"
#include "output_alloc.h"
#include "cpu/sparse_rows_matmul_cpu.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/sparse_rows_matmul_cuda.h"
#endif

namespace dmfx {

namespace {

constexpr const char* kOp = "dmfx.sparse_rows_matmul";

// Checked, contiguous arguments of one call. `dense` is the tensor that sets dtype and device:
// weight in the forward, grad_out in the weight backward.
struct Args {
  at::Tensor indptr, indices, values, rows;
  int64_t num_rows, nnz;

  Args(const at::Tensor& indptr_, const at::Tensor& indices_,
       const c10::optional<at::Tensor>& values_, const at::Tensor& rows_,
       const at::Tensor& dense, const char* dense_name) {
    check_index_vector(kOp, "indptr", indptr_);
    check_index_vector(kOp, "indices", indices_);
    check_index_vector(kOp, "rows", rows_);
    check_floating(kOp, dense_name, dense);
    TORCH_CHECK_VALUE(dense.dim() == 2, kOp, ": ", dense_name, " must be 2-D, got shape ",
                      dense.sizes());
    TORCH_CHECK_TYPE(indices_.scalar_type() == indptr_.scalar_type(), kOp,
                     ": indices and indptr must share one index dtype, got ",
                     indices_.scalar_type(), " and ", indptr_.scalar_type());
    TORCH_CHECK_VALUE(indptr_.numel() >= 1, kOp,
                      ": indptr must have num_rows + 1 >= 1 entries, got an empty tensor");
    check_same_device(kOp, "indptr", indptr_, dense_name, dense);
    check_same_device(kOp, "indices", indices_, dense_name, dense);
    check_same_device(kOp, "rows", rows_, dense_name, dense);
    if (values_.has_value()) {
      const at::Tensor& v = *values_;
      check_same_dtype(kOp, "values", v, dense_name, dense);
      check_same_device(kOp, "values", v, dense_name, dense);
      TORCH_CHECK_VALUE(v.dim() == 1 && v.numel() == indices_.numel(), kOp,
                        ": values must be 1-D with one entry per index (", indices_.numel(),
                        "), got shape ", v.sizes());
      values = v.contiguous();
    }
    indptr = indptr_.contiguous();
    indices = indices_.contiguous();
    rows = rows_.to(at::kLong).contiguous();
    num_rows = indptr.numel() - 1;
    nnz = indices.numel();
  }

  template <typename scalar_t, typename index_t>
  CsrBatch<scalar_t, index_t> view() const {
    return {indptr.data_ptr<index_t>(),
            indices.data_ptr<index_t>(),
            values.defined() ? values.data_ptr<scalar_t>() : nullptr,
            num_rows,
            nnz,
            rows.data_ptr<int64_t>(),
            rows.numel()};
  }

  CsrNames names(int64_t weight_rows) const {
    return {"rows", num_rows, nnz, weight_rows, "weight.size(0)"};
  }
};

// Rows of work worth one task of torch's thread pool.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// Runs fn(r0, r1, h0, h1) over tiles of [0, rows) x [0, width) on torch's thread pool. Columns are
// split first, into at most one chunk per thread of at least one full register block (256
// bytes): a thread then reads its slice of every table row the batch touches, a working set
// `threads` times smaller than whole rows that stays in the core's own L2. Rows are split further
// when there are more threads than column chunks.
template <typename scalar_t, typename Fn>
void parallel_tiles(int64_t rows, int64_t width, int64_t work_per_row, const Fn& fn) {
  constexpr int64_t kChunkMin = 256 / sizeof(scalar_t);
  const int64_t threads = at::get_num_threads();
  const int64_t col_chunks = std::clamp<int64_t>(width / kChunkMin, 1, threads);
  const int64_t row_grain = grain_for(work_per_row * width / col_chunks);
  const int64_t row_chunks = std::clamp<int64_t>(
      (rows + row_grain - 1) / row_grain, 1, (threads + col_chunks - 1) / col_chunks);
  // Chunk edges on whole 32-byte vectors.
  constexpr int64_t kLanes = 32 / sizeof(scalar_t);
  const int64_t vectors = (width + kLanes - 1) / kLanes;
  at::parallel_for(0, col_chunks * row_chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rc = t / col_chunks, cc = t % col_chunks;
      const int64_t h0 = std::min(width, cc * vectors / col_chunks * kLanes);
      const int64_t h1 = std::min(width, (cc + 1) * vectors / col_chunks * kLanes);
      fn(rc * rows / row_chunks, (rc + 1) * rows / row_chunks, h0, h1);
    }
  });
}

at::Tensor forward(const at::Tensor& indptr, const at::Tensor& indices,
                   const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                   const at::Tensor& weight_, bool validate) {
  const Args a(indptr, indices, values, rows, weight_, "weight");
  const at::Tensor weight = weight_.contiguous();
  const int64_t batch = a.rows.numel(), weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor out = empty_output({batch, width}, weight.options());
  at::Tensor error = new_error_record(weight.device());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* w = weight.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      int64_t* e = error.data_ptr<int64_t>();
      if (weight.is_cuda()) {
#ifdef WITH_CUDA
        const c10::cuda::CUDAGuard guard(weight.device());
        C10_CUDA_CHECK(cuda::sparse_rows_matmul_forward(
            csr, w, weight_rows, width, o, e, c10::cuda::getCurrentCUDAStream().stream()));
#endif
      } else {
        const int64_t avg_nnz = a.nnz / std::max<int64_t>(1, a.num_rows);
        parallel_tiles<scalar_t>(batch, width, avg_nnz + 1,
                                 [&](int64_t b0, int64_t b1, int64_t h0, int64_t h1) {
                                   cpu::sparse_rows_matmul_forward(csr, w, weight_rows, width, o,
                                                                   b0, b1, h0, h1, e);
                                 });
      }
    });
  });
  if (validate) raise_if_error(kOp, error, a.names(weight_rows));
  return out;
}

at::Tensor backward_weight(const at::Tensor& indptr, const at::Tensor& indices,
                           const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                           const at::Tensor& grad_out_, int64_t num_weight_rows, bool validate) {
  const Args a(indptr, indices, values, rows, grad_out_, "grad_out");
  const at::Tensor grad_out = grad_out_.contiguous();
  TORCH_CHECK_VALUE(grad_out.size(0) == a.rows.numel(), kOp, ": grad_out has ", grad_out.size(0),
                    " rows but rows has ", a.rows.numel(), " entries");
  TORCH_CHECK_VALUE(num_weight_rows >= 0, kOp, ": num_weight_rows must be >= 0, got ",
                    num_weight_rows);
  const int64_t width = grad_out.size(1);
  at::Tensor error = new_error_record(grad_out.device());
  at::Tensor grad_weight;
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_weight", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      int64_t* e = error.data_ptr<int64_t>();
      if (grad_out.is_cuda()) {
#ifdef WITH_CUDA
        grad_weight = at::zeros({num_weight_rows, width}, grad_out.options());
        const c10::cuda::CUDAGuard guard(grad_out.device());
        C10_CUDA_CHECK(cuda::sparse_rows_matmul_backward_weight(
            csr, g, num_weight_rows, width, grad_weight.data_ptr<scalar_t>(), e,
            c10::cuda::getCurrentCUDAStream().stream()));
#endif
      } else {
        // Transpose the batch (serial counting sort, O(batch nnz)), then every thread gathers
        // the tiles of grad_weight it owns; see the kernel header.
        TORCH_CHECK_VALUE(csr.batch <= std::numeric_limits<int32_t>::max(), kOp,
                          ": at most 2^31 - 1 rows per call, got ", csr.batch);
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
        parallel_tiles<scalar_t>(num_weight_rows, width, per_row,
                                 [&](int64_t c0, int64_t c1, int64_t h0, int64_t h1) {
                                   cpu::sparse_rows_matmul_backward_weight<scalar_t>(
                                       cp, sl, sv, g, width, gw, c0, c1, h0, h1);
                                 });
      }
    });
  });
  if (validate) raise_if_error(kOp, error, a.names(num_weight_rows));
  return grad_weight;
}

at::Tensor backward_values(const at::Tensor& indptr, const at::Tensor& indices,
                           const at::Tensor& rows, const at::Tensor& weight_,
                           const at::Tensor& grad_out_, bool validate) {
  const Args a(indptr, indices, c10::nullopt, rows, weight_, "weight");
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous();
  check_same_dtype(kOp, "grad_out", grad_out, "weight", weight);
  check_same_device(kOp, "grad_out", grad_out, "weight", weight);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == a.rows.numel() &&
                        grad_out.size(1) == weight.size(1),
                    kOp, ": grad_out must have shape [", a.rows.numel(), ", ", weight.size(1),
                    "], got ", grad_out.sizes());
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  at::Tensor grad_values = at::zeros({a.nnz}, weight.options());
  at::Tensor error = new_error_record(weight.device());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
    AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sparse_rows_matmul_backward_values", [&] {
      const auto csr = a.view<scalar_t, index_t>();
      const scalar_t* w = weight.data_ptr<scalar_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      scalar_t* gv = grad_values.data_ptr<scalar_t>();
      int64_t* e = error.data_ptr<int64_t>();
      if (weight.is_cuda()) {
#ifdef WITH_CUDA
        const c10::cuda::CUDAGuard guard(weight.device());
        C10_CUDA_CHECK(cuda::sparse_rows_matmul_backward_values(
            csr, w, weight_rows, g, width, gv, e, c10::cuda::getCurrentCUDAStream().stream()));
#endif
      } else {
        // Threads own disjoint ranges of nnz slots, so repeated rows never race.
        at::parallel_for(0, std::max<int64_t>(1, a.nnz), grain_for(width + a.rows.numel()),
                         [&](int64_t k0, int64_t k1) {
                           cpu::sparse_rows_matmul_backward_values(csr, w, weight_rows, g, width,
                                                                   gv, k0, k1, e);
                         });
      }
    });
  });
  if (validate) raise_if_error(kOp, error, a.names(weight_rows));
  return grad_values;
}

// Autograd in C++ rather than torch.library.register_autograd: the Python formula cost ~30 us
// a call on each side (measured), as much as the kernels of a small batch.
class SparseRowsMatmulFunction : public torch::autograd::Function<SparseRowsMatmulFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& indptr,
                            const at::Tensor& indices, const c10::optional<at::Tensor>& values,
                            const at::Tensor& rows, const at::Tensor& weight, bool validate) {
    static const auto op = typed_op<decltype(dmfx::forward)>("dmfx::sparse_rows_matmul");
    ctx->save_for_backward({indptr, indices, values.value_or(at::Tensor()), rows, weight});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(indptr, indices, values, rows, weight, validate);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto values_op =
        typed_op<decltype(dmfx::backward_values)>("dmfx::sparse_rows_matmul_backward_values");
    // The schema's row count is a SymInt (the kernel takes it as int64_t), so that tracing with
    // dynamic shapes can pass a symbolic size.
    static const auto weight_op =
        typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const at::Tensor&, const at::Tensor&, c10::SymInt, bool)>(
            "dmfx::sparse_rows_matmul_backward_weight");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &indptr = saved[0], &indices = saved[1], &rows = saved[3],
                     &weight = saved[4];
    const bool has_values = saved[2].defined();
    const c10::optional<at::Tensor> values =
        has_values ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    const at::Tensor& grad = grads[0];
    at::Tensor grad_values, grad_weight;
    // Input edges count only tensors given: indptr, indices, [values], rows, weight.
    // The forward already validated these indices: no second check, no sync.
    if (has_values && ctx->needs_input_grad(2)) {
      grad_values = values_op.call(indptr, indices, rows, weight, grad, false);
    }
    if (ctx->needs_input_grad(has_values ? 4 : 3)) {
      grad_weight = weight_op.call(indptr, indices, values, rows, grad, weight.sym_size(0), false);
    }
    return {at::Tensor(), at::Tensor(), grad_values, at::Tensor(), grad_weight, at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& indptr, const at::Tensor& indices,
                            const c10::optional<at::Tensor>& values, const at::Tensor& rows,
                            const at::Tensor& weight, bool validate) {
  return SparseRowsMatmulFunction::apply(indptr, indices, values, rows, weight, validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, Autograd, m) {
  m.impl("sparse_rows_matmul", &forward_autograd);
}

TORCH_LIBRARY_IMPL(dmfx, CPU, m) {
  m.impl("sparse_rows_matmul", &forward);
  m.impl("sparse_rows_matmul_backward_weight", &backward_weight);
  m.impl("sparse_rows_matmul_backward_values", &backward_values);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  m.impl("sparse_rows_matmul", &forward);
  m.impl("sparse_rows_matmul_backward_weight", &backward_weight);
  m.impl("sparse_rows_matmul_backward_values", &backward_values);
}
#endif

}  // namespace dmfx
