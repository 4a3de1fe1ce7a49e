// wn_ort_ops: ONNX Runtime custom operators of wn-export (CPU).
//
// wn_export.WaveNetLayers — the residual-layer chain of a lowered FP32 step graph as one kernel.
//
// The lowered step graph (wn_export/export/lowering.py) spends four ONNX nodes per layer (two fused Gemms,
// Mul, Gemm), a batched MatMul of the past taps and a packed skip Gemm; at batch 1 ONNX Runtime's
// per-node dispatch costs more than their arithmetic. This op computes all of it in one call
// (wn_export/backends/onnxruntime/fusion.py rewrites the graph to use it). Contract, threading and tests:
// plugins/ort/README.md. In short, per layer l:
//   [a_l | b_l] = gate_in_l + [taps_l | x_l] · W_gate,l ;  h_l = tanh(a_l) ⊙ σ(b_l)
//   x_{l+1} = alpha_l · (h_l · W_out,l) + beta_l · x_l ;   skip = b_skip + Σ_l h_l · W_skip,l
// outputs (skip, [x_0 | … | x_{L−1}]).
//
// wn_export.WaveNetHead — the output head after it: relu(relu(skip) · W1 + b1) · W2 + b2.
//
// Weight matrices are taken packed in 16-column panels (see Packed), and up to batch 16 a helper thread
// streams part of the weights while the calling thread streams the rest (see Helper).
#include <onnxruntime_c_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

const OrtApi* g_api = nullptr;

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat8(float x) { return v8{x, x, x, x, x, x, x, x}; }

// Packed weights: a K × N matrix stored as ⌈N/16⌉ panels of K × 16 floats, panel after panel (the last
// one zero-padded). Column c of row k is at panel c/16, offset 16·k + c%16. A GEMM then streams each
// panel front to back: on the reference machine a 4.4 MB weight stream took ~25% less time than in
// row-major order, where each pass over a 64-column strip reads part rows with a stride.
constexpr long kPanel = 16;

struct Packed {
  const float* p;
  long K;
  const float* col(long c) const { return p + (c / kPanel) * K * kPanel + c % kPanel; }
  static long size(long K, long N) { return (N + kPanel - 1) / kPanel * K * kPanel; }
};

