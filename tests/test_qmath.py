"""qmath against its plain-integer twin (tests/reference_int.py), bit for bit.

Golden vectors first (seed 004), then saturation, per-channel, scale_from_range, property tests
over random scales/shapes/dtypes/zero points, the integer shift and multiplier, requantize, and
the fake-quantize gradients. Equation labels (A1)..(A7) are those of docs/arithmetic.md.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgequant import qmath as Q

try:
    from . import reference_int as R
except ImportError:  # tests/ is not a package
    import reference_int as R

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL_DTYPES = ["qint4", "qint8", "quint8", "qint16", "qint32"]
STORAGE = {"qint4": torch.int8, "qint8": torch.int8, "quint8": torch.uint8, "qint16": torch.int16, "qint32": torch.int32}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SEED_X = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]


def f32(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float32))


def same_bits(a: torch.Tensor, b: np.ndarray) -> bool:
    """Equal values and, for floats, equal bit patterns (so -0.0 != 0.0 and NaN == NaN)."""
    a = a.detach().numpy()
    b = np.asarray(b).astype(a.dtype)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return np.array_equal(a.view(np.uint32), b.view(np.uint32))
    return np.array_equal(a, b)


# ------------------------------------------------------------------ golden vectors (seed 004)

@pytest.mark.parametrize("dtype", ["qint8", "qint16"])
def test_seed004_golden_symmetric(dtype):
    q = Q.quantize(torch.tensor(SEED_X), 1.0, 0, dtype)
    assert q.dtype == STORAGE[dtype]
    assert q.tolist() == [-2, -2, 0, 0, 2, 2]
    assert R.quantize(SEED_X, 1.0, 0, dtype).tolist() == [-2, -2, 0, 0, 2, 2]
    # the three rounding functions the seed names agree with the rule: torch, numpy, and the
    # default-environment nearbyint (Python's round on a float is the same IEEE operation)
    assert torch.round(torch.tensor(SEED_X)).tolist() == [-2, -2, -0.0, 0, 2, 2]
    assert np.round(np.array(SEED_X, np.float32)).tolist() == [-2, -2, 0, 0, 2, 2]
    assert [round(v) for v in SEED_X] == [-2, -2, 0, 0, 2, 2]


def test_seed004_golden_quint8_shifted():
    q = Q.quantize(torch.tensor(SEED_X), 1.0, 128, "quint8")
    assert q.dtype == torch.uint8
    assert q.tolist() == [126, 126, 128, 128, 130, 130]
    assert Q.dequantize(q, 1.0, 128).tolist() == [-2, -2, 0, 0, 2, 2]
    # the same halfway points at other power-of-two scales: x / s is exact, so the ties survive
    for s in (0.25, 0.5, 2.0, 2.0**-10):
        x = torch.tensor(SEED_X) * s
        assert Q.quantize(x, s, 128, "quint8").tolist() == [126, 126, 128, 128, 130, 130]
        assert Q.quantize(x, s, 0, "qint8").tolist() == [-2, -2, 0, 0, 2, 2]


def test_seed004_dequantize_golden():
    q = torch.tensor([-2, -2, 0, 0, 2, 2], dtype=torch.int8)
    assert Q.dequantize(q, 0.5).tolist() == [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]
    assert Q.dequantize(q.to(torch.int16), 0.5, 0).dtype == torch.float32


def test_halfway_cases_round_to_even():
    k = torch.arange(-300, 300, dtype=torch.float32)
    x = k + 0.5  # exact in float32
    q = Q.quantize(x, 1.0, 0, "qint16")
    expect = torch.where(k.remainder(2) == 0, k, k + 1)  # the even neighbour of k + 0.5
    assert q.to(torch.float32).equal(expect)


# ------------------------------------------------------------------ saturation

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_quantize_saturates_at_bounds(dtype):
    qmin, qmax = R.qrange(dtype)
    x = [-math.inf, -1e30, float(qmin) - 1.0, float(qmin) - 0.5, float(qmin), 0.0,
         float(qmax), float(qmax) + 0.5, float(qmax) + 1.0, 1e30, math.inf]
    q = Q.quantize(f32(x), 1.0, 0, dtype)
    assert q.dtype == STORAGE[dtype]
    assert q[0].item() == qmin and q[1].item() == qmin and q[-1].item() == qmax and q[-2].item() == qmax
    assert q.min().item() == qmin and q.max().item() == qmax
    assert same_bits(q, R.quantize(x, 1.0, 0, dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_quantize_saturates_with_zero_point(dtype):
    qmin, qmax = R.qrange(dtype)
    for z in (qmin, qmax, (qmin + qmax) // 2):
        x = [-1e38, -3.0, 0.0, 3.0, 1e38]
        q = Q.quantize(f32(x), 0.125, z, dtype)
        assert q[0].item() == qmin and q[-1].item() == qmax and q[2].item() == z
        assert same_bits(q, R.quantize(x, 0.125, z, dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_requantize_and_saturate_at_bounds(dtype):
    qmin, qmax = R.qrange(dtype)
    acc = torch.tensor([INT64_MIN // 4, qmin - 1, qmin, -1, 0, 1, qmax, qmax + 1, INT64_MAX // 4])
    y = Q.requantize(acc, 1, 0, dtype)
    assert y.dtype == STORAGE[dtype]
    assert y.tolist() == [qmin, qmin, qmin, max(qmin, -1), 0, 1, qmax, qmax, qmax]
    assert Q.saturate(acc, dtype).tolist() == y.tolist()
    assert same_bits(y, R.requantize(acc.tolist(), 1, 0, dtype))
    assert same_bits(Q.saturate(acc, dtype), R.saturate(acc.tolist(), dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_fake_quantize_saturates(dtype):
    qmin, qmax = R.qrange(dtype)
    x = f32([-1e30, 0.3, 1e30])
    y = Q.fake_quantize(x, 0.5, 0, dtype)
    assert same_bits(y, R.fake_quantize(x.numpy(), 0.5, 0, dtype))
    assert y[0].item() == np.float32(qmin) * 0.5 and y[2].item() == np.float32(qmax) * np.float32(0.5)


@pytest.mark.parametrize("dtype", ["qint4", "qint8", "quint8", "qint16"])
def test_ste_mask_includes_the_bounds(dtype):
    qmin, qmax = R.qrange(dtype)
    z = 3 if qmin == 0 else 0
    # codes qmin-1, qmin, qmax, qmax+1, and ties that round onto / off the bounds
    codes = [qmin - 1, qmin, qmax, qmax + 1]
    x = torch.tensor([(c - z) * 0.25 for c in codes] + [(qmin - z - 0.5) * 0.25, (qmax - z + 0.5) * 0.25],
                     requires_grad=True)
    Q.fake_quantize(x, 0.25, z, dtype).sum().backward()
    assert x.grad.tolist()[:4] == [0.0, 1.0, 1.0, 0.0]
    # the ties go to the even neighbour of x / s, then z is added: inside or not by that rule
    ties = [round(qmin - z - 0.5) + z, round(qmax - z + 0.5) + z]
    assert x.grad.tolist()[4:] == [float(qmin <= t <= qmax) for t in ties]


def test_qint32_zero_point_and_bounds_are_exact():
    # float32 cannot hold 2^24 + 1 or 2^31 - 1; the integer part of (A1) must still be exact
    assert Q.quantize(f32([0.5, 2.0**24]), 1.0, 1, "qint32").tolist() == [1, 2**24 + 1]
    qmax = 2**31 - 1
    x = f32([0.0, 1e12, -1e12, 64.0])
    for z in (qmax - 5, -(2**31) + 7, 12345):
        q = Q.quantize(x, 1.0, z, "qint32")
        assert q.tolist() == R.quantize(x.numpy(), 1.0, z, "qint32").tolist()
        assert q[0].item() == z
        y = Q.fake_quantize(x, 1.0, z, "qint32")
        assert same_bits(y, Q.dequantize(q, 1.0, z).numpy())


# ------------------------------------------------------------------ per-channel, errors

@pytest.mark.parametrize("ch_axis", [0, 1, 2, -1, -3])
@pytest.mark.parametrize("dtype", ["qint8", "quint8", "qint16"])
def test_per_channel_equals_per_slice(ch_axis, dtype):
    g = torch.Generator().manual_seed(ch_axis + 7)
    x = torch.randn(3, 4, 5, generator=g) * 4
    n = x.shape[ch_axis]
    qmin, qmax = R.qrange(dtype)
    scale = torch.rand(n, generator=g) * 0.1 + 0.01
    zp = torch.randint(qmin, qmax + 1, (n,), generator=g) if qmin == 0 else torch.randint(-5, 6, (n,), generator=g)
    q = Q.quantize(x, scale, zp, dtype, ch_axis=ch_axis)
    dq = Q.dequantize(q, scale, zp, ch_axis=ch_axis)
    fq = Q.fake_quantize(x, scale, zp, dtype, ch_axis=ch_axis)
    for c in range(n):
        sl = x.select(ch_axis, c)
        qc = Q.quantize(sl, scale[c].item(), zp[c].item(), dtype)
        assert q.select(ch_axis, c).equal(qc)
        assert dq.select(ch_axis, c).equal(Q.dequantize(qc, scale[c].item(), zp[c].item()))
    assert same_bits(q, R.quantize(x.numpy(), scale.numpy(), zp.numpy(), dtype, ch_axis))
    assert same_bits(dq, R.dequantize(q.numpy(), scale.numpy(), zp.numpy(), ch_axis))
    assert same_bits(fq, dq.numpy())


def test_per_channel_with_one_scale_is_per_tensor():
    x = torch.randn(2, 3, 4)
    a = Q.quantize(x, torch.tensor(0.05), 0, "qint8", ch_axis=1)
    assert a.equal(Q.quantize(x, 0.05, 0, "qint8"))


@pytest.mark.parametrize("fn", ["quantize", "fake_quantize", "fake_quantize_learnable"])
def test_wrong_per_channel_size_raises(fn):
    x = torch.randn(2, 3, 4)
    f = getattr(Q, fn)
    with pytest.raises(ValueError, match="per-channel"):
        f(x, torch.full((4,), 0.1), 0, "qint8", ch_axis=1)
    with pytest.raises(ValueError, match="per-channel"):
        f(x, torch.full((3,), 0.1), torch.zeros(2, dtype=torch.int64), "qint8", ch_axis=1)
    with pytest.raises(ValueError, match="per-tensor"):
        f(x, torch.full((3,), 0.1), 0, "qint8")


def test_dequantize_wrong_sizes_raise():
    q = torch.zeros(2, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="per-channel"):
        Q.dequantize(q, torch.ones(2), 0, ch_axis=1)
    with pytest.raises(ValueError, match="per-tensor"):
        Q.dequantize(q, torch.ones(3), 0)


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="unknown quantized dtype"):
        Q.quantize(torch.zeros(2), 1.0, 0, "qint7")


# ------------------------------------------------------------------ (A4) scale_from_range

@pytest.mark.parametrize("dtype", ["qint4", "qint8", "qint16", "qint32"])
def test_scale_from_range_symmetric_signed(dtype):
    qmin, qmax = R.qrange(dtype)
    s, z = Q.scale_from_range(-3000.0, 2000.0, dtype)
    assert s.dtype == torch.float32 and z.dtype == torch.int64 and z.item() == 0
    assert s.item() == np.float32(3000.0) / np.float32(qmax)
    q = Q.quantize(f32([-3000.0, 3000.0]), s, z, dtype)
    assert same_bits(q, R.quantize([-3000.0, 3000.0], s.item(), 0, dtype))
    if dtype != "qint32":  # float32(2^31 - 1) is 2^31, so qint32's -3.0 lands on qmin
        assert q.tolist() == [-qmax, qmax]


def test_scale_from_range_unsigned_symmetric_starts_at_zero():
    s, z = Q.scale_from_range(-1.0, 5.1, "quint8")
    assert z.item() == 0 and s.item() == np.float32(5.1) / np.float32(255)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_scale_from_range_asymmetric_zero_exact(dtype):
    qmin, qmax = R.qrange(dtype)
    for lo, hi in [(-1.0, 3.0), (0.5, 2.0), (-2.0, -0.5), (-7.25, 0.0), (0.0, 0.0), (-1e4, 0.0)]:
        s, z = Q.scale_from_range(lo, hi, dtype, symmetric=False)
        rs, rz = R.scale_from_range(lo, hi, dtype, symmetric=False)
        assert same_bits(s, rs) and z.item() == int(rz), (lo, hi)
        assert qmin <= z.item() <= qmax
        # zero is representable exactly: quantize(0) == z and dequantize(z) == 0
        assert Q.quantize(torch.zeros(1), s, z, dtype).item() == z.item()
        assert Q.dequantize(z.reshape(1), s, z).item() == 0.0


def test_scale_from_range_degenerate_uses_eps():
    s, z = Q.scale_from_range(0.0, 0.0, "qint8")
    assert s.item() == np.float32(np.finfo(np.float32).eps) and z.item() == 0


def test_scale_from_range_per_channel():
    lo = torch.tensor([-1.0, -4.0, 0.5])
    hi = torch.tensor([2.0, 1.0, 3.0])
    for sym in (True, False):
        s, z = Q.scale_from_range(lo, hi, "qint8", symmetric=sym)
        rs, rz = R.scale_from_range(lo.numpy(), hi.numpy(), "qint8", symmetric=sym)
        assert same_bits(s, rs) and z.numpy().tolist() == rz.tolist()


finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@SETTINGS
@given(lo=finite32, hi=finite32, dtype=st.sampled_from(ALL_DTYPES), sym=st.booleans())
def test_scale_from_range_matches_twin(lo, hi, dtype, sym):
    s, z = Q.scale_from_range(lo, hi, dtype, symmetric=sym)
    rs, rz = R.scale_from_range(lo, hi, dtype, symmetric=sym)
    assert same_bits(s, rs) and z.item() == int(rz)


# ------------------------------------------------------------------ (A1)-(A3) property tests

@st.composite
def quant_cases(draw, dtypes=tuple(ALL_DTYPES)):
    """(x, scale, zero_point, dtype, ch_axis) with power-of-two, ordinary and tiny/huge scales,
    zero points anywhere in the range, and x values that include exact halfway points."""
    dtype = draw(st.sampled_from(dtypes))
    qmin, qmax = R.qrange(dtype)
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    ch_axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    nch = 1 if ch_axis is None else shape[ch_axis]
    scale_st = st.one_of(
        st.integers(-24, 12).map(lambda e: 2.0**e),
        st.floats(2.0**-20, 1e3, width=32),
        st.floats(2.0**-100, 2.0**100, width=32),
    )
    scales = [draw(scale_st) for _ in range(nch)]
    symmetric = draw(st.booleans())
    zps = [0 if symmetric and qmin < 0 else draw(st.integers(qmin, qmax)) for _ in range(nch)]
    n = int(np.prod(shape))
    sc = np.asarray(R._params(scales, shape, ch_axis), dtype=np.float64).reshape(-1)
    with np.errstate(over="ignore"):  # x may overflow to +-inf for huge scales: meant
        xs = _draw_xs(draw, n, sc, qmin, qmax)
    x = np.array(xs, dtype=np.float32).reshape(shape)
    if ch_axis is None:
        return x, scales[0], zps[0], dtype, None
    return x, np.array(scales, np.float32), np.array(zps, np.int64), dtype, ch_axis


def _draw_xs(draw, n, sc, qmin, qmax):
    xs = []
    for i in range(n):
        kind = draw(st.sampled_from(["half", "int", "any", "wide"]))
        s = float(np.float32(sc[i]))
        if kind == "half":  # x = (k + 0.5) * s, often an exact tie after the float32 division
            k = draw(st.integers(qmin - 2, qmax + 1))
            xs.append(float(np.float32((k + 0.5) * s)))
        elif kind == "int":  # often right at the bounds, where the clamp and the STE mask switch
            k = draw(st.one_of(st.sampled_from([qmin - 1, qmin, qmax, qmax + 1]), st.integers(qmin - 2, qmax + 2)))
            xs.append(float(np.float32(k * s)))
        elif kind == "any":
            xs.append(float(np.float32(draw(st.floats(-1.2, 1.2)) * (qmax - qmin) * s)))
        else:
            xs.append(draw(st.floats(allow_nan=False, width=32)))
    return xs


def _t(v):
    return torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v


@SETTINGS
@given(case=quant_cases())
def test_quantize_matches_twin(case):
    x, s, z, dtype, ax = case
    q = Q.quantize(torch.from_numpy(x), _t(s), _t(z), dtype, ch_axis=ax)
    assert q.dtype == STORAGE[dtype]
    assert same_bits(q, R.quantize(x, s, z, dtype, ax))


@SETTINGS
@given(case=quant_cases())
def test_dequantize_matches_twin(case):
    x, s, z, dtype, ax = case
    q = R.quantize(x, s, z, dtype, ax)
    qt = torch.from_numpy(q).to(STORAGE[dtype])
    assert same_bits(Q.dequantize(qt, _t(s), _t(z), ch_axis=ax), R.dequantize(q, s, z, ax))


@SETTINGS
@given(case=quant_cases())
def test_fake_quantize_matches_twin_and_gradient_is_ste_mask(case):
    x, s, z, dtype, ax = case
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    y = Q.fake_quantize(xt, _t(s), _t(z), dtype, ch_axis=ax)
    q = Q.quantize(torch.from_numpy(x), _t(s), _t(z), dtype, ch_axis=ax)
    assert same_bits(y, Q.dequantize(q, _t(s), _t(z), ch_axis=ax).numpy())  # (A3) = (A2)(A1)
    assert same_bits(y, R.fake_quantize(x, s, z, dtype, ax))
    g = torch.from_numpy(np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape))
    y.backward(g)
    mask = R.fake_quantize_mask(x, s, z, dtype, ax)
    # values, not bits: a blocked gradient may be -0.0 (grad * 0)
    assert np.array_equal(xt.grad.numpy(), np.where(mask, g.numpy(), np.float32(0)))


@SETTINGS
@given(case=quant_cases(dtypes=("qint4", "qint8", "quint8", "qint16")))
def test_fake_quantize_learnable_forward_and_x_grad(case):
    x, s, z, dtype, ax = case
    st_ = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    y = Q.fake_quantize_learnable(xt, st_, _t(z), dtype, ch_axis=ax)
    assert same_bits(y, Q.fake_quantize(torch.from_numpy(x), _t(s), _t(z), dtype, ch_axis=ax).numpy())
    y.sum().backward()
    assert np.array_equal(xt.grad.numpy(), R.fake_quantize_mask(x, s, z, dtype, ax).astype(np.float32))
    assert st_.grad is not None and st_.grad.shape == st_.shape


# ------------------------------------------------------------------ LSQ scale gradient

def test_lsq_scale_grad_hand_example():
    # qint4: [qmin, qmax] = [-8, 7]. x / s = [0.52, -1.8, 4.0, 10.0, -20.0]
    x = torch.tensor([0.26, -0.9, 2.0, 5.0, -10.0])
    s = torch.tensor(0.5, requires_grad=True)
    y = Q.fake_quantize_learnable(x, s, 0, "qint4", grad_factor=1.0)
    assert y.tolist() == [0.5, -1.0, 2.0, 3.5, -4.0]
    y.sum().backward()
    # inside: round(v) - v = 0.48, -0.2, 0.0; clamped: qmax = 7, qmin = -8
    assert s.grad.item() == pytest.approx(0.48 - 0.2 + 0.0 + 7 - 8, abs=1e-6)


def test_lsq_scale_grad_default_factor_and_zero_point():
    x = torch.tensor([0.26, -0.9, 2.0, 5.0, -10.0, 0.1])
    s = torch.tensor(0.5, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0, -1.0])
    Q.fake_quantize_learnable(x, s, 3, "qint8").backward(g)
    factor = 1.0 / math.sqrt(x.numel() * 127)
    expect = R.lsq_scale_grad(x.numpy(), 0.5, 3, "qint8", g.numpy(), factor)
    assert s.grad.item() == pytest.approx(expect, rel=1e-5)


def test_lsq_scale_grad_is_derivative_of_ste_surrogate():
    """Central finite difference of the surrogate s -> s * clamp(c + x/s), with the rounding
    error c = round(x/s0) - x/s0 frozen at s0, equals the LSQ gradient (exact: the surrogate
    is linear in s away from the clamp boundaries)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(40, generator=g) * 3).double()
    s0, z, (qmin, qmax) = 0.25, 2, R.qrange("qint4")
    z_q = torch.round(x / s0) + z
    x = x[(z_q != qmin) & (z_q != qmax)]  # elements on the clamp edge are kinks of the surrogate
    c = torch.round(x / s0) - x / s0

    def surrogate(s):
        v = (c + x / s) + z
        return ((v.clamp(qmin, qmax) - z) * s).sum().item()

    h = 1e-6
    fd = (surrogate(s0 + h) - surrogate(s0 - h)) / (2 * h)
    s = torch.tensor(s0, requires_grad=True)
    Q.fake_quantize_learnable(x.float(), s, z, "qint4", grad_factor=1.0).sum().backward()
    assert s.grad.item() == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_lsq_scale_grad_per_channel_equals_per_slice():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, generator=g) * 2
    scale = torch.tensor([0.1, 0.2, 0.05, 0.3], requires_grad=True)
    Q.fake_quantize_learnable(x, scale, 0, "qint8", ch_axis=1).sum().backward()
    for c in range(4):
        sc = scale.detach()[c].clone().requires_grad_(True)
        xs = x[:, c, :]
        Q.fake_quantize_learnable(xs, sc, 0, "qint8").sum().backward()
        # the default factor counts the elements per scale: 6 in both cases
        assert scale.grad[c].item() == pytest.approx(sc.grad.item(), rel=1e-6)
        assert sc.grad.item() == pytest.approx(
            R.lsq_scale_grad(xs.numpy(), sc.item(), 0, "qint8", np.ones(6), 1 / math.sqrt(6 * 127)), rel=1e-5)


