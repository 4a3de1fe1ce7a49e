"""Serving on NVIDIA Triton Inference Server.

- `triton_repo`: `wn-export triton`, a model repository (generation, step and scoring models) from a manifest;
- `streams`: continuous batching of generation streams over one step runner (`StreamBatcher`);
- `service`: the generation model's logic (input tensors → streams), independent of Triton;
- `models/generate_model.py`: the python-backend model the repository copies;
- `client`: `wn-export triton-client`, one request streamed over gRPC or HTTP into chunks or a WAV;
- `local_server`: the nvidia-pytriton `tritonserver` on loopback (`wn-export triton-serve`, tests, bench);
- `bench`: `wn-export triton-bench`, served generation against the in-process host.

Heavy imports (tritonclient, onnx, onnxruntime) happen inside the functions that need them.
"""
