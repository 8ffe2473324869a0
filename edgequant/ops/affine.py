"""The affine integer form: one integer sum, one rounding. Its plan (convert) and its kernel (run).

Takes ``Operand``s (``ops.operands``) with real coefficients and an output grid; returns the
``affine`` kernel's integer parameters (``plan_affine``, ``rescale_plan``), and runs them
(``affine``, ``k_affine``). Most elementwise ops (add, sub, rsub, scalar add/sub/mul/div, neg,
abs, clamp/hardtanh/relu6, relu, leaky_relu, prelu), a standalone batch norm and every rescale
of ``rescale_call`` (cat, stack, where, maximum, minimum) lower to it::

    acc = C + sum_i (q_i - z_i) * (m_i if q_i - z_i >= 0 else m_i_neg)
    y   = clamp(rounding_shift_right(acc, n) + z_out, lo, hi)     saturated to the output type

Every real multiplier ``M_i = coef_i * s_i / s_out`` and the real constant ``c / s_out`` are
written as exact integers ``m_i = round(M_i * 2^n)``, ``C = round(c / s_out * 2^n)``
(``fixed_point``) with one common shift ``n`` (per output channel when a term is per channel):
the largest ``|M_i|`` gets the march's ``multiplier_bits`` bits, and ``n`` is lowered until
``sum_i B_i * |m_i| + |C| < 2^63`` for the input bounds ``B_i = max |q_i - z_i|``. A plan that
needs ``n < 0`` is refused at convert time (``ConvertError``). Multipliers may be negative
(sub, neg, negative scalars, slopes): half-to-even rounding is odd-symmetric, so the sign
costs nothing.

``requant_bits`` is the (A5.6) multiplier width of the kernels that requantize one bounded sum
(a product, a pooled or reduced sum, a conv/linear/matmul accumulator), refused below what the
output needs.
"""
from __future__ import annotations

import math

import torch

from ..dtype import get_dtype
from ..ir import Node, QParams
from ..qmath import F64_EXACT, channel_vector, multiplier_bits, quantize_multiplier, round_shift_f64, \
    rounding_shift_right
from .operands import Operand

INT64_LIMIT = 1 << 63


def fixed_point(real: float, shift: int) -> int:
    """``round(real * 2^shift)`` with halves to even, exactly (for any float64 ``real``).

    ``quantize_multiplier(|real|, 62)`` writes ``|real| = m * 2^-k`` exactly (a float64 has 53
    significant bits); the rounding is qmath's (A6) shift of ``m``. The result is a Python int
    (callers bound it before it meets int64).
    """
    real = float(real)
    if not math.isfinite(real):
        raise ValueError(f"fixed_point needs a finite number, got {real}")
    if real == 0.0:
        return 0
    m, k = quantize_multiplier(abs(real), 62)
    s = k - shift
    v = m * (1 << -s) if s <= 0 else int(rounding_shift_right(torch.tensor(m, dtype=torch.int64), s))
    return v if real > 0 else -v


def requant_bits(ctx, node: Node, bound: int, out_dtype: str, spare: int = 0) -> int:
    """(A5.6) The multiplier bits of a node that requantizes a sum ``|acc| <= bound`` into
    ``out_dtype``; refused below the output's bits plus ``spare``. A7.1's 1-LSB guarantee needs
    ``b >= bits`` (conv/linear/matmul); the product, pooling and reduction kernels keep ``spare=2``."""
    bits = multiplier_bits(bound, ctx.profile.multiplier_bits)
    if bits < get_dtype(out_dtype).bits + spare:
        raise ctx.error(node, f"its integer sum |acc| <= {bound} (2^{bound.bit_length()}) leaves {bits} multiplier "
                              f"bits for a {out_dtype} output (docs/arithmetic.md A5.6, A7.1; int64 would overflow "
                              "with more)")
    return bits


def requant_multiplier(ctx, node: Node, real: float, bits: int, refusal: str) -> tuple[int, int]:
    """``(m0, n)`` of the real multiplier ``real`` with ``bits`` bits (A5); a multiplier that
    would need a negative shift (``real >= 2^bits``) is refused with ``refusal``."""
    m0, n = quantize_multiplier(real, bits)
    if n < 0:
        raise ctx.error(node, refusal)
    return m0, n


