"""Ahead-of-time PTX of the fused step kernel for NVIDIA GPUs, without a GPU.

    python -m wn_export.backends.triton.aot --arch 80,90 -o DIR [--config target|demo|CONFIG.json]
        [--precision fp16,fp32] [--variant step,sample] [--num-warps 4] [--no-ptxas]

For every (variant, precision, arch) this writes `wavenet_steps.<variant>.<precision>.sm_<cc>.ptx` and a
`.json` beside it: the kernel's entry name, parameter list, shared memory, warps, grid rule, constexprs,
the PTX's sha256 and, when `ptxas` is found, the registers and spills it reports (`ptxas -v`). Both
files are written to temporary names and renamed.

Variants: `step` (one sample, logits out), `sample` (K samples per launch, inverse-CDF draw in the
kernel from supplied uniforms), `greedy` (K samples, argmax). `ptx_version` is pinned (default 8.3) so
that the PTX assembles with CUDA 12.3+ toolchains and drivers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from reference_model import WaveNetConfig
from reference_model.atomic import atomic_write_bytes
from wn_export.backends.triton.layout import KernelLayout, target_config
from wn_export.errors import BackendError, InputError

VARIANTS = {"step": (False, False), "sample": (True, False), "greedy": (True, True)}  # → (DRAW, GREEDY)
PTX_VERSION = 83
_WEIGHT = {"fp32": "*fp32", "fp16": "*fp16"}


def signature(precision: str) -> dict[str, str]:
    """The kernel's runtime parameters and their Triton types (weights and ring state in `precision`)."""
    w = _WEIGHT[precision]
    return {"w_ptr": w, "table_ptr": "*i32", "state_ptr": w, "token_ptr": "*i64", "cond_ptr": "*fp32",
            "speaker_ptr": "*fp32", "u_ptr": "*fp64", "temperature_ptr": "*fp64", "tokens_out_ptr": "*i64",
            "logits_ptr": "*fp32", "position": "i64", "steps": "i32", "layers": "i32", "n_state": "i32",
            "residual_scale": "fp32", "skip_scale": "fp32"}


def plugin_signature(precision: str) -> dict[str, str]:
    """The TensorRT plugin kernel's (`kernel.wavenet_step_plugin`) runtime parameters: the plugin's
    inputs, its scalar arguments, its outputs (TensorRT's order for ahead-of-time plugin kernels)."""
    w = _WEIGHT[precision]
    return {"token_ptr": "*i64", "cond_ptr": "*fp32", "speaker_ptr": "*i64", "state_ptr": w, "position_ptr": "*i64",
            "w_ptr": w, "table_ptr": "*i32", "speaker_table_ptr": "*fp32", "layers": "i32", "n_state": "i32",
            "logits_ptr": "*fp32", "update_ptr": w}


