#pragma once
// Kernels never throw and never read out of bounds: a bad entry is skipped and a problem is
// recorded in a 5 x int64 record {rank, code, position, value, lock}. The torch glue turns the
// record into a Python exception that names the argument (see csrc/checks.h).
//
// Many threads (CPU) or blocks (CUDA) may find problems at once, in any order. The record keeps
// the problem a serial pass over the input would meet first: each report carries a key, its place
// in that serial order, and the smallest key wins. So one bad input names one error, the same on
// every run, thread count and device.
#include <cstdint>

#include "macros.h"

namespace dmfx {

enum ErrorCode : int64_t {
  kOk = 0,
  kRowOutOfRange = 1,     // position: batch slot, value: the row id
  kBadIndptr = 2,         // position: CSR row, value: indptr[row], outside [0, nnz]
  kIndexOutOfRange = 3,   // position: nnz slot, value: the column id
  kRowNotSorted = 4,      // position: CSR row, value: nnz slot where order breaks
  kNoNegativeLeft = 5,    // position: batch slot, value: the user id
  kTargetOutOfRange = 6,  // position: batch slot, value: op-specific
  kIndptrEnds = 7,        // position: 0 or num_rows, value: indptr there
  kBadIndptrEnd = 8,      // position: CSR row, value: indptr[row + 1], below indptr[row] or > nnz
};

constexpr int kErrorRecordSize = 5;
// Slots of the record. kRank holds ~key, so that a zeroed record means "no error" and a larger
// rank a problem met earlier.
enum ErrorSlot : int { kRank = 0, kCode = 1, kPosition = 2, kValue = 3, kLock = 4 };

// Records the problem with serial-order key `key` unless one with a smaller key is already
// recorded. A null record ignores the report (validation off, or a thread that is not the one
// reporting for its group).
DMFX_HOST_DEVICE inline void report_error(int64_t* record, uint64_t key, int64_t code,
                                          int64_t position, int64_t value) {
  if (record == nullptr) return;
  auto* slot = reinterpret_cast<unsigned long long*>(record);
  const unsigned long long rank = ~static_cast<unsigned long long>(key);
  // A lock, not a CAS on the rank alone: the winner's three payload words must not interleave
  // with a later, better report's. Taken only on the error path, and only by a report that
  // would improve the record. On the GPU, lanes of one warp may contend for it: from Volta on
  // (the builds target sm_80 and later) they are scheduled independently, so the holder
  // finishes while the others spin.
#if defined(__CUDA_ARCH__)
  volatile unsigned long long* v = slot;
  if (v[kRank] >= rank) return;
  while (atomicCAS(slot + kLock, 0ull, 1ull) != 0ull) {
  }
  __threadfence();
  if (v[kRank] < rank) {
    v[kCode] = static_cast<unsigned long long>(code);
    v[kPosition] = static_cast<unsigned long long>(position);
    v[kValue] = static_cast<unsigned long long>(value);
    v[kRank] = rank;
  }
  __threadfence();
  atomicExch(slot + kLock, 0ull);
#else
  if (__atomic_load_n(slot + kRank, __ATOMIC_ACQUIRE) >= rank) return;
  while (__atomic_exchange_n(slot + kLock, 1ull, __ATOMIC_ACQUIRE) != 0ull) {
  }
  if (__atomic_load_n(slot + kRank, __ATOMIC_RELAXED) < rank) {
    slot[kCode] = static_cast<unsigned long long>(code);
    slot[kPosition] = static_cast<unsigned long long>(position);
    slot[kValue] = static_cast<unsigned long long>(value);
    __atomic_store_n(slot + kRank, rank, __ATOMIC_RELAXED);
  }
  __atomic_store_n(slot + kLock, 0ull, __ATOMIC_RELEASE);
#endif
}

// Keys of the CSR-reading ops, in the order a serial pass checks: the indptr ends first, then
// batch slot by batch slot the row itself (offset -1), its entries in order, and last what needs
// the whole row (kAfterRow). Needs slot < 2^31 (the glue checks the batch size); offsets past
// 2^32 - 3 in one row share a key.
constexpr int64_t kAfterRow = INT64_MAX;
DMFX_HOST_DEVICE inline uint64_t csr_key(int64_t slot, int64_t offset) {
  constexpr int64_t kLast = (int64_t(1) << 32) - 1;
  const int64_t o = offset == kAfterRow ? kLast : (offset + 1 < kLast ? offset + 1 : kLast - 1);
  return (static_cast<uint64_t>(slot + 1) << 32) | static_cast<uint64_t>(o);
}
constexpr uint64_t kIndptrEndsKey = 0;

}  // namespace dmfx
