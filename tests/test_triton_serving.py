"""Serving on Triton: the repository `wn-export triton` writes, the stream batcher behind the generation
model, and the real `tritonserver` (from nvidia-pytriton, python backend only) running the generation
model and a python copy of the step model on loopback. Every client call carries a timeout; every
server is stopped by a finaliser that kills its whole process group."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import CONFIGS, export_with_plan_in_plans
from wn_export.contract.manifest import read_manifest
from wn_export.generation import Generator

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient) is not installed")
mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")

N = 2600  # samples per stream: a few chunks of CHUNK
CHUNK = 1000
TIMEOUT = 60.0  # every client wait


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A small categorical model in the full layout (every model), the same model in the ring layout (the
    native loop's) and a conditioned one in the ring layout."""
    from reference_model import save_checkpoint
    from tests.conftest import random_model
    from wn_export.export.pipeline import export_directory

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, cfg, layout in (("small", CONFIGS["k2"], "full"), ("ring", CONFIGS["k2"], "ring"),
                              ("cond", CONFIGS["conditioned"], "ring")):
        ckpt = root / f"{name}.safetensors"
        save_checkpoint(random_model(cfg, seed=1), ckpt)
        export_directory(root / name, ckpt, layout=layout, fp16=name == "small")
        out[name] = root / name
    return out


# ---- the repository -------------------------------------------------------------------------------------
def _config(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), mc.ModelConfig())


TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64}


def _expect_tensor(t, tensor):
    """A config tensor against its manifest record (independently of the writer's mapping)."""
    assert t.name == tensor.name and t.data_type == TYPES[tensor.dtype]
    rest = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
    assert tensor.shape[0] == "batch"
    assert list(t.dims) == (rest or [1])
    assert t.HasField("reshape") == (not rest) and not list(t.reshape.shape)


def _check_repository(repo, manifest, *, max_batch, backend="onnxruntime", precision="fp32"):
    step_name, scoring_name = ("step", "scoring") if precision == "fp32" else ("step.fp16", "scoring.fp16")
    step = _config(repo / "step" / "config.pbtxt")
    graph = manifest.graph(step_name)
    platform = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
    assert step.platform == platform and step.max_batch_size == max_batch
    states = {s.input: s for s in graph.state}
    outs = {s.output for s in graph.state}
    assert [t.name for t in step.input] == [t.name for t in graph.inputs if t.name not in states]
    for t, tensor in zip(step.input, [t for t in graph.inputs if t.name not in states]):
        _expect_tensor(t, tensor)
    assert [t.name for t in step.output] == [t.name for t in graph.outputs if t.name not in outs]
    for t, tensor in zip(step.output, [t for t in graph.outputs if t.name not in outs]):
        _expect_tensor(t, tensor)
    seq = step.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest"
    assert seq.oldest.max_candidate_sequences == max_batch
    assert len(seq.state) == len(graph.state) > 0
    for st, s in zip(seq.state, graph.state):
        assert (st.input_name, st.output_name) == (s.input, s.output)
        assert st.data_type == TYPES[s.dtype] and list(st.dims) == list(s.shape[1:])
        (init,) = st.initial_state
        assert init.data_type == st.data_type and list(init.dims) == list(s.shape[1:])
        assert init.zero_data == (s.init == 0.0)
    kinds = {c.name: (c.control[0].kind, c.control[0].data_type, list(c.control[0].int32_false_true))
             for c in seq.control_input}
    K = mc.ModelSequenceBatching.Control
    if backend == "onnxruntime":
        assert kinds == {"START": (K.CONTROL_SEQUENCE_START, 0, [0, 1]), "END": (K.CONTROL_SEQUENCE_END, 0, [0, 1]),
                         "READY": (K.CONTROL_SEQUENCE_READY, 0, [0, 1]),
                         "CORRID": (K.CONTROL_SEQUENCE_CORRID, mc.TYPE_UINT64, [])}
    else:
        assert kinds == {}  # a TensorRT engine has no control inputs
    scoring = _config(repo / "scoring" / "config.pbtxt")
    sgraph = manifest.graph(scoring_name)
    assert scoring.platform == platform and scoring.max_batch_size == max_batch
    assert scoring.HasField("dynamic_batching")
    for t, tensor in zip(scoring.input, sgraph.inputs, strict=True):
        _expect_tensor(t, tensor)
    for t, tensor in zip(scoring.output, sgraph.outputs, strict=True):
        _expect_tensor(t, tensor)
    return step, scoring


def _check_generate(repo, manifest, prefix="", backend="auto"):
    gen = _config(repo / f"{prefix}generate" / "config.pbtxt")
    cfg = manifest.config
    assert gen.backend == "python" and gen.model_transaction_policy.decoupled and gen.max_batch_size == 0
    inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in gen.input}
    expected = {"samples": (mc.TYPE_INT64, [1], False), "seed": (mc.TYPE_UINT64, [1], True),
                "temperature": (mc.TYPE_FP64, [1], True), "method": (mc.TYPE_STRING, [1], True),
                "streams": (mc.TYPE_INT64, [1], True), "stream": (mc.TYPE_INT64, [1], True)}
    if cfg.global_:
        expected["speaker"] = (mc.TYPE_INT64, [1], True)
    if cfg.local:
        expected["conditioning"] = (mc.TYPE_FP32, [-1], True)
    assert inputs == expected
    assert {t.name for t in gen.output} == {"audio", "offset", "tokens"}
    assert gen.parameters["sample_rate"].string_value == str(cfg.sample_rate)
    assert gen.parameters["generation_backend"].string_value == backend
    copied = read_manifest(repo / f"{prefix}generate" / "1" / "export")  # sha256 of every graph verified
    assert copied.data == manifest.data
    return gen


def _with_step_engine(source, target):
    """A copy of an export whose manifest records an FP32 step engine (bytes that no TensorRT loads)."""
    from wn_export.contract.manifest import sha256

    shutil.copytree(source, target)
    data = json.loads((target / "manifest.json").read_text())
    (target / "step.plan").write_bytes(b"engine bytes of step")
    first = data["graphs"]["step"]["inputs"][0]["name"]
    data["engines"] = {"step": {"file": "step.plan", "graph": "step", "sha256": sha256(target / "step.plan"),
                                "backend": "tensorrt", "precision": "fp32",
                                "profiles": [{first: {"min": [1], "opt": [4], "max": [8]}}]}}
    (target / "manifest.json").write_text(json.dumps(data))
    return target


