"""Lookup tables: the record every table op carries, and how it is built.

Takes an elementwise function and the quantization of its input and output; returns a
``LutTable``: integer entries plus a few integer attributes, enough for the integer kernel
(``lut.kernel``) to compute the function on integer codes. Two kinds (docs/arithmetic.md,
section 10, derives them):

- ``direct`` (8-bit inputs): one entry per input code, the exactly rounded output code.
- ``segmented`` (16-bit inputs): ``segments`` segments (the march's ``lut_segments``), each
  ``intervals`` intervals (``lut_segment_entries``) of ``2^shift`` input codes, so the index is a
  shift and the interpolation fraction a mask; ``intervals + 1`` entries per segment in units of
  ``2^-frac_bits`` output codes, linear interpolation rounded half to even (qmath A6), linear
  extrapolation below the first and above the last segment.

``symmetric_mode`` "YSYM"/"CSYM" tables store only the half ``x >= 0`` and the kernel mirrors.
Building is deterministic (the function is evaluated at the dequantized codes, float64 for
edgequant's own functions, float32 for user callables) and takes milliseconds. A user callable
is checked first (``lut.validate``): a function that is not elementwise, not finite where a
segmented table interpolates or NaN where a direct table is used raises ``ValueError``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..argcheck import expect_callable, expect_choice, expect_int, expect_real
from ..dtype import get_dtype
from ..qmath import quantize_multiplier
from . import validate
from .fit import fit_nodes

MODES = ("ASYM", "YSYM", "CSYM")
STRATEGIES = ("evenly", "curvature")
FRAC_BITS = 8           # fractional bits of segmented-table entries (output codes * 2^8)
SLOPE_BITS = 31         # significant bits of an extrapolation slope (qmath A5)
CURVATURE_FLOOR = 0.1   # share of the "curvature" density spread uniformly over the range


@dataclass(frozen=True)
class LutTable:
    """One table: integer ``entries`` and the integer attributes its kernel needs.

    ``a`` below is the kernel's table coordinate: ``u = q - in_zero`` (ASYM) or ``|u|``
    (YSYM/CSYM). Real-valued fields (``in_scale``, ``out_scale``, ``in_range``) are kept for
    reports only; the kernel never reads them.
    """

    kind: str                      # "direct" | "segmented"
    mode: str                      # "ASYM" | "YSYM" | "CSYM"
    in_dtype: str
    in_zero: int
    out_dtype: str
    out_zero: int
    entries: torch.Tensor          # int32 [n]
    index_offset: int = 0          # direct: entry index = a - index_offset
    starts: tuple[int, ...] = ()   # segmented: segment k covers a in [starts[k], starts[k+1])
    shifts: tuple[int, ...] = ()   # segmented: log2 of the input codes per interval
    intervals: int = 0             # segmented: intervals per segment (entries: intervals + 1)
    frac_bits: int = 0             # segmented: entries are output codes * 2^frac_bits
    slope_lo: tuple[int, int] = (0, 0)  # extrapolation below starts[0]: (signed m0, shift), 2^-frac_bits units
    slope_hi: tuple[int, int] = (0, 0)  # extrapolation at and above starts[-1]
    in_scale: float = 1.0
    out_scale: float = 1.0
    in_range: tuple[float, float] = (0.0, 0.0)   # the real input range the table was built for
    calibrated_range: tuple[float, float] | None = None   # what the input's observer saw (reports)
    meta: dict = field(default_factory=dict, compare=False)

    # -- IR form: JSON attributes + one integer constant ---------------------------------------
    def attrs(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "in_dtype": self.in_dtype, "in_zero": self.in_zero,
                "out_dtype": self.out_dtype, "out_zero": self.out_zero, "index_offset": self.index_offset,
                "starts": list(self.starts), "shifts": list(self.shifts), "intervals": self.intervals,
                "frac_bits": self.frac_bits, "slope_lo": list(self.slope_lo), "slope_hi": list(self.slope_hi),
                "in_scale": self.in_scale, "out_scale": self.out_scale, "in_range": list(self.in_range),
                "calibrated_range": None if self.calibrated_range is None else list(self.calibrated_range)}

    @staticmethod
    def from_attrs(a: dict, entries: torch.Tensor) -> "LutTable":
        return LutTable(a["kind"], a["mode"], a["in_dtype"], int(a["in_zero"]), a["out_dtype"], int(a["out_zero"]),
                        entries, int(a["index_offset"]), tuple(a["starts"]), tuple(a["shifts"]), int(a["intervals"]),
                        int(a["frac_bits"]), tuple(a["slope_lo"]), tuple(a["slope_hi"]), float(a["in_scale"]),
                        float(a["out_scale"]), tuple(a["in_range"]),
                        None if a.get("calibrated_range") is None else tuple(a["calibrated_range"]))

    def segment_bounds(self) -> list[tuple[int, int]]:
        """``[(first a, last a)]`` of each segment (segmented) or of the whole table (direct)."""
        if self.kind == "direct":
            return [(self.index_offset, self.index_offset + self.entries.numel() - 1)]
        return [(self.starts[k], self.starts[k + 1] - 1) for k in range(len(self.shifts))]


# -- evaluating the function -------------------------------------------------------------------------
class _Func:
    """``f`` evaluated at table coordinates, in output codes (float64, without the zero point)."""

    def __init__(self, fn: Callable, in_scale: float, out_scale: float, user: bool):
        self.fn, self.s_in, self.s_out, self.user = fn, in_scale, out_scale, user

    def inputs(self, a: torch.Tensor) -> torch.Tensor:
        # (A2) dequantize in float32 (z already removed): the values the simulation feeds f
        return a.to(torch.float32) * torch.tensor(self.s_in, dtype=torch.float32)

    def raw(self, a: torch.Tensor) -> torch.Tensor:
        x = self.inputs(a)
        with torch.no_grad():
            y = self.fn(x) if self.user else self.fn(x.to(torch.float64))
        return torch.as_tensor(y).to(torch.float64).reshape(a.shape)

    def real(self, a: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(self.raw(a), nan=0.0, posinf=1e300, neginf=-1e300)

    def codes(self, a: torch.Tensor) -> torch.Tensor:
        return self.real(a) / self.s_out


def _round_clamp(v: torch.Tensor, bound: int) -> torch.Tensor:
    """Round half to even (``torch.round``, the rule of qmath) and clamp to ``[-bound, bound]``."""
    return torch.round(v.clamp(-bound, bound)).to(torch.int64)


def _signed_multiplier(real: float) -> tuple[int, int]:
    """``real ~ m0 * 2^-shift`` with a signed ``m0`` (qmath A5 on ``|real|``)."""
    if real == 0 or not math.isfinite(real):
        return 0, 0
    m0, n = quantize_multiplier(abs(real), SLOPE_BITS)
    return (m0 if real > 0 else -m0), n


# -- the public builder ------------------------------------------------------------------------------
def build_table(fn: Callable, in_dtype, in_scale: float, in_zero: int, out_dtype, out_scale: float,
                out_zero: int, *, symmetric_mode: str = "ASYM", strategy: str = "evenly",
                input_range: Sequence[float] | None = None, dividing_points: Sequence[float] | None = None,
                gradients: Sequence[float] | None = None, inverse_func: Callable | None = None,
                user_func: bool = False, segments: int = 8, intervals: int = 64, direct_entries: int = 256,
                frac_bits: int = FRAC_BITS, name: str = "SegmentLUT") -> LutTable:
    """Build the table of ``fn`` for an input quantized as ``(in_dtype, in_scale, in_zero)`` and an
    output quantized as ``(out_dtype, out_scale, out_zero)``.

    ``input_range`` (real) is where the segmented table interpolates; outside it the kernel
    extrapolates linearly with ``gradients`` (real slopes below and above; default: the slopes
    of the first and last interval). ``dividing_points`` are the upper real bounds of the
    segments (up to ``segments`` of them; the widest are split to make up the rest).
    ``inverse_func`` (monotonically decreasing ``fn``) sets the default range to the inputs whose
    outputs the output type can represent. ``user_func`` evaluates ``fn`` in float32 (as the model
    did) instead of float64, and checks it first (``lut.validate``, messages start with ``name``):
    elementwise; finite on the range a segmented table interpolates; not NaN on ``input_range``
    (default: every code) of a direct table, where an infinite value saturates; ``inverse_func``
    decreasing. 8-bit inputs get a direct table (range, strategy and gradients do not apply).
    """
    expect_callable(fn, "build_table", "fn")
    expect_callable(inverse_func, "build_table", "inverse_func", none=True)
    for arg, v in (("in_scale", in_scale), ("out_scale", out_scale)):
        expect_real(v, "build_table", arg, positive=True)
    for arg, v, lo in (("in_zero", in_zero, None), ("out_zero", out_zero, None), ("segments", segments, 1),
                       ("intervals", intervals, 1), ("direct_entries", direct_entries, 1), ("frac_bits", frac_bits, 0)):
        expect_int(v, "build_table", arg, lo=lo)
    expect_choice(symmetric_mode, "build_table", "symmetric_mode", MODES)
    expect_choice(strategy, "build_table", "strategy", STRATEGIES)
    if symmetric_mode not in MODES:
        raise ValueError(f"symmetric_mode must be one of {MODES}, got {symmetric_mode!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"auto_divide_strategy must be one of {STRATEGIES}, got {strategy!r}")
    idt, odt = get_dtype(in_dtype), get_dtype(out_dtype)
    in_scale, out_scale, in_zero, out_zero = float(in_scale), float(out_scale), int(in_zero), int(out_zero)
    f = _Func(fn, in_scale, out_scale, user_func)
    u_lo, u_hi = idt.qmin - in_zero, idt.qmax - in_zero          # every input code, zero point removed
    common = dict(mode=symmetric_mode, in_dtype=idt.name, in_zero=in_zero, out_dtype=odt.name,
                  out_zero=out_zero, in_scale=in_scale, out_scale=out_scale)
    if idt.bits <= 8:
        if (1 << idt.bits) > direct_entries:
            raise ValueError(f"a direct table has {direct_entries} entries; {idt.name} needs {1 << idt.bits}")
        a_lo, a_hi = _mirror_range(u_lo, u_hi, symmetric_mode)
        a = torch.arange(a_lo, a_hi + 1, dtype=torch.int64)
        if user_func:
            _check_user_direct(f, a, u_lo, u_hi, input_range, symmetric_mode, name)
            if inverse_func is not None:  # unused by a direct table, still refused if it cannot be right
                validate.check_decreasing(inverse_func, out_scale * (odt.qmin - out_zero),
                                          out_scale * (odt.qmax - out_zero), name)
        entries = _round_clamp(f.codes(a), 1 << odt.bits)
        rng = (in_scale * u_lo, in_scale * u_hi)
        return LutTable("direct", entries=entries.to(torch.int32), index_offset=a_lo, in_range=rng, **common)

    # the real input range the table interpolates over -> codes u, then table coordinates a
    lo, hi = _input_range(input_range, dividing_points, inverse_func, in_scale, u_lo, u_hi, odt, out_scale,
                          out_zero, name)
    c_lo = max(u_lo, min(u_hi, math.floor(lo / in_scale)))
    c_hi = max(u_lo, min(u_hi, math.ceil(hi / in_scale)))
    a_lo, a_hi = _mirror_range(c_lo, c_hi, symmetric_mode)
    if a_hi - a_lo < segments:  # a degenerate range: widen it to one code per segment
        a_hi = a_lo + segments
    if user_func:  # every code the table interpolates over
        a = torch.arange(a_lo, a_hi + 1, dtype=torch.int64)
        validate.check_elementwise(fn, f.inputs(a), name)
        validate.check_finite(f.inputs(a), f.raw(a), name, allow_inf=False, where="its segmented table interpolates")
    if dividing_points is not None:
        pts = [math.floor(float(p) / in_scale) for p in dividing_points]
        if symmetric_mode != "ASYM":
            pts = [abs(p) for p in pts]
        bounds = _manual_bounds(a_lo, pts, segments)
    elif strategy == "curvature":
        bounds = _curvature_bounds(f, a_lo, a_hi, segments)
    else:
        bounds = [a_lo + (k * (a_hi - a_lo)) // segments for k in range(segments + 1)]
    shifts, grids = [], []
    for k in range(segments):
        b0, b1 = bounds[k], bounds[k + 1]
        p = max(0, math.ceil(math.log2(max(1, b1 - b0) / intervals))) if b1 > b0 else 0
        while intervals << p < b1 - b0:  # guard the float log2
            p += 1
        shifts.append(p)
        grids.append(torch.arange(b0, b1, 1 << p, dtype=torch.int64) if b1 > b0 else torch.tensor([b0]))
    nodes = torch.cat(grids + [torch.tensor([bounds[-1]])])
    values = fit_nodes(f.codes, nodes)                       # (T3.2)
    bound = min((1 << odt.bits) << frac_bits, (1 << 31) - 1)
    entries, ends, first = [], [], 0
    for k in range(segments):
        n_in = grids[k].numel()
        seg, chords = _segment_entries(values[first:first + n_in + 1], bounds[k], bounds[k + 1], shifts[k],
                                       intervals)
        first += n_in
        entries.append(_round_clamp(seg * (1 << frac_bits), bound))
        ends.append(chords)
    entries.append(_round_clamp(values[-1:] * (1 << frac_bits), bound))
    # extrapolation slopes, output codes per input code, in 2^-frac_bits units
    if gradients is not None:
        g_lo, g_hi = (float(g) * in_scale / out_scale for g in gradients)
    else:
        g_lo, g_hi = ends[0][0], ends[-1][1]
    clamp = float(1 << (30 - frac_bits))
    slope_lo = _signed_multiplier(max(-clamp, min(clamp, g_lo)) * (1 << frac_bits))
    slope_hi = _signed_multiplier(max(-clamp, min(clamp, g_hi)) * (1 << frac_bits))
    return LutTable("segmented", entries=torch.cat(entries).to(torch.int32), starts=tuple(bounds),
                    shifts=tuple(shifts), intervals=intervals, frac_bits=frac_bits, slope_lo=slope_lo,
                    slope_hi=slope_hi, in_range=(float(lo), float(hi)), **common)


def _mirror_range(u_lo: int, u_hi: int, mode: str) -> tuple[int, int]:
    """The table coordinates ``a`` that codes ``u`` in ``[u_lo, u_hi]`` reach."""
    if mode == "ASYM":
        return u_lo, u_hi
    if u_lo <= 0 <= u_hi:
        return 0, max(-u_lo, u_hi)
    return (u_lo, u_hi) if u_lo > 0 else (-u_hi, -u_lo)


def _check_user_direct(f: _Func, a: torch.Tensor, u_lo: int, u_hi: int, input_range, mode: str, name: str) -> None:
    """A direct table's user function: elementwise, and not NaN on ``input_range`` (every code without one)."""
    validate.check_elementwise(f.fn, f.inputs(a), name)
    if input_range is not None:
        c_lo = max(u_lo, min(u_hi, math.floor(float(input_range[0]) / f.s_in)))
        c_hi = max(u_lo, min(u_hi, math.ceil(float(input_range[1]) / f.s_in)))
        c_lo, c_hi = _mirror_range(c_lo, c_hi, mode)
        a = a[(a >= c_lo) & (a <= c_hi)]
    if a.numel():
        validate.check_finite(f.inputs(a), f.raw(a), name, allow_inf=True, where="its direct table covers")


