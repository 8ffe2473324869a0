"""Choosing a clipping range from a histogram: percentile (seed 003's rule), MSE, KL (entropy).

Each search takes a non-empty ``Histogram`` plus the target dtype and symmetry and returns
``(lo, hi)`` as Python floats inside the observed ``[min, max]``; the caller turns them into
qparams with ``scale_from_range``. They read only the histogram (never data). The MSE and KL
searches run in NumPy on the histogram's 2048 numbers: at these sizes a NumPy call costs a
fraction of a torch call, runs on one thread (so it never waits for a core that another process
holds) and the searches stay well under a millisecond. Every candidate's qparams still come
from ``qmath.scale_from_range``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..dtype import QuantDType
from ..qmath import scale_from_range
from .histogram import Histogram
from .shrink import walk_inward

# ---- percentile -----------------------------------------------------------------------------------


def percentile_clip(hist: Histogram, percentile: float) -> tuple[float, float]:
    """Keep ``percentile`` % of the mass: seed 003's walk inward, cutting ``100 - percentile`` per end.

    Counts become percentages (float64) and the seed's index rule picks a low and a high bin.
    Each maps to its outer edge (the low bin's lower edge, the high bin's upper edge), clamped
    into ``[min_val, max_val]``: the seed's bins are centered on its min and max, these are not,
    and the outer edge keeps ``percentile=100`` exactly the observed range.
    """
    percent = hist.counts * 100.0 / hist.counts.sum()
    low, high = walk_inward(percent, 100.0 - percentile)
    e, k0 = hist.window
    lo, hi = float(hist.min_val), float(hist.max_val)
    return min(max(math.ldexp(k0 + low, e), lo), hi), max(min(math.ldexp(k0 + high + 1, e), hi), lo)


# ---- MSE ----------------------------------------------------------------------------------------


def candidate_qparams(lo: np.ndarray, hi: np.ndarray, dtype: QuantDType, symmetric: bool):
    """``scale_from_range`` of each candidate range, as NumPy (float32 scales, float64 zero points)."""
    s, z = scale_from_range(torch.from_numpy(lo), torch.from_numpy(hi), dtype, symmetric)
    return s.numpy(), z.numpy().astype(np.float64)


class BinErrors:
    """``errors(lo, hi)``: for each candidate range ``(lo[i], hi[i])``, ``sum_j n_j (Q_i(c_j) - c_j)^2``.

    ``Q_i`` is fake quantization with the qparams ``scale_from_range(lo[i], hi[i])`` on the
    target dtype's integer grid (rounding half to even, clamping to ``[qmin, qmax]``), in float32
    as ``qmath.quantize`` computes it; each bin's mass sits at its center ``c_j``. This is the
    objective's definition, evaluated bin by bin (``LevelErrors`` is the fast equal form).
    """

    def __init__(self, centers: np.ndarray, counts: np.ndarray, dtype: QuantDType, symmetric: bool):
        used = counts > 0
        self.c, self.n = centers[used].astype(np.float32), counts[used]
        self.dtype, self.symmetric = dtype, symmetric

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        s, z = candidate_qparams(lo, hi, self.dtype, self.symmetric)
        s, z = s[:, None], z.astype(np.float32)[:, None]
        q = np.clip(np.rint(self.c / s) + z, self.dtype.qmin, self.dtype.qmax)
        return np.square((q - z) * s - self.c).astype(np.float64) @ self.n


class LevelErrors:
    """``BinErrors`` for bins centered at ``first + j * width``, in O(levels) per candidate.

    In units of bins, level ``q`` has the value ``g_q = (q - z) * step - origin`` and takes the
    bins above ``beta_q = g_q - step / 2``, its lower edge. Summing ``n_j (j - g)^2`` level by
    level and then by parts over the edges gives

        sum_j n_j (j - g_top)^2  +  2 * step * sum_q (P1[b_q] - beta_q * P0[b_q]),

    with ``b_q = clamp(floor(beta_q) + 1, 0, bins)`` and ``P0``, ``P1`` the prefix sums of ``n_j``
    and ``n_j j``: every bin first pays the error of the top level, and each edge below it
    refunds the difference for the bins under it. Equal to ``BinErrors`` except for a center
    lying exactly on a rounding edge (counted to the lower level here, to the even one there)
    and float rounding. The sums depend on the histogram only and are made once.
    """

    def __init__(self, first: float, width: float, counts: np.ndarray, dtype: QuantDType, symmetric: bool):
        n = counts.astype(np.float64)
        nj = n * np.arange(n.size)
        self.P0, self.P1 = np.concatenate([[0.0], np.cumsum(n)]), np.concatenate([[0.0], np.cumsum(nj)])
        self.moments = (self.P0[-1], self.P1[-1], float(nj @ np.arange(n.size)))
        self.edges = np.arange(dtype.qmin + 1, dtype.qmax + 1) - 0.5
        self.origin, self.width, self.bins = first / width, width, n.size  # bin j at origin + j (in bins)
        self.dtype, self.symmetric = dtype, symmetric

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        s, z = candidate_qparams(lo, hi, self.dtype, self.symmetric)
        step = s.astype(np.float64) / self.width                  # the quantization step in bins
        top = (self.dtype.qmax - z) * step - self.origin           # the top level, as a bin position
        beta = (top - self.dtype.qmax * step)[:, None] + step[:, None] * self.edges  # [N, levels - 1]
        b = np.clip(np.floor(beta) + 1, 0, self.bins).astype(np.intp)
        refund = (self.P1[b] - beta * self.P0[b]).sum(1)
        m0, m1, m2 = self.moments
        return (m2 - 2 * top * m1 + top * top * m0 + 2 * step * refund) * self.width**2


def _candidate_ranges(hist: Histogram, dtype: QuantDType, symmetric: bool):
    """``(ndim, ranges)``: ``ranges(f)`` maps fractions ``f`` in [0, 1] (``[N, ndim]``) to (lo, hi).

    A range is always the observed one (widened to contain 0, as ``scale_from_range`` does)
    shrunk toward 0: both ends by one fraction when symmetric, each end by its own when affine.
    """
    lo, hi = min(float(hist.min_val), 0.0), max(float(hist.max_val), 0.0)
    if symmetric and dtype.signed:
        t = max(-lo, hi)
        return 1, lambda f: (-t * f[:, 0], t * f[:, 0])
    if symmetric or lo == 0.0 or hi == 0.0:  # one free end: unsigned symmetric, or one-signed data
        return 1, lambda f: (lo * f[:, 0], hi * f[:, 0])
    return 2, lambda f: (lo * f[:, 0], hi * f[:, 1])


def grid_search(cost, ndim: int, points: int, stages: int) -> np.ndarray:
    """Minimise ``cost(f)`` over ``f`` in ``[0, 1]^ndim``: a grid of ``points`` per axis, then
    ``stages - 1`` grids of the same size spanning one step either side of the best so far."""
    lo, hi = np.zeros(ndim), np.ones(ndim)
    for _ in range(stages):
        axes = np.meshgrid(*[np.linspace(a, b, points) for a, b in zip(lo, hi)], indexing="ij")
        grid = np.stack([a.ravel() for a in axes], 1)
        best = grid[np.argmin(cost(grid))]
        step = (hi - lo) / (points - 1)
        lo, hi = np.maximum(best - step, 0.0), np.minimum(best + step, 1.0)
    return best


def mse_clip(hist: Histogram, dtype: QuantDType, symmetric: bool) -> tuple[float, float]:
    """The range whose quantization grid minimises the squared error over the histogram (``BinErrors``).

    Candidates shrink the observed range toward 0 (``_candidate_ranges``). One free end: 64
    fractions, then 64 more spanning one step either side of the best (final step 1/1985 of
    the range). Two free ends: 8 x 8 fractions, refined four times the same way (final step
    1/1050). Costs O(levels) per candidate when the dtype has fewer levels than the histogram
    has bins in use (int8), else O(bins) over the non-empty bins (int16).
    """
    counts = hist.counts.cpu().numpy()
    used = np.flatnonzero(counts)
    counts = counts[used[0]: used[-1] + 1]
    e, k0 = hist.window
    first = math.ldexp(k0 + int(used[0]) + 0.5, e)
    if dtype.qmax - dtype.qmin + 1 <= counts.size:
        errors = LevelErrors(first, hist.width, counts, dtype, symmetric)
    else:
        errors = BinErrors(first + hist.width * np.arange(counts.size), counts, dtype, symmetric)
    ndim, ranges = _candidate_ranges(hist, dtype, symmetric)
    cost = lambda f: errors(*ranges(f))  # noqa: E731
    best = grid_search(cost, 1, points=64, stages=2) if ndim == 1 else grid_search(cost, 2, points=8, stages=5)
    lo, hi = ranges(best[None, :])
    return float(lo[0]), float(hi[0])


# ---- KL (entropy calibration) --------------------------------------------------------------------


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x * log(y)``, 0 where ``x == 0`` (``-inf`` where ``x > 0`` and ``y == 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


def kl_divergences(counts: np.ndarray, levels: int, ends: np.ndarray) -> np.ndarray:
    """TensorRT-style KL(P || Q) for each candidate clip ``ends[k]`` (a number of bins, ``>= levels``).

    For a clip at bin ``i``: P is ``counts[:i]`` with every count beyond added to its last bin.
    Q merges ``counts[:i]`` (without that tail) into ``levels`` chunks of ``m = i // levels``
    bins, the last chunk also taking the remainder, and spreads each chunk's total evenly over
    the bins where P is non-zero. Both are normalised; ``sum p log(p / q)`` over ``p > 0`` is inf
    where some ``p > 0`` gets ``q = 0``.

    With ``T`` the total, ``t`` the tail, ``S_c`` the chunk totals and ``nz_c`` their non-zero
    bins in P: ``KL = (sum p log p - sum_c P_c log(S_c / nz_c)) / T - log T + log sum(S)``, where
    ``P_c = S_c`` except ``P_last = S_last + t``. All chunks but the last depend on ``m`` alone,
    of which there are about ``bins / levels`` values, so every candidate costs O(1).
    """
    n = np.asarray(counts, dtype=np.float64)
    C = np.concatenate([[0.0], np.cumsum(n)])                   # sum of n[:k]
    Z = np.concatenate([[0.0], np.cumsum(n > 0)])               # non-zero bins among n[:k]
    NL = np.concatenate([[0.0], np.cumsum(_xlogy(n, n))])       # sum of n log n over n[:k]
    total = C[-1]
    i = np.asarray(ends, dtype=np.intp)
    m = i // levels
    ms = np.arange(m.min(), m.max() + 1)
    starts = np.arange(levels) * ms[:, None]                    # chunk starts, per value of m
    S = C[starts[:, 1:]] - C[starts[:, :-1]]                    # the first levels - 1 chunks
    nz = np.maximum(Z[starts[:, 1:]] - Z[starts[:, :-1]], 1.0)
    head = _xlogy(S, S / nz).sum(1)[m - ms[0]]
    tail = total - C[i]
    start = (levels - 1) * m
    S_last = C[i] - C[start]
    nz_last = Z[i] - Z[start] + ((n[i - 1] == 0) & (tail > 0))  # the tail makes P's last bin non-zero
    plogq = head + _xlogy(S_last + tail, S_last / np.maximum(nz_last, 1.0))
    last = n[i - 1] + tail                                      # P's last bin
    plogp = NL[i - 1] + _xlogy(last, last)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (plogp - plogq) / total - np.log(total) + np.log(C[i])
    return np.where(np.isnan(kl), np.inf, kl)  # inf - inf: no q for some p > 0


def kl_levels(hist: Histogram, dtype: QuantDType, symmetric: bool) -> int:
    """How many quantization steps cover ``[0, threshold]``: 128 for symmetric int8 (TensorRT)."""
    if symmetric and dtype.signed:
        return dtype.qmax + 1
    steps = dtype.qmax - dtype.qmin + 1
    one_signed = float(hist.min_val) >= 0.0 or float(hist.max_val) <= 0.0
    return steps if symmetric or one_signed else steps // 2


def kl_clip(hist: Histogram, dtype: QuantDType, symmetric: bool) -> tuple[float, float]:
    """Entropy calibration on the histogram of ``|x|``: the threshold ``T`` of least KL divergence.

    Every bin edge from ``levels`` bins up to the last non-empty bin is a candidate (all of
    them are evaluated). The range is ``[-T, T]`` intersected with the observed one. When the
    dtype has so many levels that fewer than two bins per level remain (int16 and wider), the
    divergence no longer measures anything, and the MSE search is used instead.
    """
    counts = hist.folded().cpu().numpy()
    levels = kl_levels(hist, dtype, symmetric)
    if 2 * levels > counts.size:
        return mse_clip(hist, dtype, symmetric)
    ends = np.arange(levels, counts.size + 1)
    t = int(ends[np.argmin(kl_divergences(counts, levels, ends))]) * hist.width
    lo, hi = float(hist.min_val), float(hist.max_val)
    return max(lo, -t), min(hi, t)
