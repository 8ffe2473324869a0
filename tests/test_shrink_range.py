"""shrink_range against a plain-Python, element-by-element reference of seed 003.

The reference below is written from the algorithm's description, not from the implementation:
one value at a time, NumPy scalars carrying the tensor's precision (an ``np.float32`` operation
rounds to float32 as torch's float32 kernels do), Python's float64 for the running sums, and an
explicit loop for the walk inward. ``shrink_range`` must equal it exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgequant.observers import shrink_range


def reference_histogram(x: torch.Tensor):
    """Steps 1-4 of ``reference_shrink``: ``(percent, min, max, mult, scalar type)``; percent None early."""
    f = np.float64 if x.dtype == torch.float64 else np.float32
    values = [f(v) for v in x.reshape(-1).tolist()]
    mn, mx = min(values), max(values)
    if mn == 0 and mx == 0:
        return None, mn, mx, None, f
    with np.errstate(over="ignore", divide="ignore"):
        mult = (f(1) / abs(mx - mn)) * f(255)
    if not np.isfinite(mult):
        return None, mn, mx, None, f
    bins = [int(np.rint((v - mn) * mult)) for v in values]
    counts = [0] * (max(bins) + 1)
    for b in bins:
        counts[b] += 1
    total = np.float32(sum(counts))
    return [np.float32(np.float32(c) * np.float32(100)) / total for c in counts], mn, mx, mult, f


def reference_walk(percent, percentile: float) -> tuple[int, int]:
    """Step 5 of ``reference_shrink``: the seed's loop, verbatim in spirit."""
    low, high = 0, len(percent) - 1
    left = right = 0.0
    for h in range(len(percent)):
        r = len(percent) - 1 - h
        left += float(percent[h])
        right += float(percent[r])
        if left < percentile:
            low = h
        if right < percentile:
            high = r
    return low, high


def reference_shrink(x: torch.Tensor, percentile: float) -> tuple[float, float]:
    """Seed 003's histogram rule, written out loop by loop.

    1. min and max of the values; (0, 0) at once for an all-zero tensor.
    2. mult = 255 / (max - min), evaluated as torch evaluates ``number / tensor``:
       reciprocal of the tensor, times the number. A constant tensor (or a range so small
       that the reciprocal overflows) keeps its own range.
    3. bin of each value = round_half_even((v - min) * mult); histogram of length largest bin + 1.
    4. percent[k] = float32(count * 100) / float32(total), in float32.
    5. walk from both ends adding percents into Python floats (float64); low = last left index
       whose running sum is below the percentile, high = last right index (smallest) likewise.
    6. value = reciprocal(mult) * bin + min, clamped into [min, max].
    """
    percent, mn, mx, mult, f = reference_histogram(x)
    if percent is None:
        return float(mn), float(mx)
    low, high = reference_walk(percent, percentile)
    step = f(1) / mult
    new_mn, new_mx = step * f(low) + mn, step * f(high) + mn
    return float(max(mn, new_mn)), float(min(mx, new_mx))


def as_floats(pair) -> tuple[float, float]:
    return float(pair[0]), float(pair[1])


