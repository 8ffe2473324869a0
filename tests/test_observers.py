"""Observers against independent references: plain torch/NumPy min-max, loop EMAs, NumPy
histograms on the power-of-two grid, a brute-force NumPy MSE search and a loop TensorRT KL."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from edgequant.dtype import get_dtype, qint8, qint16, quint8
from edgequant.observers import (OBSERVERS, FixedScaleObserver, KLObserver, MinMaxObserver, MixObserver,
                                 MovingAverageMinMaxObserver, MSEObserver, PercentileObserver, shrink_range)
from edgequant.observers.clip_search import BinErrors, LevelErrors, kl_divergences
from edgequant.qmath import scale_from_range

HISTOGRAM_OBSERVERS = [PercentileObserver, MSEObserver, KLObserver]
RANGE_OBSERVERS = [MinMaxObserver, MovingAverageMinMaxObserver]
ALL = RANGE_OBSERVERS + HISTOGRAM_OBSERVERS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batches(seed: int, count: int = 4, shape=(4, 8, 6, 6)) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(shape, generator=g) * (1 + i) + 0.3 * i for i in range(count)]


def observe(obs, xs):
    for x in xs:
        obs(x)
    return obs


def same(a: tuple, b: tuple) -> bool:
    """Two tuples of tensors (ranges, qparams) are equal element by element."""
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---- the common contract ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_forward_returns_the_same_object_without_grad(cls):
    x = torch.randn(3, 5, requires_grad=True)
    obs = cls()
    y = obs(x)
    assert y is x
    assert all(not b.requires_grad for b in obs.buffers())


@pytest.mark.parametrize("cls", ALL)
def test_qparams_before_data_raise_naming_the_observer(cls):
    obs = cls()
    obs.name = "backbone.conv1"
    assert not obs.has_data()
    with pytest.raises(RuntimeError, match="backbone.conv1"):
        obs.calculate_qparams()


@pytest.mark.parametrize("cls", ALL)
def test_reset_forgets(cls):
    obs = observe(cls(), batches(0, 2))
    assert obs.has_data()
    obs.reset()
    assert not obs.has_data()
    with pytest.raises(RuntimeError, match=cls.__name__):
        obs.calculate_qparams()


@pytest.mark.parametrize("cls", ALL)
def test_qparams_types_and_shapes(cls):
    scale, zp = observe(cls(), batches(1)).calculate_qparams()
    assert scale.dtype == torch.float32 and zp.dtype == torch.int64
    assert scale.shape == zp.shape == torch.Size([])
    assert scale > 0


@pytest.mark.parametrize("cls", ALL)
def test_qparams_come_from_scale_from_range(cls):
    for dtype, symmetric in [(qint8, True), (quint8, False), ("qint16", True), (qint8, False)]:
        obs = observe(cls(dtype=dtype, symmetric=symmetric), batches(2))
        lo, hi = obs.clip_range()
        expected = scale_from_range(lo, hi, get_dtype(dtype), symmetric)
        got = obs.calculate_qparams()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises_naming_the_observer(cls, bad):
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 3] = bad
    x[1, 0, 0, 0] = float("nan")
    obs = cls()
    obs.name = "head.cls_logits"
    with pytest.raises(ValueError, match="head.cls_logits") as err:
        obs(x)
    message = str(err.value)
    n_nan = 2 if math.isnan(bad) else 1
    assert f"{n_nan} NaN and {2 - n_nan} Inf" in message
    assert "ignore_nonfinite=True" in message and "data" in message


@pytest.mark.parametrize("cls", ALL)
def test_ignore_nonfinite_drops_those_values(cls):
    x = torch.randn(2, 3, 8, 8, generator=gen(3))
    dirty = x.clone()
    dirty[0, 0, :2, :2] = float("nan")
    dirty[1, 2, 3, :] = float("inf")
    dirty[1, 1, 0, 0] = -float("inf")
    finite = dirty[torch.isfinite(dirty)]
    a, b = cls(ignore_nonfinite=True), cls()
    a(dirty)
    b(finite)
    assert same(a.clip_range(), b.clip_range())
    all_bad = cls(ignore_nonfinite=True)
    all_bad(torch.full((5,), float("nan")))
    assert not all_bad.has_data()


def test_fixed_scale_observer():
    obs = FixedScaleObserver(scale=0.25, zero_point=3, dtype="quint8", symmetric=False)
    assert obs.has_data()
    s, z = obs.calculate_qparams()
    assert s.item() == 0.25 and z.item() == 3 and s.dtype == torch.float32 and z.dtype == torch.int64
    assert tuple(v.item() for v in obs.clip_range()) == (-0.75, 63.0)
    obs(torch.randn(10))
    obs.name = "stub"
    with pytest.raises(ValueError, match="stub"):
        obs(torch.tensor([1.0, float("nan")]))
    per_channel = FixedScaleObserver(scale=[0.1, 0.2], ch_axis=0)
    assert per_channel.calculate_qparams()[0].tolist() == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError):
        FixedScaleObserver(scale=0.0)
    with pytest.raises(ValueError):
        FixedScaleObserver(scale=[0.1, 0.2])
    with pytest.raises(ValueError):
        FixedScaleObserver(scale=1.0).merge_(FixedScaleObserver(scale=2.0))


def test_table_and_dtype_names():
    # every observer a qconfig can name; MixObserver is tested in test_mix_observer.py
    assert set(OBSERVERS.values()) == set(ALL) | {FixedScaleObserver, MixObserver}
    assert MinMaxObserver(dtype="qint16").dtype == qint16
    with pytest.raises(ValueError):
        MinMaxObserver(dtype="int7")
    with pytest.raises(ValueError, match="per-tensor"):
        MSEObserver(ch_axis=1)


# ---- min-max and moving average --------------------------------------------------------------

def test_minmax_is_exact_over_batches():
    xs = batches(4, 5)
    obs = observe(MinMaxObserver(), xs)
    allx = torch.cat([x.reshape(-1) for x in xs])
    assert obs.clip_range() == (allx.min(), allx.max())


@pytest.mark.parametrize("cls", RANGE_OBSERVERS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel(cls, axis):
    xs = batches(5, 3, shape=(3, 4, 5, 6))
    obs = observe(cls(ch_axis=axis, averaging_constant=1.0) if cls is MovingAverageMinMaxObserver
                  else cls(ch_axis=axis), xs)
    x = torch.stack(xs[-1:] if cls is MovingAverageMinMaxObserver else xs)  # constant 1.0: the last batch
    dims = [0] + [d + 1 for d in range(4) if d != axis % 4]
    lo, hi = obs.clip_range()
    assert torch.allclose(lo, x.amin(dim=dims), rtol=1e-6) and torch.allclose(hi, x.amax(dim=dims), rtol=1e-6)
    if cls is MinMaxObserver:
        assert torch.equal(lo, x.amin(dim=dims)) and torch.equal(hi, x.amax(dim=dims))
    scale, zp = obs.calculate_qparams()
    assert scale.shape == zp.shape == torch.Size([xs[0].shape[axis]])


def test_per_channel_ignore_nonfinite_keeps_other_channels():
    x = torch.randn(4, 3, generator=gen(6))
    dirty = x.clone()
    dirty[:, 1] = float("nan")
    obs = MinMaxObserver(ch_axis=1, ignore_nonfinite=True)
    obs(dirty)
    assert not obs.has_data()  # channel 1 never saw a finite value
    obs(x)
    assert torch.equal(obs.min_val, x.amin(0))


def test_moving_average_matches_a_loop():
    xs = batches(7, 6)
    c = 0.1
    obs = observe(MovingAverageMinMaxObserver(averaging_constant=c), xs)
    lo, hi = xs[0].min().item(), xs[0].max().item()
    for x in xs[1:]:
        lo += c * (x.min().item() - lo)
        hi += c * (x.max().item() - hi)
    got = obs.clip_range()
    assert got[0].item() == pytest.approx(lo, rel=1e-6) and got[1].item() == pytest.approx(hi, rel=1e-6)


def test_moving_average_merge_is_the_ddp_mean():
    start = observe(MovingAverageMinMaxObserver(averaging_constant=0.2), batches(8, 3))
    a, b = MovingAverageMinMaxObserver(averaging_constant=0.2), MovingAverageMinMaxObserver(averaging_constant=0.2)
    a.load_state_dict(start.state_dict())
    b.load_state_dict(start.state_dict())
    xa, xb = batches(9, 2)
    a(xa)
    b(xb)
    a.merge_(b)
    s_lo, s_hi = start.clip_range()
    mean_lo, mean_hi = (xa.min() + xb.min()) / 2, (xa.max() + xb.max()) / 2
    assert a.min_val.item() == pytest.approx((s_lo + 0.2 * (mean_lo - s_lo)).item(), rel=1e-6)
    assert a.max_val.item() == pytest.approx((s_hi + 0.2 * (mean_hi - s_hi)).item(), rel=1e-6)
    empty = MovingAverageMinMaxObserver(averaging_constant=0.2)
    assert same(empty.merge_(a).clip_range(), a.clip_range())


# ---- merging and state -------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [None, 1])
def test_minmax_merge_equals_both_streams_exactly(axis):
    xs, ys = batches(10, 3), batches(11, 2)
    both = observe(MinMaxObserver(ch_axis=axis), xs + ys)
    merged = observe(MinMaxObserver(ch_axis=axis), xs).merge_(observe(MinMaxObserver(ch_axis=axis), ys))
    assert torch.equal(merged.min_val, both.min_val) and torch.equal(merged.max_val, both.max_val)
    assert same(MinMaxObserver(ch_axis=axis).merge_(both).clip_range(), both.clip_range())
    with pytest.raises(ValueError, match="different settings"):
        merged.merge_(MinMaxObserver(ch_axis=0 if axis else 1))


def dyadic(seed: int, n: int, lo: int, hi: int) -> torch.Tensor:
    """Values k / 64: every product with a power of two and every bin index is exact."""
    return torch.randint(lo, hi, (n,), generator=gen(seed)).float() / 64


def numpy_histogram(values: np.ndarray, log2_width: int, bins: int) -> np.ndarray:
    """Counts of ``values`` on the grid of multiples of 2**log2_width, window from floor(min / w)."""
    w = 2.0 ** log2_width
    index = np.floor(values.astype(np.float64) / w).astype(np.int64)
    return np.bincount(index - index.min(), minlength=bins)[:bins].astype(np.float64)


@pytest.mark.parametrize("cls", HISTOGRAM_OBSERVERS)
def test_histogram_merge_equals_both_streams_exactly_on_dyadic_data(cls):
    # Stream a is narrow and stream b wide and shifted, so merging has to re-bin a's counts.
    a_data = [dyadic(s, 500, -64, 64) for s in (1, 2)]
    b_data = [dyadic(s, 700, -2000, 9000) for s in (3, 4)]
    both = observe(cls(), a_data + b_data)
    merged = observe(cls(), a_data).merge_(observe(cls(), b_data))
    for k in ("counts", "min_val", "max_val", "log2_width"):
        assert torch.equal(getattr(merged.histogram, k), getattr(both.histogram, k)), k
    values = torch.cat(a_data + b_data).numpy()
    expected = numpy_histogram(values, int(both.histogram.log2_width), both.histogram.bins)
    assert np.array_equal(both.histogram.counts.numpy(), expected)
    assert same(merged.calculate_qparams(), both.calculate_qparams())
    reversed_merge = observe(cls(), b_data).merge_(observe(cls(), a_data))
    assert torch.equal(reversed_merge.histogram.counts, both.histogram.counts)


def test_histogram_merge_equals_both_streams_exactly_on_random_data():
    g = gen(12)
    xs = [torch.randn(20000, generator=g) * 0.01 for _ in range(2)]
    ys = [torch.randn(20000, generator=g) * 3 + 1 for _ in range(2)]
    both = observe(MSEObserver(), xs + ys).histogram
    merged = observe(MSEObserver(), xs).merge_(observe(MSEObserver(), ys)).histogram
    assert int(merged.log2_width) == int(both.log2_width) and merged.min_val == both.min_val
    assert merged.counts.sum() == both.counts.sum() == 80000
    assert torch.equal(merged.counts, both.counts)  # binning and re-binning are exact


def test_histogram_statistics_allow_a_two_phase_all_reduce():
    parts = [observe(KLObserver(), [dyadic(s, 300, -100 * s, 50 * s ** 2)]) for s in (1, 2, 3)]
    expected = observe(KLObserver(), [dyadic(s, 300, -100 * s, 50 * s ** 2) for s in (1, 2, 3)])
    stats = [p.statistics() for p in parts]
    lo = min(s["min_val"] for s in stats)
    hi = max(s["max_val"] for s in stats)
    e = max(s["log2_width"] for s in stats)
    for p in parts:  # phase 1: every rank moves to the grid of the reduced range
        p.histogram.align_(lo, hi, e)
    total = sum(p.statistics()["counts"] for p in parts)  # phase 2: sum the counts
    result = KLObserver()
    result.load_statistics(dict(parts[0].statistics(), counts=total))
    assert torch.equal(result.histogram.counts, expected.histogram.counts)
    assert same(result.calculate_qparams(), expected.calculate_qparams())


@pytest.mark.parametrize("cls, axis", [(cls, None) for cls in ALL + [FixedScaleObserver]]
                         + [(cls, 0) for cls in RANGE_OBSERVERS + [FixedScaleObserver]])
def test_state_dict_round_trip(cls, axis):
    config = dict(ch_axis=axis, dtype="qint16", symmetric=False)
    if cls is FixedScaleObserver:
        config["scale"] = [0.5] * 4 if axis is not None else 0.5
    obs = observe(cls(**config), batches(13, 3))
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(**config)
    fresh.load_state_dict(torch.load(buffer))
    saved, loaded = obs.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert saved[name].dtype == loaded[name].dtype and torch.equal(saved[name], loaded[name]), name
    assert same(fresh.calculate_qparams(), obs.calculate_qparams())
    stats = obs.statistics()
    fresh.reset()
    fresh.load_statistics(stats)
    assert all(torch.equal(v, fresh.statistics()[k]) for k, v in stats.items())


@pytest.mark.parametrize("cls", HISTOGRAM_OBSERVERS)
def test_histogram_memory_does_not_grow(cls):
    obs = cls()
    sizes = set()
    g = gen(14)
    for i in range(40):
        obs(torch.randn(1000, generator=g) * 1.5 ** i - i)  # the range keeps widening and moving
        sizes.add(sum(b.numel() for b in obs.buffers()))
    assert sizes == {obs.histogram.bins + 3}
    assert obs.histogram.counts.sum() == 40000
    assert not [v for v in vars(obs).values() if isinstance(v, torch.Tensor)]


def test_histogram_bins_every_value_exactly_across_chunks():
    # more values than one binning chunk (and a partial last one): every value in its true bin
    x = torch.randn(700_001, generator=gen(15)) * 3 + 0.5
    obs = observe(MSEObserver(), [x])
    h = obs.histogram
    expected = numpy_histogram(x.numpy(), int(h.log2_width), h.bins)
    got = h.counts.numpy()
    first = int(np.nonzero(got)[0][0])
    assert np.array_equal(got[first:first + expected.size], expected[:h.bins - first])
    assert got.sum() == x.numel()


BINNING_CASES = {
    "randn": lambda g: torch.randn(300_001, generator=g) * 3 + 0.5,
    "after relu6 (runs of 0 and 6)": lambda g: (torch.randn(300_001, generator=g) * 4).clamp(0, 6),
    "dyadic (values on bin edges)": lambda g: torch.randint(-5000, 9000, (300_001,), generator=g).float() / 64,
    "far from zero": lambda g: torch.rand(300_001, generator=g) * 1e-3 + 7.0e5,
    "tiny negative": lambda g: -torch.rand(300_001, generator=g) * 1e-30,
    "non-contiguous": lambda g: torch.randn(1001, 600, generator=g).t()[::2],
}


@pytest.mark.parametrize("case", BINNING_CASES)
def test_compiled_and_torch_binning_both_equal_numpy(case, monkeypatch):
    from edgequant.observers import histogram as hmod

    assert hmod._binning is not None, "the compiled binning kernel was not built: reinstall with a C compiler"
    x = BINNING_CASES[case](gen(16))
    lo, hi = float(x.min()), float(x.max())
    results = {}
    for path, split in (("compiled, one thread", 1 << 40), ("compiled, two threads", 1), ("torch", None)):
        if split is None:
            monkeypatch.setattr(hmod, "_binning", None)
        else:
            monkeypatch.setattr(hmod, "_SPLIT", split)
        h = hmod.Histogram()
        h.add_(x, lo, hi)
        results[path] = h
    h = results["torch"]
    expected = numpy_histogram(x.flatten().numpy(), int(h.log2_width), h.bins)
    first = int(np.nonzero(h.counts.numpy())[0][0])  # the window starts at floor(min / w) here too
    assert first == 0
    for path, got in results.items():
        assert got.window == h.window, path
        assert np.array_equal(got.counts.numpy(), expected[:h.bins]), path
        assert got.counts.sum() == x.numel(), path


def test_compiled_binning_splits_large_tensors_in_two_and_stays_exact(monkeypatch):
    from edgequant.observers import histogram as hmod

    assert hmod.native_threads(1 << 21) == (2 if torch.get_num_threads() > 1 else 1)
    assert hmod.native_threads(1000) == 1
    x = torch.randn((1 << 20) + 3, generator=gen(17))
    h1, h2 = hmod.Histogram(), hmod.Histogram()
    h1.add_(x, float(x.min()), float(x.max()))
    monkeypatch.setattr(hmod, "_binning", None)
    h2.add_(x, float(x.min()), float(x.max()))
    assert torch.equal(h1.counts, h2.counts)


def test_histogram_counts_stay_exact_beyond_float32_integers():
    obs = PercentileObserver()
    obs(torch.zeros((1 << 24) + 5))  # one bin gets more than 2**24 counts
    assert obs.histogram.counts.sum() == (1 << 24) + 5


def test_histogram_handles_extreme_ranges():
    obs = MSEObserver()
    obs(torch.tensor([0.0, 0.0]))
    obs(torch.tensor([3.0e38, -3.0e38, 1.0]))
    obs(torch.tensor([1e-30, 5.0]))
    h = obs.histogram
    assert h.counts.sum() == 7 and h.min_val == -3.0e38 and h.max_val == 3.0e38
    assert torch.isfinite(obs.calculate_qparams()[0])


# ---- the searches --------------------------------------------------------------------------------

def numpy_qparams(lo: float, hi: float, dtype, symmetric: bool) -> tuple[np.float32, int]:
    """qmath (A4), independently in NumPy float32."""
    eps = np.finfo(np.float32).eps
    lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    if symmetric and dtype.signed:
        return max(np.float32(max(-lo, hi)) / np.float32(dtype.qmax), eps), 0
    if symmetric:
        return max(hi / np.float32(dtype.qmax), eps), dtype.qmin
    s = max((hi - lo) / np.float32(dtype.qmax - dtype.qmin), eps)
    return s, int(np.clip(dtype.qmin - np.rint(lo / s), dtype.qmin, dtype.qmax))


def numpy_error(centers: np.ndarray, counts: np.ndarray, s, z: int, dtype) -> float:
    """Sum of count * (fake-quantized center - center)^2, float64."""
    s = float(s)
    q = np.clip(np.rint(centers / s) + z, dtype.qmin, dtype.qmax)
    return float(np.sum(counts * ((q - z) * s - centers) ** 2))


def histogram_arrays(obs):
    h = obs.histogram
    used = h.counts > 0
    return h.centers()[used].numpy(), h.counts[used].numpy()


@pytest.mark.parametrize("dtype", [qint8, qint16])
def test_mse_symmetric_matches_brute_force(dtype):
    g = gen(15)
    torch.manual_seed(15)
    x = torch.distributions.StudentT(3.0).sample((200000,)) * 0.5 + 0.05 * torch.randn(200000, generator=g)
    obs = MSEObserver(dtype=dtype)
    obs(x)
    centers, counts = histogram_arrays(obs)
    t_max = float(max(-obs.histogram.min_val, obs.histogram.max_val))
    brute = []
    for k in range(1, 2001, 1 if dtype is qint8 else 4):
        s, z = numpy_qparams(-t_max * k / 2000, t_max * k / 2000, dtype, True)
        brute.append((numpy_error(centers, counts, s, z, dtype), t_max * k / 2000))
    best_error, best_t = min(brute)
    s, z = obs.calculate_qparams()
    ours = numpy_error(centers, counts, s.item(), int(z), dtype)
    assert ours <= best_error * (1 + 1e-4)  # the refined search resolves 1/1985 of the range
    assert abs(float(obs.clip_range()[1]) - best_t) <= 0.002 * t_max
    if dtype is qint8:  # heavy tails: the int8 clip is well inside (int16 can afford the whole range)
        assert float(obs.clip_range()[1]) < 0.8 * t_max


def test_mse_affine_matches_brute_force():
    g = gen(16)
    x = torch.cat([torch.randn(50000, generator=g).exp(), -0.3 * torch.rand(50000, generator=g)])  # skewed
    obs = MSEObserver(dtype=quint8, symmetric=False)
    obs(x)
    centers, counts = histogram_arrays(obs)
    lo_max, hi_max = float(obs.histogram.min_val), float(obs.histogram.max_val)
    best = min(
        numpy_error(centers, counts, *numpy_qparams(lo_max * a / 40, hi_max * b / 80, quint8, False), quint8)
        for a in range(1, 41) for b in range(1, 81)
    )
    s, z = obs.calculate_qparams()
    assert numpy_error(centers, counts, s.item(), int(z), quint8) <= best * (1 + 1e-4)


def test_mse_level_sums_equal_the_per_bin_definition():
    g = gen(17)
    for dtype, symmetric in [(qint8, True), (qint8, False), (quint8, False), ("qint4", True)]:
        dtype = get_dtype(dtype)
        counts = (torch.rand(400, generator=g, dtype=torch.float64) * 100).floor()
        counts[counts < 40] = 0
        first, width = -1.3, 2.0 ** -7
        centers = first + torch.arange(400, dtype=torch.float64) * width
        lo = -torch.rand(64, generator=g, dtype=torch.float64) * 2
        hi = torch.rand(64, generator=g, dtype=torch.float64) * 2
        by_bin = BinErrors(centers.numpy(), counts.numpy(), dtype, symmetric)(lo.numpy(), hi.numpy())
        by_level = LevelErrors(first, width, counts.numpy(), dtype, symmetric)(lo.numpy(), hi.numpy())
        assert np.allclose(by_level, by_bin, rtol=1e-5, atol=0), dtype


def numpy_kl(counts: np.ndarray, levels: int, end: int) -> float:
    """TensorRT entropy calibration for one threshold, written out with arrays and a loop.

    Chunks of end // levels bins, the last one also taking the remainder (as MXNet's and TVM's
    calibration code split them)."""
    p = counts[:end].astype(np.float64).copy()
    p[end - 1] += counts[end:].sum()
    m = end // levels
    q = np.zeros(end)
    for c in range(levels):
        a, b = c * m, (c + 1) * m if c < levels - 1 else end
        nonzero = p[a:b] > 0
        if nonzero.any():
            q[a:b][nonzero] = counts[a:b].sum() / nonzero.sum()
    if q.sum() == 0:
        return math.inf
    p, q = p / p.sum(), q / q.sum()
    used = p > 0
    if (q[used] == 0).any():
        return math.inf
    return float(np.sum(p[used] * np.log(p[used] / q[used])))


def test_kl_divergences_match_the_loop_reference():
    g = gen(18)
    torch.manual_seed(18)
    counts = (torch.distributions.Exponential(1.0).sample((700,)) * 50).floor().double()
    counts[300:] *= (torch.rand(400, generator=g) < 0.2).double()  # sparse tail with empty bins
    counts[450:460] = 0
    ends = torch.arange(128, 701)
    ours = kl_divergences(counts.numpy(), 128, ends.numpy())
    ref = [numpy_kl(counts.numpy(), 128, int(e)) for e in ends]
    for e, a, b in zip(ends.tolist(), ours.tolist(), ref):
        assert (a == b == math.inf) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), e
    # a last chunk without counts while a tail exists: q = 0 under p > 0, infinite divergence
    sparse = torch.tensor([1.0] * 200 + [0.0] * 100 + [5.0] * 50, dtype=torch.float64)
    assert math.isinf(numpy_kl(sparse.numpy(), 8, 300)) and math.isinf(kl_divergences(sparse.numpy(), 8, np.array([300]))[0])


def test_kl_clips_heavy_tails_and_falls_back_for_int16():
    torch.manual_seed(21)
    x = torch.distributions.StudentT(2.0).sample((300000,))
    obs = KLObserver()
    obs(x)
    lo, hi = obs.clip_range()
    assert 2.0 < hi < 0.5 * float(obs.histogram.max_val) and lo == -hi
    counts = obs.histogram.folded()
    ends = torch.arange(128, counts.numel() + 1)
    exhaustive = min((numpy_kl(counts.numpy(), 128, int(e)), int(e)) for e in ends)[1]
    assert float(hi) == exhaustive * obs.histogram.width
    wide = KLObserver(dtype=qint16)
    wide(x)
    mse = MSEObserver(dtype=qint16)
    mse(x)
    assert same(wide.calculate_qparams(), mse.calculate_qparams())


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_observer_close_to_shrink_range(percentile):
    g = gen(19)
    for x in (torch.randn(64, 16, 16, generator=g), torch.randn(50000, generator=g).exp(),
              torch.rand(30000, generator=g) * 4 - 1):
        obs = PercentileObserver(percentile=percentile)
        obs(x)
        lo, hi = (float(v) for v in obs.clip_range())
        s_lo, s_hi = (float(v) for v in shrink_range(x, 100.0 - percentile))
        seed_bin = float(x.max() - x.min()) / 255
        for ours, seeds in ((lo, s_lo), (hi, s_hi)):
            between = int(((x > min(ours, seeds)) & (x < max(ours, seeds))).sum())
            # within two of the seed's bins, or (sparse tails) cutting at nearly the same order statistic
            assert abs(ours - seeds) <= 2 * seed_bin or between <= 2, (ours, seeds, between)


def test_percentile_100_is_min_max():
    x = torch.randn(1000, generator=gen(20))
    obs = PercentileObserver(percentile=100.0)
    obs(x)
    assert same(obs.clip_range(), (x.min(), x.max()))


def test_a_tensor_of_mask_values_only_quantizes_as_a_pure_mask():
    """GPT-Neo's ``where(causal, scores, finfo.min)``: the fill is a constant holding nothing but
    the mask value. Its observer saw no finite data, yet the tensor has a range: that of a pure mask
    (0 down to -MASK_FILL), so the fill saturates to qmin; a per-channel observer still refuses."""
    from edgequant.fake_quant import FakeQuantize, FakeQuantState
    fill = torch.full((1,), torch.finfo(torch.float32).min)
    ob = MinMaxObserver(dtype="qint8")
    ob(fill)
    lo, hi = ob.clip_range()
    assert float(hi) == 0.0 and float(lo) == -10000.0
    fq = FakeQuantize(MinMaxObserver(dtype="qint8"), "qint8")
    fq.state = FakeQuantState.CALIBRATION
    fq(fill)
    scale, zp = fq.qparams()
    assert torch.round(fill / scale + zp).clamp(-128, 127).item() == -128
    per_channel = MinMaxObserver(dtype="qint8", ch_axis=0)
    per_channel(torch.full((2, 3), torch.finfo(torch.float32).min))
    with pytest.raises(RuntimeError, match="has not observed"):
        per_channel.clip_range()