def test_generation_backend_is_recorded_with_what_its_host_needs(exports, tmp_path):
    """--generation-backend goes into the generate model's parameters; the export copy carries the FP32 step
    engine (auto, tensorrt) or the checkpoint (triton); a backend the export cannot serve is one line."""
    from wn_export.backends.torch_ref import recorded_checkpoint

    small = read_manifest(exports["small"])
    r = _run("triton", exports["small"], "-o", tmp_path / "k", "--models", "generate", "--generation-backend", "triton")
    assert r.exit_code == 0, r.output
    gen = _check_generate(tmp_path / "k", small, backend="triton")
    assert gen.parameters["checkpoint"].string_value == "checkpoint.safetensors"
    copied = tmp_path / "k" / "generate" / "1" / "export" / "checkpoint.safetensors"
    assert copied.read_bytes() == recorded_checkpoint(small).read_bytes()
    engine = _with_step_engine(exports["small"], tmp_path / "engine")
    for backend in ("auto", "tensorrt", "onnxruntime"):
        r = _run("triton", engine, "-o", tmp_path / backend, "--models", "generate", "--generation-backend", backend)
        assert r.exit_code == 0, r.output
        _check_generate(tmp_path / backend, read_manifest(engine), backend=backend)
        plan = tmp_path / backend / "generate" / "1" / "export" / "step.plan"
        assert plan.is_file() == (backend != "onnxruntime")
    r = _run("triton", exports["small"], "-o", tmp_path / "no", "--models", "generate", "--generation-backend", "tensorrt")
    assert r.exit_code == 1 and "has no TensorRT engine for 'step'" in r.output and "Traceback" not in r.output
    data = json.loads((engine / "manifest.json").read_text())
    data["source"]["checkpoint"] = str(tmp_path / "gone.safetensors")
    (engine / "manifest.json").write_text(json.dumps(data))
    r = _run("triton", engine, "-o", tmp_path / "no", "--models", "generate", "--generation-backend", "triton")
    assert r.exit_code == 1 and "cannot find the checkpoint" in r.output and "Traceback" not in r.output
    r = _run("triton", engine, "-o", tmp_path / "no", "--generation-backend", "cuda")
    assert r.exit_code == 2 and "'cuda' is not one of" in r.output
    assert not (tmp_path / "no").exists()


def test_auto_takes_tensorrt_with_an_engine_and_a_gpu_else_onnxruntime(exports, tmp_path):
    from wn_export.errors import InputError
    from wn_export.serving.service import choose_backend

    def never():
        raise AssertionError("the GPU is asked about only when the manifest has a step engine")

    small = read_manifest(exports["small"])
    engine = read_manifest(_with_step_engine(exports["small"], tmp_path / "engine"))
    assert choose_backend(small, "auto", never) == "onnxruntime"
    assert choose_backend(engine, "auto", lambda: True) == "tensorrt"
    assert choose_backend(engine, "auto", lambda: False) == "onnxruntime"
    for backend in ("onnxruntime", "tensorrt", "triton"):
        assert choose_backend(small, backend, never) == backend
    with pytest.raises(InputError, match="unknown generation backend 'cuda'"):
        choose_backend(small, "cuda")


def test_a_host_that_cannot_load_fails_or_auto_falls_back_to_onnxruntime(exports, tmp_path, monkeypatch):
    """An explicit backend that cannot load is one error; auto's tensorrt host falls back and says why."""
    import wn_export.serving.service as service_module
    from wn_export.errors import BackendError
    from wn_export.serving.service import GenerationService

    engine = _with_step_engine(exports["small"], tmp_path / "engine")
    with pytest.raises(BackendError, match="the tensorrt generation host cannot load: "):
        GenerationService(engine, backend="tensorrt")
    monkeypatch.setattr(service_module, "has_gpu", lambda: True)  # auto then picks the (unloadable) engine
    service = GenerationService(engine, chunk=100)
    assert service.backend == "onnxruntime" and service.setup.startswith("onnxruntime")
    assert service.notice.startswith("auto: the tensorrt host cannot load (") and "generating with onnxruntime" in service.notice
    sink = _Collect()
    service.submit(service.parse({"samples": np.array([250]), "seed": np.array([4], np.uint64),
                                  "streams": np.array([2]), "stream": np.array([1])}), sink)
    while service.batcher.busy:
        service.batcher.step_burst()
    service.close()
    with Generator(exports["small"]) as gen:
        assert sink.error is None and np.array_equal(sink.values, gen.generate(250, batch=2, seed=4)[1])


def test_streams_on_the_triton_kernel_draw_what_generate_draws(exports):
    """The generation service on the fused kernel (Triton's interpreter): streams join a running batch, leave,
    wait for a row, mix settings; each stream's tokens equal `generate`'s for its seed on that backend."""
    from wn_export.serving.service import GenerationService

    service = GenerationService(exports["small"], backend="triton", max_streams=3, chunk=7)
    assert service.backend == "triton" and service.setup == "triton" and not service.notice
    batcher = service.batcher
    requests = {"a": (24, dict(seed=3)), "b": (19, dict(seed=4, temperature=0.7)),
                "c": (12, dict(seed=5, method="greedy")), "d": (10, dict(seed=6))}
    sinks = {name: _Collect() for name in requests}
    assert batcher.min_rows == 1  # the kernel's rows do not depend on the batch: a lone stream runs alone
    for name, (n, options) in requests.items():
        batcher.submit(batcher.validate(n, **options), sinks[name])
        if name in "ab":
            batcher.step_burst()  # the next one joins a running batch
            assert batcher.runner.batch == {"a": 1, "b": 2}[name]
    batcher.step_burst()
    assert [s.sink for s in batcher.waiting] == [sinks["d"]]  # d waits for a free row
    while batcher.busy:
        batcher.step_burst()
    assert batcher.native  # every burst ran in the kernel's blocks (generate_block), none fell back to steps
    service.close()
    with Generator(exports["small"], "triton") as gen:
        for name, (n, options) in requests.items():
            assert sinks[name].error is None and sinks[name].offsets[0] == 0, name
            assert np.array_equal(sinks[name].values, gen.generate(n, **options)[0]), name


