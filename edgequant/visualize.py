"""Visualize: a ``Graph`` (either level) or a prepared model -> an ONNX file to look at in Netron.

Takes what ``export``/``convert`` return, or a model that ``prepare`` returned (exported first);
writes a model that passes ``onnx.checker.check_model(full_check=True)`` and returns it. The
file is a picture of the IR, not a model to run: each IR node becomes one node of the custom
domain ``edgequant`` (``edgequant.conv2d``, ``edgequant.rescale``, ...) with the same name,
inputs, outputs and attributes; each value becomes a typed tensor (integer element types for the
quantized tensors of an int-level graph, FLOAT for float ones and for the float carriers of a
quant-level graph); each constant an initializer of its stored type (int8 weights as INT8).
Every tensor carries its quantization in ``doc_string`` (readable in Netron) and in
``metadata_props`` (``edgequant.dtype``, ``edgequant.scale``, ``edgequant.zero_point``,
``edgequant.ch_axis``; lists are JSON). For the runnable ONNX flavours see ``onnx_export``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .argcheck import expect_graph_or_prepared, expect_path
from .dtype import DTYPES
from .export import export
from .ir import Graph, Node, Value
from .version import __version__

OPSET = 21
DOMAIN = "edgequant"
IR_VERSION_ONNX = 10        # the ONNX IR version of opset 21 (metadata_props on tensors need >= 10)


def _quant_elem(dt) -> int:
    """The narrowest ONNX integer element type that holds ``dt`` (qint8 -> INT8, qint48 -> INT64)."""
    signed = [(4, TensorProto.INT4), (8, TensorProto.INT8), (16, TensorProto.INT16), (32, TensorProto.INT32),
              (64, TensorProto.INT64)]
    unsigned = [(4, TensorProto.UINT4), (8, TensorProto.UINT8), (16, TensorProto.UINT16), (32, TensorProto.UINT32),
                (64, TensorProto.UINT64)]
    return next(t for bits, t in (signed if dt.signed else unsigned) if dt.bits <= bits)


# quantized dtype -> ONNX element type of an int-level tensor
_QUANT_ELEM = {name: _quant_elem(dt) for name, dt in DTYPES.items()}
_PLAIN_ELEM = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "bfloat16": TensorProto.BFLOAT16, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
               "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
               "bool": TensorProto.BOOL, "sym": TensorProto.INT64}
_NUMPY = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
          TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.FLOAT: np.float32,
          TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16, TensorProto.BOOL: np.bool_,
          TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64}


def elem_type(v: Value) -> int:
    """The ONNX element type that shows ``v``: its integer type when it is one, else its storage."""
    if v.dtype in _QUANT_ELEM:
        return _QUANT_ELEM[v.dtype]
    return _PLAIN_ELEM.get(v.dtype, TensorProto.UNDEFINED)


def annotation(v: Value) -> tuple[str, dict[str, str]]:
    """``(doc_string, metadata_props)`` describing ``v``'s dtype and quantization."""
    qp = v.qparams
    props = {"edgequant.dtype": v.dtype}
    if qp is None:
        return v.dtype, props
    props.update({"edgequant.qdtype": qp.dtype, "edgequant.scale": json.dumps(list(qp.scale)),
                  "edgequant.zero_point": json.dumps(list(qp.zero_point)),
                  "edgequant.ch_axis": "" if qp.ch_axis is None else str(qp.ch_axis)})
    carrier = f"{v.dtype} carrying " if v.dtype != qp.dtype else ""
    if qp.ch_axis is None:
        doc = f"{carrier}{qp.dtype} scale={qp.scale[0]:.6g} zero_point={qp.zero_point[0]}"
    else:
        shown = ", ".join(f"{s:.6g}" for s in qp.scale[:8]) + (", ..." if len(qp.scale) > 8 else "")
        zps = sorted(set(qp.zero_point))
        zp = str(zps[0]) if len(zps) == 1 else "[" + ", ".join(map(str, qp.zero_point[:8])) + ", ...]"
        doc = (f"{carrier}{qp.dtype} per channel along axis {qp.ch_axis}: {len(qp.scale)} scales [{shown}] "
               f"zero_point={zp}")
    return doc, props


def _shape(v: Value) -> list:
    return list(v.shape) if v.dtype != "sym" else []