def test_lsq_one_scale_with_ch_axis_is_per_tensor():
    x = torch.randn(2, 3, 4)
    s1 = torch.tensor(0.07, requires_grad=True)
    s2 = torch.tensor(0.07, requires_grad=True)
    y1 = Q.fake_quantize_learnable(x, s1, 0, "qint8", ch_axis=1, grad_factor=1.0)
    y2 = Q.fake_quantize_learnable(x, s2, 0, "qint8", grad_factor=1.0)
    assert y1.equal(y2)
    y1.sum().backward()
    y2.sum().backward()
    assert s1.grad.shape == () and s1.grad.item() == pytest.approx(s2.grad.item(), rel=1e-6)


# ------------------------------------------------------------------ (A6) rounding_shift_right

EXTREMES = [INT64_MIN, INT64_MIN + 1, -(2**62), -3, -2, -1, 0, 1, 2, 3, 2**62, INT64_MAX - 1, INT64_MAX]


@pytest.mark.parametrize("n", list(range(0, 70)) + [100, 1000])
def test_rounding_shift_right_int64_extremes(n):
    v = torch.tensor(EXTREMES, dtype=torch.int64)
    out = Q.rounding_shift_right(v, n)
    assert out.dtype == torch.int64
    assert out.tolist() == R.rounding_shift_right(EXTREMES, n).tolist()


