"""atan2's integer kernel (``ops.atan2.k_atan2``) in standard ONNX int64 ops.

Takes the int-level node (attrs written by ``ops.atan2.lower_atan2``) and the ONNX names of its
inputs (the codes of ``y`` and ``x``); appends the kernel's steps: ``Mul`` onto one unit, ``Abs``,
``Min``/``Max``, the rounded ratio by an integer ``Div`` (operands non-negative: ``Div``'s
truncation is the kernel's floor), ``Gather`` of the two table entries and their interpolation,
the quadrant ``Where``s, (A7). Every op is integer, so ONNX Runtime reproduces the integer model
bit for bit.
"""
from __future__ import annotations

from ..ops.atan2 import HALF_PI, INTERP_BITS, PI, RATIO_BITS, atan_table
from .intmath import requantize, to_i64


def write_atan2(w, node, ins, out) -> None:
    b, a = w.b, node.attrs
    yy = b.op("Mul", [to_i64(b, ins[0], a["zp"][0]), b.i64(a["m"][0])])
    xx = b.op("Mul", [to_i64(b, ins[1], a["zp"][1]), b.i64(a["m"][1])])
    ay, ax = b.op("Abs", [yy]), b.op("Abs", [xx])
    lo, hi = b.op("Min", [ay, ax]), b.op("Max", [ay, ax])
    num = b.op("Add", [b.op("Mul", [lo, b.i64(1 << RATIO_BITS)]), b.op("Div", [hi, b.i64(2)])])
    t = b.op("Div", [num, b.op("Max", [hi, b.i64(1)])])
    seg, fr = b.op("Div", [t, b.i64(1 << INTERP_BITS)]), b.op("Mod", [t, b.i64(1 << INTERP_BITS)])
    table = b.i64(atan_table().numpy(), "atan_table")
    t0 = b.op("Gather", [table, seg], axis=0)
    t1 = b.op("Gather", [table, b.op("Add", [seg, b.i64(1)])], axis=0)
    step = b.op("Add", [b.op("Mul", [b.op("Sub", [t1, t0]), fr]), b.i64(1 << (INTERP_BITS - 1))])
    th = b.op("Add", [t0, b.op("Div", [step, b.i64(1 << INTERP_BITS)])])
    th = b.op("Where", [b.op("Greater", [ay, ax]), b.op("Sub", [b.i64(HALF_PI), th]), th])
    th = b.op("Where", [b.op("Less", [xx, b.i64(0)]), b.op("Sub", [b.i64(PI), th]), th])
    th = b.op("Where", [b.op("Less", [yy, b.i64(0)]), b.op("Neg", [th]), th])
    w.out_cast(node, requantize(b, th, a["m0"], a["shift"], a["out_zp"]), out, a["lo"], a["hi"])
