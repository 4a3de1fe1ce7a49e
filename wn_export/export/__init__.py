"""Checkpoint → ONNX graphs: the exported nn.Module wrappers, the FP16 precision policy, the step-graph
lowering, hygiene checks, and the export pipeline (an explicit list of passes, staged and atomic)."""