def test_rounding_shift_right_every_halfway_case():
    for n in range(1, 63):
        half = 2 ** (n - 1)
        ks = [k for k in range(-4, 4) if abs(k) < 2 ** (62 - n)] + [2 ** (62 - n) - 1, -(2 ** (62 - n))]
        vals = [k * 2**n + half for k in ks]  # exactly (k + 1/2) * 2^n, all inside int64
        out = Q.rounding_shift_right(torch.tensor(vals), n).tolist()
        assert out == [k if k % 2 == 0 else k + 1 for k in ks], n
        # one below / above a tie go down / up whatever the parity
        assert Q.rounding_shift_right(torch.tensor([v - 1 for v in vals]), n).tolist() == ks
        assert Q.rounding_shift_right(torch.tensor([v + 1 for v in vals]), n).tolist() == [k + 1 for k in ks]


def test_rounding_shift_right_zero_and_negative_shift():
    v = torch.tensor([-7, -1, 0, 1, 7, 2**40])
    assert Q.rounding_shift_right(v, 0).equal(v)
    assert Q.rounding_shift_right(v, -3).tolist() == [-56, -8, 0, 8, 56, 2**43]
    assert Q.rounding_shift_right(v, torch.tensor(-3)).tolist() == [-56, -8, 0, 8, 56, 2**43]


