"""`wn-export triton-bench`: generation served by Triton against the in-process host, in one run.

For an export directory it writes a repository with the generation model only, starts the
nvidia-pytriton `tritonserver` on loopback (`LocalTriton`) and, per round:
- in-process: `Generator.generate(samples, batch=streams, seed)` (our ONNX Runtime host, one process);
- server: `streams` concurrent requests (one client thread each, gRPC streaming or HTTP generate_stream)
  for stream i of a `streams`-stream generation with the same seed, so the server must return exactly
  the in-process tokens (checked: any difference is an error).
- the stream batcher in process: the generation model's own loop (`StreamBatcher`, the same requests),
  without the server, which separates the loop's cost from the server's.
Rounds alternate the three while the others are idle. Throughput is all samples over the wall time; chunk
latency is the time between one stream's consecutive chunks (the first one counted from the request).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from wn_export.errors import InputError, ParityError


@dataclass
class TritonBenchReport:
    directory: str
    streams: int
    samples: int
    protocol: str
    chunk: int
    inprocess: list[float] = field(default_factory=list)  # samples/s per round
    server: list[float] = field(default_factory=list)
    batcher: list[float] = field(default_factory=list)  # the stream batcher in process
    latencies_ms: list[float] = field(default_factory=list)  # every chunk gap of every round
    first_chunk_ms: list[float] = field(default_factory=list)
    startup_s: float = 0.0
    setup: str = ""

    def figures(self) -> dict:
        lat = np.asarray(self.latencies_ms or self.first_chunk_ms)
        host, served = float(np.median(self.inprocess)), float(np.median(self.server))
        return {"inprocess_samples_per_s": host, "server_samples_per_s": served, "ratio": served / host,
                "batcher_samples_per_s": float(np.median(self.batcher)) if self.batcher else None,
                "chunk_latency_p50_ms": float(np.percentile(lat, 50)), "chunk_latency_p99_ms": float(np.percentile(lat, 99)),
                "first_chunk_p99_ms": float(np.percentile(self.first_chunk_ms, 99))}

    def text(self) -> str:
        f = self.figures()
        rounds = lambda v: ", ".join(f"{x:,.0f}" for x in v)
        return "\n".join([
            f"{self.directory}: {self.streams} streams × {self.samples:,} samples, chunks of {self.chunk}, "
            f"{self.protocol}; host: {self.setup}; server ready in {self.startup_s:.1f} s",
            f"in-process host, batch {self.streams}:   {f['inprocess_samples_per_s']:>10,.0f} samples/s  "
            f"(rounds: {rounds(self.inprocess)})",
            f"stream batcher in process:     {f['batcher_samples_per_s']:>10,.0f} samples/s  "
            f"(rounds: {rounds(self.batcher)})",
            f"Triton, {self.streams} concurrent streams: {f['server_samples_per_s']:>10,.0f} samples/s  "
            f"(rounds: {rounds(self.server)})",
            f"server ÷ in-process: {f['ratio']:.0%}   tokens identical in every round",
            f"chunk latency p50 {f['chunk_latency_p50_ms']:,.0f} ms, p99 {f['chunk_latency_p99_ms']:,.0f} ms; "
            f"first chunk p99 {f['first_chunk_p99_ms']:,.0f} ms"])

    def to_json(self) -> str:
        return json.dumps({**asdict(self), **self.figures()}, indent=2) + "\n"


def _serve_round(url: str, streams: int, samples: int, seed: int, timeout: float):
    """All streams at once → (tokens (streams, samples), wall seconds, chunk gaps ms, first-chunk ms)."""
    from wn_export.serving.client import stream

    tokens = np.zeros((streams, samples), dtype=np.int64)
    gaps: list[list[float]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []
    start = threading.Barrier(streams + 1)

    def run(i: int) -> None:
        try:
            start.wait()
            last = time.perf_counter()
            for chunk in stream(url, samples, seed=seed, streams=streams, stream_index=i, timeout=timeout):
                now = time.perf_counter()
                gaps[i].append((now - last) * 1e3)
                last = now
                tokens[i, chunk.offset:chunk.offset + len(chunk.tokens)] = chunk.tokens
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return tokens, wall, [g for per in gaps for g in per[1:]], [per[0] for per in gaps]


def _batcher_round(gen, streams: int, samples: int, seed: int, chunk: int, reference: np.ndarray) -> float:
    """The generation model's loop without the server: samples/s for the same requests."""
    from wn_export.serving.streams import StreamBatcher

    class Keep:
        def __init__(self):
            self.parts = []

        def chunk(self, offset, values):
            self.parts.append(values.copy())

        def finish(self, error=None):
            self.error = error

        def cancelled(self):
            return False

    batcher = StreamBatcher(gen, max_streams=streams, chunk=chunk)
    sinks = [Keep() for _ in range(streams)]
    t = time.perf_counter()
    for i, sink in enumerate(sinks):
        batcher.submit(batcher.validate(samples, seed=seed, streams=streams, index=i), sink)
    while batcher.busy:
        batcher.step_burst()
    rate = streams * samples / (time.perf_counter() - t)
    if not all(np.array_equal(np.concatenate(k.parts), reference[i]) for i, k in enumerate(sinks)):
        raise ParityError("the stream batcher's tokens differ from the in-process host's")
    return rate


def run_triton_bench(directory, *, streams: int = 16, samples: int = 8000, rounds: int = 2, protocol: str = "grpc",
                     chunk: int = 4000, timeout: float = 120.0,
                     progress: Callable[[str], None] | None = None) -> TritonBenchReport:
    from wn_export.generation import Generator
    from wn_export.serving.local_server import LocalTriton
    from wn_export.serving.triton_repo import Options, write_repository

    if streams < 1 or samples < 1 or rounds < 1 or chunk < 1:
        raise InputError("streams, samples, rounds and chunk must be positive")
    say = progress or (lambda _m: None)
    report = TritonBenchReport(str(directory), streams, samples, protocol, chunk)
    with tempfile.TemporaryDirectory(prefix="wn-triton-bench-") as tmp:
        repo = write_repository(directory, Path(tmp) / "repo",
                                Options(models=("generate",), max_streams=streams, chunk=chunk))
        t0 = time.perf_counter()
        with LocalTriton([repo], models=["generate"]) as server, Generator(directory) as gen:
            report.startup_s = time.perf_counter() - t0
            report.setup = gen.setup
            url = server.grpc_url if protocol == "grpc" else server.http_url
            say("warm-up")
            _serve_round(url, streams, min(samples, 2 * chunk), 99, timeout)
            gen.generate(min(samples, 2000), batch=streams, seed=99)
            for r in range(rounds):
                say(f"round {r + 1}/{rounds}: in-process, batch {streams}")
                t = time.perf_counter()
                reference = gen.generate(samples, batch=streams, seed=r)
                report.inprocess.append(streams * samples / (time.perf_counter() - t))
                say(f"round {r + 1}/{rounds}: stream batcher in process")
                report.batcher.append(_batcher_round(gen, streams, samples, r, chunk, reference))
                say(f"round {r + 1}/{rounds}: Triton, {streams} streams over {protocol}")
                tokens, wall, gaps, first = _serve_round(url, streams, samples, r, timeout)
                report.server.append(streams * samples / wall)
                report.latencies_ms += gaps
                report.first_chunk_ms += first
                if not np.array_equal(tokens, reference):
                    bad = int(np.argwhere((tokens != reference).any(axis=1))[0, 0])
                    raise ParityError(f"round {r + 1}: stream {bad} from the server differs from the in-process host")
    return report
