// wn_ort_ops: ONNX Runtime custom operators of wn-export (CPU).
//
// wn_export.WaveNetLayers — the residual-layer chain of a lowered step graph as one kernel.
//
// The lowered step graph (wn_export/export/lowering.py) spends four ONNX nodes per layer (two fused Gemms,
// Mul, Gemm), a batched MatMul of the past taps and a packed skip Gemm; at batch 1 ONNX Runtime's
// per-node dispatch costs more than their arithmetic. This op computes all of it in one call
// (wn_export/backends/onnxruntime/fusion.py rewrites the graph to use it). Contract, threading and tests:
// plugins/ort/README.md. In short, per layer l:
//   [a_l | b_l] = gate_in_l + [taps_l | x_l] · W_gate,l ;  h_l = tanh(a_l) ⊙ σ(b_l)
//   x_{l+1} = alpha_l · (h_l · W_out,l) + beta_l · x_l ;   skip = skip_scale · (b_skip + Σ_l h_l · W_skip,l)
// outputs (skip, [x_0 | … | x_{L−1}]).
//
// wn_export.WaveNetHead — the output head after it: relu(relu(skip) · W1 + b1) · W2 + b2.
//
// Weight matrices are packed in 16-column panels, float32 or fp16 ("16-bit weights", float32 arithmetic);
// the kernels and the helper thread are in kernels.cc, shared with the native loop (loop.cc).
#include <onnxruntime_c_api.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

using wn::kPanel;
using wn::Packed;

const OrtApi* g_api = nullptr;

// Which threads a call uses, by batch size: the helper's pipeline up to `pipeline_max`, the batch split in
// two from `rows_from` on, the caller alone in between (wn_ort_ops_set_policy; the host sets it per machine).
std::atomic<int64_t> g_pipeline_max{16}, g_rows_from{17};

wn::Split split_for(int64_t B) {
  if (B >= g_rows_from.load(std::memory_order_relaxed) && B > 1) return wn::kRows;
  return B <= g_pipeline_max.load(std::memory_order_relaxed) ? wn::kPipeline : wn::kAlone;
}

