#include "sparse_rows_matmul_cuda.h"

namespace dmfx {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// Warps of segment_gather: 8192 fill an H100 (132 SMs x 64 resident warps) with some to spare.
constexpr int64_t kMaxWorkers = 8192;
constexpr int64_t kItemsPerWorker = 64;
// Grid-stride loops over at most this many blocks.
constexpr int64_t kMaxBlocks = 4096;

unsigned blocks_for(int64_t threads) {
  const int64_t wanted = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < kMaxBlocks ? wanted : kMaxBlocks));
}

// The first i in [0, n) with a[i] > x (n if none), for the non-decreasing a.
__device__ int64_t upper_bound(const int64_t* __restrict__ a, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] > x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

template <typename index_t>
__global__ void batch_rows_kernel(const index_t* __restrict__ indptr, int64_t num_rows,
                                  int64_t nnz, const int64_t* __restrict__ rows, int64_t batch,
                                  int64_t* __restrict__ begin, int64_t* __restrict__ items,
                                  int64_t* error) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first == 0) check_indptr_ends(indptr, num_rows, nnz, error);
  for (int64_t b = first; b < batch; b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = 0;
    if (!checked_row_range(indptr, num_rows, nnz, rows[b], b, error, &lo, &hi)) lo = hi = 0;
    begin[b] = lo;
    items[b] = hi - lo + 1;
  }
}

// Worker w (a warp) takes items [w * chunk, (w + 1) * chunk) of the `total`: the empty workers
// are all at the end, so workers carrying the same segment are neighbours.
__device__ void worker_range(int64_t total, int64_t workers, int64_t w, int64_t* lo, int64_t* hi) {
  const int64_t chunk = (total + workers - 1) / workers;
  *lo = w * chunk < total ? w * chunk : total;
  *hi = *lo + chunk < total ? *lo + chunk : total;
}

// kPer columns per lane in registers: one pass covers 32 * kPer columns.
template <typename scalar_t, typename id_t, int kPer>
__global__ void segment_gather_kernel(const int64_t* __restrict__ begin,
                                      const int64_t* __restrict__ items_end, int64_t segments,
                                      const id_t* __restrict__ ids,
                                      const scalar_t* __restrict__ values, int64_t id_limit,
                                      const scalar_t* __restrict__ dense, int64_t width,
                                      scalar_t* __restrict__ out, scalar_t* __restrict__ carry,
                                      int64_t* __restrict__ carry_segment, int64_t workers,
                                      int64_t* error) {
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= workers) return;  // whole warps: blockDim is a multiple of 32
  const int64_t total = segments > 0 ? items_end[segments - 1] : 0;
  int64_t lo, hi;
  worker_range(total, workers, w, &lo, &hi);
  const int64_t first_segment = lo < hi ? upper_bound(items_end, segments, lo) : segments;
  constexpr int64_t kPass = 32 * kPer;
  const int64_t passes = width > kPass ? (width + kPass - 1) / kPass : 1;
  int64_t carried = -1;
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t h0 = pass * kPass + lane;
    scalar_t acc[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[j] = scalar_t(0);
    int64_t i = lo, s = first_segment;
    while (i < hi) {
      const int64_t seg_first = s > 0 ? items_end[s - 1] : 0;
      const int64_t marker = items_end[s] - 1;  // the end marker's item
      const int64_t stop = marker < hi ? marker : hi;
      const int64_t seg_begin = begin[s];
      // Ids are checked with a compare, not reported from the loop: only a bad one (skipped,
      // never read) takes the reporting branch, and only in the first pass.
      for (; i < stop; ++i) {
        const int64_t k = seg_begin + (i - seg_first);
        const int64_t c = ids[k];
        if (c < 0 || c >= id_limit) {
          if (pass == 0 && lane == 0) report_bad_index(error, s, seg_begin, k, c);
          continue;
        }
        const scalar_t v = values != nullptr ? values[k] : scalar_t(1);
        const scalar_t* row = dense + c * width;
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const int64_t h = h0 + 32 * j;
          if (h < width) acc[j] += v * row[h];
        }
      }
      if (marker < hi) {  // the end marker is this warp's: it writes the row (i == marker)
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const int64_t h = h0 + 32 * j;
          if (h < width) out[s * width + h] = acc[j];
          acc[j] = scalar_t(0);
        }
        ++i;
        ++s;
      } else {  // the range ends inside segment s: a partial sum for the second pass
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const int64_t h = h0 + 32 * j;
          if (h < width) carry[w * width + h] = acc[j];
        }
        carried = s;
      }
    }
  }
  if (lane == 0) carry_segment[w] = carried;
}

