"""A small ONNX graph builder shared by the QDQ and integer flavours.

Takes node requests (op type, inputs, attributes) and constants as NumPy arrays; returns fresh,
unique tensor names and, at the end, an ``onnx.ModelProto`` (opset 21, ONNX IR version 10, the
same as ``edgequant.visualize``) checked with ``onnx.checker.check_model(full_check=True)``.
Dynamic dims of the IR (string dims such as ``"s77"``) become ``dim_param``s, so the batch size
stays free.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..visualize import IR_VERSION_ONNX, OPSET, annotation, elem_type
from ..ir import Value
from ..version import __version__

CUSTOM_DOMAIN = "ai.edgequant"


class Builder:
    """Collects nodes and initializers; ``op`` appends a node and returns its output name(s)."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.used: set[str] = set()
        self.custom_used = False
        self.source = ""      # the IR source line of the node being translated (doc_string)
        self.prefix = ""      # the IR node name, prefix of the helper tensors it writes

    def fresh(self, base: str) -> str:
        base = f"{self.prefix}/{base}" if self.prefix else base
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def claim(self, name: str) -> str:
        """Reserve an IR value name so that ``fresh`` never hands it out."""
        self.used.add(name)
        return name

    def op(self, op_type: str, inputs, outputs=1, domain: str = "", **attrs):
        """Append one node; ``outputs`` is a count (fresh names) or a list of names."""
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        node = helper.make_node(op_type, [i if i is not None else "" for i in inputs], outs,
                                name=self.fresh(f"{op_type}"), domain=domain or None,
                                doc_string=self.source or None, **attrs)
        if domain == CUSTOM_DOMAIN:
            self.custom_used = True
        self.nodes.append(node)
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype=None, base: str = "const") -> str:
        """An initializer holding ``value`` (NumPy array or number) of ``dtype``."""
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.array(arr, order="C", copy=True), name)
        return name

    def i64(self, value, base: str = "i64") -> str:
        return self.const(np.asarray(value, dtype=np.int64), base=base)

    def initializer(self, name: str, arr: np.ndarray, v: Value | None = None) -> str:
        """A named initializer (an IR constant), annotated with its quantization when known."""
        self.claim(name)
        tp = numpy_helper.from_array(np.array(arr, order="C", copy=True), name)
        if v is not None:
            tp.doc_string, props = annotation(v)
            helper.set_metadata_props(tp, props)
        self.inits[name] = tp
        return name

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], props: dict,
              doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, list(self.inits.values()), doc_string=doc)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.custom_used:
            opsets.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
        model = helper.make_model(graph, producer_name="edgequant", producer_version=__version__,
                                  opset_imports=opsets)
        model.ir_version = IR_VERSION_ONNX
        helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True) \
            if not self.custom_used else model
        onnx.checker.check_model(model, full_check=True)
        return model


def value_info(v: Value, elem: int | None = None) -> onnx.ValueInfoProto:
    """A graph input/output: ``v``'s shape (string dims as ``dim_param``) and element type."""
    vi = helper.make_tensor_value_info(v.name, elem if elem is not None else elem_type(v),
                                       list(v.shape) if v.dtype != "sym" else [])
    vi.doc_string, props = annotation(v)
    helper.set_metadata_props(vi, props)
    return vi
