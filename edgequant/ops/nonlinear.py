"""Elementwise nonlinear functions: lookup tables in the integer model."""
from .spec import OpSpec

SPECS = [
    OpSpec("sigmoid", ("aten.sigmoid.default",)),
    OpSpec("tanh", ("aten.tanh.default",)),
    OpSpec("exp", ("aten.exp.default",)),
    OpSpec("log", ("aten.log.default",)),
    OpSpec("sqrt", ("aten.sqrt.default",)),
    OpSpec("rsqrt", ("aten.rsqrt.default",)),
    OpSpec("reciprocal", ("aten.reciprocal.default",)),
    OpSpec("gelu", ("aten.gelu.default",)),
    OpSpec("silu", ("aten.silu.default",)),
    OpSpec("hardswish", ("aten.hardswish.default",)),
    OpSpec("hardsigmoid", ("aten.hardsigmoid.default",)),
    OpSpec("erf", ("aten.erf.default",)),
    OpSpec("pow", ("aten.pow.Tensor_Scalar",)),
    OpSpec("segment_lut", ("segment_lut",)),
]
