"""Convert: ``Graph`` at level ``"quant"`` -> ``Graph`` at level ``"int"`` for a march.

Takes the IR that ``export`` wrote and a target; returns a new graph in which every tensor
between a ``quantize`` and a ``dequantize`` node is an integer tensor and every op is an
integer kernel (``ops/`` families: ``LOWER`` turns a quant-level node into int-level nodes,
``INT_KERNELS`` runs them). What convert itself does, beyond dispatching:

- ``quantize``/``dequantize`` nodes carry their qparams into integer types;
- a ``dequantize`` followed by a ``quantize`` (seed 002's "output that is also an input")
  becomes one integer ``rescale`` node;
- shared-grid ops (reshape, slicing, max pooling, ...) run their torch op on integer tensors;
- a ``quantize`` node given NaN raises (``edgequant.inputs``: +-Inf saturate);
- on NASH_P/NASH_H conv-like ops may output float32 directly, unless ``ir._integer_conv``.

Each family's lowering computes the accumulator bound of its node from the integer weights
and input ranges and refuses (``ConvertError`` naming the node) a node whose accumulator could
overflow the march's widest accumulator; it never wraps silently.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .check import check_graph
from .dtype import DTYPES, get_dtype
from .inputs import check_quantizable, value_label
from .ir import Graph, Node, QParams, Value
from .march import March, MarchProfile, get_march, get_profile
from .ops import OPS
from .qmath import dequantize, quantize, quantize_multiplier, requantize
from .run import call_target


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
        self.values[name] = Value(name, tuple(tensor.shape), dtype or _plain_dtype(tensor), qparams)
        return name

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


def _plain_dtype(t: torch.Tensor) -> str:
    return {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool",
            torch.int8: "int8", torch.int16: "int16", torch.uint8: "uint8"}.get(t.dtype, str(t.dtype))


def int_dtype_of(qp: QParams | None) -> str | None:
    return qp.dtype if qp is not None else None


# -- generic lowerings -----------------------------------------------------------------------------
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
                          _rescale_attrs(ctx, node.inputs[0], node.outputs[0]), node.source))
        return
    ctx.emit(Node(node.name, "quantize", node.inputs, node.outputs, {}, node.source))


def lower_dequantize(ctx: LowerCtx, node: Node) -> None:
    src = node.inputs[0]
    qp = ctx.qparams(src)
    ctx.set_value(node.outputs[0], "float32", None)
    if qp is None:  # already float (e.g. a NASH_P float conv output): identity
        ctx.emit(Node(node.name, "identity", node.inputs, node.outputs, {}, node.source))
        return
    ctx.emit(Node(node.name, "dequantize", node.inputs, node.outputs, {}, node.source))


def lower_shared(ctx: LowerCtx, node: Node) -> None:
    """Ops that move values: the same torch call on integer tensors, the input's qparams."""
    src = node.inputs[0] if node.inputs else None
    qp = ctx.qparams(src) if src is not None else None
    attrs = dict(node.attrs)
    for o in node.outputs:
        qv = ctx.q.values[o]
        if qv.dtype == "float32" and qp is not None:
            ctx.set_value(o, qp.dtype, qp)
        else:
            ctx.set_value(o, qv.dtype, None)
    ctx.emit(Node(node.name, node.op, node.inputs, node.outputs, attrs, node.source))


def lower_plain(ctx: LowerCtx, node: Node) -> None:
    """Index arithmetic and other ops on unquantized tensors: copied unchanged."""
    for o in node.outputs:
        qv = ctx.q.values[o]
        ctx.set_value(o, qv.dtype, None)
    ctx.emit(Node(node.name, node.op, node.inputs, node.outputs, {**node.attrs, "float": True}, node.source))


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
        inputs[k] = _emit_dequantize(ctx, i, node.source)
    if inputs == list(node.inputs):
        return node
    return Node(node.name, node.op, tuple(inputs), node.outputs, node.attrs, node.source)