def test_repository_configs_parse_and_match_the_manifest(exports, tmp_path):
    manifest = read_manifest(exports["small"])
    r = _run("triton", exports["small"], "-o", tmp_path / "repo", "--max-batch", 8, "--instances", 2)
    assert r.exit_code == 0, r.output
    repo = tmp_path / "repo"
    step, scoring = _check_repository(repo, manifest, max_batch=8)
    assert [g.count for g in step.instance_group] == [2] and step.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    _check_generate(repo, manifest)
    assert (repo / "scoring" / "1" / "model.onnx").read_bytes() == manifest.graph("scoring").path.read_bytes()
    readme = (repo / "README.md").read_text()
    assert "docker run --gpus all" in readme and "tritonserver --model-repository=/models" in readme
    assert "wn-export triton-client grpc://" in readme and "KIND_GPU" in readme
    # fp16 graphs: float16 state pairs
    r = _run("triton", exports["small"], "-o", tmp_path / "fp16", "--precision", "fp16", "--models", "step,scoring")
    assert r.exit_code == 0, r.output
    step16, _ = _check_repository(tmp_path / "fp16", manifest, max_batch=16, precision="fp16")
    assert step16.sequence_batching.state[0].data_type == mc.TYPE_FP16
    # the conditioned model: speaker (reshaped to a scalar) and cond inputs, ring layout → no step model
    cond = read_manifest(exports["cond"])
    r = _run("triton", exports["cond"], "-o", tmp_path / "cond", "--models", "generate,scoring", "--prefix", "c_")
    assert r.exit_code == 0, r.output
    _check_generate(tmp_path / "cond", cond, "c_")
    scoring = _config(tmp_path / "cond" / "c_scoring" / "config.pbtxt")
    assert scoring.name == "c_scoring"
    for t, tensor in zip(scoring.input, cond.graph("scoring").inputs, strict=True):
        _expect_tensor(t, tensor)


def test_tensorrt_repository_takes_batch_limits_from_the_engine_profile(exports, tmp_path):
    """An engine recorded in the manifest (its bytes are copied as they are; Triton deserialises it)."""
    src = tmp_path / "export"
    shutil.copytree(exports["small"], src)
    data = json.loads((src / "manifest.json").read_text())
    engines = {}
    for name in ("step", "scoring"):
        (src / f"{name}.plan").write_bytes(f"engine bytes of {name}".encode())
        first = data["graphs"][name]["inputs"][0]["name"]
        engines[name] = {"file": f"{name}.plan", "graph": name, "sha256": "0" * 64, "backend": "tensorrt",
                         "precision": "fp32", "profiles": [{first: {"min": [1], "opt": [4], "max": [8]}}]}
    data["engines"] = engines
    (src / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(src)
    r = _run("triton", src, "-o", tmp_path / "repo", "--backend", "tensorrt", "--models", "step,scoring")
    assert r.exit_code == 0, r.output
    step, _ = _check_repository(tmp_path / "repo", manifest, max_batch=8, backend="tensorrt")
    assert step.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "step" / "1" / "model.plan").read_bytes() == b"engine bytes of step"
    r = _run("triton", src, "-o", tmp_path / "big", "--backend", "tensorrt", "--models", "step", "--max-batch", 9)
    assert r.exit_code == 1 and "exceeds the step engine's profile (8)" in r.output and not (tmp_path / "big").exists()
    data["engines"]["step"]["backend"] = "tensorrt-rtx"
    (src / "manifest.json").write_text(json.dumps(data))
    r = _run("triton", src, "-o", tmp_path / "rtx", "--backend", "tensorrt", "--models", "step")
    assert r.exit_code == 1 and "built with tensorrt-rtx" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("name", ["step", "step.fp16"])
