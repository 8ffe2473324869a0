"""dtype records (ranges, storage, lookup) and march profiles (names, default, profiles)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from edgequant import dtype as D
from edgequant import march as M
from edgequant.dtype import QuantDType, get_dtype, qint4, qint8, qint16, qint32, quint8
from edgequant.march import March, get_march, get_profile, set_march

EXPECTED = {  # name: (bits, signed, qmin, qmax, storage)
    "qint4": (4, True, -8, 7, torch.int8),
    "qint8": (8, True, -128, 127, torch.int8),
    "quint8": (8, False, 0, 255, torch.uint8),
    "qint16": (16, True, -32768, 32767, torch.int16),
    "qint32": (32, True, -(2**31), 2**31 - 1, torch.int32),
    "qint48": (48, True, -(2**47), 2**47 - 1, torch.int64),   # wide accumulators
    "qint64": (64, True, -(2**63), 2**63 - 1, torch.int64),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dtype_ranges_and_storage(name):
    bits, signed, qmin, qmax, storage = EXPECTED[name]
    dt = get_dtype(name)
    assert (dt.name, dt.bits, dt.signed, dt.qmin, dt.qmax, dt.storage) == (name, bits, signed, qmin, qmax, storage)
    assert dt.qmax - dt.qmin + 1 == 2**bits
    info = torch.iinfo(dt.storage)
    assert info.min <= dt.qmin and dt.qmax <= info.max  # the storage holds every value
    assert str(dt) == repr(dt) == name
    # the storage type round-trips the bounds
    assert torch.tensor([qmin, qmax]).to(storage).tolist() == [qmin, qmax]


def test_dtype_registry_and_identity():
    assert set(D.DTYPES) == set(EXPECTED)
    assert get_dtype(qint8) is qint8
    assert get_dtype("qint8") is qint8
    for dt in (qint4, qint8, quint8, qint16, qint32):
        assert get_dtype(dt.name) is dt


def test_dtype_is_frozen_and_comparable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        qint8.bits = 16
    assert QuantDType("qint8", 8, True) == qint8
    assert qint8 != quint8
    assert len({qint8, QuantDType("qint8", 8, True)}) == 1  # hashable


@pytest.mark.parametrize("bad", ["qint7", "int8", "QINT8", "", None, 8, torch.int8])
def test_get_dtype_errors(bad):
    with pytest.raises(ValueError, match="unknown quantized dtype") as e:
        get_dtype(bad)
    assert "qint8" in str(e.value)  # the message lists the valid names


@pytest.mark.parametrize("spelling", ["nash-m", "NASH_M", "Nash-M", " nash_m ", March.NASH_M])
def test_march_spellings(spelling):
    assert March(spelling) is March.NASH_M


def test_march_members_compare_to_names():
    assert March.NASH_M == "nash-m" and str(March.NASH_M) == "nash-m"
    assert {m.value for m in March} == {"nash-e", "nash-m", "nash-p", "nash-h"}


@pytest.mark.parametrize("bad", ["nash-x", "nashm", "", 3, None])
def test_march_unknown_raises(bad):
    with pytest.raises(ValueError):
        March(bad)


@pytest.fixture
def restore_march():
    saved = get_march()
    yield
    set_march(saved)


def test_default_march_is_nash_m():
    # other tests may have called set_march; a fresh copy of the module shows the default
    import importlib.util

    spec = importlib.util.find_spec("edgequant.march")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.get_march() is fresh.March.NASH_M


def test_set_get_march(restore_march):
    for spelling, member in [("nash-e", March.NASH_E), ("NASH_P", March.NASH_P), (March.NASH_H, March.NASH_H),
                             ("nash-m", March.NASH_M)]:
        set_march(spelling)
        assert get_march() is member
        assert get_profile() is M.PROFILES[member]
        assert get_profile().march is member


def test_set_march_rejects_unknown(restore_march):
    set_march("nash-e")
    with pytest.raises(ValueError):
        set_march("nash-z")
    assert get_march() is March.NASH_E  # unchanged by the failed call


def test_get_profile_explicit_overrides_default(restore_march):
    set_march(March.NASH_E)
    assert get_profile("nash_h").march is March.NASH_H
    assert get_profile(March.NASH_P).march is March.NASH_P
    assert get_profile(None).march is March.NASH_E


@pytest.mark.parametrize("march", list(March))
def test_profiles_are_consistent(march):
    p = get_profile(march)
    assert p.march is march
    assert p.rounding == "half_to_even"  # the one rule of qmath
    assert p.multiplier_bits == 31 and p.acc_bits == 32
    assert p.wide_acc_bits > p.acc_bits and p.wide_acc_bits <= 64
    assert qint8 in p.activation_dtypes and qint16 in p.activation_dtypes and quint8 in p.activation_dtypes
    assert qint8 in p.weight_dtypes and qint4 in p.weight_dtypes
    assert p.lut_int8_entries == 256  # one entry per int8 value
    assert p.lut_segments > 0 and p.lut_segment_entries > 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.acc_bits = 64


def test_conv_float_output_by_march():
    assert not get_profile("nash-e").conv_float_output and not get_profile("nash-m").conv_float_output
    assert get_profile("nash-p").conv_float_output and get_profile("nash-h").conv_float_output
    assert M.OUTPUT_DTYPES == (qint32,)
