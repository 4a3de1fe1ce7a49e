"""Client of the `generate` model: stream one request over gRPC (tritonclient) or HTTP (generate_stream).

    from wn_export.serving.client import stream

    for chunk in stream("grpc://127.0.0.1:8001", 16000, seed=7):   # or "http://127.0.0.1:8000"
        play(chunk.audio)                                            # float32, from sample chunk.offset

Every wait is bounded: `timeout` seconds for the connection and for each next response. A server error,
a dropped connection or a stream that ends before all samples arrived raises `ServingError` (one line).
"""

from __future__ import annotations

import json
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np

from wn_export.errors import InputError, WNExportError

MAX_SAMPLES = 1 << 28  # one WAV: 1 GiB of float32 audio at most


class ServingError(WNExportError):
    """The server refused a request, failed, went away or did not answer in time."""


@dataclass(frozen=True)
class Chunk:
    offset: int  # index of the chunk's first sample
    audio: np.ndarray  # float32 in [−1, 1]
    tokens: np.ndarray | None  # int64 μ-law tokens (None for mixture-of-logistics models)


def _endpoint(url: str) -> tuple[str, str]:
    parts = urlparse(url if "://" in url else f"grpc://{url}")
    if parts.scheme not in ("grpc", "http") or not parts.hostname or not parts.port:
        raise InputError(f"server URL must be grpc://HOST:PORT or http://HOST:PORT (got {url!r})")
    return parts.scheme, f"{parts.hostname}:{parts.port}"


def request_inputs(samples: int, *, seed: int | None = None, temperature: float | None = None,
                   method: str | None = None, speaker: int | None = None, conditioning: np.ndarray | None = None,
                   streams: int | None = None, stream_index: int | None = None) -> dict[str, np.ndarray]:
    """The request's input tensors (name → array with the model's dtype); None leaves an input out."""
    values = {"samples": (samples, np.int64), "seed": (seed, np.uint64), "temperature": (temperature, np.float64),
              "speaker": (speaker, np.int64), "streams": (streams, np.int64), "stream": (stream_index, np.int64)}
    out = {k: np.array([v], dtype=t) for k, (v, t) in values.items() if v is not None}
    if method is not None:
        out["method"] = np.array([method.encode()], dtype=np.object_)
    if conditioning is not None:
        out["conditioning"] = np.ascontiguousarray(conditioning, dtype=np.float32).reshape(-1)  # (C, frames) row-major
    return out


def stream(url: str, samples: int, *, model: str = "generate", timeout: float = 60.0, **options) -> Iterator[Chunk]:
    """Yield the chunks of one generation request (options: see `request_inputs`)."""
    scheme, address = _endpoint(url)
    inputs = request_inputs(samples, **options)
    chunks = _grpc(address, model, inputs, timeout) if scheme == "grpc" else _http(address, model, inputs, timeout)
    received = 0
    for chunk in chunks:
        if chunk.offset != received:
            raise ServingError(f"{url}: chunk at sample {chunk.offset} where {received} was expected")
        if np.ndim(chunk.audio) != 1 or received + len(chunk.audio) > samples:
            raise ServingError(f"{url}: a chunk of shape {list(np.shape(chunk.audio))} at sample {received:,} does not "
                               f"fit the {samples:,} samples asked for")
        received += len(chunk.audio)
        yield chunk
    if received != samples:
        raise ServingError(f"{url}: the stream ended after {received:,} of {samples:,} samples")


def _grpc(address: str, model: str, inputs: dict, timeout: float) -> Iterator[Chunk]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        tensors = []
        for name, value in inputs.items():
            t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            t.set_data_from_numpy(value)
            tensors.append(t)
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        while True:
            try:
                result, error = responses.get(timeout=timeout)
            except queue.Empty:
                raise ServingError(f"grpc://{address}: no response within {timeout:g} s") from None
            if error is not None:
                raise ServingError(f"grpc://{address}: {_message(error)}")
            response = result.get_response()
            if response.outputs:
                yield Chunk(int(result.as_numpy("offset")[0]), result.as_numpy("audio"), result.as_numpy("tokens"))
            if response.parameters["triton_final_response"].bool_param:
                return
    except InferenceServerException as e:
        raise ServingError(f"grpc://{address}: {_message(e)}") from None
    finally:
        try:
            client.stop_stream(cancel_requests=True)
        finally:
            client.close()


def _http(address: str, model: str, inputs: dict, timeout: float) -> Iterator[Chunk]:
    import http.client

    body = {k: (v.tolist() if v.dtype != np.object_ else v[0].decode()) for k, v in inputs.items()}
    body = {k: (v[0] if isinstance(v, list) and len(v) == 1 and k != "conditioning" else v) for k, v in body.items()}
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    where = f"http://{address}"
    try:
        conn.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body),
                     {"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raise ServingError(f"{where}: {_http_error(response.read())} (HTTP {response.status})")
        while True:
            line = response.readline()
            if not line:
                return
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise ServingError(f"{where}: {event['error']}")
            tokens = event.get("tokens")
            yield Chunk(int(np.ravel(event["offset"])[0]), np.asarray(event["audio"], dtype=np.float32),
                        None if tokens is None else np.asarray(tokens, dtype=np.int64))
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        raise ServingError(f"{where}: the stream broke ({type(e).__name__}: {e})") from None
    finally:
        conn.close()


def _http_error(body: bytes) -> str:
    text = body.strip()
    text = text[5:] if text.startswith(b"data:") else text  # an error raised before streaming, as an event
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text.decode("utf-8", "replace")[:200]


def _message(error) -> str:
    text = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    return (text or type(error).__name__).splitlines()[0]


def sample_rate(url: str, model: str = "generate", timeout: float = 10.0) -> int:
    """The generation model's sample rate, from its config's `sample_rate` parameter."""
    scheme, address = _endpoint(url)
    try:
        if scheme == "grpc":
            import tritonclient.grpc as grpcclient

            with grpcclient.InferenceServerClient(address) as client:
                config = client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
        else:
            import urllib.request

            with urllib.request.urlopen(f"http://{address}/v2/models/{model}/config", timeout=timeout) as r:
                config = json.loads(r.read())
        return int(config["parameters"]["sample_rate"]["string_value"])
    except (KeyError, ValueError, TypeError):
        raise ServingError(f"{url}: model {model} has no sample_rate parameter: is it a wn-export generate model?") \
            from None
    except Exception as e:  # noqa: BLE001 - transport errors of either client become one message
        raise ServingError(f"{url}: cannot read model {model}'s config: {_message(e)}") from None


def generate_wav(url: str, output: Path, samples: int, *, model: str = "generate", timeout: float = 60.0,
                 progress=None, **options) -> Path:
    """Stream one request into a WAV file (written atomically once every sample has arrived)."""
    from reference_model.files import check_output
    from wn_export.generation.audio import write_wav

    output = Path(output)
    if output.suffix.lower() != ".wav":
        raise InputError(f"output must be a .wav file (got {output})")
    check_output(output)  # writable, a legal name, not a directory: before the stream, not after it
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise InputError(f"samples must be an integer in [1, {MAX_SAMPLES:,}] (got {samples!r})")
    rate = sample_rate(url, model, timeout)
    audio = np.empty(samples, dtype=np.float32)
    for chunk in stream(url, samples, model=model, timeout=timeout, **options):
        audio[chunk.offset:chunk.offset + len(chunk.audio)] = chunk.audio
        if progress:
            progress(chunk.offset + len(chunk.audio), samples)
    write_wav(output, audio, rate)
    return output