// C[MR × 8·NV] += A[MR × K] · W[K × columns n … n + 8·NV) (A, C row strides lda, ldc). MR·NV accumulators
// stay in registers; with several rows each W segment is loaded once per k (the empty asm keeps the
// compiler from re-reading it as a memory operand of every row's FMA).
template <int MR, int NV>
inline void kernel(int K, const float* A, long lda, Packed W, long n, float* C, long ldc) {
  const float* w0[NV];
  for (int v = 0; v < NV; ++v) w0[v] = W.col(n + 8 * v);
  v8 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = load8(C + r * ldc + n + 8 * v);
  for (int k = 0; k < K; ++k) {
    v8 w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = load8(w0[v] + k * kPanel);
      if (MR > 1) asm("" : "+x"(w[v]));  // one row uses each w once: a memory operand is better
    }
    for (int r = 0; r < MR; ++r) {
      const v8 a = splat8(A[r * lda + k]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store8(C + r * ldc + n + 8 * v, c[r][v]);
}

// Columns [n, N) of MR rows: blocks of 8·NV, then of 8, then a scalar tail.
template <int MR, int NV>
void columns(int K, long n, long N, const float* A, long lda, Packed W, float* C, long ldc) {
  for (; n + 8 * NV <= N; n += 8 * NV) kernel<MR, NV>(K, A, lda, W, n, C, ldc);
  for (; n + 8 <= N; n += 8) kernel<MR, 1>(K, A, lda, W, n, C, ldc);
  for (; n < N; ++n) {
    const float* w = W.col(n);
    for (int r = 0; r < MR; ++r) {
      float s = C[r * ldc + n];
      for (int k = 0; k < K; ++k) s += A[r * lda + k] * w[k * kPanel];
      C[r * ldc + n] = s;
    }
  }
}

// A block of MR < 6 rows over columns [n, N), as wide as 12 accumulators allow (a single row needs 8
// independent accumulators to hide the FMA latency).
void few_rows(int MR, int K, long n, long N, const float* A, long lda, Packed W, float* C, long ldc) {
  switch (MR) {
    case 1: columns<1, 8>(K, n, N, A, lda, W, C, ldc); break;
    case 2: columns<2, 4>(K, n, N, A, lda, W, C, ldc); break;
    case 3: columns<3, 4>(K, n, N, A, lda, W, C, ldc); break;
    case 4: columns<4, 2>(K, n, N, A, lda, W, C, ldc); break;
    case 5: columns<5, 2>(K, n, N, A, lda, W, C, ldc); break;
    default: break;
  }
}

// C[M × columns n0 … N) += A[M × K] · W[K × N] (W packed, n0 a multiple of 16). From 6 rows on: 6 × 16
// blocks, panel by panel, so one K × 16 panel stays in L1 while every row block uses it.
void gemm_acc(int M, int K, long n0, long N, const float* A, long lda, Packed W, float* C, long ldc) {
  if (M < 6) return few_rows(M, K, n0, N, A, lda, W, C, ldc);
  const long n16 = N / 16 * 16, m6 = M / 6 * 6;
  for (long n = n0; n < n16; n += 16) {
    for (long m = 0; m < m6; m += 6) kernel<6, 2>(K, A + m * lda, lda, W, n, C + m * ldc, ldc);
    if (m6 < M) few_rows(M - m6, K, n, n + 16, A + m6 * lda, lda, W, C + m6 * ldc, ldc);
  }
  if (std::max(n0, n16) < N)
    for (long m = 0; m < M; m += 5)
      few_rows(std::min<long>(5, M - m), K, std::max(n0, n16), N, A + m * lda, lda, W, C + m * ldc, ldc);
}

// tanh: Eigen's / MLAS's rational approximation (odd degree-13 / even degree-6) on a clamped input.
template <typename T>
inline T tanh_rational(T x, T clamp) {
  x = x < -clamp ? -clamp : x;
  x = x > clamp ? clamp : x;
  const T x2 = x * x;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}
constexpr float kTanhClamp = 7.90531110763549805f;

// h[j] = tanh(a[j]) · σ(b[j]),  σ(b) = ½ + ½·tanh(b/2)
void gate(int n, const float* a, const float* b, float* h) {
  int j = 0;
  const v8 clamp = splat8(kTanhClamp), half = splat8(0.5f);
  for (; j + 8 <= n; j += 8) {
    const v8 t = tanh_rational(load8(a + j), clamp);
    const v8 s = half + half * tanh_rational(half * load8(b + j), clamp);
    store8(h + j, t * s);
  }
  for (; j < n; ++j)
    h[j] = tanh_rational(a[j], kTanhClamp) * (0.5f + 0.5f * tanh_rational(0.5f * b[j], kTanhClamp));
}

OrtStatus* error(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

#define WN_TRY(expr)                   \
  do {                                 \
    OrtStatus* st_ = (expr);           \
    if (st_ != nullptr) return st_;    \
  } while (0)

OrtStatus* input(OrtKernelContext* ctx, size_t i, const float** data, std::vector<int64_t>* dims) {
  const OrtValue* v = nullptr;
  WN_TRY(g_api->KernelContext_GetInput(ctx, i, &v));
  if (v == nullptr) return error("wn_export op: input " + std::to_string(i) + " is missing");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  WN_TRY(g_api->GetTensorTypeAndShape(v, &info));
  size_t n = 0;
  OrtStatus* st = g_api->GetDimensionsCount(info, &n);
  if (st == nullptr) {
    dims->assign(n, 0);
    st = g_api->GetDimensions(info, dims->data(), n);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  if (st != nullptr) return st;
  void* p = nullptr;
  WN_TRY(g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &p));
  *data = static_cast<const float*>(p);
  return nullptr;
}

// ---- the helper thread -----------------------------------------------------------------------------
// One process-wide helper thread shares a call's weight streaming with the calling thread. A job is T
// tasks that write disjoint outputs, claimed in order through one atomic (job generation, next task) by
// the helper as they become ready and by the caller for whatever is left once its own part is done:
// - WaveNetLayers: task l is layer l's skip projection h_l · W_skip,l (ready once the chain has written
//   h_l), computed while the caller runs the sequential layer chain, so the two stream different weights.
//   Each projection goes to its own slot and the caller sums the slots in layer order, so the result does
//   not depend on which thread computed which layer (bit-identical to one thread).
// - WaveNetHead: the tasks are column halves of each 1×1 (all ready at once).
// A helper that is descheduled while it holds a task makes the caller wait for it (spinning, then yielding its core, which
// the helper may be queued on). After such a wait (> kStallNs) the caller works alone for a while: 32
// calls after an isolated stall (a helper woken from sleep, a thread just started), doubling on each
// stall that follows within kCalmCalls helped calls, up to 4,096 calls when the other core stays busy.
// `WN_ORT_OPS_THREADS=1` disables the helper.
struct SkipJob {
  int64_t B, G, S;
  const float* H;  // (B, L·G), row stride ldh
  long ldh;
  const float* w_skip;  // (L, ⌈S/16⌉, G, 16): per layer a packed G × S matrix
  float* slots;         // (L, B, S)
};

void skip_layer(const SkipJob& j, int64_t l) {
  float* slot = j.slots + l * j.B * j.S;
  std::memset(slot, 0, j.B * j.S * sizeof(float));
  const Packed w{j.w_skip + l * Packed::size(j.G, j.S), j.G};
  gemm_acc(j.B, j.G, 0, j.S, j.H + l * j.G, j.ldh, w, slot, j.S);
}

struct Job {
  void (*fn)(const void* ctx, int64_t task);
  const void* ctx;
  int64_t tasks;
};

class Helper {
 public:
  static constexpr int64_t kSpinNs = 2'000'000;  // the helper spins this long for the next job, then sleeps
  static constexpr int64_t kStallNs = 200'000;
  static constexpr int64_t kYieldNs = 20'000;  // the caller spins this long for the helper, then yields
  static constexpr int kSoloMin = 32, kSoloMax = 4096, kCalmCalls = 1000;
  static constexpr int64_t kMaxBatch = 16;  // above, the two threads' GEMMs compete more than they overlap

  static Helper& get() {
    static Helper helper;
    return helper;
  }

  // Runs the caller's part `own(ready)` (which calls ready(n) once tasks 0 … n−1 may start; it may be a
  // no-op after ready(T)) and the job's tasks, with the helper if it is free; `help` false: alone.
  template <typename Own>
  void run(const Job& job, bool help, Own&& own) {
    const int64_t L = job.tasks;
    if (!help || !enabled_.load(std::memory_order_relaxed) || solo_.load(std::memory_order_relaxed) > 0 ||
        busy_.test_and_set(std::memory_order_acquire)) {
      if (help && solo_.load(std::memory_order_relaxed) > 0) solo_.fetch_sub(1, std::memory_order_relaxed);
      own([](int64_t) {});
      for (int64_t l = 0; l < L; ++l) job.fn(job.ctx, l);
      return;
    }
    start();
    job_ = job;
    layers_ = L;
    ready_.store(0, std::memory_order_relaxed);
    finished_.store(0, std::memory_order_relaxed);
    const uint64_t gen = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store(gen << 32);  // publish: generation gen, next layer 0 (seq_cst: pairs with the sleep check)
    if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_one();
    }
    own([this](int64_t n) { ready_.store(n, std::memory_order_release); });
    int64_t l;
    while ((l = claim(gen)) >= 0) {  // what the helper has not taken
      job_.fn(job_.ctx, l);
      finished_.fetch_add(1, std::memory_order_acq_rel);
    }
    const auto t0 = std::chrono::steady_clock::now();
    bool stalled = false;
    for (unsigned spins = 0; finished_.load(std::memory_order_acquire) < L; ++spins) {
      if ((spins & 255) != 0) {
        pause();
        continue;
      }
      const int64_t waited = std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::steady_clock::now() - t0).count();
      if (waited > kYieldNs) std::this_thread::yield();
      stalled = stalled || waited > kStallNs;
    }
    if (stalled) {  // the helper was descheduled: work alone a while, longer if it keeps happening
      solo_.store(backoff_, std::memory_order_relaxed);
      backoff_ = std::min(2 * backoff_, kSoloMax);
      calm_ = 0;
    } else if (++calm_ >= kCalmCalls) {
      backoff_ = kSoloMin;
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

  void start() {
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  }

  // Claims the next layer of job `gen` → its index, or −1 when all are taken (or the job is over).
  int64_t claim(uint64_t gen) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while ((s >> 32) == gen && static_cast<int64_t>(s & 0xffffffffu) < layers_) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return static_cast<int64_t>(s & 0xffffffffu);
    }
    return -1;
  }

  void loop() {
    uint64_t seen = 0;
    auto idle_since = std::chrono::steady_clock::now();
    for (unsigned spins = 0;; ++spins) {
      if (stop_.load(std::memory_order_acquire)) return;
      const uint64_t s = state_.load(std::memory_order_acquire);
      const uint64_t gen = s >> 32;
      if (gen != seen) {  // a new job: take layers as their h becomes ready
        seen = gen;
        int64_t l;
        while ((l = claim(gen)) >= 0) {
          while (ready_.load(std::memory_order_acquire) <= l) pause();
          job_.fn(job_.ctx, l);
          finished_.fetch_add(1, std::memory_order_acq_rel);
          helped_.fetch_add(1, std::memory_order_relaxed);
        }
        idle_since = std::chrono::steady_clock::now();
        continue;
      }
      pause();
      if ((spins & 1023) == 0 && std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now() - idle_since).count() > kSpinNs) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.store(true);  // seq_cst with the state load below: a job published meanwhile is seen
        cv_.wait(lock, [&] { return stop_.load() || (state_.load() >> 32) != seen; });
        sleeping_.store(false);
        idle_since = std::chrono::steady_clock::now();
      }
    }
  }

  friend void set_helper(bool);
  friend int64_t helped();
  std::atomic<int64_t> helped_{0};  // tasks the helper computed (for tests)
  std::atomic<bool> enabled_{true};
  std::atomic<int> solo_{0};  // calls left to work alone
  int backoff_ = kSoloMin, calm_ = 0;  // the next solo stretch; helped calls since the last stall (under busy_)
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::atomic<uint64_t> state_{0};  // (generation << 32) | next task to claim
  std::atomic<int64_t> ready_{0};    // tasks that may start
  std::atomic<int64_t> finished_{0}; // tasks done
  std::atomic<bool> stop_{false}, sleeping_{false};
  Job job_{};
  int64_t layers_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

