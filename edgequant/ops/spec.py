"""The record that describes one canonical op.

Takes nothing; defines ``OpSpec``, the row of the op table that every stage reads: the
canonical name (``conv2d``, ``add``, ...), the aten overloads that capture maps to it, and how
the op is quantized in simulation (its ``rule``). Later stages add their parts (integer
lowering, kernels, ONNX) to the op's entry in its family file, never elsewhere.

Quantization rules:

- ``compute``: the op's output gets its own fake-quant (observer + scale); the integer
  model requantizes into it.
- ``shared``: the output lies on the input's grid (reshapes, slicing, max pooling), so it
  reuses the input's qparams and the integer model moves integers unchanged.
- ``source``: the output is quantized from the op's weight (embedding: a quantized table).
- ``float``: the op stays float (wrapped code, leaf modules).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OpSpec:
    name: str                         # canonical lowercase op name
    targets: tuple[str, ...]          # aten overload names, e.g. "aten.conv2d.default"
    rule: str = "compute"             # compute | shared | source | float
    weight_arg: int | None = None     # position of the weight argument (a parameter)
    weight_ch_axis: int = 0           # output-channel axis of that weight
    bias_arg: int | None = None       # position of the bias argument
    fuse_activation: bool = False     # may absorb a following relu/relu6/clamp
    fuse_add: bool = False            # may feed an add at accumulator precision
    high_precision_output: bool = False  # may output int32 when it feeds only a DeQuantStub
    activation: bool = False          # relu-like: can be absorbed by a conv/linear/add
    param_args: tuple[int, ...] = ()  # parameter inputs folded into the integer op (norm affine)


def resolve(target: str):
    """The torch op overload named ``target`` (``"aten.add.Tensor"``), or None if absent.

    Only names on the allow-list (``ops.names.targets()``: the op table and its reviewed extras)
    resolve; any other string, e.g. one read from a file, gives None and is never looked up.
    """
    from .names import targets

    return targets().get(target) if isinstance(target, str) else None


def torch_op(name: str):
    """The aten overload ``name`` of this torch, or None. For the literal names of the op table
    only (``ops.names`` builds the allow-list with it); never pass it a string from a file."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    packet = getattr(torch.ops.aten, parts[1], None)
    return None if packet is None else getattr(packet, parts[2], None)
