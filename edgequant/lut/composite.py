"""Integer softmax, layer norm and tensor division: tables plus integer reductions.

Takes integer codes and the op's integer parameters (``*_params`` builds them once from the
qparams and, for layer norm, the float gamma/beta); returns output codes. Every function here is
integer-only; the simulation, the quant-level IR and the integer IR all call it, so they agree
bit for bit. docs/arithmetic.md, section 11, derives the arithmetic:

- softmax: ``d = u - max(u)``, ``e = EXP(d)`` (a table, ``exp(s d) * 2^16``), ``S = sum e``,
  ``S = m * 2^k`` with ``m`` in ``[2^14, 2^15]``, ``r = RECIP(m) ~ 2^30 / m``,
  ``y = z + A6(e * r * m0, n + 30 + k)`` with ``1 / s_out ~ m0 * 2^-n``.
- layer norm: ``c = N u - sum u``, ``D = N sum u^2 - (sum u)^2 + round(N^2 eps / s^2)``,
  ``D = m * 4^k`` with ``m`` in ``[2^14, 2^16]``, ``R = RSQRT(m) ~ 2^23 / sqrt(m)``,
  ``xh = A6(c * R, 23 + k - 16)`` (x-hat with 16 fractional bits),
  ``y = z + A6(xh * g0 + b0, gn)`` per channel (``gamma / s_out ~ g0 * 2^-(gn - 16)``).
- division: ``|v| = m * 2^k`` with ``m`` in ``[2^14, 2^15]``, ``r = RECIP(m)``,
  ``y = z + sign(v) * A6(u * r * m0, n + 30 + k)`` with ``s_u / (s_v s_out) ~ m0 * 2^-n``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..dtype import get_dtype
from ..qmath import quantize_multiplier, rounding_shift_right, saturate
from .kernel import lut_values
from .table import LutTable, build_table

EXP_BITS = 16       # EXP(d) = round(exp(s d) * 2^16)
RECIP_BITS = 30     # RECIP(m) ~ 2^30 / m for m in [2^14, 2^15]
RSQRT_BITS = 23     # RSQRT(m) ~ 2^23 / sqrt(m) for m in [2^14, 2^16]
XHAT_BITS = 16      # fractional bits of layer norm's x-hat
MULT_BITS = 30      # multiplier bits where a product of two 16-bit values is multiplied again
EXP_CUTOFF = 12.0   # exp(-12) * 2^16 < 1/2: inputs this far below the row max contribute 0
GAMMA_SHIFT_MAX = 45


def _bitlen(v: torch.Tensor) -> torch.Tensor:
    """Bit length of non-negative int64 values below 2^53 (exact through float64)."""
    return torch.frexp(v.to(torch.float64))[1].to(torch.int64)


def _normalise(v: torch.Tensor, bits: int, even: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``v = m * 2^k`` with ``m`` of ``bits`` bits (``bits`` or ``bits + 1`` when ``even``, which
    keeps ``k`` even); ``m`` is rounded by A6 (so it may reach the next power of two). ``k`` may
    be negative (small ``v``: an exact left shift)."""
    bl = _bitlen(v)
    k = bl - bits
    if even:
        k = torch.div(k, 2, rounding_mode="floor") * 2
    return rounding_shift_right(v, k), k


# -- the fixed tables: functions of a normalised mantissa --------------------------------------------
@lru_cache(maxsize=None)
def recip_table(segments: int = 8, intervals: int = 64) -> LutTable:
    """``RECIP(m) ~ 2^30 / m`` for ``m`` in ``[2^14, 2^15]``."""
    return build_table(torch.reciprocal, "qint32", 2.0 ** -14, 0, "qint32", 2.0 ** (14 - RECIP_BITS), 0,
                       input_range=(1.0, 2.0), strategy="evenly", segments=segments, intervals=intervals)