OrtStatus* error(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

#define WN_TRY(expr)                   \
  do {                                 \
    OrtStatus* st_ = (expr);           \
    if (st_ != nullptr) return st_;    \
  } while (0)

struct Input {
  const void* data = nullptr;
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const float* f() const { return static_cast<const float*>(data); }
  bool half() const { return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  bool weights() const { return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || half(); }
};

OrtStatus* input(OrtKernelContext* ctx, size_t i, Input* in) {
  const OrtValue* v = nullptr;
  WN_TRY(g_api->KernelContext_GetInput(ctx, i, &v));
  if (v == nullptr) return error("wn_export op: input " + std::to_string(i) + " is missing");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  WN_TRY(g_api->GetTensorTypeAndShape(v, &info));
  size_t n = 0;
  OrtStatus* st = g_api->GetDimensionsCount(info, &n);
  if (st == nullptr) {
    in->dims.assign(n, 0);
    st = g_api->GetDimensions(info, in->dims.data(), n);
  }
  if (st == nullptr) st = g_api->GetTensorElementType(info, &in->type);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  if (st != nullptr) return st;
  void* p = nullptr;
  WN_TRY(g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &p));
  in->data = p;
  return nullptr;
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

float read_float(const OrtKernelInfo* info, const char* name, float fallback) {
  float v = fallback;
  OrtStatus* st = g_api->KernelInfoGetAttribute_float(info, name, &v);
  if (st != nullptr) {
    g_api->ReleaseStatus(st);
    return fallback;
  }
  return v;
}

OrtStatus* output(OrtKernelContext* ctx, size_t i, const int64_t* shape, size_t rank, float** data) {
  OrtValue* v = nullptr;
  WN_TRY(g_api->KernelContext_GetOutput(ctx, i, shape, rank, &v));
  void* p = nullptr;
  WN_TRY(g_api->GetTensorMutableData(v, &p));
  *data = static_cast<float*>(p);
  return nullptr;
}

int64_t panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

// ---- wn_export.WaveNetLayers ---------------------------------------------------------------------------
struct LayersKernel {
  static constexpr const char* kName = "WaveNetLayers";
  static constexpr size_t kInputs = 7, kOutputs = 2;
  static bool weight_input(size_t i) { return i >= 3 && i <= 5; }
  std::vector<float> alpha, beta;
  float skip_scale = 1.f;

  static OrtStatus* create(const OrtKernelInfo* info, LayersKernel** k) {
    WN_TRY(read_floats(info, "alpha", &(*k)->alpha));
    WN_TRY(read_floats(info, "beta", &(*k)->beta));
    (*k)->skip_scale = read_float(info, "skip_scale", 1.f);
    return nullptr;
  }

  OrtStatus* compute(OrtKernelContext* ctx) const {
    Input x0, taps, gate_in, w_gate, w_out, w_skip, b_skip;
    Input* in[] = {&x0, &taps, &gate_in, &w_gate, &w_out, &w_skip, &b_skip};
    for (size_t i = 0; i < kInputs; ++i) WN_TRY(input(ctx, i, in[i]));
    const auto &dx = x0.dims, &dt = taps.dims, &dc = gate_in.dims, &dg = w_gate.dims, &dw = w_out.dims,
               &ds = w_skip.dims, &db = b_skip.dims;
    if (dx.size() != 2 || dt.size() != 3 || (dc.size() != 1 && dc.size() != 2) || dg.size() != 4 || dw.size() != 4 ||
        ds.size() != 4 || db.size() != 1)
      return error("WaveNetLayers: expected x0 (B,R), taps (B,L,P), gate_in (B,L·2G) or (L·2G), w_gate (L,⌈2G/16⌉,P+R,16), "
                   "w_out (L−1,⌈R/16⌉,G,16), w_skip (L,⌈S/16⌉,G,16), b_skip (S)");
    if (!w_gate.weights() || w_out.type != w_gate.type || w_skip.type != w_gate.type)
      return error("WaveNetLayers: w_gate, w_out and w_skip must all be float32 or all float16");
    const int64_t B = dx[0], R = dx[1], L = dg[0], P = dt[2], S = db[0];
    const int64_t rows = dc.size() == 2 ? dc[0] : 1, width = dc.back();  // gate_in: per stream or shared
    const int64_t G2 = L > 0 ? width / L : 0, G = G2 / 2;
    if (L < 1 || G2 != 2 * G || G < 1 || width != L * G2 || dg[1] != panels(G2) || dg[2] != P + R || dg[3] != kPanel ||
        dt[0] != B || dt[1] != L || (rows != B && rows != 1) || dw[0] != L - 1 ||
        (L > 1 && (dw[1] != panels(R) || dw[2] != G || dw[3] != kPanel)) || ds[0] != L || ds[1] != panels(S) ||
        ds[2] != G || ds[3] != kPanel || static_cast<int64_t>(alpha.size()) != L - 1 ||
        static_cast<int64_t>(beta.size()) != L - 1)
      return error("WaveNetLayers: inconsistent shapes: x0 " + dims(dx) + ", taps " + dims(dt) + ", gate_in " + dims(dc) +
                   ", w_gate " + dims(dg) + ", w_out " + dims(dw) + ", w_skip " + dims(ds) + ", b_skip " + dims(db) +
                   ", alpha/beta " + std::to_string(alpha.size()) + "/" + std::to_string(beta.size()));
    const int64_t dsk[2] = {B, S}, dxo[2] = {B, L * R};
    float *skip = nullptr, *X = nullptr;
    WN_TRY(output(ctx, 0, dsk, 2, &skip));
    WN_TRY(output(ctx, 1, dxo, 2, &X));
    if (B == 0) return nullptr;
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(B * (L * G + G2 + R + L * G2)));
    const bool half = w_gate.half();
    const wn::LayersArgs a{B, R, G, L, P, S, x0.f(), taps.f(), gate_in.f(), rows == 1 ? 0 : L * G2,
                           Packed(w_gate.data, P + R, half), Packed(w_out.data, G, half), Packed(w_skip.data, G, half),
                           b_skip.f(), alpha.data(), beta.data(), skip_scale, skip, X, scratch.data(),
                           scratch.data() + B * L * G, scratch.data() + B * (L * G + G2),
                           scratch.data() + B * (L * G + G2 + R)};
    const wn::Split split = split_for(B);
    if (split == wn::kRows)
      wn::split_rows(B, [](const void* c, int64_t r0, int64_t r1) {
        wn::run_layers(*static_cast<const wn::LayersArgs*>(c), r0, r1, wn::kAlone);
      }, &a);
    else
      wn::run_layers(a, 0, B, split);
    return nullptr;
  }
};

// ---- wn_export.WaveNetHead ----------------------------------------------------------------------------
// out = relu(relu(skip) · W1 + b1) · W2 + b2: the output head's two 1×1 convolutions. Up to the pipeline
// batch each 1×1 is one job of two tasks, its two column halves (whole panels), so both threads stream
// half the weights; every column is computed by the same code on either thread (bit-identical to one).
struct HeadKernel {
  static constexpr const char* kName = "WaveNetHead";
  static constexpr size_t kInputs = 5, kOutputs = 1;
  static bool weight_input(size_t i) { return i == 1 || i == 3; }
  static OrtStatus* create(const OrtKernelInfo*, HeadKernel**) { return nullptr; }

  OrtStatus* compute(OrtKernelContext* ctx) const {
    Input skip, w1, b1, w2, b2;
    Input* in[] = {&skip, &w1, &b1, &w2, &b2};
    for (size_t i = 0; i < kInputs; ++i) WN_TRY(input(ctx, i, in[i]));
    const auto &ds = skip.dims, &d1 = w1.dims, &db1 = b1.dims, &d2 = w2.dims, &db2 = b2.dims;
    if (ds.size() != 2 || d1.size() != 3 || db1.size() != 1 || d2.size() != 3 || db2.size() != 1 ||
        d1[0] != panels(db1[0]) || d1[1] != ds[1] || d1[2] != kPanel || d2[0] != panels(db2[0]) ||
        d2[1] != db1[0] || d2[2] != kPanel)
      return error("WaveNetHead: inconsistent shapes: expected skip (B,S), w1 (⌈H/16⌉,S,16), b1 (H), "
                   "w2 (⌈Q/16⌉,H,16), b2 (Q), got " + dims(ds) + ", " + dims(d1) + ", " + dims(db1) + ", " +
                   dims(d2) + ", " + dims(db2));
    if (!w1.weights() || w2.type != w1.type)
      return error("WaveNetHead: w1 and w2 must both be float32 or both float16");
    const int64_t B = ds[0], S = ds[1], H = db1[0], Q = db2[0];
    const int64_t dout[2] = {B, Q};
    float* out = nullptr;
    WN_TRY(output(ctx, 0, dout, 2, &out));
    if (B == 0) return nullptr;
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(B * (S + H)));
    const wn::HeadArgs a{B, S, H, Q, skip.f(), Packed(w1.data, S, w1.half()), b1.f(), Packed(w2.data, H, w2.half()),
                         b2.f(), out, scratch.data()};
    const wn::Split split = split_for(B);
    if (split == wn::kRows)
      wn::split_rows(B, [](const void* c, int64_t r0, int64_t r1) {
        wn::run_head(*static_cast<const wn::HeadArgs*>(c), r0, r1, wn::kAlone);
      }, &a);
    else
      wn::run_head(a, 0, B, split);
    return nullptr;
  }
};

// The OrtCustomOp of a kernel type: float32 tensors in and out, the weight inputs float32 or float16
// (declared "any type"; compute checks them), created by Kernel::create.
template <typename Kernel>
struct Op : OrtCustomOp {
  Op() {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp*) { return Kernel::kName; };
    GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
    GetInputType = [](const OrtCustomOp*, size_t i) {
      return Kernel::weight_input(i) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
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
__attribute__((visibility("default"))) void wn_ort_ops_set_helper(int enabled) { wn::set_helper(enabled != 0); }

// How many tasks (skip projections, head column halves, batch halves) the helper thread has computed in
// this process.
__attribute__((visibility("default"))) int64_t wn_ort_ops_helped_tasks() { return wn::helped_tasks(); }

// The ops' thread policy: the helper's pipeline up to batch `pipeline_max`, the batch split in two halves
// from `rows_from` on, the calling thread alone in between.
__attribute__((visibility("default"))) void wn_ort_ops_set_policy(int64_t pipeline_max, int64_t rows_from) {
  g_pipeline_max.store(pipeline_max);
  g_rows_from.store(rows_from);
}
}
