"""The fused step graph (`wn-export onnx --fused-step`) and its TensorRT plugin `wn_export::WaveNetStep`.

Proven here without a GPU: the graph and its manifest entry; hygiene accepts the plugin's domain for
that graph only; ONNX Runtime skips it with a note and refuses it when asked; the node, run by its own
kernel (`wavenet_step_plugin`, Triton's interpreter) on its own initializers with the host's ring rule,
matches the float64 reference and draws its tokens; the Python plugin's registration, shape/type rule
and AOT launch satisfy `tensorrt.plugin`'s documented contract (a STAND-IN module, `tests/trtp_standin.py`:
TensorRT cannot be installed here) and agree with the PTX's entry; the PTX assembles; TensorRT-RTX
refuses the graph before its parser (which aborts on plugin nodes) and `wn-export trt` skips it; the
C++ IPluginV3 library compiles against the TensorRT 10.14 headers, and API misuse does not.
On a GPU: the node's PTX launched through the CUDA driver as the C++ plugin launches it, and (with
TensorRT ≥ 10.9) engines built and checked by the parity harness.
"""
# no `from __future__ import annotations`: tensorrt.plugin (and its stand-in) read annotations as objects

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # the plugin kernel runs on CPU tensors (read when the kernel is imported)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from reference_model import load_checkpoint, save_checkpoint  # noqa: E402
from tests import trtp_standin  # noqa: E402
from tests.conftest import CONFIGS, random_model  # noqa: E402
from wn_export.backends import open_step  # noqa: E402
from wn_export.backends.tensorrt.plugin import PLUGIN, register  # noqa: E402
from wn_export.backends.tensorrt.plugin_runner import PluginGraphRunner, read_node  # noqa: E402
from wn_export.backends.torch_ref import TorchStepRunner  # noqa: E402
from wn_export.backends.triton.aot import assemble, entry_params, find_ptxas  # noqa: E402
from wn_export.backends.triton.check import logit_check, reference_logits  # noqa: E402
from wn_export.backends.triton.layout import KernelLayout  # noqa: E402
from wn_export.contract.manifest import read_manifest  # noqa: E402
from wn_export.errors import BackendError, ExportError  # noqa: E402
from wn_export.export.hygiene import check_graph  # noqa: E402
from wn_export.generation.loop import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "hosts" / "cpp"
MODELS = {"k2": (CONFIGS["k2"], False), "conditioned": (CONFIGS["conditioned"], True)}  # (config, --fp16)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT compiles need the real triton


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Both models exported with --fused-step by the CLI (a subprocess: PTX is compiled without the interpreter)."""
    root = tmp_path_factory.mktemp("fused")
    out = {}
    for name, (cfg, fp16) in MODELS.items():
        save_checkpoint(random_model(cfg), root / f"{name}.safetensors")
        out[name] = root / name
        args = ["-c", root / f"{name}.safetensors", "-o", out[name], "--fused-step", *(["--fp16"] if fp16 else [])]
        run = subprocess.run([sys.executable, "-m", "wn_export.cli", "onnx", *map(str, args)], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    return out


def _model(directory: Path):
    return load_checkpoint(read_manifest(directory).source_checkpoint, torch.float32)


def _inputs(cfg, batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.quantization_channels, (batch, steps))
    cond = rng.standard_normal((batch, cfg.local_channels, steps)).astype(np.float32) if cfg.local else None
    speaker = rng.integers(0, cfg.speakers, batch) if cfg.global_ else None
    return tokens, cond, speaker


# ---- the graph and its manifest entry ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_graph_is_one_plugin_node_recorded_like_any_graph(exports, name):
    directory = exports[name]
    manifest = read_manifest(directory)  # sha256 of every graph verified
    cfg, fp16 = MODELS[name]
    fused = [g for g in manifest.graphs if g.startswith("step.fused")]
    assert fused == (["step.fused", "step.fused.fp16"] if fp16 else ["step.fused"])
    for graph in fused:
        g, standard = manifest.graph(graph), manifest.graph(graph.replace(".fused", ""))
        assert g.file == f"{graph}.onnx" and g.kind == "step" and g.plugin == PLUGIN.id and standard.plugin is None
        # the standard ring graph's contract: hosts bind it by role and apply the same `ring` rule
        assert (g.inputs, g.outputs, g.state, g.layout) == (standard.inputs, standard.outputs, standard.state, "ring")
        model = onnx.load(str(g.path))
        (node,) = model.graph.node
        assert (node.domain, node.op_type) == (PLUGIN.domain, PLUGIN.op)
        attrs, arrays = read_node(g.path)
        assert attrs["plugin_namespace"] == PLUGIN.domain and attrs["aot"] == 1
        assert set(PLUGIN.attributes) <= set(attrs) and (attrs["layers"], attrs["classes"]) == (
            cfg.layers, cfg.quantization_channels)
        entry = g.data["fused"]
        assert entry["ptx_sha256"] == hashlib.sha256(attrs["ptx"].encode()).hexdigest()
        assert (entry["kernel"], entry["threads"], entry["shared_bytes"]) == (
            attrs["kernel"], 32 * attrs["num_warps"], attrs["shared_bytes"])
        # the initializers are the kernel's own packing of the checkpoint
        layout = KernelLayout.of(cfg)
        dtype = torch.float16 if g.precision == "fp16" else torch.float32
        np.testing.assert_array_equal(arrays["weights"], layout.pack(_model(directory), dtype).numpy())
        np.testing.assert_array_equal(arrays["layer_table"], layout.table().numpy())
        assert list(node.input[:5]) == [{"cond": "cond" if cfg.local else "no_cond",
                                         "speaker": "speaker" if cfg.global_ else "no_speaker"}.get(s, s)
                                        for s in PLUGIN.inputs[:5]]


def test_fused_step_refuses_what_the_kernel_lacks_before_writing_anything(tmp_path):
    from reference_model import WaveNetConfig
    from wn_export.export.pipeline import export_directory

    cfg = WaveNetConfig(quantization_channels=16, residual_channels=4, gate_channels=4, skip_channels=4, layers=2,
                        input_kind="scalar")
    save_checkpoint(random_model(cfg), tmp_path / "scalar.safetensors")
    with pytest.raises(ExportError, match="--fused-step: the fused step kernel does not support input_kind 'scalar'"):
        export_directory(tmp_path / "out", tmp_path / "scalar.safetensors", fused_step=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scalar.safetensors"]  # no directory, no staging left
    # in a process that runs the kernel under the interpreter, PTX cannot be compiled: one clear error
    save_checkpoint(random_model(CONFIGS["k2"]), tmp_path / "k2.safetensors")
    with pytest.raises(BackendError, match="unset TRITON_INTERPRET"):
        export_directory(tmp_path / "out", tmp_path / "k2.safetensors", fused_step=True)
    assert not (tmp_path / "out").exists()


def test_hygiene_accepts_the_plugin_domain_for_a_fused_graph_only(exports):
    g = read_manifest(exports["k2"]).graph("step.fused")
    model = onnx.load(str(g.path))
    assert check_graph(model, {"batch"}, "fused", plugin=PLUGIN)["nodes"] == 1
    with pytest.raises(ExportError, match="ops not supported by TensorRT's ONNX parser: WaveNetStep"):
        check_graph(model, {"batch"}, "fused")  # as a standard graph: the custom domain is refused
    wrong = onnx.load(str(g.path))
    wrong.graph.output[0].type.tensor_type.shape.dim[1].dim_value += 1  # logits width ≠ classes
    with pytest.raises(ExportError, match="plugin's shape rule"):
        check_graph(wrong, {"batch"}, "fused", plugin=PLUGIN)
    wrong = onnx.load(str(g.path))
    del wrong.graph.node[0].input[-1]
    with pytest.raises(ExportError, match="the plugin takes 8"):
        check_graph(wrong, {"batch"}, "fused", plugin=PLUGIN)


def test_onnxruntime_skips_the_fused_graph_with_a_note_and_refuses_it_when_asked(exports):
    from wn_export.parity.harness import run_parity

    with pytest.raises(BackendError, match="onnxruntime backend cannot run step.fused: .*TensorRT plugin"):
        open_step(read_manifest(exports["k2"]), "onnxruntime", "step.fused")
    report = run_parity(exports["k2"], "onnxruntime", generation_samples=20)
    assert report and {c.graph for c in report.checks} >= {"step", "scoring"}
    assert not any("fused" in c.graph for c in report.checks)
    assert len(report.notes) == 1 and report.notes[0].startswith("step.fused skipped: ")
    assert json.loads(report.to_json())["notes"] == list(report.notes)


# ---- the node run by its kernel (interpreter) ------------------------------------------------------------
@pytest.mark.parametrize("name,graph,precision", [("k2", "step.fused", "fp32"), ("conditioned", "step.fused", "fp32"),
                                                  ("conditioned", "step.fused.fp16", "fp16")])
def test_the_fused_graph_computes_the_reference_step(exports, name, graph, precision):
    """The node's kernel (interpreter) on the node's initializers, with the host's ring rule applied to its
    state_update, over more samples than the receptive field: within the tolerance table's row."""
    cfg = MODELS[name][0]
    model = _model(exports[name])
    tokens, cond, speaker = _inputs(cfg, 2, cfg.receptive_field + 6)
    runner = PluginGraphRunner(exports[name], graph, launcher="interpreter")
    check = logit_check(runner.teacher_force(tokens, cond, speaker), reference_logits(model.double(), tokens, cond,
                                                                                      speaker), precision)
    assert not check["failures"], check
    assert check["max_abs"] > 0
    assert runner.position.item() == tokens.shape[1]  # the host advanced the ring position every step