# == the plan =========================================================================================
def _rel_axis(ctx, name: str, qp: QParams) -> int | None:
    """A per-channel axis as a negative index (so it broadcasts against a larger output)."""
    if qp.ch_axis is None or len(qp.scale) == 1:
        return None
    nd = len(ctx.value(name).shape)
    return (qp.ch_axis % nd) - nd


class Term:
    """One input of an affine sum: ``(q - zp) * (pos if q - zp >= 0 else neg)`` in output LSB."""

    def __init__(self, index: int, zp, bound: int, pos, neg=None, axis: int | None = None):
        self.index, self.zp, self.bound, self.pos, self.neg, self.axis = index, zp, bound, pos, neg, axis


def _at(v, c: int):
    """Channel ``c`` of a per-channel list, or the value itself."""
    return v[c] if isinstance(v, list) else v


def operand_term(ctx, node: Node, op: Operand, index: int, coef, out_qp: QParams, neg_coef=None,
                 axis: int | None = None) -> Term:
    """The term of ``coef * x`` (``neg_coef * x`` where ``x < 0``) for a quantized operand.

    Coefficients are numbers or per-channel lists (then along ``axis``, a negative index, as are
    the operand's own per-channel scales).
    """
    s_out = out_qp.scale[0]
    own = _rel_axis(ctx, op.name, op.qp)
    if own is not None and axis is not None and own != axis:
        raise ctx.error(node, f"per-channel parameters along axis {axis} on a tensor quantized along {own}")
    axis = own if own is not None else axis
    s_in = list(op.qp.scale) if own is not None else op.qp.scale[0]
    zp = list(op.qp.zero_point) if own is not None else op.qp.zero_point[0]

    def mult(c):
        if c is None:
            return None
        n = next((len(v) for v in (c, s_in) if isinstance(v, list)), None)
        if n is None:
            return c * s_in / s_out
        return [_at(c, i) * _at(s_in, i) / s_out for i in range(n)]

    if axis is None and any(isinstance(c, list) for c in (coef, neg_coef)):
        raise ctx.error(node, "per-channel coefficients need a channel axis")
    return Term(index, zp, op.bound, mult(coef), mult(neg_coef), axis)


def _channels(ctx, node: Node, terms: list[Term], const, axis: int | None) -> tuple[int | None, int | None]:
    """``(channel axis, number of channels)`` of a plan; None, None when it is per tensor."""
    axes = {t.axis for t in terms if t.axis is not None} | ({axis} if axis is not None else set())
    if len(axes) > 1:
        raise ctx.error(node, f"inputs are per channel along different axes {sorted(axes)}")
    ax = axes.pop() if axes else None
    lengths = {len(v) for t in terms for v in (t.pos, t.neg, t.zp) if isinstance(v, list)}
    if isinstance(const, list):
        lengths.add(len(const))
    if len(lengths) > 1:
        raise ctx.error(node, f"per-channel parameters of different lengths {sorted(lengths)}")
    nch = lengths.pop() if lengths else None
    if nch is not None and ax is None:
        raise ctx.error(node, "per-channel parameters without a channel axis")
    return ax, nch


def plan_affine(ctx, node: Node, terms: list[Term], out_qp: QParams, lo: int, hi: int,
                const=0.0, axis: int | None = None) -> dict:
    """The ``affine`` kernel's integer parameters (module docstring), refused on overflow.

    ``const`` is in output LSB (a number, or a list per channel along ``axis``); list-valued
    multipliers of the terms are per channel along their own (equal) axis.
    """
    ax, nch = _channels(ctx, node, terms, const, axis)
    at = _at
    bits = ctx.profile.multiplier_bits
    shifts, consts, m_pos, m_neg = [], [], [[] for _ in terms], [[] for _ in terms]
    worst = 0
    for c in range(nch or 1):
        mags = [abs(at(t.pos, c)) for t in terms] + [abs(at(t.neg, c)) for t in terms if t.neg is not None]
        mmax = max(mags, default=0.0)
        n = bits - math.frexp(mmax)[1] if mmax > 0 else 0
        while True:
            mp = [fixed_point(at(t.pos, c), n) for t in terms]
            mn = [fixed_point(at(t.neg, c), n) if t.neg is not None else None for t in terms]
            k = fixed_point(at(const, c), n)
            total = abs(k) + sum(t.bound * max(abs(p), abs(q) if q is not None else 0)
                                 for t, p, q in zip(terms, mp, mn))
            if total < INT64_LIMIT:
                break
            n -= 1
        if n < 0:
            raise ctx.error(node, f"it needs a multiplier of 2^{math.frexp(mmax)[1]} or a sum of 2^{total.bit_length()}: "
                                  "no int64 plan with a non-negative shift; the input and output scales are too far apart")
        worst = max(worst, total)
        shifts.append(n)
        consts.append(k)
        for i in range(len(terms)):
            m_pos[i].append(mp[i])
            m_neg[i].append(mn[i])
    one = (lambda v: v[0]) if nch is None else (lambda v: v)
    out_terms = []
    for i, t in enumerate(terms):
        out_terms.append({"in": t.index, "zp": t.zp, "m0": one(m_pos[i]),
                          "m0_neg": one(m_neg[i]) if t.neg is not None else None})
    return {"kernel": "affine", "terms": out_terms, "const": one(consts), "shift": one(shifts), "axis": ax,
            "out_zp": out_qp.zero_point[0], "lo": int(lo), "hi": int(hi), "out_dtype": out_qp.dtype,
            "bound": int(worst)}


