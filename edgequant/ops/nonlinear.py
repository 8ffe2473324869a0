"""Elementwise nonlinear functions and the other table ops: lookup tables in the integer model.

Takes quant-level nodes that ``edgequant.lut`` simulated with tables (``attrs["lut"]``: kind,
table attributes, parameters, constant names; ``lut/sim.py`` writes them at export) and
declares their rows: every function below becomes one integer ``lut`` node, tensor / tensor
division a ``lut_div`` node, and softmax / layer norm (rows in ``norm_softmax``) integer
``softmax`` / ``layer_norm`` nodes, all run by ``k_lut`` (``table_kernel`` below, on the
parameters ``lut.params.unpack`` reads). At the quant level ``run_quant`` runs a table node
as VALIDATION did: quantize the inputs, the integer kernel, dequantize. A row's ``table_symmetry`` is the
symmetric mode of its table.

Agreement with the simulation: 0 LSB (bit exact) for every table node (``lut``, ``lut_div``,
``softmax``, ``layer_norm``) given the same input codes, since the simulation runs this very
kernel on codes quantized from its on-grid inputs (``OpSpec.lsb`` 0, the default of a row with a
``table`` kind; the table's own error against the float function is the simulation's, not a
difference between the two).
"""
from __future__ import annotations

import torch

from ..ir import Graph, Node
from ..lut import composite
from ..lut.kernel import lut_apply
from ..lut.params import n_extra, unpack
from ..qmath import dequantize, quantize
from .call import call_target
from .operands import operand
from .spec import OpSpec


# the integer kernel of each table kind (``attrs["lut"]["kind"]``, written by lut/sim.py)
_KINDS = {
    "table": lambda qs, p: lut_apply(qs[0], p["tables"][0]),
    "softmax": lambda qs, p: composite.softmax_int(qs[0], p["params"], p["tables"]),
    "layer_norm": lambda qs, p: composite.layer_norm_int(qs[0], p["params"], p["tables"], p["consts"]),
    "div": lambda qs, p: composite.div_int(qs[0], qs[1], p["params"], p["tables"]),
}


def table_kernel(kind: str, qs: list[torch.Tensor], p: dict) -> torch.Tensor:
    """The integer kernel of a table op: input codes -> output codes."""
    fn = _KINDS.get(kind)
    if fn is None:
        raise ValueError(f"unknown table op kind {kind!r}")
    return fn(qs, p)


def run_quant(g: Graph, node: Node, args: list, fake_quant: bool, callables: dict):
    """One quant-level table node: the integer kernel between quantize and dequantize (or, with
    ``fake_quant=False``, the float function)."""
    lut = node.attrs["lut"]
    if not fake_quant:
        fn = callables.get(node.attrs.get("callable_ref"))
        if fn is not None:
            return fn(args[0])
        if node.attrs["target"] != "segment_lut":
            return call_target(node, args)
    nq = lut["n_quant"]
    qs = []
    for name, x in zip(node.inputs[:nq], args[:nq]):
        qp = g.values[name].qparams
        qs.append(quantize(x, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype))
    yq = table_kernel(lut["kind"], qs, unpack(lut, args[len(args) - n_extra(lut):]))
    qp = g.values[node.outputs[0]].qparams
    return dequantize(yq, qp.scale_tensor(), qp.zero_point_tensor())


# the int-level op of each table kind: one ``lut`` op for elementwise tables, ``lut_div`` for
# tensor / tensor division; softmax and layer norm keep their names
_INT_OP = {"table": "lut", "div": "lut_div"}