void set_helper(bool on) { Helper::get().enabled_.store(on); }
int64_t helped() { return Helper::get().helped_.load(); }

// One call of the op on validated shapes (the ORT glue is LayersKernel below).
struct Layers {
  int64_t B, R, G, L, P, S;
  bool shared_gate_in;  // gate_in is (L·2G), not (B, L·2G)
  const float *x0, *taps, *gate_in, *w_gate, *w_out, *w_skip, *b_skip, *alpha, *beta;
  float *skip, *X;  // outputs (B, S), (B, L·R)
};

void run_layers(const Layers& p) {
  const int64_t B = p.B, R = p.R, G = p.G, G2 = 2 * G, L = p.L, P = p.P, S = p.S;
  const float *x0 = p.x0, *taps = p.taps, *gate_in = p.gate_in, *w_gate = p.w_gate, *w_out = p.w_out;
  const float *alpha = p.alpha, *beta = p.beta;
  float *skip = p.skip, *X = p.X;
  if (B == 0) return;
  thread_local std::vector<float> scratch;
  const int64_t KI = P + R;  // one GEMM over [past taps | x_l] · W_gate,l
  scratch.resize(static_cast<size_t>(B * (G2 + R + KI + L * G) + L * B * S));
  float* acc = scratch.data();   // (B, 2G)
  float* res = acc + B * G2;     // (B, R)
  float* in = res + B * R;       // (B, P + R)
  float* H = in + B * KI;        // (B, L·G): every layer's h
  float* slots = H + B * L * G;  // (L, B, S): every layer's skip projection
  const long ldh = L * G, ldx = L * R, ldt = L * P, ldc = p.shared_gate_in ? 0 : L * G2;

  auto chain = [&](auto&& ready) {
    for (int64_t b = 0; b < B; ++b) std::memcpy(X + b * ldx, x0 + b * R, R * sizeof(float));
    for (int64_t l = 0; l < L; ++l) {
      const float* x = X + l * R;  // x_l rows, stride ldx
      for (int64_t b = 0; b < B; ++b) {
        std::memcpy(acc + b * G2, gate_in + b * ldc + l * G2, G2 * sizeof(float));
        std::memcpy(in + b * KI, taps + b * ldt + l * P, P * sizeof(float));
        std::memcpy(in + b * KI + P, x + b * ldx, R * sizeof(float));
      }
      gemm_acc(B, KI, 0, G2, in, KI, Packed{w_gate + l * Packed::size(KI, G2), KI}, acc, G2);
      float* h = H + l * G;
      for (int64_t b = 0; b < B; ++b) gate(G, acc + b * G2, acc + b * G2 + G, h + b * ldh);
      ready(l + 1);
      if (l + 1 == L) break;
      std::memset(res, 0, B * R * sizeof(float));
      gemm_acc(B, G, 0, R, h, ldh, Packed{w_out + l * Packed::size(G, R), G}, res, R);
      const float a = alpha[l], be = beta[l];
      float* xn = X + (l + 1) * R;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < R; ++j) xn[b * ldx + j] = a * res[b * R + j] + be * x[b * ldx + j];
    }
  };
  const SkipJob skips{B, G, S, H, ldh, p.w_skip, slots};
  Helper::get().run(Job{[](const void* j, int64_t l) { skip_layer(*static_cast<const SkipJob*>(j), l); }, &skips, L},
                    B <= Helper::kMaxBatch, chain);
  for (int64_t b = 0; b < B; ++b) {  // skip = b_skip + Σ_l slot_l, in layer order
    float* out = skip + b * S;
    std::memcpy(out, p.b_skip, S * sizeof(float));
    for (int64_t l = 0; l < L; ++l) {
      const float* slot = slots + (l * B + b) * S;
      for (int64_t j = 0; j < S; ++j) out[j] += slot[j];
    }
  }
}

