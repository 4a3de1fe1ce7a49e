// The compute kernels of libwn_ort_ops: packed-panel GEMMs over float32 or fp16 weights, the gate, the
// helper thread, and the layer chain and head that the ONNX Runtime ops and the native loop both run.
// Contract: plugins/ort/README.md.
#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace wn {
namespace {

// ---- vectors -----------------------------------------------------------------------------------------
// VW floats per vector: 16 with AVX-512 (one vector per panel row), else 8. fp16 weights are converted as
// they are loaded (F16C's vcvtph2ps), exactly: every fp16 value is a float32 value.
#if defined(__AVX512F__)
constexpr int VW = 16;
typedef float vf __attribute__((vector_size(64)));
inline vf load_half(const uint16_t* p) {
  return reinterpret_cast<vf>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}
#define WN_VREG "+v"
#else
constexpr int VW = 8;
typedef float vf __attribute__((vector_size(32)));
#if defined(__F16C__) && defined(__AVX__)
inline vf load_half(const uint16_t* p) {
  return reinterpret_cast<vf>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#define WN_VREG "+x"
#else
inline vf load_half(const uint16_t* p) {
  vf v;
  for (int i = 0; i < VW; ++i) v[i] = half_to_float(p[i]);
  return v;
}
#endif
#endif

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vf load(const uint16_t* p) { return load_half(p); }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) {
#if defined(__AVX512F__)
  return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#else
  return vf{x, x, x, x, x, x, x, x};
#endif
}
// acc + a·w as one FMA, whatever the compiler's contraction heuristics: GCC's tuning for some AMD cores leaves
// 8-wide products unfused in places, which made a row's bits depend on its batch on AVX2 builds, and the scalar
// column tail unfused for K ≥ 17 in one call form but not another (found by review, reproduced with standalone
// tests). Every element of C is one FMA chain over k in order on every path.
inline vf fmadd(vf a, vf w, vf acc) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(w),
                                              reinterpret_cast<__m512>(acc)));
#elif defined(__FMA__)
  return reinterpret_cast<vf>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(w),
                                              reinterpret_cast<__m256>(acc)));
#else
  return acc + a * w;  // no FMA instruction: never contracted
#endif
}
inline float fmadd(float a, float w, float acc) {
#if defined(__FMA__)
  return __builtin_fmaf(a, w, acc);
#else
  return acc + a * w;
#endif
}
inline float scalar(float w) { return w; }
inline float scalar(uint16_t w) { return half_to_float(w); }

// ---- GEMM ----------------------------------------------------------------------------------------------
// One GEMM: C[rows × columns] = C0 + A[rows × K] · W[K × columns] (W packed; C0 may be C itself, and its row
// stride ld0 may be 0: one row shared by every row of C).
// With A2 set, A holds only the first K1 columns of A and A2 (row stride lda2) the other K − K1: one GEMM over
// [A | A2] whose two parts live apart (a layer's past taps and its current input), without copying them together.
template <typename T>
struct Gemm {
  const float* A;
  int64_t lda;
  const T* W;
  int64_t K, stride;
  const float* C0;
  int64_t ld0;
  float* C;
  int64_t ldc;
  const float* A2 = nullptr;
  int64_t lda2 = 0, K1 = 0;

  Gemm from_row(int64_t m) const {
    Gemm g = *this;
    g.A += m * lda;
    if (g.A2 != nullptr) g.A2 += m * lda2;
    g.C0 += m * ld0;
    g.C += m * ldc;
    return g;
  }
  int64_t split() const { return A2 != nullptr ? K1 : K; }  // rows [0, split) multiply A, the rest A2
  float a(int64_t r, int64_t k) const { return k < split() ? A[r * lda + k] : A2[r * lda2 + k - K1]; }
  const T* column(int64_t c) const { return W + (c / kPanel) * stride + c % kPanel; }
};

// Rows 0 … MR − 1, columns n … n + NV·VW: MR·NV accumulators in registers. With several rows each weight vector
// is loaded (and converted) once per k; the empty asm keeps the compiler from re-reading it as a memory operand
// of every row's FMA.
template <int MR, int NV, typename T>
inline void kernel(const Gemm<T>& g, int64_t n) {
  const T* w0[NV];
  for (int v = 0; v < NV; ++v) w0[v] = g.column(n + VW * v);
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(g.C0 + r * g.ld0 + n + VW * v);
  // rows [k0, k1) of W times A's columns [0, k1 − k0) (row stride lda)
  const auto rows = [&](const float* A, int64_t lda, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      vf w[NV];
      for (int v = 0; v < NV; ++v) {
        w[v] = load(w0[v] + k * kPanel);
#ifdef WN_VREG
        if (MR > 1) asm("" : WN_VREG(w[v]));
#endif
      }
      for (int r = 0; r < MR; ++r) {
        const vf a = splat(A[r * lda + (k - k0)]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(a, w[v], acc[r][v]);
      }
    }
  };
  const int64_t K1 = g.split();
  rows(g.A, g.lda, 0, K1);
  if (K1 < g.K) rows(g.A2, g.lda2, K1, g.K);  // the same FMA chains, continued over A2's columns
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(g.C + r * g.ldc + n + VW * v, acc[r][v]);
}

