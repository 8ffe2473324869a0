"""The IR's own ops: the integer region's boundary, rescales, float code, deployment inserts.

Takes nothing at import; declares the table rows of the ops that no aten overload captures:
``quantize``/``dequantize`` (export writes them at stubs; the int level turns floats into codes
and back, A1/A2), ``rescale`` (convert writes it where a dequantize feeds a quantize: codes
onto another grid, A7), ``aten`` (an op recorded outside the quantized region, run as its torch
call), ``float_call`` (a ``wrap``ped Python function, never saved), ``yuv2rgb``
(``deploy.insert_yuv2rgb``'s integer colour conversion), and ``fake_cast`` (a float16 round trip:
a user's ``FakeCast``, or the casts ``prepare`` puts around an op whose qconfig is float16;
``edgequant.float16``). Each row names what it has of a
lowering (ops convert writes itself have none) and an integer kernel (``float_call`` runs its
Python callable instead), as the family files do for the captured ops.

Agreement with the simulation, in LSB (``OpSpec.lsb``): ``quantize`` and ``dequantize`` 0 (the
simulation's fake quantization is (A1) then (A2), the same float32 operations); ``rescale`` <= 1
(one (A7) rounding, where the simulation rounds ``s_in (q - z) / s_out`` in float32: they can
differ only at a tie); ``fake_cast`` 0 (both levels run the same ``x.half().float()``); ``yuv2rgb``
has no simulated counterpart (``edgequant.deploy``).
"""
from __future__ import annotations

import copy

import torch

from ..inputs import check_quantizable, value_label
from ..ir import Graph, Node
from ..qmath import channel_vector, dequantize, quantize, requantize, rounding_shift_right
from .call import call_target, k_call
from .lowering import _float_inputs, lower_dequantize, lower_plain, lower_quantize
from .spec import OpSpec


def k_quantize(g: Graph, node: Node, args):
    # NaN has no integer code: refuse it (+-Inf saturate); the policy is in edgequant.inputs
    check_quantizable(args[0], value_label(g.inputs, node.inputs[0]),
                      f"the integer model's quantize node {node.name!r}")
    qp = g.values[node.outputs[0]].qparams
    return quantize(args[0], qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)


def k_dequantize(g: Graph, node: Node, args):
    qp = g.values[node.inputs[0]].qparams
    return dequantize(args[0], qp.scale_tensor(), qp.zero_point_tensor(), qp.ch_axis)


def k_rescale(g: Graph, node: Node, args):
    a = node.attrs
    x = args[0].to(torch.int64) - channel_vector(a["in_zero_point"], args[0].dim(), a["ch_axis"])
    return requantize(x, channel_vector(a["m0"], x.dim(), a["ch_axis"]),
                      channel_vector(a["shift"], x.dim(), a["ch_axis"]), a["out_dtype"], a["out_zero_point"])


def k_identity(g: Graph, node: Node, args):
    # a recorded clone/contiguous/alias/dropout runs as itself: a later view may need its layout
    return call_target(node, args) if "target" in node.attrs else args[0]


def k_yuv2rgb(g: Graph, node: Node, args):
    """The integer kernel of ``yuv2rgb`` (``edgequant.deploy`` documents the arithmetic)."""
    x, coef, bias, m0, shift, mean = args
    a = node.attrs
    x = x.to(torch.int64)
    acc = torch.einsum("ij,...jhw->...ihw", coef, x) + bias.reshape(3, 1, 1)
    rgb = rounding_shift_right(acc, a["frac_bits"]).clamp_(0, 255)
    centred = (rgb << a["mean_frac_bits"]) - mean.reshape(3, 1, 1)
    return requantize(centred, m0.reshape(3, 1, 1), shift.reshape(3, 1, 1) + a["mean_frac_bits"],
                      a["out_dtype"], a["out_zero_point"])


# a fake_cast node's recorded call: the cast to float16 (k_fake_cast returns it in the float32 carrier)
FAKE_CAST_CALL = {"target": "aten._to_copy.default", "args": [{"$in": 0}], "kwargs": {"dtype": {"$dtype": "float16"}}}


def fake_cast_node(name: str, src: str, out: str, source: str) -> Node:
    """The quant-level ``fake_cast`` node that rounds the value ``src`` to float16 into ``out``."""
    return Node(name, "fake_cast", (src,), (out,), copy.deepcopy(FAKE_CAST_CALL), source)


def k_fake_cast(g: Graph, node: Node, args):
    """Both levels: the recorded cast to float16 (``aten._to_copy``), back in the float32 carrier."""
    return call_target(node, args).to(torch.float32)


def onnx_fake_cast(c, outs):
    """ONNX (both flavours): ``Cast`` to float16 and ``Cast`` back to float, the round trip itself."""
    from onnx import TensorProto

    args, _ = c.args()
    return c.b.op("Cast", [c.b.op("Cast", [args[0]], to=TensorProto.FLOAT16)], outs, to=TensorProto.FLOAT)


def lower_fake_cast(ctx, node: Node) -> None:
    """A float16 round trip: a quantized input is dequantized first (the quant level hands it
    the fake-quantized floats); the node is kept, run by ``k_fake_cast`` at the int level."""
    node = _float_inputs(ctx, node)
    for o in node.outputs:
        ctx.set_value(o, "float32", None)
    ctx.emit(Node(node.name, node.op, node.inputs, node.outputs, dict(node.attrs), node.source))


# int-level attrs (read by edgequant.check_attrs): rescale's per-channel requantization, yuv2rgb's colour maths
_RESCALE_ATTRS = {"m0": "ints", "shift": "shifts", "in_zero_point": "ints", "ch_axis": "axis", "out_zero_point": "int",
                  "out_dtype": "qdtype"}
_YUV2RGB_ATTRS = {"frac_bits": "bits", "mean_frac_bits": "bits", "out_dtype": "qdtype", "out_zero_point": "int"}
SPECS = [
    OpSpec("quantize", (), boundary="quantize", lower=lower_quantize, kernel=k_quantize, onnx_int="quantize",
           stub_form=True, lsb=0.0),
    OpSpec("dequantize", (), boundary="dequantize", lower=lower_dequantize, kernel=k_dequantize,
           onnx_int="dequantize", lsb=0.0),
    OpSpec("rescale", (), kernel=k_rescale, onnx_int="rescale", quant_level=False, stub_form=True,
           int_attrs=_RESCALE_ATTRS, int_inputs=("x",), int_per_channel=("m0", "shift", "in_zero_point")),
    OpSpec("aten", (), rule="float", float_op=True, lower=lower_plain, kernel=k_call),
    OpSpec("float_call", (), rule="float", float_op=True, python_call=True, lower=lower_plain),
    OpSpec("fake_cast", (), rule="float", float_op=True, lower=lower_fake_cast, kernel=k_fake_cast, lsb=0.0,
           onnx={FAKE_CAST_CALL["target"]: onnx_fake_cast}),
    OpSpec("yuv2rgb", (), kernel=k_yuv2rgb, quant_level=False, int_attrs=_YUV2RGB_ATTRS,
           int_inputs=("yuv", "coef", "bias", "m0", "shift", "mean")),
]
