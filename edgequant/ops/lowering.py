"""What every lowering shares: the context convert hands each op, and the generic lowerings.

Takes nothing at import; defines ``LowerCtx`` (the quant-level graph being converted, the
march's profile, and the int-level values, constants and nodes written so far), the error a
lowering raises (``ConvertError``, naming the node, its source line and what to do), and the
lowerings that are not one family's: ``lower_quantize``/``lower_dequantize`` (the integer
region's boundary), ``lower_shared`` (ops that move codes on their input's grid),
``lower_plain`` (index math and float ops, copied; their quantized inputs are dequantized
first, as the simulation hands them floats), ``rescale_attrs`` (one grid to another, A5/A7) and
``emit_dequantize``. Family files (``ops/*.py``) name these in their table entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ir import Graph, Node, QParams, Value
from ..march import MarchProfile
from ..qmath import quantize_multiplier


class ConvertError(RuntimeError):
    """A node cannot be converted; the message names it, its source line and what to do."""


@dataclass
class LowerCtx:
    """What a family's lowering function may read and write while converting one graph."""

    q: Graph                                    # the quant-level graph being converted
    profile: MarchProfile
    integer_conv: bool
    values: dict[str, Value] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    # quant-level nodes an earlier lowering already emitted (e.g. a relu/clamp fused into the
    # conv before it, which the conv lowered as a pass-through); the driver skips them
    lowered: set[str] = field(default_factory=set)

    # -- reading the quant level ---------------------------------------------------------------
    def qparams(self, name: str) -> QParams | None:
        """The qparams of a value as it is at the int level (falls back to the quant level)."""
        v = self.values.get(name) or self.q.values.get(name)
        return v.qparams if v is not None else None

    def value(self, name: str) -> Value:
        return self.values.get(name) or self.q.values[name]

    def const(self, name: str) -> torch.Tensor | None:
        """A constant of the quant graph (float weights) or one already added at the int level."""
        if name in self.constants:
            return self.constants[name]
        return self.q.constants.get(name)

    # -- writing the int level -----------------------------------------------------------------
    def add_const(self, name: str, tensor: torch.Tensor, qparams: QParams | None = None, dtype: str | None = None) -> str:
        self.constants[name] = tensor.contiguous()
        self.values[name] = Value(name, tuple(tensor.shape), dtype or plain_dtype(tensor), qparams)
        return name

    def copy_const(self, name: str) -> None:
        """Carry the quant-level constant ``name`` unchanged into the int level (once)."""
        if name in self.q.constants and name not in self.constants:
            self.add_const(name, self.q.constants[name])

    def set_value(self, name: str, dtype: str, qparams: QParams | None, like: str | None = None) -> None:
        shape = self.value(like or name).shape
        self.values[name] = Value(name, shape, dtype, qparams)

    def emit(self, node: Node) -> None:
        self.nodes.append(node)

    def multiplier(self, real: float, bits: int | None = None) -> tuple[int, int]:
        """``(m0, shift)`` of a real multiplier with the march's multiplier width (qmath A5)."""
        return quantize_multiplier(float(real), bits or self.profile.multiplier_bits)

    def error(self, node: Node, message: str) -> ConvertError:
        return ConvertError(f"cannot convert node {node.name!r} ({node.op}) from {node.source or '<unknown>'}: {message}")


_PLAIN = {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool",
          torch.int8: "int8", torch.int16: "int16", torch.uint8: "uint8"}


def plain_dtype(t: torch.Tensor) -> str:
    """The IR dtype name of an unquantized tensor."""
    return _PLAIN.get(t.dtype, str(t.dtype))


# -- the boundary of the integer region -----------------------------------------------------------
def lower_quantize(ctx: LowerCtx, node: Node) -> None:
    qp = ctx.q.values[node.outputs[0]].qparams
    ctx.set_value(node.outputs[0], qp.dtype, qp)
    src = ctx.values.get(node.inputs[0])
    if src is not None and src.qparams is not None:
        # a QuantStub on an already-integer tensor (e.g. a segmentation cut point): the codes
        # stay integer -- unchanged on the same grid, else an integer rescale
        if src.qparams == qp:
            ctx.emit(Node(node.name, "identity", node.inputs, node.outputs, {}, node.source))
        else:
            ctx.emit(Node(node.name, "rescale", node.inputs, node.outputs,
                          rescale_attrs(ctx, node.inputs[0], node.outputs[0]), node.source))
        return
    ctx.copy_const(node.inputs[0])   # a value export evaluated from parameters (param_subgraphs) is a constant
    ctx.emit(Node(node.name, "quantize", node.inputs, node.outputs, {}, node.source))


