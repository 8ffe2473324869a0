"""Normalisations and softmax: reductions combined with tables in the integer model."""
from .spec import OpSpec

SPECS = [
    OpSpec("batch_norm", ("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"),
           param_args=(1, 2, 3, 4)),
    OpSpec("layer_norm", ("aten.layer_norm.default",), param_args=(2, 3)),
    OpSpec("softmax", ("aten.softmax.int", "aten._softmax.default")),
    OpSpec("log_softmax", ("aten.log_softmax.int", "aten._log_softmax.default")),
]
