"""Target profiles ("marches").

Takes a target name (``March.NASH_M`` or a string such as ``"nash-m"``) and returns the
profile record that every later stage reads: which dtypes activations and weights may have,
how wide the integer accumulators are, how many bits the requantization multiplier has, the
rounding rule of every shift, whether conv-like ops may output float32 directly, and whether
it runs float16 ops (``float16``: NASH_P and NASH_H; ``edgequant.float16``).
``set_march`` chooses the process-wide default that ``prepare`` and ``convert`` use when they
are not given a march explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .dtype import QuantDType, qint4, qint8, qint16, qint32, quint8
from .qmath import ROUNDING


class March(str, Enum):
    """A target NPU. Members compare equal to their lowercase names (``March.NASH_M == "nash-m"``)."""

    NASH_E = "nash-e"
    NASH_M = "nash-m"
    NASH_P = "nash-p"
    NASH_H = "nash-h"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "-")
            for member in cls:
                if member.value == key:
                    return member
        raise ValueError(f"unknown march {value!r}; use one of {[m.value for m in cls]} or a March member")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MarchProfile:
    """What a target can compute. All numbers are bits."""

    march: March
    activation_dtypes: tuple[QuantDType, ...]
    weight_dtypes: tuple[QuantDType, ...]
    acc_bits: int            # the ordinary accumulator of conv/linear/matmul
    wide_acc_bits: int       # the wider accumulator a node may be routed to when acc_bits can overflow
    multiplier_bits: int     # bits of the requantization multiplier M0 (M ~ M0 * 2^-shift)
    rounding: str            # the rounding rule of quantize, shifts and tables: qmath.ROUNDING (A6)
    conv_float_output: bool  # conv-like ops may output float32 directly (unless ir._integer_conv)
    lut_int8_entries: int    # table size for int8 inputs
    lut_segments: int        # segments of an int16 segmented table
    lut_segment_entries: int # entries per segment (interpolated linearly between them)
    float16: bool = False    # runs float16 ops (FakeCast, float16 qconfigs) between dequantize and quantize


_COMMON = dict(
    activation_dtypes=(qint8, quint8, qint16),
    weight_dtypes=(qint4, qint8, qint16),
    acc_bits=32,
    multiplier_bits=31,
    rounding=ROUNDING,
    lut_int8_entries=256,
    lut_segments=8,
    lut_segment_entries=64,
)

PROFILES: dict[March, MarchProfile] = {
    March.NASH_E: MarchProfile(March.NASH_E, wide_acc_bits=48, conv_float_output=False, **_COMMON),
    March.NASH_M: MarchProfile(March.NASH_M, wide_acc_bits=48, conv_float_output=False, **_COMMON),
    March.NASH_P: MarchProfile(March.NASH_P, wide_acc_bits=64, conv_float_output=True, float16=True, **_COMMON),
    March.NASH_H: MarchProfile(March.NASH_H, wide_acc_bits=64, conv_float_output=True, float16=True, **_COMMON),
}

OUTPUT_DTYPES = (qint32,)  # high-precision conv/linear outputs

_current: March = March.NASH_M


def set_march(march: March | str) -> None:
    """Choose the default target of ``prepare`` and ``convert``."""
    global _current
    _current = March(march)


def get_march() -> March:
    """The default target set by ``set_march`` (``March.NASH_M`` until then)."""
    return _current


def get_profile(march: March | str | None = None) -> MarchProfile:
    """The profile of ``march`` (default: the one ``set_march`` chose)."""
    return PROFILES[March(march) if march is not None else _current]
