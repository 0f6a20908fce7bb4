#pragma once
// How the CPU ops split their work over torch's thread pool.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace dmfx {
namespace cpu {

// Items worth one task of torch's thread pool, for items costing about `work_per_item`
// element operations each.
inline int64_t grain(int64_t work_per_item) {
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
  const int64_t row_grain = grain(work_per_row * width / col_chunks);
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

// The sum over [0, n) of partial(b0, b1), a double, taken over fixed blocks of kSumBlock items
// that run in parallel and are added in block order: the same sum for every thread count (the
// CUDA kernels' fixed grid gives one too), where at::parallel_reduce's chunks follow the threads.
constexpr int64_t kSumBlock = 4096;

template <typename Fn>
double blocked_sum(int64_t n, const Fn& partial) {
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  if (blocks <= 1) return n > 0 ? partial(int64_t{0}, n) : 0.0;
  std::vector<double> sums(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      sums[k] = partial(k * kSumBlock, std::min(n, (k + 1) * kSumBlock));
    }
  });
  double total = 0;
  for (const double s : sums) total += s;
  return total;
}

}  // namespace cpu
}  // namespace dmfx