def test_rounding_shift_right_per_element_shift():
    v = torch.tensor([[5, -5, 6, -6], [12, -12, 10, -10]])
    n = torch.tensor([1, 1, 2, -1])
    assert Q.rounding_shift_right(v, n).tolist() == R.rounding_shift_right(v.tolist(), n.tolist()).tolist()
    assert Q.rounding_shift_right(v, n).tolist() == [[2, -2, 2, -12], [6, -6, 2, -20]]
    # shifts of 63 or more mixed with ordinary ones, per element
    v = torch.tensor([INT64_MIN, INT64_MIN, INT64_MAX, 2**62, 2**62 + 1, -7])
    n = torch.tensor([63, 64, 63, 63, 63, 200])
    assert Q.rounding_shift_right(v, n).tolist() == [-1, 0, 1, 0, 1, 0]
    assert R.rounding_shift_right(v.tolist(), n.tolist()).tolist() == [-1, 0, 1, 0, 1, 0]


def test_quantize_takes_float64_input_as_float32():
    x64 = torch.tensor([0.1, 2.5000000001, -1e-9, 3.4999999999], dtype=torch.float64)
    assert Q.quantize(x64, 1.0, 0, "qint8").equal(Q.quantize(x64.float(), 1.0, 0, "qint8"))
    assert Q.quantize(x64, 1.0, 0, "qint8").tolist() == [0, 2, 0, 4]  # 2.5000000001 -> 2.5f -> 2


