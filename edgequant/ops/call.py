"""Calling a node's recorded torch op: the one place where an IR call becomes a torch call.

Takes an IR ``Node`` whose ``attrs`` record a call (``target``, ``args``, ``kwargs`` in their
JSON form) and the tensors its inputs name; returns what the torch op returns. ``decode``
rebuilds the arguments (``{"$in": k}`` is the k-th input, ``$dtype``/``$device``/
``$memory_format``/``$float`` are typed literals); the target and every typed literal resolve
only through the allow-lists of ``ops.names``, never through ``getattr`` on a file's string.
Both levels use it: the quant level for every float op, the int level for shared-grid moves,
index math and the ops of ``rescale_call`` kernels.
"""
from __future__ import annotations

import torch

from ..ir import Node
from .names import DTYPES, MEMORY_FORMATS, device_ok, resolve


def decode(arg, tensors):
    """Rebuild a call argument from its IR form (``{"$in": k}`` -> ``tensors[k]``)."""
    if isinstance(arg, dict):
        if "$in" in arg:
            return tensors[arg["$in"]]
        if "$dtype" in arg:
            return DTYPES[arg["$dtype"]]   # allow-listed names (ops.names), never getattr'd
        if "$float" in arg:
            return float(arg["$float"])
        if "$device" in arg:
            if not device_ok(arg["$device"]):
                raise ValueError(f"{arg['$device']!r} is not a device edgequant runs on")
            return torch.device(arg["$device"])
        if "$memory_format" in arg:
            return MEMORY_FORMATS[arg["$memory_format"]]
        return {k: decode(v, tensors) for k, v in arg.items()}
    if isinstance(arg, list):
        return [decode(a, tensors) for a in arg]
    return arg


def call_target(node: Node, tensors: list):
    """Call the node's recorded torch op on ``tensors`` (the values named by ``node.inputs``)."""
    op = resolve(node.attrs["target"])
    if op is None:
        raise RuntimeError(f"node {node.name}: torch has no op {node.attrs['target']} that edgequant runs "
                           "(targets resolve only through the allow-list of edgequant.ops.names)")
    return op(*decode(node.attrs["args"], tensors), **decode(node.attrs["kwargs"], tensors))


def k_call(g, node: Node, args):
    """The int-level kernel of an op that runs its recorded torch call on integer tensors."""
    return call_target(node, args)
