"""What the machine reports about itself: CPU model, the vector instructions the native kernels can use, cache
sizes, usable cores (Linux: /proc/cpuinfo and /sys; elsewhere what `platform` says). `wn-export bench` prints it
and `policy` keys its measurements by it."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# the flags that matter to the kernels: vector width (avx2 / avx512f), float16 conversion (f16c),
# bfloat16 and float16 arithmetic (avx512_bf16, avx512_fp16), matrix units (amx_tile)
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _caches() -> dict[str, str]:
    """Level → size per core as the kernel reports it (e.g. {"L1d": "32K", "L2": "1024K", "L3": "32768K"})."""
    out = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            out[f"L{level}{'d' if kind == 'Data' else ''}"] = size
    return out


@lru_cache(maxsize=1)
def describe() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    caches = _caches()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "isa": [f for f in ISA_FLAGS if f in flags], "l1d": caches.get("L1d", "?"), "l2": caches.get("L2", "?"),
            "l3": caches.get("L3", "?"), "cpus": os.cpu_count(), "usable_cpus": usable,
            "hypervisor": "hypervisor" in flags}


def summary() -> str:
    m = describe()
    return (f"{m['cpu']}, {m['usable_cpus']} usable of {m['cpus']} CPUs{' (virtual machine)' if m['hypervisor'] else ''}; "
            f"ISA {' '.join(m['isa']) or 'none of ' + '/'.join(ISA_FLAGS[:5])}; L1d {m['l1d']}, L2 {m['l2']} per core, "
            f"L3 {m['l3']}")
