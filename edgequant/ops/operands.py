"""A quant-level node's arguments and inputs as a lowering reads them, and its int-level node.

Takes the ``LowerCtx`` of ``convert`` and a quant-level ``Node``; returns what a family's
lowering works with: a recorded argument (``arg``: positional or keyword; ``scalar``: a number,
``{"$float": "inf"}`` included; ``is_input``: a reference to one of the node's inputs), an
``Operand`` (a quantized tensor input at the int level: its name, ``QParams`` and the bound
``B = max |q - z|`` of its codes: the dtype's range, a producer's (A8) accumulator bound, or a
quantized constant's own values), the integer code of a real number on a grid
(``quantize_value``, A1), and the quant-level / int-level nodes by name (``find_qnode``,
``int_producer``). ``emit`` / ``emit_op`` write the int-level node, and ``emit_op`` also the
``identity`` node (``activation_identity``) of an activation its producer applied (the fusion
handshake is documented in ``elementwise``).
"""
from __future__ import annotations

import torch

from ..dtype import get_dtype
from ..ir import Node, QParams
from ..qmath import channel_vector, quantize


# -- the recorded call ---------------------------------------------------------------------------------
def arg(node: Node, pos: int, name: str, default=None):
    """The ``pos``-th positional argument of the recorded call, or keyword ``name``."""
    args, kwargs = node.attrs.get("args", []), node.attrs.get("kwargs", {})
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def is_input(a) -> bool:
    """Whether a recorded argument refers to one of the node's inputs (``{"$in": k}``)."""
    return isinstance(a, dict) and "$in" in a


def scalar(a):
    """A recorded scalar argument as a Python number (``{"$float": "inf"}`` included)."""
    if isinstance(a, dict) and "$float" in a:
        return float(a["$float"])
    return a


def input_name(node: Node, pos: int, name: str) -> str | None:
    """The value an argument (position ``pos`` or keyword ``name``) refers to, or None."""
    a = arg(node, pos, name)
    return node.inputs[a["$in"]] if is_input(a) else None


# -- nodes by name -------------------------------------------------------------------------------------
def find_qnode(ctx, name: str) -> Node | None:
    """The quant-level node called ``name``."""
    return next((n for n in ctx.q.nodes if n.name == name), None)


def int_producer(ctx, value: str) -> Node | None:
    """The int-level node (emitted so far) that writes ``value``."""
    for n in reversed(ctx.nodes):
        if value in n.outputs:
            return n
    return None


# -- operands ------------------------------------------------------------------------------------------
def quantize_value(v: float, qp: QParams) -> int:
    """The integer code of the real ``v`` on ``qp``'s (per-tensor) grid, by (A1); -inf -> qmin."""
    q = quantize(torch.tensor([float(v)], dtype=torch.float32), qp.scale[0], qp.zero_point[0], qp.dtype)
    return int(q[0])


def dtype_bound(qp: QParams) -> int:
    """``max |q - z|`` over the type's range (the worst channel when per channel)."""
    dt = get_dtype(qp.dtype)
    return max(max(dt.qmax - z, z - dt.qmin) for z in qp.zero_point)


class Operand:
    """A quantized tensor input of a node at the int level: its name, ``QParams`` and bound."""

    def __init__(self, name: str, qp: QParams, bound: int):
        self.name, self.qp, self.bound = name, qp, bound


def _constant_operand(ctx, node: Node, name: str):
    """A quantized constant's codes (added to the int level once) as an ``Operand``; a one-element
    float constant without ``QParams`` as a number."""
    qc, qp = ctx.q.constants[name], ctx.q.values[name].qparams
    if qp is None:
        if qc.numel() == 1 and qc.is_floating_point():
            return float(qc.reshape(()))
        raise ctx.error(node, f"input {name!r} is a float constant without qparams; quantize it "
                              "(a QuantStub) or make it a Python number")
    if name not in ctx.constants:
        q = quantize(qc, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)
        ctx.add_const(name, q, qp, qp.dtype)
    q = ctx.constants[name].to(torch.int64)
    z = channel_vector(qp.zero_point, q.dim(), qp.ch_axis)
    bound = int((q - z).abs().max()) if q.numel() else 0
    return Operand(name, qp, max(bound, 1))


def operand(ctx, node: Node, a):
    """Resolve a recorded argument: an ``Operand``, a Python number, or ``None`` (absent).

    A quantized constant (float with ``QParams`` at the quant level) is quantized here into an
    integer constant; a one-element float constant without ``QParams`` is a number.
    """
    if not is_input(a):
        return scalar(a)
    name = node.inputs[a["$in"]]
    if name is None:
        return None
    if name in ctx.q.constants:
        return _constant_operand(ctx, node, name)
    qp = ctx.qparams(name)
    if qp is None:
        v = ctx.value(name)
        raise ctx.error(node, f"input {name!r} ({v.dtype}) is not quantized at the integer level"
                        + ("; on a march with float conv outputs set ir._integer_conv = True" if v.dtype == "float32" else ""))
    bound = dtype_bound(qp)
    prod = int_producer(ctx, name)
    if prod is not None and prod.attrs.get("output") == "acc" and isinstance(prod.attrs.get("bound"), int):
        bound = min(bound, prod.attrs["bound"])   # the producer's (A8) accumulator bound
    return Operand(name, qp, bound)


# -- writing the int level -----------------------------------------------------------------------------
def emit(ctx, node: Node, op: str, inputs, outputs, attrs: dict, qp: QParams | None, out_dtype: str | None = None,
         like: str | None = None) -> None:
    """Write the int-level node and its output record(s)."""
    for o in outputs:
        ctx.set_value(o, qp.dtype if qp is not None else out_dtype, qp, like=like)
    ctx.emit(Node(node.name, op, tuple(inputs), tuple(outputs), attrs, node.source))


def activation_identity(act: Node, out: str, producer: str) -> Node:
    """The int-level node of an activation its producer applied: an ``identity`` (same name) from
    the producer's already-clamped output ``out`` to the activation's output."""
    return Node(act.name, "identity", (out,), tuple(act.outputs),
                {"target": "aten.alias.default", "args": [{"$in": 0}], "kwargs": {}, "fused_into_producer": producer},
                act.source)


def emit_op(ctx, node: Node, inputs, out: str, attrs: dict, qp: QParams, act: Node | None) -> None:
    """Emit a computing node on ``output_grid``'s results, and its fused activation (if any) as
    a pass-through the driver will not lower again."""
    if act is not None:
        attrs["fused_activation"] = act.name
    emit(ctx, node, node.op, inputs, [out], attrs, qp)
    if act is not None:
        ctx.lowered.add(act.name)
        for o in act.outputs:
            ctx.set_value(o, qp.dtype, qp)
        ctx.emit(activation_identity(act, out, node.name))