def distributions(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, generator=g, dtype=torch.float64)
    return {
        "normal": normal,
        "uniform": torch.rand(n, generator=g, dtype=torch.float64) * 6 - 2,
        "heavy": normal / torch.rand(n, generator=g, dtype=torch.float64).clamp(min=1e-3),  # Cauchy-like tails
        "few_values": torch.randint(-3, 4, (n,), generator=g).double() * 0.37,
        "relu": normal.clamp(min=0) * 5,
        "offset": 1000.0 + normal * 1e-2,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("percentile", [0.01, 0.1, 1.0, 5.0, 30.0, 60.0])
def test_equals_reference_on_distributions(dtype, percentile):
    for name, x in distributions(3000, seed=int(percentile * 100)).items():
        x = x.to(dtype)
        assert as_floats(shrink_range(x, percentile)) == reference_shrink(x, percentile), name


@pytest.mark.parametrize("shape", [(7,), (3, 50), (2, 3, 9, 11), (4, 8, 16, 16)])
def test_equals_reference_on_shapes(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    for p in (0.01, 0.5, True):
        assert as_floats(shrink_range(x, p)) == reference_shrink(x, float(p))


finite32 = st.floats(min_value=-2.0**100, max_value=2.0**100, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(st.lists(finite32, min_size=1, max_size=200), st.sampled_from([0.001, 0.01, 0.5, 2.0, 10.0, 49.0]),
       st.booleans())
def test_equals_reference_hypothesis(values, percentile, double):
    x = torch.tensor(values, dtype=torch.float64 if double else torch.float32)
    assert as_floats(shrink_range(x, percentile)) == reference_shrink(x, percentile)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=2, max_size=300), st.floats(0.001, 40.0), st.floats(1e-3, 1e3))
def test_equals_reference_few_distinct_values(ints, percentile, scale):
    x = torch.tensor(ints, dtype=torch.float32) * scale
    assert as_floats(shrink_range(x, percentile)) == reference_shrink(x, percentile)


def test_percentiles_exactly_on_a_running_sum():
    # A percentile equal to a float64 running sum sits on the `<` boundary: float32 sums, `<=`
    # or an off-by-one in the index rule all move the result.
    g = torch.Generator().manual_seed(11)
    for x in (torch.randn(777, generator=g), torch.randint(0, 9, (500,), generator=g).float() * 0.3,
              torch.randn(300, generator=g, dtype=torch.float64)):
        percent = reference_histogram(x)[0]
        left, right, sums = 0.0, 0.0, []
        for h in range(len(percent)):
            left += float(percent[h])
            right += float(percent[len(percent) - 1 - h])
            sums += [left, right]
        for p in sums[::7]:
            if 0 < p < 100:
                assert as_floats(shrink_range(x, p)) == reference_shrink(x, p), p


def test_rounding_ties_go_to_even():
    # min 0, max 255: mult is exactly 1, so every half-integer is a rounding tie.
    g = torch.Generator().manual_seed(12)
    halves = torch.randint(0, 255, (400,), generator=g).float() + 0.5
    x = torch.cat([torch.tensor([0.0, 255.0]), halves[:40].sort().values[:20], halves])
    assert (255.0 / torch.tensor(255.0)).item() == 1.0
    for p in (0.3, 1.0, 2.0, 5.0, 10.0, 25.0):
        assert as_floats(shrink_range(x, p)) == reference_shrink(x, p), p


def test_reference_mirrors_torch_division_quirk():
    # torch evaluates 255 / t as reciprocal(t) * 255; a plain division differs for some ranges,
    # which is why the reference spells it out.
    r = torch.tensor(np.float32(0.1) * 3, dtype=torch.float32)
    torch_value = (255.0 / r).item()
    assert torch_value == float((np.float32(1) / np.float32(r.item())) * np.float32(255))
    found = [v for v in np.linspace(0.1, 10, 2000, dtype=np.float32)
             if float(np.float32(255) / v) != float((np.float32(1) / v) * np.float32(255))]
    assert found, "expected ranges where reciprocal-then-multiply differs from division"


def test_all_zero_returns_zero_and_constant_returns_itself():
    assert as_floats(shrink_range(torch.zeros(10), 1.0)) == (0.0, 0.0)
    assert as_floats(shrink_range(torch.full((10,), -2.5), 1.0)) == (-2.5, -2.5)


def test_percentile_zero_is_min_max_and_result_stays_inside():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    assert as_floats(shrink_range(x, 0)) == (x.min().item(), x.max().item())
    lo, hi = shrink_range(x, 0.5)
    assert x.min() <= lo < hi <= x.max()


def test_large_percentiles_cross():
    # 60 % cut from each end: the seed's rule makes min > max (documented quirk).
    lo, hi = shrink_range(torch.linspace(0, 1, 1001), 60.0)
    assert lo > hi


def test_percentile_true_means_one_percent():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    assert as_floats(shrink_range(x, True)) == as_floats(shrink_range(x, 1.0))


def test_fast_mode_subsamples_reproducibly():
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(5))
    a = shrink_range(x, 0.5, fast_mode=True, generator=7)
    assert as_floats(a) == as_floats(shrink_range(x, 0.5, fast_mode=True, generator=7))
    r, c = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(7)).tolist()
    assert as_floats(a) == reference_shrink(x[..., r::2, c::2], 0.5)
    offsets = {as_floats(shrink_range(x, 0.5, fast_mode=True, generator=s)) for s in range(20)}
    assert len(offsets) > 1  # the four starting offsets give different samples


def test_fast_mode_leaves_small_or_non_4d_tensors_whole():
    g = torch.Generator().manual_seed(6)
    for x in (torch.randn(2, 3, 4, 12, generator=g), torch.randn(3, 40, 40, generator=g)):
        assert as_floats(shrink_range(x, 0.5, fast_mode=True, generator=1)) == reference_shrink(x, 0.5)


def test_channel_mean_and_sigma_variants():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(8))
    lo, hi = shrink_range(x, 0, channel_mean=True)
    per_channel = [(x[:, c].min().item(), x[:, c].max().item()) for c in range(3)]
    assert math.isclose(lo.item(), sum(p[0] for p in per_channel) / 3, rel_tol=1e-6)
    assert math.isclose(hi.item(), sum(p[1] for p in per_channel) / 3, rel_tol=1e-6)
    flat = x.reshape(6, 25)
    assert as_floats(shrink_range(flat, 0, channel_mean=True)) == (flat.min().item(), flat.max().item())
    lo, hi = shrink_range(x, 0, sigma=3.0)
    values = x.reshape(-1).tolist()
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert math.isclose(lo.item(), mean - 3 * std, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(hi.item(), mean + 3 * std, rel_tol=1e-5, abs_tol=1e-6)


def test_percentile_takes_precedence_like_the_seed():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9))
    expected = as_floats(shrink_range(x, 0.5))
    assert as_floats(shrink_range(x, 0.5, channel_mean=True, sigma=2.0)) == expected


def test_non_finite_raises():
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        shrink_range(torch.tensor([1.0, float("nan"), 2.0]), 1.0)