// Columns [n, N) of MR rows: blocks of NV vectors, then NV/2 …, then one, then a scalar tail.
template <int MR, int NV, typename T>
void columns(const Gemm<T>& g, int64_t n, int64_t N) {
  for (; n + NV * VW <= N; n += NV * VW) kernel<MR, NV>(g, n);
  if constexpr (NV > 1) {
    columns<MR, NV / 2>(g, n, N);
  } else {
    for (; n < N; ++n) {
      const T* w = g.column(n);
      for (int r = 0; r < MR; ++r) {
        float s = g.C0[r * g.ld0 + n];
        for (int64_t k = 0; k < g.K; ++k) s = fmadd(g.a(r, k), scalar(w[k * kPanel]), s);  // as the vectors
        g.C[r * g.ldc + n] = s;
      }
    }
  }
}

// Up to kBigRows − 1 rows over columns [n, N), as many accumulators as the registers hold (one row needs 8
// independent ones to hide the FMA latency).
template <typename T>
void few_rows(int MR, const Gemm<T>& g, int64_t n, int64_t N) {
#if defined(__AVX512F__)  // 32 vector registers
  switch (MR) {
    case 1: return columns<1, 8>(g, n, N);
    case 2: return columns<2, 8>(g, n, N);
    case 3: return columns<3, 4>(g, n, N);
    case 4: return columns<4, 4>(g, n, N);
    case 5: return columns<5, 4>(g, n, N);
    case 6: return columns<6, 2>(g, n, N);
    case 7: return columns<7, 2>(g, n, N);
    default: return;
  }
#else  // 16
  switch (MR) {
    case 1: return columns<1, 8>(g, n, N);
    case 2: return columns<2, 4>(g, n, N);
    case 3: return columns<3, 2>(g, n, N);
    case 4: return columns<4, 2>(g, n, N);
    case 5: return columns<5, 2>(g, n, N);
    default: return;
  }
#endif
}

#if defined(__AVX512F__)
constexpr int kBigRows = 8, kBigVectors = 3;  // 8 × 48 blocks: 24 accumulators; 8 rows divide the usual batches
#else
constexpr int kBigRows = 6, kBigVectors = 2;  // 6 × 16 blocks: 12 accumulators
#endif
constexpr int64_t kStrip = kBigVectors * VW;  // a multiple of the panel width

template <typename T>
void gemm(const Gemm<T>& g, int64_t M, int64_t n0, int64_t N) {
  if (M < kBigRows) return few_rows(static_cast<int>(M), g, n0, N);
  // strip by strip, so one K × kStrip block of weights stays in L1 while every row block uses it
  const int64_t m_big = M / kBigRows * kBigRows;
  int64_t n = n0;
  for (; n + kStrip <= N; n += kStrip) {
    for (int64_t m = 0; m < m_big; m += kBigRows) kernel<kBigRows, kBigVectors>(g.from_row(m), n);
    if (m_big < M) few_rows(static_cast<int>(M - m_big), g.from_row(m_big), n, n + kStrip);
  }
  if (n < N)
    for (int64_t m = 0; m < M; m += kBigRows - 1)
      few_rows(static_cast<int>(std::min<int64_t>(kBigRows - 1, M - m)), g.from_row(m), n, N);
}

// ---- activations -----------------------------------------------------------------------------------------
// tanh: Eigen's / MLAS's rational approximation (odd degree-13 / even degree-6) on a clamped input.
template <typename V>
inline V tanh_rational(V x, V clamp) {
  x = x < -clamp ? -clamp : x;
  x = x > clamp ? clamp : x;
  const V x2 = x * x;
  V p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  V q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}
constexpr float kTanhClamp = 7.90531110763549805f;

}  // namespace

