"""Plain-Python twin of the table kernel, for tests: Python ints only, one element at a time.

Written from docs/arithmetic.md section 10 independently of ``kernel.py`` (no torch, no qmath),
so that the tests can check the vectorised kernel against it bit for bit.
"""
from __future__ import annotations

from ..dtype import get_dtype


def shift_half_even(v: int, n: int) -> int:
    """``round(v / 2^n)`` with ties to even; ``n <= 0`` multiplies by ``2^-n``."""
    if n <= 0:
        return v << -n
    q, r = divmod(v, 1 << n)          # floor division: 0 <= r < 2^n
    half = 1 << (n - 1)
    if r > half or (r == half and q % 2 == 1):
        q += 1
    return q


def lut_reference(q: int, attrs: dict, entries: list[int]) -> int:
    """The output code of one input code ``q`` (``attrs`` as ``LutTable.attrs()`` writes them)."""
    u = q - attrs["in_zero"]
    a = u if attrs["mode"] == "ASYM" else abs(u)
    if attrs["kind"] == "direct":
        v = entries[a - attrs["index_offset"]]
    else:
        starts, shifts, f = attrs["starts"], attrs["shifts"], attrs["frac_bits"]
        nseg, width = len(shifts), attrs["intervals"] + 1
        if a < starts[0]:
            m0, sh = attrs["slope_lo"]
            v = shift_half_even(entries[0] + shift_half_even((a - starts[0]) * m0, sh), f)
        elif a >= starts[nseg]:
            m0, sh = attrs["slope_hi"]
            v = shift_half_even(entries[-1] + shift_half_even((a - starts[nseg]) * m0, sh), f)
        else:
            k = max(i for i in range(nseg) if starts[i] <= a)
            d = a - starts[k]
            p = shifts[k]
            j, frac = d >> p, d & ((1 << p) - 1)
            e0, e1 = entries[k * width + j], entries[k * width + j + 1]
            v = shift_half_even(e0 * (1 << p) + (e1 - e0) * frac, p + f)
    if attrs["mode"] == "CSYM" and u < 0:
        v = -v
    dt = get_dtype(attrs["out_dtype"])
    return min(max(v + attrs["out_zero"], dt.qmin), dt.qmax)