def test_the_fused_graph_draws_the_reference_tokens(exports):
    cfg = MODELS["conditioned"][0]
    n, batch = cfg.receptive_field + 10, 2
    _, cond, speaker = _inputs(cfg, batch, n, seed=1)
    kw = dict(seed=5, quantization_channels=cfg.quantization_channels, cond=cond, speaker=speaker)
    with TorchStepRunner(_model(exports["conditioned"]).double()) as reference:
        expected = generate(reference, n, batch, **kw)
    got = generate(PluginGraphRunner(exports["conditioned"], "step.fused", launcher="interpreter"), n, batch, **kw)
    assert len(np.unique(expected)) > 3
    np.testing.assert_array_equal(got, expected)


# ---- the Python plugin against tensorrt.plugin's contract (stand-in module) ---------------------------
def test_plugin_registration_shapes_and_aot_launch_agree_with_the_ptx(exports):
    register(trtp_standin, trtp_standin.trt)
    register(trtp_standin, trtp_standin.trt)  # idempotent
    d = trtp_standin.REGISTRY[PLUGIN.id]
    assert d["inputs"] == list(PLUGIN.inputs) and list(d["attrs"]) == list(PLUGIN.attributes)
    g = read_manifest(exports["conditioned"]).graph("step.fused.fp16")
    attrs, _ = read_node(g.path)
    B, N, R = 5, g.input("state").shape[1], g.input("state").shape[2]
    t = trtp_standin.trt
    dtypes = {"token": t.int64, "cond": t.float32, "speaker": t.int64, "state": t.float16, "position": t.int64,
              "weights": t.float16, "layer_table": t.int32, "speaker_table": t.float32}
    shapes = {"token": (B,), "state": (B, N, R), "position": (1,)}
    inputs = [trtp_standin.TensorDesc(dtypes[s], shapes.get(s, (1,))) for s in PLUGIN.inputs]
    outputs, kernel, ptx, params, extra = trtp_standin.build_time_call(
        PLUGIN.id, inputs, {a: attrs[a] + ("\0" if isinstance(attrs[a], str) else 0) for a in PLUGIN.attributes})
    # outputs: the graph's declared ones, batch from the token, dtypes float32 / the state's
    declared = {o.name: o for o in g.outputs}
    assert [(o.shape_expr, o.dtype) for o in outputs] == [
        ((B, declared["logits"].shape[1]), t.float32), ((B, *declared["state_update"].shape[1:]), t.float16)]
    # the kernel TensorRT embeds is the node's PTX; its entry takes inputs, the int32 scalars, outputs
    assert ptx == attrs["ptx"].encode() and kernel == attrs["kernel"]
    assert entry_params(attrs["ptx"], kernel) == (
        [".u64"] * len(PLUGIN.inputs) + [".u32"] * len(PLUGIN.scalars) + [".u64"] * len(PLUGIN.outputs))
    assert [a.value for a in extra] == [attrs["layers"], N]  # layers, state rows
    assert (params.grid_x.value, params.grid_y.value, params.block_y.value) == (B, 1, 1)
    assert f".reqntid {params.block_x.value}" in attrs["ptx"]  # the block the PTX requires
    assert params.shared_mem.value == attrs["shared_bytes"] > 0