def _compile(fn, sig: dict, constexprs: dict, cc: int, num_warps: int, ptx_version: int):
    """triton.compile of `fn` for sm_<cc> with 16-byte aligned pointers and no line info → CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if type(fn).__name__ == "InterpretedFunction":
        raise BackendError("unset TRITON_INTERPRET to compile the kernel ahead of time")
    full = {**sig, **{k: "constexpr" for k in constexprs}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n.endswith("_ptr")}
    try:
        with triton.knobs.compilation.scope():
            triton.knobs.compilation.disable_line_info = True  # no source paths: the same PTX from any checkout
            return triton.compile(ASTSource(fn, full, constexprs, aligned), target=GPUTarget("cuda", cc, 32),
                                  options=dict(num_warps=num_warps, num_stages=1, ptx_version=ptx_version,
                                               enable_fp_fusion=True))
    except Exception as e:  # noqa: BLE001 - a compiler failure is a backend error with its message
        raise BackendError(f"triton could not compile the step kernel for sm_{cc}: {e}") from None


def _check_choice(precision: str, variant: str) -> None:
    if precision not in _WEIGHT:
        raise InputError(f"unknown precision {precision!r} (choose from {', '.join(_WEIGHT)})")
    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")


def compile_ptx(cfg: WaveNetConfig, cc: int, precision: str = "fp16", variant: str = "step", num_warps: int = 4,
                ptx_version: int = PTX_VERSION, block_h: int | None = None, block_o: int | None = None) -> dict:
    """Compile for compute capability `cc` (80, 86, 89, 90 …) → {"ptx": text, "meta": the JSON record}."""
    import triton

    from wn_export.backends.triton.kernel import wavenet_steps

    _check_choice(precision, variant)
    layout = KernelLayout.of(cfg, block_h, block_o)
    draw, greedy = VARIANTS[variant]
    constexprs = {**layout.constexprs(), "DRAW": draw, "GREEDY": greedy}
    kernel = _compile(wavenet_steps, signature(precision), constexprs, cc, num_warps, ptx_version)
    ptx = kernel.asm["ptx"]
    md = kernel.metadata
    params = [{"name": n, "type": t} for n, t in signature(precision).items()]
    params += [{"name": "global_scratch", "type": "*i8", "bytes": md.global_scratch_size},
               {"name": "profile_scratch", "type": "*i8", "bytes": md.profile_scratch_size}]
    meta = {"kernel": md.name, "variant": variant, "precision": precision, "cc": cc,
            "target": _ptx_target(ptx), "ptx_version": ptx_version, "num_warps": md.num_warps,
            "threads_per_block": 32 * md.num_warps, "shared_bytes": md.shared,
            "grid": ["batch", 1, 1], "params": params, "pointer_alignment": 16,
            "constexprs": constexprs, "weights_elements": layout.size, "state_rows": layout.state_rows,
            "triton": triton.__version__, "config": cfg.to_dict(),
            "sha256": hashlib.sha256(ptx.encode()).hexdigest()}
    return {"ptx": ptx, "meta": meta}


PLUGIN_CC = 80  # the plugin's PTX targets sm_80: the driver JIT-compiles it for any newer GPU


def compile_plugin_ptx(cfg: WaveNetConfig, precision: str = "fp16", cc: int = PLUGIN_CC, num_warps: int = 4,
                       ptx_version: int = PTX_VERSION, block_h: int | None = None,
                       block_o: int | None = None) -> dict:
    """PTX of the TensorRT plugin kernel (`kernel.wavenet_step_plugin`) → {"ptx", "meta"}.

    Its parameters are exactly what TensorRT and `plugins/trt` pass: the plugin's 8 inputs, 2 int32
    scalars (layers, state rows), 2 outputs. Triton appends two scratch pointers that this kernel
    never reads (both sizes 0); they are removed from the entry so the PTX has no parameter a
    launcher does not set (refused if the body references them)."""
    from wn_export.backends.triton.kernel import wavenet_step_plugin

    _check_choice(precision, "step")
    layout = KernelLayout.of(cfg, block_h, block_o)
    scalars = layout.scalars()
    constexprs = {**layout.constexprs(), "RESIDUAL_SCALE": scalars["residual_scale"],
                  "SKIP_SCALE": scalars["skip_scale"]}
    kernel = _compile(wavenet_step_plugin, plugin_signature(precision), constexprs, cc, num_warps, ptx_version)
    md = kernel.metadata
    if md.global_scratch_size or md.profile_scratch_size:
        raise BackendError("the plugin kernel needs Triton scratch memory, which TensorRT does not provide")
    ptx = drop_trailing_params(kernel.asm["ptx"], md.name, len(plugin_signature(precision)))
    params = [{"name": n, "type": t} for n, t in plugin_signature(precision).items()]
    meta = {"kernel": md.name, "variant": "plugin", "precision": precision, "cc": cc, "target": _ptx_target(ptx),
            "ptx_version": ptx_version, "num_warps": md.num_warps, "threads_per_block": 32 * md.num_warps,
            "shared_bytes": md.shared, "grid": ["batch", 1, 1], "params": params, "pointer_alignment": 16,
            "constexprs": constexprs, "weights_elements": layout.size, "state_rows": layout.state_rows,
            "triton": __import__("triton").__version__, "config": cfg.to_dict(),
            "sha256": hashlib.sha256(ptx.encode()).hexdigest()}
    return {"ptx": ptx, "meta": meta}


_PARAM = re.compile(r"^\s*\.param\s+(\.\S+)[^\n]*?\b(\w+_param_(\d+))\s*,?\s*$", re.M)


def entry_params(ptx: str, entry: str) -> list[str]:
    """The PTX types (.u64, .u32 …) of `entry`'s parameters, in order."""
    start = ptx.find(f".entry {entry}(")
    if start < 0:
        raise BackendError(f"the PTX has no entry {entry}")
    block = ptx[start:ptx.index(")", start)]
    return [m.group(1) for m in _PARAM.finditer(block)]


