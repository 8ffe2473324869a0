"""Choosing a clipping range from a histogram: percentile (seed 003's rule), MSE, KL (entropy).

Each search takes a non-empty ``Histogram`` plus the target dtype and symmetry and returns
``(lo, hi)`` as Python floats inside the observed ``[min, max]``; the caller turns them into
qparams with ``scale_from_range``. They read only the histogram (never data) and are vectorised:
a few small tensor operations on at most ``bins`` (x a few hundred candidates) numbers.
"""
from __future__ import annotations

import math

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

# torch runs element-wise ops on fewer elements than this on the calling thread alone; the
# searches keep their matrices below it, so they never wait for a busy second core.
_GRAIN = 32768


def squared_error(centers: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  dtype: QuantDType, symmetric: bool) -> torch.Tensor:
    """For each candidate range ``(lo[i], hi[i])``: ``sum_j counts[j] * (Q_i(c_j) - c_j)^2``.

    ``Q_i`` is fake quantization with the qparams ``scale_from_range(lo[i], hi[i])`` on the
    target dtype's integer grid (rounding half to even, clamping to ``[qmin, qmax]``), in float32
    as ``qmath.quantize`` computes it; each bin's mass sits at its center ``c_j``. This is the
    objective's definition, evaluated bin by bin (``by_level`` is the fast equal form).
    """
    s, z = scale_from_range(lo, hi, dtype, symmetric)
    c, n = centers.to(torch.float32)[None, :], counts.to(torch.float32)
    rows = max(1, _GRAIN // c.numel())
    out = []
    for k in range(0, s.numel(), rows):
        sk, zk = s[k:k + rows, None], z[k:k + rows, None].to(torch.float32)
        q = (torch.round(c / sk) + zk).clamp_(dtype.qmin, dtype.qmax)
        out.append(((q - zk) * sk - c).square_() @ n)
    return torch.cat(out).double()


def squared_error_by_level(first: float, width: float, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                           dtype: QuantDType, symmetric: bool) -> torch.Tensor:
    """``squared_error`` for bins centered at ``first + j * width``, in O(levels) per candidate.

    In units of bins, level ``q`` has the value ``g_q = (q - z) * step - origin`` and takes the
    bins from ``ceil(beta_q)`` up, ``beta_q = g_q - step / 2`` being its lower edge. Summing
    ``n_j (j - g)^2`` level by level and then by parts over the edges gives

        sum_j n_j (j - g_top)^2  +  2 * step * sum_q (P1[b_q] - beta_q * P0[b_q]),

    with ``b_q = clamp(ceil(beta_q), 0, bins)`` and ``P0``, ``P1`` the prefix sums of ``n_j`` and
    ``n_j j``: every bin first pays the error of the top level, and each edge below it refunds
    the difference for the bins under it. Equal to ``squared_error`` except for centers lying
    exactly on a rounding edge (and float rounding).
    """
    s, z = scale_from_range(lo, hi, dtype, symmetric)
    step, z = s.double()[:, None] / width, z.double()[:, None]    # the quantization step in bins
    origin = first / width                                         # bin j is centered at origin + j (in bins)
    n = counts.to(torch.float64)
    nj = n * torch.arange(n.numel(), dtype=torch.float64)
    zero = n.new_zeros(1)
    P0, P1 = torch.cat([zero, torch.cumsum(n, 0)]), torch.cat([zero, torch.cumsum(nj, 0)])
    M0, M1, M2 = P0[-1], P1[-1], (nj * torch.arange(n.numel(), dtype=torch.float64)).sum()
    edges = torch.arange(dtype.qmin + 1, dtype.qmax + 1, dtype=torch.float64) - 0.5
    beta = (edges - z) * step - origin                             # [N, levels - 1]
    b = torch.ceil(beta).clamp_(0, n.numel()).long()
    top = (dtype.qmax - z[:, 0]) * step[:, 0] - origin
    refund = (P1[b] - beta * P0[b]).sum(1)
    return ((M2 - 2 * top * M1 + top * top * M0 + 2 * step[:, 0] * refund) * width**2).clamp_(min=0.0)


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


def grid_search(cost, ndim: int, points: int, stages: int) -> torch.Tensor:
    """Minimise ``cost(f)`` over ``f`` in ``[0, 1]^ndim``: a grid of ``points`` per axis, then
    ``stages - 1`` grids of the same size spanning one step either side of the best so far."""
    lo, hi = torch.zeros(ndim, dtype=torch.float64), torch.ones(ndim, dtype=torch.float64)
    for _ in range(stages):
        axes = [torch.linspace(float(a), float(b), points, dtype=torch.float64) for a, b in zip(lo, hi)]
        grid = torch.cartesian_prod(*axes).reshape(-1, ndim)
        best = grid[int(torch.argmin(cost(grid)))]
        step = (hi - lo) / (points - 1)
        lo, hi = (best - step).clamp(min=0.0), (best + step).clamp(max=1.0)
    return best


def mse_clip(hist: Histogram, dtype: QuantDType, symmetric: bool) -> tuple[float, float]:
    """The range whose quantization grid minimises ``squared_error`` over the histogram.

    Candidates shrink the observed range toward 0 (``_candidate_ranges``). One free end: 64
    fractions, then 64 more spanning one step either side of the best (final step 1/1985 of
    the range). Two free ends: 11 x 11 fractions, refined three times the same way (final step
    1/1250). Costs O(levels) per candidate when the dtype has fewer levels than the histogram
    has bins in use (int8), else O(bins) over the non-empty bins (int16).
    """
    used = torch.nonzero(hist.counts).flatten()
    a, b = int(used[0]), int(used[-1]) + 1
    counts, centers = hist.counts[a:b], hist.centers()[a:b]
    if dtype.qmax - dtype.qmin + 1 <= counts.numel():
        first = float(centers[0])
        error = lambda lo, hi: squared_error_by_level(first, hist.width, counts, lo, hi, dtype, symmetric)  # noqa: E731
    else:
        nonzero = counts > 0
        error = lambda lo, hi: squared_error(centers[nonzero], counts[nonzero], lo, hi, dtype, symmetric)  # noqa: E731
    ndim, ranges = _candidate_ranges(hist, dtype, symmetric)
    cost = lambda f: error(*ranges(f))  # noqa: E731
    best = grid_search(cost, 1, points=64, stages=2) if ndim == 1 else grid_search(cost, 2, points=11, stages=4)
    lo, hi = ranges(best[None, :])
    return float(lo), float(hi)


# ---- KL (entropy calibration) --------------------------------------------------------------------


def kl_divergences(counts: torch.Tensor, levels: int, ends: torch.Tensor) -> torch.Tensor:
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
    n = counts.to(torch.float64)
    zero = n.new_zeros(1)
    C = torch.cat([zero, torch.cumsum(n, 0)])                            # sum of n[:k]
    Z = torch.cat([zero, torch.cumsum((n > 0).double(), 0)])             # non-zero bins among n[:k]
    NL = torch.cat([zero, torch.cumsum(torch.special.xlogy(n, n), 0)])   # sum of n log n over n[:k]
    total = C[-1]
    i = ends.to(torch.int64)
    m = i // levels
    ms = torch.arange(int(m.min()), int(m.max()) + 1)
    starts = torch.arange(levels) * ms[:, None]                          # chunk starts, per value of m
    S = C[starts[:, 1:]] - C[starts[:, :-1]]                             # the first levels - 1 chunks
    nz = Z[starts[:, 1:]] - Z[starts[:, :-1]]
    head = torch.special.xlogy(S, S / nz.clamp(min=1)).sum(1)[m - ms[0]]
    tail = total - C[i]
    start = (levels - 1) * m
    S_last = C[i] - C[start]
    nz_last = Z[i] - Z[start] + ((n[i - 1] == 0) & (tail > 0)).double()  # the tail makes P's last bin non-zero
    plogq = head + torch.special.xlogy(S_last + tail, S_last / nz_last.clamp(min=1))
    last = n[i - 1] + tail                                               # P's last bin
    plogp = NL[i - 1] + torch.special.xlogy(last, last)
    kl = (plogp - plogq) / total - torch.log(total) + torch.log(C[i])
    return torch.where(torch.isnan(kl), float("inf"), kl)  # inf - inf: no q for some p > 0


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
    counts = hist.folded()
    levels = kl_levels(hist, dtype, symmetric)
    if 2 * levels > counts.numel():
        return mse_clip(hist, dtype, symmetric)
    ends = torch.arange(levels, counts.numel() + 1)
    t = int(ends[int(torch.argmin(kl_divergences(counts, levels, ends)))]) * hist.width
    lo, hi = float(hist.min_val), float(hist.max_val)
    return max(lo, -t), min(hi, t)
