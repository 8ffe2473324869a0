"""Table ops (``attrs["lut"]``) as ONNX int64 nodes: edgequant/lut/kernel.py written in ONNX.

Takes the node's ``lut`` attributes, the ONNX names of its input codes (int64, not yet centered)
and its table constants (the trailing IR inputs); appends nodes that compute the output codes
(int64, saturated to the output type) exactly as ``lut.kernel.lut_apply`` does
(docs/arithmetic.md, T1..T4): the table coordinate ``a = u`` or ``|u|`` with mirroring, a direct
table by ``Gather``, a segmented table by counting the segment bounds at or below ``a``,
gathering the two entries around it and one half-to-even rounding shift ``A6`` per element,
linear extrapolation outside the range. Each table kind (``lut["kind"]``, the ``table`` of the
op's row) has one writer in ``WRITERS``: a single table, softmax (T6), layer norm (T7) and
tensor division (``composite.div_int``: the divisor's magnitude normalised, a reciprocal table,
one rounding shift; its writer takes both operands' codes). Both flavours use it: the QDQ flavour between a
QuantizeLinear and a DequantizeLinear, the integer flavour on the integer codes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from onnx import TensorProto

from ..dtype import get_dtype
from ..ir import Node
from ..lut.composite import RECIP_BITS, RSQRT_BITS, XHAT_BITS
from ..lut.params import n_extra, unpack
from ..lut.table import LutTable
from .builder import Builder
from .errors import unsupported
from .intmath import clamp, rounding_shift, shift_by_pow2

WRITERS: dict[str, Callable] = {}   # table kind (``lut["kind"]``, an op row's ``table``) -> its writer


def writes(kind: str):
    """Register the decorated ``(b, q, params, tables, consts, node) -> codes`` as the writer of ``kind``."""
    def register(fn):
        WRITERS[kind] = fn
        return fn
    return register


def supported(lut: dict) -> bool:
    """Whether the table op's kind has an int64 ONNX writer (``tables.WRITERS``)."""
    return lut["kind"] in WRITERS


def _pow2(n) -> np.ndarray:
    return np.left_shift(np.int64(1), np.asarray(n, dtype=np.int64))


def _check_shift(node: Node, n) -> None:
    n = np.asarray(n)
    if n.size and (int(n.min()) < 1 or int(n.max()) > 62):
        raise unsupported(node, "onnx", f"a table shift of {int(n.min())}..{int(n.max())} is outside 1..62")


def _slope(slope) -> tuple[int, int]:
    """An extrapolation multiplier ``(m0, n)`` with ``n`` brought into ``1..62`` without changing
    ``A6(dist * m0, n)``: ``n > 62`` gives 0 (``|dist * m0| < 2^48``: the distance is a 17-bit
    code difference, ``m0`` has 31 bits), ``n < 1`` is an exact left shift."""
    m0, n = int(slope[0]), int(slope[1])
    if n > 62:
        return 0, 1
    if n < 1:
        return m0 << (1 - n), 1
    return m0, n


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
    (m_lo, s_lo), (m_hi, s_hi) = _slope(t.slope_lo), _slope(t.slope_hi)
    below = b.op("Less", [a, b.i64(starts[0])])
    anchor = b.op("Where", [below, b.i64(e_np[0]), b.i64(e_np[-1])])
    dist = b.op("Sub", [a, b.op("Where", [below, b.i64(starts[0]), b.i64(starts[nseg])])])
    m0 = b.op("Where", [below, b.i64(m_lo), b.i64(m_hi)])
    sh = b.op("Where", [below, b.i64(_pow2(s_lo)), b.i64(_pow2(s_hi))])
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


@writes("table")
def single_table(b: Builder, q: str, p: dict, tabs: list[LutTable], consts: dict, node: Node) -> str:
    """An elementwise function of one table (``lut_apply``)."""
    return apply_table(b, q, tabs[0], node)


def shift_dynamic(b: Builder, v: str, n: str) -> str:
    """(A6) by a per-element shift tensor ``n`` of any sign: ``n <= 0`` is an exact left shift,
    ``n > 62`` gives 0 (every value shifted here is below 2^62 in magnitude)."""
    pw = b.i64(_pow2(np.arange(63)), "pow2")
    right = shift_by_pow2(b, v, b.op("Gather", [pw, clamp(b, n, 1, 62)], axis=0))
    left = b.op("Mul", [v, b.op("Gather", [pw, clamp(b, b.op("Neg", [n]), 0, 62)], axis=0)])
    right = b.op("Where", [b.op("Greater", [n, b.i64(62)]), b.i64(0), right])
    return b.op("Where", [b.op("LessOrEqual", [n, b.i64(0)]), left, right])


def bit_length(b: Builder, v: str) -> str:
    """The bit length of positive int64 values: how many of 2^0 .. 2^62 are at most ``v`` (exact)."""
    ge = b.op("GreaterOrEqual", [b.op("Unsqueeze", [v, b.i64([-1])]), b.i64(_pow2(np.arange(63)), "pow2")])
    return b.op("ReduceSum", [b.op("Cast", [ge], to=TensorProto.INT64), b.i64([-1])], keepdims=0)


def normalise(b: Builder, v: str, bits: int, even: bool = False) -> tuple[str, str]:
    """``composite._normalise``: ``v = m * 2^k`` with ``m`` of ``bits`` bits (A6-rounded), ``k`` even if asked."""
    k = b.op("Sub", [bit_length(b, v), b.i64(bits)])
    if even:
        k = b.op("Sub", [k, b.op("Mod", [k, b.i64(2)], fmod=0)])     # 2 * floor(k / 2)
    return shift_dynamic(b, v, k), k


