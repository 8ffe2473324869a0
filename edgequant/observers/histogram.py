"""A bounded histogram whose range widens by powers of two, with exact re-binning and merging.

Takes finite float tensors batch by batch (``add_``), or another histogram (``merge_``), and holds
a fixed number of bins (default 2048) of float64 counts plus the exact minimum and maximum seen:
``bins * 8 + 16`` bytes whatever the number of batches. The bins have width ``w = 2**log2_width``
and lie on the grid of multiples of ``w``: bin ``j`` covers ``[(k0 + j) w, (k0 + j + 1) w)`` with
``k0 = floor(min_val / w)``. ``log2_width`` is the smallest exponent at which ``[min_val, max_val]``
fits in the bins (and at least what it was), so the data always span more than half of them.
When new data do not fit, ``w`` doubles as often as needed: every new bin is the union of
``2**d`` old bins, so counts move whole and never split. The grid is therefore a function of
(the largest ``log2_width`` seen, ``min_val``, ``max_val``) only, which makes merging two
histograms produce the grid that observing both streams produces, with the same counts (each
value's bin is computed exactly, see ``add_``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..argcheck import expect_int

EMPTY_LOG2 = -(1 << 30)  # log2_width of a histogram that has seen nothing (neutral for "max")
MIN_LOG2 = -120          # keeps w and the window edges normal float32 numbers
_BLOCK = 1 << 18   # values binned per step by the torch path: 1 MiB float32 buffers
_SPLIT = 1 << 20   # the compiled kernel counts tensors of at least this many values on two threads

try:  # the compiled kernel (edgequant/observers/_binning.c); optional at install time
    from . import _binning
except ImportError:  # pragma: no cover - an install without a C compiler
    _binning = None


def native_threads(n: int) -> int:
    """Threads the compiled kernel uses for ``n`` values: two for large tensors when torch may use two."""
    return 2 if n >= _SPLIT and torch.get_num_threads() > 1 else 1


def fit_log2_width(lo: float, hi: float, bins: int, at_least: int) -> int:
    """Smallest ``e >= at_least`` such that ``bins`` bins of width ``2**e`` on the grid hold ``[lo, hi]``.

    ``e`` is also at least ``frexp(max|lo|, |hi|) - 23``, so ``|k0| <= 2**23``: the window edges
    ``k0 * w`` and ``(k0 + bins) * w`` are exact float32 numbers and indices never overflow.
    """
    e = max(at_least, MIN_LOG2, math.frexp(max(abs(lo), abs(hi)))[1] - 23)
    if hi > lo:
        e = max(e, math.floor(math.log2((hi - lo) / bins)))  # a lower bound; the loop below finishes
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) > bins - 1:
        e += 1
    return e


def regrid(counts: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Move ``counts`` from the window ``(log2_width, k0) = old`` to ``new`` (``new`` no finer).

    Old bin ``k0 + j`` (absolute index on its grid) becomes bin ``(k0 + j) >> d`` on a grid
    ``2**d`` times coarser. Bins that fall outside the new window are empty by construction
    (they lie outside the data); they are clamped to its edges rather than dropped.
    """
    (e0, k0), (e1, k1) = old, new
    if (e0, k0) == (e1, k1):
        return counts.clone()
    absolute = k0 + torch.arange(counts.numel(), dtype=torch.int64, device=counts.device)
    index = ((absolute >> min(e1 - e0, 62)) - k1).clamp_(0, counts.numel() - 1)
    return torch.zeros_like(counts).index_add_(0, index, counts)


