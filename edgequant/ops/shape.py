"""Ops that move values without changing them: their output shares the input's grid."""
from .spec import OpSpec

_S = dict(rule="shared")

SPECS = [
    OpSpec("reshape", ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
                       "aten.flatten.using_ints", "aten.unflatten.int"), **_S),
    OpSpec("permute", ("aten.permute.default", "aten.transpose.int", "aten.t.default"), **_S),
    OpSpec("squeeze", ("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default"), **_S),
    OpSpec("unsqueeze", ("aten.unsqueeze.default",), **_S),
    OpSpec("identity", ("aten.contiguous.default", "aten.clone.default", "aten.alias.default",
                        "aten.detach.default", "aten.detach_.default", "aten.lift_fresh_copy.default",
                        "aten.dropout.default"), **_S),
    OpSpec("expand", ("aten.expand.default", "aten.repeat.default"), **_S),
    OpSpec("slice", ("aten.slice.Tensor", "aten.select.int", "aten.narrow.default", "aten.index.Tensor"), **_S),
    OpSpec("split", ("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
                     "aten.unbind.int"), **_S),
    OpSpec("getitem", ("getitem",), **_S),
    OpSpec("flip", ("aten.flip.default",), **_S),
    OpSpec("pad", ("aten.pad.default", "aten.constant_pad_nd.default"), **_S),
    OpSpec("masked_fill", ("aten.masked_fill.Scalar",), **_S),
    OpSpec("cat", ("aten.cat.default",)),
    OpSpec("stack", ("aten.stack.default",)),
]
