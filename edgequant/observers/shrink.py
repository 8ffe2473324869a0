"""ShrinkRange: the range-shrinking percentile rule of seed 003 (TI edgeai's ``extrema``), vectorised.

Takes one tensor and returns ``(min, max)`` as 0-d tensors, computed exactly as the seed's
``extrema(src, range_shrink_percentile, channel_mean, sigma, fast_mode)`` does, with its Python
loop replaced by cumulative sums that give the same indices. ``walk_inward`` (the index rule) is
shared with ``PercentileObserver``. The seed's quirks are kept on purpose and listed in
``shrink_range``'s docstring and in docs/observers.md.
"""
from __future__ import annotations

import torch

from ..argcheck import describe, expect_flag, expect_real, expect_tensor
from .base import as_observable

NUM_BINS = 255.0   # the seed maps [min, max] onto the integers 0..255
FAST_STRIDE = 2    # fast_mode keeps every second row and column


def walk_inward(percent: torch.Tensor, tail: float) -> tuple[int, int]:
    """The seed's index rule on a histogram given in percent (float32 or float64 values).

    Percentages are accumulated in float64 from both ends (left to right, and right to left).
    ``low`` is the last index whose left sum is still ``< tail`` (0 if none); ``high`` is the
    smallest index whose right sum is ``< tail`` (``len - 1`` if none). Sums of non-negative
    numbers only grow, so those indices form a prefix and a suffix, counted here at once.
    """
    p = percent.to(torch.float64)
    n_left = int((torch.cumsum(p, 0) < tail).sum())
    n_right = int((torch.cumsum(p.flip(0), 0) < tail).sum())
    low = n_left - 1 if n_left else 0
    high = p.numel() - n_right if n_right else p.numel() - 1
    return low, high


def _subsample(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """fast_mode: every second row and column of a 4-D tensor from a random start in {0, 1}."""
    if x.dim() == 4 and x.shape[2] > 2 * FAST_STRIDE and x.shape[3] > 2 * FAST_STRIDE:
        r, c = torch.randint(0, FAST_STRIDE, (2,), generator=generator).tolist()
        return x[..., r::FAST_STRIDE, c::FAST_STRIDE]
    return x


def _percentile_range(x: torch.Tensor, tail: float, fast_mode: bool, generator) -> tuple[torch.Tensor, torch.Tensor]:
    if fast_mode:
        x = _subsample(x, generator)
    mn, mx = x.min(), x.max()
    if mn == 0 and mx == 0:
        return mn, mx
    # Written as the seed writes it: torch evaluates `number / tensor` as `tensor.reciprocal() * number`.
    mult = NUM_BINS / torch.abs(mx - mn)
    if not torch.isfinite(mult):  # constant tensor (or a subnormal range): the seed fails in bincount
        return mn, mx
    index = torch.round((x.reshape(-1) - mn) * mult).int()
    counts = torch.bincount(index)  # length = largest index + 1
    percent = counts.float() * 100.0 / counts.sum().float()
    low, high = walk_inward(percent, tail)
    new_mn = low / mult + mn
    new_mx = high / mult + mn
    return torch.maximum(mn, new_mn), torch.minimum(mx, new_mx)


def shrink_range(x: torch.Tensor, percentile: float, fast_mode: bool = False,
                 generator: torch.Generator | int | None = None, channel_mean: bool = False,
                 sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``x`` by seed 003's ``extrema``; ``percentile`` is the percent cut per side.

    Dispatch, in the seed's order: ``percentile == 0``, ``sigma == 0`` and not ``channel_mean``:
    plain min/max; else a truthy ``percentile``: the histogram rule; else ``channel_mean``: for
    4-D tensors the mean over channels of the per-channel min/max over dims (0, 2, 3), for
    others the global min/max; else ``sigma``: ``mean -/+ sigma * std`` (unbiased std).

    The histogram rule, with the seed's quirks:

    - ``percentile`` is the percentage dropped at *each* end (0.01 drops 0.01 % below and above);
      ``percentile=True`` means 1 %. With 50 or more, the two ends can cross (min > max).
    - Arithmetic in the tensor's precision: float64 stays float64, anything else is float32.
    - ``mult = 255 / (max - min)`` evaluates as ``reciprocal(max - min) * 255`` (torch's rule for
      ``number / tensor``), and so does the way back, ``bin / mult``.
    - Bins are ``round((x - min) * mult)`` (half to even), counted with ``bincount``: the
      histogram has ``largest bin + 1`` entries (normally 256).
    - Percentages are float32 (``count * 100 / total``); they are accumulated in float64 from
      both ends, as the seed's loop does with NumPy 1 (NumPy >= 2 would keep the Python float
      accumulator in float32).
    - New min = ``low / mult + min`` where ``low`` is the last bin whose left cumulative percent
      is still below ``percentile``; new max likewise from the right. That is the center of the
      last bin cut entirely, half a bin to one and a half bins outside the true quantile. Both
      are clamped into the original ``[min, max]``.
    - An all-zero tensor returns ``(0, 0)`` at once. A constant non-zero tensor (or a range so
      small that ``255 / range`` overflows) makes the seed fail inside ``bincount`` (``0 * inf``
      is NaN); here it returns the plain ``(min, max)``.
    - ``fast_mode`` (4-D tensors with H and W > 4 only) keeps every second row and column
      starting at a random offset in {0, 1} per axis. The seed draws the offsets from Python's
      global ``random`` (not reproducible unless seeded); here from ``generator`` (a
      ``torch.Generator`` or an int seed; torch's global generator if None).

    Non-finite values raise ``ValueError`` (the seed would return NaN or fail in ``bincount``).
    Returns 0-d tensors of the working precision.
    """
    expect_tensor(x, "shrink_range", "x")
    if percentile is not True:
        expect_real(percentile, "shrink_range", "percentile", nonneg=True)
    expect_real(sigma, "shrink_range", "sigma", nonneg=True)
    expect_flag(fast_mode, "shrink_range", "fast_mode")
    expect_flag(channel_mean, "shrink_range", "channel_mean")
    if not (generator is None or isinstance(generator, torch.Generator)
            or (isinstance(generator, int) and not isinstance(generator, bool))):
        raise TypeError(f"shrink_range: generator must be None, an int seed or a torch.Generator, "
                        f"got {describe(generator)}")
    x = as_observable(x)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"shrink_range: x has {int((~torch.isfinite(x)).sum())} NaN/Inf values of {x.numel()}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if percentile == 0 and sigma == 0 and not channel_mean:
        return x.min(), x.max()
    if percentile:
        return _percentile_range(x, float(percentile), fast_mode, generator)
    if channel_mean:
        dims = [0, 2, 3] if x.dim() == 4 else None
        return torch.amin(x, dim=dims).mean(), torch.amax(x, dim=dims).mean()
    mean, std = torch.mean(x), torch.std(x)
    return mean - sigma * std, mean + sigma * std