// out[s] += the carries of segment s, summed in worker order; one block per run of workers.
template <typename scalar_t>
__global__ void add_carries_kernel(const scalar_t* __restrict__ carry,
                                   const int64_t* __restrict__ carry_segment, int64_t workers,
                                   int64_t width, scalar_t* __restrict__ out) {
  for (int64_t w = blockIdx.x; w < workers; w += gridDim.x) {
    const int64_t s = carry_segment[w];
    if (s < 0 || (w > 0 && carry_segment[w - 1] == s)) continue;
    int64_t last = w;
    while (last + 1 < workers && carry_segment[last + 1] == s) ++last;
    for (int64_t h = threadIdx.x; h < width; h += blockDim.x) {
      scalar_t sum = 0;
      for (int64_t v = w; v <= last; ++v) sum += carry[v * width + h];
      out[s * width + h] += sum;
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void entries_by_slot_kernel(CsrBatch<scalar_t, index_t> csr,
                                       const int64_t* __restrict__ begin,
                                       const int64_t* __restrict__ entries_end, int64_t entries,
                                       int64_t weight_rows, int64_t* __restrict__ key,
                                       int64_t* __restrict__ slot, scalar_t* __restrict__ value,
                                       int64_t* error) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < entries;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = upper_bound(entries_end, csr.batch, e);
    const int64_t k = begin[b] + (e - (b > 0 ? entries_end[b - 1] : 0));
    const int64_t c = csr.indices[k];
    const bool ok = c >= 0 && c < weight_rows;
    if (!ok) report_bad_index(error, b, begin[b], k, c);
    key[e] = ok ? c : weight_rows;
    slot[e] = b;
    if (value != nullptr) value[e] = csr.values[k];
  }
}

// One warp per entry of the batch's distinct rows; the warp sums <grad_out[b], weight[c]> over
// the run of slots b reading that row, in slot order, and writes the entry once.
template <typename scalar_t, typename index_t>
__global__ void backward_values_kernel(CsrBatch<scalar_t, index_t> csr,
                                       const int64_t* __restrict__ begin,
                                       const int64_t* __restrict__ order,
                                       const int64_t* __restrict__ sorted_rows,
                                       const int64_t* __restrict__ entries_end,
                                       const scalar_t* __restrict__ weight, int64_t weight_rows,
                                       const scalar_t* __restrict__ grad_out, int64_t width,
                                       scalar_t* __restrict__ grad_values, int64_t* error) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t total = entries_end[csr.batch - 1];
  for (int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; e < total;
       e += warps) {
    const int64_t i = upper_bound(entries_end, csr.batch, e);
    const int64_t head = order[i];  // the run's first slot: the stable sort keeps slot order
    const int64_t k = begin[head] + (e - (i > 0 ? entries_end[i - 1] : 0));
    const int64_t c = csr.indices[k];
    if (c < 0 || c >= weight_rows) {
      if (lane == 0) report_bad_index(error, head, begin[head], k, c);
      continue;
    }
    const scalar_t* w = weight + c * width;
    scalar_t sum = 0;
    for (int64_t j = i; j < csr.batch && sorted_rows[j] == sorted_rows[i]; ++j) {
      const scalar_t* g = grad_out + order[j] * width;
      scalar_t dot = 0;
      for (int64_t h = lane; h < width; h += 32) dot += g[h] * w[h];
      for (int offset = 16; offset > 0; offset /= 2) {
        dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      }
      sum += dot;
    }
    if (lane == 0) grad_values[k] = sum;
  }
}

}  // namespace

template <typename index_t>
cudaError_t csr_batch_rows(const index_t* indptr, int64_t num_rows, int64_t nnz,
                           const int64_t* rows, int64_t batch, int64_t* begin, int64_t* items,
                           int64_t* error, cudaStream_t stream) {
  if (batch == 0 && error == nullptr) return cudaSuccess;
  batch_rows_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(indptr, num_rows, nnz, rows,
                                                                batch, begin, items, error);
  return cudaGetLastError();
}

int64_t segment_gather_workers(int64_t segments, int64_t entries_hint) {
  const int64_t wanted = (segments + entries_hint + kItemsPerWorker - 1) / kItemsPerWorker;
  return wanted < 1 ? 1 : (wanted < kMaxWorkers ? wanted : kMaxWorkers);
}

