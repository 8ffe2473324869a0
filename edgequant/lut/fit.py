"""Node values of a segmented table: the continuous piecewise-linear curve nearest to ``f``.

Takes the table's interpolation nodes (integer table coordinates, increasing) and the function
in output codes; returns one float64 value per node. Sampling ``f`` at the nodes and joining
the samples (the interpolant) puts the whole interpolation error on one side of the curve and
leaves it at full size where ``f`` bends inside an interval (a knot of a piecewise-linear curve
between two nodes). Instead the values minimise the largest error over the codes the table
covers (docs/arithmetic.md, T3.2): Lawson's iteratively reweighted least squares on the hat
basis of the nodes, twenty tridiagonal solves on at most 64 sample codes per interval. The
interpolant is kept whenever the fit is not better, so the fit never loses. Deterministic and
takes milliseconds.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

SAMPLES_PER_INTERVAL = 64   # sample codes per interval (every code when the interval is shorter)
ITERATIONS = 20             # Lawson reweighting steps
WEIGHT_FLOOR = 1e-3         # share of the mean weight every sample keeps
RIDGE = 1e-9                # pull towards the interpolant, so the system is never singular


def _samples(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample codes, the interval each lies in, and its position ``t`` in ``[0, 1)`` there;
    the last node closes the range."""
    lo, width = nodes[:-1], np.diff(nodes)
    stride = np.maximum(width // SAMPLES_PER_INTERVAL, 1)
    count = -(-width // stride)                                    # ceil: samples per interval
    iv = np.repeat(np.arange(lo.size), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    a = lo[iv] + k * stride[iv]
    t = (a - lo[iv]) / width[iv]
    return (np.append(a, nodes[-1]), np.append(iv, lo.size - 1), np.append(t, 1.0))


def _solve(iv, t, y, w, n, prior):
    """Weighted least squares on the hat basis: tridiagonal normal equations, Thomas algorithm."""
    a, b = 1 - t, t
    diag = np.bincount(iv, w * a * a, n) + np.bincount(iv + 1, w * b * b, n)
    off = np.bincount(iv, w * a * b, n - 1)[:n - 1]
    rhs = np.bincount(iv, w * a * y, n) + np.bincount(iv + 1, w * b * y, n)
    ridge = RIDGE * float(diag.mean()) + 1e-300      # nodes no sample reaches stay at the prior
    diag, rhs = (diag + ridge).tolist(), (rhs + ridge * prior).tolist()
    off = off.tolist()
    for i in range(1, n):                             # forward elimination
        m = off[i - 1] / diag[i - 1]
        diag[i] -= m * off[i - 1]
        rhs[i] -= m * rhs[i - 1]
    x = [0.0] * n
    x[-1] = rhs[-1] / diag[-1]
    for i in range(n - 2, -1, -1):                    # back substitution
        x[i] = (rhs[i] - off[i] * x[i + 1]) / diag[i]
    return np.asarray(x)


def fit_nodes(codes: Callable[[torch.Tensor], torch.Tensor], nodes: torch.Tensor) -> torch.Tensor:
    """Values at ``nodes`` (int64, increasing) of the piecewise-linear curve nearest to ``codes``
    (the function in output codes) in the largest error over the sampled codes."""
    a, iv, t = _samples(nodes.numpy())
    at_nodes_t = codes(nodes)
    y, at_nodes = codes(torch.from_numpy(a)).numpy(), at_nodes_t.numpy()

    def error(v):
        return np.abs(v[iv] * (1 - t) + v[iv + 1] * t - y)

    best, best_err = at_nodes, float(error(at_nodes).max())
    n = nodes.numel()
    if n < 2 or best_err == 0 or not np.isfinite(y).all():
        return at_nodes_t
    w = np.ones_like(y)
    for _ in range(ITERATIONS):
        v = _solve(iv, t, y, w, n, at_nodes)
        if not np.isfinite(v).all():
            break
        e = error(v)
        worst = float(e.max())
        if worst < best_err:
            best, best_err = v, worst
        w = w * e
        w = np.maximum(w / max(float(w.mean()), 1e-300), WEIGHT_FLOOR)
    return torch.from_numpy(np.ascontiguousarray(best, dtype=np.float64))
