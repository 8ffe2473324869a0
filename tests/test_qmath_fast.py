"""The float64 fast paths of qmath equal the int64 reference bit for bit where their bound holds."""
import torch
from hypothesis import given, settings, strategies as st

from edgequant.qmath import F64_EXACT, quantize_multiplier, requantize, round_shift_f64, rounding_shift_right


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(F64_EXACT - 1), F64_EXACT - 1), min_size=1, max_size=50), st.integers(0, 62))
def test_round_shift_f64_equals_int64(values, shift):
    v = torch.tensor(values, dtype=torch.int64)
    got = round_shift_f64(v.to(torch.float64), shift).to(torch.int64)
    assert torch.equal(got, rounding_shift_right(v, shift))


def test_round_shift_f64_halfway_cases_go_to_even():
    v = torch.arange(-40, 41, dtype=torch.int64)
    for n in (1, 2, 3):
        assert torch.equal(round_shift_f64(v.to(torch.float64), n).to(torch.int64), rounding_shift_right(v, n))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1 << 20), st.floats(1e-6, 4.0), st.sampled_from(["qint8", "qint16", "quint8"]),
       st.integers(-3, 3))
def test_requantize_with_bound_equals_int64_path(bound, real, dtype, zp):
    torch.manual_seed(bound)
    acc = torch.randint(-bound, bound + 1, (257,), dtype=torch.int64)
    acc[:2] = torch.tensor([bound, -bound])
    m0, shift = quantize_multiplier(real)
    fast = requantize(acc.to(torch.float32 if bound < (1 << 24) else torch.float64), m0, shift, dtype,
                      zp + (128 if dtype == "quint8" else 0), bound=bound)
    ref = requantize(acc, m0, shift, dtype, zp + (128 if dtype == "quint8" else 0))
    assert torch.equal(fast, ref)