int64s = st.integers(INT64_MIN, INT64_MAX)


@SETTINGS
@given(v=st.lists(int64s, min_size=1, max_size=8), n=st.integers(0, 80))
def test_rounding_shift_right_matches_twin(v, n):
    assert Q.rounding_shift_right(torch.tensor(v), n).tolist() == R.rounding_shift_right(v, n).tolist()


@SETTINGS
@given(data=st.data(), n=st.integers(-40, 0))
def test_rounding_shift_left_matches_twin(data, n):
    lim = 2 ** (63 + n) - 1  # no overflow after the left shift
    v = data.draw(st.lists(st.integers(-lim, lim), min_size=1, max_size=8))
    assert Q.rounding_shift_right(torch.tensor(v), n).tolist() == [x * 2 ** (-n) for x in v]


# ------------------------------------------------------------------ (A5) quantize_multiplier

def _check_multiplier(real, bits):
    m0, n = Q.quantize_multiplier(real, bits)
    assert isinstance(m0, int) and isinstance(n, int)
    assert (m0, n) == R.quantize_multiplier(real, bits)
    assert m0.bit_length() == bits  # 2^(bits-1) <= m0 < 2^bits
    approx = Fraction(m0) * Fraction(2) ** (-n)
    assert abs(approx - Fraction(real)) <= Fraction(real) * Fraction(1, 2**bits)
    return m0, n


