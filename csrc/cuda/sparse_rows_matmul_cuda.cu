#include "sparse_rows_matmul_cuda.h"

namespace dmfx {
namespace cuda {

namespace {

// One block per output row; threads span the width so every gathered weight row is read
// coalesced, and the row's (index, value) pairs are broadcast to all threads.
int threads_for_width(int64_t width) {
  const int64_t warps = (width + 31) / 32;
  return static_cast<int>(32 * (warps < 1 ? 1 : (warps > 8 ? 8 : warps)));
}

template <typename scalar_t, typename index_t>
__global__ void forward_kernel(CsrBatch<scalar_t, index_t> csr, const scalar_t* __restrict__ weight,
                               int64_t weight_rows, int64_t width, scalar_t* __restrict__ out,
                               int64_t* error) {
  const int64_t b = blockIdx.x;
  if (b == 0 && threadIdx.x == 0) check_indptr_ends(csr.indptr, csr.num_rows, csr.nnz, error);
  int64_t begin = 0, end = 0;
  // Every thread reads the same row bounds; only thread 0 records a problem.
  const bool ok = checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b,
                                    threadIdx.x == 0 ? error : nullptr, &begin, &end);
  for (int64_t h0 = 0; h0 < width; h0 += blockDim.x) {
    const int64_t h = h0 + threadIdx.x;
    scalar_t acc = 0;
    if (ok) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t c = csr.indices[k];
        if (c < 0 || c >= weight_rows) {
          if (threadIdx.x == 0 && h0 == 0) report_error(error, kIndexOutOfRange, k, c);
          continue;
        }
        const scalar_t v = csr.values ? csr.values[k] : scalar_t(1);
        if (h < width) acc += v * weight[c * width + h];
      }
    }
    if (h < width) out[b * width + h] = acc;
  }
}

template <typename scalar_t, typename index_t>
__global__ void backward_weight_kernel(CsrBatch<scalar_t, index_t> csr,
                                       const scalar_t* __restrict__ grad_out,
                                       int64_t weight_rows, int64_t width,
                                       scalar_t* __restrict__ grad_weight, int64_t* error) {
  const int64_t b = blockIdx.x;
  int64_t begin = 0, end = 0;
  if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b,
                         threadIdx.x == 0 ? error : nullptr, &begin, &end)) {
    return;
  }
  for (int64_t k = begin; k < end; ++k) {
    const int64_t c = csr.indices[k];
    if (c < 0 || c >= weight_rows) {
      if (threadIdx.x == 0) report_error(error, kIndexOutOfRange, k, c);
      continue;
    }
    const scalar_t v = csr.values ? csr.values[k] : scalar_t(1);
    for (int64_t h = threadIdx.x; h < width; h += blockDim.x) {
      atomicAdd(grad_weight + c * width + h, v * grad_out[b * width + h]);
    }
  }
}

// One block per batch row, one warp per nnz of it: the warp reduces <grad_out[b], weight[c]>.
template <typename scalar_t, typename index_t>
__global__ void backward_values_kernel(CsrBatch<scalar_t, index_t> csr,
                                       const scalar_t* __restrict__ weight, int64_t weight_rows,
                                       const scalar_t* __restrict__ grad_out, int64_t width,
                                       scalar_t* __restrict__ grad_values, int64_t* error) {
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  int64_t begin = 0, end = 0;
  if (!checked_row_range(csr.indptr, csr.num_rows, csr.nnz, csr.rows[b], b,
                         threadIdx.x == 0 ? error : nullptr, &begin, &end)) {
    return;
  }
  for (int64_t k = begin + warp; k < end; k += warps) {
    const int64_t c = csr.indices[k];
    if (c < 0 || c >= weight_rows) {
      if (lane == 0) report_error(error, kIndexOutOfRange, k, c);
      continue;
    }
    scalar_t dot = 0;
    for (int64_t h = lane; h < width; h += 32) dot += grad_out[b * width + h] * weight[c * width + h];
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_down_sync(0xffffffffu, dot, offset);
    if (lane == 0) atomicAdd(grad_values + k, dot);  // repeated rows of the batch accumulate
  }
}

}  // namespace

template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_forward(const CsrBatch<scalar_t, index_t>& csr,
                                       const scalar_t* weight, int64_t weight_rows,
                                       int64_t width, scalar_t* out, int64_t* error,
                                       cudaStream_t stream) {
  if (csr.batch == 0) return cudaSuccess;
  forward_kernel<<<static_cast<unsigned>(csr.batch), threads_for_width(width), 0, stream>>>(
      csr, weight, weight_rows, width, out, error);
  return cudaGetLastError();
}

template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_backward_weight(const CsrBatch<scalar_t, index_t>& csr,
                                               const scalar_t* grad_out, int64_t weight_rows,
                                               int64_t width, scalar_t* grad_weight,
                                               int64_t* error, cudaStream_t stream) {
  if (csr.batch == 0 || width == 0) return cudaSuccess;
  backward_weight_kernel<<<static_cast<unsigned>(csr.batch), threads_for_width(width), 0,
                           stream>>>(csr, grad_out, weight_rows, width, grad_weight, error);
  return cudaGetLastError();
}

template <typename scalar_t, typename index_t>
cudaError_t sparse_rows_matmul_backward_values(const CsrBatch<scalar_t, index_t>& csr,
                                               const scalar_t* weight, int64_t weight_rows,
                                               const scalar_t* grad_out, int64_t width,
                                               scalar_t* grad_values, int64_t* error,
                                               cudaStream_t stream) {
  if (csr.batch == 0) return cudaSuccess;
  backward_values_kernel<<<static_cast<unsigned>(csr.batch), 128, 0, stream>>>(
      csr, weight, weight_rows, grad_out, width, grad_values, error);
  return cudaGetLastError();
}

#define DMFX_INSTANTIATE(scalar_t, index_t)                                                   \
  template cudaError_t sparse_rows_matmul_forward<scalar_t, index_t>(                         \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, int64_t, scalar_t*,       \
      int64_t*, cudaStream_t);                                                                \
  template cudaError_t sparse_rows_matmul_backward_weight<scalar_t, index_t>(                 \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, int64_t, scalar_t*,       \
      int64_t*, cudaStream_t);                                                                \
  template cudaError_t sparse_rows_matmul_backward_values<scalar_t, index_t>(                 \
      const CsrBatch<scalar_t, index_t>&, const scalar_t*, int64_t, const scalar_t*, int64_t, \
      scalar_t*, int64_t*, cudaStream_t);

DMFX_INSTANTIATE(float, int32_t)
DMFX_INSTANTIATE(float, int64_t)
DMFX_INSTANTIATE(double, int32_t)
DMFX_INSTANTIATE(double, int64_t)
#undef DMFX_INSTANTIATE

}  // namespace cuda
}  // namespace dmfx