def test_step_graph_with_sequence_controls_computes_the_exported_step(exports, name):
    """START resets every state to its initial value inside the graph; with START = 0 the graph is the step."""
    import onnxruntime as ort

    from wn_export.serving.triton_repo import sequence_step_graph

    graph = read_manifest(exports["small"]).graph(name)
    plain = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    seq = ort.InferenceSession(sequence_step_graph(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    assert {i.name for i in seq.get_inputs()} == {i.name for i in plain.get_inputs()} | {"START", "END", "READY",
                                                                                          "CORRID"}
    rng = np.random.default_rng(0)
    B = 3
    feeds = {"token": rng.integers(0, 32, B)}
    for s in graph.state:
        feeds[s.input] = rng.normal(size=(B, *s.shape[1:])).astype(s.dtype)
    controls = {"END": np.zeros((B, 1), np.int32), "READY": np.ones((B, 1), np.int32),
                "CORRID": np.arange(B, dtype=np.uint64)[:, None]}
    start = np.array([[0], [1], [0]], np.int32)
    got = seq.run(None, {**feeds, **controls, "START": start})
    want = plain.run(None, feeds)
    zero = plain.run(None, {**feeds, **{s.input: np.zeros_like(feeds[s.input]) for s in graph.state}})
    for g, w, z in zip(got, want, zero):
        assert np.array_equal(g[[0, 2]], w[[0, 2]])  # continuing rows: the step itself
        assert np.array_equal(g[1], z[1])  # the starting row: the step from the initial state
    assert not np.array_equal(got[0][1], want[0][1])  # (the logits depend on the state that START dropped)


def test_cli_refuses_bad_requests_with_one_line_and_writes_nothing(exports, tmp_path):
    r = _run("triton", exports["cond"], "-o", tmp_path / "repo")  # ring layout and the step model
    assert r.exit_code == 1 and "--state-layout full" in r.output and "--models generate,scoring" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "repo").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left either
    r = _run("triton", exports["small"], "-o", tmp_path / "repo", "--models", "generate,bogus")
    assert r.exit_code == 1 and "unknown model(s) bogus" in r.output
    assert _run("triton", exports["small"], "-o", tmp_path / "repo", "--models", "scoring").exit_code == 0
    before = (tmp_path / "repo" / "scoring" / "config.pbtxt").read_text()
    r = _run("triton", exports["small"], "-o", tmp_path / "repo", "--models", "step")
    assert r.exit_code == 1 and "exists" in r.output and "--overwrite" in r.output
    assert (tmp_path / "repo" / "scoring" / "config.pbtxt").read_text() == before
    r = _run("triton", exports["small"], "-o", tmp_path / "repo", "--models", "step", "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.md", "step"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    r = _run("triton-client", "ftp://x:1", "-n", 10, "-o", tmp_path / "a.wav")
    assert r.exit_code == 1 and "grpc://HOST:PORT or http://HOST:PORT" in r.output
    r = _run("triton-serve", tmp_path / "repo")  # only python-backend models run on nvidia-pytriton's server
    assert r.exit_code == 1 and "has no python-backend model" in r.output and "Traceback" not in r.output


def _tree(root):
    """Every file under root with its bytes' sha256 (what a command must leave alone)."""
    from wn_export.contract.manifest import sha256

    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_what_the_command_reads_or_what_is_no_repository(exports, tmp_path):
    """--overwrite replaces OUTPUT whole: OUTPUT may not hold the export directory (or the triton host's
    checkpoint), and an existing OUTPUT must be a model repository. Refused before any work, nothing left."""
    parent = tmp_path / "parent"
    shutil.copytree(exports["ring"], parent / "exp")
    (parent / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    for output in (parent, tmp_path):
        r = _run("triton", parent / "exp", "-o", output, "--models", "generate", "--overwrite")
        assert r.exit_code == 1 and "which this command reads: --overwrite would delete it" in r.output, r.output
        assert _tree(tmp_path) == before
    checkpoint = tmp_path / "ckpt" / "m.safetensors"
    shutil.copytree(exports["ring"], tmp_path / "exp2")
    checkpoint.parent.mkdir()
    shutil.copy(json.loads((exports["ring"] / "manifest.json").read_text())["source"]["checkpoint"], checkpoint)
    before = _tree(tmp_path)
    r = _run("triton", tmp_path / "exp2", "-o", tmp_path / "ckpt", "--models", "generate", "--overwrite",
             "--generation-backend", "triton", "--checkpoint", checkpoint)
    assert r.exit_code == 1 and "holds" in r.output and "m.safetensors" in r.output, r.output
    assert _tree(tmp_path) == before
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.bin").write_bytes(b"x")
    before = _tree(tmp_path)
    r = _run("triton", tmp_path / "exp2", "-o", tmp_path / "plain", "--models", "generate", "--overwrite")
    assert r.exit_code == 1 and "refusing to replace" in r.output and "data.bin is neither README.md" in r.output
    assert _tree(tmp_path) == before and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "exp2", "parent", "plain"]  # no staging left
    r = _run("triton", tmp_path / "exp2", "-o", tmp_path / "repo", "--models", "generate")
    assert r.exit_code == 0, r.output
    r = _run("triton", tmp_path / "exp2", "-o", tmp_path / "repo", "--models", "generate", "--overwrite")
    assert r.exit_code == 0, r.output  # a repository it wrote is replaced


@pytest.mark.parametrize("output, message", [
    ("x" * 300, "longer than the file system allows"),
    ("/proc/repo", "cannot write /proc/repo"),
    ("file/repo", "is not a directory"),
], ids=["name-too-long", "unwritable", "below-a-file"])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(exports, tmp_path, monkeypatch, output, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    r = _run("triton", exports["ring"], "-o", output, "--models", "generate")
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_manifest_files_in_sub_folders_are_copied(exports, tmp_path):
    """A manifest may keep its files in sub-folders of the directory; the generate model's copy keeps them there
    and reads as the original does."""
    d, data, rec = export_with_plan_in_plans(exports["ring"], tmp_path / "exp")
    (d / "graphs").mkdir()
    (d / "step.onnx").rename(d / "graphs" / "step.onnx")
    data["graphs"]["step"]["file"] = "graphs/step.onnx"
    (d / "manifest.json").write_text(json.dumps(data))
    r = _run("triton", d, "-o", tmp_path / "repo", "--models", "generate")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    copy = read_manifest(tmp_path / "repo" / "generate" / "1" / "export")
    assert copy.native_loops["step"].path.read_bytes() == (d / rec["file"]).read_bytes()
    assert copy.graph("step").path.read_bytes() == (d / "graphs" / "step.onnx").read_bytes()


def test_a_moved_checkpoint_is_given_with_checkpoint(exports, tmp_path):
    """The triton generation host's checkpoint: the recorded one, or --checkpoint (of the manifest's config) when it
    moved; --checkpoint where no triton host runs is an error."""
    from wn_export.backends.torch_ref import recorded_checkpoint

    d = shutil.copytree(exports["ring"], tmp_path / "exp")
    moved = shutil.copy(recorded_checkpoint(read_manifest(d)), tmp_path / "moved.safetensors")
    data = json.loads((d / "manifest.json").read_text())
    data["source"]["checkpoint"] = str(tmp_path / "gone.safetensors")
    (d / "manifest.json").write_text(json.dumps(data))
    args = ["triton", d, "--models", "generate", "--generation-backend", "triton"]
    r = _run(*args, "-o", tmp_path / "no")
    assert r.exit_code == 1 and "pass it with --checkpoint" in r.output
    r = _run(*args, "-o", tmp_path / "repo", "--checkpoint", moved)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "repo" / "generate" / "1" / "export" / "checkpoint.safetensors").read_bytes() == \
        Path(moved).read_bytes()
    other = json.loads((exports["cond"] / "manifest.json").read_text())["source"]["checkpoint"]
    r = _run(*args, "-o", tmp_path / "no", "--checkpoint", other)
    assert r.exit_code == 1 and "has a different config" in r.output
    r = _run("triton", d, "--models", "generate", "-o", tmp_path / "no", "--checkpoint", moved)
    assert r.exit_code == 1 and "it needs --generation-backend triton" in r.output
    assert not (tmp_path / "no").exists()


# ---- the stream batcher, in process -----------------------------------------------------------------------
class _Collect:
    def __init__(self):
        self.chunks, self.offsets, self.error, self.done = [], [], None, False
        self.cancel = False

    def chunk(self, offset, values):
        self.offsets.append(offset)
        self.chunks.append(np.array(values, copy=True))

    def finish(self, error=None):
        self.done, self.error = True, error

    def cancelled(self):
        return self.cancel

    @property
    def values(self):
        return np.concatenate(self.chunks)


@pytest.mark.parametrize("layout", ["ring", "full"])
def test_batched_streams_draw_what_generate_draws(exports, tmp_path, layout, checkpoint_factory):
    """Streams joining at different steps, with different settings, each equal `generate`'s tokens."""
    from wn_export.export.pipeline import export_directory
    from wn_export.serving.streams import StreamBatcher

    directory = exports["small"]
    if layout == "ring":
        directory = tmp_path / "ring"
        export_directory(directory, checkpoint_factory(CONFIGS["k2"], seed=1), layout="ring")
    batcher = StreamBatcher(Generator(directory), max_streams=6, chunk=333)  # regroups at odd positions
    sinks = {}
    for k in range(8):  # 8 streams of one 8-stream generation, more than fit in a batch: two wait
        sinks[k] = _Collect()
        batcher.submit(batcher.validate(1000, seed=5, streams=8, index=k), sinks[k])
        if k % 3 == 0:
            batcher.step_burst()  # they join a running batch
    extra = {"one": dict(seed=11), "greedy": dict(method="greedy"), "cold": dict(seed=2, temperature=0.6)}
    for name, options in extra.items():
        sinks[name] = _Collect()
        batcher.submit(batcher.validate(700, **options), sinks[name])
    while batcher.busy:
        batcher.step_burst()
    with Generator(directory) as gen:
        batch8 = gen.generate(1000, batch=8, seed=5)
        for k in range(8):
            assert sinks[k].done and sinks[k].error is None
            assert np.array_equal(sinks[k].values, batch8[k]), k
            assert sinks[k].offsets == [0, 333, 666, 999] and [len(c) for c in sinks[k].chunks] == [333] * 3 + [1]
        for name, options in extra.items():
            assert np.array_equal(sinks[name].values, gen.generate(700, **options)[0]), name


def test_a_lone_stream_runs_in_a_padded_batch(exports):
    """One stream never runs at batch 1 (ONNX Runtime's one-row kernels round differently from its batched
    ones), so its tokens do not depend on whether others run beside it."""
    from wn_export.serving.streams import StreamBatcher

    batcher = StreamBatcher(Generator(exports["small"]), chunk=100)
    sink = _Collect()
    batcher.submit(batcher.validate(300, seed=9, streams=2, index=1), sink)
    batcher.step_burst()
    assert batcher.runner.batch == 2
    while batcher.busy:
        batcher.step_burst()
    with Generator(exports["small"]) as gen:
        assert np.array_equal(sink.values, gen.generate(300, batch=2, seed=9)[1])


@pytest.mark.parametrize("name", ["ibab-scalar-w5", "scalar-mulaw-mol-w3"])
def test_scalar_input_and_mixture_models_batch_like_generate(tmp_path, name):
    """Scalar-input models feed back the decoded sample; mixture models draw two uniforms per sample."""
    from reference_model import save_checkpoint
    from tests.conftest import random_model
    from tests.test_variants import VARIANTS
    from wn_export.export.pipeline import export_directory
    from wn_export.serving.streams import StreamBatcher

    cfg = VARIANTS[name]
    save_checkpoint(random_model(cfg, seed=2), tmp_path / "m.safetensors")
    export_directory(tmp_path / "x", tmp_path / "m.safetensors")
    features = np.random.default_rng(0).normal(size=(3, cfg.local_channels, 300)).astype(np.float32) \
        if cfg.local else None
    speakers = [1, 0, 1] if cfg.global_ else None
    batcher = StreamBatcher(Generator(tmp_path / "x"), chunk=111)
    sinks = [_Collect() for _ in range(3)]
    for i, sink in enumerate(sinks):
        batcher.submit(batcher.validate(400, seed=6, streams=3, index=i, temperature=0.9,
                                        features=None if features is None else features[i],
                                        speaker=None if speakers is None else speakers[i]), sink)
        batcher.step_burst()
    while batcher.busy:
        batcher.step_burst()
    with Generator(tmp_path / "x") as gen:
        want = gen.generate(400, batch=3, seed=6, temperature=0.9, features=features, speaker=speakers)
    for i, sink in enumerate(sinks):
        assert sink.values.dtype == want.dtype and np.array_equal(sink.values, want[i]), i


def test_conditioned_streams_and_cancellation(exports):
    from wn_export.serving.streams import StreamBatcher

    cfg = CONFIGS["conditioned"]
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2, cfg.local_channels, 200)).astype(np.float32)
    batcher = StreamBatcher(Generator(exports["cond"]), chunk=128)
    sinks = [_Collect() for _ in range(3)]
    for i in range(2):
        batcher.submit(batcher.validate(500, seed=4, features=features[i], speaker=[2, 0][i], streams=2, index=i),
                       sinks[i])
    batcher.submit(batcher.validate(800, seed=4, features=features[0], speaker=1), sinks[2])
    sinks[2].cancel = True  # the client goes away: the stream ends after its first chunk
    while batcher.busy:
        batcher.step_burst()
    with Generator(exports["cond"]) as gen:
        want = gen.generate(500, batch=2, seed=4, features=features, speaker=[2, 0])
    for i in range(2):
        assert np.array_equal(sinks[i].values, want[i])
    assert sinks[2].done and sinks[2].error == "cancelled by the client" and len(sinks[2].values) == 128