def _value_info(v: Value) -> onnx.ValueInfoProto:
    vi = helper.make_tensor_value_info(v.name, elem_type(v), _shape(v))
    vi.doc_string, props = annotation(v)
    helper.set_metadata_props(vi, props)
    return vi


def _initializer(name: str, t, v: Value) -> onnx.TensorProto:
    et = elem_type(v)
    arr = t.detach().cpu()
    if et == TensorProto.BFLOAT16:
        arr = arr.float()
    arr = arr.numpy()
    if et in (TensorProto.INT4, TensorProto.UINT4):
        tp = helper.make_tensor(name, et, list(arr.shape), arr.astype(np.int8).flatten().tolist())
    elif et == TensorProto.BFLOAT16:
        tp = helper.make_tensor(name, et, list(arr.shape), arr.flatten().tolist())
    else:
        tp = numpy_helper.from_array(np.ascontiguousarray(arr.astype(_NUMPY[et])), name)
    tp.doc_string, props = annotation(v)
    helper.set_metadata_props(tp, props)
    return tp


def _attribute(key: str, val) -> onnx.AttributeProto:
    """Typed where ONNX has the type (int, float, str, lists of one of them), else JSON text."""
    if isinstance(val, bool):
        return helper.make_attribute(key, int(val))
    if isinstance(val, (int, float, str)):
        return helper.make_attribute(key, val)
    if isinstance(val, list) and val:
        for kind in (int, float, str):
            if all(type(x) is kind for x in val):
                return helper.make_attribute(key, val)
    return helper.make_attribute(key, json.dumps(val, default=repr))


def _node(n: Node, g: Graph) -> onnx.NodeProto:
    outs = []
    for o in n.outputs:
        v = g.values.get(o)
        outs.append(f"{o}: {annotation(v)[0]}" if v is not None else o)
    doc = "\n".join(([f"source: {n.source}"] if n.source else []) + outs)
    node = helper.make_node(n.op, [i if i is not None else "" for i in n.inputs], list(n.outputs),
                            name=n.name, domain=DOMAIN, doc_string=doc)
    node.attribute.extend(_attribute(k, v) for k, v in n.attrs.items())
    return node


def to_onnx(g: Graph) -> onnx.ModelProto:
    """The ONNX picture of ``g`` (see the module docstring); checked with ``full_check=True``."""
    inputs = [_value_info(g.values[i]) for i in g.inputs]
    seen: set[str] = set()
    outputs = []
    for o in g.outputs:
        if isinstance(o, str) and o not in seen:
            seen.add(o)
            outputs.append(_value_info(g.values[o]))
    boundary = set(g.inputs) | seen | set(g.constants)
    value_info = [_value_info(v) for k, v in g.values.items() if k not in boundary]
    inits = [_initializer(k, t, g.values[k]) for k, t in g.constants.items()]
    graph = helper.make_graph([_node(n, g) for n in g.nodes], f"edgequant_{g.level}", inputs, outputs, inits,
                              doc_string=f"edgequant IR, level {g.level!r}, march {g.meta.get('march')!r}; "
                                         "nodes of the 'edgequant' domain are a picture, not runnable ONNX",
                              value_info=value_info)
    model = helper.make_model(graph, producer_name="edgequant", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION_ONNX
    helper.set_model_props(model, {"edgequant.level": g.level, "edgequant.march": str(g.meta.get("march")),
                                   "edgequant.outputs": json.dumps(list(g.outputs))})
    onnx.checker.check_model(model, full_check=True)
    return model


def visualize(model_or_ir, path: str | os.PathLike, example_inputs=None) -> onnx.ModelProto:
    """Write the ONNX picture of a ``Graph`` (either level) or a prepared model to ``path``.

    A prepared model is exported first (``example_inputs`` as for ``export``). Returns the
    ``onnx.ModelProto`` that was written. Raises ``TypeError`` for anything else (a float model:
    prepare and calibrate it first) and for a ``path`` that is not a file path.
    """
    expect_graph_or_prepared(model_or_ir, "visualize", "model_or_ir")
    expect_path(path, "visualize", "path")
    if isinstance(model_or_ir, Graph):
        g = model_or_ir
    else:
        g = export(model_or_ir, example_inputs)
    model = to_onnx(g)
    onnx.save(model, os.fspath(path))
    return model


__all__ = ["visualize", "to_onnx", "elem_type", "annotation", "OPSET", "DOMAIN"]
