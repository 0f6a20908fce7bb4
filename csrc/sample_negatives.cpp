// sample_negatives: argument checks and the CPU / CUDA registrations.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/sample_negatives_cpu.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/sample_negatives_cuda.h"
#endif

namespace dmfx {

namespace {

constexpr const char* kOp = "dmfx.sample_negatives";

at::Tensor sample(const at::Tensor& indptr_, const at::Tensor& indices_, const at::Tensor& users_,
                  int64_t num_items, int64_t num_negatives, int64_t seed, bool validate) {
  check_index_vector(kOp, "indptr", indptr_);
  check_index_vector(kOp, "indices", indices_);
  check_index_vector(kOp, "users", users_);
  TORCH_CHECK_TYPE(indices_.scalar_type() == indptr_.scalar_type(), kOp,
                   ": indices and indptr must share one index dtype, got ",
                   indices_.scalar_type(), " and ", indptr_.scalar_type());
  TORCH_CHECK_VALUE(indptr_.numel() >= 1, kOp,
                    ": indptr must have num_users + 1 >= 1 entries, got an empty tensor");
  check_same_device(kOp, "indices", indices_, "indptr", indptr_);
  check_same_device(kOp, "users", users_, "indptr", indptr_);
  TORCH_CHECK_VALUE(num_items > 0, kOp, ": num_items must be positive, got ", num_items);
  TORCH_CHECK_VALUE(num_negatives >= 0, kOp, ": num_negatives must be >= 0, got ",
                    num_negatives);
  const at::Tensor indptr = indptr_.contiguous(), indices = indices_.contiguous();
  const at::Tensor users = users_.to(at::kLong).contiguous();
  const int64_t num_users = indptr.numel() - 1, nnz = indices.numel(), batch = users.numel();
  at::Tensor out = at::empty({batch, num_negatives}, users.options());
  at::Tensor error = new_error_record(users.device());
  const auto key = static_cast<uint64_t>(seed);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "sample_negatives", [&] {
    const index_t* ip = indptr.data_ptr<index_t>();
    const index_t* ix = indices.data_ptr<index_t>();
    const int64_t* up = users.data_ptr<int64_t>();
    int64_t* op = out.data_ptr<int64_t>();
    int64_t* e = error.data_ptr<int64_t>();
    if (users.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(users.device());
      C10_CUDA_CHECK(cuda::sample_negatives(ip, ix, num_users, nnz, up, batch, num_items,
                                            num_negatives, key, validate, op, e,
                                            c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      const int64_t avg_degree = nnz / std::max<int64_t>(1, num_users);
      const int64_t cost = num_negatives * 64 + (validate ? avg_degree : 0) + 1;
      at::parallel_for(0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / cost),
                       [&](int64_t b0, int64_t b1) {
                         cpu::sample_negatives(ip, ix, num_users, nnz, up, num_items,
                                               num_negatives, key, validate, op, b0, b1, e);
                       });
    }
  });
  if (validate) raise_if_error(kOp, error, CsrNames{"users", num_users, nnz, num_items, "num_items"});
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, CPU, m) { m.impl("sample_negatives", &sample); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dmfx, CUDA, m) { m.impl("sample_negatives", &sample); }
#endif

}  // namespace dmfx
