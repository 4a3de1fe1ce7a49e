#!/usr/bin/env bash
# Create .venv and install wn-export with everything it needs on a fresh machine (CPU-only).
# torch is pinned to the local 2.13.0 CPU wheel: an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[cpu,dev,rtx]"
.venv/bin/python -c "import torch, onnx, onnxruntime; print('wn-export environment ready: torch', torch.__version__, '| onnx', onnx.__version__, '| onnxruntime', onnxruntime.__version__)"