template <typename scalar_t, typename id_t>
cudaError_t segment_gather(const int64_t* begin, const int64_t* items_end, int64_t segments,
                           const id_t* ids, const scalar_t* values, int64_t id_limit,
                           const scalar_t* dense, int64_t width, scalar_t* out, scalar_t* carry,
                           int64_t* carry_segment, int64_t workers, int64_t* error,
                           cudaStream_t stream) {
  if (segments == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((workers + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (width <= 32) {
    segment_gather_kernel<scalar_t, id_t, 1><<<blocks, kThreads, 0, stream>>>(
        begin, items_end, segments, ids, values, id_limit, dense, width, out, carry,
        carry_segment, workers, error);
  } else if (width <= 128) {
    segment_gather_kernel<scalar_t, id_t, 4><<<blocks, kThreads, 0, stream>>>(
        begin, items_end, segments, ids, values, id_limit, dense, width, out, carry,
        carry_segment, workers, error);
  } else {
    segment_gather_kernel<scalar_t, id_t, 16><<<blocks, kThreads, 0, stream>>>(
        begin, items_end, segments, ids, values, id_limit, dense, width, out, carry,
        carry_segment, workers, error);
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || width == 0) return status;
  const unsigned fix_blocks = static_cast<unsigned>(workers < 1024 ? workers : 1024);
  add_carries_kernel<scalar_t><<<fix_blocks, 128, 0, stream>>>(carry, carry_segment, workers,
                                                               width, out);
  return cudaGetLastError();
}

template <typename scalar_t, typename index_t>
cudaError_t batch_entries_by_slot(const CsrBatch<scalar_t, index_t>& csr, const int64_t* begin,
                                  const int64_t* entries_end, int64_t entries,
                                  int64_t weight_rows, int64_t* key, int64_t* slot,
                                  scalar_t* value, int64_t* error, cudaStream_t stream) {
  if (entries == 0) return cudaSuccess;
  entries_by_slot_kernel<<<blocks_for(entries), kThreads, 0, stream>>>(
      csr, begin, entries_end, entries, weight_rows, key, slot, value, error);
  return cudaGetLastError();
}

template <typename scalar_t, typename index_t>
cudaError_t backward_values(const CsrBatch<scalar_t, index_t>& csr, const int64_t* begin,
                            const int64_t* order, const int64_t* sorted_rows,
                            const int64_t* entries_end, const scalar_t* weight,
                            int64_t weight_rows, const scalar_t* grad_out, int64_t width,
                            scalar_t* grad_values, int64_t* error, cudaStream_t stream) {
  if (csr.batch == 0) return cudaSuccess;
  // One warp per entry, grid-stride: sized by the matrix's nnz, a bound on the distinct rows'.
  const int64_t warps = csr.nnz < kMaxWorkers ? (csr.nnz > 0 ? csr.nnz : 1) : kMaxWorkers;
  const unsigned blocks = static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  backward_values_kernel<<<blocks, kThreads, 0, stream>>>(csr, begin, order, sorted_rows,
                                                          entries_end, weight, weight_rows,
                                                          grad_out, width, grad_values, error);
  return cudaGetLastError();
}

template cudaError_t csr_batch_rows<int32_t>(const int32_t*, int64_t, int64_t, const int64_t*,
                                             int64_t, int64_t*, int64_t*, int64_t*,
                                             cudaStream_t);
template cudaError_t csr_batch_rows<int64_t>(const int64_t*, int64_t, int64_t, const int64_t*,
                                             int64_t, int64_t*, int64_t*, int64_t*,
                                             cudaStream_t);

#define DMFX_INSTANTIATE_GATHER(scalar_t, id_t)                                                \
  template cudaError_t segment_gather<scalar_t, id_t>(                                         \
      const int64_t*, const int64_t*, int64_t, const id_t*, const scalar_t*, int64_t,          \
      const scalar_t*, int64_t, scalar_t*, scalar_t*, int64_t*, int64_t, int64_t*, cudaStream_t);

DMFX_INSTANTIATE_GATHER(float, int32_t)
DMFX_INSTANTIATE_GATHER(float, int64_t)
DMFX_INSTANTIATE_GATHER(double, int32_t)
DMFX_INSTANTIATE_GATHER(double, int64_t)
#undef DMFX_INSTANTIATE_GATHER

#define DMFX_INSTANTIATE(scalar_t, index_t)                                                    \
  template cudaError_t batch_entries_by_slot<scalar_t, index_t>(                               \
      const CsrBatch<scalar_t, index_t>&, const int64_t*, const int64_t*, int64_t, int64_t,    \
      int64_t*, int64_t*, scalar_t*, int64_t*, cudaStream_t);                                  \
  template cudaError_t backward_values<scalar_t, index_t>(                                     \
      const CsrBatch<scalar_t, index_t>&, const int64_t*, const int64_t*, const int64_t*,      \
      const int64_t*, const scalar_t*, int64_t, const scalar_t*, int64_t, scalar_t*, int64_t*, \
      cudaStream_t);

DMFX_INSTANTIATE(float, int32_t)
DMFX_INSTANTIATE(float, int64_t)
DMFX_INSTANTIATE(double, int32_t)
DMFX_INSTANTIATE(double, int64_t)
#undef DMFX_INSTANTIATE

}  // namespace cuda
}  // namespace dmfx