def test_the_stand_in_enforces_the_documented_aot_schema():
    """The checks above have teeth: a misordered AOT signature is refused like TensorRT refuses it."""
    @trtp_standin.register("wn_test::Probe")
    def probe(x: trtp_standin.TensorDesc, n: int) -> trtp_standin.TensorDesc:
        return x

    with pytest.raises(ValueError, match="expected schema"):
        @trtp_standin.aot_impl("wn_test::Probe")
        def bad(x, outputs, n, tactic) -> tuple[str, str, trtp_standin.KernelLaunchParams, trtp_standin.SymExprs]:
            return "", "", trtp_standin.KernelLaunchParams(), trtp_standin.SymIntExprs()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_the_node_ptx_assembles(exports, arch):
    ptxas = find_ptxas()
    if ptxas is None:
        pytest.fail("no ptxas: the CI image has the CUDA toolkit, or triton bundles one")
    attrs, _ = read_node(read_manifest(exports["conditioned"]).graph("step.fused.fp16").path)
    usage = assemble(attrs["ptx"], arch, ptxas)  # sm_80 PTX: the driver JIT-compiles it for newer GPUs too
    assert 0 < usage["registers"] <= 255 and usage["spill_store_bytes"] == 0


# ---- TensorRT-RTX: refused before its parser, skipped by `wn-export trt` -------------------------------
def test_tensorrt_rtx_refuses_the_fused_graph_and_trt_skips_it(exports, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from wn_export.backends.tensorrt.build import build_engine

    g = read_manifest(exports["k2"]).graph("step.fused")
    with pytest.raises(BackendError, match="TensorRT-RTX .* cannot build plugin layers"):
        build_engine(g.path, tmp_path / "x.engine", backend="tensorrt-rtx", plugin=g.plugin,
                     profiles={"token": ((1,), (1,), (2,))})
    assert not (tmp_path / "x.engine").exists()
    directory = tmp_path / "k2"
    shutil.copytree(exports["k2"], directory)
    run = subprocess.run([sys.executable, "-m", "wn_export.cli", "trt", str(directory), "--backend", "tensorrt-rtx",
                          "--batch", "1,1,2", "--time", "2,16,32"], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "note: step.fused skipped: TensorRT-RTX" in run.stderr
    assert sorted(read_manifest(directory).engines) == ["scoring", "step"]


# ---- the C++ IPluginV3 library ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_headers() -> tuple[str, str]:
    """TensorRT 10.14 headers (PyPI kernel-lens, pinned and sha256-checked by fetch_deps.sh) and CUDA headers."""
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run([str(HOST / "fetch_deps.sh"), "--with-tensorrt", "--no-onnxruntime"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    trt = HOST / "third_party" / "tensorrt" / "include"
    cuda = next((Path(d) / "include" for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda")
                 if d and (Path(d) / "include" / "cuda.h").is_file()), HOST / "third_party" / "cuda" / "include")
    assert (trt / "NvInferRuntime.h").is_file() and (cuda / "cuda.h").is_file()
    return str(trt), str(cuda)


def test_cpp_plugin_compiles_against_tensorrt_headers(trt_headers, tmp_path):
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(ROOT / "plugins" / "trt"), "-B", str(build),
                                f"-DWN_TRT_INCLUDE={trt_headers[0]}", f"-DWN_CUDA_INCLUDE={trt_headers[1]}"],
                               capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    run = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # -Werror: warnings fail too
    (obj,) = [p for p in build.rglob("wn_step_plugin.cpp.o")]
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout
    for name in ("T getCreators", "T setLoggerFinder", "U cuModuleLoadData", "U cuLaunchKernel"):
        assert name in symbols, name


_PLUGIN = ("struct P : nvinfer1::IPluginV3OneRuntime {{\n"
           "  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,"
           " int32_t) noexcept override {{ return 0; }}\n"
           "  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override "
           "{{ return nullptr; }}\n"
           "  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {{ return nullptr; }}\n"
           "  {enqueue}\n}};\n")
_ENQUEUE_V3 = ("int32_t enqueue(nvinfer1::PluginTensorDesc const*, nvinfer1::PluginTensorDesc const*, void const* const*,"
               " void* const*, void*, cudaStream_t) noexcept override { return 0; }")
_ENQUEUE_V2 = ("int32_t enqueue(int32_t, void const* const*, void* const*, void*, cudaStream_t) noexcept override "
               "{ return 0; }")  # IPluginV2's signature: not a V3 runtime method


@pytest.mark.parametrize("snippet, ok", [
    (_PLUGIN.format(enqueue=_ENQUEUE_V3) + "P p;", True),
    (_PLUGIN.format(enqueue=_ENQUEUE_V2) + "P p;", False),
    ("CUresult r = cuLaunchKernel(nullptr, 1, 1, 1, 128, 1, 1, 0, nullptr, nullptr, nullptr);", True),
    ("CUresult r = cuLaunchKernel(nullptr, 1, 128, 0, nullptr, nullptr);", False),  # grid/block are 3 dims each
])
def test_plugin_api_misuse_fails_to_compile(trt_headers, tmp_path, snippet, ok):
    src = tmp_path / "t.cpp"
    src.write_text(f"#include <cuda.h>\n#include <NvInferRuntime.h>\nvoid f() {{\n{snippet}\n}}\n")
    cxx = shutil.which("c++") or shutil.which("g++")
    proc = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-isystem", trt_headers[0], "-isystem", trt_headers[1],
                           str(src)], capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stderr[-2000:]


# ---- on a GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name,graph,precision", [("k2", "step.fused", "fp32"), ("conditioned", "step.fused", "fp32"),
                                                  ("conditioned", "step.fused.fp16", "fp16")])
