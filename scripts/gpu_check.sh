#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (for example an H200 with torch, triton and
# onnxruntime preinstalled, no TensorRT, no network; the project installed with
# `pip install --no-deps -e .`). Runs, each step under its own time limit and whatever the others did:
#   1. the environment: GPU name, driver, versions of torch / triton / onnxruntime / safetensors / pytest
#   2. the gpu-marked tests (tests/test_engines.py only when TensorRT is importable; tests/test_trt_plugin.py,
#      the fused step graph's PTX through the CUDA driver, when onnx, click and safetensors are)
#   3. the fused Triton step kernel vs the float64 reference: the demo checkpoint (needs safetensors)
#      and the 30-layer target config with random weights
#   4. its ahead-of-time PTX for this GPU's compute capability, assembled by ptxas (registers, spills)
#   5. its throughput: samples/s per stream at batch 1 and in aggregate at batch 64, 30-layer target
# and writes REPORT_DIR/gpu_check.md (+ the JSON and logs of every step). Exit 1 if any step failed.
#
#   bash scripts/gpu_check.sh [REPORT_DIR]      (default: $OUT, else ./gpu_check_out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out" || { echo "error: cannot create $out" >&2; exit 1; }
py="${PYTHON:-python}"
unset TRITON_INTERPRET
report="$out/gpu_check.md"
tmp_report="$(mktemp "$out/.gpu_check.md.XXXXXX")"
failed=0

note() { echo "$*" | tee -a "$tmp_report"; }

step() {  # step NAME LIMIT_SECONDS COMMAND... → log in $out/NAME.log, status line in the report
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local status="pass"
  [ "$rc" -eq 0 ] || { status="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))"; failed=1; }
  note "- **$name**: $status in $((SECONDS - t0)) s — \`$*\`"
  { echo '  ```'; tail -n 25 "$out/$name.log" | sed 's/^/  /'; echo '  ```'; } >>"$tmp_report"
}

has() { "$py" -c "import $1" >/dev/null 2>&1; }

note "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
note ""
note "## environment"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 \
    | sed 's/^/- gpu: /' | tee -a "$tmp_report"
fi
"$py" - <<'EOF' 2>&1 | sed 's/^/- /' | tee -a "$tmp_report"
import importlib, platform
print(f"python {platform.python_version()}")
for name in ("torch", "triton", "onnxruntime", "numpy", "safetensors", "onnx", "pytest", "tensorrt"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: not available ({type(e).__name__})")
import torch
print(f"torch.cuda: {torch.cuda.is_available()} {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
EOF
cc="$("$py" -c 'import torch; a, b = torch.cuda.get_device_capability(); print(a * 10 + b)' 2>/dev/null)"
if [ -z "$cc" ]; then
  note ""
  note "result: FAILED: torch sees no CUDA GPU here; this check needs one"
  chmod 644 "$tmp_report"; mv "$tmp_report" "$report"
  echo "error: no CUDA GPU visible to torch (report: $report)" >&2
  exit 1
fi
note ""
note "## steps"

if has pytest; then
  has tensorrt || note "- TensorRT is not importable: tests/test_engines.py not run"
  tests=(tests/test_triton_kernel.py)  # the other test modules need the full dependency set to import
  has tensorrt && tests+=(tests/test_engines.py)
  # the fused step graph's PTX launched as the TensorRT plugins launch it (+ a TensorRT build when importable)
  if has onnx && has click && has safetensors; then
    tests+=(tests/test_trt_plugin.py)
  else
    note "- onnx, click or safetensors is not installed: tests/test_trt_plugin.py (fused graph's PTX) not run"
  fi
  step gpu_tests 600 "$py" -m pytest -m gpu -q -rA -p no:cacheprovider "${tests[@]}"
else
  note "- pytest is not installed: the gpu-marked tests were not run (step 3 runs the same parity)"
fi

if has safetensors; then
  step parity_demo 600 "$py" -m wn_export.backends.triton.check parity --model demo --json "$out/parity_demo.json"
else
  note "- safetensors is not installed: the demo checkpoint cannot be read; parity on random weights only"
fi
cat >"$out/small_config.json" <<'EOF'
{"quantization_channels": 24, "residual_channels": 7, "gate_channels": 12, "skip_channels": 5, "kernel_size": 3,
 "layers": 4, "stacks": 2, "local_channels": 3, "hop_size": 4, "upsample": "linear", "speakers": 3,
 "speaker_channels": 2, "scale_residual": true, "scale_skip": true}
EOF
step parity_conditioned 300 "$py" -m wn_export.backends.triton.check parity --model "$out/small_config.json" \
  --scale 0.4 --steps 400 --generate 400 --json "$out/parity_conditioned.json"
step parity_target 600 "$py" -m wn_export.backends.triton.check parity --model target --scale 0.1 \
  --steps 3100 --generate 500 --json "$out/parity_target.json"
step aot_ptx 300 "$py" -m wn_export.backends.triton.aot --arch "$cc" -o "$out/ptx" --precision fp16,fp32 \
  --variant step,sample
step bench 900 "$py" -m wn_export.backends.triton.check bench --model target --batch 1,64 \
  --precision fp16,fp32 --num-warps 4,8 --steps 2000 --json "$out/bench.json"

note ""
note "result: $([ "$failed" -eq 0 ] && echo 'all steps passed' || echo 'FAILED (see the steps above)')"
chmod 644 "$tmp_report"; mv "$tmp_report" "$report"
echo "report: $report"
exit "$failed"
