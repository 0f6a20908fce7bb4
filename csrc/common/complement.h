#pragma once
// Maps a rank among the items a user has NOT interacted with to the item id, so negatives are
// drawn exactly uniformly in one step instead of by rejection.
#include <cstdint>

#include "macros.h"

namespace dmfx {

// The r-th (0-based) integer of [0, num_items) absent from `positives[0..degree)`, which must be
// strictly ascending. Below positives[i] there are positives[i] - i absent integers, a
// non-decreasing sequence, so a binary search finds how many positives precede the answer.
template <typename index_t>
DMFX_HOST_DEVICE inline int64_t nth_absent(const index_t* positives, int64_t degree, int64_t r) {
  int64_t lo = 0, hi = degree;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(positives[mid]) - mid <= r) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return r + lo;
}

}  // namespace dmfx
