"""grid_sample's integer kernel (``ops.grid_sample.k_grid_sample``) in standard ONNX int64 ops.

Takes the int-level node (attrs written by ``ops.grid_sample.lower_grid_sample``) and the ONNX
names of its inputs (the codes of ``x`` ``(N, C, H, W)`` and of the grid ``(N, Ho, Wo, 2)``);
appends ``Gather`` (one grid coordinate), ``Mul``/``Add`` (the exact position ``T``), (A6)
``rounding_shift`` (the position to 2^-16 pixel, or the nearest pixel, half to even), ``Clip``
(border), ``Mod``/``Div`` (floor and fraction of the position: exact on multiples), the in-image
masks, ``GatherElements`` of the taps from ``x`` flattened to ``(N, C, H * W)``, their weighted
sum, (A6) and (A7) as the kernel does. Every op is integer, so ONNX Runtime reproduces the
integer model bit for bit.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..ops.grid_sample import WEIGHT_BITS
from .intmath import clamp, requantize, rounding_shift, to_i64


def _taps(b, a: dict, g: str, k: int, size: int) -> list[tuple[str, str | None]]:
    """[(index, weight or None for 1)] of axis ``k`` (0: width, 1: height)."""
    m, n = a["pos_m"][k], a["pos_n"][k]
    gk = b.op("Gather", [g, b.i64(k)], axis=3)
    t = b.op("Add", [b.op("Mul", [gk, b.i64(m)]), b.i64((size - 1) << (n - 1))])
    if a["mode"] == "nearest":
        i = rounding_shift(b, t, np.asarray(n, np.int64))
        return [(clamp(b, i, 0, size - 1) if a["padding"] == "border" else i, None)]
    c = rounding_shift(b, t, np.asarray(n - WEIGHT_BITS, np.int64))
    if a["padding"] == "border":
        c = clamp(b, c, 0, (size - 1) << WEIGHT_BITS)
    one = b.i64(1 << WEIGHT_BITS)
    w1 = b.op("Mod", [c, one], fmod=0)
    i0 = b.op("Div", [b.op("Sub", [c, w1]), one])
    return [(i0, b.op("Sub", [one, w1])), (b.op("Add", [i0, b.i64(1)]), w1)]


def write_grid_sample(w, node, ins, out) -> None:
    """The ``grid_sample`` kernel: ``w`` is the integer flavour's ``IntWriter``."""
    b, a = w.b, node.attrs
    h, wd = a["sizes"]
    x = to_i64(b, ins[0], a["zp"])
    g = to_i64(b, ins[1], a["grid_zp"])
    flat = b.op("Reshape", [x, b.i64([0, 0, -1])])                       # (N, C, H * W)
    nc1 = b.op("Concat", [b.op("Shape", [x], start=0, end=2), b.i64([1])], axis=0)
    acc = None
    for iy, wy in _taps(b, a, g, 1, h):
        for ix, wx in _taps(b, a, g, 0, wd):
            idx = b.op("Add", [b.op("Mul", [clamp(b, iy, 0, h - 1), b.i64(wd)]), clamp(b, ix, 0, wd - 1)])
            idx = b.op("Expand", [b.op("Reshape", [idx, b.i64([0, 1, -1])]), nc1])
            v = b.op("GatherElements", [flat, idx], axis=2)
            ok = b.op("And", [b.op("And", [b.op("GreaterOrEqual", [iy, b.i64(0)]), b.op("Less", [iy, b.i64(h)])]),
                              b.op("And", [b.op("GreaterOrEqual", [ix, b.i64(0)]), b.op("Less", [ix, b.i64(wd)])])])
            wt = b.op("Cast", [ok], to=TensorProto.INT64)                # outside the image: 0 (the zero point)
            for f in (wy, wx):
                if f is not None:
                    wt = b.op("Mul", [wt, f])
            term = b.op("Mul", [v, b.op("Reshape", [wt, b.i64([0, 1, -1])])])
            acc = term if acc is None else b.op("Add", [acc, term])
    shape = b.op("Concat", [b.op("Shape", [x], start=0, end=2), b.op("Shape", [g], start=1, end=3)], axis=0)
    acc = b.op("Reshape", [acc, shape])
    r = rounding_shift(b, acc, np.asarray(a["drop"], np.int64))
    w.out_cast(node, requantize(b, r, a["m0"], a["shift"], a["out_zp"]), out, a["lo"], a["hi"])