def _fuse_rescale(ctx: LowerCtx) -> None:
    """``dequantize`` whose output only feeds a ``quantize`` (and maybe graph outputs):
    the quantize becomes an integer ``rescale`` of the dequantize's input."""
    consumers: dict[str, list[Node]] = {}
    for n in ctx.nodes:
        for i in n.inputs:
            if i is not None:
                consumers.setdefault(i, []).append(n)
    out = []
    deq_src = {n.outputs[0]: n.inputs[0] for n in ctx.nodes if n.op == "dequantize"}
    for n in ctx.nodes:
        if n.op == "quantize" and n.inputs[0] in deq_src:
            src = deq_src[n.inputs[0]]
            out.append(Node(n.name, "rescale", (src,), n.outputs, _rescale_attrs(ctx, src, n.outputs[0]), n.source))
        else:
            out.append(n)
    ctx.nodes = out


def _rescale_attrs(ctx: LowerCtx, src: str, dst: str) -> dict:
    a, b = ctx.qparams(src), ctx.qparams(dst)
    if b.ch_axis is not None:
        raise ConvertError(f"rescale into a per-channel tensor {dst!r} is not supported")
    reals = [s / b.scale[0] for s in a.scale]
    pairs = [ctx.multiplier(r) for r in reals]
    return {"m0": [p[0] for p in pairs], "shift": [p[1] for p in pairs], "ch_axis": a.ch_axis,
            "in_zero_point": list(a.zero_point), "out_zero_point": b.zero_point[0], "out_dtype": b.dtype}


def _dequantize_outputs(ctx: LowerCtx, outputs: list) -> list:
    """Graph outputs still quantized at the int level are dequantized (the quant level returns
    floats there): a model without stubs ends on a quantized op, e.g. a high-precision linear."""
    out = []
    for o in outputs:
        v = ctx.values.get(o) if isinstance(o, str) else None
        if v is None or v.qparams is None:
            out.append(o)
            continue
        out.append(_emit_dequantize(ctx, o, "graph output"))
    return out


def _emit_dequantize(ctx: LowerCtx, src: str, source: str) -> str:
    """Emit a ``dequantize`` of the int-level value ``src`` into a new float32 value, named
    ``{src}.dequantize`` (``_1``, ``_2``, ... when taken at either level); returns its name."""
    name, k = f"{src}.dequantize", 1
    while name in ctx.values or name in ctx.q.values:
        name, k = f"{src}.dequantize_{k}", k + 1
    ctx.values[name] = Value(name, ctx.values[src].shape, "float32", None)
    ctx.emit(Node(name, "dequantize", (src,), (name,), {}, source))
    return name


# -- integer kernels of the generic ops ---------------------------------------------------------------
def _per_channel(values, t: torch.Tensor, ch_axis) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.int64)
    if ch_axis is None or v.numel() == 1:
        return v.reshape(())
    shape = [1] * t.dim()
    shape[ch_axis % t.dim()] = -1
    return v.reshape(shape)


def k_quantize(g: Graph, node: Node, args):
    # NaN has no integer code: refuse it (+-Inf saturate); the policy is in edgequant.inputs
    check_quantizable(args[0], value_label(g.inputs, node.inputs[0]),
                      f"the integer model's quantize node {node.name!r}")
    qp = g.values[node.outputs[0]].qparams
    return quantize(args[0], qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)


def k_dequantize(g: Graph, node: Node, args):
    qp = g.values[node.inputs[0]].qparams
    return dequantize(args[0], qp.scale_tensor(), qp.zero_point_tensor(), qp.ch_axis)


def k_rescale(g: Graph, node: Node, args):
    a = node.attrs
    x = args[0].to(torch.int64) - _per_channel(a["in_zero_point"], args[0], a["ch_axis"])
    return requantize(x, _per_channel(a["m0"], x, a["ch_axis"]), _per_channel(a["shift"], x, a["ch_axis"]),
                      a["out_dtype"], a["out_zero_point"])


def k_call(g: Graph, node: Node, args):
    return call_target(node, args)


def k_identity(g: Graph, node: Node, args):
    # a recorded clone/contiguous/alias/dropout runs as itself: a later view may need its layout
    return call_target(node, args) if "target" in node.attrs else args[0]


GENERIC_KERNELS = {"quantize": k_quantize, "dequantize": k_dequantize, "rescale": k_rescale,
                   "identity": k_identity, "aten": k_call}


@functools.lru_cache(maxsize=None)
def _family_tables():
    """``(LOWER, INT_KERNELS)`` of every family, built once (the tables are literal dicts)."""
    from . import deploy
    from .ops import elementwise, matmul_like, nonlinear, norm_softmax, pool_reduce, shape

    lower, kernels = {}, dict(GENERIC_KERNELS)
    for fam in (matmul_like, elementwise, shape, pool_reduce, norm_softmax, nonlinear, deploy):
        lower.update(getattr(fam, "LOWER", {}))
        kernels.update(getattr(fam, "INT_KERNELS", {}))
    return lower, kernels


