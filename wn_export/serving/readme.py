"""The README.md that `wn-export triton` writes into a model repository: its models and how to run them."""

from __future__ import annotations

from wn_export import __version__


def _io(tensors, mc) -> str:
    rows = []
    for t in tensors:
        dtype = mc.DataType.Name(t.data_type).removeprefix("TYPE_").lower()
        optional = " (optional)" if getattr(t, "optional", False) else ""
        rows.append(f"`{t.name}` {dtype} {list(t.dims)}{optional}")
    return ", ".join(rows)


HOSTS = {
    "auto": "`auto`: TensorRT when the export's FP32 step engine is in `export/` and the server sees a CUDA GPU when the "
            "model loads, else ONNX Runtime on the CPU; if the TensorRT host cannot load, ONNX Runtime, with a warning "
            "in the server's log",
    "onnxruntime": "`onnxruntime`: the exported step graph on the CPU",
    "tensorrt": "`tensorrt`: the FP32 step engine in `export/`, on a CUDA GPU; the model fails to load without one",
    "triton": "`triton`: the fused step kernel (OpenAI Triton) with the weights of `export/checkpoint.safetensors`, "
              "on a CUDA GPU; the model fails to load without one",
}


def _host(backend: str) -> str:
    return HOSTS.get(backend, backend)


def repository_readme(manifest, opts, configs) -> str:
    from wn_export.serving.triton_repo import TRITON_IMAGE, model_config_pb2

    mc = model_config_pb2()
    cfg = manifest.config
    names = {c.name.removeprefix(opts.prefix): c for c in configs}
    lines = [f"# Triton model repository: {manifest.directory.name}", "",
             f"Written by `wn-export triton` (wn-export {__version__}) from `{manifest.directory}` "
             f"({cfg.quantization_channels} classes, {cfg.sample_rate} Hz, receptive field {cfg.receptive_field}).", "",
             "| model | backend | max batch | inputs | outputs |", "|---|---|---|---|---|"]
    for c in configs:
        backend = c.backend or c.platform
        lines.append(f"| `{c.name}` | {backend} | {c.max_batch_size or '–'} | {_io(c.input, mc)} | {_io(c.output, mc)} |")
    env = names.get("generate") and names["generate"].parameters.get("EXECUTION_ENV_PATH")
    lines += ["", "## Models", ""]
    if "generate" in names:
        p = names["generate"].parameters
        lines += [f"- `{opts.prefix}generate` (python backend, decoupled) runs the whole sampling loop in the server with "
                  f"one of wn-export's hosts ({_host(p['generation_backend'].string_value)}): up to "
                  f"{p['max_streams'].string_value} streams per instance share one "
                  f"step call per sample; each response carries {p['chunk'].string_value} samples (`audio` float32, "
                  "`tokens`, `offset` of the first sample); the last response has the final flag. A request with "
                  "`streams` N ≥ 2 and `stream` i returns exactly stream i of `wn-export generate --batch N --seed "
                  "SEED`; without them it draws the uniforms of `wn-export generate --seed SEED`, in a batched "
                  "step (equal tokens up to the batch-1 kernels' rounding). Bad requests get one error response.",
                  "  Its Python (the python backend's stub) must import wn_export, numpy and onnxruntime (and for the "
                  "tensorrt or triton host torch with CUDA, and tensorrt or triton): "
                  + (f"this repository points EXECUTION_ENV_PATH at `{env.string_value}`, the environment that wrote "
                     "it (for another machine or a container, write the repository with `--python-env none` and "
                     "install wn-export in the server's Python)." if env else
                     "install them in the server's Python (this repository sets no EXECUTION_ENV_PATH).")]
    if "step" in names:
        lines.append(f"- `{opts.prefix}step` runs one sample of many sequences (sequence batching, oldest strategy, "
                     "implicit state: Triton keeps each sequence's state between requests and starts it from the "
                     "initial state). Send one request per sample with `sequence_id`, `sequence_start` on the first "
                     "and `sequence_end` on the last; feed back the token you draw from `logits`.")
    if "scoring" in names:
        lines.append(f"- `{opts.prefix}scoring` returns teacher-forced `logits` and `log_prob` for token sequences "
                     "(dynamic batching of requests of equal length).")
    gpu = [c.name for c in configs if c.platform]
    lines += ["", "## Run it", "",
              "### NVIDIA's Triton container (GPU; every model)", "",
              "The onnxruntime and tensorrt backends, implicit state and KIND_GPU instances exist only in NVIDIA's "
              "server builds. The container's Python cannot use this machine's environment: build the wheel and write "
              "the repository without EXECUTION_ENV_PATH, then start the container:", "", "```bash",
              "python -m build --wheel && wn-export triton DIR -o REPO --python-env none",
              "docker run --gpus all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -e PIP_BREAK_SYSTEM_PACKAGES=1 \\",
              "  -v \"$PWD/REPO\":/models -v \"$PWD/dist\":/wheels " + TRITON_IMAGE + " \\",
              f"  bash -c 'pip install --no-deps /wheels/wn_export-{__version__}-py3-none-any.whl && "
              "pip install numpy onnx onnxruntime && tritonserver --model-repository=/models'",
              "```", ""]
    if gpu and opts.backend == "tensorrt":
        lines += ["TensorRT engines load only with the TensorRT version and GPU they were built for: build them "
                  "inside the same container (`wn-export trt DIR --backend tensorrt`) before writing the repository.", ""]
    lines += ["### Any Linux machine, no GPU (generation model only)", "",
              "The `tritonserver` in the `nvidia-pytriton` wheel (`pip install 'wn-export[serve]'`) has only the "
              "python backend:", "", "```bash",
              "wn-export triton-serve REPO --http-port 8000 --grpc-port 8001", "```", "",
              "## Clients", "", "```bash",
              f"wn-export triton-client grpc://127.0.0.1:8001 --model {opts.prefix}generate -n 16000 --seed 7 -o out.wav",
              f"curl -N -X POST http://127.0.0.1:8000/v2/models/{opts.prefix}generate/generate_stream "
              "-d '{\"samples\": 16000, \"seed\": 7}'",
              "```", ""]
    return "\n".join(lines)
