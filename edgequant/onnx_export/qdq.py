"""The QDQ flavour: a quant-level ``Graph`` -> float ONNX ops between QuantizeLinear/DequantizeLinear.

Takes the graph ``export`` returns (level ``"quant"``) and a ``Builder``; fills the builder with
the VALIDATION simulation written the way ONNX tools expect quantized models:

- a value with ``QParams`` that the simulation fake-quantizes (a ``quantize`` node, an op with
  ``attrs["fq"]``) becomes ``QuantizeLinear -> DequantizeLinear`` (opset 21: int8, uint8, int16,
  a per-channel ``axis``), so the next op reads the dequantized grid value under the IR name;
- a weight constant with ``QParams`` is stored as its integer codes (qmath's (A1)) followed by
  ``DequantizeLinear`` (per output channel along its ``ch_axis``); biases stay float (the
  simulation adds the float, bias-corrected bias);
- fused intermediates and high-precision outputs (no ``QParams``) stay float, with no QDQ pair;
- values that only move get their exact QDQ pair too: shared-grid outputs (a reshape, the parts
  of a split) and the moved copies a translation makes inside one op (``Ctx.on_grid``: a linear's
  input flattened to 2-D for ``Gemm``, stack's unsqueezed inputs). Without it ONNX Runtime's QDQ
  transforms (default level ``ORT_ENABLE_ALL``) write a QuantizeLinear whose ``output_dtype``
  contradicts its zero point, and the session refuses the file;
- ops translate through ``aten.translate`` (Conv, MatMul, Add, Clip, pooling, reshapes, ...);
- table ops (``attrs["lut"]``, the simulation runs their integer kernel on the input codes)
  quantize their input, run the same integer kernel in int64 ops (``tables``) and dequantize:
  ONNX Runtime computes exactly what the simulation computes. Composite tables the integer
  emitters do not cover (see ``tables.WRITERS``) fall back to the float ONNX op followed by the
  output's QDQ pair, within the table's documented error (docs/onnx.md).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from ..ir import Graph, Node, QParams
from ..ops import calls_python, is_dequantize, is_quantize
from ..qmath import quantize
from . import aten, tables
from .builder import Builder
from .errors import translate_nodes, unsupported
from .integer_types import storage_np
from .intmath import saturate_cast

FLAVOUR = "qdq"


def qparam_consts(b: Builder, qp: QParams) -> tuple[str, str]:
    """The scale (float32) and zero point (the quantized type) inputs of Q/DQ nodes."""
    shape = () if qp.ch_axis is None else (len(qp.scale),)
    s = b.const(np.asarray(qp.scale, dtype=np.float32).reshape(shape), base="scale")
    z = b.const(np.asarray(qp.zero_point).astype(storage_np(qp.dtype)).reshape(shape), base="zero_point")
    return s, z


_QDQ_TYPES = ("qint8", "quint8", "qint16")      # what ONNX QuantizeLinear writes here


def _check_qdq_type(qp: QParams, what: str) -> None:
    if qp.dtype not in _QDQ_TYPES:
        raise ValueError(f"{what} is quantized as {qp.dtype}; the QDQ flavour writes int8, uint8 and int16 "
                         "(ONNX QuantizeLinear); use the integer flavour for other types")


def _axis(qp: QParams, rank: int) -> dict:
    return {} if qp.ch_axis is None else {"axis": qp.ch_axis % rank}


def q(b: Builder, x: str, qp: QParams, rank: int) -> str:
    s, z = qparam_consts(b, qp)
    return b.op("QuantizeLinear", [x, s, z], **_axis(qp, rank))


def dq(b: Builder, xq: str, qp: QParams, rank: int, out=1) -> str:
    s, z = qparam_consts(b, qp)
    return b.op("DequantizeLinear", [xq, s, z], out, **_axis(qp, rank))


def qdq(b: Builder, x: str, qp: QParams, rank: int, out) -> str:
    """A QuantizeLinear/DequantizeLinear pair sharing one scale and one zero-point initializer."""
    s, z = qparam_consts(b, qp)
    kw = _axis(qp, rank)
    return b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, s, z], **kw), s, z], out, **kw)


def _per_tensor(qp: QParams) -> QParams:
    """``qp`` (one scale) without a channel axis."""
    return QParams(qp.dtype, qp.scale[:1], qp.zero_point[:1], None)


class QdqWriter:
    def __init__(self, g: Graph, b: Builder):
        self.g, self.b = g, b
        self.names: dict[str, str] = {}       # IR value -> ONNX tensor holding it

    def rank(self, name: str) -> int:
        return len(self.g.values[name].shape)

    def write(self) -> None:
        g, b = self.g, self.b
        for name in g.inputs:
            self.names[name] = b.claim(name)
        for name in g.values:
            b.claim(name)
        used = {i for n in g.nodes for i in n.inputs if i is not None} | set(g.outputs)
        for name, t in g.constants.items():
            if name in used:
                self._constant(name, t)
        translate_nodes(b, g.nodes, FLAVOUR, self._node)

    def _constant(self, name: str, t: torch.Tensor) -> None:
        v = self.g.values[name]
        if v.qparams is not None and t.is_floating_point():
            qp = v.qparams
            _check_qdq_type(qp, f"constant {name!r}")
            codes = quantize(t, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)
            self.b.initializer(f"{name}.q", codes.numpy().astype(storage_np(qp.dtype)), v)
            self.names[name] = dq(self.b, f"{name}.q", qp, t.dim(), [name])
        else:
            self.names[name] = self.b.initializer(name, t.detach().numpy(), v)

    def _fq_output(self, node: Node) -> bool:
        """Whether the output gets a QDQ pair: fake-quantized outputs, and shared-grid outputs (a
        reshape, max pooling) whose values already lie on their grid, where the pair is exact and
        keeps every quantized tensor in the QDQ form ONNX Runtime's graph transforms expect."""
        if is_quantize(node.op) or node.attrs.get("fq"):
            return True
        if is_dequantize(node.op) or len(node.outputs) != 1:
            return False
        v = self.g.values[node.outputs[0]]
        return v.qparams is not None and v.dtype == "float32" and v.qparams.ch_axis is None

    def _node(self, node: Node) -> None:
        g, b = self.g, self.b
        ins = [self.names[i] if i is not None else None for i in node.inputs]
        out = node.outputs[0] if node.outputs else None
        fq = self._fq_output(node)
        if fq:
            qp = g.values[out].qparams
            _check_qdq_type(qp, f"the output of {node.name!r}")
        if is_quantize(node.op):
            self.names[out] = qdq(b, ins[0], qp, self.rank(out), [out])
            return
        if is_dequantize(node.op):
            self.names[out] = b.op("Identity", [ins[0]], [out])
            return
        if "lut" in node.attrs and tables.supported(node.attrs["lut"]):
            self._table(node, ins)
            return
        if calls_python(node.op):
            raise unsupported(node, FLAVOUR, "it runs Python code; give it per-tensor qconfigs so that it "
                                             "becomes a table op")
        paired = [fq] if fq else [self._moved_part(node, o) for o in node.outputs]
        raw = [f"{o}.float" if p else o for o, p in zip(node.outputs, paired)]
        dtypes = [g.values[i].dtype if i is not None else None for i in node.inputs]
        shapes = [tuple(g.values[i].shape) if i is not None else () for i in node.inputs]
        c = aten.Ctx(b, node, ins, dtypes, [len(s) for s in shapes], FLAVOUR, shapes,
                     [tuple(g.values[o].shape) for o in node.outputs], lambda moved, k: self._on_grid(node, moved, k))
        if aten.translate(c, [b.claim(r) for r in raw]) is None:
            return                                     # an assertion: no tensor
        for o, r, p in zip(node.outputs, raw, paired):
            self.names[o] = qdq(b, r, qp if fq else _per_tensor(g.values[o].qparams), self.rank(o), [o]) if p else o

    def _moved_part(self, node: Node, name: str) -> bool:
        """An output of a node with several (split, chunk, unbind) that lies on a per-tensor grid: it
        gets its exact QDQ pair too (ONNX Runtime's QDQ transforms expect one after every moved
        quantized tensor, see ``_fq_output``)."""
        v = self.g.values[name]
        return len(node.outputs) > 1 and v.qparams is not None and v.dtype == "float32" \
            and len(v.qparams.scale) == 1 and v.qparams.dtype in _QDQ_TYPES

    def _on_grid(self, node: Node, moved: str, k: int) -> str:
        """``Ctx.on_grid``: a QDQ pair with input ``k``'s per-tensor qparams after ``moved``."""
        v = self.g.values[node.inputs[k]] if node.inputs[k] is not None else None
        qp = v.qparams if v is not None and v.dtype == "float32" else None
        if qp is None or len(qp.scale) != 1 or qp.dtype not in _QDQ_TYPES:
            return moved
        return qdq(self.b, moved, _per_tensor(qp), 0, 1)

    def _table(self, node: Node, ins: list) -> None:
        """Quantize the inputs, run the table's integer kernel, dequantize (bit for bit the simulation)."""
        g, b = self.g, self.b
        lut = node.attrs["lut"]
        nq = lut["n_quant"]
        codes = []
        for name, x in zip(node.inputs[:nq], ins[:nq]):
            qp = g.values[name].qparams
            codes.append(b.op("Cast", [q(b, x, qp, self.rank(name))], to=TensorProto.INT64))
        extra = [g.constants[e] for e in node.inputs[len(node.inputs) - tables.n_extra(lut):]]
        y = tables.emit(b, lut, codes, extra, node)
        out = node.outputs[0]
        qp = g.values[out].qparams
        self.names[out] = dq(b, saturate_cast(b, y, qp.dtype), qp, self.rank(out), [out])


def build(g: Graph) -> Builder:
    """The QDQ ONNX graph of a quant-level ``g`` (``export_onnx`` wraps it into a model)."""
    b = Builder("edgequant_qdq")
    w = QdqWriter(g, b)
    w.write()
    return b, w.names
