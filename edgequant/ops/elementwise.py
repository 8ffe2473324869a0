"""Elementwise arithmetic and piecewise-linear activations."""
from .spec import OpSpec

SPECS = [
    OpSpec("add", ("aten.add.Tensor", "aten.add.Scalar"), fuse_activation=True),
    OpSpec("sub", ("aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Scalar", "aten.rsub.Tensor")),
    OpSpec("mul", ("aten.mul.Tensor", "aten.mul.Scalar")),
    OpSpec("div", ("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode")),
    OpSpec("neg", ("aten.neg.default",)),
    OpSpec("abs", ("aten.abs.default",)),
    OpSpec("maximum", ("aten.maximum.default",)),
    OpSpec("minimum", ("aten.minimum.default",)),
    OpSpec("where", ("aten.where.self",)),
    OpSpec("clamp", ("aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default",
                     "aten.clamp_max.default", "aten.hardtanh.default", "aten.relu6.default"), activation=True),
    OpSpec("relu", ("aten.relu.default", "aten.relu_.default"), rule="shared", activation=True),
    OpSpec("leaky_relu", ("aten.leaky_relu.default",)),
    OpSpec("prelu", ("aten.prelu.default", "aten._prelu_kernel.default"), param_args=(1,)),
    OpSpec("compare", ("aten.gt.Scalar", "aten.gt.Tensor", "aten.ge.Scalar", "aten.ge.Tensor",
                       "aten.lt.Scalar", "aten.lt.Tensor", "aten.le.Scalar", "aten.le.Tensor",
                       "aten.eq.Scalar", "aten.eq.Tensor", "aten.ne.Scalar", "aten.ne.Tensor"), rule="shared"),
]
