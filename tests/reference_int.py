"""The plain-integer twin of ``edgequant.qmath``: the arithmetic written the obvious way.

Takes Python numbers, lists or NumPy arrays and returns NumPy arrays of Python-exact results;
it is the oracle the torch implementation is tested against, bit for bit. Nothing here imports
``edgequant.qmath``, and nothing here relies on the tricks qmath uses: every element is handled
on its own, integers are Python ints (arbitrary precision, never overflow), the one float32
operation of (A1) is a single ``numpy.float32`` division, and every rounding is Python's
``round`` on an exact value (a float or a ``fractions.Fraction``), which rounds halves to even.

Equation labels (A1)..(A7) are those of ``docs/arithmetic.md``. Only ``edgequant.dtype`` is
used, for the ranges ``[qmin, qmax]`` (and the dtype test checks those against ``2**bits``).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

F32 = np.float32
F32_EPS = float(np.finfo(np.float32).eps)

# (name -> (bits, signed)); restated here so the twin does not take ranges from the code under test
DTYPE_BITS = {"qint4": (4, True), "qint8": (8, True), "quint8": (8, False), "qint16": (16, True), "qint32": (32, True)}


def qrange(dtype) -> tuple[int, int]:
    """``(qmin, qmax)`` of a dtype given by name (or by a record with a ``name``)."""
    bits, signed = DTYPE_BITS[getattr(dtype, "name", dtype)]
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def _params(values, shape, ch_axis):
    """One parameter per element of an array of ``shape``: per tensor or along ``ch_axis``."""
    p = np.asarray(values, dtype=object).reshape(-1)
    if ch_axis is None or p.size == 1 and np.ndim(values) == 0:
        if p.size != 1:
            raise ValueError("per-tensor takes one value")
        return np.full(shape, p[0], dtype=object)
    axis = ch_axis % len(shape)
    if p.size != shape[axis]:
        raise ValueError("per-channel size mismatch")
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(p.reshape(view), shape)


def _elementwise(fn, *arrays):
    """Apply a scalar Python function elementwise (arrays already broadcast to one shape)."""
    shape = np.shape(arrays[0])
    flat = [np.asarray(a, dtype=object).reshape(-1) for a in arrays]
    out = np.empty(len(flat[0]), dtype=object)
    for i in range(len(out)):
        out[i] = fn(*(a[i] for a in flat))
    return out.reshape(shape)


# ---------------------------------------------------------------- (A1) (A2) (A3)

def quantize_scalar(x: float, s: float, z: int, qmin: int, qmax: int) -> int:
    """(A1) ``clamp(round(x / s) + z)``: one float32 division, an exact round, exact integers."""
    with np.errstate(over="ignore"):  # overflow to +-inf is meant: it saturates
        v = F32(x) / F32(s)  # numpy float32 / float32: one IEEE float32 division
    if np.isnan(v):
        raise ValueError("NaN has no quantized value")
    if np.isinf(v):
        return qmax if v > 0 else qmin
    return _clamp(round(float(v)) + int(z), qmin, qmax)  # round(float): exact, halves to even


def quantize(x, scale, zero_point, dtype, ch_axis=None) -> np.ndarray:
    """(A1) elementwise; returns an int64 array (every value fits: |q| < 2^32)."""
    x = np.asarray(x, dtype=np.float32)
    qmin, qmax = qrange(dtype)
    s = _params(scale, x.shape, ch_axis)
    z = _params(zero_point, x.shape, ch_axis)
    q = _elementwise(lambda a, b, c: quantize_scalar(a, b, c, qmin, qmax), x, s, z)
    return q.astype(np.int64)


def dequantize_scalar(q: int, s: float, z: int) -> np.float32:
    """(A2) ``(q - z) * s``: the difference is an exact int, rounded once to float32, then one
    float32 multiplication."""
    with np.errstate(over="ignore"):  # huge scales overflow to +-inf, as in float32 hardware
        return F32(int(q) - int(z)) * F32(s)


def dequantize(q, scale, zero_point=0, ch_axis=None) -> np.ndarray:
    q = np.asarray(q)
    s = _params(scale, q.shape, ch_axis)
    z = _params(zero_point, q.shape, ch_axis)
    return _elementwise(dequantize_scalar, q, s, z).astype(np.float32)


def fake_quantize(x, scale, zero_point, dtype, ch_axis=None) -> np.ndarray:
    """(A3) forward: (A2) of (A1), as float32."""
    return dequantize(quantize(x, scale, zero_point, dtype, ch_axis), scale, zero_point, ch_axis)


def fake_quantize_mask(x, scale, zero_point, dtype, ch_axis=None) -> np.ndarray:
    """(A3) backward: 1 where ``round(x / s) + z`` lies inside ``[qmin, qmax]`` (not clamped)."""
    x = np.asarray(x, dtype=np.float32)
    qmin, qmax = qrange(dtype)
    s = _params(scale, x.shape, ch_axis)
    z = _params(zero_point, x.shape, ch_axis)

    def inside(a, b, c):
        with np.errstate(over="ignore"):
            v = F32(a) / F32(b)
        return bool(np.isfinite(v)) and qmin <= round(float(v)) + int(c) <= qmax

    return _elementwise(inside, x, s, z).astype(bool)


def lsq_scale_grad(x, scale, zero_point, dtype, grad_out, grad_factor) -> float:
    """Per-tensor LSQ gradient of ``sum(grad_out * fake_quantize(x))`` w.r.t. the scale, from
    the straight-through surrogate: inside the range ``d/ds [s * round(x/s)] = round(x/s) - x/s``
    (the rounding is treated as the identity); where clamped, ``d/ds [s * (qb - z)] = qb - z``.
    Computed in float64 (a reference value, compared with a tolerance)."""
    qmin, qmax = qrange(dtype)
    s, z = float(F32(scale)), int(zero_point)
    total = 0.0
    for xi, gi in zip(np.asarray(x, np.float32).reshape(-1), np.asarray(grad_out, np.float64).reshape(-1)):
        v = float(F32(xi) / F32(s))
        q = round(v) + z
        d = (qmin - z) if q < qmin else (qmax - z) if q > qmax else (q - z) - v
        total += gi * d
    return total * grad_factor


# ---------------------------------------------------------------- (A4)

def scale_from_range(min_val, max_val, dtype, symmetric=True, eps=F32_EPS):
    """(A4) elementwise over ``min_val``/``max_val``; returns (float32 array, int64 array).

    The range is widened to contain 0. Every float operation is one float32 operation; the zero
    point is computed with exact integers and clamped exactly.
    """
    qmin, qmax = qrange(dtype)
    signed = qmin < 0
    lo_arr = np.atleast_1d(np.asarray(min_val, dtype=np.float32))
    hi_arr = np.atleast_1d(np.asarray(max_val, dtype=np.float32))
    scales, zps = [], []
    for lo, hi in zip(lo_arr.tolist(), hi_arr.tolist()):
        lo, hi = F32(min(lo, 0.0)), F32(max(hi, 0.0))
        if symmetric and signed:
            s, z = F32(max(-lo, hi)) / F32(qmax), 0
        elif symmetric:
            s, z = hi / F32(qmax), qmin
        else:
            s = F32(hi - lo) / F32(qmax - qmin)
        s = max(s, F32(eps))
        if not symmetric:
            with np.errstate(over="ignore"):
                r = F32(lo) / F32(s)  # <= 0; -inf only for absurd ranges, which saturate
            z = qmax if np.isinf(r) else _clamp(qmin - round(float(r)), qmin, qmax)
        scales.append(F32(s))
        zps.append(z)
    shape = np.broadcast(np.asarray(min_val), np.asarray(max_val)).shape
    return np.array(scales, np.float32).reshape(shape), np.array(zps, np.int64).reshape(shape)


# ---------------------------------------------------------------- (A5)

def _floor_log2(r: Fraction) -> int:
    """``floor(log2(r))`` for a positive Fraction, exactly."""
    e = r.numerator.bit_length() - r.denominator.bit_length()
    # now 2^(e-1) < r < 2^(e+1); settle which side of 2^e it is on
    return e if r >= Fraction(2) ** e else e - 1


def quantize_multiplier(real, bits: int = 31) -> tuple[int, int]:
    """(A5) ``(m0, n)`` with ``real ~ m0 * 2^-n`` and ``2^(bits-1) <= m0 < 2^bits``.

    ``m0 = round(real * 2^n)`` (halves to even) for the ``n`` that puts ``real * 2^n`` in
    ``[2^(bits-1), 2^bits)``; if rounding reaches ``2^bits``, halve ``m0`` and decrement ``n``.
    Exact: ``real`` (a float) is turned into a Fraction without loss.
    """
    r = Fraction(real)
    if r < 0:
        raise ValueError("negative multiplier")
    if r == 0:
        return 0, 0
    n = bits - 1 - _floor_log2(r)
    m0 = round(r * Fraction(2) ** n)  # Fraction.__round__: halves to even
    if m0 == 2**bits:
        m0, n = m0 // 2, n - 1
    return int(m0), int(n)


# ---------------------------------------------------------------- (A6) (A7)

def rounding_shift_right_scalar(v: int, n: int) -> int:
    """(A6) ``round(v / 2^n)`` with halves to even, exact for every int; ``n <= 0`` multiplies."""
    v, n = int(v), int(n)
    if n <= 0:
        return v * 2 ** (-n)
    return round(Fraction(v, 2**n))


def rounding_shift_right(v, n) -> np.ndarray:
    v, n = np.broadcast_arrays(np.asarray(v, dtype=object), np.asarray(n, dtype=object))
    return _elementwise(rounding_shift_right_scalar, v, n)


def multiply_by_quantized_multiplier(acc, m0, n) -> np.ndarray:
    """``round(acc * m0 / 2^n)`` with exact Python ints (no int64 wrap-around can happen)."""
    acc, m0, n = np.broadcast_arrays(*(np.asarray(a, dtype=object) for a in (acc, m0, n)))
    return _elementwise(lambda a, m, k: rounding_shift_right_scalar(int(a) * int(m), k), acc, m0, n)


def requantize(acc, m0, n, dtype, zero_point=0) -> np.ndarray:
    """(A7) ``clamp((A6)(acc * m0, n) + z, qmin, qmax)``; returns an int64 array."""
    qmin, qmax = qrange(dtype)
    acc, m0, n, z = np.broadcast_arrays(*(np.asarray(a, dtype=object) for a in (acc, m0, n, zero_point)))
    out = _elementwise(
        lambda a, m, k, zp: _clamp(rounding_shift_right_scalar(int(a) * int(m), k) + int(zp), qmin, qmax),
        acc, m0, n, z,
    )
    return out.astype(np.int64)


def saturate(v, dtype) -> np.ndarray:
    qmin, qmax = qrange(dtype)
    v = np.asarray(v, dtype=object)
    return _elementwise(lambda a: _clamp(int(a), qmin, qmax), v).astype(np.int64)


def requantize_exact(acc, real_multiplier, dtype, zero_point=0) -> int:
    """``clamp(round(acc * M) + z)`` with M taken exactly (a Fraction): what (A7) approximates."""
    qmin, qmax = qrange(dtype)
    return _clamp(round(Fraction(int(acc)) * Fraction(real_multiplier)) + int(zero_point), qmin, qmax)