def rescale_plan(ctx, node: Node, op: Operand, index: int, out_qp: QParams) -> dict | None:
    """An ``affine`` plan moving ``op`` onto ``out_qp``'s grid; None when it already is there."""
    same = op.qp.ch_axis is None and op.qp.dtype == out_qp.dtype and op.qp.scale[0] == out_qp.scale[0] \
        and op.qp.zero_point[0] == out_qp.zero_point[0]
    if same:
        return None
    dt = get_dtype(out_qp.dtype)
    return plan_affine(ctx, node, [operand_term(ctx, node, op, index, 1.0, out_qp)], out_qp, dt.qmin, dt.qmax)


# == the kernel =======================================================================================
def _vec(v, axis: int | None) -> torch.Tensor:
    """An int (or a per-channel list along the negative ``axis``) as a broadcastable int64 tensor
    (a rank of ``-axis`` broadcasts against any tensor that has that axis)."""
    return channel_vector(v, -axis if axis is not None else 0, axis)


def affine(args, a: dict) -> torch.Tensor:
    """The ``affine`` kernel (module docstring)."""
    axis = a["axis"]
    # The carrier: float64 when the plan's bound (every partial sum) is below 2^53, so every
    # value below is an exact integer and qmath.round_shift_f64 is (A6) bit for bit; else int64.
    f64 = a.get("bound") is not None and a["bound"] < F64_EXACT
    carrier = torch.float64 if f64 else torch.int64
    acc = None
    # every step after the first copy works in place on fresh tensors; a sum whose first operand
    # is smaller than the broadcast result (a batch-1 constant minus a batch-N tensor) is widened
    shape = torch.broadcast_shapes(*(args[t["in"]].shape for t in a["terms"])) if a["terms"] else None
    for t in a["terms"]:
        v = args[t["in"]].to(carrier, copy=True)
        if any(z != 0 for z in (t["zp"] if isinstance(t["zp"], list) else [t["zp"]])):
            v -= _vec(t["zp"], axis)
        m = _vec(t["m0"], axis).to(carrier)
        if t.get("m0_neg") is not None:
            m = torch.where(v >= 0, m, _vec(t["m0_neg"], axis).to(carrier))
        v *= m
        if acc is None:
            acc = v if v.shape == shape else v.expand(shape).clone()
        else:
            acc.add_(v)
    if acc is None:  # no tensor term: a constant
        acc = _vec(a["const"], axis).to(carrier)
    elif any(c != 0 for c in (a["const"] if isinstance(a["const"], list) else [a["const"]])):
        acc = acc + _vec(a["const"], axis).to(carrier)
    y = round_shift_f64(acc, _vec(a["shift"], axis)) if f64 else rounding_shift_right(acc, _vec(a["shift"], axis))
    if a["out_zp"]:
        y.add_(a["out_zp"])
    dt = get_dtype(a["out_dtype"])
    return y.clamp_(max(a["lo"], dt.qmin), min(a["hi"], dt.qmax)).to(dt.storage)


def k_affine(g, node: Node, args):
    """The int-level kernel of a node lowered to the affine form."""
    return affine(args, node.attrs)
