"""The integer table kernel: integer codes in, integer codes out (docs/arithmetic.md, section 10).

Takes an integer tensor quantized as the table's input and a ``LutTable``; returns the output
codes in the table's output storage type. Integer-only: int64 indexing, products and one
rounding shift per element (qmath A6, half to even). The simulation, the quant-level IR and
the integer IR all call this one function, so they agree bit for bit.
"""
from __future__ import annotations

import torch

from ..argcheck import describe, expect_tensor
from ..qmath import rounding_shift_right, saturate
from .table import LutTable


def table_coordinate(q: torch.Tensor, t: LutTable) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``a = u`` (ASYM) or ``|u|`` with ``u = q - in_zero``; and where ``u < 0`` (to mirror)."""
    u = q.to(torch.int64) - t.in_zero
    if t.mode == "ASYM":
        return u, None
    return u.abs(), u < 0


def lut_values(a: torch.Tensor, t: LutTable) -> torch.Tensor:
    """The table at coordinates ``a``: output codes without the zero point (int64, unsaturated)."""
    e = t.entries.to(torch.int64)
    if t.kind == "direct":
        return e[(a - t.index_offset).clamp(0, e.numel() - 1)]
    starts = torch.tensor(t.starts, dtype=torch.int64)
    shifts = torch.tensor(t.shifts, dtype=torch.int64)
    nseg, width = len(t.shifts), t.intervals + 1
    seg = torch.searchsorted(starts[1:nseg].contiguous(), a.contiguous(), right=True)   # 0 .. nseg-1
    d = a - starts[seg]
    p = shifts[seg]
    j = d >> p
    frac = d - (j << p)
    inside = (a >= starts[0]) & (a < starts[nseg])
    idx = torch.where(inside, seg * width + j, torch.zeros_like(j))
    e0, e1 = e[idx], e[idx + 1]
    y = rounding_shift_right((e0 << p) + (e1 - e0) * frac, p + t.frac_bits)
    if bool((~inside).any()):
        below = a < starts[0]
        anchor = torch.where(below, e[0], e[-1])
        dist = torch.where(below, a - starts[0], a - starts[nseg])
        m0 = torch.where(below, torch.tensor(t.slope_lo[0]), torch.tensor(t.slope_hi[0]))
        sh = torch.where(below, torch.tensor(t.slope_lo[1]), torch.tensor(t.slope_hi[1]))
        v = anchor + rounding_shift_right(dist * m0, sh)
        y = torch.where(inside, y, rounding_shift_right(v, torch.tensor(t.frac_bits)))
    return y


def lut_apply(q: torch.Tensor, t: LutTable) -> torch.Tensor:
    """Output codes of the table for input codes ``q`` (saturated to the output type)."""
    expect_tensor(q, "lut_apply", "q")
    if not isinstance(t, LutTable):
        raise TypeError(f"lut_apply: t must be a LutTable (what build_table returns), got {describe(t)}")
    a, neg = table_coordinate(q, t)
    v = lut_values(a, t)
    if t.mode == "CSYM":
        v = torch.where(neg, -v, v)
    return saturate(v + t.out_zero, t.out_dtype)
