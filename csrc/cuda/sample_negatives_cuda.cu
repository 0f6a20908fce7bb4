#include "sample_negatives_cuda.h"

#include "../common/complement.h"
#include "../common/csr.h"
#include "../common/philox.h"

namespace dmfx {
namespace cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t threads) {
  const int64_t wanted = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < (1 << 20) ? wanted : (1 << 20)));
}

// One thread per sample: a binary search in the user's row (cached: the samples of a user sit
// in neighbouring threads), no rejection loop, so every thread does the same bounded work.
template <typename index_t>
__global__ void sample_kernel(const index_t* __restrict__ indptr,
                              const index_t* __restrict__ indices, int64_t num_users, int64_t nnz,
                              const int64_t* __restrict__ users, int64_t batch, int64_t num_items,
                              int64_t num_negatives, uint64_t seed, int64_t* __restrict__ out) {
  const int64_t total = batch * num_negatives;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < total;
       s += stride) {
    const int64_t b = s / num_negatives;
    int64_t begin, end;
    const bool ok = checked_row_range(indptr, num_users, nnz, users[b], b, nullptr, &begin, &end);
    const int64_t free_items = ok ? num_items - (end - begin) : 0;
    if (free_items <= 0) {
      out[s] = -1;
      continue;
    }
    const uint64_t bits = philox_u64(seed, static_cast<uint64_t>(s));
    out[s] = nth_absent(indices + begin, end - begin,
                        uniform_below(bits, static_cast<uint64_t>(free_items)));
  }
}

// One thread per user: the checks of the CPU kernel, in its order, with its error keys.
template <typename index_t>
__global__ void validate_kernel(const index_t* __restrict__ indptr,
                                const index_t* __restrict__ indices, int64_t num_users,
                                int64_t nnz, const int64_t* __restrict__ users, int64_t batch,
                                int64_t num_items, int64_t* error) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first == 0) check_indptr_ends(indptr, num_users, nnz, error);
  for (int64_t b = first; b < batch; b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t begin, end;
    if (!checked_row_range(indptr, num_users, nnz, users[b], b, error, &begin, &end)) continue;
    check_row_sorted(indices, begin, end, num_items, users[b], b, error);
    if (num_items - (end - begin) <= 0) {
      report_error(error, csr_key(b, kAfterRow), kNoNegativeLeft, b, users[b]);
    }
  }
}

}  // namespace

template <typename index_t>
cudaError_t sample_negatives(const index_t* indptr, const index_t* indices, int64_t num_users,
                             int64_t nnz, const int64_t* users, int64_t batch, int64_t num_items,
                             int64_t num_negatives, uint64_t seed, int64_t* out, int64_t* error,
                             cudaStream_t stream) {
  if (error != nullptr) {
    validate_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(indptr, indices, num_users, nnz,
                                                                users, batch, num_items, error);
  }
  const int64_t total = batch * num_negatives;
  if (total > 0) {
    sample_kernel<<<blocks_for(total), kThreads, 0, stream>>>(indptr, indices, num_users, nnz,
                                                              users, batch, num_items,
                                                              num_negatives, seed, out);
  }
  return cudaGetLastError();
}

template cudaError_t sample_negatives<int32_t>(const int32_t*, const int32_t*, int64_t, int64_t,
                                               const int64_t*, int64_t, int64_t, int64_t,
                                               uint64_t, int64_t*, int64_t*, cudaStream_t);
template cudaError_t sample_negatives<int64_t>(const int64_t*, const int64_t*, int64_t, int64_t,
                                               const int64_t*, int64_t, int64_t, int64_t,
                                               uint64_t, int64_t*, int64_t*, cudaStream_t);

}  // namespace cuda
}  // namespace dmfx