float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = man;
    do {
      ++e;
      m <<= 1;
    } while ((m & 0x400u) == 0);
    bits = sign | ((112 - e) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

void gemm_from(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, const Packed& W, const float* C0,
               int64_t ld0, float* C, int64_t ldc) {
  gemm_from2(M, n0, N, A, lda, W.K, nullptr, 0, W, C0, ld0, C, ldc);
}

void gemm_from2(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, int64_t K1, const float* A2,
                int64_t lda2, const Packed& W, const float* C0, int64_t ld0, float* C, int64_t ldc) {
  if (M <= 0 || n0 >= N) return;
  if (K1 >= W.K) A2 = nullptr;
  if (W.half)
    gemm(Gemm<uint16_t>{A, lda, static_cast<const uint16_t*>(W.p), W.K, W.stride, C0, ld0, C, ldc, A2, lda2, K1}, M,
         n0, N);
  else
    gemm(Gemm<float>{A, lda, static_cast<const float*>(W.p), W.K, W.stride, C0, ld0, C, ldc, A2, lda2, K1}, M, n0, N);
}

void gemm_acc(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, const Packed& W, float* C,
              int64_t ldc) {
  gemm_from(M, n0, N, A, lda, W, C, ldc, C, ldc);
}

void gate(int64_t n, const float* a, const float* b, float* h) {
  int64_t j = 0;
  const vf clamp = splat(kTanhClamp), half = splat(0.5f);
  for (; j + VW <= n; j += VW) {
    const vf t = tanh_rational(load(a + j), clamp);
    const vf s = half + half * tanh_rational(half * load(b + j), clamp);
    store(h + j, t * s);
  }
  for (; j < n; ++j)
    h[j] = tanh_rational(a[j], kTanhClamp) * (0.5f + 0.5f * tanh_rational(0.5f * b[j], kTanhClamp));
}

// ---- the helper thread -------------------------------------------------------------------------------
// WN_WIDEN_RACE_WINDOWS (tests/native/claim_race.cc only) stretches the windows between a job's publication and
// a helper leaving the previous job, so that a claim of the old generation meeting the new job shows in a test.
#ifdef WN_WIDEN_RACE_WINDOWS
#define WN_RACE_WINDOW() \
  for (volatile int i_ = 0; i_ < 2000; i_ = i_ + 1) {    \
  }
#else
#define WN_RACE_WINDOW()
#endif

// One process-wide helper thread shares a call's work with the calling thread. A job is T tasks, claimed in
// order through one atomic (job generation, next task) by the helper as they become ready and by the
// caller for whatever is left once its own part is done. Tasks write disjoint outputs, or wait for the tasks
// they depend on (`Job::after`: the skip projections accumulate into one output in layer order, the head
// waits for the skip sum). Either way the result does not depend on which thread ran which task
// (bit-identical to one thread).
// A helper that is descheduled while it holds a task makes the caller wait for it (spinning, then yielding
// its core, which the helper may be queued on). After such a wait (over kStallNs, and over half the time the
// caller itself spent on the job) the caller works alone for a while: 1 ms after an isolated stall (a helper
// woken from sleep, a thread just started), doubling on each stall that follows within kCalmNs (50 ms) of the
// last, up to 256 ms when the other core stays busy. (Measured in time, not calls: a call is 30 µs at batch 1, 1 ms at batch 64.)
// The helper waits for the next job spinning, yielding its core after kYieldNs (another thread may need it:
// the caller itself, when both share one core), then sleeps after kSpinNs; its waits inside a job spin, then
// yield, too. `WN_ORT_OPS_THREADS=1` disables it.
class Helper {
 public:
  static constexpr int64_t kSpinNs = 2'000'000;
  static constexpr int64_t kStallNs = 200'000;
  static constexpr int64_t kYieldNs = 20'000;
  static constexpr int kBits = 20;  // state_'s task count and next task: jobs of up to 2^20 − 1 tasks (else alone)
  static constexpr int64_t kField = (int64_t{1} << kBits) - 1;
  static constexpr uint64_t kGenerations = (uint64_t{1} << (64 - 2 * kBits)) - 1;
  static constexpr int64_t kSoloMinNs = 1'000'000, kSoloMaxNs = 256'000'000, kCalmNs = 50'000'000;

  static Helper& get() {
    static Helper helper;
    return helper;
  }

  // Publishes `job` to the helper → true, or false when the caller must work alone (no helper, disabled,
  // backing off after a stall, or busy with another caller's job).
  bool begin(const Job& job, bool force) {
    if (!enabled_.load(std::memory_order_relaxed) || job.tasks > kField) return false;
    const int64_t now = clock_ns();
    if (!force && now < solo_until_.load(std::memory_order_relaxed)) return false;
    if (busy_.test_and_set(std::memory_order_acquire)) return false;
    begun_ = now;
    start();
    job_ = job;
    WN_RACE_WINDOW();
    ready_.store(0, std::memory_order_relaxed);
    finished_.store(0, std::memory_order_relaxed);
    stalled_ = false;
    forced_ = force;
    gen_ = (generation(state_.load(std::memory_order_relaxed)) + 1) & kGenerations;
    // publish: generation gen of `tasks` tasks, next task 0 (seq_cst: pairs with the sleep check)
    state_.store(gen_ << (2 * kBits) | static_cast<uint64_t>(job.tasks) << kBits);
    if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_one();
    }
    return true;
  }

  void ready(int64_t n) { ready_.store(n, std::memory_order_release); }

  // Until tasks 0 … n−1 have finished: the caller runs those the helper has not claimed (they must be ready; each
  // after what Job::after says), then waits for the rest → the count of finished tasks it saw (≥ n; the helper runs
  // its tasks in order, so tasks 0 … count−1 have all finished).
  int64_t await(int64_t n) {
    int64_t t;
    while ((t = claim(gen_, n)) >= 0) {
      if (job_.after) {
        const int64_t need = job_.after(job_.ctx, t);
        wait([&] { return finished_.load(std::memory_order_acquire) >= need; });
      }
      job_.fn(job_.ctx, t);
      finished_.fetch_add(1, std::memory_order_acq_rel);
    }
    int64_t seen = 0;
    wait([&] { return (seen = finished_.load(std::memory_order_acquire)) >= n; });
    return seen;
  }

  // Runs what the helper has not claimed, waits for the rest, releases the helper.
  void finish() {
    const int64_t T = job_.tasks;
    ready_.store(T, std::memory_order_release);
    int64_t t;
    while ((t = claim(gen_)) >= 0) {
      if (job_.after) {
        const int64_t need = job_.after(job_.ctx, t);
        wait([&] { return finished_.load(std::memory_order_acquire) >= need; });
      }
      job_.fn(job_.ctx, t);
      finished_.fetch_add(1, std::memory_order_acq_rel);
    }
    wait([&] { return finished_.load(std::memory_order_acquire) >= T; });
    if (forced_) {  // a measurement: leaves the back-off as it was
    } else if (stalled_) {  // the helper was descheduled: work alone a while, longer if it keeps happening
      const int64_t now = clock_ns();
      if (now - last_stall_ > kCalmNs) backoff_ = kSoloMinNs;
      solo_until_.store(now + backoff_, std::memory_order_relaxed);
      backoff_ = std::min(2 * backoff_, kSoloMaxNs);
      last_stall_ = now;
    }
    busy_.clear(std::memory_order_release);
  }

  ~Helper() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
      cv_.notify_one();
    }
    thread_.join();
  }

  std::atomic<int64_t> helped_{0};  // tasks the helper computed (for tests)
  std::atomic<bool> enabled_{true};

 private:
  Helper() {
    const char* env = std::getenv("WN_ORT_OPS_THREADS");
    enabled_.store(!(env != nullptr && std::atoi(env) == 1));
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  static int64_t clock_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Spins until done(), yielding after kYieldNs; a wait over kStallNs and over half the caller's own time on the
  // job so far counts as a stall (a large job's halves may end that far apart without anyone descheduled).
  template <typename Done>
  void wait(Done&& done) {
    if (done()) return;
    const int64_t t0 = clock_ns(), limit = std::max(kStallNs, (t0 - begun_) / 2);
    for (unsigned spins = 0; !done(); ++spins) {
      if ((spins & 255) != 0) {
        pause();
        continue;
      }
      const int64_t waited = clock_ns() - t0;
      if (waited > kYieldNs) std::this_thread::yield();
      stalled_ = stalled_ || waited > limit;
    }
  }

  // The helper's own waits (for the caller's next layer, for the task before): spinning, then yielding its core
  // after kYieldNs, which the caller it waits for may be queued on.
  template <typename Done>
  static void spin_until(Done&& done) {
    if (done()) return;
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned spins = 1; !done(); ++spins) {
      pause();
      if ((spins & 255) == 0 &&
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() > kYieldNs)
        std::this_thread::yield();
    }
  }

  void start() {
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  }

  // Claims the next task of job `gen` below `limit` (default: all) → its index, or −1 when they are taken (or the
  // job is over). The task count comes from the same word as the generation: a helper leaving job g reads job g's
  // count even while the caller publishes job g + 1 (with job_'s count it could take a task of the new job under
  // the old generation, and the task would run twice).
  int64_t claim(uint64_t gen, int64_t limit = INT64_MAX) {
    uint64_t s = state_.load(std::memory_order_acquire);
    WN_RACE_WINDOW();
    while (generation(s) == gen && next_task(s) < std::min(task_count(s), limit)) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return next_task(s);
    }
    return -1;
  }
  static uint64_t generation(uint64_t s) { return s >> (2 * kBits); }
  static int64_t task_count(uint64_t s) { return static_cast<int64_t>((s >> kBits) & kField); }
  static int64_t next_task(uint64_t s) { return static_cast<int64_t>(s & kField); }

  void loop() {
    uint64_t seen = 0;
    auto idle_since = std::chrono::steady_clock::now();
    for (unsigned spins = 0;; ++spins) {
      if (stop_.load(std::memory_order_acquire)) return;
      const uint64_t s = state_.load(std::memory_order_acquire);
      const uint64_t gen = generation(s);
      if (gen != seen) {  // a new job: take tasks as they become ready
        seen = gen;
        int64_t t;
        while ((t = claim(gen)) >= 0) {
          spin_until([&] { return ready_.load(std::memory_order_acquire) > t; });
          if (job_.after) {
            const int64_t need = job_.after(job_.ctx, t);
            spin_until([&] { return finished_.load(std::memory_order_acquire) >= need; });
          }
          job_.fn(job_.ctx, t);
          finished_.fetch_add(1, std::memory_order_acq_rel);
          helped_.fetch_add(1, std::memory_order_relaxed);
        }
        idle_since = std::chrono::steady_clock::now();
        continue;
      }
      pause();
      if ((spins & 255) != 0) continue;
      const int64_t idle =
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - idle_since).count();
      if (idle > kYieldNs && idle <= kSpinNs) std::this_thread::yield();  // the core to whoever else needs it
      if (idle > kSpinNs) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.store(true);  // seq_cst with the state load below: a job published meanwhile is seen
        cv_.wait(lock, [&] { return stop_.load() || generation(state_.load()) != seen; });
        sleeping_.store(false);
        idle_since = std::chrono::steady_clock::now();
      }
    }
  }

  std::atomic<int64_t> solo_until_{0};  // work alone until then (clock_ns)
  int64_t backoff_ = kSoloMinNs, last_stall_ = 0, begun_ = 0;  // the next solo stretch (these under busy_)
  bool stalled_ = false, forced_ = false;
  uint64_t gen_ = 0;
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::atomic<uint64_t> state_{0};  // generation (24 bits) | task count (20) | next task to claim (20)
  std::atomic<int64_t> ready_{0};    // tasks that may start
  std::atomic<int64_t> finished_{0}; // tasks done
  std::atomic<bool> stop_{false}, sleeping_{false};
  Job job_{};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

