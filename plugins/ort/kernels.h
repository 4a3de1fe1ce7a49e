// The compute kernels of libwn_ort_ops, shared by the ONNX Runtime custom ops (wn_ort_ops.cc), the native
// generation loop (loop.cc) and the weight-streaming micro-benchmark (floor.cc). Contract and threading:
// plugins/ort/README.md.
#pragma once

#include <cstdint>

namespace wn {

// Packed weights: a K × N matrix stored as ⌈N/16⌉ panels of K × 16 values, panel after panel (the last one
// zero-padded). Column c of row k is at panel c/16, offset 16·k + c%16, so a GEMM streams each panel front
// to back. Values are float32, or IEEE fp16 bits ("16-bit weights": converted to float32 as they are
// loaded, every product and sum in float32).
constexpr int64_t kPanel = 16;

// Where weights and scratch start: a multiple of every cache line (64 bytes on x86-64, 128 on some ARM cores). A
// vector load that straddles two lines costs ~10% of the weight-streaming rate (measured on AVX-512: 76 vs 83 GB/s).
constexpr int64_t kAlign = 128;
template <typename T>
T* align_up(T* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<T*>((a + kAlign - 1) / kAlign * kAlign);
}

struct Packed {
  const void* p = nullptr;
  int64_t K = 0;          // rows
  bool half = false;      // fp16 values
  int64_t stride = 0;     // elements between panels (K·16, or more for a row range of a taller matrix)

  Packed() = default;
  Packed(const void* data, int64_t rows, bool fp16) : p(data), K(rows), half(fp16), stride(rows * kPanel) {}
  static int64_t size(int64_t K, int64_t N) { return (N + kPanel - 1) / kPanel * K * kPanel; }  // elements
  // The i-th matrix of a stack of K × N matrices.
  Packed matrix(int64_t i, int64_t N) const {
    Packed m = *this;
    m.p = static_cast<const char*>(p) + i * size(K, N) * (half ? 2 : 4);
    return m;
  }
  // Rows [k0, k0 + n) as a matrix of their own (the same panels).
  Packed rows(int64_t k0, int64_t n) const {
    Packed m = *this;
    m.p = static_cast<const char*>(p) + k0 * kPanel * (half ? 2 : 4);
    m.K = n;
    return m;
  }
};

// C[M × columns n0 … N) += A[M × K] · W (n0 a multiple of 16). Each element of C is one float32 FMA chain
// over k in order, whatever M and the blocking: a row's result does not depend on the batch it is in.
void gemm_acc(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, const Packed& W, float* C, int64_t ldc);
// C = C0 + A · W over the same columns (C0 rows with stride ld0; 0: one row for all).
void gemm_from(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, const Packed& W, const float* C0,
               int64_t ld0, float* C, int64_t ldc);
// The same over [A | A2]: A holds W's first K1 rows' columns (row stride lda), A2 the other W.K − K1 (row stride
// lda2); each element is still one FMA chain over k in order, so it equals gemm_from on the two copied together.
void gemm_from2(int64_t M, int64_t n0, int64_t N, const float* A, int64_t lda, int64_t K1, const float* A2,
                int64_t lda2, const Packed& W, const float* C0, int64_t ld0, float* C, int64_t ldc);

// h[j] = tanh(a[j]) · σ(b[j]) (rational tanh, σ(b) = ½ + ½·tanh(b/2)).
void gate(int64_t n, const float* a, const float* b, float* h);

float half_to_float(uint16_t h);

// ---- the two threads --------------------------------------------------------------------------------
// How a call shares its work with the helper thread:
// kAlone: the calling thread does everything.
// kPipeline: the caller runs the sequential layer chain, the helper the skip projections (in layer order);
//            the head's columns are split in two.
// kRows: the batch is split in two halves of streams, each computed start to end by one thread.
enum Split : int { kAlone = 0, kPipeline = 1, kRows = 2 };

struct Job {
  void (*fn)(const void* ctx, int64_t task);
  const void* ctx;
  int64_t tasks;
  // Task t starts only once after(ctx, t) tasks have finished (null: no such wait). Tasks start in order, so
  // after(t) = t makes them accumulate into one output in task order.
  int64_t (*after)(const void* ctx, int64_t task) = nullptr;
};

inline int64_t in_order(const void*, int64_t task) { return task; }

// One job shared with the process-wide helper thread: construct, call ready(n) as tasks < n may start (with
// no helper they run there, on the caller), then finish() (runs what is left, waits for the helper).
class Team {
 public:
  // force: use the helper even while the caller is backing off after a stall (the bench's floor)
  Team(const Job& job, bool help, bool force = false);
  void ready(int64_t n);
  void await(int64_t n);  // until tasks 0 … n−1 have finished, running those not yet claimed (they must be ready)
  void finish();
  ~Team() { finish(); }

