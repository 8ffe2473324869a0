"""User-facing modules: stubs that bound the quantized region, FloatFunctional, SegmentLUT, FakeCast."""
from .fake_cast import FakeCast
from .functional_modules import FloatFunctional
from .segment_lut import SegmentLUT
from .stubs import DeQuantStub, QuantStub

__all__ = ["QuantStub", "DeQuantStub", "FloatFunctional", "SegmentLUT", "FakeCast"]