def lower_dequantize(ctx: LowerCtx, node: Node) -> None:
    src = node.inputs[0]
    qp = ctx.qparams(src)
    ctx.set_value(node.outputs[0], "float32", None)
    if qp is None:  # already float (e.g. a NASH_P float conv output): identity
        ctx.emit(Node(node.name, "identity", node.inputs, node.outputs, {}, node.source))
        return
    ctx.emit(Node(node.name, "dequantize", node.inputs, node.outputs, {}, node.source))


def rescale_attrs(ctx: LowerCtx, src: str, dst: str) -> dict:
    """The ``rescale`` kernel's attributes that move ``src``'s codes onto ``dst``'s grid."""
    a, b = ctx.qparams(src), ctx.qparams(dst)
    if b.ch_axis is not None:
        raise ConvertError(f"rescale into a per-channel tensor {dst!r} is not supported")
    reals = [s / b.scale[0] for s in a.scale]
    pairs = [ctx.multiplier(r) for r in reals]
    return {"m0": [p[0] for p in pairs], "shift": [p[1] for p in pairs], "ch_axis": a.ch_axis,
            "in_zero_point": list(a.zero_point), "out_zero_point": b.zero_point[0], "out_dtype": b.dtype}


def emit_dequantize(ctx: LowerCtx, src: str, source: str) -> str:
    """Emit a ``dequantize`` of the int-level value ``src`` into a new float32 value, named
    ``{src}.dequantize`` (``_1``, ``_2``, ... when taken at either level); returns its name."""
    name, k = f"{src}.dequantize", 1
    while name in ctx.values or name in ctx.q.values:
        name, k = f"{src}.dequantize_{k}", k + 1
    ctx.values[name] = Value(name, ctx.values[src].shape, "float32", None)
    ctx.emit(Node(name, "dequantize", (src,), (name,), {}, source))
    return name


# -- ops that move codes, and ops that stay float --------------------------------------------------
def lower_shared(ctx: LowerCtx, node: Node) -> None:
    """Ops that move values: the same torch call on integer tensors, the input's qparams."""
    src = node.inputs[0] if node.inputs else None
    qp = ctx.qparams(src) if src is not None else None
    for o in node.outputs:
        qv = ctx.q.values[o]
        if qv.dtype == "float32" and qp is not None:
            ctx.set_value(o, qp.dtype, qp)
        else:
            ctx.set_value(o, qv.dtype, None)
    ctx.emit(Node(node.name, node.op, node.inputs, node.outputs, dict(node.attrs), node.source))


_SHAPE_ONLY = ("aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten.size", "aten.dim")


def _float_inputs(ctx: LowerCtx, node: Node) -> Node:
    """``node`` (a float op) reading the float values of its quantized inputs: an integer tensor
    that a float op (a wrapped function, an op a setter left float) reads is dequantized first,
    as the quant level hands it the fake-quantized floats, not the integer codes."""
    if str(node.attrs.get("target", "")).startswith(_SHAPE_ONLY):
        return node  # reads the shape only, which the codes share
    inputs = list(node.inputs)
    for k, i in enumerate(inputs):
        v = ctx.values.get(i) if i is not None else None
        if v is None or v.qparams is None or i in ctx.constants:
            continue
        inputs[k] = emit_dequantize(ctx, i, node.source)
    if inputs == list(node.inputs):
        return node
    return Node(node.name, node.op, tuple(inputs), node.outputs, node.attrs, node.source)


# assertions torch.export records on a tensor's float metadata (``x.to(dtype)`` in DINOv2, CLIP):
# the quant level runs them; the int level holds codes where they assert float32, and drops them
_METADATA_ASSERTS = ("aten._assert_tensor_metadata.default",)


def lower_plain(ctx: LowerCtx, node: Node) -> None:
    """Index arithmetic and float ops: copied unchanged (marked ``float``), reading the float
    values of any quantized input and carrying the constants they read."""
    if node.attrs.get("target") in _METADATA_ASSERTS and any(ctx.qparams(i) is not None for i in node.inputs if i):
        return  # (_METADATA_ASSERTS) asserts float metadata of a value that is integer here
    for i in node.inputs:
        if i is not None:
            ctx.copy_const(i)
    node = _float_inputs(ctx, node)
    for o in node.outputs:
        ctx.set_value(o, ctx.q.values[o].dtype, None)
    ctx.emit(Node(node.name, node.op, node.inputs, node.outputs, {**node.attrs, "float": True}, node.source))