Team::Team(const Job& job, bool help, bool force) : job_(job) {
  helped_ = help && job.tasks > 0 && Helper::get().begin(job, force);
}

void Team::ready(int64_t n) {
  if (helped_) return Helper::get().ready(n);
  for (; ran_ < std::min(n, job_.tasks); ++ran_) job_.fn(job_.ctx, ran_);  // alone: run them now, in order
}

void Team::await(int64_t n) {
  if (!helped_) return ready(n);
  if (n > seen_) seen_ = Helper::get().await(n);  // else known finished: no read of the helper's counters
}

void Team::finish() {
  if (done_) return;
  done_ = true;
  if (helped_)
    Helper::get().finish();
  else
    ready(job_.tasks);
}

void set_helper(bool on) { Helper::get().enabled_.store(on); }
bool helper_enabled() { return Helper::get().enabled_.load(); }
int64_t helped_tasks() { return Helper::get().helped_.load(); }

// ---- the layer chain -----------------------------------------------------------------------------------
namespace {

// The layers whose past taps the helper projects in the pipeline (gate_in_l + taps_l · W_past,l into a.pre, a task
// each, ready at the start of the step): n of them, spread evenly from layer 2 on (the caller needs layers 0 and 1
// at once), so that the helper's lighter layers (skip projection only) and heavier ones alternate and it keeps pace
// with the chain to its end, instead of falling behind over a run of heavy last layers.
struct HelperLayers {
  int64_t L = 0, n = 0;
  static constexpr int64_t kFirst = 2;

