#!/usr/bin/env bash
# Fetch the C++ host's third-party build inputs, pinned, into hosts/cpp/third_party/ (git-ignored).
#
#   onnxruntime/lib      libonnxruntime.so.<V> from the PyPI `onnxruntime` wheel (+ .so.1 / .so links)
#   onnxruntime/include  ORT C/C++ API headers from the npm package com.github.asus4.onnxruntime
#                        (Plugins/Android/onnxruntime.aar → headers/); API version <= the library's
#   nlohmann/include     nlohmann/json (Debian nlohmann-json3-dev via `apt-get download`, no install),
#                        skipped when the system already has <nlohmann/json.hpp>
#   tensorrt/include     (--with-tensorrt) TensorRT 10.14 headers from the PyPI package `kernel-lens`
#   cuda/include         (--with-tensorrt, only when no CUDA toolkit is found) CUDA runtime headers
#                        from the PyPI wheels nvidia-cuda-runtime + nvidia-cuda-crt
#
# Idempotent: every component has a stamp naming its pinned version; a matching stamp skips it.
# Downloads go to third_party/downloads/ (the two large ONNX Runtime archives are removed once
# extracted). Any failure exits non-zero.
#
# Usage: fetch_deps.sh [--with-tensorrt] [--no-onnxruntime] [--dest DIR]
# Environment (pins; override deliberately):
#   PYTHON                   python with pip, for `pip download` (default: python3)
#   WN_ORT_VERSION           onnxruntime wheel version              (default 1.32.0)
#   WN_ORT_HEADERS_VERSION   com.github.asus4.onnxruntime npm version (default 0.4.9: ORT_API_VERSION 29)
#   WN_KERNEL_LENS_VERSION   kernel-lens version (TensorRT headers)  (default 2.0.1: TensorRT 10.14.1)
#   WN_NLOHMANN_VERSION      Debian nlohmann-json3-dev version       (default 3.11.2-2)
#   WN_CUDA_WHEEL_VERSION    nvidia-cuda-runtime wheel version       (default 13.0.96)
#   WN_CUDA_CRT_VERSION      nvidia-cuda-crt wheel version           (default 13.0.88)
#   WN_FORCE_PYPI_CUDA=1     fetch the CUDA headers from PyPI even when a toolkit exists
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/third_party"
WITH_TRT=0
WITH_ORT=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-tensorrt) WITH_TRT=1 ;;
    --no-onnxruntime) WITH_ORT=0 ;;
    --dest) DEST="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "fetch_deps.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

PYTHON="${PYTHON:-python3}"
ORT_VERSION="${WN_ORT_VERSION:-1.32.0}"
ORT_HEADERS_VERSION="${WN_ORT_HEADERS_VERSION:-0.4.9}"
KERNEL_LENS_VERSION="${WN_KERNEL_LENS_VERSION:-2.0.1}"
NLOHMANN_VERSION="${WN_NLOHMANN_VERSION:-3.11.2-2}"
CUDA_RT_VERSION="${WN_CUDA_WHEEL_VERSION:-13.0.96}"
CUDA_CRT_VERSION="${WN_CUDA_CRT_VERSION:-13.0.88}"

# sha256 of the pinned default artifacts (checked when the downloaded file name is listed here)
declare -A SHA256=(
  [onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl]=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
  [com.github.asus4.onnxruntime-0.4.9.tgz]=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
  [kernel_lens-2.0.1-py3-none-any.whl]=07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0
  [nlohmann-json3-dev_3.11.2-2_all.deb]=ec57940def6b6186c30be0e0ee81d1e58f86d11a54a145b28686a1e3e4aae801
  [nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl]=7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
  [nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl]=2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
)

DL="$DEST/downloads"
mkdir -p "$DL"

say() { echo "fetch_deps: $*" >&2; }
die() { echo "fetch_deps: error: $*" >&2; exit 1; }
stamp_ok() { [[ -f "$1/.stamp" && "$(cat "$1/.stamp")" == "$2" ]]; }

verify() {  # verify FILE: check a pinned sha256 when one is known
  local f="$1" name; name="$(basename "$f")"
  local want="${SHA256[$name]:-}"
  local got; got="$(sha256sum "$f" | cut -d' ' -f1)"
  if [[ -n "$want" && "$got" != "$want" ]]; then
    rm -f "$f"
    die "$name: sha256 $got does not match the pinned $want (download removed)"
  fi
  [[ -n "$want" ]] || say "note: no pinned sha256 for $name (it is $got)"
}

need_pip() {
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available (set PYTHON to a python with pip)"
}

