// The host's categorical samplers in native code: `wn_sample` (the Python host's step loop calls it through
// ctypes; at batch 1 NumPy's per-call overhead made sampling ~15% of a generation step) and the rows the
// native loop (loop.cc) draws.
//
// The token is what reference_model.sampling.inverse_cdf computes, with the same float64 operations in the
// same order:
//   z = float64(logits) / T;  p = exp(z − max z);  c = cumsum(p);  k = #{i : c_i ≤ u · c_{Q−1}};
//   token = min(k, Q − 1)
// (a row containing NaN gives token 0, as the NumPy expression does). Greedy is numpy.argmax: the first
// maximum, or the first NaN.
//
// `exact_row` is that computation itself (libm's exp, one sequential cumsum). `sample_row` gets the same
// token faster, and provably the same one: it computes the Q exps in vectors (`exp_vector`, relative error
// below kExpError against libm's exp, tested) and the sums in blocks, so its c̃_i are within a bound E of the
// c_i that `exact_row` computes (kMargin below). It then locates the token k̃ on c̃ and accepts it only when
// the target clears both neighbours by the margin: c̃_{k̃−1} ≤ t̃ − M and c̃_{k̃} > t̃ + M. As the exact c is
// non-decreasing, c_i ≤ t for every i < k̃ and c_i > t for every i ≥ k̃, i.e. exact_row's k is k̃. Otherwise
// (a target within ~1e-11 of a boundary: a chance of ~1e-9 per draw, or rows with non-finite or underflowing
// values) it runs exact_row. Either way the token is exact_row's.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace wn {
namespace {

// ---- float64 exp in vectors ---------------------------------------------------------------------------
#if defined(__AVX512F__)
constexpr int DW = 8;  // doubles per vector
#else
constexpr int DW = 4;
#endif
typedef double vd __attribute__((vector_size(DW * 8)));
typedef int64_t vi __attribute__((vector_size(DW * 8)));
typedef float vf4 __attribute__((vector_size(DW * 4)));

inline vd splat(double x) {
  vd v;
  for (int i = 0; i < DW; ++i) v[i] = x;
  return v;
}

// The sum of a vector's lanes (pairwise; in registers where the ISA has it)
inline double lane_sum(vd v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_pd(reinterpret_cast<__m512d>(v));
#elif defined(__AVX__)
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(reinterpret_cast<__m256d>(v)),
                               _mm256_extractf128_pd(reinterpret_cast<__m256d>(v), 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#else
  double a[DW];
  std::memcpy(a, &v, sizeof a);
  for (int w = DW / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
#endif
}
constexpr int kBlock = 2 * DW;  // values per block sum

constexpr double kExpMin = -708.0;  // below: exp(x) < 2⁻¹⁰²¹, taken as 0 (an absolute error < 2⁻¹⁰²¹)

// exp(x) for x ≤ 0 (x ≥ kExpMin; below it 0): x = n·ln2 + r, |r| ≤ ln2/2, exp(r) by its Taylor series to degree
// 13 (truncation < 4e-18 relative), times 2ⁿ set in the exponent bits. Relative error < 2⁻⁵¹ against libm.
inline vd exp_vector(vd x) {
  const vd zero = splat(0.0), lo = splat(kExpMin);
  const vd xc = x < lo ? lo : x;  // keeps n in range; the lanes below kExpMin are zeroed at the end
  const vd shift = splat(0x1.8p52);
  const vd kd = xc * splat(1.4426950408889634) + shift;  // n rounded to nearest in the low bits
  const vd n = kd - shift;
  const vd r = (xc - n * splat(6.93147180369123816490e-01)) - n * splat(1.90821492927058770002e-10);
  vd p = splat(1.0 / 6227020800.0);  // 1/13!
  p = p * r + splat(1.0 / 479001600.0);
  p = p * r + splat(1.0 / 39916800.0);
  p = p * r + splat(1.0 / 3628800.0);
  p = p * r + splat(1.0 / 362880.0);
  p = p * r + splat(1.0 / 40320.0);
  p = p * r + splat(1.0 / 5040.0);
  p = p * r + splat(1.0 / 720.0);
  p = p * r + splat(1.0 / 120.0);
  p = p * r + splat(1.0 / 24.0);
  p = p * r + splat(1.0 / 6.0);
  p = p * r + splat(0.5);
  p = p * r + splat(1.0);
  p = p * r + splat(1.0);
  vi bits;
  std::memcpy(&bits, &kd, sizeof bits);
  vi shift_bits;
  std::memcpy(&shift_bits, &shift, sizeof shift_bits);
  const vi e = (bits - shift_bits + 1023) << 52;  // 2ⁿ, n ≥ −1022
  vd scale;
  std::memcpy(&scale, &e, sizeof scale);
  const vd y = p * scale;
  return x < lo ? zero : y;
}

// The relative error exp_vector is held to (tested against libm's exp over its range: < 2⁻⁵¹ measured; the
// margin leaves a factor 2⁷).
constexpr double kExpError = 0x1p-44;

std::atomic<int64_t> exact_rows{0};  // rows that needed exact_row (for tests)

}  // namespace

// The reference computation itself (see the file's head).
int64_t exact_row(const float* l, int64_t classes, double u, double temperature, double* c) {
  const bool scaled = temperature != 1.0;
  double m = -INFINITY;
  bool nan = false;
  for (int64_t i = 0; i < classes; ++i) {
    const double z = scaled ? static_cast<double>(l[i]) / temperature : static_cast<double>(l[i]);
    nan |= z != z;
    m = z > m ? z : m;
  }
  if (nan) return 0;
  double s = 0.0;
  for (int64_t i = 0; i < classes; ++i) {
    const double z = scaled ? static_cast<double>(l[i]) / temperature : static_cast<double>(l[i]);
    s += std::exp(z - m);
    c[i] = s;
  }
  const double target = u * c[classes - 1];
  int64_t k = 0;  // #{i : c_i ≤ target}, as (c <= target).sum() counts it
  for (int64_t i = 0; i < classes; ++i) k += c[i] <= target;
  return k < classes ? k : classes - 1;
}

// exact_row's token from vector exps and block sums, checked against the error bound (see the file's head).
// `p` holds at least classes + DW doubles.
int64_t sample_row(const float* l, int64_t classes, double u, double temperature, double* p) {
  const int64_t Q = classes, full = Q / DW * DW;
  const bool scaled = temperature != 1.0;
  // z = float64(l) / T (the same correctly rounded operations as exact_row), and its maximum
  vd m = splat(-INFINITY);
  for (int64_t i = 0; i < full; i += DW) {
    vf4 f;
    std::memcpy(&f, l + i, sizeof f);
    vd z = __builtin_convertvector(f, vd);
    if (scaled) z = z / splat(temperature);
    m = z > m ? z : m;  // a NaN lane never wins: checked below
    std::memcpy(p + i, &z, sizeof z);
  }
  double mx = -INFINITY;
  for (int i = 0; i < DW; ++i) mx = m[i] > mx ? m[i] : mx;
  for (int64_t i = full; i < Q; ++i) {
    p[i] = scaled ? static_cast<double>(l[i]) / temperature : static_cast<double>(l[i]);
    mx = p[i] > mx ? p[i] : mx;
  }
  if (!std::isfinite(mx)) return exact_rows.fetch_add(1, std::memory_order_relaxed), exact_row(l, Q, u, temperature, p);
  // p̃_i = exp(z_i − max), each block's sum, their total (NaN z: a NaN total, sent to exact_row below)
  const int64_t blocks = (Q + kBlock - 1) / kBlock;
  double* sums = p + blocks * kBlock;
  double total = 0.0;
  for (int64_t i = Q; i < blocks * kBlock; ++i) p[i] = -INFINITY;  // the last block's tail: exp → 0
  for (int64_t i = 0, k = 0; i < Q; i += kBlock, ++k) {
    vd z0, z1;
    std::memcpy(&z0, p + i, sizeof z0);
    std::memcpy(&z1, p + i + DW, sizeof z1);
    const vd e0 = exp_vector(z0 - splat(mx)), e1 = exp_vector(z1 - splat(mx));
    std::memcpy(p + i, &e0, sizeof e0);
    std::memcpy(p + i + DW, &e1, sizeof e1);
    sums[k] = lane_sum(e0 + e1);
    total += sums[k];
  }
  // |c̃_i − c_i| ≤ E for every i (exp errors, summation in any order of ≤ Q terms, flushed tiny values):
  // E ≤ total·(1.01·kExpError + 2.01·Q·2⁻⁵³) + Q·2⁻¹⁰²⁰; M also covers the targets' rounding.
  const double margin = total * (4 * kExpError + 8 * static_cast<double>(Q) * 0x1p-53) + static_cast<double>(Q) * 0x1p-1019;
  const double target = u * total;
  if (!(total >= 1.0) || !(margin < total)) return exact_rows.fetch_add(1, std::memory_order_relaxed), exact_row(l, Q, u, temperature, p);
  // the block where the running sum passes the target, then the element
  double before = 0.0;
  int64_t i = 0;
  for (int64_t k = 0; k + 1 < blocks && before + sums[k] <= target; ++k, i += kBlock) before += sums[k];
  double c = before;  // c̃_{k̃−1} (0 before the first)
  int64_t k = i;
  for (; k < Q; ++k) {
    const double next = c + p[k];
    if (next > target) {
      if ((k > 0 && !(c <= target - margin)) || !(next > target + margin)) break;  // too close: exact_row
      return k;
    }
    c = next;
  }
  if (k == Q && c <= target - margin) return Q - 1;  // every c̃_i clears the target: exact_row's k is Q
  exact_rows.fetch_add(1, std::memory_order_relaxed);
  return exact_row(l, Q, u, temperature, p);
}

int64_t exact_rows_count() { return exact_rows.load(); }
int64_t sample_scratch(int64_t classes) { return (classes + kBlock - 1) / kBlock * (kBlock + 1); }  // values, block sums

int64_t argmax_row(const float* l, int64_t classes) {
  int64_t best = 0;
  for (int64_t i = 0; i < classes; ++i) {
    if (l[i] != l[i]) return i;
    if (l[i] > l[best]) best = i;
  }
  return best;
}

}  // namespace wn

namespace {
// (exact) rows of `logits` into tokens
int sample_rows(const float* logits, int64_t batch, int64_t classes, const double* u, double temperature,
                int64_t* tokens, bool exact) {
  if (batch < 0 || classes < 1 || !(temperature > 0)) return 1;
  thread_local std::vector<double> c;
  c.resize(static_cast<size_t>(wn::sample_scratch(classes)));
  for (int64_t b = 0; b < batch; ++b)
    tokens[b] = exact ? wn::exact_row(logits + b * classes, classes, u[b], temperature, c.data())
                      : wn::sample_row(logits + b * classes, classes, u[b], temperature, c.data());
  return 0;
}
}  // namespace

extern "C" {

__attribute__((visibility("default"))) int wn_sample(const float* logits, int64_t batch, int64_t classes,
                                                     const double* u, double temperature, int64_t* tokens) {
  return sample_rows(logits, batch, classes, u, temperature, tokens, false);
}

// The same tokens by the reference computation alone (libm exp, sequential cumsum), for tests.
__attribute__((visibility("default"))) int wn_sample_exact(const float* logits, int64_t batch, int64_t classes,
                                                           const double* u, double temperature, int64_t* tokens) {
  return sample_rows(logits, batch, classes, u, temperature, tokens, true);
}

// Rows `wn_sample` and the native loop have handed to the reference computation since the library was loaded.
__attribute__((visibility("default"))) int64_t wn_sample_exact_rows() { return wn::exact_rows_count(); }

// out[i] = the vector exp of x[i] (x ≤ 0), for tests of its error bound.
__attribute__((visibility("default"))) void wn_sample_exp(const double* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; i += wn::DW) {
    wn::vd v = wn::splat(0.0);
    for (int64_t j = 0; j < wn::DW && i + j < n; ++j) v[j] = x[i + j];
    v = wn::exp_vector(v);
    for (int64_t j = 0; j < wn::DW && i + j < n; ++j) out[i + j] = v[j];
  }
}
}