@pytest.mark.parametrize("bits", [8, 15, 16, 24, 31])
def test_quantize_multiplier_edges(bits):
    for real in [1e-12, 2.0**-31, 2.0**-40, 3e-20, 0.5, 0.75, 0.999999, 1.0, 1.5, 1000.0, 2.0**40,
                 1 - 2.0**-53, 5e-324, 1.7e308, 0.1, 1 / 3]:
        _check_multiplier(real, bits)
    assert Q.quantize_multiplier(0.0, bits) == (0, 0)
    assert Q.quantize_multiplier(1.0, bits) == (2 ** (bits - 1), bits - 1)
    # rounding up to 2^bits moves to the next power of two
    assert Q.quantize_multiplier(1 - 2.0**-53, bits) == (2 ** (bits - 1), bits - 1)


def test_quantize_multiplier_halfway_rounds_to_even():
    # 2^(b-1) + k + 1/2 at b = 8: mantissa ties, m0 rounds to the even neighbour
    for k, expect in [(0, 128), (1, 130), (2, 130), (3, 132)]:
        real = (128 + k + 0.5) / 256
        assert Q.quantize_multiplier(real, 8) == (expect, 8)


def test_quantize_multiplier_rejects_bad_values():
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            Q.quantize_multiplier(bad)