 private:
  Job job_;
  bool helped_ = false, done_ = false;
  int64_t ran_ = 0;   // tasks run by the caller without a helper
  int64_t seen_ = 0;  // with the helper: tasks 0 … seen_−1 are known to have finished (as the caller last looked)
};

void set_helper(bool on);
bool helper_enabled();
int64_t helped_tasks();

// ---- the layer chain and the head (rows r0 … r1 of a batch) ---------------------------------------------
struct LayersArgs {
  int64_t B, R, G, L, P, S;
  const float* x0;       // (B, R)
  const float* taps;     // (B, L, P)
  const float* gate_in;  // (B, L·2G), row stride gate_ld (0: one row shared by every stream)
  int64_t gate_ld;
  Packed w_gate;  // L × ((P + R) × 2G): past-tap rows, then the current input's
  Packed w_out;   // (L − 1) × (G × R)
  Packed w_skip;  // L × (G × S)
  const float *b_skip, *alpha, *beta;
  float skip_scale;  // skip = skip_scale · (b_skip + Σ_l h_l·W_skip,l)
  float* skip;       // (B, S) out
  float* X;          // (B, L·R) out: every layer's input
  float* H;          // (B, L·G) scratch: every layer's h
  float* acc;        // (B, 2G) scratch
  float* res;        // (B, R) scratch
  float* pre;        // (B, L·2G) scratch: gate_in_l + taps_l · W_past,l of the layers the helper precomputes
  // Work per layer that needs x_l and comes after taps_l is read (or null): after_layer(ctx, l, r0, r1) runs with
  // layer l's skip projection (on whichever thread computes it; the native loop's ring update and next taps).
  void (*after_layer)(const void* ctx, int64_t l, int64_t r0, int64_t r1) = nullptr;
  const void* after_ctx = nullptr;
};

// Rows [r0, r1) with kAlone or kPipeline.
void run_layers(const LayersArgs& a, int64_t r0, int64_t r1, Split split);

struct HeadArgs {
  int64_t B, S, H, Q;
  const float* skip;  // (B, S)
  Packed w1;          // S × H
  const float* b1;
  Packed w2;  // H × Q
  const float* b2;
  float* out;     // (B, Q)
  float* hidden;  // (B, S + H) scratch
};

void run_head(const HeadArgs& a, int64_t r0, int64_t r1, Split split);

// Work of the caller's that needs the layer chain's outputs (X) but not the head's: run_step calls it on the
// calling thread once the chain is done, while the helper finishes the skip sum.
struct StepHook {
  void (*fn)(const void* ctx, int64_t r0, int64_t r1);
  const void* ctx;
};

// The layer chain and then the head (h.skip must be a.skip), kAlone or kPipeline; in the pipeline the helper's
// skip projections and the head's column halves are one job (no hand-over between the two). `hook` (or null)
// runs between the chain and the head.
void run_step(const LayersArgs& a, const HeadArgs& h, int64_t r0, int64_t r1, Split split,
              const StepHook* hook = nullptr);

// Rows [0, B) in two halves, one per thread (kRows): fn(ctx, r0, r1) for each half.
void split_rows(int64_t B, void (*fn)(const void* ctx, int64_t r0, int64_t r1), const void* ctx);

// The inverse-CDF draw of reference_model.sampling for one row (sampler.cc): sample_row's token is exact_row's,
// computed faster (checked vector exps); scratch holds sample_scratch(classes) doubles.
int64_t sample_row(const float* logits, int64_t classes, double u, double temperature, double* scratch);
int64_t exact_row(const float* logits, int64_t classes, double u, double temperature, double* scratch);
int64_t sample_scratch(int64_t classes);
// numpy.argmax of one row: the first maximum, or the first NaN.
int64_t argmax_row(const float* logits, int64_t classes);

}  // namespace wn
