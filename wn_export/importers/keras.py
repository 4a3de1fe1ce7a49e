"""Keras 3 `.keras` WaveNets → the reference WaveNet (`wn-export import keras`), read with json and h5py.

A `.keras` file is a zip of `config.json` (the functional graph: layers, their configs and the tensors
each one is called on), `metadata.json` and `model.weights.h5` (per layer, `layers/<name>/vars/<i>`).
Neither Keras nor TensorFlow is needed to read it.

The graph must be the canonical WaveNet loop, found by walking it from the input:

| Keras | ours |
|---|---|
| `Input((T,))` int → `Embedding(Q, R)` | `embed` |
| `Input((T, Q))` one-hot → `Conv1D(R, W)` (W = 1, or `padding="causal"`) | `embed` rows (W = 1, bias folded) or `input_conv` (W > 1, `input_bias`) |
| `Input((T, 1))` scalar → `Conv1D(R, W, padding="causal")` | `input_conv`, `input_kind` scalar |
| per layer: `Conv1D(D, K, padding="causal", dilation_rate=d, activation="tanh")`, the same with "sigmoid", `Multiply` | `layers.i.filter`, `layers.i.gate` (`separate_gate`) |
| `Conv1D(S, 1)` of the product, summed by `Add` layers (one, or a chain) | `layers.i.skip` |
| `Conv1D(R, 1)` of the product + `Add` with the layer's input | `layers.i.out` |
| ReLU, `Conv1D(S, 1)`, ReLU (a layer or the conv's activation), `Conv1D(Q, 1)`, optional softmax | `head` |

ReLU is `Activation("relu")` or a plain `ReLU()`. The last layer has no residual 1×1: when a model
computes one, its output reaches nothing and Keras leaves it out of the saved graph (`last_residual`
false). A bias missing from one convolution of a kind others have is imported as zeros. Anything else —
another layer, a shared layer, a second input or output, non-causal padding, strides, groups — is
refused with the name of the first layer that does not fit.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reference_model import WaveNet, WaveNetConfig
from reference_model.errors import CheckpointError, ConfigError

from .common import ImportError_

MAX_JSON_BYTES = 64 << 20  # config.json / metadata.json larger than this are refused before reading
_RELU = {"Activation": {"activation": "relu"}, "ReLU": {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}}


@dataclass
class _Layer:
    name: str
    kind: str  # Keras class name
    config: dict
    index: int  # position in the model's layer list (→ its group in model.weights.h5)
    inputs: list[str] = field(default_factory=list)  # producing layers, in call order
    consumers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"'{self.name}' ({self.kind})"

    def get(self, key, default=None):
        value = self.config.get(key, default)
        return value[0] if isinstance(value, list) and len(value) == 1 else value


class _Graph:
    """The functional graph of config.json: layers by name with their producers and consumers."""

    def __init__(self, config: dict):
        if not isinstance(config, dict) or config.get("class_name") != "Functional":
            kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
            raise ImportError_(f"the model is a {kind}: only functional models (keras.Model(inputs, outputs)) "
                               "can express a WaveNet's skip connections")
        body = config.get("config") or {}
        self.layers: dict[str, _Layer] = {}
        for i, spec in enumerate(body.get("layers") or []):
            layer = _Layer(spec.get("name") or spec.get("config", {}).get("name"), spec.get("class_name"),
                           spec.get("config") or {}, i)
            nodes = spec.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise ImportError_(f"layer {layer} is called {len(nodes)} times (shared weights) and cannot map")
            layer.inputs = [self._producer(t, layer) for t in _tensors(nodes[0])] if nodes else []
            self.layers[layer.name] = layer
        for layer in self.layers.values():
            for name in layer.inputs:
                if name not in self.layers:
                    raise ImportError_(f"layer {layer} reads {name!r}, which is not a layer of the model")
                self.layers[name].consumers.append(layer.name)
        self.inputs = [self._ref(r, "input") for r in _refs(body.get("input_layers"))]
        self.outputs = [self._ref(r, "output") for r in _refs(body.get("output_layers"))]

    def _producer(self, history, layer) -> str:
        name, node, index = history
        if node != 0 or index != 0:
            raise ImportError_(f"layer {layer} reads output {index} of call {node} of {name!r}: only single-call, "
                               "single-output layers map")
        return name

    def _ref(self, ref, what: str) -> _Layer:
        if not isinstance(ref, list) or len(ref) != 3 or ref[0] not in self.layers or ref[1:] != [0, 0]:
            raise ImportError_(f"the model's {what} {ref!r} is not a layer's only output")
        return self.layers[ref[0]]

    def weight_paths(self) -> dict[str, str]:
        """Layer name → its group in model.weights.h5: `layers/` + the snake-cased class name, numbered
        per class in layer order (Keras's rule; layer names are not used)."""
        used: dict[str, int] = {}
        paths = {}
        for layer in sorted(self.layers.values(), key=lambda x: x.index):
            base = _snake(layer.kind)
            used[base] = used.get(base, -1) + 1
            paths[layer.name] = f"layers/{base}" + (f"_{used[base]}" if used[base] else "")
        return paths

    def only_consumer(self, layer: _Layer) -> _Layer | None:
        return self.layers[layer.consumers[0]] if len(layer.consumers) == 1 else None


def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _tensors(node) -> list:
    """The keras_history [layer, call, output] of every tensor a call node reads, in order."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                found.append(list(x["config"]["keras_history"]))
            else:
                for v in x.values():
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(node.get("args", []) if isinstance(node, dict) else node)
    return found


def _refs(value) -> list:
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value]
    return list(value or [])


@dataclass
class _Stack:
    """What the matcher found."""
    front: _Layer
    input_kind: str  # embedding | onehot | scalar
    classes: int  # Q of the input (0 for scalar)
    # per layer: filter, gate, skip, residual (None in the last layer)
    layers: list[tuple[_Layer, _Layer, _Layer, _Layer | None]] = field(default_factory=list)
    head: tuple[_Layer, _Layer] | None = None
    softmax: bool = False


class _Matcher:
    """Walks the graph from the input through the canonical loop; `fail` names the first layer off it."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self.matched: set[str] = set()

    def fail(self, layer: _Layer, expected: str):
        raise ImportError_(f"layer {layer} does not fit the WaveNet pattern: expected {expected}")

    def take(self, layer: _Layer) -> _Layer:
        self.matched.add(layer.name)
        return layer

    def follow(self, layer: _Layer, expected: str, fits) -> _Layer:
        """The only consumer of `layer`, which must satisfy `fits`."""
        nxt = self.g.only_consumer(layer)
        if nxt is None or not fits(nxt):
            self.fail(nxt or layer, expected)
        return self.take(nxt)

    def match(self) -> _Stack:
        g = self.g
        if len(g.inputs) != 1:
            raise ImportError_(f"the model has {len(g.inputs)} inputs ({', '.join(str(x) for x in g.inputs)}): "
                               "a WaveNet here has one (conditioning inputs are not supported)")
        if len(g.outputs) != 1:
            raise ImportError_(f"the model has {len(g.outputs)} outputs; a WaveNet here has one")
        stack = self.front(g.inputs[0])
        x = stack.front
        while x is not None:  # the last layer has no residual Add
            x = self.layer(x, stack)
        self.head(self.skip_sum(stack), stack)
        unmatched = [layer for layer in g.layers.values() if layer.name not in self.matched]
        if unmatched:
            self.fail(min(unmatched, key=lambda x: x.index), "no further layers")
        return stack

    # ---- input and front end -------------------------------------------------------------------
    def front(self, inp: _Layer) -> _Stack:
        shape = inp.config.get("batch_shape") or inp.config.get("batch_input_shape")
        if inp.kind != "InputLayer" or not isinstance(shape, list) or len(shape) not in (2, 3) \
                or len(shape) == 3 and (not isinstance(shape[2], int) or shape[2] < 1):
            self.fail(inp, "an InputLayer of shape (time,) μ-law tokens, (time, Q) one-hot or (time, 1) scalar")
        self.take(inp)
        if len(shape) == 2:
            front = self.follow(inp, "an Embedding of the μ-law tokens (the input's only reader)",
                                lambda x: x.kind == "Embedding")
            return _Stack(front, "embedding", int(front.get("input_dim")))
        front = self.follow(inp, 'a Conv1D front end (linear, padding="causal" unless 1 wide) over the one-hot '
                                 "or scalar input (the input's only reader)",
                            lambda x: self.is_conv(x, None)
                            and (x.get("kernel_size") == 1 or x.get("padding") == "causal"))
        return _Stack(front, "scalar" if shape[2] == 1 else "onehot", 0 if shape[2] == 1 else shape[2])

    @staticmethod
    def is_conv(layer: _Layer, kernel: int | None, activations=("linear",)) -> bool:
        """A Conv1D that maps: stride 1, one group, channels last, the kernel size (1: undilated), activation."""
        return (layer.kind == "Conv1D" and layer.get("strides", 1) == 1 and layer.get("groups", 1) == 1
                and layer.get("data_format", "channels_last") == "channels_last"
                and layer.get("activation") in activations
                and (kernel is None or layer.get("kernel_size") == kernel
                     and (kernel != 1 or layer.get("dilation_rate", 1) == 1)))

    # ---- one residual layer --------------------------------------------------------------------
    def layer(self, x: _Layer, stack: _Stack) -> _Layer | None:
        """Match layer i reading x → the next layer's input (its residual Add), or None for the last layer."""
        where = f"layer {len(stack.layers)} of the stack"
        readers = [self.g.layers[c] for c in x.consumers]
        gated: dict[str, _Layer] = {}
        for c in readers:  # the first tanh and the first sigmoid Conv1D
            if c.kind == "Conv1D" and c.get("activation") in ("tanh", "sigmoid"):
                gated.setdefault(c.get("activation"), c)
        if set(gated) != {"tanh", "sigmoid"} or sum(c.kind == "Conv1D" for c in readers) != 2:
            extras = [c for c in readers if c.kind != "Add" and (  # an Add is the residual's, checked later
                c.kind != "Conv1D" or c.get("activation") not in gated or c is not gated[c.get("activation")])]
            culprit = min(extras, key=lambda c: c.index) if extras else x
            self.fail(culprit, f"the filter Conv1D (activation tanh) and gate Conv1D (sigmoid) of {where}")
        f, gate = gated["tanh"], gated["sigmoid"]
        for c in (f, gate):
            if not self.is_conv(c, None, (c.get("activation"),)) or c.get("padding") != "causal" \
                    or c.get("kernel_size") < 2 or c.get("dilation_rate") != f.get("dilation_rate") \
                    or c.get("kernel_size") != f.get("kernel_size") or c.get("filters") != f.get("filters"):
                self.fail(c, f'a Conv1D with padding="causal", kernel size ≥ 2, stride 1, one group, and the '
                             f"filter's kernel size, dilation and filters in {where}")
            self.take(c)
        product = self.follow(f, f"the Multiply of the filter and gate of {where} (their only reader)",
                              lambda m: m.kind == "Multiply" and sorted(m.inputs) == sorted([f.name, gate.name])
                              and self.g.only_consumer(gate) is m)
        skip, residual, add = self.outputs(product, x, where)
        stack.layers.append((f, gate, skip, residual))
        return add

    def outputs(self, product: _Layer, x: _Layer, where: str):
        """The skip 1×1, and the residual 1×1 with its Add (None, None in the last layer)."""
        outs = [self.g.layers[c] for c in product.consumers]

        def residual_add(c: _Layer) -> _Layer | None:
            add = self.g.only_consumer(c)
            return add if add is not None and add.kind == "Add" and sorted(add.inputs) == sorted([x.name, c.name]) \
                else None

        residuals = [c for c in outs if residual_add(c) is not None]
        skips = [c for c in outs if c not in residuals]
        for c in outs:
            if not self.is_conv(c, 1) or len(skips) != 1 or len(outs) > 2:
                self.fail(c if not self.is_conv(c, 1) else outs[-1],
                          f"one skip 1×1 Conv1D and at most one residual 1×1 Conv1D (whose Add reads the layer's "
                          f"input) reading the gated product of {where}")
        skip = self.take(skips[0])
        residual = self.take(residuals[0]) if residuals else None
        add = self.take(residual_add(residual)) if residual else None
        extra = [self.g.layers[c] for c in x.consumers if c not in self.matched]
        if extra:
            self.fail(extra[0], f"nothing else reading the input of {where}")
        return skip, residual, add

    # ---- skip sum and head ---------------------------------------------------------------------
    def skip_sum(self, stack: _Stack) -> _Layer:
        """The layer that sums every skip output: one Add of all, or a chain / tree of Adds."""
        skips = {layer[2].name for layer in stack.layers}
        node = stack.layers[0][2]
        while (nxt := self.g.only_consumer(node)) is not None and nxt.kind == "Add":
            node = nxt
        seen: list[str] = []

        def leaves(layer: _Layer) -> None:
            if layer.name in skips:
                seen.append(layer.name)
            elif layer.kind == "Add" and layer.name not in self.matched and len(layer.consumers) == 1:
                self.take(layer)
                for name in layer.inputs:
                    leaves(self.g.layers[name])
            else:
                self.fail(layer, "a skip 1×1 Conv1D or an Add of skip outputs in the skip sum")

        leaves(node)
        if sorted(seen) != sorted(skips):
            self.fail(node if node.kind == "Add" else self.g.only_consumer(node) or node,
                      "an Add over every layer's skip output, each once")
        return node

    @staticmethod
    def is_relu(layer: _Layer) -> bool:
        return layer.kind in _RELU and all(layer.config.get(k, v) == v for k, v in _RELU[layer.kind].items())

    def head(self, total: _Layer, stack: _Stack) -> None:
        relu = self.follow(total, "ReLU (Activation('relu') or ReLU()) after the sum of the skips", self.is_relu)
        conv1 = self.follow(relu, "the head's first 1×1 Conv1D (activation linear or relu)",
                            lambda c: self.is_conv(c, 1, ("linear", "relu")))
        if conv1.get("activation") != "relu":
            conv1_out = self.follow(conv1, "ReLU after the head's first 1×1 Conv1D", self.is_relu)
        else:
            conv1_out = conv1
        conv2 = self.follow(conv1_out, "the head's output 1×1 Conv1D (activation linear or softmax)",
                            lambda c: self.is_conv(c, 1, ("linear", "softmax")))
        stack.head, stack.softmax, last = (conv1, conv2), conv2.get("activation") == "softmax", conv2
        after = self.g.only_consumer(conv2)
        if after is not None and not stack.softmax and (
                after.kind == "Softmax" and after.config.get("axis", -1) in (-1, 2)
                or after.kind == "Activation" and after.config.get("activation") == "softmax"):
            last, stack.softmax = self.take(after), True
        if self.g.outputs[0] is not last:
            self.fail(self.g.only_consumer(last) or last, "the model's output after the head")


def _json_member(zf: zipfile.ZipFile, name: str, path: Path):
    info = zf.getinfo(name)
    if info.file_size > MAX_JSON_BYTES:
        raise ImportError_(f"{path}: {name} is {info.file_size:,} bytes (limit {MAX_JSON_BYTES:,}); not a model config")
    try:
        return json.loads(zf.read(name).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportError_(f"{path}: {name} is not JSON ({e})") from None


def import_keras(path) -> tuple[WaveNet, list[str]]:
    """Read a Keras 3 `.keras` WaveNet → (float32 eval `WaveNet`, notes on every assumed setting)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ImportError_(f"{path} is not a Keras 3 .keras file (not a zip archive; legacy .h5 models and "
                           "SavedModel directories are not read)") from None
    with zf:
        members = set(zf.namelist())
        for name in ("config.json", "model.weights.h5"):
            if name not in members:
                raise ImportError_(f"{path} has no {name}: not a Keras 3 .keras file")
        version = (_json_member(zf, "metadata.json", path) if "metadata.json" in members else {}).get(
            "keras_version", "unknown")
        if not str(version).startswith("3."):
            raise ImportError_(f"{path} was saved by Keras {version}; only Keras 3 .keras files are read")
        graph = _Graph(_json_member(zf, "config.json", path))
        stack = _Matcher(graph).match()
        cfg, notes = _config(stack)
        import h5py

        with zf.open("model.weights.h5") as raw:
            try:
                h5 = h5py.File(raw, "r")
            except OSError as e:
                raise ImportError_(f"{path}: model.weights.h5 is not an HDF5 file ({e})") from None
            with h5:
                state = _weights(stack, cfg, _Vars(h5, graph))
    model = WaveNet(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval(), notes


def _config(stack: _Stack) -> tuple[WaveNetConfig, list[str]]:
    notes = ["sample_rate = 16000 (a .keras file does not record it)"]
    (f0, _, skip0, _), (head1, head2) = stack.layers[0], stack.head
    Q = int(head2.get("filters"))
    if stack.classes and stack.classes != Q:
        raise ImportError_(f"layer {head2} outputs {Q} classes but the input has {stack.classes}: the output "
                           "must be the distribution over the input's μ-law classes")
    W = 1 if stack.input_kind == "embedding" else int(stack.front.get("kernel_size"))
    R = int(stack.front.get("output_dim") if stack.input_kind == "embedding" else stack.front.get("filters"))
    D, S, K = int(f0.get("filters")), int(skip0.get("filters")), int(f0.get("kernel_size"))
    for f, gate, skip, residual in stack.layers:
        for layer, what, want in ((f, "filters", D), (f, "kernel_size", K), (skip, "filters", S),
                                  (residual, "filters", R), (head1, "filters", S)):
            if layer is not None and layer.get(what) != want:
                raise ImportError_(f"layer {layer} has {what}={layer.get(what)}, but the model's other layers "
                                   f"imply {want}")

    def any_bias(layers) -> bool:
        flags = [bool(layer.get("use_bias", True)) for layer in layers if layer is not None]
        if any(flags) and not all(flags):
            missing = [layer.name for layer in layers if layer is not None and not layer.get("use_bias", True)]
            notes.append(f"zero biases for {', '.join(missing)}")
        return any(flags)

    dilated = any_bias([c for layer in stack.layers for c in layer[:2]])
    residual_bias = any_bias([layer[3] for layer in stack.layers])
    skip_bias = any_bias([layer[2] for layer in stack.layers])
    head_bias = any_bias([head1, head2])
    conv_front = stack.input_kind == "scalar" or stack.input_kind == "onehot" and W > 1  # → input_conv
    if stack.input_kind == "onehot" and W == 1:
        notes.append(f"the 1×1 front end {stack.front.name} over one-hot classes becomes the embedding")
    if stack.softmax:
        notes.append("the softmax output is dropped: the graphs output logits")
    try:
        cfg = WaveNetConfig(
            quantization_channels=Q, residual_channels=R, gate_channels=2 * D, skip_channels=S, kernel_size=K,
            layers=len(stack.layers), dilations=tuple(int(f.get("dilation_rate")) for f, *_ in stack.layers),
            bias=head_bias, dilated_bias=dilated, residual_bias=residual_bias, skip_bias=skip_bias,
            input_kind="scalar" if stack.input_kind == "scalar" else "onehot", initial_filter_width=W,
            input_bias=conv_front and bool(stack.front.get("use_bias", True)),
            last_residual=False, separate_gate=True)
    except ConfigError as e:
        raise ImportError_(f"the model maps to no valid config: {e}") from None
    return cfg, notes


class _Vars:
    """A layer's variables in model.weights.h5, shape-checked before they are read."""

    def __init__(self, h5, graph: _Graph):
        self.h5, self.paths = h5, graph.weight_paths()

    def get(self, layer: _Layer, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        path = self.paths[layer.name] + "/vars"
        group = self.h5.get(path)
        if group is None:
            raise ImportError_(f"model.weights.h5 has no {path} for layer {layer}")
        stored = group.attrs.get("name")
        if stored is not None and str(stored) != layer.name:
            raise ImportError_(f"model.weights.h5's {path} belongs to layer {stored!r}, not {layer}: the weights do "
                               "not match config.json")
        if len(group) != len(shapes):
            raise ImportError_(f"layer {layer} has {len(group)} variables in model.weights.h5; expected {len(shapes)}")
        out = []
        for i, shape in enumerate(shapes):
            ds = group.get(str(i))
            if ds is None or tuple(ds.shape) != shape or ds.dtype.kind != "f":
                raise ImportError_(f"layer {layer}: variable {i} in model.weights.h5 is "
                                   f"{None if ds is None else (tuple(ds.shape), str(ds.dtype))}; expected a float "
                                   f"tensor of shape {shape}")
            out.append(np.asarray(ds[()], dtype=np.float64))
        return out


def _conv_weights(v: _Vars, layer: _Layer, n_in: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in, K), bias or None) of a Conv1D; Keras stores the kernel as (K, in, out)."""
    k, n_out = int(layer.get("kernel_size")), int(layer.get("filters"))
    shapes = [(k, n_in, n_out)] + ([(n_out,)] if layer.get("use_bias", True) else [])
    tensors = v.get(layer, shapes)
    w = torch.from_numpy(tensors[0]).permute(2, 1, 0).contiguous()
    return w, torch.from_numpy(tensors[1]) if len(tensors) > 1 else None


def _weights(stack: _Stack, cfg: WaveNetConfig, v: _Vars) -> dict[str, torch.Tensor]:
    R, D, S, Q = cfg.residual_channels, cfg.gate_channels // 2, cfg.skip_channels, cfg.quantization_channels
    state: dict[str, torch.Tensor] = {}

    def put(name: str, conv: tuple[torch.Tensor, torch.Tensor | None], has_bias: bool) -> None:
        state[name + ".weight"] = conv[0]
        if has_bias:
            state[name + ".bias"] = conv[1] if conv[1] is not None else torch.zeros(conv[0].shape[0],
                                                                                   dtype=torch.float64)

    if stack.input_kind == "embedding":
        state["embed.weight"] = torch.from_numpy(v.get(stack.front, [(Q, R)])[0])
    elif stack.input_kind == "onehot" and cfg.initial_filter_width == 1:
        w, b = _conv_weights(v, stack.front, Q)
        rows = w[:, :, 0].t()  # (Q, R): one-hot → 1×1 ≡ embedding rows W[:, q] + b
        state["embed.weight"] = rows + b if b is not None else rows
    else:
        put("input_conv", _conv_weights(v, stack.front, cfg.input_channels), cfg.input_bias)
    for i, (f, gate, skip, residual) in enumerate(stack.layers):
        put(f"layers.{i}.filter", _conv_weights(v, f, R), cfg.has_dilated_bias)
        put(f"layers.{i}.gate", _conv_weights(v, gate, R), cfg.has_dilated_bias)
        put(f"layers.{i}.skip", _conv_weights(v, skip, D), cfg.has_skip_bias)
        if residual is not None:
            put(f"layers.{i}.out", _conv_weights(v, residual, D), cfg.has_residual_bias)
    put("head.1", _conv_weights(v, stack.head[0], S), cfg.bias)
    put("head.3", _conv_weights(v, stack.head[1], S), cfg.bias)
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise ImportError_("the model contains NaN or Inf weights")
    return state
