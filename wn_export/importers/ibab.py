"""ibab/tensorflow-wavenet checkpoints → the reference WaveNet (`wn-export import ibab`).

Their model (wavenet/model.py: `WaveNetModel`; TensorFlow kernels are (width, in, out), ours (out, in, width))
and where it lands in ours:

| theirs (`wavenet/…`) | ours |
|---|---|
| `causal_layer/filter` (K, Q, R) over one-hot, or (W, 1, R) over the scalar sample, no bias | `input_conv`, `initial_filter_width` K or W |
| `dilated_stack/layer{i}/filter`, `gate` (K, R, D) + biases | `layers.i.filter`, `layers.i.gate` (`separate_gate`) |
| `dilated_stack/layer{i}/gc_filter`, `gc_gate` (1, E, D) | `layers.i.speaker_filter`, `speaker_gate` |
| `dilated_stack/layer{i}/dense` (1, D, R) + bias, x + dense(h), unscaled | `layers.i.out` (the last layer's is computed by them and never used: `last_residual` false) |
| `dilated_stack/layer{i}/skip` (1, D, S) + bias, skips summed unscaled | `layers.i.skip` |
| `postprocessing/postprocess1`, `postprocess2` ReLU–1×1–ReLU–1×1 | `head` |
| `embeddings/gc_embedding` (speakers, E) | `speaker_embed` |

Their biases come from `tf.Variable(value, name)`, which passes the name as `trainable`: in a checkpoint
their train.py writes they are `layer{i}/Variable`, `Variable_1`, `Variable_2`, `Variable_3` (filter,
gate, dense, skip) and `postprocessing/Variable`, `Variable_1`; forks that pass `name=` write
`filter_bias`, `gate_bias`, `dense_bias`, `slip_bias`, `postprocess1_bias`, `postprocess2_bias`. Both map.

Their network runs VALID convolutions: T inputs give T − receptive_field + 1 outputs, output j seeing inputs
j … j + receptive_field − 1 (skips are cut to those last samples). Ours pads with zero state, so our
output t equals theirs for every t ≥ receptive_field − 1. The checkpoint records every size but not the
dilations or the sample rate: those come from their `wavenet_params.json`, whose other fields must agree
with the tensors. Optimizer slots (Adam, RMSProp, Momentum) and step counters are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from reference_model import WaveNet, WaveNetConfig
from reference_model.errors import ConfigError

from .common import ImportError_
from .tf_checkpoint import TFCheckpoint

_LAYER = re.compile(r"^wavenet/dilated_stack/layer(\d+)/([A-Za-z0-9_]+)$")
_OPTIMIZER = re.compile(r"(^|/)(beta[12]_power(_\d+)?|global_step)$|/(Adam|Adam_1|RMSProp|RMSProp_1|Momentum)$")
_LOCAL = re.compile(r"(^|/|_)(lc|lcond|local|upsampl)", re.IGNORECASE)
_WEIGHTS = ("filter", "gate", "dense", "skip")
# bias spellings: their train.py's (positional `Variable…`) and `name=` forks', per role
_BIAS_NAMES = {"ibab": ("Variable", "Variable_1", "Variable_2", "Variable_3"),
               "keyword": ("filter_bias", "gate_bias", "dense_bias", "slip_bias")}
_HEAD_BIAS_NAMES = {"ibab": ("Variable", "Variable_1"), "keyword": ("postprocess1_bias", "postprocess2_bias")}
_FIXED = {"wavenet/causal_layer/filter", "wavenet/postprocessing/postprocess1", "wavenet/postprocessing/postprocess2",
          "wavenet/embeddings/gc_embedding"} | {f"wavenet/postprocessing/{n}" for v in _HEAD_BIAS_NAMES.values()
                                                 for n in v}
_PARAMS = ("filter_width", "sample_rate", "dilations", "residual_channels", "dilation_channels",
           "quantization_channels", "skip_channels", "use_biases", "scalar_input", "initial_filter_width",
           "gc_channels", "gc_cardinality")


def read_params(path) -> dict[str, Any]:
    """Their `wavenet_params.json` (a flat JSON object)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ImportError_(f"cannot read params {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportError_(f"params {path} is not JSON (expected ibab's wavenet_params.json): {e}") from None
    if not isinstance(data, dict):
        raise ImportError_(f"params {path} must be a JSON object like ibab's wavenet_params.json")
    return data


def import_ibab(checkpoint, params: dict | str | Path | None = None) -> tuple[WaveNet, list[str]]:
    """Read an ibab checkpoint (prefix, its .index, or the training directory) → (float32 eval `WaveNet`,
    notes on every assumed setting). `params`: their wavenet_params.json (default: the one beside the
    checkpoint)."""
    ckpt = TFCheckpoint(checkpoint)
    notes: list[str] = []
    if params is None:
        beside = ckpt.prefix.parent / "wavenet_params.json"
        if not beside.is_file():
            raise ImportError_("the checkpoint does not record the dilations: pass --params wavenet_params.json "
                               "(the file their train.py was given with --wavenet_params)")
        params = beside
        notes.append(f"params from {beside}")
    p = read_params(params) if isinstance(params, (str, Path)) else dict(params)
    shapes = {name: ckpt.entry(name).shape for name in ckpt.names()}
    model, more = map_ibab(shapes, ckpt.read, p)
    return model, notes + more


def map_ibab(shapes: dict[str, tuple[int, ...]], read: Callable[[str], np.ndarray],
             params: dict[str, Any]) -> tuple[WaveNet, list[str]]:
    """The mapping itself: variable name → shape, a reader of one variable, their params → (model, notes).
    Every shape is checked before any variable is read."""
    notes: list[str] = []
    names = [n for n in shapes if not _OPTIMIZER.search(n)]
    if len(names) < len(shapes):
        notes.append(f"ignored {len(shapes) - len(names)} optimizer variable(s) (Adam/RMSProp slots, step counters)")
    shapes = {n: tuple(shapes[n]) for n in names}
    local = [n for n in names if _LOCAL.search(n.split("/", 1)[-1])]
    if local:
        raise ImportError_(f"local conditioning is not supported for ibab checkpoints (their master has none; "
                           f"found the fork's variable {local[0]})")
    layers = _layer_parts(names)
    unknown = sorted(n for n in names if n not in _FIXED and not _LAYER.match(n))
    if unknown:
        raise ImportError_(f"unknown variable(s) (not ibab's WaveNetModel?): {', '.join(unknown[:6])}")
    cfg, naming = _config(shapes, layers, params, notes)
    plan = _plan(cfg, naming)
    model = WaveNet(cfg)
    _check_shapes(model, plan, shapes)
    mapped = {}
    for ours, (theirs, transform) in plan.items():
        value = read(theirs)
        if not np.issubdtype(value.dtype, np.floating):
            raise ImportError_(f"variable {theirs} has dtype {value.dtype}; weights must be floating point")
        mapped[ours] = transform(torch.from_numpy(np.asarray(value, dtype=np.float64)))
    if not all(torch.isfinite(v).all() for v in mapped.values()):
        raise ImportError_("the checkpoint contains NaN or Inf weights")
    model.load_state_dict({k: v.to(torch.float32) for k, v in mapped.items()})
    return model.eval(), notes


def _layer_parts(names: list[str]) -> dict[int, set[str]]:
    layers: dict[int, set[str]] = {}
    for n in names:
        if m := _LAYER.match(n):
            layers.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not layers:
        raise ImportError_("no wavenet/dilated_stack/layer* variables (not an ibab tensorflow-wavenet checkpoint?)")
    if sorted(layers) != list(range(len(layers))):
        raise ImportError_(f"dilated_stack layers are not numbered 0…L−1 (found {sorted(layers)[:10]})")
    return layers


def _bias_naming(layers: dict[int, set[str]], names: list[str]) -> str | None:
    """'ibab', 'keyword' or None (no biases), the same in every layer and the postprocessing."""
    found = set()
    for i, parts in layers.items():
        extra = parts - set(_WEIGHTS) - {"gc_filter", "gc_gate"}
        kinds = [k for k, spelled in _BIAS_NAMES.items() if extra == set(spelled)]
        if extra and not kinds:
            raise ImportError_(f"dilated_stack/layer{i} has variables {sorted(extra)}: expected the four biases "
                               f"{', '.join(_BIAS_NAMES['ibab'])} or {', '.join(_BIAS_NAMES['keyword'])}")
        found.add(kinds[0] if kinds else None)
    head = {n.rsplit("/", 1)[1] for n in names if n.startswith("wavenet/postprocessing/")} - {"postprocess1",
                                                                                              "postprocess2"}
    found.add(next((k for k, spelled in _HEAD_BIAS_NAMES.items() if head == set(spelled)), None if not head else "?"))
    if len(found) != 1 or "?" in found:
        raise ImportError_("the layers and the postprocessing disagree about biases (some have them, some do not, "
                           f"or they are spelled differently): postprocessing has {sorted(head) or 'none'}")
    return found.pop()


def _config(shapes, layers, params, notes) -> tuple[WaveNetConfig, str | None]:
    for i, parts in layers.items():
        for part in _WEIGHTS:
            if part not in parts:
                raise ImportError_(f"variable wavenet/dilated_stack/layer{i}/{part} is missing")
    for name in ("wavenet/causal_layer/filter", "wavenet/postprocessing/postprocess1",
                 "wavenet/postprocessing/postprocess2"):
        if name not in shapes:
            raise ImportError_(f"variable {name} is missing")
    naming = _bias_naming(layers, list(shapes))
    gc = [parts & {"gc_filter", "gc_gate"} for parts in layers.values()]
    if any(g != gc[0] for g in gc) or len(gc[0]) == 1:
        raise ImportError_("global-conditioning weights (gc_filter and gc_gate) must be in every dilated_stack "
                           "layer or in none")
    has_gc = len(gc[0]) == 2
    if has_gc != ("wavenet/embeddings/gc_embedding" in shapes):
        raise ImportError_("global conditioning without the gc_embedding table (their dense global-condition "
                           "vector) is not supported: our graphs take speaker ids" if has_gc else
                           "wavenet/embeddings/gc_embedding is present but no layer has gc_filter/gc_gate")

    def shape(name, rank):
        s = shapes[name]
        if len(s) != rank:
            raise ImportError_(f"variable {name} has shape {list(s)}; expected rank {rank}")
        return s

    K, R, D = shape("wavenet/dilated_stack/layer0/filter", 3)
    S, Q = shape("wavenet/postprocessing/postprocess2", 3)[1:]
    width, channels, _ = shape("wavenet/causal_layer/filter", 3)
    scalar = channels == 1
    dilations = params.get("dilations")
    if not isinstance(dilations, list) or not dilations or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations):
        raise ImportError_(f"params dilations must be a list of positive integers (got {dilations!r})")
    if len(dilations) != len(layers):
        raise ImportError_(f"params list {len(dilations)} dilations but the checkpoint has {len(layers)} layers")
    actual = {"filter_width": K, "residual_channels": R, "dilation_channels": D, "skip_channels": S,
              "quantization_channels": Q, "use_biases": naming is not None, "scalar_input": scalar}
    if scalar:
        actual["initial_filter_width"] = width
    elif width != K:
        raise ImportError_(f"causal_layer/filter is {width} wide; with one-hot input their causal layer is "
                           f"filter_width = {K} wide")
    for key, value in actual.items():
        if key in params and params[key] != value:
            raise ImportError_(f"params {key}={params[key]!r}, but the checkpoint has {value!r}")
    speakers, E = shape("wavenet/embeddings/gc_embedding", 2) if has_gc else (0, 0)
    for key, value in (("gc_channels", E), ("gc_cardinality", speakers)):
        if has_gc and params.get(key) not in (None, value):
            raise ImportError_(f"params {key}={params[key]!r}, but the checkpoint has {value!r}")
    if params.get("lc_channels"):
        raise ImportError_(f"params lc_channels={params['lc_channels']!r}: local conditioning is not supported")
    ignored = sorted(set(params) - set(_PARAMS))
    if ignored:
        notes.append(f"ignored params fields {', '.join(ignored)}")
    if "sample_rate" not in params:
        notes.append("sample_rate = 16000 (their default; not in params)")
    notes.append("the last layer's dense (residual) output is never used by their network: dropped")
    try:
        cfg = WaveNetConfig(quantization_channels=Q, residual_channels=R, gate_channels=2 * D, skip_channels=S,
                            kernel_size=K, layers=len(dilations), dilations=tuple(dilations),
                            bias=naming is not None, speakers=speakers, speaker_channels=E,
                            sample_rate=int(params.get("sample_rate", 16000)),
                            input_kind="scalar" if scalar else "onehot", initial_filter_width=width,
                            input_bias=False, last_residual=False, separate_gate=True)
    except (ConfigError, TypeError, ValueError) as e:
        raise ImportError_(f"the checkpoint maps to no valid config: {e}") from None
    return cfg, naming


def _conv(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 1, 0).contiguous()  # TensorFlow (width, in, out) → (out, in, width)


def _same(w: torch.Tensor) -> torch.Tensor:
    return w


def _gc(w: torch.Tensor) -> torch.Tensor:
    return w[0].t().contiguous()  # global-conditioning projection (1, E, D) → Linear weight (D, E)


def _plan(cfg: WaveNetConfig, naming: str | None) -> dict[str, tuple[str, Callable]]:
    """Our parameter → (their variable, transform)."""
    stack, post = "wavenet/dilated_stack/layer{}/", "wavenet/postprocessing/"
    plan = {"input_conv.weight": ("wavenet/causal_layer/filter", _conv),
            "head.1.weight": (post + "postprocess1", _conv), "head.3.weight": (post + "postprocess2", _conv)}
    if naming:
        b1, b2 = _HEAD_BIAS_NAMES[naming]
        plan |= {"head.1.bias": (post + b1, _same), "head.3.bias": (post + b2, _same)}
    if cfg.global_:
        plan["speaker_embed.weight"] = ("wavenet/embeddings/gc_embedding", _same)
    for i in range(cfg.layers):
        theirs, ours = stack.format(i), f"layers.{i}."
        parts = [("filter", "filter"), ("gate", "gate"), ("skip", "skip")]
        if i < cfg.layers - 1:
            parts.append(("dense", "out"))
        for t, o in parts:
            plan[ours + o + ".weight"] = (theirs + t, _conv)
        if naming:
            roles = dict(zip(_WEIGHTS, _BIAS_NAMES[naming]))
            for t, o in parts:
                plan[ours + o + ".bias"] = (theirs + roles[t], _same)
        if cfg.global_:
            plan[ours + "speaker_filter.weight"] = (theirs + "gc_filter", _gc)
            plan[ours + "speaker_gate.weight"] = (theirs + "gc_gate", _gc)
    return plan


def _check_shapes(model: WaveNet, plan: dict, shapes: dict) -> None:
    """Every variable (the unused last dense too) against the shape the model needs, before reading."""
    cfg = model.cfg
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(plan) == set(expected), sorted(set(plan) ^ set(expected))  # the plan follows the config
    for ours, (theirs, transform) in plan.items():  # every name in the plan was checked present by _config
        want = _theirs_shape(transform, expected[ours])
        if list(shapes[theirs]) != want:
            raise ImportError_(f"variable {theirs} has shape {list(shapes[theirs])}, which contradicts the "
                               f"other variables (expected {want})")
    last = f"wavenet/dilated_stack/layer{cfg.layers - 1}/dense"
    want = (1, cfg.gate_channels // 2, cfg.residual_channels)
    if tuple(shapes[last]) != want:
        raise ImportError_(f"variable {last} has shape {list(shapes[last])}, which contradicts the other "
                           f"variables (expected {list(want)})")


def _theirs_shape(transform, ours: tuple[int, ...]) -> list[int]:
    if transform is _conv:
        return list(reversed(ours))
    if transform is _same:
        return list(ours)
    assert transform is _gc
    return [1, ours[1], ours[0]]