std::string dims(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + ")";
}

OrtStatus* read_floats(const OrtKernelInfo* info, const char* name, std::vector<float>* out) {
  size_t n = 0;
  OrtStatus* st = g_api->KernelInfoGetAttributeArray_float(info, name, nullptr, &n);
  if (st != nullptr) {  // absent (a one-layer chain has no residual 1×1): empty
    g_api->ReleaseStatus(st);
    out->clear();
    return nullptr;
  }
  out->assign(n, 0.f);
  if (n) WN_TRY(g_api->KernelInfoGetAttributeArray_float(info, name, out->data(), &n));
  return nullptr;
}

struct LayersKernel {
  static constexpr const char* kName = "WaveNetLayers";
  static constexpr size_t kInputs = 7, kOutputs = 2;
  std::vector<float> alpha, beta;

  static OrtStatus* create(const OrtKernelInfo* info, LayersKernel** k) {
    WN_TRY(read_floats(info, "alpha", &(*k)->alpha));
    return read_floats(info, "beta", &(*k)->beta);
  }

  OrtStatus* compute(OrtKernelContext* ctx) const {
    const float *x0, *taps, *gate_in, *w_gate, *w_out, *w_skip, *b_skip;
    std::vector<int64_t> dx, dt, dc, dg, dw, ds, db;
    WN_TRY(input(ctx, 0, &x0, &dx));
    WN_TRY(input(ctx, 1, &taps, &dt));
    WN_TRY(input(ctx, 2, &gate_in, &dc));
    WN_TRY(input(ctx, 3, &w_gate, &dg));
    WN_TRY(input(ctx, 4, &w_out, &dw));
    WN_TRY(input(ctx, 5, &w_skip, &ds));
    WN_TRY(input(ctx, 6, &b_skip, &db));
    if (dx.size() != 2 || dt.size() != 3 || (dc.size() != 1 && dc.size() != 2) || dg.size() != 4 || dw.size() != 4 ||
        ds.size() != 4 || db.size() != 1)
      return error("WaveNetLayers: expected x0 (B,R), taps (B,L,P), gate_in (B,L·2G) or (L·2G), w_gate (L,⌈2G/16⌉,P+R,16), "
                   "w_out (L−1,⌈R/16⌉,G,16), w_skip (L,⌈S/16⌉,G,16), b_skip (S)");
    const int64_t B = dx[0], R = dx[1], L = dg[0], P = dt[2], S = db[0];
    const int64_t rows = dc.size() == 2 ? dc[0] : 1, width = dc.back();  // gate_in: per stream or shared
    const int64_t G2 = L > 0 ? width / L : 0, G = G2 / 2;
    auto panels = [](int64_t n) { return (n + kPanel - 1) / kPanel; };
    if (L < 1 || G2 != 2 * G || G < 1 || width != L * G2 || dg[1] != panels(G2) || dg[2] != P + R || dg[3] != kPanel ||
        dt[0] != B || dt[1] != L || (rows != B && rows != 1) || dw[0] != L - 1 ||
        (L > 1 && (dw[1] != panels(R) || dw[2] != G || dw[3] != kPanel)) || ds[0] != L || ds[1] != panels(S) ||
        ds[2] != G || ds[3] != kPanel || static_cast<int64_t>(alpha.size()) != L - 1 ||
        static_cast<int64_t>(beta.size()) != L - 1)
      return error("WaveNetLayers: inconsistent shapes: x0 " + dims(dx) + ", taps " + dims(dt) + ", gate_in " + dims(dc) +
                   ", w_gate " + dims(dg) + ", w_out " + dims(dw) + ", w_skip " + dims(ds) + ", b_skip " + dims(db) +
                   ", alpha/beta " + std::to_string(alpha.size()) + "/" + std::to_string(beta.size()));
    const int64_t dsk[2] = {B, S}, dxo[2] = {B, L * R};
    OrtValue *vs = nullptr, *vx = nullptr;
    WN_TRY(g_api->KernelContext_GetOutput(ctx, 0, dsk, 2, &vs));
    WN_TRY(g_api->KernelContext_GetOutput(ctx, 1, dxo, 2, &vx));
    void *ps = nullptr, *px = nullptr;
    WN_TRY(g_api->GetTensorMutableData(vs, &ps));
    WN_TRY(g_api->GetTensorMutableData(vx, &px));
    float* skip = static_cast<float*>(ps);  // (B, S)
    float* X = static_cast<float*>(px);     // (B, L·R)
    run_layers(Layers{B, R, G, L, P, S, rows == 1, x0, taps, gate_in, w_gate, w_out, w_skip, b_skip, alpha.data(),
                      beta.data(), skip, X});
    return nullptr;
  }
};


