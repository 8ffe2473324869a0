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

import itertools

import numpy as np
from onnx.reference.op_run import OpRun

from .builder import CUSTOM_DOMAIN


def conv_accumulate(w, node, ins) -> str:
    """Append an ``ai.edgequant.ConvAccumulate`` node for an int-level conv; returns its int64 output."""
    a = node.attrs
    zw = a["w_zero_point"]
    return w.b.op("ConvAccumulate", [ins[0], ins[1]], domain=CUSTOM_DOMAIN, strides=list(a["stride"]),
                  pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), group=int(a["groups"]),
                  x_zero_point=int(a["x_zero_point"]), w_zero_point=[int(z) for z in (zw if isinstance(zw, list) else [zw])])


def conv_accumulate_np(x, w, strides, pads, dilations, group, x_zero_point, w_zero_point) -> np.ndarray:
    """The op's definition in NumPy int64: one kernel tap at a time (im2col written out)."""
    nd = w.ndim - 2
    xc = x.astype(np.int64) - x_zero_point
    wz = np.asarray(w_zero_point, dtype=np.int64)
    wc = w.astype(np.int64) - (wz.reshape([-1] + [1] * (nd + 1)) if wz.size > 1 else wz.reshape(()))
    xc = np.pad(xc, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    n, c, size = xc.shape[0], xc.shape[1], xc.shape[2:]
    o, k = wc.shape[0], wc.shape[2:]
    out = [(size[i] - dilations[i] * (k[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    xg = xc.reshape(n, group, c // group, *size)
    wg = wc.reshape(group, o // group, c // group, *k)
    acc = np.zeros((n, group, o // group, *out), dtype=np.int64)
    for tap in itertools.product(*(range(e) for e in k)):
        win = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + strides[i] * (out[i] - 1) + 1, strides[i])
                    for i in range(nd))
        patch = xg[(slice(None),) * 3 + win]
        acc += np.einsum("ngc...,goc->ngo...", patch, wg[(slice(None),) * 3 + tap])
    return acc.reshape(n, o, *out)


class ConvAccumulate(OpRun):
    op_domain = CUSTOM_DOMAIN

    def _run(self, x, w, strides=None, pads=None, dilations=None, group=None, x_zero_point=None, w_zero_point=None):
        return (conv_accumulate_np(x, w, list(strides), list(pads), list(dilations), int(group), int(x_zero_point),
                                   list(w_zero_point)),)


REFERENCE_OPS = [ConvAccumulate]
