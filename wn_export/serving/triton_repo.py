"""`wn-export triton`: a Triton Inference Server model repository from an export directory's manifest.

Everything is read from `manifest.json` (tensor names, dtypes, shapes, state pairs, initial values, engine
profiles); nothing is re-derived by convention. Models (names get `--prefix`):

- `generate`: the whole sampling loop in the server (python backend, decoupled, one of our hosts,
  `serving.service`: `--generation-backend auto|onnxruntime|tensorrt|triton`, chosen when the model loads).
  Inputs `samples`, `seed`, `temperature`, `method`, [`speaker`], [`conditioning`], `streams`, `stream`;
  each response is one chunk: `audio`, `offset`, [`tokens`]. Its `export/` copy holds the manifest, the
  graphs, the FP32 step engine when the host may be tensorrt, and the checkpoint for the triton host.
- `step`: one sample of many sequences, `onnxruntime_onnx` or `tensorrt_plan`, full state layout only;
  `sequence_batching` (oldest strategy) with the manifest's state pairs as implicit state, each starting
  from the manifest's initial value; ONNX Runtime: START/END/READY/CORRID controls.
- `scoring`: teacher-forced logits and log-likelihoods, `onnxruntime_onnx` or `tensorrt_plan`, dynamic
  batching.

Triton's onnxruntime and tensorrt backends refuse a sequence control that is not a model input, and the
exported step graph has none. For `onnxruntime` the repository's `step/1/model.onnx` is therefore the
exported graph plus four inputs: START (int32 (batch, 1)) resets every state input to its initial value
inside the graph (what Triton's initial state does too); END, READY (int32) and CORRID (uint64) are
accepted and unused. A TensorRT engine is used as built, so its step model has implicit state without
control inputs.

Configs are built as `tritonclient.grpc.model_config_pb2.ModelConfig` messages and written in protobuf
text format; the repository is assembled in a temporary directory and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wn_export.contract.manifest import GraphRecord, Manifest, read_manifest
from wn_export.contract.specs import graph_name
from wn_export.errors import ArtifactError, BackendError, InputError

MODELS = ("generate", "step", "scoring")
# Triton platform and model file of each backend the step and scoring models can be served on
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL"}
CONTROLS = (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"),
            ("READY", "CONTROL_SEQUENCE_READY"), ("CORRID", "CONTROL_SEQUENCE_CORRID"))
CHECKPOINT = "checkpoint.safetensors"  # the triton generation host's weights, in the generation model's export copy
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.12-py3"  # Triton 2.53: Ubuntu 24.04, Python 3.12 (wn-export needs ≥ 3.11)


@dataclass(frozen=True)
class Options:
    backend: str = "onnxruntime"
    models: tuple[str, ...] = MODELS
    max_batch: int | None = None  # step/scoring batch limit (default 16; TensorRT: the engine profile)
    instances: int = 1
    precision: str = "fp32"
    kind: str | None = None  # cpu | gpu for step/scoring (default: gpu for tensorrt, cpu for onnxruntime)
    prefix: str = ""
    max_streams: int = 16  # concurrent generation streams per instance (one batch)
    chunk: int = 4000  # samples per generation response
    max_samples: int = 16000 * 600
    threads: int | None = None  # ONNX Runtime intra-op threads of the generation host
    generation_backend: str = "auto"  # the generation host (serving.service.GENERATION_BACKENDS)
    python_env: str | None = "auto"  # EXECUTION_ENV_PATH of the generation model: auto = this venv, None = none


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BackendError("writing a Triton repository needs tritonclient: pip install 'wn-export[serve]'") from None
    return model_config_pb2


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise InputError(f"unknown model(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(MODELS)}")
    return names


def _check(manifest: Manifest, opts: Options, checkpoint: Path | None = None) -> None:
    if opts.backend not in PLATFORMS:
        raise InputError(f"unknown Triton backend {opts.backend!r} (choose from {', '.join(PLATFORMS)})")
    if opts.precision not in ("fp32", "fp16"):
        raise InputError(f"unknown precision {opts.precision!r} (choose from fp32, fp16)")
    for name, value, low in (("max-batch", opts.max_batch, 1), ("instances", opts.instances, 1),
                             ("max-streams", opts.max_streams, 1), ("chunk", opts.chunk, 1),
                             ("max-samples", opts.max_samples, 1)):
        if value is not None and value < low:
            raise InputError(f"--{name} must be ≥ {low} (got {value})")
    if opts.kind not in (None, "cpu", "gpu"):
        raise InputError(f"--kind must be cpu or gpu (got {opts.kind!r})")
    if opts.backend == "tensorrt" and opts.kind == "cpu":
        raise InputError("TensorRT engines run on a GPU: --kind cpu needs --backend onnxruntime")
    if opts.prefix and not all(c.isalnum() or c in "_-" for c in opts.prefix):
        raise InputError(f"--prefix may hold letters, digits, '_' and '-' only (got {opts.prefix!r})")
    if "step" in opts.models:
        step = manifest.graph(graph_name("step", opts.precision))
        if step.layout != "full" or any(s.update != "replace" for s in step.state):
            raise InputError(f"the Triton step model needs the full state layout (Triton's implicit state feeds each "
                             f"output back as the next input), but {manifest.directory} has the {step.layout} layout: "
                             f"re-export with `wn-export onnx --state-layout full -o DIR`, or leave the step model "
                             f"out (--models generate,scoring)")
    if checkpoint is not None and not ("generate" in opts.models and opts.generation_backend == "triton"):
        raise InputError("--checkpoint gives the triton generation host its weights: it needs --generation-backend "
                         "triton and the generate model")
    if "generate" in opts.models:
        manifest.graph("step")  # the generation host runs the FP32 step graph
        _check_generation_backend(manifest, opts.generation_backend, checkpoint)


def _check_generation_backend(manifest: Manifest, backend: str, checkpoint: Path | None = None) -> None:
    """What the generation host needs and the repository copies: tensorrt, the FP32 step engine (its file
    unchanged); triton, a model the kernel runs and its checkpoint (present, unchanged since the export; or
    `checkpoint`, of the manifest's config)."""
    from wn_export.serving.service import GENERATION_BACKENDS

    if backend not in GENERATION_BACKENDS:
        raise InputError(f"unknown generation backend {backend!r} (choose from {', '.join(GENERATION_BACKENDS)})")
    if backend == "tensorrt":
        from wn_export.backends.tensorrt.runner import engine_record

        engine_record(manifest, "step")
    if backend == "triton":
        from wn_export.backends.torch_ref import recorded_checkpoint, reference_model_for
        from wn_export.backends.triton.layout import check_supported

        check_supported(manifest.config)
        if checkpoint is None:
            recorded_checkpoint(manifest)
        else:
            reference_model_for(manifest, checkpoint)  # loads it: a file of the manifest's config


def _graph_and_file(manifest: Manifest, kind: str, opts: Options) -> tuple[GraphRecord, Path, int]:
    """The graph a model serves, the file to copy and its batch limit."""
    name = graph_name(kind, opts.precision)
    graph = manifest.graph(name)
    if opts.backend == "onnxruntime":
        return graph, graph.path, opts.max_batch or 16
    engine = manifest.engine(name)
    if engine.backend != "tensorrt":
        raise ArtifactError(f"Triton's tensorrt backend runs TensorRT engines, but {engine.file} was built with "
                            f"{engine.backend}: rebuild it with `wn-export trt --backend tensorrt` (on a GPU machine)")
    limit = engine.max_batch(graph.inputs[0].name)
    if limit is None:
        raise ArtifactError(f"{engine.file} records no optimisation profile: rebuild it with `wn-export trt`")
    if opts.max_batch is not None and opts.max_batch > limit:
        raise InputError(f"--max-batch {opts.max_batch} exceeds the {name} engine's profile ({limit}): rebuild it "
                         f"with `wn-export trt --batch MIN,OPT,MAX` or choose a smaller batch")
    return graph, engine.path, opts.max_batch or limit


def _dims(shape) -> list[int]:
    """A manifest shape without its leading batch dim; symbolic dims are −1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _tensor(message, t, mc) -> None:
    message.name = t.name
    message.data_type = getattr(mc, TRITON_TYPES[t.dtype])
    dims = _dims(t.shape)
    if dims:
        message.dims.extend(dims)
    else:  # one value per batch item: Triton needs dims [1], reshaped to the model's ()
        message.dims.append(1)
        message.reshape.SetInParent()


def _instances(cfg, count: int, kind: str, mc) -> None:
    group = cfg.instance_group.add()
    group.count = count
    group.kind = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU


def _model_config(manifest: Manifest, kind: str, opts: Options):
    """(protobuf module, the kind's graph, a ModelConfig with its name, platform, batch limit and file)."""
    mc = model_config_pb2()
    graph, _, limit = _graph_and_file(manifest, kind, opts)
    platform, filename = PLATFORMS[opts.backend]
    return mc, graph, mc.ModelConfig(name=opts.prefix + kind, platform=platform, max_batch_size=limit,
                                     default_model_filename=filename)


def step_config(manifest: Manifest, opts: Options):
    mc, graph, cfg = _model_config(manifest, "step", opts)
    state_inputs = {s.input for s in graph.state}
    state_outputs = {s.output for s in graph.state}
    for t in graph.inputs:
        if t.name not in state_inputs:
            _tensor(cfg.input.add(), t, mc)
    for t in graph.outputs:
        if t.name not in state_outputs:
            _tensor(cfg.output.add(), t, mc)
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = 60_000_000
    seq.oldest.max_candidate_sequences = cfg.max_batch_size
    seq.oldest.preferred_batch_size.append(cfg.max_batch_size)
    seq.oldest.max_queue_delay_microseconds = 100
    if opts.backend == "onnxruntime":
        for name, kind in CONTROLS:
            control = seq.control_input.add()
            control.name = name
            c = control.control.add()
            c.kind = getattr(mc.ModelSequenceBatching.Control, kind)
            if name == "CORRID":
                c.data_type = mc.TYPE_UINT64
            else:
                c.int32_false_true.extend([0, 1])
    for s in graph.state:
        st = seq.state.add()
        st.input_name, st.output_name = s.input, s.output
        st.data_type = getattr(mc, TRITON_TYPES[s.dtype])
        st.dims.extend(_dims(s.shape))
        init = st.initial_state.add()
        init.name = f"{s.input}.init"
        init.data_type = st.data_type
        init.dims.extend(_dims(s.shape))
        if s.init == 0:
            init.zero_data = True
        else:
            init.data_file = _init_file(s)
    _instances(cfg, opts.instances, opts.kind or ("gpu" if opts.backend == "tensorrt" else "cpu"), mc)
    return cfg


def _init_file(s) -> str:
    return f"{s.input}.init.bin"  # under the model's initial_state/ folder (Triton's rule)


def scoring_config(manifest: Manifest, opts: Options):
    mc, graph, cfg = _model_config(manifest, "scoring", opts)
    for t in graph.inputs:
        _tensor(cfg.input.add(), t, mc)
    for t in graph.outputs:
        _tensor(cfg.output.add(), t, mc)
    cfg.dynamic_batching.max_queue_delay_microseconds = 1000
    _instances(cfg, opts.instances, opts.kind or ("gpu" if opts.backend == "tensorrt" else "cpu"), mc)
    return cfg


def generate_config(manifest: Manifest, opts: Options):
    mc = model_config_pb2()
    model = manifest.config
    cfg = mc.ModelConfig(name=opts.prefix + "generate", backend="python", max_batch_size=0)
    cfg.model_transaction_policy.decoupled = True
    inputs = [("samples", "TYPE_INT64", [1], False), ("seed", "TYPE_UINT64", [1], True),
              ("temperature", "TYPE_FP64", [1], True), ("method", "TYPE_STRING", [1], True),
              ("streams", "TYPE_INT64", [1], True), ("stream", "TYPE_INT64", [1], True)]
    if model.global_:
        inputs.append(("speaker", "TYPE_INT64", [1], True))
    if model.local:
        inputs.append(("conditioning", "TYPE_FP32", [-1], True))  # (C, frames) row-major, flat for HTTP
    for name, dtype, dims, optional in inputs:
        i = cfg.input.add()
        i.name, i.data_type, i.optional = name, getattr(mc, dtype), optional
        i.dims.extend(dims)
    outputs = [("audio", "TYPE_FP32", [-1]), ("offset", "TYPE_INT64", [1])]
    if not model.mol:
        outputs.append(("tokens", "TYPE_INT64", [-1]))
    for name, dtype, dims in outputs:
        o = cfg.output.add()
        o.name, o.data_type = name, getattr(mc, dtype)
        o.dims.extend(dims)
    _instances(cfg, opts.instances, "cpu", mc)
    params = {"export": "export", "max_streams": opts.max_streams, "chunk": opts.chunk,
              "max_samples": opts.max_samples, "sample_rate": model.sample_rate,
              "generation_backend": opts.generation_backend}
    if opts.generation_backend == "triton":
        params["checkpoint"] = CHECKPOINT  # in the export copy
    if opts.threads:
        params["threads"] = opts.threads
    env = python_env(opts.python_env)
    if env:
        params["EXECUTION_ENV_PATH"] = env
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def python_env(choice: str | None) -> str | None:
    """EXECUTION_ENV_PATH for the generation model: "auto" = the virtual environment running this (if any),
    None/"none" = the server's own Python, else a directory with bin/activate."""
    if choice in (None, "none"):
        return None
    if choice == "auto":
        return sys.prefix if sys.prefix != sys.base_prefix else None
    path = Path(choice).resolve()
    if not (path / "bin" / "activate").is_file():
        raise InputError(f"--python-env {choice}: not an environment (no bin/activate)")
    return str(path)


def config_text(cfg) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def parse_config(text: str):
    """config.pbtxt text → ModelConfig (an `ArtifactError` with line and column for bad text)."""
    from google.protobuf import text_format

    mc = model_config_pb2()
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError(f"invalid config.pbtxt: {e}") from None


def sequence_step_graph(graph: GraphRecord):
    """The full-layout step graph plus Triton's sequence controls (see the module doc) → ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(graph.path))
    g = model.graph
    g.input.extend([helper.make_tensor_value_info(name, TensorProto.UINT64 if name == "CORRID" else TensorProto.INT32,
                                                  ["batch", 1]) for name, _ in CONTROLS])
    nodes = [helper.make_node("Cast", ["START"], ["START.flag"], to=TensorProto.BOOL)]
    rank = max(len(s.shape) for s in graph.state)
    if rank > 2:
        nodes.append(helper.make_node("Constant", [], ["START.axes"],
                                      value=helper.make_tensor("START.axes", TensorProto.INT64, [rank - 2],
                                                               list(range(2, rank)))))
        nodes.append(helper.make_node("Unsqueeze", ["START.flag", "START.axes"], ["START.mask"]))
    mask = "START.mask" if rank > 2 else "START.flag"
    renamed = {}
    for s in graph.state:
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype))
        init = helper.make_tensor(f"{s.input}.init", dtype, [], [s.init])
        nodes.append(helper.make_node("Constant", [], [f"{s.input}.init"], value=init))
        nodes.append(helper.make_node("Where", [mask, f"{s.input}.init", s.input], [f"{s.input}.reset"]))
        renamed[s.input] = f"{s.input}.reset"
    for node in g.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    rest = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *rest])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_repository(directory, output, opts: Options = Options(), *, overwrite: bool = False,
                     checkpoint: Path | None = None) -> Path:
    """Write the repository at `output` (atomically: assembled beside it, then renamed). Returns `output`.
    `checkpoint`: the triton generation host's weights, instead of the checkpoint the manifest records."""
    from reference_model.files import check_output

    manifest = read_manifest(directory)
    _check(manifest, opts, checkpoint)
    output = Path(output)
    check_output(output, directory=True)  # a directory if it exists, legal names, writable: before any work
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists: choose a new directory or pass --overwrite to replace it")
    _check_place(manifest, output, opts, checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        written = []
        if "generate" in opts.models:
            written.append(_write_generate(manifest, tmp, opts, checkpoint))
        if "step" in opts.models:
            written.append(_write_step(manifest, tmp, opts))
        if "scoring" in opts.models:
            written.append(_write_scoring(manifest, tmp, opts))
        (tmp / "README.md").write_text(repository_readme(manifest, opts, written), encoding="utf-8")
        os.chmod(tmp, 0o755)
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _check_place(manifest: Manifest, output: Path, opts: Options, checkpoint: Path | None) -> None:
    """The repository may neither lie inside the export directory nor hold it or a file the command reads (it
    replaces what is there); an existing directory it replaces must be a model repository."""
    out = output.resolve()
    export = manifest.directory.resolve()
    if export == out or export in out.parents:
        raise InputError(f"{output} lies inside the export directory {manifest.directory}: choose another place")
    inputs = [export]
    if opts.generation_backend == "triton" and "generate" in opts.models:
        from wn_export.backends.torch_ref import recorded_checkpoint

        inputs.append(recorded_checkpoint(manifest, checkpoint).resolve())
    for path in inputs:
        if out in path.parents:
            raise InputError(f"{output} holds {path}, which this command reads: --overwrite would delete it; "
                             "choose another place")
    if output.is_dir():
        for entry in sorted(output.iterdir()):
            if entry.name != "README.md" and not (entry.is_dir() and (entry / "config.pbtxt").is_file()):
                raise InputError(f"refusing to replace {output}: it is not a model repository ({entry.name} is "
                                 "neither README.md nor a model folder with config.pbtxt); choose another place")


def _replace(tmp: Path, output: Path) -> None:
    if not output.exists():
        os.rename(tmp, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
    os.rename(output, old / "repo")
    os.rename(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _model_dir(root: Path, cfg) -> Path:
    (root / cfg.name / "1").mkdir(parents=True)
    (root / cfg.name / "config.pbtxt").write_text(config_text(cfg), encoding="utf-8")
    return root / cfg.name


def _write_generate(manifest: Manifest, root: Path, opts: Options, checkpoint: Path | None = None):
    cfg = generate_config(manifest, opts)
    model = _model_dir(root, cfg)
    shutil.copyfile(Path(__file__).parent / "models" / "generate_model.py", model / "1" / "model.py")
    export = model / "1" / "export"
    export.mkdir()
    files = {"manifest.json": manifest.directory / "manifest.json"}  # name in the copy → source
    files.update({graph.file: graph.path for graph in manifest.graphs.values()})
    engine = manifest.engines.get("step")
    if opts.generation_backend in ("auto", "tensorrt") and engine is not None and engine.path.is_file():
        files[engine.file] = engine.path  # auto: the host may take it where a GPU is visible
    files.update({plan.file: plan.path for plan in manifest.native_loops.values()})  # recorded: the copy needs them
    if opts.generation_backend == "triton":
        from wn_export.backends.torch_ref import recorded_checkpoint

        if CHECKPOINT in files:
            raise ArtifactError(f"{manifest.directory}/manifest.json records a file named {CHECKPOINT}, the name "
                                "the repository gives the triton host's checkpoint; re-export the directory")
        files[CHECKPOINT] = recorded_checkpoint(manifest, checkpoint)
    for name, source in files.items():  # manifest paths may name sub-folders (confined to the directory)
        (export / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, export / name)
    return cfg


def _write_step(manifest: Manifest, root: Path, opts: Options):
    cfg = step_config(manifest, opts)
    graph, source, _ = _graph_and_file(manifest, "step", opts)
    model = _model_dir(root, cfg)
    if opts.backend == "onnxruntime":
        import onnx

        onnx.save(sequence_step_graph(graph), str(model / "1" / cfg.default_model_filename))
    else:
        shutil.copyfile(source, model / "1" / cfg.default_model_filename)
    for s in graph.state:
        if s.init != 0:
            (model / "initial_state").mkdir(exist_ok=True)
            dims = [d for d in _dims(s.shape)]
            np.full(dims, s.init, dtype=s.dtype).tofile(model / "initial_state" / _init_file(s))
    return cfg


def _write_scoring(manifest: Manifest, root: Path, opts: Options):
    cfg = scoring_config(manifest, opts)
    _, source, _ = _graph_and_file(manifest, "scoring", opts)
    model = _model_dir(root, cfg)
    shutil.copyfile(source, model / "1" / cfg.default_model_filename)
    return cfg


def repository_readme(manifest: Manifest, opts: Options, configs) -> str:
    from wn_export.serving.readme import repository_readme as text

    return text(manifest, opts, configs)