// ---- wn_export.WaveNetHead ----------------------------------------------------------------------------
// out = relu(relu(skip) · W1 + b1) · W2 + b2: the output head's two 1×1 convolutions. Each 1×1 is one job
// of two tasks, its two column halves (whole panels), so up to batch 16 both threads stream half the
// weights; every column is computed by the same code on either thread (bit-identical to one thread).
struct HeadLayer {
  int64_t B, K, N;
  const float* A;  // (B, K)
  Packed W;        // K × N
  const float* bias;  // (N)
  bool relu;
  float* C;  // (B, N)
  static constexpr int64_t kParts = 2;
};

void head_part(const void* ctx, int64_t part) {
  const HeadLayer& t = *static_cast<const HeadLayer*>(ctx);
  const int64_t panels = (t.N + kPanel - 1) / kPanel;
  const int64_t n0 = std::min(t.N, panels * part / HeadLayer::kParts * kPanel);
  const int64_t n1 = std::min(t.N, panels * (part + 1) / HeadLayer::kParts * kPanel);
  if (n0 >= n1) return;
  for (int64_t b = 0; b < t.B; ++b) std::memcpy(t.C + b * t.N + n0, t.bias + n0, (n1 - n0) * sizeof(float));
  gemm_acc(t.B, t.K, n0, n1, t.A, t.K, t.W, t.C, t.N);
  if (t.relu)
    for (int64_t b = 0; b < t.B; ++b)
      for (int64_t j = n0; j < n1; ++j) t.C[b * t.N + j] = std::max(t.C[b * t.N + j], 0.f);
}