def lower_lut(ctx, node: Node) -> None:
    """quant-level table node -> one integer node reading the codes and the table constants."""
    lut = node.attrs.get("lut")
    if lut is None:
        raise ctx.error(node, "this table op was not simulated with a table (its input or output is not "
                              "quantized per tensor); give it per-tensor qconfigs")
    nq, ne = lut["n_quant"], n_extra(lut)
    qins = list(node.inputs[:nq])
    extras = list(node.inputs[len(node.inputs) - ne:])
    for k, i in enumerate(qins):
        if i in ctx.q.constants and ctx.q.values[i].qparams is not None:
            operand(ctx, node, {"$in": k})    # a quantized constant (DeBERTa's 0-d divisor): its codes, once
        elif ctx.qparams(i) is None:
            raise ctx.error(node, f"its input {i!r} is not quantized")
    for e in extras:
        ctx.add_const(e, ctx.q.constants[e])
    qp = ctx.q.values[node.outputs[0]].qparams
    ctx.set_value(node.outputs[0], qp.dtype, qp)
    keep = {k: node.attrs[k] for k in ("target", "args", "kwargs", "callable_ref") if k in node.attrs}  # for reports
    ctx.emit(Node(node.name, _INT_OP.get(lut["kind"], lut["kind"]), tuple(qins + extras), node.outputs, {"lut": lut, **keep},
                  node.source))


def k_lut(g: Graph, node: Node, args):
    """Integer kernel of ``lut``, ``softmax``, ``layer_norm`` and ``lut_div`` nodes."""
    lut = node.attrs["lut"]
    nq = lut["n_quant"]
    return table_kernel(lut["kind"], list(args[:nq]), unpack(lut, list(args[nq:])))


def _table(name: str, target: str, symmetry: str, **roles) -> OpSpec:
    return OpSpec(name, (target,), table="table", table_symmetry=symmetry, lower=lower_lut, **roles)


# the table records (attrs["lut"], edgequant.lut writes them) of the kinds lut and lut_div run
# (read by edgequant.check_attrs): tables, constant names, quantized inputs and the params' schema
_LUT_TABLE = {"n_tables": 1, "consts": (), "n_quant": 1, "params": {}}
_LUT_DIV = {"n_tables": 1, "consts": (), "n_quant": 2, "params": {
    "a_zero": "int", "b_zero": "int", "m0": "int", "shift": "shift", "out_zero": "int", "out_dtype": "qdtype"}}
SPECS = [
    _table("sigmoid", "aten.sigmoid.default", "ASYM"),
    _table("tanh", "aten.tanh.default", "CSYM"),
    _table("exp", "aten.exp.default", "ASYM", sensitive_input=True),
    _table("log", "aten.log.default", "ASYM", sensitive_input=True),
    _table("sqrt", "aten.sqrt.default", "ASYM"),
    _table("rsqrt", "aten.rsqrt.default", "ASYM", sensitive_input=True),
    _table("reciprocal", "aten.reciprocal.default", "ASYM", sensitive_input=True),
    _table("gelu", "aten.gelu.default", "ASYM"),
    _table("silu", "aten.silu.default", "ASYM"),
    _table("hardswish", "aten.hardswish.default", "ASYM"),
    _table("hardsigmoid", "aten.hardsigmoid.default", "ASYM"),
    _table("erf", "aten.erf.default", "CSYM"),
    _table("pow", "aten.pow.Tensor_Scalar", "ASYM"),
    # smooth activations of detectors, audio and speech models (YOLOv4's mish, ELU/SELU/CELU, softplus,
    # log-sigmoid) and the sin/cos of positional encodings computed from activations (NeRF-style)
    _table("softplus", "aten.softplus.default", "ASYM"),
    _table("mish", "aten.mish.default", "ASYM"),
    _table("elu", "aten.elu.default", "ASYM"),
    _table("selu", "aten.selu.default", "ASYM"),
    _table("celu", "aten.celu.default", "ASYM"),
    _table("log_sigmoid", "aten.log_sigmoid.default", "ASYM"),
    _table("sin", "aten.sin.default", "CSYM"),
    _table("cos", "aten.cos.default", "ASYM"),
    OpSpec("segment_lut", ("segment_lut",), table="table", python_call=True, lower=lower_lut),
    # int level only: what convert writes for the rows above (softmax and layer_norm keep their names)
    OpSpec("lut", (), table="table", kernel=k_lut, onnx_int="lut", quant_level=False, lut_record=_LUT_TABLE),
    OpSpec("lut_div", (), table="div", kernel=k_lut, onnx_int="lut", quant_level=False, lut_record=_LUT_DIV),
]
