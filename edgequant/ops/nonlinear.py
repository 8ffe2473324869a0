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


def _lower(ctx, node):
    from ..lut.ir_ops import lower_lut

    lower_lut(ctx, node)


def _kernel(g, node, args):
    from ..lut.ir_ops import k_lut

    return k_lut(g, node, args)


# Every op above is a table (edgequant.lut): one integer node "lut" each. softmax, layer_norm and
# tensor / tensor division lower through the same code (convert sends every node with
# attrs["lut"] there) to the integer nodes "softmax", "layer_norm" and "lut_div".
LOWER = {s.name: _lower for s in SPECS}
INT_KERNELS = {"lut": _kernel, "lut_div": _kernel, "softmax": _kernel, "layer_norm": _kernel}
