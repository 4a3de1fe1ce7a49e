// wn_sample: the host's categorical sampler in native code (the Python host's step loop calls it
// through ctypes; at batch 1 NumPy's per-call overhead made sampling ~15% of a generation step).
//
// Computes exactly what reference_model.sampling.inverse_cdf computes, with the same float64
// operations in the same order:
//   z = float64(logits) / T;  p = exp(z − max z);  c = cumsum(p);  k = #{i : c_i ≤ u · c_{Q−1}};
//   token = min(k, Q − 1)
// (a row containing NaN gives token 0, as the NumPy expression does).
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" __attribute__((visibility("default"))) int wn_sample(const float* logits, int64_t batch, int64_t classes,
                                                                  const double* u, double temperature,
                                                                  int64_t* tokens) {
  if (batch < 0 || classes < 1 || !(temperature > 0)) return 1;
  thread_local std::vector<double> c;
  c.resize(static_cast<size_t>(classes));
  const bool scaled = temperature != 1.0;
  for (int64_t b = 0; b < batch; ++b) {
    const float* l = logits + b * classes;
    double m = -INFINITY;
    bool nan = false;
    for (int64_t i = 0; i < classes; ++i) {
      const double z = scaled ? static_cast<double>(l[i]) / temperature : static_cast<double>(l[i]);
      nan |= z != z;
      m = z > m ? z : m;
    }
    if (nan) {
      tokens[b] = 0;
      continue;
    }
    double s = 0.0;
    for (int64_t i = 0; i < classes; ++i) {
      const double z = scaled ? static_cast<double>(l[i]) / temperature : static_cast<double>(l[i]);
      s += std::exp(z - m);
      c[i] = s;
    }
    const double target = u[b] * c[classes - 1];
    int64_t k = 0;  // #{i : c_i ≤ target}, as (c <= target).sum() counts it
    for (int64_t i = 0; i < classes; ++i) k += c[i] <= target;
    tokens[b] = k < classes ? k : classes - 1;
  }
  return 0;
}
