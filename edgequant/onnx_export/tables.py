"""Table ops (``attrs["lut"]``) as ONNX int64 nodes: edgequant/lut/kernel.py written in ONNX.

Takes the node's ``lut`` attributes, the ONNX names of its input codes (int64, not yet centered)
and its table constants (the trailing IR inputs); appends nodes that compute the output codes
(int64, saturated to the output type) exactly as ``lut.kernel.lut_apply`` does
(docs/arithmetic.md, T1..T4): the table coordinate ``a = u`` or ``|u|`` with mirroring, a direct
table by ``Gather``, a segmented table by counting the segment bounds at or below ``a``,
gathering the two entries around it and one half-to-even rounding shift ``A6`` per element,
linear extrapolation outside the range. Both flavours use it: the QDQ flavour between a
QuantizeLinear and a DequantizeLinear, the integer flavour on the integer codes.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from ..dtype import get_dtype
from ..ir import Node
from ..lut.ir_ops import n_extra
from ..lut.table import LutTable
from .builder import Builder
from .errors import unsupported
from .intmath import clamp

SUPPORTED = ("table",)


def supported(lut: dict) -> bool:
    return lut["kind"] in SUPPORTED


def _pow2(n) -> np.ndarray:
    return np.left_shift(np.int64(1), np.asarray(n, dtype=np.int64))


def shift_by_pow2(b: Builder, v: str, p: str) -> str:
    """(A6) ``round(v / p)`` half to even, for a per-element power of two ``p >= 2`` (int64)."""
    half_m1 = b.op("Sub", [b.op("Div", [p, b.i64(2)]), b.i64(1)])
    rem = b.op("Mod", [v, p], fmod=0)
    floor = b.op("Div", [b.op("Sub", [v, rem]), p])
    odd = b.op("Mod", [floor, b.i64(2)], fmod=0)
    up = b.op("Div", [b.op("Add", [b.op("Add", [rem, odd]), half_m1]), p])
    return b.op("Add", [floor, up])


def _check_shift(node: Node, n) -> None:
    n = np.asarray(n)
    if n.size and (int(n.min()) < 1 or int(n.max()) > 62):
        raise unsupported(node, "onnx", f"a table shift of {int(n.min())}..{int(n.max())} is outside 1..62")


def table_values(b: Builder, a: str, t: LutTable, node: Node) -> str:
    """``lut_values``: the table at coordinates ``a`` (int64), output codes without zero point."""
    e_np = t.entries.to(torch.int64).numpy()
    e = b.i64(e_np, "table")
    if t.kind == "direct":
        idx = clamp(b, b.op("Sub", [a, b.i64(t.index_offset)]) if t.index_offset else a, 0, e_np.size - 1)
        return b.op("Gather", [e, idx], axis=0)
    starts = np.asarray(t.starts, dtype=np.int64)
    shifts = np.asarray(t.shifts, dtype=np.int64)
    nseg, width, fb = len(shifts), t.intervals + 1, t.frac_bits
    _check_shift(node, shifts + fb)
    if nseg > 1:
        ge = b.op("GreaterOrEqual", [b.op("Unsqueeze", [a, b.i64([-1])]), b.i64(starts[1:nseg])])
        seg = b.op("ReduceSum", [b.op("Cast", [ge], to=TensorProto.INT64), b.i64([-1])], keepdims=0)
    else:
        seg = b.op("Mul", [a, b.i64(0)])
    d = b.op("Sub", [a, b.op("Gather", [b.i64(starts), seg], axis=0)])
    pw = b.op("Gather", [b.i64(_pow2(shifts)), seg], axis=0)            # 2^p
    j = b.op("Div", [d, pw])                                            # d >= 0 wherever it is used
    frac = b.op("Sub", [d, b.op("Mul", [j, pw])])
    inside = b.op("And", [b.op("GreaterOrEqual", [a, b.i64(starts[0])]), b.op("Less", [a, b.i64(starts[nseg])])])
    idx = b.op("Where", [inside, b.op("Add", [b.op("Mul", [seg, b.i64(width)]), j]), b.i64(0)])
    e0 = b.op("Gather", [e, idx], axis=0)
    e1 = b.op("Gather", [e, b.op("Add", [idx, b.i64(1)])], axis=0)
    val = b.op("Add", [b.op("Mul", [e0, pw]), b.op("Mul", [b.op("Sub", [e1, e0]), frac])])
    y_in = shift_by_pow2(b, val, b.op("Gather", [b.i64(_pow2(shifts + fb)), seg], axis=0))
    # extrapolation (T4): anchor + A6(dist * m0, sh), then A6(., F)
    _check_shift(node, [t.slope_lo[1], t.slope_hi[1], fb])
    below = b.op("Less", [a, b.i64(starts[0])])
    anchor = b.op("Where", [below, b.i64(e_np[0]), b.i64(e_np[-1])])
    dist = b.op("Sub", [a, b.op("Where", [below, b.i64(starts[0]), b.i64(starts[nseg])])])
    m0 = b.op("Where", [below, b.i64(t.slope_lo[0]), b.i64(t.slope_hi[0])])
    sh = b.op("Where", [below, b.i64(_pow2(t.slope_lo[1])), b.i64(_pow2(t.slope_hi[1]))])
    v = b.op("Add", [anchor, shift_by_pow2(b, b.op("Mul", [dist, m0]), sh)])
    y_out = shift_by_pow2(b, v, b.i64(_pow2(fb)))
    return b.op("Where", [inside, y_in, y_out])


def apply_table(b: Builder, q: str, t: LutTable, node: Node) -> str:
    """``lut_apply`` on int64 codes ``q``: saturated output codes (int64)."""
    u = b.op("Sub", [q, b.i64(t.in_zero)]) if t.in_zero else q
    if t.mode == "ASYM":
        v = table_values(b, u, t, node)
    else:
        v = table_values(b, b.op("Abs", [u]), t, node)
        if t.mode == "CSYM":
            v = b.op("Where", [b.op("Less", [u, b.i64(0)]), b.op("Neg", [v]), v])
    if t.out_zero:
        v = b.op("Add", [v, b.i64(t.out_zero)])
    dt = get_dtype(t.out_dtype)
    return clamp(b, v, dt.qmin, dt.qmax)


def emit(b: Builder, lut: dict, codes: list[str], extra: list[torch.Tensor], node: Node) -> str:
    """The output codes (int64) of a table op whose input codes are ``codes``."""
    if lut["kind"] != "table":
        raise unsupported(node, "onnx", f"table op kind {lut['kind']!r} has no integer ONNX translation yet")
    nt = len(lut["tables"])
    t = LutTable.from_attrs(lut["tables"][0], extra[:nt][0])
    return apply_table(b, codes[0], t, node)


__all__ = ["emit", "supported", "n_extra", "apply_table", "shift_by_pow2"]
