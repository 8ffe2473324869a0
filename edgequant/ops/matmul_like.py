"""Conv, linear, matmul and embedding: ops that reduce products into an accumulator."""
from .spec import OpSpec

_CONV = dict(weight_arg=1, bias_arg=2, fuse_activation=True, fuse_add=True, high_precision_output=True)

SPECS = [
    OpSpec("conv1d", ("aten.conv1d.default",), **_CONV),
    OpSpec("conv2d", ("aten.conv2d.default",), **_CONV),
    OpSpec("conv_transpose2d", ("aten.conv_transpose2d.input",), weight_ch_axis=1, **_CONV),
    OpSpec("linear", ("aten.linear.default",), **_CONV),
    OpSpec("matmul", ("aten.matmul.default", "aten.bmm.default", "aten.mm.default"),
           fuse_activation=True, high_precision_output=True),
    OpSpec("embedding", ("aten.embedding.default",), rule="source", weight_arg=0),
]
