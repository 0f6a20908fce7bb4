// sample_negatives on CPU: the kernel of sample_negatives_cpu.cpp over torch's thread pool,
// registered for the CPU dispatch key.
#include <torch/library.h>

#include <algorithm>

#include "../sample_negatives.h"
#include "parallel.h"
#include "sample_negatives_cpu.h"

namespace dmfx {
namespace sample_negatives {
namespace {

at::Tensor sample(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& users,
                  int64_t num_items, int64_t num_negatives, int64_t seed, bool validate) {
  const Args a(indptr, indices, users, num_items, num_negatives);
  at::Tensor out = at::empty({a.batch, num_negatives}, a.rows.options());
  const at::Tensor error = new_error_record(a.rows.device(), validate);
  int64_t* e = error_ptr(error);
  AT_DISPATCH_INDEX_TYPES(a.indices.scalar_type(), "sample_negatives", [&] {
    const index_t* ip = a.indptr.data_ptr<index_t>();
    const index_t* ix = a.indices.data_ptr<index_t>();
    const int64_t* up = a.rows.data_ptr<int64_t>();
    int64_t* op = out.data_ptr<int64_t>();
    check_indptr_ends(ip, a.num_rows, a.nnz, e);
    const int64_t avg_degree = a.nnz / std::max<int64_t>(1, a.num_rows);
    const int64_t cost = num_negatives * 64 + (validate ? avg_degree : 0) + 1;
    at::parallel_for(0, a.batch, cpu::grain(cost), [&](int64_t b0, int64_t b1) {
      cpu::sample_negatives(ip, ix, a.num_rows, a.nnz, up, num_items, num_negatives,
                            static_cast<uint64_t>(seed), validate, op, b0, b1, e);
    });
  });
  raise_if_error(kOp, error, a.names(num_items));
  return out;
}

}  // namespace
}  // namespace sample_negatives

TORCH_LIBRARY_IMPL(dmfx, CPU, m) { m.impl("sample_negatives", &sample_negatives::sample); }

}  // namespace dmfx