  int64_t layer(int64_t i) const { return kFirst + i * (L - kFirst) / n; }  // the i-th, 0 ≤ i < n
  int64_t index(int64_t l) const {  // → i where layer(i) = l, or −1: the caller projects layer l's taps itself
    if (n <= 0 || l < kFirst || l >= L) return -1;
    const int64_t span = L - kFirst, i = ((l - kFirst) * n + span - 1) / span;
    return i < n && layer(i) == l ? i : -1;
  }
};

// The sequential part on the calling thread, rows [r0, r1): per layer one gate GEMM over [taps_l | x_l] (or, for the
// helper's layers, over x_l from its pre_l), the gate, then (but the last) the residual GEMM. Tasks 0 … n−1 of the
// team are the helper's past-tap projections; task n+l may start once h_l is written, and every task once h_{L−1} is.
void chain(const LayersArgs& a, int64_t r0, int64_t r1, Team& team, const HelperLayers& helper) {
  const int64_t M = r1 - r0, R = a.R, G = a.G, G2 = 2 * G, L = a.L, P = a.P;
  const int64_t ldh = L * G, ldx = L * R;
  float* X = a.X + r0 * ldx;
  float* H = a.H + r0 * ldh;
  float *acc = a.acc + r0 * G2, *res = a.res + r0 * R;
  const float* taps = a.taps + r0 * L * P;
  const int64_t pre = helper.n;
  team.ready(pre);
  for (int64_t b = 0; b < M; ++b) std::memcpy(X + b * ldx, a.x0 + (r0 + b) * R, R * sizeof(float));
  for (int64_t l = 0; l < L; ++l) {
    const float* x = X + l * R;  // x_l rows, stride ldx
    if (l + 1 < L && helper.index(l + 1) < 0 && M == 1)  // the next layer's taps (another thread may have written them)
      for (int64_t i = 0; i < P; i += 64 / static_cast<int64_t>(sizeof(float))) __builtin_prefetch(taps + (l + 1) * P + i);
    // acc = gate_in_l + [taps_l | x_l] · W_gate,l: the past-tap rows, then x_l's, one FMA chain over k in order
    // (whichever thread computed the first part, the result is the same bits)
    const Packed w = a.w_gate.matrix(l, G2);
    const float* gate_in = a.gate_in + r0 * a.gate_ld + l * G2;
    if (const int64_t i = helper.index(l); i >= 0) {
      team.await(i + 1);
      gemm_from(M, 0, G2, x, ldx, w.rows(P, R), a.pre + r0 * L * G2 + l * G2, L * G2, acc, G2);
    } else {
      gemm_from2(M, 0, G2, taps + l * P, L * P, P, x, ldx, w, gate_in, a.gate_ld, acc, G2);
    }
    float* h = H + l * G;
    for (int64_t b = 0; b < M; ++b) gate(G, acc + b * G2, acc + b * G2 + G, h + b * ldh);
    if (l + 1 == L) {
      team.ready(pre + L);  // the skip projections and the helper's part of the last one (the rest: tail())
      break;
    }
    team.ready(pre + l + 1);
    std::memset(res, 0, M * R * sizeof(float));
    gemm_acc(M, 0, R, h, ldh, a.w_out.matrix(l, R), res, R);
    const float al = a.alpha[l], be = a.beta[l];
    float* xn = X + (l + 1) * R;
    for (int64_t b = 0; b < M; ++b)
      for (int64_t j = 0; j < R; ++j) xn[b * ldx + j] = al * res[b * R + j] + be * x[b * ldx + j];
  }
}

void init_skip(const LayersArgs& a, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b) std::memcpy(a.skip + b * a.S, a.b_skip, a.S * sizeof(float));
}

