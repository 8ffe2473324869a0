"""Normalisations and softmax: specs and the integer lowering of a standalone batch norm.

Stage: ``convert`` (the rows' ``lower``) and ``run`` at level "int" (their ``kernel``). A batch norm that
follows a conv/linear is folded into its weights by ``prepare``; one that remains (after a
pooling, an add, an input) lowers to the ``affine`` kernel (``ops.affine``), per channel ``c``
(axis 1)::

    a[c] = weight[c] / sqrt(running_var[c] + eps),   b[c] = bias[c] - running_mean[c] * a[c]
    y = clamp(rounding_shift_right((q - z_in) * m[c] + B[c], n[c]) + z_out)

with ``m[c] = round(a[c] s_in / s_out * 2^n[c])`` (signed: a negative weight flips it) and the
fixed-point bias ``B[c] = round(b[c] / s_out * 2^n[c])``, ``n[c]`` chosen as for every affine
node (31-bit largest multiplier, lowered if int64 could overflow). Agreement with the
simulation: <= 1 LSB (the fold is computed in float64 from the float32 parameters).

``layer_norm`` and ``softmax`` run as lookup-table kernels (``edgequant.lut.composite``): prepare
simulates them with tables, and ``convert`` lowers a node that carries them (``attrs["lut"]``)
through ``ops/nonlinear.lower_lut``; a node without tables (a per-channel input) has no
lowering, and ``convert`` refuses it by node name. Capture writes ``log_softmax`` in ops with
integer forms (``capture_decomp``); its row stays for graphs read from files.
"""
from __future__ import annotations

import math

from ..ir import Node
from .affine import k_affine, operand_term, plan_affine
from .elementwise import output_grid
from .nonlinear import k_lut
from .operands import Operand, arg, emit_op, is_input, operand, scalar
from .spec import OpSpec


def _param(ctx, node: Node, pos: int, name: str, n: int, default: float) -> list[float]:
    a = arg(node, pos, name)
    if a is None:
        return [default] * n
    t = ctx.q.constants.get(node.inputs[a["$in"]]) if is_input(a) else None
    if t is None or t.numel() != n:
        raise ctx.error(node, f"batch norm {name} must be a constant of {n} values")
    return [float(v) for v in t.detach().double().flatten().tolist()]


def lower_batch_norm(ctx, node: Node) -> None:
    x = operand(ctx, node, arg(node, 0, "input"))
    if not isinstance(x, Operand) or x.qp.ch_axis is not None:
        raise ctx.error(node, "batch norm needs a per-tensor quantized input")
    t = node.attrs["target"]
    if t == "aten.batch_norm.default":
        if arg(node, 5, "training", False):
            raise ctx.error(node, "a batch norm in training mode has no integer form; call model.eval() first")
        eps = float(scalar(arg(node, 7, "eps", 1e-5)))
    else:
        eps = float(scalar(arg(node, 6, "eps", 1e-5)))
    shape = ctx.value(x.name).shape
    if len(shape) < 2 or not isinstance(shape[1], int):
        raise ctx.error(node, f"batch norm needs a static channel dim, got shape {shape}")
    c = shape[1]
    w, b = _param(ctx, node, 1, "weight", c, 1.0), _param(ctx, node, 2, "bias", c, 0.0)
    mean, var = _param(ctx, node, 3, "running_mean", c, 0.0), _param(ctx, node, 4, "running_var", c, 1.0)
    a = [wi / math.sqrt(vi + eps) for wi, vi in zip(w, var)]
    beta = [bi - mi * ai for bi, mi, ai in zip(b, mean, a)]
    out, qp, lo, hi, act = output_grid(ctx, node)
    axis = 1 - len(shape)
    term = operand_term(ctx, node, x, 0, a, qp, axis=axis)
    attrs = plan_affine(ctx, node, [term], qp, lo, hi, const=[v / qp.scale[0] for v in beta], axis=axis)
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


# the table records (attrs["lut"], edgequant.lut writes them) softmax and layer_norm run (read by
# edgequant.check_attrs): tables, constant names, quantized inputs and the params' schema
_SOFTMAX_LUT = {"n_tables": 2, "consts": (), "n_quant": 1, "params": {
    "in_zero": "int", "dim": "dim", "m0": "int", "shift": "shift", "out_zero": "int", "out_dtype": "qdtype"}}
_LAYER_NORM_LUT = {"n_tables": 1, "consts": ("b0", "g0", "gn"), "n_quant": 1, "params": {
    "n": "count", "in_zero": "int", "eps": "int", "out_zero": "int", "out_dtype": "qdtype"}}
SPECS = [
    OpSpec("batch_norm", ("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"),
           param_args=(1, 2, 3, 4), folds_into_weighted=True, lower=lower_batch_norm, kernel=k_affine,
           int_attrs={"kernel": "named kernel"}),
    OpSpec("layer_norm", ("aten.layer_norm.default",), param_args=(2, 3), table="layer_norm", sensitive_input=True, int16_input=True,
           kernel=k_lut, onnx_int="lut", lut_record=_LAYER_NORM_LUT),   # lowered only when simulated with tables
    OpSpec("softmax", ("aten.softmax.int", "aten._softmax.default"), table="softmax", sensitive_input=True, int16_input=True,
           kernel=k_lut, onnx_int="lut", lut_record=_SOFTMAX_LUT),
    OpSpec("log_softmax", ("aten.log_softmax.int", "aten._log_softmax.default"), sensitive_input=True,
           int16_input=True),
]