pip_download() {  # pip_download REQ GLOB → prints the downloaded file
  local req="$1" glob="$2" f
  f="$(ls "$DL"/$glob 2>/dev/null | head -n1 || true)"
  if [[ -z "$f" ]]; then
    need_pip
    say "pip download $req"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q -d "$DL" "$req" >&2 \
      || die "pip download $req failed"
    f="$(ls "$DL"/$glob 2>/dev/null | head -n1 || true)"
    [[ -n "$f" ]] || die "pip download $req produced no file matching $glob"
    verify "$f"
  fi
  echo "$f"
}

unzip_to() {  # unzip_to ARCHIVE PREFIX DEST: extract the members under PREFIX into DEST (prefix stripped)
  "$PYTHON" - "$1" "$2" "$3" <<'PY' || die "cannot extract $2 from $1"
import os, shutil, sys, zipfile
archive, prefix, dest = sys.argv[1:]
n = 0
with zipfile.ZipFile(archive) as z:
    for m in z.infolist():
        if not m.filename.startswith(prefix) or m.is_dir():
            continue
        rel = m.filename[len(prefix):].lstrip("/")
        out = os.path.join(dest, rel) if rel else dest  # an exact member name extracts to DEST itself
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with z.open(m) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        n += 1
if n == 0:
    sys.exit(f"no members under {prefix!r} in {archive}")
PY
}

# ---- ONNX Runtime: shared library (PyPI wheel) + C/C++ API headers (npm .aar) ------------------------
ORT="$DEST/onnxruntime"
ORT_STAMP="lib=$ORT_VERSION headers=$ORT_HEADERS_VERSION"
if [[ "$WITH_ORT" == 0 ]]; then
  say "onnxruntime: skipped (--no-onnxruntime)"
elif stamp_ok "$ORT" "$ORT_STAMP"; then
  say "onnxruntime $ORT_VERSION (headers npm $ORT_HEADERS_VERSION) already present"
else
  rm -rf "$ORT" && mkdir -p "$ORT/lib" "$ORT/include"
  whl="$(pip_download "onnxruntime==$ORT_VERSION" "onnxruntime-$ORT_VERSION-*.whl")"
  unzip_to "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ORT/lib/libonnxruntime.so.$ORT_VERSION"
  chmod 755 "$ORT/lib/libonnxruntime.so.$ORT_VERSION"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT/lib/libonnxruntime.so.1"
  ln -sf "libonnxruntime.so.1" "$ORT/lib/libonnxruntime.so"

  tgz="$DL/com.github.asus4.onnxruntime-$ORT_HEADERS_VERSION.tgz"
  if [[ ! -f "$tgz" ]]; then
    command -v npm >/dev/null || die "npm is needed to fetch the ONNX Runtime headers (npm pack com.github.asus4.onnxruntime)"
    say "npm pack com.github.asus4.onnxruntime@$ORT_HEADERS_VERSION (~150 MB)"
    (cd "$DL" && npm pack --silent "com.github.asus4.onnxruntime@$ORT_HEADERS_VERSION" >/dev/null 2>"$DL/npm.log") \
      || die "npm pack com.github.asus4.onnxruntime@$ORT_HEADERS_VERSION failed: $(tail -n1 "$DL/npm.log")"
    [[ -f "$tgz" ]] || die "npm pack did not produce $(basename "$tgz")"
    verify "$tgz"
  fi
  tmp="$(mktemp -d "$DEST/.aar.XXXXXX")"
  tar -xzf "$tgz" -C "$tmp" package/Plugins/Android/onnxruntime.aar || { rm -rf "$tmp"; die "no onnxruntime.aar in $(basename "$tgz")"; }
  unzip_to "$tmp/package/Plugins/Android/onnxruntime.aar" "headers/" "$ORT/include"
  rm -rf "$tmp"
  api_h="$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$ORT/include/onnxruntime_c_api.h")"
  api_lib="$(echo "$ORT_VERSION" | cut -d. -f2)"
  [[ -n "$api_h" && "$api_h" -le "$api_lib" ]] \
    || die "ORT headers declare ORT_API_VERSION $api_h, newer than the library $ORT_VERSION: pick an older WN_ORT_HEADERS_VERSION"
  echo "$ORT_STAMP" > "$ORT/.stamp"
  rm -f "$tgz" "$whl"  # 180 MB of archives; the stamp keeps them from being fetched again
  say "onnxruntime $ORT_VERSION ready (headers: ORT_API_VERSION $api_h)"
fi

# ---- nlohmann/json ---------------------------------------------------------------------------------
JSON="$DEST/nlohmann"
if [[ -f /usr/include/nlohmann/json.hpp ]]; then
  say "nlohmann/json: using the system's /usr/include/nlohmann"
elif stamp_ok "$JSON" "$NLOHMANN_VERSION"; then
  say "nlohmann/json $NLOHMANN_VERSION already present"