// skip[r0 … r1, n0 … n1) += h_l · W_skip,l (a task of a job whose tasks run in layer order)
void skip_layer(const LayersArgs& a, int64_t r0, int64_t r1, int64_t l, int64_t n0, int64_t n1) {
  gemm_acc(r1 - r0, n0, n1, a.H + r0 * a.L * a.G + l * a.G, a.L * a.G, a.w_skip.matrix(l, a.S), a.skip + r0 * a.S,
           a.S);
}

// pre_l = gate_in_l + taps_l · W_past,l for rows [r0, r1)
void past_taps(const LayersArgs& a, int64_t r0, int64_t r1, int64_t l) {
  const int64_t G2 = 2 * a.G;
  gemm_from(r1 - r0, 0, G2, a.taps + r0 * a.L * a.P + l * a.P, a.L * a.P, a.w_gate.matrix(l, G2).rows(0, a.P),
            a.gate_in + r0 * a.gate_ld + l * G2, a.gate_ld, a.pre + r0 * a.L * G2 + l * G2, a.L * G2);
}

// The helper's past-tap layers in the pipeline: as many as balance the weights the two threads stream (caller:
// every layer's current-input rows and residual, the past-tap rows of its layers; helper: the skip projections and
// the past-tap rows of its layers; the head's halves are even); none alone or without taps.
HelperLayers helper_layers(const LayersArgs& a, Split split) {
  const int64_t G2 = 2 * a.G, p = a.P * G2;
  if (split != kPipeline || p == 0 || a.pre == nullptr || a.L <= HelperLayers::kFirst) return {a.L, 0};
  const int64_t caller = a.L * a.R * G2 + (a.L - 1) * a.G * a.R, helper = a.L * a.G * a.S + a.L * p;
  const int64_t k = (helper - caller + p) / (2 * p);  // caller + k·p ≈ helper − k·p: the caller projects k layers' taps
  return {a.L, a.L - std::min(a.L, std::max(HelperLayers::kFirst, k))};
}

