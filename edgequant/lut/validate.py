"""Checks of a user's table function (a SegmentLUT's) before its table is built from it.

Takes the callable, the inputs the table evaluates it on (float32, increasing) and the name to
put in messages; returns nothing, or raises ``ValueError`` naming the SegmentLUT, the inputs
concerned and what to do, when:

- ``simulated_func`` is not elementwise: on a few of those inputs it must give, for each one, the
  same value whether called on a vector, a matrix or that input alone (``softmax``,
  ``x - x.mean()``, sorting or a cumulative sum mix elements: no table can hold them);
- ``simulated_func`` is not finite on the range a segmented table interpolates (a pole or a
  domain edge there would make the fitted curve wrong nearly everywhere), or is NaN on the range
  a direct table covers (a NaN has no output code);
- ``inverse_func`` is not decreasing on the outputs it is asked about;
- either function returns something other than a floating-point torch tensor.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

PROBE_POINTS = 64      # inputs the elementwise probe calls the function on (one call each)
INVERSE_POINTS = 257   # outputs inverse_func is sampled at
RANGE_POINTS = 4097    # inputs a declared input_range is sampled at (SegmentLUT construction)


def _call(fn: Callable, x: torch.Tensor, name: str, what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            y = fn(x)
    except Exception as e:  # the user's function failed on plain inputs: say which and where
        raise ValueError(f"{name}: {what} raised {type(e).__name__} on a float32 tensor of shape {list(x.shape)} "
                         f"with values in [{float(x.min()):.6g}, {float(x.max()):.6g}]: {e}") from e
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        got = f"a {y.dtype} tensor" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name}: {what} must return a floating-point torch tensor of its input's shape (as torch "
                         f"functions do), but a float32 tensor of shape {list(x.shape)} gave {got}")
    return y.to(torch.float64)


def check_elementwise(fn: Callable, x: torch.Tensor, name: str) -> None:
    """Call ``fn`` on up to ``PROBE_POINTS`` of the inputs ``x`` as a vector, as a matrix of their
    reverse and one by one; raise unless every way gives each input the same value and shape."""
    n = x.numel()
    idx = torch.unique(torch.linspace(0, n - 1, min(PROBE_POINTS, n)).round().to(torch.int64))
    xs = x.reshape(-1)[idx]
    whole = _call(fn, xs, name, "simulated_func")
    if whole.shape != xs.shape:
        raise ValueError(f"{name}: simulated_func must be elementwise (a tensor in, a tensor of the same shape "
                         f"out), but a tensor of shape {list(xs.shape)} gave shape {list(whole.shape)}")
    singles = [_call(fn, xs[i:i + 1], name, "simulated_func") for i in range(xs.numel())]
    if any(y.numel() != 1 for y in singles):
        raise ValueError(f"{name}: simulated_func must be elementwise (a tensor in, a tensor of the same shape out), "
                         f"but a tensor of one input gave {next(y.numel() for y in singles if y.numel() != 1)} values")
    ways = {"alone": torch.cat([y.reshape(1) for y in singles])}
    if xs.numel() % 2 == 0 and xs.numel() > 2:
        grid = _call(fn, xs.flip(0).reshape(2, -1), name, "simulated_func")
        if grid.shape == (2, xs.numel() // 2):
            ways["in a reversed 2-row matrix"] = grid.reshape(-1).flip(0)
        else:
            ways["in a reversed 2-row matrix"] = torch.full_like(whole, math.nan)  # shape mismatch: reported below
    finite = whole[torch.isfinite(whole)]
    tol = 1e-5 * (float(finite.abs().max()) if finite.numel() else 1.0) + 1e-12
    for how, other in ways.items():
        same = torch.isclose(whole, other, rtol=1e-5, atol=tol, equal_nan=True)
        if not bool(same.all()):
            i = int((~same).nonzero()[0])
            raise ValueError(
                f"{name}: simulated_func is not elementwise: at x = {float(xs[i]):.6g} it gives {float(whole[i]):.6g} "
                f"within a vector of {xs.numel()} inputs but {float(other[i]):.6g} {how}. A table holds a function "
                "of each element alone; softmax, normalisations and other functions that mix elements cannot be "
                "a SegmentLUT (write them as separate ops)")


def check_finite(x: torch.Tensor, y: torch.Tensor, name: str, *, allow_inf: bool, where: str) -> None:
    """Raise if ``y = f(x)`` (``x`` increasing) has NaN, or Inf unless ``allow_inf``, naming the
    first run of such inputs and the span of all of them."""
    bad = torch.isnan(y) if allow_inf else ~torch.isfinite(y)
    if not bool(bad.any()):
        return
    at = bad.nonzero().reshape(-1)
    first = int(at[0])
    last = first
    while last + 1 < bad.numel() and bool(bad[last + 1]):
        last += 1
    kinds = " and ".join(k for k, m in (("NaN", torch.isnan(y) & bad), ("infinite", torch.isinf(y) & bad))
                         if bool(m.any()))
    span = f"x = {float(x[first]):.6g}" if first == last else \
        f"the sub-range [{float(x[first]):.6g}, {float(x[last]):.6g}]"
    also = "" if at.numel() == last - first + 1 else \
        f" (and elsewhere: {at.numel()} inputs in all, between {float(x[at[0]]):.6g} and {float(x[at[-1]]):.6g})"
    raise ValueError(
        f"{name}: simulated_func is {kinds} at {span}{also} of the input range "
        f"[{float(x[0]):.6g}, {float(x[-1]):.6g}] {where}. Restrict input_range to where the function is finite, "
        "give inverse_func (for a decreasing function), or clamp the input inside the function")


def check_decreasing(inverse: Callable, y_lo: float, y_hi: float, name: str) -> None:
    """Raise unless ``inverse`` is non-increasing where it is finite on ``[y_lo, y_hi]``."""
    ys = torch.linspace(y_lo, y_hi, INVERSE_POINTS, dtype=torch.float64)
    xs = _call(inverse, ys, name, "inverse_func").reshape(-1)
    if xs.numel() != ys.numel():
        raise ValueError(f"{name}: inverse_func must be elementwise, but {ys.numel()} outputs gave {xs.numel()} inputs")
    keep = torch.isfinite(xs)
    ys, xs = ys[keep], xs[keep]
    if xs.numel() < 2:
        return
    tol = 1e-6 * float(xs.max() - xs.min()) + 1e-12
    up = (xs[1:] - xs[:-1]) > tol
    if bool(up.any()):
        i = int(up.nonzero()[0])
        raise ValueError(
            f"{name}: inverse_func must be the inverse of a monotonically decreasing function, but it increases "
            f"from {float(xs[i]):.6g} at y = {float(ys[i]):.6g} "
            f"to {float(xs[i + 1]):.6g} at y = {float(ys[i + 1]):.6g}; "
            "pass the inverse of a decreasing function, or leave inverse_func out and set input_range")


def check_declared_range(fn: Callable, lo: float, hi: float, mirrored: bool, name: str,
                         inverse: Callable | None = None) -> None:
    """At construction: ``fn`` elementwise and finite on ``RANGE_POINTS`` inputs of ``[lo, hi]``
    (and 0 when the range holds it); only ``x >= 0`` for a mirrored (YSYM/CSYM) table; ``inverse``
    (if given) decreasing on the outputs ``fn`` takes there."""
    if mirrored:
        lo, hi = (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
    x = torch.linspace(lo, hi, RANGE_POINTS, dtype=torch.float32)
    if lo <= 0 <= hi:
        x = torch.unique(torch.cat([x, torch.zeros(1)]))
    check_elementwise(fn, x, name)
    y = _call(fn, x, name, "simulated_func").reshape(-1)
    check_finite(x, y, name, allow_inf=False, where="given as input_range")
    if inverse is not None:
        check_decreasing(inverse, float(y.min()), float(y.max()), name)