def test_a_failing_step_ends_its_streams_with_an_error_and_the_loop_goes_on(exports):
    from wn_export.serving.streams import StreamBatcher

    batcher = StreamBatcher(Generator(exports["small"]), chunk=100)
    step, calls = batcher.runner.step, []

    def broken(*args):
        calls.append(1)
        if len(calls) == 150:
            raise RuntimeError("device lost")
        return step(*args)
    batcher.runner.step = broken
    stop = threading.Event()
    thread = threading.Thread(target=batcher.serve, args=(stop,))
    thread.start()
    try:
        sinks = [_Collect() for _ in range(3)]
        for sink in sinks[:2]:
            batcher.submit(batcher.validate(400, seed=1), sink)
        deadline = time.monotonic() + TIMEOUT
        while not all(s.done for s in sinks[:2]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [s.error for s in sinks[:2]] == ["generation failed: RuntimeError: device lost"] * 2
        batcher.submit(batcher.validate(250, seed=2), sinks[2])  # the next request is served
        while not sinks[2].done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sinks[2].error is None and len(sinks[2].values) == 250
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_a_broken_sink_ends_only_its_own_stream(exports):
    from wn_export.serving.streams import StreamBatcher

    class Broken(_Collect):
        def chunk(self, offset, values):
            raise ConnectionError("peer gone")

    batcher = StreamBatcher(Generator(exports["small"]), chunk=100)
    sinks = [_Collect(), Broken(), _Collect()]
    for sink in sinks:
        batcher.submit(batcher.validate(300, seed=3, streams=3, index=sinks.index(sink)), sink)
    while batcher.busy:
        batcher.step_burst()
    assert sinks[1].error == "sending failed: ConnectionError: peer gone"
    with Generator(exports["small"]) as gen:
        want = gen.generate(300, batch=3, seed=3)
    for i in (0, 2):
        assert sinks[i].error is None and np.array_equal(sinks[i].values, want[i])


def test_the_client_checks_its_output_first_and_what_the_server_sends(tmp_path, monkeypatch):
    """triton-client: an output it could not write is refused before the request (not after the stream); a server
    that sends more samples than asked, or audio of another shape, is a ServingError (the WAV is not written)."""
    from reference_model.errors import OutputError
    from wn_export.serving import client
    from wn_export.serving.client import Chunk, ServingError, generate_wav

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(client, "sample_rate", lambda *a, **k: pytest.fail("the server was asked first"))
    with pytest.raises(OutputError, match="is not a directory"):
        generate_wav("grpc://127.0.0.1:9", tmp_path / "file" / "a.wav", 10)
    r = _run("triton-client", "grpc://127.0.0.1:9", "-n", 10, "-o", tmp_path / "file" / "a.wav")
    assert r.exit_code == 1 and "is not a directory" in r.output and "Traceback" not in r.output
    monkeypatch.setattr(client, "sample_rate", lambda *a, **k: 16000)
    for chunks in ([Chunk(0, np.zeros(8, np.float32), None), Chunk(8, np.zeros(8, np.float32), None)],
                   [Chunk(0, np.zeros((2, 5), np.float32), None)]):
        monkeypatch.setattr(client, "_grpc", lambda *a, chunks=chunks: iter(chunks))
        with pytest.raises(ServingError, match="does not fit the 10 samples asked for"):
            generate_wav("grpc://127.0.0.1:9", tmp_path / "a.wav", 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_service_rejects_malformed_inputs_with_one_message(exports):
    from wn_export.errors import InputError
    from wn_export.serving.service import GenerationService

    service = GenerationService(exports["cond"], max_samples=1000)
    f = np.zeros((3, 100), np.float32)
    good = {"samples": np.array([400]), "speaker": np.array([1]), "conditioning": f}
    assert service.parse(good).request.n == 400
    cases = [({}, "missing input 'samples'"),
             ({**good, "samples": np.array([5001])}, "samples must lie in [1, 1,000]"),
             ({**good, "samples": np.array([4.0])}, "input 'samples' has dtype float64, expected int64"),
             ({**good, "samples": np.array([1, 2])}, "input 'samples' must hold one value"),
             ({**good, "speaker": np.array([3])}, "speaker ids must lie in [0, 2]"),
             ({**good, "speaker": None}, "needs a speaker id"),
             ({**good, "method": np.array([b"beam"], dtype=object)}, "unknown sampling method 'beam'"),
             ({**good, "temperature": np.array([0.0])}, "temperature must be a finite number >= 1e-06"),
             ({**good, "conditioning": np.zeros((2, 100), np.float32)}, "must hold (3, frames) features"),
             ({**good, "conditioning": np.zeros(301, np.float32)}, "must hold (3, frames) features"),
             ({**good, "conditioning": np.zeros((3, 100))}, "has dtype float64, expected float32"),
             ({**good, "conditioning": np.zeros((3, 10), np.float32)}, "fewer than the 400 samples"),
             ({**good, "stream": np.array([2]), "streams": np.array([2])}, "stream must lie in [0, streams)")]
    for inputs, message in cases:
        with pytest.raises(InputError, match=None) as e:
            service.parse(inputs)
        assert message in str(e.value), (message, str(e.value))
    service.close()


# ---- the real server --------------------------------------------------------------------------------------
STEP_TWIN = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The step model's config under the python backend: echoes what Triton's core delivers."""

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                t = pb_utils.get_input_tensor_by_name(request, name)
                return None if t is None else t.as_numpy().astype(np.float64).reshape(-1)
            token = get("token")
            out = np.zeros((token.size, QUANT), np.float32)
            for j, name in enumerate(["START", "END", "READY", "CORRID", "token"]):
                out[:, j] = get(name)
            state = get("state.0")  # implicit state: the initial value at START (the backend keeps no updates)
            out[:, 5], out[:, 6] = state.size / token.size, np.abs(state).sum()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", out)]))
        return responses
'''


def _step_twin(repo, twin_root):
    """A copy of the step model with the python backend and KIND_CPU, loaded by the real server."""
    from google.protobuf import text_format

    cfg = _config(repo / "step" / "config.pbtxt")
    cfg.name, cfg.platform, cfg.backend, cfg.default_model_filename = "step_python", "", "python", ""
    del cfg.instance_group[:]
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    cfg.parameters["EXECUTION_ENV_PATH"].string_value = sys.prefix  # numpy for the stub
    model = twin_root / "step_python"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    quant = cfg.output[0].dims[0]
    (model / "1" / "model.py").write_text(STEP_TWIN.replace("QUANT", str(quant)))


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    """tritonserver with the small model's generate model, the ring export's (prefix ring_), the conditioned
    one's (prefix cond_) and the step model's python twin. Stopped (process group killed) by the finaliser."""
    from wn_export.serving.local_server import LocalTriton

    root = tmp_path_factory.mktemp("repos")
    assert _run("triton", exports["small"], "-o", root / "small", "--chunk", CHUNK).exit_code == 0
    assert _run("triton", exports["cond"], "-o", root / "cond", "--models", "generate", "--prefix", "cond_",
                "--chunk", CHUNK).exit_code == 0
    assert _run("triton", exports["ring"], "-o", root / "ring", "--models", "generate", "--prefix", "ring_",
                "--chunk", CHUNK).exit_code == 0
    _step_twin(root / "small", root / "twin")
    server = LocalTriton([root / "small", root / "ring", root / "cond", root / "twin"],
                         models=["generate", "ring_generate", "cond_generate", "step_python"], startup_timeout=120)
    server.start()
    yield server
    server.stop()
    assert not server.group_alive(), "tritonserver or a stub outlived stop()"


def _concurrent(fn, n):
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3 * TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_16_concurrent_streams_equal_generate(server, exports, protocol):
    from wn_export.serving.client import stream

    url = server.grpc_url if protocol == "grpc" else server.http_url
    seed = 21 if protocol == "grpc" else 22

    def one(i):
        chunks = list(stream(url, N, seed=seed, streams=16, stream_index=i, timeout=TIMEOUT))
        assert [c.offset for c in chunks] == list(range(0, N, CHUNK))
        return np.concatenate([c.tokens for c in chunks]), np.concatenate([c.audio for c in chunks])

    results = _concurrent(one, 16)
    with Generator(exports["small"]) as gen:
        want = gen.generate(N, batch=16, seed=seed)
        audio = gen.decode(want)
    for i, (tokens, wave) in enumerate(results):
        assert np.array_equal(tokens, want[i]), i
        assert np.array_equal(wave, audio[i]), i


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_16_plain_requests_each_equal_generate_batch_1(server, exports, protocol):
    """Plain requests (no stream layout) with their own seeds and temperatures, served concurrently from a
    ring-layout export, each draw exactly `wn-export generate --seed S [--temperature T]` (batch 1)."""
    from wn_export.serving.client import stream

    url = server.grpc_url if protocol == "grpc" else server.http_url
    settings = [dict(seed=100 + i, temperature=(1.0, 0.8, 1.2)[i % 3]) for i in range(15)] + [dict(method="greedy")]

    def one(i):
        chunks = stream(url, N, model="ring_generate", timeout=TIMEOUT, **settings[i])
        return np.concatenate([c.tokens for c in chunks])

    results = _concurrent(one, 16)
    with Generator(exports["ring"]) as gen:
        for i, tokens in enumerate(results):
            assert np.array_equal(tokens, gen.generate(N, **settings[i])[0]), settings[i]


def test_a_grpc_client_that_cancels_frees_its_stream_in_the_server(server, exports):
    """Closing a gRPC stream cancels the request (stop_stream(cancel_requests=True)); the server drops the
    stream at its next chunk, long before its samples are done, and says so in its log."""
    import re

    from wn_export.serving.client import stream

    n = 5_000_000
    chunks = stream(server.grpc_url, n, model="ring_generate", seed=1, timeout=TIMEOUT)
    first = next(chunks)
    assert first.offset == 0 and len(first.tokens) == CHUNK
    chunks.close()  # the client goes away after one chunk
    deadline, found = time.monotonic() + TIMEOUT, None
    while found is None and time.monotonic() < deadline:
        found = re.search(rb"cancelled by its client after ([0-9,]+) samples", server._log_bytes())
        time.sleep(0.05)
    assert found is not None, server.log_tail()
    assert int(found.group(1).replace(b",", b"")) < n // 10
    with Generator(exports["ring"]) as gen:  # the server goes on serving
        again = np.concatenate([c.tokens for c in stream(server.grpc_url, N, model="ring_generate", seed=1,
                                                         timeout=TIMEOUT)])
        assert np.array_equal(again, gen.generate(N, seed=1)[0])


def test_client_wav_equals_wn_export_generate(server, exports, tmp_path):
    r = _run("generate", exports["small"], "-n", N, "--seed", 7, "--temperature", 0.8, "--batch", 2,
             "-o", tmp_path / "local.wav")
    assert r.exit_code == 0, r.output
    for url in (server.grpc_url, server.http_url):
        r = _run("triton-client", url, "-n", N, "--seed", 7, "--temperature", 0.8, "--streams", 2, "--stream", 1,
                 "-o", tmp_path / "served.wav")
        assert r.exit_code == 0, r.output
        assert (tmp_path / "served.wav").read_bytes() == (tmp_path / "local.1.wav").read_bytes(), url


def test_conditioned_stream_over_http_and_grpc(server, exports):
    from wn_export.serving.client import stream

    cfg = CONFIGS["conditioned"]
    f = np.random.default_rng(5).normal(size=(cfg.local_channels, 700)).astype(np.float32)
    with Generator(exports["cond"]) as gen:
        want = gen.generate(N, seed=3, features=f, speaker=2)[0]
    for url in (server.grpc_url, server.http_url):
        chunks = stream(url, N, model="cond_generate", seed=3, speaker=2, conditioning=f, timeout=TIMEOUT)
        assert np.array_equal(np.concatenate([c.tokens for c in chunks]), want), url


def test_malformed_requests_get_an_error_and_never_hang(server):
    from wn_export.serving.client import ServingError, stream

    def error(url, model="generate", **options):
        start = time.monotonic()
        with pytest.raises(ServingError) as e:
            list(stream(url, options.pop("samples", 100), model=model, timeout=TIMEOUT, **options))
        assert time.monotonic() - start < TIMEOUT
        return str(e.value)

    for url in (server.grpc_url, server.http_url):
        assert "samples must lie in [1, 9,600,000]" in error(url, samples=10**8)
        assert "unknown sampling method 'beam'" in error(url, method="beam")
        for temperature in (-1.0, 1e-300, 5e-324, float("nan"), float("inf")):
            assert "temperature must be a finite number >= 1e-06" in error(url, temperature=temperature), temperature
        assert "speaker ids must lie in [0, 2]" in error(url, "cond_generate", speaker=7,
                                                         conditioning=np.zeros((3, 25), np.float32))
        assert "needs a speaker id" in error(url, "cond_generate", conditioning=np.zeros((3, 25), np.float32))
        assert "speaker" in error(url, speaker=1)  # gRPC: the core refuses the input; HTTP: the model does
        assert "stream must lie in [0, streams)" in error(url, streams=2, stream_index=5)
    # a missing input (the model refuses it) and a wrong dtype (Triton refuses it, naming what it expects)
    import queue

    import tritonclient.grpc as grpcclient

    def grpc_error(name, dtype, value):
        responses = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
        client.start_stream(callback=lambda result, error: responses.put(error))
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(value)
        client.async_stream_infer("generate", [tensor])
        try:
            return str(responses.get(timeout=TIMEOUT))
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()

    assert "missing input 'samples'" in grpc_error("seed", "UINT64", np.array([1], np.uint64))
    assert "'samples' data-type is 'FP32', but model 'generate' expects 'INT64'" in \
        grpc_error("samples", "FP32", np.array([10.0], np.float32))
    import http.client

    for body, message in (({"seed": 1}, "missing input 'samples'"), ({"samples": 2.5}, "non-signed-integer as signed-integer"),
                          ({"samples": 9, "sampels": 9}, "unexpected input(s) sampels")):
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
        conn.request("POST", "/v2/models/generate/generate_stream", json.dumps(body))
        text = conn.getresponse().read().decode()
        conn.close()
        assert message in text and "error" in text, text
    # the server still serves
    assert sum(len(c.audio) for c in stream(server.grpc_url, 300, timeout=TIMEOUT)) == 300


def test_step_model_config_is_accepted_by_tritons_core(server):
    """The step model's config (sequence batching, oldest, controls, implicit state), loaded with the python
    backend: the core delivers START/END/READY/CORRID by the config; python models get no implicit state."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    rows = []
    for t, token in enumerate([5, 9, 2]):
        inp = grpcclient.InferInput("token", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[token]], np.int64))
        result = client.infer("step_python", [inp], sequence_id=1234, sequence_start=t == 0, sequence_end=t == 2,
                              client_timeout=TIMEOUT)
        rows.append(result.as_numpy("logits")[0, :7].tolist())
    client.close()
    size = CONFIGS["k2"].residual_channels * (CONFIGS["k2"].kernel_size - 1)  # state.0: dilation 1
    assert rows == [[1, 0, 1, 1234, 5, size, 0], [0, 0, 1, 1234, 9, size, 0], [0, 1, 1, 1234, 2, size, 0]]


