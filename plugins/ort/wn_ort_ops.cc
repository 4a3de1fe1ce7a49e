// wn_ort_ops: ONNX Runtime custom operators of wn-export (CPU).
//
// wn_export.WaveNetLayers — the residual-layer chain of a lowered FP32 step graph as one kernel.
//
// The lowered step graph (wn_export/step_lowering.py) spends four ONNX nodes per layer (two fused Gemms,
// Mul, Gemm), a batched MatMul of the past taps and a packed skip Gemm; at batch 1 ONNX Runtime's
// per-node dispatch costs more than their arithmetic. This op computes all of it in one call
// (wn_export/ort_fusion.py rewrites the graph to use it). Contract, threading and tests:
// plugins/ort/README.md. In short, per layer l:
//   [a_l | b_l] = gate_in_l + [taps_l | x_l] · W_gate,l ;  h_l = tanh(a_l) ⊙ σ(b_l)
//   x_{l+1} = alpha_l · (h_l · W_out,l) + beta_l · x_l ;   skip = b_skip + Σ_l h_l · W_skip,l
// outputs (skip, [x_0 | … | x_{L−1}]).
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

// C[MR × 8·NV] += A[MR × K] · W[K × 8·NV]   (row strides lda, ldw, ldc). MR·NV accumulators stay in
// registers; with several rows each W row segment is loaded once per k (the empty asm keeps the
// compiler from re-reading it as a memory operand of every row's FMA).
template <int MR, int NV>
inline void kernel(int K, const float* A, long lda, const float* W, long ldw, float* C, long ldc) {
  v8 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = load8(C + r * ldc + 8 * v);
  for (int k = 0; k < K; ++k) {
    v8 w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = load8(W + k * ldw + 8 * v);
      if (MR > 1) asm("" : "+x"(w[v]));  // one row uses each w once: a memory operand is better
    }
    for (int r = 0; r < MR; ++r) {
      const v8 a = splat8(A[r * lda + k]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store8(C + r * ldc + 8 * v, c[r][v]);
}

// Columns [n, N) of MR rows: blocks of 8·NV, then of 8, then a scalar tail.
template <int MR, int NV>
void columns(int K, int n, int N, const float* A, long lda, const float* W, long ldw, float* C, long ldc) {
  for (; n + 8 * NV <= N; n += 8 * NV) kernel<MR, NV>(K, A, lda, W + n, ldw, C + n, ldc);
  for (; n + 8 <= N; n += 8) kernel<MR, 1>(K, A, lda, W + n, ldw, C + n, ldc);
  for (; n < N; ++n)
    for (int r = 0; r < MR; ++r) {
      float s = C[r * ldc + n];
      for (int k = 0; k < K; ++k) s += A[r * lda + k] * W[k * ldw + n];
      C[r * ldc + n] = s;
    }
}

// A block of MR < 6 rows over all columns, as wide as 12 accumulators allow (a single row needs 8
// independent accumulators to hide the FMA latency).
void few_rows(int MR, int K, int n, int N, const float* A, long lda, const float* W, long ldw, float* C, long ldc) {
  switch (MR) {
    case 1: columns<1, 8>(K, n, N, A, lda, W, ldw, C, ldc); break;
    case 2: columns<2, 4>(K, n, N, A, lda, W, ldw, C, ldc); break;
    case 3: columns<3, 4>(K, n, N, A, lda, W, ldw, C, ldc); break;
    case 4: columns<4, 3>(K, n, N, A, lda, W, ldw, C, ldc); break;
    case 5: columns<5, 2>(K, n, N, A, lda, W, ldw, C, ldc); break;
    default: break;
  }
}

// C[M × N] += A[M × K] · W[K × N]. From 6 rows on: 6 × 16 blocks, column panels outermost so a
// K × 16 panel of W stays in L1 while every row block uses it.
void gemm_acc(int M, int K, int N, const float* A, long lda, const float* W, long ldw, float* C, long ldc) {
  if (M < 6) return few_rows(M, K, 0, N, A, lda, W, ldw, C, ldc);
  const int n16 = N / 16 * 16, m6 = M / 6 * 6;
  for (int n = 0; n < n16; n += 16) {
    for (int m = 0; m < m6; m += 6) kernel<6, 2>(K, A + m * lda, lda, W + n, ldw, C + m * ldc + n, ldc);
    if (m6 < M) few_rows(M - m6, K, n, n + 16, A + m6 * lda, lda, W, ldw, C + m6 * ldc, ldc);
  }
  if (n16 < N)
    for (int m = 0; m < M; m += 5) few_rows(std::min(5, M - m), K, n16, N, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
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

OrtStatus* error(const std::string& msg) {
  return g_api->CreateStatus(ORT_INVALID_ARGUMENT, ("WaveNetLayers: " + msg).c_str());
}

#define WN_TRY(expr)                   \
  do {                                 \
    OrtStatus* st_ = (expr);           \
    if (st_ != nullptr) return st_;    \
  } while (0)

OrtStatus* input(OrtKernelContext* ctx, size_t i, const float** data, std::vector<int64_t>* dims) {
  const OrtValue* v = nullptr;
  WN_TRY(g_api->KernelContext_GetInput(ctx, i, &v));
  if (v == nullptr) return error("input " + std::to_string(i) + " is missing");
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

// ---- the skip helper ------------------------------------------------------------------------------
// One process-wide helper thread computes the per-layer skip projections h_l · W_skip,l while the calling
// thread runs the (sequential) layer chain: the two stream different weights, so on two cores the skip
// GEMMs cost almost nothing. Layers are claimed in order through one atomic (job generation, next layer):
// by the helper as each h_l becomes ready, by the caller for whatever is left once its chain is done. Each
// projection goes to its own slot and the caller sums the slots in layer order, so the result does not
// depend on which thread computed which layer (bit-identical to one thread). A helper that is descheduled
// while it holds a layer makes the caller wait for that layer; after such a wait (> kStallNs) the caller
// works alone for the next kSoloCalls calls. `WN_ORT_OPS_THREADS=1` disables the helper.
struct SkipJob {
  int64_t B, G, S;
  const float* H;  // (B, L·G), row stride ldh
  long ldh;
  const float* w_skip;  // (L, G, S)
  float* slots;         // (L, B, S)
};

void skip_layer(const SkipJob& j, int64_t l) {
  float* slot = j.slots + l * j.B * j.S;
  std::memset(slot, 0, j.B * j.S * sizeof(float));
  const float* w = j.w_skip + l * j.G * j.S;
  gemm_acc(j.B, j.G, j.S, j.H + l * j.G, j.ldh, w, j.S, slot, j.S);
}

class SkipHelper {
 public:
  static constexpr int64_t kSpinNs = 2'000'000;  // the helper spins this long for the next job, then sleeps
  static constexpr int64_t kStallNs = 200'000;
  static constexpr int kSoloCalls = 2000;
  static constexpr int64_t kMaxBatch = 16;  // above, the two threads' GEMMs compete more than they overlap

  static SkipHelper& get() {
    static SkipHelper helper;
    return helper;
  }

  // Runs the chain `chain(ready)` (which calls ready(l + 1) once h_l is written) and the skip projections of
  // L layers, with the helper if it is free.
  template <typename Chain>
  void run(const SkipJob& job, int64_t L, Chain&& chain) {
    if (job.B > kMaxBatch || !enabled_.load(std::memory_order_relaxed) || solo_.load(std::memory_order_relaxed) > 0 ||
        busy_.test_and_set(std::memory_order_acquire)) {
      if (solo_.load(std::memory_order_relaxed) > 0) solo_.fetch_sub(1, std::memory_order_relaxed);
      chain([](int64_t) {});
      for (int64_t l = 0; l < L; ++l) skip_layer(job, l);
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
    chain([this](int64_t n) { ready_.store(n, std::memory_order_release); });
    int64_t l;
    while ((l = claim(gen)) >= 0) {  // what the helper has not taken
      skip_layer(job_, l);
      finished_.fetch_add(1, std::memory_order_acq_rel);
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned spins = 0; finished_.load(std::memory_order_acquire) < L; ++spins) {
      pause();
      if ((spins & 1023) == 0 && std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now() - t0).count() > kStallNs)
        solo_.store(kSoloCalls, std::memory_order_relaxed);  // the helper was descheduled: work alone a while
    }
    busy_.clear(std::memory_order_release);
  }

  ~SkipHelper() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
      cv_.notify_one();
    }
    thread_.join();
  }

 private:
  SkipHelper() {
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
          skip_layer(job_, l);
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
  std::atomic<int64_t> helped_{0};  // layers the helper computed (for tests)
  std::atomic<bool> enabled_{true};
  std::atomic<int> solo_{0};
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::atomic<uint64_t> state_{0};  // (generation << 32) | next layer to claim
  std::atomic<int64_t> ready_{0};    // layers whose h is written
  std::atomic<int64_t> finished_{0}; // layers whose skip projection is written
  std::atomic<bool> stop_{false}, sleeping_{false};
  SkipJob job_{};
  int64_t layers_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

void set_helper(bool on) { SkipHelper::get().enabled_.store(on); }
int64_t helped() { return SkipHelper::get().helped_.load(); }

struct LayersKernel {
  std::vector<float> alpha, beta;

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
    if (dx.size() != 2 || dt.size() != 3 || (dc.size() != 1 && dc.size() != 2) || dg.size() != 3 || dw.size() != 3 ||
        ds.size() != 3 || db.size() != 1)
      return error("expected x0 (B,R), taps (B,L,P), gate_in (B,L·2G) or (L·2G), w_gate (L,P+R,2G), "
                   "w_out (L−1,G,R), w_skip (L,G,S), b_skip (S)");
    const int64_t B = dx[0], R = dx[1], L = dg[0], G2 = dg[2], G = G2 / 2, P = dt[2], S = ds[2];
    const int64_t rows = dc.size() == 2 ? dc[0] : 1, width = dc.back();  // gate_in: per stream or shared
    auto dims = [](const std::vector<int64_t>& d) {
      std::string s = "(";
      for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
      return s + ")";
    };
    if (dg[1] != P + R || G2 != 2 * G || L < 1 || dt[0] != B || dt[1] != L || (rows != B && rows != 1) ||
        width != L * G2 || dw[0] != L - 1 || (L > 1 && (dw[1] != G || dw[2] != R)) || ds[0] != L || ds[1] != G ||
        db[0] != S || static_cast<int64_t>(alpha.size()) != L - 1 || static_cast<int64_t>(beta.size()) != L - 1)
      return error("inconsistent shapes: x0 " + dims(dx) + ", taps " + dims(dt) + ", gate_in " + dims(dc) +
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
    if (B == 0) return nullptr;

    thread_local std::vector<float> scratch;
    const int64_t KI = P + R;  // one GEMM over [past taps | x_l] · W_gate,l
    scratch.resize(static_cast<size_t>(B * (G2 + R + KI + L * G) + L * B * S));
    float* acc = scratch.data();   // (B, 2G)
    float* res = acc + B * G2;     // (B, R)
    float* in = res + B * R;       // (B, P + R)
    float* H = in + B * KI;        // (B, L·G): every layer's h
    float* slots = H + B * L * G;  // (L, B, S): every layer's skip projection
    const long ldh = L * G, ldx = L * R, ldt = L * P, ldc = rows == 1 ? 0 : L * G2;

    auto chain = [&](auto&& ready) {
      for (int64_t b = 0; b < B; ++b) std::memcpy(X + b * ldx, x0 + b * R, R * sizeof(float));
      for (int64_t l = 0; l < L; ++l) {
        const float* x = X + l * R;  // x_l rows, stride ldx
        for (int64_t b = 0; b < B; ++b) {
          std::memcpy(acc + b * G2, gate_in + b * ldc + l * G2, G2 * sizeof(float));
          std::memcpy(in + b * KI, taps + b * ldt + l * P, P * sizeof(float));
          std::memcpy(in + b * KI + P, x + b * ldx, R * sizeof(float));
        }
        gemm_acc(B, KI, G2, in, KI, w_gate + l * KI * G2, G2, acc, G2);
        float* h = H + l * G;
        for (int64_t b = 0; b < B; ++b) gate(G, acc + b * G2, acc + b * G2 + G, h + b * ldh);
        ready(l + 1);
        if (l + 1 == L) break;
        std::memset(res, 0, B * R * sizeof(float));
        gemm_acc(B, G, R, h, ldh, w_out + l * G * R, R, res, R);
        const float a = alpha[l], be = beta[l];
        float* xn = X + (l + 1) * R;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < R; ++j) xn[b * ldx + j] = a * res[b * R + j] + be * x[b * ldx + j];
      }
    };
    SkipHelper::get().run(SkipJob{B, G, S, H, ldh, w_skip, slots}, L, chain);
    for (int64_t b = 0; b < B; ++b) {  // skip = b_skip + Σ_l slot_l, in layer order
      float* out = skip + b * S;
      std::memcpy(out, b_skip, S * sizeof(float));
      for (int64_t l = 0; l < L; ++l) {
        const float* slot = slots + (l * B + b) * S;
        for (int64_t j = 0; j < S; ++j) out[j] += slot[j];
      }
    }
    return nullptr;
  }
};

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

struct LayersOp : OrtCustomOp {
  LayersOp() {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp*) { return "WaveNetLayers"; };
    GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
    GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 7; };
    GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 2; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) -> OrtStatusPtr {
      auto* k = new LayersKernel();
      OrtStatus* st = read_floats(info, "alpha", &k->alpha);
      if (st == nullptr) st = read_floats(info, "beta", &k->beta);
      if (st != nullptr) {
        delete k;
        return st;
      }
      *kernel = k;
      return nullptr;
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
      return static_cast<const LayersKernel*>(kernel)->compute(ctx);
    };
    KernelDestroy = [](void* kernel) { delete static_cast<LayersKernel*>(kernel); };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
  }
};

const LayersOp g_layers_op;

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
  return g_api->AddCustomOpDomain(options, domain);  // the session options keep the domain alive
}

// Enables (1) or disables (0) the skip helper thread for the following calls (WN_ORT_OPS_THREADS=1 sets
// the initial state to disabled).
__attribute__((visibility("default"))) void wn_ort_ops_set_helper(int enabled) { set_helper(enabled != 0); }

// How many layers' skip projections the helper thread has computed in this process.
__attribute__((visibility("default"))) int64_t wn_ort_ops_helped_layers() { return helped(); }
}