class Histogram(nn.Module):
    """Counts of a stream of values on a power-of-two grid (see the module docstring)."""

    REDUCTIONS = {"min_val": "min", "max_val": "max", "log2_width": "max", "counts": "sum"}

    def __init__(self, bins: int = 2048):
        super().__init__()
        expect_int(bins, "Histogram", "bins")
        if bins < 16:
            raise ValueError(f"a histogram needs at least 16 bins, got {bins}")
        self.bins = int(bins)
        self.register_buffer("counts", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(-float("inf")))
        self.register_buffer("log2_width", torch.tensor(EMPTY_LOG2, dtype=torch.int64))

    # ---- the window -----------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not bool(self.min_val <= self.max_val)

    @property
    def width(self) -> float:
        return math.ldexp(1.0, int(self.log2_width))

    @property
    def window(self) -> tuple[int, int]:
        """``(log2_width, k0)``: bin ``j`` covers ``[(k0 + j) * w, (k0 + j + 1) * w)``."""
        e = int(self.log2_width)
        return e, math.floor(math.ldexp(float(self.min_val), -e))

    def centers(self) -> torch.Tensor:
        """Bin centers, float64."""
        e, k0 = self.window
        j = torch.arange(self.bins, dtype=torch.float64, device=self.counts.device)
        return (k0 + j + 0.5) * math.ldexp(1.0, e)

    def folded(self) -> torch.Tensor:
        """Counts of ``|x|`` on bins ``[i w, (i + 1) w)``, ``i = 0 .. L-1``, trailing empty bins cut.

        Exact: a negative bin ``[-(i+1) w, -i w)`` of the grid is the mirror of bin ``i``.
        """
        e, k0 = self.window
        a = k0 + torch.arange(self.bins, dtype=torch.int64, device=self.counts.device)
        i = torch.where(a >= 0, a, -a - 1)
        out = torch.zeros(int(i.max()) + 1, dtype=torch.float64, device=self.counts.device)
        out.index_add_(0, i, self.counts)
        nonzero = torch.nonzero(out).flatten()
        return out[: int(nonzero[-1]) + 1] if nonzero.numel() else out[:1]

    def align_(self, min_val: float, max_val: float, log2_width: int) -> None:
        """Widen to the grid that also holds ``[min_val, max_val]`` and is no finer than ``log2_width``.

        Histograms aligned with the same (reduced) arguments share one grid; their counts then add.
        """
        old_lo, old_hi = float(self.min_val), float(self.max_val)
        lo, hi = min(old_lo, float(min_val)), max(old_hi, float(max_val))
        if (lo, hi) == (old_lo, old_hi) and int(log2_width) <= int(self.log2_width):
            return  # nothing new: same range, same grid
        old = None if self.is_empty() else self.window
        e = fit_log2_width(lo, hi, self.bins, max(int(self.log2_width), int(log2_width)))
        self.min_val.fill_(lo)
        self.max_val.fill_(hi)
        self.log2_width.fill_(e)
        if old is not None and old != self.window:
            self.counts.copy_(regrid(self.counts, old, self.window))

    # ---- recording ------------------------------------------------------------------------------
    def add_(self, x: torch.Tensor, lo: float, hi: float) -> None:
        """Count the values of ``x`` (finite, float32/float64, with min ``lo`` and max ``hi``).

        A value's bin is ``floor(x / w) - k0``: ``x * 2**-e`` is exact (a power of two), its
        floor is exact, and subtracting the integer ``k0`` from that integer is exact (both are
        below ``2**24``), so every normal float lands in its true bin. (Subtracting ``k0`` before
        the floor would round: ``x * 2**-e - k0`` can need more bits than float32 has.) Unlike
        ``torch.histc``, which rounds each value's offset from the left edge and so can put a
        value one bin off near an edge, this binning is exact. Subnormal inputs may land one bin
        off when ``e > 0`` (their scaled value underflows).

        float32 tensors on the CPU go through the compiled kernel ``_binning.add_float32`` (one
        pass, no temporaries, the GIL released); anything else, or an install without the
        kernel, through ``_add_torch``. Both apply the rule above and give the same counts.
        """
        self.align_(lo, hi, EMPTY_LOG2)
        e, k0 = self.window
        flat = x.detach().reshape(-1)
        wide = max(abs(k0), abs(k0 + self.bins)) > (1 << 23) or e > 100 or e < -100
        if _binning is not None and not wide and flat.dtype == torch.float32 and flat.device.type == "cpu":
            flat = flat.contiguous()
            counts = torch.zeros(self.bins, dtype=torch.int64)
            threads = native_threads(flat.numel())
            _binning.add_float32(flat.data_ptr(), flat.numel(), math.ldexp(1.0, -e), k0, self.bins,
                                 counts.data_ptr(), threads)
        else:
            counts = self._add_torch(flat.double() if wide else flat, e, k0)
        self.counts += counts.to(self.counts)

    def _add_torch(self, flat: torch.Tensor, e: int, k0: int) -> torch.Tensor:
        """The binning rule of ``add_`` in torch ops: int64 counts of ``flat`` on the window ``(e, k0)``.

        The data go through in chunks of ``_BLOCK`` values into two reused buffers (scaled
        values, int16 bin indices) and ``torch.bincount``, so memory does not grow with the tensor.
        """
        scale = math.ldexp(1.0, -e)
        offset = torch.tensor(float(-k0), dtype=flat.dtype, device=flat.device)
        block = min(flat.numel(), _BLOCK)
        scaled = torch.empty(block, dtype=flat.dtype, device=flat.device)
        index = torch.empty(block, dtype=torch.int16 if self.bins <= 32767 else torch.int64, device=flat.device)
        counts = torch.zeros(self.bins, dtype=torch.int64, device=flat.device)
        for chunk in flat.split(_BLOCK):
            n = chunk.numel()
            y = torch.mul(chunk, scale, out=scaled[:n])   # exact: a power of two
            torch.floor(y, out=y)                          # exact
            y.add_(offset)                                 # integers below 2**24: exact
            i = index[:n]
            i.copy_(y)
            counts += torch.bincount(i, minlength=self.bins)
        return counts

    def merge_(self, other: Histogram) -> None:
        """Add ``other``'s counts (re-binned exactly onto the common grid)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        if other.is_empty():
            return
        self.align_(float(other.min_val), float(other.max_val), int(other.log2_width))
        self.counts += regrid(other.counts, other.window, self.window)

    def reset(self) -> None:
        self.counts.zero_()
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(-float("inf"))
        self.log2_width.fill_(EMPTY_LOG2)
