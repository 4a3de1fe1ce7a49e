"""Matching structure in ONNX graphs, for the passes that rewrite them: the step-graph lowering at export
(`export.lowering`) and the ONNX Runtime host's fusion (`backends.onnxruntime.fusion`). One index, one
exception (`NoMatch`): a pass that meets a structure it does not know leaves the graph as it is."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FLOAT = TensorProto.FLOAT


class NoMatch(Exception):
    """The graph does not have the structure a pass knows (the message says where): the pass leaves it as
    it is."""


def fail(why: str):
    raise NoMatch(why)


def need(cond, why: str = "") -> None:
    if not cond:
        raise NoMatch(why)


class GraphIndex:
    """Index of an ONNX graph: producers, consumers, constant values (initializers and Constant nodes), and
    which nodes a matcher has taken."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.matched: set[int] = set()
        self.inputs = {i.name for i in model.graph.input}

    def take(self, *nodes):
        for n in nodes:
            self.matched.add(id(n))

    def const(self, name: str) -> np.ndarray:
        if name not in self.values:
            fail(f"{name} is not a constant")
        p = self.producer.get(name)
        if p is not None:
            self.take(p)
        return self.values[name]

    def made_by(self, tensor: str, op: str):
        n = self.producer.get(tensor)
        if n is None or n.op_type != op:
            fail(f"{tensor} is made by {n.op_type if n is not None else 'nothing'}, expected {op}")
        self.take(n)
        return n

    def only_consumer(self, tensor: str, op: str | None = None):
        c = self.consumers.get(tensor, [])
        if len(c) != 1 or (op is not None and c[0].op_type != op):
            fail(f"{tensor} feeds {[n.op_type for n in c]}, expected one {op or 'node'}")
        self.take(c[0])
        return c[0]

    @staticmethod
    def attrs(n) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    def skip_casts(self, tensor: str) -> str:
        """Follow FP32→FP32 Casts (the traced `.to(float32)` calls) forward while they are the only consumer."""
        while True:
            c = self.consumers.get(tensor, [])
            if len(c) == 1 and c[0].op_type == "Cast" and self.attrs(c[0]).get("to") == _FLOAT:
                self.take(c[0])
                tensor = c[0].output[0]
            else:
                return tensor

    def unmatched(self) -> list[str]:
        return [f"{n.op_type} {n.name}" for n in self.nodes
                if id(n) not in self.matched and n.op_type != "Constant"]
