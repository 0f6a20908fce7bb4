// sample_negatives on CUDA: the kernel of sample_negatives_cuda.cu, registered for the CUDA
// dispatch key (compiled in CUDA builds only).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../sample_negatives.h"
#include "sample_negatives_cuda.h"

namespace dmfx {
namespace sample_negatives {
namespace {

at::Tensor sample(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& users,
                  int64_t num_items, int64_t num_negatives, int64_t seed, bool validate) {
  const Args a(indptr, indices, users, num_items, num_negatives);
  const c10::cuda::CUDAGuard guard(a.rows.device());
  at::Tensor out = at::empty({a.batch, num_negatives}, a.rows.options());
  const at::Tensor error = new_error_record(a.rows.device(), validate);
  AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sample_negatives", [&] {
    C10_CUDA_CHECK(cuda::sample_negatives(
        a.indptr.data_ptr<index_t>(), a.indices.data_ptr<index_t>(), a.num_rows, a.nnz,
        a.rows.data_ptr<int64_t>(), a.batch, num_items, num_negatives,
        static_cast<uint64_t>(seed), out.data_ptr<int64_t>(), error_ptr(error),
        c10::cuda::getCurrentCUDAStream().stream()));
  });
  raise_if_error(kOp, error, a.names(num_items));
  return out;
}

}  // namespace
}  // namespace sample_negatives

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) { m.impl("sample_negatives", &sample_negatives::sample); }

}  // namespace dmfx
