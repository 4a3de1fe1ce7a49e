"""ONNX Runtime backend: runners (scoring, step, upsample), the fused-step graph rewrite and its native
library (plugins/ort). Imports onnxruntime lazily, never torch."""