@lru_cache(maxsize=None)
def rsqrt_table(segments: int = 8, intervals: int = 64) -> LutTable:
    """``RSQRT(m) ~ 2^23 / sqrt(m)`` for ``m`` in ``[2^14, 2^16]``."""
    return build_table(torch.rsqrt, "qint32", 2.0 ** -14, 0, "qint32", 2.0 ** (7 - RSQRT_BITS), 0,
                       input_range=(1.0, 4.0), strategy="curvature", segments=segments, intervals=intervals)


def exp_table(in_scale: float, in_span: int, segments: int = 8, intervals: int = 64) -> LutTable:
    """``EXP(d) = round(exp(in_scale * d) * 2^16)`` for ``d`` in ``[-in_span, 0]`` (0 below)."""
    d_min = -min(in_span, max(segments, math.ceil(EXP_CUTOFF / in_scale)))
    return build_table(torch.exp, "qint32", in_scale, 0, "qint32", 2.0 ** -EXP_BITS, 0,
                       input_range=(d_min * in_scale, 0.0), strategy="curvature", gradients=(0.0, 0.0),
                       segments=segments, intervals=intervals)


def _multiplier(real: float, bits: int, what: str) -> tuple[int, int]:
    if not math.isfinite(real) or real <= 0:
        raise ValueError(f"{what}: the multiplier {real} is not a positive finite number")
    return quantize_multiplier(real, bits)


# -- softmax ---------------------------------------------------------------------------------------
def softmax_params(in_dtype, in_scale: float, in_zero: int, out_dtype, out_scale: float, out_zero: int,
                   dim: int, segments: int = 8, intervals: int = 64) -> tuple[dict, list[LutTable]]:
    idt = get_dtype(in_dtype)
    m0, n = _multiplier(1.0 / out_scale, MULT_BITS, "softmax output scale")
    params = {"dim": int(dim), "in_zero": int(in_zero), "out_dtype": str(out_dtype), "out_zero": int(out_zero),
              "m0": m0, "shift": n}
    return params, [exp_table(float(in_scale), idt.qmax - idt.qmin, segments, intervals),
                    recip_table(segments, intervals)]


def softmax_int(q: torch.Tensor, p: dict, tables: list[LutTable]) -> torch.Tensor:
    exp_t, rec_t = tables
    u = q.to(torch.int64) - p["in_zero"]
    d = u - u.amax(dim=p["dim"], keepdim=True)
    e = lut_values(d, exp_t)                                  # <= 2^16
    s = e.sum(dim=p["dim"], keepdim=True)                     # >= 2^16 (the row max gives 2^16)
    m, k = _normalise(s, 15)                                  # m in [2^14, 2^15]
    r = lut_values(m, rec_t)                                  # ~ 2^30 / m
    y = rounding_shift_right(e * r * p["m0"], p["shift"] + RECIP_BITS + k)
    return saturate(y + p["out_zero"], p["out_dtype"])


# -- layer norm ------------------------------------------------------------------------------------
def layer_norm_params(in_dtype, in_scale: float, in_zero: int, out_dtype, out_scale: float, out_zero: int,
                      n: int, eps: float, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      segments: int = 8, intervals: int = 64):
    """Integer parameters of layer norm over the last dims (``n`` elements): JSON params, the
    RSQRT table and the per-channel tensors ``g0`` (signed multiplier), ``gn`` (shift), ``b0``."""
    idt = get_dtype(in_dtype)
    umax = max(idt.qmax - in_zero, in_zero - idt.qmin)
    if n * n * umax * umax >= 1 << 62:
        raise ValueError(f"layer_norm over {n} elements of {idt.name} could overflow the int64 variance")
    eps_c = min(1 << 61, int(round(n * n * float(eps) / (float(in_scale) ** 2))))
    w = torch.ones(n, dtype=torch.float64) if weight is None else weight.detach().to(torch.float64).flatten()
    b = torch.zeros(n, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).flatten()
    g0, gn, b0 = [], [], []
    for gj, bj in zip(w.tolist(), b.tolist()):
        real = abs(gj) / out_scale * 2.0 ** -XHAT_BITS
        if real == 0 or not math.isfinite(real):
            m, sh = 0, GAMMA_SHIFT_MAX
        else:
            m, sh = quantize_multiplier(real, 31)
            if sh > GAMMA_SHIFT_MAX:
                m, sh = int(rounding_shift_right(torch.tensor(m), sh - GAMMA_SHIFT_MAX)), GAMMA_SHIFT_MAX
            if sh < 0:
                raise ValueError(f"layer_norm: gamma {gj} is too large for the output scale {out_scale}")
        g0.append(m if gj >= 0 else -m)
        gn.append(sh)
        bq = max(-(1 << 16), min(1 << 16, bj / out_scale))
        b0.append(int(torch.round(torch.tensor(bq * 2.0 ** sh, dtype=torch.float64))))
    params = {"n": int(n), "in_zero": int(in_zero), "eps": eps_c, "out_dtype": str(out_dtype),
              "out_zero": int(out_zero)}
    consts = {"g0": torch.tensor(g0, dtype=torch.int64), "gn": torch.tensor(gn, dtype=torch.int64),
              "b0": torch.tensor(b0, dtype=torch.int64)}
    return params, [rsqrt_table(segments, intervals)], consts


