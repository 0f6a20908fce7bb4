// C++ unit tests of the torch-free CPU kernels and the shared per-element math, run by ctest.
// The torch-level behaviour (autograd, opcheck, argument errors) is tested from Python.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "common/complement.h"
#include "common/cosine_nce.h"
#include "common/error.h"
#include "common/hybrid_bce.h"
#include "common/philox.h"
#include "cpu/cosine_nce_loss_cpu.h"
#include "cpu/hybrid_bce_loss_cpu.h"
#include "cpu/row_sparse_adam_cpu.h"
#include "cpu/sample_negatives_cpu.h"
#include "cpu/sparse_rows_matmul_cpu.h"

namespace {

int passed = 0, failed = 0;

#define EXPECT(cond)                                                  \
  do {                                                                \
    if (cond) {                                                       \
      ++passed;                                                       \
    } else {                                                          \
      ++failed;                                                       \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
    }                                                                 \
  } while (0)

bool close(double a, double b, double tol = 1e-9) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

void test_nth_absent_matches_brute_force() {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t num_items = 1 + rng() % 40;
    std::set<int64_t> chosen;
    const int64_t degree = rng() % num_items;
    while (static_cast<int64_t>(chosen.size()) < degree) chosen.insert(rng() % num_items);
    const std::vector<int64_t> positives(chosen.begin(), chosen.end());
    std::vector<int64_t> absent;
    for (int64_t i = 0; i < num_items; ++i) {
      if (!chosen.count(i)) absent.push_back(i);
    }
    bool all = true;
    for (int64_t r = 0; r < static_cast<int64_t>(absent.size()); ++r) {
      all &= dmfx::nth_absent(positives.data(), degree, r) == absent[r];
    }
    EXPECT(all);
  }
}

void test_philox_is_deterministic_and_uniform() {
  EXPECT(dmfx::philox_u64(7, 3) == dmfx::philox_u64(7, 3));
  EXPECT(dmfx::philox_u64(7, 3) != dmfx::philox_u64(8, 3));
  EXPECT(dmfx::philox_u64(7, 3) != dmfx::philox_u64(7, 4));
  const int bins = 10, draws = 100000;
  std::vector<int> counts(bins, 0);
  for (int i = 0; i < draws; ++i) ++counts[dmfx::uniform_below(dmfx::philox_u64(42, i), bins)];
  double chi2 = 0;
  for (int c : counts) chi2 += (c - draws / bins) * double(c - draws / bins) / (draws / bins);
  EXPECT(chi2 < 27.9);  // chi-square, 9 degrees of freedom, p = 0.001
}

