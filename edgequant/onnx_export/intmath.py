"""qmath's integer arithmetic as ONNX int64 nodes: (A6) rounding shifts, (A7) requantize, saturation.

Takes ONNX tensor names of int64 tensors and the integer parameters (multipliers, shifts, zero
points: ints or per-channel lists along an axis); appends nodes to a ``Builder`` and returns the
result's name. Only ``Mul``, ``Add``, ``Sub``, ``Mod`` (``fmod=0``: the floor remainder), ``Div``
(exact here: it only divides multiples), ``Clip`` and ``Cast`` on int64 are used, which ONNX
Runtime's CPU provider and ``onnx.reference`` compute exactly, so (A6) half-to-even is
reproduced bit for bit (docs/arithmetic.md, A6: ``floor = v >> n``, ``t = v - floor * 2^n``,
``+1`` when ``t > 2^(n-1)`` or ``t == 2^(n-1)`` and ``floor`` is odd, in the single division
``(t + (floor & 1) + 2^(n-1) - 1) // 2^n``, as ``qmath.rounding_shift_right`` does).
``rounding_shift`` shifts by constants; ``shift_by_pow2`` is its node chain, which ``tables``
also uses with per-element powers of two.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..dtype import get_dtype
from ..qmath import channel_vector
from .builder import Builder
from .integer_types import storage_elem


def along(values, axis: int | None, rank: int | None) -> np.ndarray:
    """An int or a per-channel list as an int64 array broadcasting along ``axis`` of a rank-``rank`` tensor."""
    a = np.asarray(values, dtype=np.int64)
    if a.ndim == 0 or a.size == 1 or axis is None:
        return a.reshape(()) if a.size == 1 else a
    # qmath's shaping, without the leading ones (ONNX broadcasts from the right)
    return channel_vector(a, -axis if axis < 0 else rank - axis, 0).numpy()


def rounding_shift(b: Builder, v: str, shift: np.ndarray) -> str:
    """(A6) ``round(v / 2^shift)`` half to even on int64; ``shift <= 0`` multiplies by ``2^-shift``.

    ``shift`` is a NumPy int64 array broadcasting against ``v`` (constant shifts)."""
    shift = np.asarray(shift, dtype=np.int64)
    if shift.size and int(shift.max()) > 62:
        raise ValueError(f"a right shift by {int(shift.max())} does not fit int64 arithmetic")
    left = np.where(shift < 0, -shift, 0)
    if left.any():
        v = b.op("Mul", [v, b.i64(np.left_shift(np.int64(1), left))])
    n = np.maximum(shift, 0)
    if not n.any():
        return v
    half_m1 = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)) - 1, 0)
    odd_mask = None if (n > 0).all() else b.i64((n > 0).astype(np.int64))   # n == 0: v itself
    return shift_by_pow2(b, v, b.i64(np.left_shift(np.int64(1), n), "pow2"), b.i64(half_m1), odd_mask)


def shift_by_pow2(b: Builder, v: str, p: str, half_m1: str | None = None, odd_mask: str | None = None) -> str:
    """(A6) ``round(v / p)`` half to even on int64, for ``p`` (an ONNX name: a constant or a
    per-element tensor) a power of two ``>= 2``. ``half_m1`` names ``p / 2 - 1`` (computed from
    ``p`` when None); where ``odd_mask`` (0/1) is 0, ``p`` may be 1 with ``half_m1`` 0 (no shift)."""
    if half_m1 is None:
        half_m1 = b.op("Sub", [b.op("Div", [p, b.i64(2)]), b.i64(1)])
    rem = b.op("Mod", [v, p], fmod=0)                       # floor remainder, 0 <= rem < p
    floor = b.op("Div", [b.op("Sub", [v, rem]), p])         # exact division of a multiple
    odd = b.op("Mod", [floor, b.i64(2)], fmod=0)
    if odd_mask is not None:
        odd = b.op("Mul", [odd, odd_mask])
    up = b.op("Div", [b.op("Add", [b.op("Add", [rem, odd]), half_m1]), p])
    return b.op("Add", [floor, up])


def requantize(b: Builder, acc: str, m0, shift, zero_point=0, lo: int | None = None, hi: int | None = None,
               axis: int | None = None, rank: int | None = None) -> str:
    """(A7) ``clamp(A6(acc * m0, shift) + zero_point, lo, hi)`` on int64 (not cast)."""
    m = along(m0, axis, rank)
    y = acc if (m.size == 1 and int(m.reshape(-1)[0]) == 1) else b.op("Mul", [acc, b.i64(m, "m0")])
    y = rounding_shift(b, y, along(shift, axis, rank))
    zp = along(zero_point, axis, rank)
    if zp.any():
        y = b.op("Add", [y, b.i64(zp, "zero_point")])
    return clamp(b, y, lo, hi)


def clamp(b: Builder, v: str, lo: int | None, hi: int | None) -> str:
    if lo is None and hi is None:
        return v
    return b.op("Clip", [v, b.i64(lo) if lo is not None else "", b.i64(hi) if hi is not None else ""])


def saturate_cast(b: Builder, v: str, qdtype: str, out=1, lo: int | None = None, hi: int | None = None) -> str:
    """Clamp int64 ``v`` to ``[qmin, qmax]`` of ``qdtype`` (tightened by ``lo``/``hi``) and cast to its storage."""
    dt = get_dtype(qdtype)
    lo = dt.qmin if lo is None else max(lo, dt.qmin)
    hi = dt.qmax if hi is None else min(hi, dt.qmax)
    return b.op("Cast", [clamp(b, v, lo, hi)], out, to=storage_elem(qdtype))


def to_i64(b: Builder, x: str, zero_point=0, axis: int | None = None, rank: int | None = None) -> str:
    """``x - zero_point`` as int64."""
    y = b.op("Cast", [x], to=TensorProto.INT64)
    zp = along(zero_point, axis, rank)
    return b.op("Sub", [y, b.i64(zp, "zero_point")]) if zp.any() else y