@SETTINGS
@given(real=st.one_of(st.floats(1e-30, 1e12), st.floats(min_value=5e-324, max_value=1e300),
                      st.integers(-60, 60).map(lambda e: 2.0**e)),
       bits=st.integers(2, 31))
def test_quantize_multiplier_properties(real, bits):
    _check_multiplier(real, bits)


def test_quantize_multiplier_tensor_equals_scalar():
    reals = torch.tensor([[1e-12, 0.3, 1.0], [2.5, 0.0, 7e5]], dtype=torch.float64)
    m0, n = Q.quantize_multiplier(reals, 31)
    assert m0.dtype == torch.int64 and n.dtype == torch.int64 and m0.shape == reals.shape
    for i in range(2):
        for j in range(3):
            assert (m0[i, j].item(), n[i, j].item()) == Q.quantize_multiplier(reals[i, j].item(), 31)
    m0f, nf = Q.quantize_multiplier(reals.float(), 20)
    assert [(a, b) for a, b in zip(m0f.flatten().tolist(), nf.flatten().tolist())] == [
        Q.quantize_multiplier(float(r), 20) for r in reals.float().flatten().tolist()]


# ------------------------------------------------------------------ (A7) requantize

@SETTINGS
@given(acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
       m0=st.integers(1, 2**31 - 1), n=st.integers(-8, 80))