// A 3 x 4 CSR matrix [[1 0 2 0], [0 0 0 0], [0 3 0 4]] and a 4 x 3 weight.
struct Fixture {
  std::vector<int64_t> indptr{0, 2, 2, 4};
  std::vector<int64_t> indices{0, 2, 1, 3};
  std::vector<double> values{1, 2, 3, 4};
  std::vector<int64_t> rows{2, 0, 1, 2};
  std::vector<double> weight{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  dmfx::CsrBatch<double, int64_t> csr() const {
    return {indptr.data(), indices.data(), values.data(), 3, 4, rows.data(), 4};
  }
};

void test_sparse_rows_matmul_forward_and_backward() {
  Fixture f;
  std::vector<double> out(4 * 3, -1);
  int64_t error[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sparse_rows_matmul_forward(f.csr(), f.weight.data(), 4, 3, out.data(), 0, 4, 0, 3, error);
  // row 2 = 3 * w[1] + 4 * w[3]; row 0 = w[0] + 2 * w[2]; row 1 empty.
  const std::vector<double> expected{52, 59, 66, 15, 18, 21, 0, 0, 0, 52, 59, 66};
  EXPECT(out == expected);
  EXPECT(error[dmfx::kCode] == dmfx::kOk);
  // Tiles (rows x columns), as threads split the work, write the same output.
  std::vector<double> tiled(4 * 3, -1);
  dmfx::cpu::sparse_rows_matmul_forward(f.csr(), f.weight.data(), 4, 3, tiled.data(), 0, 2, 0, 2,
                                        error);
  dmfx::cpu::sparse_rows_matmul_forward(f.csr(), f.weight.data(), 4, 3, tiled.data(), 2, 4, 0, 2,
                                        error);
  dmfx::cpu::sparse_rows_matmul_forward(f.csr(), f.weight.data(), 4, 3, tiled.data(), 0, 4, 2, 3,
                                        error);
  EXPECT(tiled == expected);

  // The batch transpose groups the entries by column: column c holds (slot b, value v).
  std::vector<int64_t> col_ptr(5, 0), cursor(4);
  EXPECT(dmfx::cpu::batch_transpose_counts(f.csr(), 4, col_ptr.data(), error) == 6);
  const std::vector<int64_t> expected_col_ptr{0, 1, 3, 4, 6};
  EXPECT(col_ptr == expected_col_ptr);
  std::vector<int32_t> slots(6, -1);
  std::vector<double> slot_values(6, -1);
  dmfx::cpu::batch_transpose_fill(f.csr(), 4, col_ptr.data(), cursor.data(), slots.data(),
                                  slot_values.data());
  const std::vector<int32_t> expected_slots{1, 0, 3, 1, 0, 3};
  const std::vector<double> expected_slot_values{1, 3, 3, 2, 4, 4};
  EXPECT(slots == expected_slots);
  EXPECT(slot_values == expected_slot_values);

  // Backward over three owner tiles (written, not accumulated) equals the analytic scatter.
  const std::vector<double> grad_out{1, 0, 0, 0, 1, 0, 5, 5, 5, 0, 0, 1};
  std::vector<double> grad_weight(12, -1);
  dmfx::cpu::sparse_rows_matmul_backward_weight(col_ptr.data(), slots.data(), slot_values.data(),
                                                grad_out.data(), 3, grad_weight.data(), 0, 2, 0,
                                                3);
  dmfx::cpu::sparse_rows_matmul_backward_weight(col_ptr.data(), slots.data(), slot_values.data(),
                                                grad_out.data(), 3, grad_weight.data(), 2, 4, 0,
                                                1);
  dmfx::cpu::sparse_rows_matmul_backward_weight(col_ptr.data(), slots.data(), slot_values.data(),
                                                grad_out.data(), 3, grad_weight.data(), 2, 4, 1,
                                                3);
  const std::vector<double> expected_gw{0, 1, 0, 3, 0, 3, 0, 2, 0, 4, 0, 4};
  EXPECT(grad_weight == expected_gw);

  std::vector<double> grad_values(4, 0);
  dmfx::cpu::sparse_rows_matmul_backward_values(f.csr(), f.weight.data(), 4, grad_out.data(), 3,
                                                grad_values.data(), 0, 4, error);
  // k=0: <g[1], w[0]> = 2; k=1: <g[1], w[2]> = 8; k=2: <g[0]+g[3], w[1]> = 4+6; k=3: 10+12.
  const std::vector<double> expected_gv{2, 8, 10, 22};
  EXPECT(grad_values == expected_gv);
  EXPECT(error[dmfx::kCode] == dmfx::kOk);
}

void test_sparse_rows_matmul_reports_bad_input_without_reading_it() {
  Fixture f;
  std::vector<double> out(12, -1);
  f.indices[3] = 99;
  int64_t error[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sparse_rows_matmul_forward(f.csr(), f.weight.data(), 4, 3, out.data(), 0, 4, 0, 3, error);
  EXPECT(error[dmfx::kCode] == dmfx::kIndexOutOfRange && error[dmfx::kPosition] == 3 && error[dmfx::kValue] == 99);
  // The backward's transpose skips the bad entry (row 2 sits twice in the batch) and records it.
  std::vector<int64_t> col_ptr(5, 0);
  int64_t error_t[dmfx::kErrorRecordSize] = {};
  EXPECT(dmfx::cpu::batch_transpose_counts(f.csr(), 4, col_ptr.data(), error_t) == 4);
  EXPECT(error_t[dmfx::kCode] == dmfx::kIndexOutOfRange && error_t[dmfx::kPosition] == 3 && error_t[dmfx::kValue] == 99);

  Fixture g;
  g.rows[1] = 3;
  int64_t error2[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sparse_rows_matmul_forward(g.csr(), g.weight.data(), 4, 3, out.data(), 0, 4, 0, 3, error2);
  EXPECT(error2[dmfx::kCode] == dmfx::kRowOutOfRange && error2[dmfx::kPosition] == 1 && error2[dmfx::kValue] == 3);
  EXPECT(out[3] == 0 && out[4] == 0 && out[5] == 0);

  Fixture h;
  h.indptr[2] = 1;  // row 1 (slot 2) would end before it starts: its end is named
  int64_t error3[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sparse_rows_matmul_forward(h.csr(), h.weight.data(), 4, 3, out.data(), 0, 4, 0, 3, error3);
  EXPECT(error3[dmfx::kCode] == dmfx::kBadIndptrEnd && error3[dmfx::kPosition] == 1 &&
         error3[dmfx::kValue] == 1);
  Fixture s;
  s.indptr[2] = -1;  // row 2 (slot 0) starts before 0: its start is named
  int64_t error4[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sparse_rows_matmul_forward(s.csr(), s.weight.data(), 4, 3, out.data(), 0, 4, 0, 3, error4);
  EXPECT(error4[dmfx::kCode] == dmfx::kBadIndptr && error4[dmfx::kPosition] == 2 &&
         error4[dmfx::kValue] == -1);
}

void test_error_record_keeps_the_first_problem_in_serial_order() {
  // Reports arrive in any order (threads, blocks); the record keeps the smallest key's.
  int64_t error[dmfx::kErrorRecordSize] = {};
  dmfx::report_error(error, dmfx::csr_key(5, 2), dmfx::kIndexOutOfRange, 40, 9);
  dmfx::report_error(error, dmfx::csr_key(2, dmfx::kAfterRow), dmfx::kNoNegativeLeft, 2, 7);
  dmfx::report_error(error, dmfx::csr_key(2, 0), dmfx::kIndexOutOfRange, 11, -1);
  dmfx::report_error(error, dmfx::csr_key(3, -1), dmfx::kRowOutOfRange, 3, 99);
  EXPECT(error[dmfx::kCode] == dmfx::kIndexOutOfRange && error[dmfx::kPosition] == 11 &&
         error[dmfx::kValue] == -1);
  dmfx::report_error(error, dmfx::kIndptrEndsKey, dmfx::kIndptrEnds, 0, 1);
  EXPECT(error[dmfx::kCode] == dmfx::kIndptrEnds);
  // Within a slot: the row itself, then its entries in order, then what needs the whole row.
  EXPECT(dmfx::csr_key(0, -1) < dmfx::csr_key(0, 0));
  EXPECT(dmfx::csr_key(0, 1) < dmfx::csr_key(0, dmfx::kAfterRow));
  EXPECT(dmfx::csr_key(0, dmfx::kAfterRow) < dmfx::csr_key(1, -1));
  EXPECT(dmfx::kIndptrEndsKey < dmfx::csr_key(0, -1));
  // A null record ignores reports.
  dmfx::report_error(nullptr, 0, dmfx::kIndptrEnds, 0, 0);
}

void test_cosine_nce_matches_finite_differences() {
  const std::vector<double> p{0.3, 0.1, 0.5, 0.0, 0.0, 0.0}, q{0.2, 0.4, 0.1, 0.7, 0.1, 0.2};
  const std::vector<double> target{0.8, 1.0};
  const double mu = 1e-6;
  std::vector<double> loss(2);
  int64_t error[dmfx::kErrorRecordSize] = {};
  const double total = dmfx::cpu::cosine_nce_loss_forward(p.data(), q.data(), target.data(), 3,
                                                          mu, loss.data(), 0, 2, error);
  EXPECT(close(total, loss[0] + loss[1]));
  EXPECT(close(loss[1], -std::log(mu)));  // zero vector: yhat = mu, defined, not NaN
  std::vector<double> gp(6), gq(6);
  const double one = 1;
  dmfx::cpu::cosine_nce_loss_backward(&one, 0, 1.0, p.data(), q.data(), target.data(), 3, mu,
                                      gp.data(), gq.data(), 0, 2);
  for (int d = 0; d < 3; ++d) {
    std::vector<double> pp = p, pm = p;
    pp[d] += 1e-6;
    pm[d] -= 1e-6;
    const double fp = dmfx::cpu::cosine_nce_loss_forward<double>(pp.data(), q.data(), target.data(), 3,
                                                         mu, nullptr, 0, 1, error);
    const double fm = dmfx::cpu::cosine_nce_loss_forward<double>(pm.data(), q.data(), target.data(), 3,
                                                         mu, nullptr, 0, 1, error);
    EXPECT(close(gp[d], (fp - fm) / 2e-6, 1e-5));
  }
  EXPECT(gp[3] == 0 && gp[4] == 0 && gp[5] == 0 && gq[3] == 0);
  EXPECT(error[dmfx::kCode] == dmfx::kOk);
}

// The CPU kernel (SIMD exp / log1p of its own) against the shared scalar math over libm, on 11
// elements: a full vector and a padded tail for float (8 lanes), two and a tail for double (4).
template <typename T>
void test_hybrid_bce_matches_scalar_math() {
  const std::vector<T> x{0, 0.3, -2.5, 17, -30, 30, -1e4, 1e-7, 0.7, -0.9, 100};
  const std::vector<T> it{1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1};
  const std::vector<T> et{0.6, 0, 1, 0.2, 0, 1, 0.8, 0, 0.4, 0, 1};
  const double eta = 0.6;
  const T wi = static_cast<T>(eta), we = T(1) - wi;
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-14;
  std::vector<T> loss(11), grad(11), upstream(11);
  int64_t error[dmfx::kErrorRecordSize] = {};
  const double total = dmfx::cpu::hybrid_bce_loss_forward(x.data(), it.data(), et.data(), eta,
                                                          loss.data(), 0, 11, error);
  for (int b = 0; b < 11; ++b) upstream[b] = T(0.5) + T(b);
  dmfx::cpu::hybrid_bce_loss_backward(upstream.data(), 1, 2.0, x.data(), it.data(), et.data(), eta,
                                      grad.data(), 0, 11);
  bool all = true;
  double sum = 0;
  for (int b = 0; b < 11; ++b) {
    const T t = dmfx::blended_target(it[b], et[b], wi, we);
    const T c = dmfx::blended_complement(it[b], et[b], wi, we);
    all &= close(loss[b], dmfx::bce_with_logits<T>(x[b], t, c), tol);
    all &= close(grad[b], 2 * upstream[b] * dmfx::bce_with_logits_grad<T>(x[b], t, c), tol);
    sum += loss[b];
  }
  EXPECT(all);
  EXPECT(close(total, sum));
  EXPECT(error[dmfx::kCode] == dmfx::kOk);
  // A confident right answer keeps its tiny loss, log1p(e^-30) and log1p(e^-100), not 0.
  EXPECT(std::fabs(loss[5] / std::exp(-30.0) - 1) < 1e-5 && loss[10] > 0);
  // One scalar upstream gradient (stride 0), as for reduction "sum" / "mean".
  const T one = 1;
  std::vector<T> grad_sum(11);
  dmfx::cpu::hybrid_bce_loss_backward(&one, 0, 1.0, x.data(), it.data(), et.data(), eta,
                                      grad_sum.data(), 0, 11);
  all = true;
  for (int b = 0; b < 11; ++b) all &= close(grad_sum[b] * 2 * upstream[b], grad[b], tol);
  EXPECT(all);
}

void test_hybrid_bce_gradient_matches_finite_differences() {
  const std::vector<double> x{0.4, -1.3, 2.2}, it{1, 0, 1}, et{0.6, 0, 0.2};
  const double one = 1;
  std::vector<double> grad(3);
  dmfx::cpu::hybrid_bce_loss_backward(&one, 0, 1.0, x.data(), it.data(), et.data(), 0.3,
                                      grad.data(), 0, 3);
  for (int b = 0; b < 3; ++b) {
    std::vector<double> xp = x, xm = x;
    xp[b] += 1e-6;
    xm[b] -= 1e-6;
    const double fp = dmfx::cpu::hybrid_bce_loss_forward(xp.data(), it.data(), et.data(), 0.3,
                                                         static_cast<double*>(nullptr), 0, 3,
                                                         nullptr);
    const double fm = dmfx::cpu::hybrid_bce_loss_forward(xm.data(), it.data(), et.data(), 0.3,
                                                         static_cast<double*>(nullptr), 0, 3,
                                                         nullptr);
    EXPECT(close(grad[b], (fp - fm) / 2e-6, 1e-6));
  }
}

void test_hybrid_bce_reports_bad_targets() {
  std::vector<double> x(13, 0.5), it(13, 0), et(13, 0);
  it[9] = 2;  // in the vector body (double: elements 8-11)
  int64_t error[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::hybrid_bce_loss_forward(x.data(), it.data(), et.data(), 0.5,
                                     static_cast<double*>(nullptr), 0, 13, error);
  EXPECT(error[dmfx::kCode] == dmfx::kTargetOutOfRange && error[dmfx::kPosition] == 9 &&
         error[dmfx::kValue] == dmfx::kImplicitTarget);
  it[9] = 0;
  et[12] = std::nan("");  // in the padded tail
  int64_t error2[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::hybrid_bce_loss_forward(x.data(), it.data(), et.data(), 0.5,
                                     static_cast<double*>(nullptr), 0, 13, error2);
  EXPECT(error2[dmfx::kCode] == dmfx::kTargetOutOfRange && error2[dmfx::kPosition] == 12 &&
         error2[dmfx::kValue] == dmfx::kExplicitTarget);
  // A null record skips the check; the NaN target still gives a NaN loss.
  std::vector<double> loss(13);
  dmfx::cpu::hybrid_bce_loss_forward(x.data(), it.data(), et.data(), 0.5, loss.data(), 0, 13,
                                     nullptr);
  EXPECT(std::isnan(loss[12]) && !std::isnan(loss[11]));
}

void test_row_sparse_adam_moves_only_named_rows() {
  // 3 x 2 table, one step on row 2 (and an out-of-range row 7, skipped).
  std::vector<double> w{1, 1, 1, 1, 1, 1}, m(6, 0), v(6, 0);
  const std::vector<int64_t> rows{2, 7};
  const std::vector<double> g{0.5, -2, 9, 9};
  const dmfx::AdamStep step = dmfx::adam_step(0.1, 0.9, 0.999, 1e-8, 1);
  dmfx::cpu::row_sparse_adam(w.data(), m.data(), v.data(), 3, 2, rows.data(), g.data(), step, 0, 2);
  // First step: m = 0.1 g, v = 0.001 g^2, so w -= lr * sign(g) (up to eps).
  EXPECT(close(w[4], 0.9, 1e-6) && close(w[5], 1.1, 1e-6));
  EXPECT(close(m[4], 0.05) && close(v[5], 0.004));
  EXPECT(w[0] == 1 && w[1] == 1 && w[2] == 1 && w[3] == 1 && m[0] == 0 && v[3] == 0);
}

void test_sample_negatives_never_positive_and_reports_full_rows() {
  // user 0 has items {1, 3}; user 1 has every item of 4.
  const std::vector<int64_t> indptr{0, 2, 6}, indices{1, 3, 0, 1, 2, 3}, users{0, 1};
  std::vector<int64_t> out(2 * 50);
  int64_t error[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sample_negatives(indptr.data(), indices.data(), 2, 6, users.data(), 4, 50, 123,
                              true, out.data(), 0, 2, error);
  bool ok = true;
  int zeros = 0;
  for (int n = 0; n < 50; ++n) {
    ok &= out[n] == 0 || out[n] == 2;
    zeros += out[n] == 0;
    ok &= out[50 + n] == -1;
  }
  EXPECT(ok);
  EXPECT(zeros > 10 && zeros < 40);
  EXPECT(error[dmfx::kCode] == dmfx::kNoNegativeLeft && error[dmfx::kPosition] == 1 && error[dmfx::kValue] == 1);

  const std::vector<int64_t> unsorted{3, 1};
  int64_t error2[dmfx::kErrorRecordSize] = {};
  dmfx::cpu::sample_negatives(indptr.data(), unsorted.data(), 1, 2, users.data(), 4, 5, 1, true,
                              out.data(), 0, 1, error2);
  EXPECT(error2[dmfx::kCode] == dmfx::kRowNotSorted);
}

}  // namespace

int main() {
  test_nth_absent_matches_brute_force();
  test_philox_is_deterministic_and_uniform();
  test_sparse_rows_matmul_forward_and_backward();
  test_error_record_keeps_the_first_problem_in_serial_order();
  test_row_sparse_adam_moves_only_named_rows();
  test_sparse_rows_matmul_reports_bad_input_without_reading_it();
  test_cosine_nce_matches_finite_differences();
  test_hybrid_bce_matches_scalar_math<float>();
  test_hybrid_bce_matches_scalar_math<double>();
  test_hybrid_bce_gradient_matches_finite_differences();
  test_hybrid_bce_reports_bad_targets();
  test_sample_negatives_never_positive_and_reports_full_rows();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