def _saturated(b: Builder, y: str, out_zero: int, out_dtype: str) -> str:
    dt = get_dtype(out_dtype)
    return clamp(b, b.op("Add", [y, b.i64(out_zero)]) if out_zero else y, dt.qmin, dt.qmax)


@writes("softmax")
def softmax(b: Builder, q: str, p: dict, tabs: list[LutTable], consts: dict, node: Node) -> str:
    """``composite.softmax_int`` (docs/arithmetic.md T6)."""
    exp_t, rec_t = tabs
    axes = b.i64([p["dim"]])
    u = b.op("Sub", [q, b.i64(p["in_zero"])])
    d = b.op("Sub", [u, b.op("ReduceMax", [u, axes], keepdims=1)])
    e = table_values(b, d, exp_t, node)
    m, k = normalise(b, b.op("ReduceSum", [e, axes], keepdims=1), 15)
    r = table_values(b, m, rec_t, node)
    prod = b.op("Mul", [b.op("Mul", [e, r]), b.i64(p["m0"])])
    y = shift_dynamic(b, prod, b.op("Add", [k, b.i64(p["shift"] + RECIP_BITS)]))
    return _saturated(b, y, p["out_zero"], p["out_dtype"])


@writes("layer_norm")
def layer_norm(b: Builder, q: str, p: dict, tabs: list[LutTable], consts: dict, node: Node) -> str:
    """``composite.layer_norm_int`` (docs/arithmetic.md T7) over the last ``n`` elements."""
    (rs_t,) = tabs
    n = p["n"]
    last = b.i64([-1])
    u = b.op("Sub", [b.op("Reshape", [q, b.i64([-1, n])]), b.i64(p["in_zero"])])
    su = b.op("ReduceSum", [u, last], keepdims=1)
    c = b.op("Sub", [b.op("Mul", [u, b.i64(n)]), su])
    sq = b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [u, u]), last], keepdims=1), b.i64(n)])
    dvar = b.op("Add", [b.op("Sub", [sq, b.op("Mul", [su, su])]), b.i64(p["eps"])])
    m, k = normalise(b, clamp(b, dvar, 1, None), 15, even=True)
    r = table_values(b, m, rs_t, node)
    xh = shift_dynamic(b, b.op("Mul", [c, r]), b.op("Add", [b.op("Div", [k, b.i64(2)]), b.i64(RSQRT_BITS - XHAT_BITS)]))
    g0, gn, b0 = (consts[key].to(torch.int64).numpy() for key in ("g0", "gn", "b0"))
    y = rounding_shift(b, b.op("Add", [b.op("Mul", [xh, b.i64(g0)]), b.i64(b0)]), gn)
    y = _saturated(b, y, p["out_zero"], p["out_dtype"])
    return b.op("Reshape", [y, b.op("Shape", [q])])


@writes("div")
def divide(b: Builder, q: list[str], p: dict, tabs: list[LutTable], consts: dict, node: Node) -> str:
    """``composite.div_int``: ``a / b`` of the codes ``q = [qa, qb]`` (broadcast as ONNX does)."""
    (rec_t,) = tabs
    ua = b.op("Sub", [q[0], b.i64(p["a_zero"])])
    ub = b.op("Sub", [q[1], b.i64(p["b_zero"])])
    ub = b.op("Add", [ub, b.op("Mul", [ua, b.i64(0)])])          # broadcast to the common shape
    ua = b.op("Add", [ua, b.op("Mul", [ub, b.i64(0)])])
    m, k = normalise(b, clamp(b, b.op("Abs", [ub]), 1, None), 15)
    r = table_values(b, m, rec_t, node)
    prod = b.op("Mul", [b.op("Mul", [ua, r]), b.i64(p["m0"])])
    y = shift_dynamic(b, prod, b.op("Add", [k, b.i64(p["shift"] + RECIP_BITS)]))
    y = b.op("Where", [b.op("Less", [ub, b.i64(0)]), b.op("Neg", [y]), y])
    dt = get_dtype(p["out_dtype"])
    zero = b.op("Mul", [ua, b.i64(0)])
    inf = b.op("Where", [b.op("Greater", [ua, b.i64(0)]), b.op("Add", [zero, b.i64(dt.qmax - p["out_zero"])]),
                         b.op("Where", [b.op("Less", [ua, b.i64(0)]), b.op("Add", [zero, b.i64(dt.qmin - p["out_zero"])]),
                                        zero])])
    y = b.op("Where", [b.op("Equal", [ub, b.i64(0)]), inf, y])   # x / 0 saturates (0 / 0 gives 0)
    return _saturated(b, y, p["out_zero"], p["out_dtype"])


def emit(b: Builder, lut: dict, codes: list[str], extra: list[torch.Tensor], node: Node) -> str:
    """The output codes (int64, saturated) of a table op whose input codes are ``codes`` (int64)."""
    p = unpack(lut, extra)
    writer = WRITERS.get(lut["kind"])
    if writer is None:
        raise unsupported(node, "onnx", f"table op kind {lut['kind']!r} has no integer ONNX translation")
    q = codes if lut.get("n_quant", 1) > 1 else codes[0]   # division reads both operands
    return writer(b, q, lut.get("params"), p["tables"], p["consts"], node)


__all__ = ["emit", "supported", "n_extra", "apply_table", "WRITERS"]
