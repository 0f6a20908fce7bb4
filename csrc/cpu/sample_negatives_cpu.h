#pragma once
// CPU kernel of sample_negatives: out[b, n] uniform over the items user users[b] has not
// interacted with, i.e. over [0, num_items) minus the CSR row users[b] (strictly ascending).
#include <cstdint>

namespace dmfx {
namespace cpu {

// The caller checks the indptr ends (check_indptr_ends) once per call.
// Fills rows [b_begin, b_end) of out (batch x num_negatives). Sample (b, n) depends only on
// (seed, b * num_negatives + n). With check_sorted, each row is verified strictly ascending and
// inside [0, num_items) (O(degree)). A user with no item left gets -1 and an error.
template <typename index_t>
void sample_negatives(const index_t* indptr, const index_t* indices, int64_t num_users,
                      int64_t nnz, const int64_t* users, int64_t num_items, int64_t num_negatives,
                      uint64_t seed, bool check_sorted, int64_t* out, int64_t b_begin,
                      int64_t b_end, int64_t* error);

}  // namespace cpu
}  // namespace dmfx
