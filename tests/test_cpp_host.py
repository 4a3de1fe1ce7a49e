"""The C++ host (hosts/cpp): built with its own script, checked against the Python ONNX Runtime host.

The build fetches pinned dependencies from PyPI, npm and Debian (hosts/cpp/fetch_deps.sh) and is cached
in hosts/cpp/build, so only the first run pays for it. A build or fetch failure FAILS these tests: CI
has network access to the registries, and a silently skipped host would prove nothing.

- `wn_generate` (ONNX Runtime backend) draws exactly the Python host's samples for the same seed
  (`wn_export.generation.generate` with `OrtStepRunner`): ring and full state layouts, batch 1 and 2,
  speaker and local conditioning, FP16 state, temperature and greedy; its WAV is Python's WAV. Per step
  (`--no-native`) it matches the Python host on the standard graph; with the export's native loop plan (the
  default for ring-layout FP32 and w16 step graphs) it matches the Python host's native loop (fused graph),
  for every thread split and chunk size.
- `wn_score` reproduces the scoring graph's mean log-likelihood.
- The TensorRT backend compiles against the TensorRT 10.14 headers of PyPI `kernel-lens` (and real
  API misuse against those headers does not).
- Bad inputs: one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_model import WaveNet, WaveNetConfig, save_checkpoint
from wn_export.backends.onnxruntime.runner import OrtScoringRunner, OrtStepRunner
from wn_export.contract.manifest import read_manifest
from wn_export.export.pipeline import export_directory
from wn_export.generation.audio import write_tokens_wav
from wn_export.generation.loop import generate

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "hosts" / "cpp"
BUILD = HOST / "build"
BUILD_TIMEOUT = 1200  # seconds; a cold build (downloads included) takes about 1.5 minutes on 2 cores

CONFIGS = {
    "plain": WaveNetConfig(quantization_channels=64, residual_channels=8, gate_channels=12, skip_channels=10,
                           kernel_size=2, layers=6, stacks=2),
    "speaker": WaveNetConfig(quantization_channels=32, residual_channels=6, gate_channels=10, skip_channels=7,
                             kernel_size=3, layers=4, stacks=2, speakers=3, speaker_channels=2),
    "local": WaveNetConfig(quantization_channels=24, residual_channels=7, gate_channels=12, skip_channels=5,
                           kernel_size=2, layers=4, stacks=1, local_channels=3, hop_size=4, speakers=2,
                           speaker_channels=2, scale_residual=True, scale_skip=True),
}


def _model(cfg: WaveNetConfig, seed: int = 0) -> WaveNet:
    """Weights large enough that every layer matters (the default init gives near-uniform logits)."""
    torch.manual_seed(seed)
    model = WaveNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return model.eval()


# ---- fixtures ------------------------------------------------------------------------------------------
def build_host(build: Path, *options: str) -> Path:
    """Run hosts/cpp/build.sh into `build` (incremental); a failed or slow build fails the test."""
    import onnxruntime

    (HOST / "third_party").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHON=sys.executable, WN_ORT_VERSION=onnxruntime.__version__)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(HOST / "third_party" / ".build.lock", "w") as lock:  # one build at a time (xdist workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            proc = subprocess.run([str(HOST / "build.sh"), *options, "--build-dir", str(build)],
                                  env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"building the C++ host took longer than {BUILD_TIMEOUT} s")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"building the C++ host failed (exit {proc.returncode}):\n{tail}")
    for exe in ("wn_generate", "wn_score", "wn_manifest_check"):
        assert (build / exe).is_file(), f"the build produced no {exe}"
    return build


@pytest.fixture(scope="session")
def host() -> Path:
    """Build the host with hosts/cpp/build.sh (incremental; TensorRT backend compiled, not linked)."""
    return build_host(BUILD, "--with-tensorrt")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpp_exports")
    out = {}
    for name, cfg in CONFIGS.items():
        ckpt = root / f"{name}.safetensors"
        save_checkpoint(_model(cfg, seed=len(name)), ckpt)
        for layout in ("ring", "full"):
            if name == "local" and layout == "full":
                continue
            out[f"{name}-{layout}"] = root / f"{name}-{layout}"
            export_directory(out[f"{name}-{layout}"], ckpt, fp16=(name == "plain" and layout == "ring"),
                             w16=layout == "ring", layout=layout)
    return out


def run(host: Path, program: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(host / program), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{program} {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}")
    return proc


def python_tokens(directory: Path, n: int, batch: int, graph: str = "step", native: bool = False,
                  **kwargs) -> np.ndarray:
    """The Python host's tokens: on the standard graph (what wn_generate steps per step), or with `native` as
    `wn-export generate` runs it (the fused graph's native loop)."""
    manifest = read_manifest(directory)
    with OrtStepRunner(manifest, graph, fused=None if native else False) as runner:
        assert (runner.loop is not None) == native, runner.setup
        return generate(runner, n, batch, quantization_channels=manifest.config.quantization_channels, **kwargs)


def cpp_generate(host: Path, directory: Path, tmp_path: Path, n: int, batch: int, *args,
                 native: bool = False) -> tuple[np.ndarray, Path]:
    """wn_generate's tokens and WAV; per step (--no-native) unless `native`, and the path it says it ran checked."""
    wav, tok = tmp_path / "out.wav", tmp_path / "out.tokens"
    proc = run(host, "wn_generate", directory, "-o", wav, "-n", n, "--batch", batch, "--tokens", tok,
               *([] if native else ["--no-native"]), *args)
    setup = proc.stderr.splitlines()[0]
    assert ("native loop" in setup) == native, setup
    return np.fromfile(tok, dtype=np.int64).reshape(batch, n), wav


def assert_same_wav(cpp_wav: Path, tokens: np.ndarray, channels: int, rate: int, tmp_path: Path) -> None:
    """The C++ WAV is the one wn_export.audio writes for these tokens (header and samples)."""
    ref = tmp_path / "python.wav"
    write_tokens_wav(ref, tokens, channels, rate)
    a, b = cpp_wav.read_bytes(), ref.read_bytes()
    assert a[:44] == b[:44], "WAV headers differ"
    with wave.open(str(cpp_wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, rate, len(tokens))
    pcm_a, pcm_b = np.frombuffer(a[44:], "<i2").astype(int), np.frombuffer(b[44:], "<i2").astype(int)
    # identical with the same libm; numpy's SIMD expm1 may differ by one ulp, i.e. at most one LSB
    assert pcm_a.shape == pcm_b.shape and np.abs(pcm_a - pcm_b).max() <= 1


# ---- generation parity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layout", ["ring", "full"])
def test_generate_matches_python_host(host, exports, tmp_path, layout, batch):
    directory = exports[f"plain-{layout}"]
    n, seed = 400, 1234
    cpp, wav = cpp_generate(host, directory, tmp_path, n, batch, "--seed", seed)
    py = python_tokens(directory, n, batch, seed=seed)
    assert len(np.unique(py)) > 10  # a real sampling run, not a constant stream
    np.testing.assert_array_equal(cpp, py)
    cfg = CONFIGS["plain"]
    if batch == 1:
        assert_same_wav(wav, py[0], cfg.quantization_channels, cfg.sample_rate, tmp_path)
    else:  # one WAV per stream: out_0.wav, out_1.wav
        for b in range(batch):
            assert_same_wav(tmp_path / f"out_{b}.wav", py[b], cfg.quantization_channels, cfg.sample_rate, tmp_path)


@pytest.mark.parametrize("layout", ["ring", "full"])
def test_generate_speaker_model_matches_python_host(host, exports, tmp_path, layout):
    directory = exports[f"speaker-{layout}"]
    cpp, _ = cpp_generate(host, directory, tmp_path, 300, 2, "--seed", 7, "--speaker", "2,0")
    py = python_tokens(directory, 300, 2, seed=7, speaker=np.array([2, 0]))
    np.testing.assert_array_equal(cpp, py)
    cpp1, _ = cpp_generate(host, directory, tmp_path, 300, 1, "--seed", 7, "--speaker", 1)
    np.testing.assert_array_equal(cpp1, python_tokens(directory, 300, 1, seed=7, speaker=np.array([1])))


def test_generate_local_conditioning_matches_python_host(host, exports, tmp_path):
    directory, n, batch = exports["local-ring"], 250, 2
    cond = np.random.default_rng(3).standard_normal((batch, 3, n + 10)).astype(np.float32)
    cond.tofile(tmp_path / "cond.f32")
    cpp, _ = cpp_generate(host, directory, tmp_path, n, batch, "--seed", 11, "--speaker", 1,
                          "--cond", tmp_path / "cond.f32")
    np.testing.assert_array_equal(cpp, python_tokens(directory, n, batch, seed=11, cond=cond,
                                                     speaker=np.array([1, 1])))


@pytest.mark.parametrize("mode", ["fp16-state", "temperature", "greedy", "big-seed"])
def test_generate_variants_match_python_host(host, exports, tmp_path, mode):
    directory, n = exports["plain-ring"], 300
    args, kwargs, graph = [], {}, "step"
    if mode == "fp16-state":
        graph, args = "step.fp16", ["--graph", "step.fp16", "--seed", 5]
        kwargs = {"seed": 5}
    elif mode == "temperature":
        args, kwargs = ["--seed", 9, "--temperature", 0.7], {"seed": 9, "temperature": 0.7}
    elif mode == "greedy":
        args, kwargs = ["--greedy"], {"method": "greedy"}
    else:
        args, kwargs = ["--seed", 2**64 - 1], {"seed": 2**64 - 1}
    cpp, _ = cpp_generate(host, directory, tmp_path, n, 2, *args)
    np.testing.assert_array_equal(cpp, python_tokens(directory, n, 2, graph, **kwargs))


# ---- the native loop (the export's plan) ----------------------------------------------------------------------
NATIVE_CASES = [  # (export, graph, batch, extra wn_generate arguments, python kwargs)
    ("plain-ring", "step", 1, [], {}),
    ("plain-ring", "step", 3, [], {}),
    ("plain-ring", "step.w16", 1, [], {}),
    ("plain-ring", "step.w16", 3, [], {}),
    ("speaker-ring", "step", 3, ["--speaker", "2,0,1"], {"speaker": np.array([2, 0, 1])}),
    ("speaker-ring", "step.w16", 1, ["--speaker", 1], {"speaker": np.array([1])}),
    ("local-ring", "step", 3, ["--speaker", "1,0,1", "--chunk", 128], {"speaker": np.array([1, 0, 1])}),
    ("local-ring", "step.w16", 1, ["--speaker", 0, "--chunk", 100], {"speaker": np.array([0])}),
]


@pytest.mark.parametrize("name, graph, batch, args, kwargs", NATIVE_CASES,
                         ids=[f"{c[0]}-{c[1]}-b{c[2]}" for c in NATIVE_CASES])
def test_native_loop_draws_the_python_hosts_tokens(host, exports, tmp_path, name, graph, batch, args, kwargs):
    """wn_generate's default path on a ring export is the native loop on the export's plan: the tokens of the
    Python host's native loop (`wn-export generate`) for several seeds, temperatures and greedy."""
    directory, n = exports[name], 300
    cfg = CONFIGS[name.split("-")[0]]
    args, kwargs = list(args), dict(kwargs)
    if cfg.local:
        cond = np.random.default_rng(batch).standard_normal((batch, cfg.local_channels, n + 5)).astype(np.float32)
        cond.tofile(tmp_path / "cond.f32")
        args += ["--cond", tmp_path / "cond.f32"]
        kwargs["cond"] = cond
    for seed, method, temperature in ((0, "sample", 1.0), (1234, "sample", 0.7), (2**64 - 1, "sample", 1.3),
                                      (0, "greedy", 1.0)):
        options = ["--greedy"] if method == "greedy" else ["--seed", seed, "--temperature", temperature]
        cpp, _ = cpp_generate(host, directory, tmp_path, n, batch, "--graph", graph, *options, *args, native=True)
        py = python_tokens(directory, n, batch, graph, native=True, seed=seed, method=method,
                           temperature=temperature, **kwargs)
        if method == "sample":
            assert len(np.unique(py)) > 5  # really sampled
        np.testing.assert_array_equal(cpp, py, err_msg=f"seed {seed}, {method}, T={temperature}")


def test_native_loop_splits_and_chunks_draw_the_same_tokens(host, exports, tmp_path):
    """Whoever computes what (the thread split) and how the steps are cut into calls (chunks) change no token;
    the chunks stream into the WAV Python writes."""
    directory, n, batch = exports["plain-ring"], 257, 3
    want = python_tokens(directory, n, batch, native=True, seed=3)
    for args in (["--split", "alone"], ["--split", "pipeline"], ["--split", "rows"], ["--chunk", 7],
                 ["--chunk", 100, "--split", "rows"]):
        got, wav = cpp_generate(host, directory, tmp_path, n, batch, "--seed", 3, *args, native=True)
        np.testing.assert_array_equal(got, want, err_msg=str(args))
    cfg = CONFIGS["plain"]
    for b in range(batch):
        assert_same_wav(tmp_path / f"out_{b}.wav", want[b], cfg.quantization_channels, cfg.sample_rate, tmp_path)


def test_native_loop_says_which_path_ran(host, exports, tmp_path):
    """The first stderr line names the path; --json reports it; without a plan (full layout, FP16 graph) and with
    --no-native the graph is stepped through ONNX Runtime."""
    wav = tmp_path / "o.wav"
    proc = run(host, "wn_generate", exports["plain-ring"], "-o", wav, "-n", 50, "--json", "--split", "rows")
    assert proc.stderr.splitlines()[0] == ("wn_generate: fused layer chain and head (fp32 weights), native loop, "
                                           "rows split (step.native.safetensors)")
    report = json.loads(proc.stdout)
    assert report["path"] == "native" and report["split"] == "rows" and report["samples"] == 50
    assert report["samples_per_s"] > 0 and 0 < report["step_ms_p50"] <= report["step_ms_p99"]
    for directory, args, why in ((exports["plain-full"], [], "the manifest has no native loop plan for graph 'step'"),
                                 (exports["plain-ring"], ["--graph", "step.fp16"], "no native loop plan for graph 'step.fp16'"),
                                 (exports["plain-ring"], ["--no-native"], "--no-native")):
        proc = run(host, "wn_generate", directory, "-o", wav, "-n", 20, "--json", *args)
        assert proc.stderr.splitlines()[0].startswith("wn_generate: onnxruntime per step (") and why in proc.stderr
        assert json.loads(proc.stdout)["path"] == "onnxruntime"
    proc = run(host, "wn_generate", exports["plain-ring"], "-o", wav, "-n", 20, "--split", "both", check=False)
    assert proc.returncode == 2 and "--split must be auto, alone, pipeline or rows" in proc.stderr


def test_bench_measures_the_cpp_host(host, exports):
    """`wn-export bench` has C++ rows (fp32 and w16 plans) when the host is built, judged against the same floor
    as the Python host's rows; none without the C++ host or for local conditioning."""
    from wn_export.bench import run as bench

    kw = dict(batches=(1, 2), seconds=0.02, rounds=2, min_steps=3, scoring=False, package_baseline=False,
              baseline_1thread=False)
    report = bench.run_bench(exports["speaker-ring"], cpp=host / "wn_generate", **kw)
    for b in (1, 2):
        for name, weights in ((bench.CPP, "fp32"), (f"{bench.CPP} (w16)", "w16")):
            row = report.get("step", name, b)
            assert row is not None and row.weights == weights and len(row.rounds) == 2, (name, b)
            assert row.samples_per_s > 0 and row.p50_ms > 0 and report.floor_share(row) is not None
            assert "native loop" in row.note and "(the Python host's split)" in row.note
    assert report.settings["cpp_host"] == str(host / "wn_generate")
    assert not [r for r in bench.run_bench(exports["speaker-ring"], cpp=False, **kw).results if bench.CPP in r.backend]
    assert not [r for r in bench.run_bench(exports["local-ring"], cpp=host / "wn_generate", **kw).results
                if bench.CPP in r.backend]


# ---- scoring --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["plain-ring", "local-ring"])
def test_score_matches_scoring_graph(host, exports, tmp_path, name):
    directory = exports[name]
    cfg = CONFIGS[name.split("-")[0]]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.quantization_channels, (2, 300)).astype(np.int64)
    tokens.tofile(tmp_path / "tokens.i64")
    args = ["--tokens", tmp_path / "tokens.i64", "--batch", 2, "--json"]
    cond = speaker = None
    if cfg.local:
        cond = rng.standard_normal((2, cfg.local_channels, 300)).astype(np.float32)
        cond.tofile(tmp_path / "cond.f32")
        speaker = np.array([1, 0])
        args += ["--cond", tmp_path / "cond.f32", "--speaker", "1,0"]
    result = json.loads(run(host, "wn_score", directory, *args).stdout)
    with OrtScoringRunner(read_manifest(directory)) as runner:
        log_prob = runner.infer(tokens, cond, speaker)["log_prob"].astype(np.float64)
    assert result["batch"] == 2 and result["time"] == 300
    assert abs(result["mean_log_likelihood"] - log_prob.mean()) < 1e-5
    np.testing.assert_allclose(result["per_stream"], log_prob.mean(axis=1), atol=1e-5)


def test_score_wav_uses_mulaw_tokens(host, exports, tmp_path):
    directory = exports["plain-full"]
    cpp, wav = cpp_generate(host, directory, tmp_path, 200, 1, "--seed", 3)
    result = json.loads(run(host, "wn_score", directory, "--wav", wav, "--json").stdout)
    with OrtScoringRunner(read_manifest(directory)) as runner:
        log_prob = runner.infer(cpp)["log_prob"].astype(np.float64)  # μ-law round trip is lossless
    assert abs(result["mean_log_likelihood"] - log_prob.mean()) < 1e-5


# ---- TensorRT backend: compiled against real headers ------------------------------------------------------
def _cache(var: str) -> str:
    for line in (BUILD / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(f"{var}:"):
            return line.split("=", 1)[1]
    raise AssertionError(f"{var} is not in the CMake cache")


def test_tensorrt_backend_compiles_against_kernel_lens_headers(host):
    assert _cache("WN_WITH_TENSORRT") == "ON"
    include = Path(_cache("WN_TRT_INCLUDE"))
    if _cache("WN_TRT_LIBRARY").endswith("NOTFOUND"):  # no TensorRT installed: the fetched headers
        assert include == HOST / "third_party" / "tensorrt" / "include"  # from PyPI kernel-lens
        assert "TRT_MAJOR_ENTERPRISE 10" in (include / "NvInferVersion.h").read_text()
    proc = subprocess.run(["cmake", "--build", str(BUILD), "--target", "wn_trt_backend"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objects = {p.name for p in BUILD.rglob("*.o") if "wn_trt_backend" in str(p)}
    assert "trt_backend.cpp.o" in objects


@pytest.mark.parametrize("snippet, ok", [
    ("ctx->setTensorAddress(\"x\", nullptr); return ctx->enqueueV3(s) ? 0 : 1;", True),
    ("return ctx->enqueueV2(nullptr, s, nullptr) ? 0 : 1;", False),  # removed in TensorRT 10
    ("return ctx->setInputShape(\"x\", 3) ? 0 : 1;", False),  # Dims, not an int
])
def test_tensorrt_api_misuse_fails_to_compile(host, tmp_path, snippet, ok):
    """The compile check has teeth: the same headers reject what TensorRT 10 does not have."""
    src = tmp_path / "t.cpp"
    src.write_text("#include <NvInferRuntime.h>\n"
                   f"int f(nvinfer1::IExecutionContext* ctx, cudaStream_t s) {{ {snippet} }}\n")
    cxx = shutil.which("c++") or shutil.which("g++")
    proc = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-isystem", _cache("WN_TRT_INCLUDE"),
                           "-isystem", _cache("WN_CUDA_INCLUDE"), str(src)], capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stderr[-2000:]


def test_tensorrt_backend_without_library_is_a_clear_error(host, exports, tmp_path):
    if not _cache("WN_TRT_LIBRARY").endswith("NOTFOUND"):
        pytest.skip("this build links a TensorRT library")
    proc = run(host, "wn_generate", exports["plain-ring"], "-o", tmp_path / "x.wav", "-n", 10,
               "--backend", "tensorrt", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "no TensorRT backend" in proc.stderr


# ---- bad inputs ------------------------------------------------------------------------------------------
def _broken(kind: str, src: Path, tmp_path: Path) -> Path:
    d = tmp_path / kind
    if kind == "missing-dir":
        return d
    if kind == "no-manifest":
        d.mkdir()
        return d
    shutil.copytree(src, d)
    manifest = json.loads((d / "manifest.json").read_text())
    if kind == "renamed-input":
        manifest["graphs"]["step"]["inputs"][0]["name"] = "token_renamed"
    elif kind == "missing-graph":
        (d / manifest["graphs"]["step"]["file"]).unlink()
    elif kind == "modified-graph":
        with open(d / manifest["graphs"]["step"]["file"], "ab") as f:
            f.write(b"\0")
    elif kind == "bad-json":
        (d / "manifest.json").write_text("{not json")
        return d
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize("kind, message", [
    ("missing-dir", "does not exist"),
    ("no-manifest", "has no manifest.json"),
    ("bad-json", "is not valid JSON"),
    ("renamed-input", "manifest/graph mismatch in step.onnx"),
    ("missing-graph", "file step.onnx is missing"),
    ("modified-graph", "does not match the manifest's sha256"),
])
@pytest.mark.parametrize("program", ["wn_generate", "wn_score"])
def test_bad_export_directory_is_one_clear_line(host, exports, tmp_path, kind, message, program):
    directory = _broken(kind, exports["plain-ring"], tmp_path)
    if program == "wn_generate":  # renamed-input: ONNX Runtime's graph check (the native loop never opens the graph)
        args = ["-o", tmp_path / "out.wav", "-n", 10, *(["--no-native"] if kind == "renamed-input" else [])]
    else:
        np.zeros((1, 10), np.int64).tofile(tmp_path / "t.i64")
        args = ["--tokens", tmp_path / "t.i64"]
    proc = run(host, program, directory, *args, check=False)
    if program == "wn_score" and kind == "renamed-input":  # the scoring graph is intact
        assert proc.returncode == 0
        return
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("name, args, message, code", [
    ("local-ring", ["--speaker", 0], "conditioned models need --cond FILE", 1),
    ("speaker-ring", [], "pass --speaker ID", 1),
    ("speaker-ring", ["--speaker", 3], "speaker 3 is out of range", 1),
    ("plain-ring", ["--speaker", 0], "has no global conditioning", 1),
    ("plain-ring", ["--graph", "scoring"], "pick a step graph", 1),
    ("plain-ring", ["--graph", "nope"], "has no 'nope' graph", 1),
    ("plain-ring", ["--temperature", 0], "temperature must be > 0", 1),
    ("plain-ring", ["--bogus"], "unknown option --bogus", 2),
    ("plain-ring", ["--batch", 0], "--batch must be >= 1", 2),
    ("plain-ring", ["--backend", "tflite"], "--backend must be onnxruntime or tensorrt (got 'tflite')", 2),
])
def test_bad_generate_arguments_are_one_clear_line(host, exports, tmp_path, name, args, message, code):
    proc = run(host, "wn_generate", exports[name], "-o", tmp_path / "out.wav", "-n", 10, *args, check=False)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_wn_score_rejects_an_unknown_backend(host, exports, tmp_path):
    np.zeros((1, 10), np.int64).tofile(tmp_path / "t.i64")
    proc = run(host, "wn_score", exports["plain-ring"], "--tokens", tmp_path / "t.i64", "--backend", "tflite",
               check=False)
    assert proc.returncode == 2 and "--backend must be onnxruntime or tensorrt (got 'tflite')" in proc.stderr


def test_bad_cond_file_is_one_clear_line(host, exports, tmp_path):
    (tmp_path / "cond.f32").write_bytes(b"\0" * 10)
    proc = run(host, "wn_generate", exports["local-ring"], "-o", tmp_path / "o.wav", "-n", 10, "--speaker", 0,
               "--cond", tmp_path / "cond.f32", check=False)
    assert proc.returncode == 1 and "is not a whole number of float32" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
