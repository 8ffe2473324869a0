"""``atan2(y, x)``: the angle of two quantized tensors, in integers.

Stage: ``convert`` (the row's ``lower``), ``run`` at level "int" (its ``kernel``; it is plain int64,
so it is its own reference), both ONNX flavours (``onnx_export/atan2.py`` writes the kernel; the
QDQ flavour's float form is ``onnx_atan2`` below). Integer design, all in int64:

1. both inputs on one unit: ``Y = (q_y - z_y) * M_y``, ``X = (q_x - z_x) * M_x`` with
   ``M = round(s / max(s_y, s_x) * 2^P)``, ``P = 62 - RATIO_BITS - bitlength(B)`` (``B`` the larger
   code bound), so that ``|Y|, |X| < 2^(62 - RATIO_BITS)``; a node whose smaller ``M`` falls below
   ``2^14`` (scales more than ~2^(P - 14) apart) is refused, naming the node;
2. the ratio of the smaller to the larger magnitude, ``t = (min << RATIO_BITS + max // 2) // max``
   (rounded; ``t`` in ``[0, 2^RATIO_BITS]``; both zero gives 0);
3. ``atan(t / 2^RATIO_BITS)`` by a table of ``2^(RATIO_BITS - INTERP_BITS) + 2`` entries
   ``round(atan(i / 2^(RATIO_BITS - INTERP_BITS)) * 2^ANGLE_BITS)`` and linear interpolation on the
   low ``INTERP_BITS`` bits (rounded);
4. the quadrant: ``pi/2 - a`` where ``|Y| > |X|``, ``pi - a`` where ``X < 0``, ``-a`` where
   ``Y < 0`` (torch's ``atan2(+0, -x) = pi``, ``atan2(0, 0) = 0``);
5. one (A7) requantization with ``2^-ANGLE_BITS / s_out``.

LSB bound (``lsb = 1``): the angle before the last rounding differs from ``atan2`` of the same
dequantized inputs by at most ``2^-RATIO_BITS`` (the rounded ratio; ``d atan / d r <= 1``) +
``2^-15`` (``M``'s rounding, at the refusal limit; 0 when both scales are equal, as for two slices
of one tensor) + ``h^2 / 8 * max|atan''| < 8e-8`` (interpolation, ``h = 2^-10``) + ``2^-30`` (table
and interpolation roundings): below 4e-5 rad, under 0.4 LSB of an int16 output spanning
``[-pi, pi]`` (``s ~ 9.6e-5``) and under 0.002 LSB of an int8 one. The simulation (torch's float32
``atan2``, ~2e-7 rad) and the integer model therefore round the same value except within that
distance of a tie: at most 1 LSB apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ir import Node
from ..qmath import multiply_by_quantized_multiplier, saturate
from .affine import requant_bits, requant_multiplier
from .elementwise import output_grid
from .operands import Operand, arg, emit_op, operand
from .spec import OpSpec

RATIO_BITS = 20     # fractional bits of the ratio min/max
INTERP_BITS = 10    # low ratio bits interpolated between table entries
ANGLE_BITS = 30     # fractional bits of the angle (radians)
MIN_M = 1 << 14     # smallest unit multiplier accepted (relative error <= 2^-15)
HALF_PI = round(math.pi / 2 * (1 << ANGLE_BITS))
PI = round(math.pi * (1 << ANGLE_BITS))


def atan_table() -> torch.Tensor:
    """``round(atan(i / 2^(RATIO_BITS - INTERP_BITS)) * 2^ANGLE_BITS)``, ``i = 0 .. 2^(RATIO_BITS - INTERP_BITS) + 1``."""
    n = 1 << (RATIO_BITS - INTERP_BITS)
    return torch.tensor([round(math.atan(i / n) * (1 << ANGLE_BITS)) for i in range(n + 2)], dtype=torch.int64)


_TABLE = atan_table()


def _operand(ctx, node: Node, pos: int, name: str) -> Operand:
    o = operand(ctx, node, arg(node, pos, name))
    if not isinstance(o, Operand):
        raise ctx.error(node, f"atan2's {name} is not a quantized tensor (a number or an unquantized input)")
    if o.qp.ch_axis is not None and len(o.qp.scale) > 1:
        raise ctx.error(node, f"atan2's {name} is quantized per channel (an accumulator); requantize it first")
    return o


def lower_atan2(ctx, node: Node) -> None:
    y, x = _operand(ctx, node, 0, "self"), _operand(ctx, node, 1, "other")
    out, qp, lo, hi, act = output_grid(ctx, node)
    p = 62 - RATIO_BITS - max(y.bound, x.bound).bit_length()
    big = max(y.qp.scale[0], x.qp.scale[0])
    m = [round(s / big * (1 << p)) for s in (y.qp.scale[0], x.qp.scale[0])]
    if min(m) < MIN_M:
        raise ctx.error(node, f"the scales of atan2's inputs ({y.qp.scale[0]:.3g}, {x.qp.scale[0]:.3g}) are too far "
                              "apart for its int64 ratio; give both inputs one grid (e.g. slices of one tensor)")
    bits = requant_bits(ctx, node, PI, qp.dtype, spare=2)
    m0, sh = requant_multiplier(ctx, node, 2.0 ** -ANGLE_BITS / qp.scale[0], bits,
                                "the output scale is too small for an angle")
    attrs = {"kernel": "angle", "zp": [y.qp.zero_point[0], x.qp.zero_point[0]], "m": m, "m0": m0, "shift": sh,
             "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [y.name, x.name], out, attrs, qp, act)


def k_atan2(g, node: Node, args):
    """The module docstring's steps 1-5 in int64 (its own plain-int reference)."""
    a = node.attrs
    yy = (args[0].to(torch.int64) - a["zp"][0]) * a["m"][0]
    xx = (args[1].to(torch.int64) - a["zp"][1]) * a["m"][1]
    yy, xx = torch.broadcast_tensors(yy, xx)
    ay, ax = yy.abs(), xx.abs()
    lo_, hi_ = torch.minimum(ay, ax), torch.maximum(ay, ax)
    t = ((lo_ << RATIO_BITS) + (hi_ >> 1)) // hi_.clamp(min=1)
    seg, fr = t >> INTERP_BITS, t & ((1 << INTERP_BITS) - 1)
    t0, t1 = _TABLE[seg], _TABLE[seg + 1]
    th = t0 + (((t1 - t0) * fr + (1 << (INTERP_BITS - 1))) >> INTERP_BITS)
    th = torch.where(ay > ax, HALF_PI - th, th)
    th = torch.where(xx < 0, PI - th, th)
    th = torch.where(yy < 0, -th, th)
    q = multiply_by_quantized_multiplier(th, a["m0"], a["shift"]) + a["out_zp"]
    return saturate(q.clamp(a["lo"], a["hi"]), a["out_dtype"])