def _input_range(input_range, dividing_points, inverse_func, s_in, u_lo, u_hi, odt, s_out, z_out, name="SegmentLUT"):
    full = (s_in * u_lo, s_in * u_hi)
    if input_range is not None:
        lo, hi = float(input_range[0]), float(input_range[1])
    elif inverse_func is not None:
        y_lo, y_hi = s_out * (odt.qmin - z_out), s_out * (odt.qmax - z_out)
        validate.check_decreasing(inverse_func, y_lo, y_hi, name)
        with torch.no_grad():
            ends = inverse_func(torch.tensor([y_lo, y_hi], dtype=torch.float64))
        x_hi, x_lo = (float(v) for v in torch.as_tensor(ends, dtype=torch.float64).flatten())
        # decreasing: the largest output comes from the lowest input; an output the function never
        # reaches (inverse not finite) leaves that end of the input range open
        lo = min(max(x_lo, full[0]), full[1]) if math.isfinite(x_lo) else full[0]
        hi = min(max(x_hi, full[0]), full[1]) if math.isfinite(x_hi) else full[1]
        if hi <= lo:
            lo, hi = full
    else:
        lo, hi = full
    if dividing_points is not None:
        hi = float(dividing_points[-1]) if input_range is None else hi
    return lo, hi


def _segment_entries(v: torch.Tensor, b0: int, b1: int, p: int, intervals: int):
    """Entries of one segment over ``[b0, b1)`` with ``2^p`` codes per interval, float output codes.

    ``v`` holds the node values at the grid points below ``b1`` and, last, at ``b1``. The entry
    after the last grid point continues the chord from that point to ``b1``, so the table is
    continuous across segments and ``f`` is never needed outside the table's range; entries past
    it are never read. Returns the entries and the slopes (codes per code) of the first and last
    chord.
    """
    step = 1 << p
    n_in = v.numel() - 1
    last, end = v[n_in - 1], v[n_in]
    span = b1 - (b0 + (n_in - 1) * step)
    slope_last = float((end - last) / span) if span > 0 else 0.0
    nxt = last + slope_last * step
    seg = torch.cat([v[:n_in], nxt.reshape(1).expand(intervals + 1 - n_in)])
    first_span = min(step, b1 - b0)
    slope_first = float((v[1] - v[0]) / first_span) if n_in > 1 else slope_last
    return seg, (slope_first, slope_last)


