#!/usr/bin/env bash
# Create .venv and install wn-export with everything it needs on a fresh machine (CPU-only).
# torch is pinned to the local 2.13.0 CPU wheel: an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[cpu,dev,rtx,serve]"
# the ONNX Runtime host's native library (fused layer chain + sampler), compiled once for this machine;
# without a C++ compiler the host runs standard ONNX Runtime ops (slower) and says so
.venv/bin/python -c "from wn_export.backends.onnxruntime.native import available; p, why = available(print); print('native ONNX Runtime host library:', p or 'unavailable, ' + why)"
.venv/bin/python -c "import torch, onnx, onnxruntime; print('wn-export environment ready: torch', torch.__version__, '| onnx', onnx.__version__, '| onnxruntime', onnxruntime.__version__)"