// Columns [n0, n1) of part `part` of `parts` (whole panels) of N columns.
void part_columns(int64_t N, int64_t part, int64_t parts, int64_t* n0, int64_t* n1) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  *n0 = std::min(N, panels * part / parts * kPanel);
  *n1 = std::min(N, panels * (part + 1) / parts * kPanel);
}

// ---- the head -------------------------------------------------------------------------------------------
constexpr int64_t kHeadParts = 2;  // each 1×1's columns in two halves (whole panels), one per thread

// Part `part` of one 1×1 of rows [r0, r1): C = [relu](A · W + bias) (relu_in: A is relu(src), written first)
struct HeadLayer {
  int64_t K, N;
  const float* A;  // (B, K)
  Packed W;
  const float* bias;
  bool relu;
  float* C;  // (B, N)

  void part(int64_t r0, int64_t r1, int64_t p) const {
    int64_t n0, n1;
    part_columns(N, p, kHeadParts, &n0, &n1);
    if (n0 >= n1) return;
    for (int64_t b = r0; b < r1; ++b) std::memcpy(C + b * N + n0, bias + n0, (n1 - n0) * sizeof(float));
    gemm_acc(r1 - r0, n0, n1, A + r0 * K, K, W, C + r0 * N, N);
    if (relu)
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t j = n0; j < n1; ++j) C[b * N + j] = std::max(C[b * N + j], 0.f);
  }
};

struct Head {
  HeadLayer first, second;
  explicit Head(const HeadArgs& a)
      : first{a.S, a.H, a.hidden, a.w1, a.b1, true, a.hidden + a.B * a.S},
        second{a.H, a.Q, a.hidden + a.B * a.S, a.w2, a.b2, false, a.out} {}
};

void relu_skip(const HeadArgs& a, int64_t r0, int64_t r1) {  // hidden[:, :S] = relu(skip)
  for (int64_t i = r0 * a.S; i < r1 * a.S; ++i) a.hidden[i] = std::max(a.skip[i], 0.f);
}

// The last layer's skip projection over the columns of part `part`, then the skip sum's scaling and (with a head)
// its ReLU into the head's input, for those columns.
void skip_last(const LayersArgs& a, const HeadArgs* h, int64_t r0, int64_t r1, int64_t part) {
  if (part == 0 && a.after_layer != nullptr) a.after_layer(a.after_ctx, a.L - 1, r0, r1);
  int64_t n0, n1;
  part_columns(a.S, part, kHeadParts, &n0, &n1);
  if (n0 >= n1) return;
  skip_layer(a, r0, r1, a.L - 1, n0, n1);
  for (int64_t b = r0; b < r1; ++b) {
    float* s = a.skip + b * a.S;
    if (a.skip_scale != 1.0f)
      for (int64_t j = n0; j < n1; ++j) s[j] *= a.skip_scale;
    if (h != nullptr)
      for (int64_t j = n0; j < n1; ++j) h->hidden[b * a.S + j] = std::max(s[j], 0.f);
  }
}

// One step's job over rows [r0, r1). Its tasks: the past-tap projections of the helper's layers (ready at once), the
// skip projections 0 … L−2 (in layer order, as the chain writes h_l), then the helper's half of each stage of the
// tail: the last skip projection's column part 1 (with its part of the skip sum's scaling and ReLU), and with a head
// the first 1×1's column part 1 and the second's. The caller computes the part 0s itself (tail()), releasing each
// helper part once its own part of the stage before is written. When the caller has other work after the chain (a
// StepHook), the helper's first tail task is all of the last skip projection instead (helper_last). So each thread keeps streaming the same half of
// the tail's weights from step to step (the one in its own caches; parts claimed by whoever came first went back and
// forth, which costs when the two cores share no cache), and a stage needs one hand-over each way.
struct StepJob {
  const LayersArgs* a;
  const HeadArgs* h;
  Head head;
  int64_t r0, r1;
  bool with_head;
  HelperLayers helper;  // the layers whose past-tap projections are tasks (none: alone)
  bool helper_last = false;  // the helper's task computes all of the last skip projection (the caller has a hook)

