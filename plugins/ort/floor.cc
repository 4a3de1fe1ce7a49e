// wn_weight_floor: the machine's weight-streaming floor for `wn-export bench`. One pass is what a generation
// step would cost if it were nothing but its weight GEMMs at full rate: `batch` rows times one K × N packed
// matrix (float32 or fp16) holding as many weights as the model streams per step, with the kernels of
// kernels.cc, on one thread or split in two column halves between the caller and the helper thread (one
// synchronisation per pass, as a step has). wn_round_trip: what one hand-over between two threads costs here.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace {

struct FloorPass {
  int64_t batch, N;
  const float* A;
  wn::Packed W;
  float* C;
};

void floor_half(const void* ctx, int64_t part) {
  const FloorPass& f = *static_cast<const FloorPass*>(ctx);
  const int64_t panels = (f.N + wn::kPanel - 1) / wn::kPanel;
  const int64_t n0 = std::min(f.N, panels * part / 2 * wn::kPanel), n1 = std::min(f.N, panels * (part + 1) / 2 * wn::kPanel);
  wn::gemm_acc(f.batch, n0, n1, f.A, f.W.K, f.W, f.C, f.N);
}

}  // namespace

extern "C" {

// Times `passes` passes (after one warm-up pass) into ns[0 … passes) → 0, or 1 for bad arguments.
__attribute__((visibility("default"))) int wn_weight_floor(int64_t K, int64_t N, int64_t batch, int half, int threads,
                                                           int64_t passes, int64_t* ns) {
  if (K < 1 || N < 1 || batch < 1 || passes < 1 || (threads != 1 && threads != 2)) return 1;
  const int64_t n = wn::Packed::size(K, N);  // elements
  std::vector<unsigned char> raw(static_cast<size_t>(n * (half ? 2 : 4) + wn::kAlign));
  float* w32 = wn::align_up(reinterpret_cast<float*>(raw.data()));  // as the native loop's weights (native_loop.py)
  uint16_t* w16 = reinterpret_cast<uint16_t*>(w32);
  for (int64_t i = 0; i < n; ++i) {  // small finite values; the floor does not depend on them
    const uint32_t v = static_cast<uint32_t>(i * 2654435761u) >> 20;
    if (half)
      w16[i] = static_cast<uint16_t>(0x2000u | (v & 0x13ffu));
    else
      w32[i] = static_cast<float>(v) * 1e-6f;
  }
  std::vector<float> A(batch * K, 0.5f), C(batch * N, 0.f);
  const FloorPass pass{batch, N, A.data(), wn::Packed(half ? static_cast<const void*>(w16) : w32, K, half != 0),
                       C.data()};
  for (int64_t i = -1; i < passes; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    wn::Team team(wn::Job{floor_half, &pass, 2}, threads == 2, true);
    team.finish();
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= 0) ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
  }
  return 0;
}

// Times round trips of one cache line between the calling thread and a second one, both spinning on it, into
// ns[0 … n) → how many were timed (≤ n: it stops after `budget_ns`), or −1 for bad arguments. The threads of a
// step hand work over this way (the helper thread, kernels.cc); on a virtual machine whose two CPUs sometimes share
// a cache and sometimes do not, this moves by 4× from one minute to the next while the floor above barely moves.
__attribute__((visibility("default"))) int64_t wn_round_trip(int64_t n, int64_t budget_ns, int64_t* ns) {
  if (n < 1 || budget_ns < 1 || ns == nullptr) return -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(3));  // an idle helper thread sleeps after 2 ms
  alignas(128) std::atomic<int64_t> flag{0};
  std::thread other([&flag, n] {
    for (int64_t i = 0; i < n; ++i) {
      int64_t v;
      while ((v = flag.load(std::memory_order_acquire)) != 2 * i + 1)
        if (v < 0) return;
      flag.store(2 * i + 2, std::memory_order_release);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;
  for (; done < n; ++done) {
    const auto t0 = std::chrono::steady_clock::now();
    if (std::chrono::duration_cast<std::chrono::nanoseconds>(t0 - start).count() > budget_ns) break;
    flag.store(2 * done + 1, std::memory_order_release);
    while (flag.load(std::memory_order_acquire) != 2 * done + 2) {
    }
    ns[done] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  }
  flag.store(-1, std::memory_order_release);
  other.join();
  return done;
}
}