def _manual_bounds(a_lo: int, uppers: list[int], segments: int) -> list[int]:
    pts = sorted({p for p in uppers if p > a_lo})
    if not pts:
        raise ValueError("SegmentLUT: the dividing points all lie below the input range")
    if len(pts) > segments:
        raise ValueError(f"SegmentLUT: at most {segments} dividing points (the march's lut_segments), got {len(pts)}")
    bounds = [a_lo] + pts
    while len(bounds) < segments + 1:  # split the widest segment in two
        k = max(range(len(bounds) - 1), key=lambda i: bounds[i + 1] - bounds[i])
        mid = (bounds[k] + bounds[k + 1]) // 2
        if mid == bounds[k]:
            bounds.append(bounds[-1] + 1)
        else:
            bounds.insert(k + 1, mid)
    return bounds


def _curvature_bounds(f: _Func, a_lo: int, a_hi: int, segments: int) -> list[int]:
    """Segment bounds that give each segment an equal share of ``sqrt|f''|`` (the density that
    equalises the interpolation error ``h^2 |f''| / 8``), mixed with a uniform share."""
    # second differences at the scale of the finest intervals the table can have: finer grids
    # only add noise (user functions are often staircases at the scale of single codes)
    n = min(a_hi - a_lo, 2 * segments * 64)
    grid = torch.unique(torch.round(torch.linspace(a_lo, a_hi, n + 1, dtype=torch.float64)).to(torch.int64))
    x = grid.to(torch.float64)
    y = f.codes(grid)
    h = x[1:] - x[:-1]
    slope = (y[1:] - y[:-1]) / h
    d2 = torch.zeros_like(x)
    d2[1:-1] = 2 * (slope[1:] - slope[:-1]) / (h[1:] + h[:-1])
    rho = d2.abs().sqrt()
    rho_iv = 0.5 * (rho[1:] + rho[:-1]) * h                 # mass of each grid interval
    total = float(rho_iv.sum())
    uniform = h / float(h.sum())
    mass = uniform if total <= 0 or not math.isfinite(total) else \
        (1 - CURVATURE_FLOOR) * rho_iv / total + CURVATURE_FLOOR * uniform
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0)])
    cum = cum / cum[-1]
    bounds = [a_lo]
    for k in range(1, segments):
        t = k / segments
        i = int(torch.searchsorted(cum, torch.tensor([t], dtype=torch.float64)).item())
        i = min(max(i, 1), len(x) - 1)
        c0, c1 = float(cum[i - 1]), float(cum[i])
        pos = float(x[i - 1]) + (float(x[i]) - float(x[i - 1])) * ((t - c0) / (c1 - c0) if c1 > c0 else 0.0)
        bounds.append(max(bounds[-1] + 1, int(round(pos))))
    bounds.append(a_hi)
    for k in range(segments - 1, 0, -1):  # keep the bounds strictly increasing below a_hi
        bounds[k] = min(bounds[k], bounds[k + 1] - 1)
    return bounds