def test_killing_the_server_mid_stream_fails_the_clients_instead_of_hanging(exports, tmp_path):
    from wn_export.serving.client import ServingError, stream
    from wn_export.serving.local_server import LocalTriton

    assert _run("triton", exports["small"], "-o", tmp_path / "repo", "--models", "generate", "--chunk", 200).exit_code == 0
    server = LocalTriton([tmp_path / "repo"], models=["generate"], startup_timeout=120)
    try:
        server.start()
        started = threading.Barrier(3, timeout=TIMEOUT)

        def one(i):
            url = [server.grpc_url, server.http_url][i]
            chunks = stream(url, 5 * 10**6, seed=i, timeout=TIMEOUT)
            next(chunks)
            started.wait()
            t0 = time.monotonic()
            with pytest.raises(ServingError):
                for _ in chunks:
                    pass
            return time.monotonic() - t0

        results = [None, None]
        thread = threading.Thread(target=lambda: results.__setitem__(slice(None), _concurrent(one, 2)))
        thread.start()
        started.wait()
        server.kill()
        thread.join(3 * TIMEOUT)
        assert not thread.is_alive() and all(r is not None and r < TIMEOUT for r in results), results
    finally:
        server.stop()
    assert not server.group_alive()


def test_a_generation_model_whose_host_cannot_load_fails_to_load_clearly(exports, tmp_path):
    """--generation-backend tensorrt where its engine cannot run (here: no GPU, or bytes no TensorRT loads): the
    real server reports the model's load failure with the host's message, promptly, and leaves no process."""
    from wn_export.errors import BackendError
    from wn_export.serving.local_server import LocalTriton

    engine = _with_step_engine(exports["small"], tmp_path / "engine")
    assert _run("triton", engine, "-o", tmp_path / "repo", "--models", "generate",
                "--generation-backend", "tensorrt").exit_code == 0
    server = LocalTriton([tmp_path / "repo"], models=["generate"], startup_timeout=120)
    t0 = time.monotonic()
    try:
        with pytest.raises(BackendError, match="the tensorrt generation host cannot load: "):
            server.start()
    finally:
        server.stop()
    assert time.monotonic() - t0 < 60 and not server.group_alive()


