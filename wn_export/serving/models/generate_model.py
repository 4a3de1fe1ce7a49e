"""Triton python-backend model `generate` (copied to REPO/<name>/1/model.py by `wn-export triton`).

A decoupled model: `execute` validates each request, hands it to the `GenerationService` (which runs
the whole sampling loop for all active streams on its own thread, one step call per sample) and
returns at once; the service sends each chunk as one response and ends the stream with the final
flag, or with an error response. Everything but the conversion between Triton's tensors and NumPy
lives in `wn_export.serving` (the stub's Python must be able to import wn_export: install it there,
or point the model's EXECUTION_ENV_PATH at an environment that has it).

Model config parameters (written by `wn-export triton`): `export` (the export directory, relative to
the version directory), `max_streams`, `chunk`, `max_samples`, `threads`, `generation_backend` (auto,
onnxruntime, tensorrt or triton: `serving.service.choose_backend`), `checkpoint` (the triton host's weights,
in the export directory). A host that cannot load fails `initialize` with one message (Triton then marks
the model unavailable); auto falls back to onnxruntime and logs why.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class _Sender:
    """A stream's sink: each chunk is one response; the end is the final flag (with an error if any)."""

    def __init__(self, sender, decode, tokens: bool):
        self.sender, self.decode, self.tokens = sender, decode, tokens
        self.sent = 0  # samples sent

    def chunk(self, offset, values):
        self.sent = offset + len(values)
        outputs = [pb_utils.Tensor("audio", self.decode(values)),
                   pb_utils.Tensor("offset", np.array([offset], dtype=np.int64))]
        if self.tokens:
            outputs.append(pb_utils.Tensor("tokens", np.ascontiguousarray(values, dtype=np.int64)))
        self.sender.send(pb_utils.InferenceResponse(output_tensors=outputs))

    def finish(self, error=None):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if error is None:
            self.sender.send(flags=final)
        else:
            cancelled = "cancelled" in error
            if cancelled:
                pb_utils.Logger.log_info(f"a stream was cancelled by its client after {self.sent:,} samples")
            code = pb_utils.TritonError.CANCELLED if cancelled else pb_utils.TritonError.UNAVAILABLE
            self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(error, code)), flags=final)

    def cancelled(self):
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        from wn_export.serving.service import GenerationService

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        export = Path(args["model_repository"]) / args["model_version"] / params.get("export", "export")
        self.service = GenerationService(export, backend=params.get("generation_backend", "auto"),
                                         checkpoint=export / params["checkpoint"] if params.get("checkpoint") else None,
                                         max_streams=int(params.get("max_streams", 16)),
                                         chunk=int(params.get("chunk", 4000)),
                                         max_samples=int(params.get("max_samples", 16000 * 600)),
                                         threads=int(params["threads"]) if params.get("threads") else None)
        self.inputs = [i["name"] for i in config["input"]]
        self.tokens = any(o["name"] == "tokens" for o in config["output"])
        self.service.start()
        pb_utils.Logger.log_info(f"{config['name']}: {self.service.setup}")
        if self.service.notice:
            pb_utils.Logger.log_warn(f"{config['name']}: {self.service.notice}")

    def execute(self, requests):
        from wn_export.errors import WNExportError

        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    inputs[name] = None if tensor is None else tensor.as_numpy()
                spec = self.service.parse(inputs, json.loads(request.parameters() or "{}"))
            except Exception as e:  # noqa: BLE001 - every bad request gets its error response, never a hang
                message = str(e) if isinstance(e, WNExportError) else f"{type(e).__name__}: {e}"
                error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            self.service.submit(spec, _Sender(sender, self.service.decode, self.tokens))
        return None

    def finalize(self):
        self.service.close()
