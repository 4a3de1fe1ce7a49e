#!/usr/bin/env bash
# Build the C++ host: fetch the pinned dependencies, configure with CMake, build (incremental).
#
# Usage: build.sh [--build-dir DIR] [--with-tensorrt] [--tensorrt-root DIR] [--ort-root DIR]
#                 [--sanitize] [--jobs N] [--no-fetch] [-- EXTRA CMAKE ARGS]
#   --build-dir DIR      build tree (default hosts/cpp/build, or hosts/cpp/build-asan with --sanitize;
#                        reused, so rebuilds are incremental)
#   --sanitize           AddressSanitizer + UndefinedBehaviorSanitizer build (-DWN_SANITIZE=ON, -O1 -g);
#                        see hosts/cpp/README.md "Sanitizer build" for the run-time options
#   --with-tensorrt      compile the TensorRT backend (headers fetched from PyPI `kernel-lens` unless
#                        --tensorrt-root is given; linked only when a TensorRT library is found)
#   --tensorrt-root DIR  an installed TensorRT (include/, lib/): compile AND link the TensorRT backend
#   --ort-root DIR       an installed ONNX Runtime (include/, lib/) instead of the fetched one
#   --no-fetch           do not run fetch_deps.sh
# Environment: PYTHON (python with pip for fetch_deps.sh), WN_ORT_VERSION and the other pins of fetch_deps.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD=""
SANITIZE=0
WITH_TRT=0
TRT_ROOT=""
ORT_ROOT=""
FETCH=1
JOBS="$(nproc 2>/dev/null || echo 2)"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) BUILD="$2"; shift ;;
    --with-tensorrt) WITH_TRT=1 ;;
    --tensorrt-root) WITH_TRT=1; TRT_ROOT="$2"; shift ;;
    --ort-root) ORT_ROOT="$2"; shift ;;
    --jobs|-j) JOBS="$2"; shift ;;
    --no-fetch) FETCH=0 ;;
    --sanitize) SANITIZE=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

command -v cmake >/dev/null || { echo "build.sh: error: cmake (>= 3.20) is required" >&2; exit 1; }
if [[ -z "$BUILD" ]]; then
  if [[ "$SANITIZE" == 1 ]]; then BUILD="$HERE/build-asan"; else BUILD="$HERE/build"; fi
fi

if [[ "$FETCH" == 1 ]]; then
  args=()
  [[ "$WITH_TRT" == 1 && -z "$TRT_ROOT" ]] && args+=(--with-tensorrt)
  [[ -n "$ORT_ROOT" ]] && args+=(--no-onnxruntime)
  "$HERE/fetch_deps.sh" ${args[@]+"${args[@]}"}
fi

if [[ "$SANITIZE" == 1 ]]; then
  # -O1: fast to build and to run under the sanitizers; manifest.cpp stays at -O1 as in Release
  cfg=(-S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWN_SANITIZE=ON
       "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g -DNDEBUG")
else
  cfg=(-S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DWN_SANITIZE=OFF)
fi
if [[ -z "${CMAKE_GENERATOR:-}" && ! -f "$BUILD/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  cfg+=(-G Ninja)
fi
[[ -n "$ORT_ROOT" ]] && cfg+=("-DWN_ORT_ROOT=$ORT_ROOT")
if [[ "$WITH_TRT" == 1 ]]; then
  cfg+=(-DWN_WITH_TENSORRT=ON)
  [[ -n "$TRT_ROOT" ]] && cfg+=("-DTensorRT_ROOT=$TRT_ROOT")
else
  cfg+=(-DWN_WITH_TENSORRT=OFF)
fi
start=$(date +%s)
cmake "${cfg[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
cmake --build "$BUILD" -j "$JOBS"
echo "build.sh: built $BUILD/wn_generate, $BUILD/wn_score and $BUILD/wn_manifest_check in $(( $(date +%s) - start )) s" >&2
