"""Pooling, resizing and reductions."""
from .spec import OpSpec

SPECS = [
    OpSpec("max_pool", ("aten.max_pool1d.default", "aten.max_pool2d.default",
                        "aten.adaptive_max_pool2d.default"), rule="shared"),
    OpSpec("max", ("aten.max.dim", "aten.max.default", "aten.amax.default",
                   "aten.min.dim", "aten.min.default", "aten.amin.default"), rule="shared"),
    OpSpec("avg_pool", ("aten.avg_pool1d.default", "aten.avg_pool2d.default",
                        "aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default")),
    OpSpec("mean", ("aten.mean.dim", "aten.mean.default")),
    OpSpec("sum", ("aten.sum.dim_IntList", "aten.sum.default")),
    OpSpec("interpolate_nearest", ("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec"), rule="shared"),
    OpSpec("interpolate_bilinear", ("aten.upsample_bilinear2d.vec",)),
]