@pytest.fixture(scope="module")
def demo_ring(tmp_path_factory):
    """The trained demo model in the ring layout: the ONNX Runtime host runs its native loop."""
    from wn_export import demo_checkpoint
    from wn_export.export.pipeline import export_directory

    directory = tmp_path_factory.mktemp("demo") / "export"
    export_directory(directory, demo_checkpoint())
    return directory


def test_lone_streams_run_at_batch_1_and_equal_generate_batch_1(demo_ring):
    """A plain request draws exactly `wn-export generate --batch 1 --seed S`, alone or beside others, with
    its own temperature: the native loop's rows do not depend on the batch, so no padding row is needed."""
    from wn_export.serving.streams import StreamBatcher

    n, seeds = 5000, range(12)
    batcher = StreamBatcher(Generator(demo_ring), max_streams=16, chunk=700)
    assert batcher.min_rows == 1 and batcher.runner.batch_invariant
    alone = _Collect()
    batcher.submit(batcher.validate(n, seed=seeds[0]), alone)
    batcher.step_burst()
    assert batcher.runner.batch == 1  # no padding row
    sinks = {seeds[0]: alone}
    for seed in seeds[1:]:  # the others join the running batch at different positions
        sinks[seed] = _Collect()
        batcher.submit(batcher.validate(n, seed=seed, temperature=0.9 if seed % 3 else 1.0), sinks[seed])
        batcher.step_burst()
    while batcher.busy:
        batcher.step_burst()
    with Generator(demo_ring) as gen:
        for seed, sink in sinks.items():
            want = gen.generate(n, seed=seed, temperature=0.9 if seed % 3 else 1.0)[0]
            assert sink.error is None and np.array_equal(sink.values, want), seed
