#pragma once
// Kernels never throw and never read out of bounds: a bad entry is skipped and the first
// problem is recorded in a 3 x int64 record {code, position, value}. The torch glue turns the
// record into a Python exception that names the argument (see csrc/checks.h).
#include <cstdint>

#include "macros.h"

namespace dmfx {

enum ErrorCode : int64_t {
  kOk = 0,
  kRowOutOfRange = 1,     // position: batch slot, value: the row id
  kBadIndptr = 2,         // position: CSR row, value: indptr[row]
  kIndexOutOfRange = 3,   // position: nnz slot, value: the column id
  kRowNotSorted = 4,      // position: CSR row, value: nnz slot where order breaks
  kNoNegativeLeft = 5,    // position: batch slot, value: the user id
  kTargetOutOfRange = 6,  // position: batch slot, value: unused
  kIndptrEnds = 7,        // position: 0 or num_rows, value: indptr there
};

constexpr int kErrorRecordSize = 3;

// A null record ignores the report: lets all threads of a CUDA block walk the same row while only
// one of them reports.
DMFX_HOST_DEVICE inline void report_error(int64_t* record, int64_t code, int64_t position,
                                          int64_t value) {
  if (record == nullptr) return;
#if defined(__CUDA_ARCH__)
  auto* slot = reinterpret_cast<unsigned long long*>(record);
  if (atomicCAS(slot, 0ull, static_cast<unsigned long long>(code)) == 0ull) {
    record[1] = position;
    record[2] = value;
  }
#else
  int64_t expected = 0;
  if (__atomic_compare_exchange_n(record, &expected, code, false, __ATOMIC_RELAXED,
                                  __ATOMIC_RELAXED)) {
    record[1] = position;
    record[2] = value;
  }
#endif
}

}  // namespace dmfx
