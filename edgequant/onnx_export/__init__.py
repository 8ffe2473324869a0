"""ONNX export that ONNX Runtime runs: ``export_onnx(model, path, example_inputs, flavour=...)``.

Takes a prepared model (``flavour="qdq"``: calibrated or QAT, exported to the quant-level IR
first) or a converted integer ``Graph`` (``flavour="integer"``; a quant-level graph or a
prepared model is converted first), and writes an ONNX file (opset 21, ONNX IR version 10)
that passes ``onnx.checker.check_model(full_check=True)``; returns the ``onnx.ModelProto``.

- ``"qdq"`` (``qdq.py``): float ops between QuantizeLinear/DequantizeLinear pairs, int8/int16,
  per-channel weights; what ONNX tools (ORT's quantized kernels, TensorRT, Netron) expect.
- ``"integer"`` (``integer.py``): the integer model in standard ONNX integer ops (ConvInteger,
  MatMulInteger, int64 arithmetic for edgequant's multiplier/shift/half-to-even requantization,
  Gather for tables), which ONNX Runtime's CPU provider runs bit for bit; ops standard ONNX
  cannot express exactly use the documented domain ``ai.edgequant`` (``custom_ops.py``, with
  implementations for ``onnx.reference.ReferenceEvaluator``).

Dynamic dims of the IR (the batch, a sequence length) stay dynamic. An op that cannot be
exported raises ``OnnxExportError`` naming it. docs/onnx.md describes both flavours.
"""
from __future__ import annotations

import json
import os

import onnx
from onnx import TensorProto

from ..argcheck import expect_graph_or_prepared, expect_path
from ..convert import convert
from ..export import export
from ..ir import Graph
from ..visualize import _PLAIN_ELEM, elem_type
from . import integer, qdq
from .builder import Builder, value_info
from .errors import OnnxExportError

FLAVOURS = ("qdq", "integer")


def _graph(model, example_inputs, level: str) -> Graph:
    g = model if isinstance(model, Graph) else export(model, example_inputs)
    if level == "quant":
        if g.level != "quant":
            raise OnnxExportError("the QDQ flavour takes a prepared model or a quant-level graph (export's result), "
                                  f"got a graph at level {g.level!r}; use flavour='integer' for a converted model")
        return g
    return g if g.level == "int" else convert(g)


def _outputs(g: Graph, b: Builder, names: dict, elem_of) -> list:
    outs, seen = [], set()
    for o in g.outputs:
        if not isinstance(o, str):
            raise OnnxExportError(f"the model returns a literal {o!r}; ONNX outputs are tensors")
        name = o
        if o in seen or o in g.inputs or names.get(o, o) != o or o in g.constants:
            name = b.fresh(f"{o}.out")
            b.op("Identity", [names.get(o, o)], [name])
        seen.add(name)
        v = g.values[o]
        vi = value_info(v, elem_of(v))
        vi.name = name
        outs.append(vi)
    return outs


def export_onnx(model, path: str | os.PathLike, example_inputs=None, flavour: str = "qdq") -> onnx.ModelProto:
    """Write ``model`` as a runnable ONNX file of ``flavour`` (see the module docstring)."""
    expect_graph_or_prepared(model, "export_onnx", "model")
    expect_path(path, "export_onnx", "path")
    if flavour not in FLAVOURS:
        raise OnnxExportError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if flavour == "qdq":
        g = _graph(model, example_inputs, "quant")
        b, names = qdq.build(g)

        def elem_of(v):
            return _PLAIN_ELEM.get(v.dtype, TensorProto.FLOAT)
    else:
        g = _graph(model, example_inputs, "int")
        b, names = integer.build(g)
        elem_of = elem_type
    inputs = [value_info(g.values[i], elem_of(g.values[i])) for i in g.inputs]
    outputs = _outputs(g, b, names, elem_of)
    props = {"edgequant.flavour": flavour, "edgequant.march": str(g.meta.get("march")),
             "edgequant.outputs": json.dumps(list(g.outputs)), "edgequant.out_spec": g.meta.get("out_spec") or ""}
    doc = (f"edgequant {flavour} export of a {g.level}-level graph; "
           + ("float ops between QuantizeLinear/DequantizeLinear" if flavour == "qdq"
              else "integer ops reproducing edgequant's integer model bit for bit"))
    m = b.model(inputs, outputs, props, doc)
    onnx.save(m, os.fspath(path))
    return m


__all__ = ["export_onnx", "OnnxExportError"]