struct HeadKernel {
  static constexpr const char* kName = "WaveNetHead";
  static constexpr size_t kInputs = 5, kOutputs = 1;
  static OrtStatus* create(const OrtKernelInfo*, HeadKernel**) { return nullptr; }

  OrtStatus* compute(OrtKernelContext* ctx) const {
    const float *skip, *w1, *b1, *w2, *b2;
    std::vector<int64_t> ds, d1, db1, d2, db2;
    WN_TRY(input(ctx, 0, &skip, &ds));
    WN_TRY(input(ctx, 1, &w1, &d1));
    WN_TRY(input(ctx, 2, &b1, &db1));
    WN_TRY(input(ctx, 3, &w2, &d2));
    WN_TRY(input(ctx, 4, &b2, &db2));
    auto panels = [](int64_t n) { return (n + kPanel - 1) / kPanel; };
    if (ds.size() != 2 || d1.size() != 3 || db1.size() != 1 || d2.size() != 3 || db2.size() != 1 ||
        d1[0] != panels(db1[0]) || d1[1] != ds[1] || d1[2] != kPanel || d2[0] != panels(db2[0]) ||
        d2[1] != db1[0] || d2[2] != kPanel)
      return error("WaveNetHead: inconsistent shapes: expected skip (B,S), w1 (⌈H/16⌉,S,16), b1 (H), "
                   "w2 (⌈Q/16⌉,H,16), b2 (Q), got " + dims(ds) + ", " + dims(d1) + ", " + dims(db1) + ", " +
                   dims(d2) + ", " + dims(db2));
    const int64_t B = ds[0], S = ds[1], H = db1[0], Q = db2[0];
    const int64_t dout[2] = {B, Q};
    OrtValue* vo = nullptr;
    WN_TRY(g_api->KernelContext_GetOutput(ctx, 0, dout, 2, &vo));
    void* po = nullptr;
    WN_TRY(g_api->GetTensorMutableData(vo, &po));
    if (B == 0) return nullptr;
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(B * (S + H)));
    float *t = scratch.data(), *h = t + B * S;
    for (int64_t i = 0; i < B * S; ++i) t[i] = std::max(skip[i], 0.f);
    const bool help = B <= Helper::kMaxBatch;
    const HeadLayer first{B, S, H, t, Packed{w1, S}, b1, true, h};
    const HeadLayer second{B, H, Q, h, Packed{w2, H}, b2, false, static_cast<float*>(po)};
    for (const HeadLayer* layer : {&first, &second})
      Helper::get().run(Job{head_part, layer, HeadLayer::kParts}, help, [](auto&& ready) { ready(HeadLayer::kParts); });
    return nullptr;
  }
};