def run_int_node(g: Graph, node: Node, args, callables):
    """Run one int-level node (``run`` calls this for every node of an int graph)."""
    _, kernels = _family_tables()
    if node.op in ("segment_lut", "float_call"):
        fn = callables.get(node.attrs.get("callable_ref"))
        return fn(*args)
    if node.attrs.get("float"):   # copied by lower_plain (index math, float code): its torch call
        return call_target(node, args)
    k = kernels.get(node.op)
    if k is None:
        spec = OPS.get(node.op)
        if spec is not None and spec.rule == "shared":
            return call_target(node, args)
        raise RuntimeError(f"no integer kernel for op {node.op!r}")
    return k(g, node, args)


# -- the driver -------------------------------------------------------------------------------------
def convert(ir: Graph, march: March | str | None = None) -> Graph:
    """Lower ``ir`` (level ``"quant"``) to an integer-only graph for ``march``.

    Raises ``TypeError`` when ``ir`` is not a ``Graph`` (a prepared model: export it first),
    ``ConvertError`` for a graph already at level ``"int"``, ``ValueError`` for an unknown march.
    """
    from .argcheck import expect_graph

    expect_graph(ir, "convert", "ir")
    if ir.level != "quant":
        raise ConvertError(f"convert takes the IR that export returns (level 'quant'), got level {ir.level!r}")
    march = March(march) if march is not None else get_march()
    profile = get_profile(march)
    integer_conv = (not profile.conv_float_output) or ir._integer_conv
    ctx = LowerCtx(ir, profile, integer_conv)
    for name in ir.inputs:
        ctx.values[name] = ir.values[name]
    lower_table, _ = _family_tables()
    for node in ir.nodes:
        if node.name in ctx.lowered:
            continue
        if node.op == "quantize":
            lower_quantize(ctx, node)
        elif node.op == "dequantize":
            lower_dequantize(ctx, node)
        elif node.attrs.get("float") or node.op in ("aten", "float_call") or not _touches_quant(ctx, node):
            for i in node.inputs:
                if i is not None and i in ir.constants and i not in ctx.constants:
                    ctx.add_const(i, ir.constants[i])
            lower_plain(ctx, _float_inputs(ctx, node))
        elif "lut" in node.attrs:  # table ops, tensor / tensor division included (edgequant.lut)
            from .lut.ir_ops import lower_lut

            lower_lut(ctx, node)
        elif node.op in lower_table:
            lower_table[node.op](ctx, node)
        elif OPS.get(node.op) is not None and OPS[node.op].rule == "shared":
            lower_shared(ctx, node)
        else:
            raise ctx.error(node, "edgequant has no integer lowering for this op yet"
                            + (" (lookup tables arrive with the SegmentLUT issue)" if node.op in _TABLE_OPS else ""))
    _fuse_rescale(ctx)
    outputs = _dequantize_outputs(ctx, ir.outputs)
    used = {i for n in ctx.nodes for i in n.inputs if i is not None}
    constants = {k: v for k, v in ctx.constants.items() if k in used}
    values = {k: v for k, v in ctx.values.items() if k not in ctx.constants or k in constants}
    meta = {k: v for k, v in ir.meta.items()}
    meta.update({"march": march.value, "integer_conv": integer_conv})
    g = Graph("int", list(ir.inputs), outputs, values, ctx.nodes, constants, meta)
    check_graph(g)
    return g


_TABLE_OPS = {"layer_norm", "softmax", "log_softmax", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt",
              "reciprocal", "gelu", "silu", "hardswish", "hardsigmoid", "erf", "pow", "segment_lut", "div"}


def _touches_quant(ctx: LowerCtx, node: Node) -> bool:
    ins = [i for i in node.inputs if i is not None]
    outs_q = any(ctx.q.values[o].qparams is not None for o in node.outputs)
    return outs_q or any(ctx.qparams(i) is not None for i in ins) or node.attrs.get("high_precision", False) \
        or "fused_into" in node.attrs


__all__ = ["convert", "ConvertError", "LowerCtx", "run_int_node", "int_dtype_of", "DTYPES", "get_dtype"]
