#include "sample_negatives_cpu.h"

#include "../common/complement.h"
#include "../common/csr.h"
#include "../common/philox.h"

namespace dmfx {
namespace cpu {

template <typename index_t>
void sample_negatives(const index_t* indptr, const index_t* indices, int64_t num_users,
                      int64_t nnz, const int64_t* users, int64_t num_items, int64_t num_negatives,
                      uint64_t seed, bool check_sorted, int64_t* out, int64_t b_begin,
                      int64_t b_end, int64_t* error) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    int64_t* o = out + b * num_negatives;
    int64_t begin, end;
    const bool ok = checked_row_range(indptr, num_users, nnz, users[b], b, error, &begin, &end);
    // An unsorted row only makes the samples wrong (they stay in range), so it is reported
    // without changing the output; that keeps the CPU and CUDA results identical.
    if (ok && check_sorted) check_row_sorted(indices, begin, end, num_items, users[b], b, error);
    const int64_t free_items = ok ? num_items - (end - begin) : 0;
    if (ok && free_items <= 0) report_error(error, csr_key(b, kAfterRow), kNoNegativeLeft, b, users[b]);
    for (int64_t n = 0; n < num_negatives; ++n) {
      if (free_items <= 0) {
        o[n] = -1;
        continue;
      }
      const uint64_t bits = philox_u64(seed, static_cast<uint64_t>(b * num_negatives + n));
      o[n] = nth_absent(indices + begin, end - begin,
                        uniform_below(bits, static_cast<uint64_t>(free_items)));
    }
  }
}

template void sample_negatives<int32_t>(const int32_t*, const int32_t*, int64_t, int64_t,
                                        const int64_t*, int64_t, int64_t, uint64_t, bool,
                                        int64_t*, int64_t, int64_t, int64_t*);
template void sample_negatives<int64_t>(const int64_t*, const int64_t*, int64_t, int64_t,
                                        const int64_t*, int64_t, int64_t, uint64_t, bool,
                                        int64_t*, int64_t, int64_t, int64_t*);

}  // namespace cpu
}  // namespace dmfx