def onnx_atan2(c, outs):
    """``atan2(y, x)`` of float values (the QDQ flavour; ONNX has no Atan2): ``Atan`` of
    ``min(|y|, |x|) / max(|y|, |x|)`` (0 where both are 0) with the quadrant steps of the kernel."""
    args, _ = c.args()
    yv, xv = args[0], args[1]
    b = c.b
    f = lambda v: b.const(np.asarray(v, np.float32))  # noqa: E731
    ay, ax = b.op("Abs", [yv]), b.op("Abs", [xv])
    mx = b.op("Max", [ay, ax])
    den = b.op("Where", [b.op("Equal", [mx, f(0.0)]), f(1.0), mx])
    th = b.op("Atan", [b.op("Div", [b.op("Min", [ay, ax]), den])])
    th = b.op("Where", [b.op("Greater", [ay, ax]), b.op("Sub", [f(math.pi / 2), th]), th])
    th = b.op("Where", [b.op("Less", [xv, f(0.0)]), b.op("Sub", [f(math.pi), th]), th])
    return b.op("Where", [b.op("Less", [yv, f(0.0)]), b.op("Neg", [th]), th], outs)


SPECS = [
    OpSpec("atan2", ("aten.atan2.default",), lower=lower_atan2, kernel=k_atan2, lsb=1.0,
           int_attrs={"kernel": ("angle",), "zp": "ints", "m": "ints", "m0": "int", "shift": "shift",
                      "out_zp": "int", "lo": "int", "hi": "int", "out_dtype": "qdtype"},
           int_inputs=("y", "x"), onnx={"aten.atan2.default": onnx_atan2}),
]
