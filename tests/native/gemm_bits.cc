// Bit checks of plugins/ort/kernels.cc's GEMMs under whatever flags it is compiled with (tests/test_kernel_bits.py):
// every element of C must be one FMA chain over k in order (a plain multiply-add chain without FMA instructions),
// whatever the batch M, the row it sits in, the column block or tail, float32 or fp16 weights, and whether A comes
// in one part (gemm_from) or two (gemm_from2). Prints "checked N mismatches M" and exits 1 on any mismatch.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"

using namespace wn;

static float chain(float acc, const float* a, const float* w, int64_t K) {  // the contract, element by element
  for (int64_t k = 0; k < K; ++k) {
#if defined(__FMA__)
    acc = std::fmaf(a[k], w[k], acc);
#else
    acc = acc + a[k] * w[k];
#endif
  }
  return acc;
}

int main() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> U(-1, 1);
  long checked = 0, bad = 0;
  for (int it = 0; it < 1500; ++it) {
    const bool half = it % 3 == 0;
    const int64_t M = 1 + rng() % 40, K = 1 + rng() % 70, N = 1 + rng() % 150, K1 = rng() % (K + 2);
    const int64_t n0 = (rng() % (N / 16 + 1)) * 16;
    std::vector<float> A(M * K), C0(M * N), C(M * N), C2(M * N), row(N), Wf(K * N);
    std::vector<uint16_t> W16(Packed::size(K, N));
    std::vector<float> W32(Packed::size(K, N));
    for (auto& v : A) v = U(rng);
    for (auto& v : C0) v = U(rng);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < N; ++c) {  // row k, column c → panel c/16, offset 16k + c%16
        const int64_t at = (c / kPanel) * K * kPanel + k * kPanel + c % kPanel;
        float v = U(rng);
        if (half) {
          const uint16_t h = static_cast<uint16_t>(0x3000u + (rng() & 0x7ffu)) | (rng() & 1 ? 0x8000u : 0u);
          W16[at] = h;
          v = half_to_float(h);
        } else {
          W32[at] = v;
        }
        Wf[c * K + k] = v;  // column c's K weights, in order
      }
    const Packed P(half ? static_cast<const void*>(W16.data()) : W32.data(), K, half);
    const int64_t split = K1 < K ? K1 : K;
    std::vector<float> A1(M * (split > 0 ? split : 1)), A2(M * (K - split > 0 ? K - split : 1));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < split; ++k) A1[m * split + k] = A[m * K + k];
      for (int64_t k = split; k < K; ++k) A2[m * (K - split) + k - split] = A[m * K + k];
    }
    C = C0;
    C2 = C0;
    gemm_from(M, n0, N, A.data(), K, P, C0.data(), N, C.data(), N);
    gemm_from2(M, n0, N, A1.data(), split, K1, A2.data(), K - split, P, C0.data(), N, C2.data(), N);
    for (int64_t m = 0; m < M; ++m) {
      row.assign(N, 0.f);
      gemm_from(1, n0, N, A.data() + m * K, K, P, C0.data() + m * N, N, row.data(), N);  // the row alone
      for (int64_t c = n0; c < N; ++c) {
        const float want = chain(C0[m * N + c], A.data() + m * K, Wf.data() + c * K, K);
        const float got[3] = {C[m * N + c], C2[m * N + c], row[c]};
        for (float g : got) {
          ++checked;
          if (std::memcmp(&g, &want, sizeof g) != 0) {
            if (bad < 5)
              std::printf("M=%lld K=%lld K1=%lld N=%lld half=%d row %lld col %lld: %a vs %a\n", (long long)M,
                          (long long)K, (long long)K1, (long long)N, half, (long long)m, (long long)c, g, want);
            ++bad;
          }
        }
      }
    }
  }
  std::printf("checked %ld mismatches %ld\n", checked, bad);
  return bad != 0;
}
