"""plugins/ort/kernels.cc compiled on its own with small C++ checkers (tests/native/), under flags the library itself is
not built with here.

- The GEMMs' bit contract (plugins/ort/README.md): every element is one FMA chain over k in order, whatever the
  batch, the row, the column tail, the weight type and whether A comes in one part or two. GCC's tuning for some AMD
  cores leaves products unfused where nothing forces an FMA, which made a row's bits depend on its batch on AVX2
  builds and gemm_from2 differ from gemm_from in the scalar column tail; the kernels now spell their FMAs.
- The helper thread's claims: with the windows between a job's publication and the helper leaving the previous job
  stretched (WN_WIDEN_RACE_WINDOWS), every task of jobs of alternating sizes runs exactly once."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {
    "native": ["-march=native"],
    "avx2-zen-tuning": ["-march=x86-64-v3", "-mtune=znver3"],  # what an AVX2 AMD machine's -march=native tunes for
    "sse-no-fma": ["-march=x86-64"],
}


def _checker(tmp_path, source: str, flags: list[str]) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    assert cxx, "a C++ compiler is needed (the native library is built with it too)"
    exe = tmp_path / Path(source).stem
    src = ROOT / "plugins" / "ort"
    build = subprocess.run([cxx, "-O3", "-std=gnu++17", "-ffp-contract=fast", "-pthread", "-w", *flags, f"-I{src}",
                            str(ROOT / "tests" / "native" / source), str(src / "kernels.cc"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    return exe


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the flag sets are x86-64's")
@pytest.mark.parametrize("name", list(FLAGS))
def test_every_gemm_element_is_one_fma_chain(tmp_path, name):
    run = subprocess.run([str(_checker(tmp_path, "gemm_bits.cc", FLAGS[name]))], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("mismatches 0"), run.stdout[-2000:]
    assert int(run.stdout.split("checked ")[1].split()[0]) > 1_000_000


def test_a_task_of_the_next_job_is_never_claimed_under_the_last_one(tmp_path):
    exe = _checker(tmp_path, "claim_race.cc", ["-DWN_WIDEN_RACE_WINDOWS"])
    run = subprocess.run([str(exe), "50000"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and " bad 0 " in run.stdout, run.stdout[-2000:]
    assert int(run.stdout.split("helped ")[1]) > 0  # the helper took part