else
  deb="$DL/nlohmann-json3-dev_${NLOHMANN_VERSION}_all.deb"
  if [[ ! -f "$deb" ]]; then
    command -v apt-get >/dev/null || die "apt-get is needed to fetch nlohmann-json3-dev (or install it / pass -DWN_JSON_INCLUDE_DIR)"
    say "apt-get download nlohmann-json3-dev=$NLOHMANN_VERSION"
    apt_dl() { (cd "$DL" && apt-get download -qq -o APT::Sandbox::User=root "nlohmann-json3-dev=$NLOHMANN_VERSION" >/dev/null 2>"$DL/apt.log"); }
    if ! apt_dl; then
      if [[ "$(id -u)" == 0 ]]; then  # e.g. a CI image without package lists: fetch them, then retry
        say "apt-get download failed ($(tail -n1 "$DL/apt.log")); running apt-get update"
        apt-get update -qq >/dev/null 2>>"$DL/apt.log" || true
      fi
      apt_dl || die "apt-get download nlohmann-json3-dev=$NLOHMANN_VERSION failed: $(tail -n1 "$DL/apt.log") (try apt-get update, or install nlohmann-json3-dev)"
    fi
    verify "$deb"
  fi
  rm -rf "$JSON" && mkdir -p "$JSON"
  tmp="$(mktemp -d "$DEST/.deb.XXXXXX")"
  dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; die "cannot unpack $(basename "$deb")"; }
  mkdir -p "$JSON/include" && cp -r "$tmp/usr/include/nlohmann" "$JSON/include/"
  rm -rf "$tmp"
  echo "$NLOHMANN_VERSION" > "$JSON/.stamp"
  say "nlohmann/json $NLOHMANN_VERSION ready"
fi

# ---- TensorRT headers (+ CUDA headers when no toolkit is installed) ----------------------------------
if [[ "$WITH_TRT" == 1 ]]; then
  TRT="$DEST/tensorrt"
  if stamp_ok "$TRT" "kernel-lens=$KERNEL_LENS_VERSION"; then
    say "TensorRT headers (kernel-lens $KERNEL_LENS_VERSION) already present"
  else
    rm -rf "$TRT" && mkdir -p "$TRT/include"
    whl="$(pip_download "kernel-lens==$KERNEL_LENS_VERSION" "kernel_lens-$KERNEL_LENS_VERSION-*.whl")"
    unzip_to "$whl" "kernel_lens/include/tensorrt/" "$TRT/include"
    [[ -f "$TRT/include/NvInferRuntime.h" ]] || die "kernel-lens $KERNEL_LENS_VERSION has no NvInferRuntime.h"
    echo "kernel-lens=$KERNEL_LENS_VERSION" > "$TRT/.stamp"
    say "TensorRT headers ready ($(sed -n 's/^#define TRT_\(MAJOR\|MINOR\|PATCH\)_ENTERPRISE \([0-9]*\)/\2/p' "$TRT/include/NvInferVersion.h" | paste -sd.))"
  fi

  have_cuda=0
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" /usr/local/cuda; do
    [[ -n "$d" && -f "$d/include/cuda_runtime_api.h" ]] && have_cuda=1
  done
  # a wrapper script nvcc (e.g. /usr/local/bin/nvcc) is resolved by CMake itself; /usr/local/cuda covers it here
  CUDA="$DEST/cuda"
  if [[ "$have_cuda" == 1 && "${WN_FORCE_PYPI_CUDA:-0}" != 1 ]]; then
    say "CUDA toolkit found: using its headers"
  elif stamp_ok "$CUDA" "runtime=$CUDA_RT_VERSION crt=$CUDA_CRT_VERSION"; then
    say "CUDA headers (PyPI $CUDA_RT_VERSION) already present"
  else
    rm -rf "$CUDA" && mkdir -p "$CUDA/include"
    whl="$(pip_download "nvidia-cuda-runtime==$CUDA_RT_VERSION" "nvidia_cuda_runtime-$CUDA_RT_VERSION-*.whl")"
    unzip_to "$whl" "nvidia/cu13/include/" "$CUDA/include"
    whl="$(pip_download "nvidia-cuda-crt==$CUDA_CRT_VERSION" "nvidia_cuda_crt-$CUDA_CRT_VERSION-*.whl")"
    unzip_to "$whl" "nvidia/cu13/include/" "$CUDA/include"
    [[ -f "$CUDA/include/crt/host_defines.h" ]] || die "the CUDA wheels lack crt/host_defines.h"
    echo "runtime=$CUDA_RT_VERSION crt=$CUDA_CRT_VERSION" > "$CUDA/.stamp"
    say "CUDA headers ready (PyPI nvidia-cuda-runtime $CUDA_RT_VERSION)"
  fi
fi
say "done: $DEST"
