"""The custom domain ``ai.edgequant``: integer ops standard ONNX cannot express exactly.

Takes nothing at import; ``conv_accumulate`` writes a ``ConvAccumulate`` node for the integer
flavour and ``REFERENCE_OPS`` lists the implementations to pass to
``onnx.reference.ReferenceEvaluator(model, new_ops=REFERENCE_OPS)``. ONNX Runtime has no kernel
for this domain; a file that uses it runs under the reference evaluator (or a runtime with these
ops registered). docs/onnx.md documents each op.

``ai.edgequant.ConvAccumulate`` (version 1)
    inputs:  ``x`` (int8/uint8/int16/int32 codes), ``w`` (integer weight codes)
    outputs: ``acc`` (int64): ``sum_{c,k} (x[n, c, o*s + k*d - p] - x_zero_point) * (w[o, c, k] - w_zero_point[o])``
             per group, zero padding in the centered domain (a padded real 0), no bias
    attributes: ``strides``, ``pads`` (begin..., end...), ``dilations``, ``group`` (ints),
             ``x_zero_point`` (int), ``w_zero_point`` (ints, one per output channel or one)
    It is what ``ConvInteger`` computes, for codes wider than 8 bits and without int32
    overflow: the sum is exact in int64 (convert's (A8) bound guarantees it fits).
"""
from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from ..ops.matmul_kernels import ref_conv
from .builder import CUSTOM_DOMAIN


def conv_accumulate(w, node, ins) -> str:
    """Append an ``ai.edgequant.ConvAccumulate`` node for an int-level conv; returns its int64 output."""
    a = node.attrs
    zw = a["w_zero_point"]
    return w.b.op("ConvAccumulate", [ins[0], ins[1]], domain=CUSTOM_DOMAIN, strides=list(a["stride"]),
                  pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), group=int(a["groups"]),
                  x_zero_point=int(a["x_zero_point"]), w_zero_point=[int(z) for z in (zw if isinstance(zw, list) else [zw])])


def conv_accumulate_np(x, w, strides, pads, dilations, group, x_zero_point, w_zero_point) -> np.ndarray:
    """The op's definition in int64: the integer model's own reference sum
    (``ops.matmul_kernels.ref_conv``, the tap-by-tap conv) on the centered codes."""
    import torch

    nd = w.ndim - 2
    if list(pads[:nd]) != list(pads[nd:]):
        raise ValueError("ConvAccumulate takes symmetric pads")
    wz = np.asarray(w_zero_point, dtype=np.int64)
    xc = torch.from_numpy(x.astype(np.int64) - x_zero_point)
    wc = torch.from_numpy(w.astype(np.int64) - (wz.reshape([-1] + [1] * (nd + 1)) if wz.size > 1 else wz.reshape(())))
    attrs = {"stride": list(strides), "padding": list(pads[:nd]), "dilation": list(dilations), "groups": group}
    return ref_conv(xc, wc, attrs).numpy()


class ConvAccumulate(OpRun):
    op_domain = CUSTOM_DOMAIN

    def _run(self, x, w, strides=None, pads=None, dilations=None, group=None, x_zero_point=None, w_zero_point=None):
        return (conv_accumulate_np(x, w, list(strides), list(pads), list(dilations), int(group), int(x_zero_point),
                                   list(w_zero_point)),)



class GatherElements(OpRun):
    """The standard ``GatherElements`` for ``ReferenceEvaluator``: onnx's own reference uses
    ``np.choose``, which takes at most 32 choices, and fails on longer axes (a position-id buffer
    of 512 entries); ``np.take_along_axis`` is the op's definition."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = 0 if axis is None else int(axis)
        idx = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, idx, axis=axis),)


REFERENCE_OPS = [ConvAccumulate, GatherElements]