// The OrtCustomOp of a kernel type: float tensors in and out, created by Kernel::create.
template <typename Kernel>
struct Op : OrtCustomOp {
  Op() {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp*) { return Kernel::kName; };
    GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
    GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return Kernel::kInputs; };
    GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return Kernel::kOutputs; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) -> OrtStatusPtr {
      auto* k = new Kernel();
      OrtStatus* st = Kernel::create(info, &k);
      if (st != nullptr) {
        delete k;
        return st;
      }
      *kernel = k;
      return nullptr;
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
      return static_cast<const Kernel*>(kernel)->compute(ctx);
    };
    KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
  }
};

const Op<LayersKernel> g_layers_op;
const Op<HeadKernel> g_head_op;

}  // namespace

extern "C" {

// Entry point of SessionOptions.register_custom_ops_library: adds the "wn_export" domain.
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* api_base) {
  for (uint32_t v = ORT_API_VERSION; v >= 16 && g_api == nullptr; --v) g_api = api_base->GetApi(v);
  if (g_api == nullptr) return nullptr;  // cannot even report: ORT older than 1.16
  OrtCustomOpDomain* domain = nullptr;
  WN_TRY(g_api->CreateCustomOpDomain("wn_export", &domain));
  WN_TRY(g_api->CustomOpDomain_Add(domain, &g_layers_op));
  WN_TRY(g_api->CustomOpDomain_Add(domain, &g_head_op));
  return g_api->AddCustomOpDomain(options, domain);  // the session options keep the domain alive
}

// Enables (1) or disables (0) the helper thread for the following calls (WN_ORT_OPS_THREADS=1 sets
// the initial state to disabled).
__attribute__((visibility("default"))) void wn_ort_ops_set_helper(int enabled) { set_helper(enabled != 0); }

// How many tasks (skip projections, head column halves) the helper thread has computed in this process.
__attribute__((visibility("default"))) int64_t wn_ort_ops_helped_tasks() { return helped(); }
}
