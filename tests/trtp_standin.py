"""A STAND-IN for TensorRT's `tensorrt.plugin` module (and the few `tensorrt` names it uses), for
testing `wn_export.backends.tensorrt.plugin` where TensorRT cannot be installed. It is NOT TensorRT.

What it reproduces, from TensorRT's open-source `python/packaging/bindings_wheel/tensorrt/plugin`
(`_validate.py`, `_lib.py`, `_plugin_class.py`):
- `register`: annotations required, no defaults, TensorDesc arguments first, attributes of the
  serializable types and not named outputs/stream/tactic, namespace without '.', return annotation
  TensorDesc or Tuple[TensorDesc, ...];
- `aot_impl`: the exact argument schema `(inputs…, attributes (subset, registration order), outputs,
  tactic)` and the return annotation Tuple[str|bytes, str|bytes, KernelLaunchParams, SymExprs];
- `get_launch_params`: the AOT function is called with every attribute positionally in registration
  order, and its results are type-checked (extra arguments must be SymInt32).
Shape expressions are plain integers here (TensorRT's are symbolic `IDimensionExpr`s).
"""

from __future__ import annotations

import inspect
import types
import typing

SERIALIZABLE = (int, float, bytes, bool, str)
DISALLOWED = {"outputs", "stream", "tactic"}
RESERVED_NAMESPACES = {"", "trt", "tensorrt", "std"}
REGISTRY: dict[str, dict] = {}


class DataType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


trt = types.SimpleNamespace(float32=DataType("FLOAT"), float16=DataType("HALF"), int64=DataType("INT64"),
                            int32=DataType("INT32"))


class TensorDesc:
    def __init__(self, dtype=None, shape_expr=()):
        self.dtype, self.shape_expr = dtype, tuple(shape_expr)


def from_shape_expr(shape_expr, dtype) -> TensorDesc:
    return TensorDesc(dtype, shape_expr)


class SymExprs(tuple):
    pass


class SymIntExprs(SymExprs):
    @classmethod
    def from_tuple(cls, exprs) -> SymIntExprs:
        return cls(e if isinstance(e, SymInt32) else SymInt32(e) for e in exprs)


class SymInt32:
    def __init__(self, value):
        self.value = int(value.value if isinstance(value, SymInt32) else value)
        if not -(2**31) <= self.value < 2**31:
            raise ValueError(f"{self.value} does not fit int32")


class KernelLaunchParams:
    _FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __init__(self):
        for f in self._FIELDS:
            self.__dict__[f] = SymInt32(0 if f == "shared_mem" else 1)

    def __setattr__(self, name, value):
        if name not in self._FIELDS:
            raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
        self.__dict__[name] = SymInt32(value)


def register(plugin_id: str):
    namespace, name = plugin_id.split("::")
    if "." in namespace or "." in name or namespace in RESERVED_NAMESPACES:
        raise ValueError(f"invalid plugin id {plugin_id}")

    def decorator(fn):
        sig = inspect.signature(fn)
        tensors, attrs, seen_attr = [], {}, False
        for i, (arg, p) in enumerate(sig.parameters.items()):
            if p.annotation is inspect.Parameter.empty:
                raise ValueError(f"argument {arg} has no type annotation")
            if p.default is not inspect.Parameter.empty:
                raise ValueError(f"argument {arg} has a default value")
            if inspect.isclass(p.annotation) and issubclass(p.annotation, TensorDesc):
                if seen_attr:
                    raise ValueError("TensorDescs and attributes cannot be interspersed")
                tensors.append(arg)
            else:
                if i == 0 or arg in DISALLOWED or p.annotation not in SERIALIZABLE:
                    raise ValueError(f"attribute {arg}: {p.annotation} is not allowed")
                seen_attr = True
                attrs[arg] = p.annotation
        ret = sig.return_annotation
        outs = typing.get_args(ret) if typing.get_origin(ret) is tuple else (ret,)
        if not outs or not all(inspect.isclass(o) and issubclass(o, TensorDesc) for o in outs):
            raise ValueError(f"return annotation {ret} is not TensorDesc or Tuple[TensorDesc]")
        REGISTRY[plugin_id] = {"register": fn, "inputs": tensors, "attrs": attrs, "num_outputs": len(outs)}
        return fn

    return decorator


def aot_impl(plugin_id: str):
    def decorator(fn):
        d = REGISTRY[plugin_id]
        sig = inspect.signature(fn)
        names = [n for n in sig.parameters if n in d["attrs"]]
        for n in names:
            if sig.parameters[n].annotation not in (inspect.Parameter.empty, d["attrs"][n]):
                raise ValueError(f"attribute {n} is annotated differently from the registration")
        expected = [*d["inputs"], *[a for a in d["attrs"] if a in names], "outputs", "tactic"]
        if list(sig.parameters) != expected:
            raise ValueError(f"aot_impl arguments {list(sig.parameters)} != expected schema {expected}")
        ret = sig.return_annotation
        args = typing.get_args(ret)
        if typing.get_origin(ret) is not tuple or len(args) != 4:
            raise ValueError(f"aot_impl return annotation {ret} is not a 4-tuple")
        for a in args[:2]:
            if set(typing.get_args(a) or (a,)) - {str, bytes}:
                raise ValueError(f"{a} is not str or bytes")
        if not issubclass(args[2], KernelLaunchParams) or not issubclass(args[3], SymExprs):
            raise ValueError("aot_impl must return KernelLaunchParams and SymExprs")
        d["aot"], d["aot_attrs"] = fn, names
        return fn

    return decorator


def build_time_call(plugin_id: str, inputs: list[TensorDesc], attrs: dict, tactic: int = 0):
    """What TensorRT does at build time: shape/type inference (the registered function), then
    `get_launch_params` (the AOT function, every attribute positionally) → (outputs, kernel, ptx,
    launch params, extra args), type-checked as TensorRT checks them."""
    d = REGISTRY[plugin_id]
    if list(attrs) != list(d["attrs"]):
        raise ValueError(f"attributes {list(attrs)} are not the registered ones {list(d['attrs'])} in order")
    outputs = d["register"](*inputs, **attrs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    kernel, ptx, params, extra = d["aot"](*inputs, *attrs.values(), outputs, tactic)
    if not isinstance(kernel, (str, bytes)) or not isinstance(ptx, (str, bytes)):
        raise TypeError("kernel name and PTX must be str or bytes")
    if not isinstance(params, KernelLaunchParams) or not isinstance(extra, SymExprs):
        raise TypeError("launch params must be KernelLaunchParams, extra args SymExprs")
    if not all(isinstance(a, SymInt32) for a in extra):
        raise TypeError("extra args must be SymInt32")
    return outputs, kernel, ptx, params, extra