def layer_norm_int(q: torch.Tensor, p: dict, tables: list[LutTable], consts: dict) -> torch.Tensor:
    (rs_t,) = tables
    shape = q.shape
    n = p["n"]
    u = q.to(torch.int64).reshape(-1, n) - p["in_zero"]
    su = u.sum(-1, keepdim=True)
    c = n * u - su                                            # n * (u - mean)
    dvar = n * (u * u).sum(-1, keepdim=True) - su * su + p["eps"]   # n^2 (var + eps / s^2)
    dvar = dvar.clamp(min=1)
    m, k = _normalise(dvar, 15, even=True)                    # m in [2^14, 2^16], k even
    r = lut_values(m, rs_t)                                   # ~ 2^23 / sqrt(m)
    xh = rounding_shift_right(c * r, RSQRT_BITS + k // 2 - XHAT_BITS)
    y = rounding_shift_right(xh * consts["g0"] + consts["b0"], consts["gn"])
    return saturate(y + p["out_zero"], p["out_dtype"]).reshape(shape)


# -- division by a tensor --------------------------------------------------------------------------
def div_params(a_scale: float, a_zero: int, b_scale: float, b_zero: int, out_dtype, out_scale: float,
               out_zero: int, segments: int = 8, intervals: int = 64) -> tuple[dict, list[LutTable]]:
    m0, n = _multiplier(float(a_scale) / (float(b_scale) * float(out_scale)), MULT_BITS, "division scales")
    if n + RECIP_BITS - 14 < 0:
        raise ValueError("division: the scales' ratio is too large for the integer kernel")
    params = {"a_zero": int(a_zero), "b_zero": int(b_zero), "out_dtype": str(out_dtype), "out_zero": int(out_zero),
              "m0": m0, "shift": n}
    return params, [recip_table(segments, intervals)]


def div_int(qa: torch.Tensor, qb: torch.Tensor, p: dict, tables: list[LutTable]) -> torch.Tensor:
    (rec_t,) = tables
    ua = qa.to(torch.int64) - p["a_zero"]
    ub = qb.to(torch.int64) - p["b_zero"]
    ua, ub = torch.broadcast_tensors(ua, ub)
    mag = ub.abs()
    m, k = _normalise(mag.clamp(min=1), 15)                   # m in [2^14, 2^15]
    r = lut_values(m, rec_t)                                  # ~ 2^30 / m
    y = rounding_shift_right(ua * r * p["m0"], p["shift"] + RECIP_BITS + k)
    y = torch.where(ub < 0, -y, y)
    odt = get_dtype(p["out_dtype"])
    inf = torch.where(ua > 0, odt.qmax - p["out_zero"], torch.where(ua < 0, odt.qmin - p["out_zero"], 0))
    y = torch.where(ub == 0, inf, y)                          # x / 0 saturates (0 / 0 gives 0)
    return saturate(y + p["out_zero"], odt)