def test_node_ptx_on_cuda_as_the_cpp_plugin_launches_it(exports, name, graph, precision):
    """cuModuleLoadData + cuLaunchKernel of the node's PTX with the plugin's parameter layout (no TensorRT)."""
    cfg = MODELS[name][0]
    tokens, cond, speaker = _inputs(cfg, 3, cfg.receptive_field + 50)
    runner = PluginGraphRunner(exports[name], graph, launcher="ptx")
    check = logit_check(runner.teacher_force(tokens, cond, speaker),
                        reference_logits(_model(exports[name]).double(), tokens, cond, speaker), precision)
    assert not check["failures"], check
    if precision == "fp32":
        kw = dict(seed=3, quantization_channels=cfg.quantization_channels,
                  cond=None if cond is None else cond[:2], speaker=None if speaker is None else speaker[:2])
        with TorchStepRunner(_model(exports[name]).double()) as reference:
            expected = generate(reference, 200 if not cfg.local else cond.shape[2], 2, **kw)
        np.testing.assert_array_equal(generate(runner, expected.shape[1], 2, **kw), expected)


@pytest.mark.gpu
def test_tensorrt_builds_and_runs_the_fused_graph(exports, tmp_path):
    pytest.importorskip("tensorrt.plugin", reason="needs TensorRT >= 10.9 with its Python plugin API")
    directory = tmp_path / "conditioned"
    shutil.copytree(exports["conditioned"], directory)
    for extra in ([], ["--fp16"]):
        run = subprocess.run([sys.executable, "-m", "wn_export.cli", "trt", str(directory), "--backend", "tensorrt",
                              *extra], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
    assert {"step.fused", "step.fused.fp16"} <= set(read_manifest(directory).engines)
    run = subprocess.run([sys.executable, "-m", "wn_export.cli", "parity", str(directory), "--backend", "tensorrt",
                          "--generation-samples", "500", "--json", str(tmp_path / "parity.json")], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    graphs = {c["graph"] for c in json.loads((tmp_path / "parity.json").read_text())["checks"]}
    assert {"step.fused", "step.fused.fp16"} <= graphs