def test_multiply_by_quantized_multiplier_matches_twin(acc, m0, n):
    if n < 0:
        acc = [a >> 20 for a in acc]  # keep |acc * m0 * 2^-n| < 2^63
    out = Q.multiply_by_quantized_multiplier(torch.tensor(acc), m0, n)
    assert out.tolist() == R.multiply_by_quantized_multiplier(acc, m0, n).tolist()


@SETTINGS
@given(acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
       odd=st.integers(0, 2**30 - 1), e=st.integers(-45, 0), dtype=st.sampled_from(ALL_DTYPES),
       data=st.data())
def test_requantize_exact_when_multiplier_representable(acc, odd, e, dtype, data):
    """M = (2*odd + 1) * 2^e has at most 31 significant bits, so (A5) represents it exactly
    and (A7) must equal round(acc * M) computed with Fractions."""
    qmin, qmax = R.qrange(dtype)
    z = data.draw(st.integers(qmin, qmax))
    M = Fraction(2 * odd + 1) * Fraction(2) ** e
    m0, n = Q.quantize_multiplier(float(M), 31)
    assert Fraction(m0) * Fraction(2) ** (-n) == M
    y = Q.requantize(torch.tensor(acc), m0, n, dtype, z)
    assert y.dtype == STORAGE[dtype]
    assert y.tolist() == [R.requantize_exact(a, M, dtype, z) for a in acc]
    assert same_bits(y, R.requantize(acc, m0, n, dtype, z))


@SETTINGS
@given(acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
       real=st.floats(1e-14, 4.0), bits=st.sampled_from([8, 16, 24, 31]))
def test_requantize_error_bound(acc, real, bits):
    """|y - acc*M| <= 1/2 + |acc*M| * 2^-bits before saturation, so y is round(acc*M) or a
    neighbour; with |acc*M| < 2^(bits-1) it is at most 1 LSB from round(acc*M)."""
    m0, n = Q.quantize_multiplier(real, bits)
    y = Q.requantize(torch.tensor(acc), m0, n, "qint32")
    assert same_bits(y, R.requantize(acc, m0, n, "qint32"))
    M = Fraction(real)
    for a, yi in zip(acc, y.tolist()):
        exact = Fraction(a) * M
        if abs(exact) > 2**31 - 3:
            continue  # saturated
        assert abs(yi - exact) <= Fraction(1, 2) + abs(exact) / 2**bits
        if abs(exact) < 2 ** (bits - 1):
            assert abs(yi - round(exact)) <= 1


def test_requantize_tiny_and_large_multipliers():
    acc = torch.tensor([-(2**31), -12345, -1, 0, 1, 12345, 2**31 - 1])
    for real in (1e-12, 2.0**-40, 1e-11):
        m0, n = Q.quantize_multiplier(real)
        assert n > 63
        assert Q.requantize(acc, m0, n, "qint8").tolist() == R.requantize(acc.tolist(), m0, n, "qint8").tolist()
        assert Q.requantize(acc, m0, n, "qint8").tolist() == [round(Fraction(a) * Fraction(m0, 2**n)) for a in acc.tolist()]
    m0, n = Q.quantize_multiplier(3.0)
    small = torch.tensor([-5, 0, 7])
    assert Q.requantize(small, m0, n, "qint16").tolist() == [-15, 0, 21]


def test_requantize_per_channel():
    acc = torch.tensor([[100, -250, 77], [-3, 1000, 5]])
    reals = torch.tensor([0.5, 0.013, 1.7], dtype=torch.float64)
    m0, n = Q.quantize_multiplier(reals)
    z = torch.tensor([1, -2, 0])
    y = Q.requantize(acc, m0, n, "qint8", z)
    assert same_bits(y, R.requantize(acc.tolist(), m0.tolist(), n.tolist(), "qint8", z.tolist()))
    for c in range(3):
        yc = Q.requantize(acc[:, c], m0[c].item(), n[c].item(), "qint8", z[c].item())
        assert y[:, c].equal(yc)