def drop_trailing_params(ptx: str, entry: str, keep: int) -> str:
    """`entry` with only its first `keep` parameters; the dropped ones must be unreferenced."""
    start = ptx.index(f".entry {entry}(")
    end = ptx.index(")", start)
    lines = ptx[start:end].split("\n")
    params = [i for i, line in enumerate(lines) if _PARAM.match(line)]
    for i in params[keep:]:
        name = _PARAM.match(lines[i]).group(2)
        if len(re.findall(rf"\b{name}\b", ptx)) != 1:
            raise BackendError(f"the kernel reads its parameter {name}: it cannot be dropped")
    kept = [line for i, line in enumerate(lines) if i not in params[keep:]]
    last = params[keep - 1]
    kept[last] = kept[last].rstrip().rstrip(",")
    return ptx[:start] + "\n".join(kept).rstrip() + "\n" + ptx[end:]


def _ptx_target(ptx: str) -> str:
    m = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    if not m:
        raise BackendError("the compiled PTX has no .target line")
    return m.group(1).rstrip(",")


def find_ptxas(explicit: str | None = None) -> str | None:
    """`ptxas` from an explicit path, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, or the one bundled
    with triton; None if there is none."""
    if explicit:
        if not Path(explicit).is_file():
            raise InputError(f"ptxas {explicit} does not exist")
        return explicit
    found = shutil.which("ptxas")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "ptxas").is_file():
            return str(Path(root) / "bin" / "ptxas")
    try:
        import triton

        return triton.knobs.nvidia.ptxas.path
    except Exception:  # noqa: BLE001 - no bundled ptxas (or another triton layout): none found
        return None


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def assemble(ptx: str, target: str, ptxas: str) -> dict:
    """Assemble PTX text with `ptxas -v -arch=<target>` → registers, spills, stack, ptxas version."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([ptxas, "-v", f"-arch={target}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True)
    log = run.stdout + run.stderr
    if run.returncode != 0:
        raise BackendError(f"ptxas rejected the {target} PTX: {log.strip().splitlines()[-1] if log.strip() else run.returncode}")
    regs, spills = _REGISTERS.search(log), _SPILLS.search(log)
    if not regs or not spills:
        raise BackendError(f"cannot read registers/spills from the ptxas output: {log.strip()}")
    lines = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    version = [line for line in lines if "release" in line] or lines
    return {"registers": int(regs.group(1)), "stack_bytes": int(spills.group(1)),
            "spill_store_bytes": int(spills.group(2)), "spill_load_bytes": int(spills.group(3)),
            "ptxas": version[-1] if version else ptxas, "command": f"ptxas -v -arch={target} KERNEL.ptx"}


def write(result: dict, directory: Path) -> Path:
    """DIR/wavenet_steps.<variant>.<precision>.sm_<cc>.ptx and .json, each written to a temporary name
    and renamed → the .ptx path."""
    m = result["meta"]
    stem = f"wavenet_steps.{m['variant']}.{m['precision']}.sm_{m['cc']}"
    ptx_path, json_path = Path(directory) / f"{stem}.ptx", Path(directory) / f"{stem}.json"
    atomic_write_bytes(ptx_path, lambda tmp: Path(tmp).write_text(result["ptx"]))
    text = json.dumps(m, indent=2) + "\n"
    atomic_write_bytes(json_path, lambda tmp: Path(tmp).write_text(text))
    return ptx_path


def load_config(spec: str) -> WaveNetConfig:
    """"target" (the 30-layer model), "demo" (the bundled checkpoint's config) or a config JSON file."""
    if spec == "target":
        return target_config()
    if spec == "demo":
        from reference_model import load_checkpoint
        from wn_export import demo_checkpoint

        return load_checkpoint(demo_checkpoint()).cfg
    return WaveNetConfig.load(spec)


def build(cfg: WaveNetConfig, archs: list[int], directory: Path, precisions=("fp16",), variants=("step",),
          num_warps: int = 4, ptxas: str | None = None, use_ptxas: bool = True, say=print) -> list[dict]:
    """Compile every (variant, precision, arch), write it, assemble it if ptxas is there → the records."""
    for name, values, known in (("precision", precisions, _WEIGHT), ("variant", variants, VARIANTS)):
        bad = [v for v in values if v not in known]
        if bad or not values:
            raise InputError(f"unknown {name} {', '.join(bad) or '(none given)'} (choose from {', '.join(known)})")
    if not archs or any(cc < 70 for cc in archs):
        raise InputError(f"--arch takes compute capabilities ≥ 70 such as 80,90 (got {archs})")
    tool = find_ptxas(ptxas) if use_ptxas else None
    if use_ptxas and tool is None:
        say("ptxas not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, triton): registers and spills not reported")
    records = []
    for variant in variants:
        for precision in precisions:
            for cc in archs:
                result = compile_ptx(cfg, cc, precision, variant, num_warps)
                if tool:
                    result["meta"]["ptxas"] = assemble(result["ptx"], result["meta"]["target"], tool)
                path = write(result, directory)
                records.append(result["meta"])
                usage = result["meta"].get("ptxas")
                say(f"{path.name}: {result['meta']['target']}, {result['meta']['shared_bytes']} B shared"
                    + (f", {usage['registers']} registers, spills {usage['spill_store_bytes']}/"
                       f"{usage['spill_load_bytes']} B (store/load)" if usage else ""))
    return records


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    """argparse, not click: GPU machines may have the project installed without its dependencies."""
    import argparse

    from reference_model.errors import WNExportError

    parser = argparse.ArgumentParser(prog="python -m wn_export.backends.triton.aot",
                                     description="Compile the fused WaveNet step kernel to PTX ahead of time "
                                                 "(no GPU needed).")
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated [80,90]")
    parser.add_argument("-o", "--output", required=True, type=Path, help="directory for the .ptx and .json files")
    parser.add_argument("--config", default="target", help="target (30 layers), demo, or a WaveNetConfig JSON file")
    parser.add_argument("--precision", default="fp16", help="fp16 and/or fp32, comma-separated [fp16]")
    parser.add_argument("--variant", default="step,sample", help=f"{', '.join(VARIANTS)}, comma-separated [step,sample]")
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--ptxas", default=None, help="ptxas to assemble with (default: PATH, CUDA_HOME, triton's)")
    parser.add_argument("--no-ptxas", action="store_true", help="write PTX only")
    args = parser.parse_args(argv)
    try:
        try:
            archs = [int(a.removeprefix("sm_")) for a in _csv(args.arch)]
        except ValueError:
            raise InputError(f"--arch takes compute capabilities such as 80,90 (got {args.arch!r})") from None
        if args.output.exists() and not args.output.is_dir():
            raise InputError(f"{args.output} exists and is not a directory")
        build(load_config(args.config), archs, args.output, _csv(args.precision), _csv(args.variant),
              args.num_warps, args.ptxas, not args.no_ptxas)
    except WNExportError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