  int64_t pre() const { return helper.n; }
  int64_t stages() const { return with_head ? 3 : 1; }
  int64_t tail_task() const { return pre() + a->L - 1; }  // the first of the tail's tasks
  int64_t tasks() const { return tail_task() + stages(); }
  // Stage k's part p: the last skip projection (k = 0), the head's first 1×1 (1) or its second (2).
  void stage(int64_t k, int64_t p) const {
    if (k == 0) return skip_last(*a, with_head ? h : nullptr, r0, r1, p);
    (k == 1 ? head.first : head.second).part(r0, r1, p);
  }
  static void run(const void* ctx, int64_t t) {
    const StepJob& j = *static_cast<const StepJob*>(ctx);
    const int64_t n = j.pre();
    if (t < n) return past_taps(*j.a, j.r0, j.r1, j.helper.layer(t));
    if (t < j.tail_task()) {
      skip_layer(*j.a, j.r0, j.r1, t - n, 0, j.a->S);
      if (j.a->after_layer != nullptr) j.a->after_layer(j.a->after_ctx, t - n, j.r0, j.r1);
      return;
    }
    const int64_t k = t - j.tail_task();
    if (k == 0 && j.helper_last) j.stage(0, 0);
    j.stage(k, 1);
  }
  static int64_t after(const void* ctx, int64_t t) {  // the skip sum in layer order, then each stage after the last
    return t < static_cast<const StepJob*>(ctx)->pre() ? 0 : t;
  }
  // The caller's part 0 of each stage, once the chain is done (it has released the tail's first task).
  void tail(Team& team) const {
    const int64_t s = tail_task();
    for (int64_t k = helper_last ? 1 : 0; k < stages(); ++k) {
      team.await(s + k);  // stage k's input: the skip sum through layer L−2, then the helper's part of stage k − 1
      stage(k, 0);
      team.ready(s + k + 2);  // the helper's part of stage k + 1 may start: the caller's part of its input is written
    }
  }
};
}  // namespace

void run_layers(const LayersArgs& a, int64_t r0, int64_t r1, Split split) {
  if (r1 <= r0) return;
  init_skip(a, r0, r1);
  const HeadArgs none{};
  const StepJob job{&a, &none, Head(none), r0, r1, false, helper_layers(a, split)};
  Team team(Job{StepJob::run, &job, job.tasks(), StepJob::after}, split == kPipeline);
  chain(a, r0, r1, team, job.helper);
  job.tail(team);
  team.finish();
}

void run_head(const HeadArgs& a, int64_t r0, int64_t r1, Split split) {
  if (r1 <= r0) return;
  relu_skip(a, r0, r1);
  const Head head(a);
  for (const HeadLayer* layer : {&head.first, &head.second}) {
    struct Ctx {
      const HeadLayer* layer;
      int64_t r0, r1;
    } ctx{layer, r0, r1};
    Team team(Job{[](const void* c, int64_t p) {
                    const Ctx& x = *static_cast<const Ctx*>(c);
                    x.layer->part(x.r0, x.r1, p);
                  },
                  &ctx, kHeadParts},
              split == kPipeline);
    team.finish();
  }
}

void run_step(const LayersArgs& a, const HeadArgs& h, int64_t r0, int64_t r1, Split split, const StepHook* hook) {
  if (r1 <= r0) return;
  init_skip(a, r0, r1);
  // With a hook the helper computes all of the last skip projection while the caller runs the hook, and its part of
  // the head's first 1×1 then needs nothing of the caller's (measured on the target, batch 1, pipeline: 43.8 → 42.8
  // µs per step when the two cores share no cache, 35.3 → 35.2 µs when they do).
  const bool helper_last = hook != nullptr;
  const StepJob job{&a, &h, Head(h), r0, r1, true, helper_layers(a, split), helper_last};
  Team team(Job{StepJob::run, &job, job.tasks(), StepJob::after}, split == kPipeline);
  chain(a, r0, r1, team, job.helper);
  if (helper_last) team.ready(job.tail_task() + 2);
  if (hook != nullptr) hook->fn(hook->ctx, r0, r1);  // while the helper finishes the skip sum
  job.tail(team);
  team.finish();
}

namespace {
struct RowsTask {
  int64_t B;
  void (*fn)(const void*, int64_t, int64_t);
  const void* ctx;
};
void rows_half(const void* ctx, int64_t half) {
  const RowsTask& t = *static_cast<const RowsTask*>(ctx);
  const int64_t mid = (t.B + 1) / 2;
  if (half == 0)
    t.fn(t.ctx, 0, mid);
  else
    t.fn(t.ctx, mid, t.B);
}
}  // namespace

void split_rows(int64_t B, void (*fn)(const void*, int64_t, int64_t), const void* ctx) {
  const RowsTask task{B, fn, ctx};
  Team team(Job{rows_half, &task, B > 1 ? 2 : 1}, B > 1);
  team.finish();
}

}  // namespace wn
