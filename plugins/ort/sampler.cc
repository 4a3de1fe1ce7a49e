// The host's categorical samplers in native code: `wn_sample` (the Python host's step loop calls it through
// ctypes; at batch 1 NumPy's per-call overhead made sampling ~15% of a generation step) and the rows the
// native loop (loop.cc) draws.
//
// Computes exactly what reference_model.sampling.inverse_cdf computes, with the same float64
// operations in the same order:
//   z = float64(logits) / T;  p = exp(z − max z);  c = cumsum(p);  k = #{i : c_i ≤ u · c_{Q−1}};
//   token = min(k, Q − 1)
// (a row containing NaN gives token 0, as the NumPy expression does). Greedy is numpy.argmax: the first
// maximum, or the first NaN.
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace wn {

int64_t sample_row(const float* l, int64_t classes, double u, double temperature, double* c) {
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

int64_t argmax_row(const float* l, int64_t classes) {
  int64_t best = 0;
  for (int64_t i = 0; i < classes; ++i) {
    if (l[i] != l[i]) return i;
    if (l[i] > l[best]) best = i;
  }
  return best;
}

}  // namespace wn

extern "C" __attribute__((visibility("default"))) int wn_sample(const float* logits, int64_t batch, int64_t classes,
                                                                  const double* u, double temperature,
                                                                  int64_t* tokens) {
  if (batch < 0 || classes < 1 || !(temperature > 0)) return 1;
  thread_local std::vector<double> c;
  c.resize(static_cast<size_t>(classes));
  for (int64_t b = 0; b < batch; ++b) tokens[b] = wn::sample_row(logits + b * classes, classes, u[b], temperature, c.data());
  return 0;
}
