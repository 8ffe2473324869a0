"""Convert: ``Graph`` at level ``"quant"`` -> ``Graph`` at level ``"int"`` for a march.

Takes the IR that ``export`` wrote and a target; returns a new graph in which every tensor
between a ``quantize`` and a ``dequantize`` node is an integer tensor and every op is an
integer kernel. ``convert`` is a pipeline:

1. **per node**, through the op table (``ops.lower_node``): each row's ``lower`` writes the
   int-level nodes and integer constants of its op (``ops/`` families); float code and index
   math are copied; shared-grid ops (reshape, slicing, max pooling, ...) move codes;
2. **graph passes**: a ``dequantize`` that only feeds a ``quantize`` becomes one integer
   ``rescale`` (seed 002's "output that is also an input"); graph outputs still quantized are
   dequantized; constants and values nothing reads are pruned;
3. **the check** (``check.check_graph``) of the int-level graph, whose ``meta`` records the
   march and its rounding rule (``meta["rounding"]``, qmath A6; the check's rule I3).

Each family's lowering computes the accumulator bound of its node from the integer weights
and input ranges and refuses (``ConvertError`` naming the node) a node whose accumulator could
overflow the march's widest accumulator; it never wraps silently. On NASH_P/NASH_H conv-like
ops may output float32 directly, unless ``ir._integer_conv``, and float16 ops (``FakeCast``, float16
qconfigs: ``edgequant.float16``) run in float16 between a dequantize and a quantize; NASH_E and
NASH_M have no float16 and ``convert`` refuses those nodes, naming each. A ``quantize`` node given NaN
raises at run time (``edgequant.inputs``: +-Inf saturate).
"""
from __future__ import annotations

from .argcheck import expect_graph
from .check import check_graph
from .ir import Graph, Node
from .march import March, get_march, get_profile
from .ops import ConvertError, LowerCtx, is_dequantize, is_float16, is_quantize, lower_node
from .ops.lowering import emit_dequantize, rescale_attrs
from .qmath import ROUNDING


# -- graph passes ---------------------------------------------------------------------------------
def fuse_rescale(ctx: LowerCtx) -> None:
    """``dequantize`` whose output only feeds a ``quantize`` (and maybe graph outputs):
    the quantize becomes an integer ``rescale`` of the dequantize's input."""
    out = []
    deq_src = {n.outputs[0]: n.inputs[0] for n in ctx.nodes if is_dequantize(n.op)}
    for n in ctx.nodes:
        if is_quantize(n.op) and n.inputs[0] in deq_src:
            src = deq_src[n.inputs[0]]
            out.append(Node(n.name, "rescale", (src,), n.outputs, rescale_attrs(ctx, src, n.outputs[0]), n.source))
        else:
            out.append(n)
    ctx.nodes = out


def dequantize_outputs(ctx: LowerCtx, outputs: list) -> list:
    """Graph outputs still quantized at the int level are dequantized (the quant level returns
    floats there): a model without stubs ends on a quantized op, e.g. a high-precision linear."""
    out = []
    for o in outputs:
        v = ctx.values.get(o) if isinstance(o, str) else None
        out.append(o if v is None or v.qparams is None else emit_dequantize(ctx, o, "graph output"))
    return out


def prune(ctx: LowerCtx) -> tuple[dict, dict]:
    """``(values, constants)`` without the constants no node reads (and their values)."""
    used = {i for n in ctx.nodes for i in n.inputs if i is not None}
    constants = {k: v for k, v in ctx.constants.items() if k in used}
    values = {k: v for k, v in ctx.values.items() if k not in ctx.constants or k in constants}
    return values, constants


def check_float16(ir: Graph, march: March, profile) -> None:
    """Refuse, naming every one, the float16 nodes of ``ir`` on a march without float16."""
    bad = [n for n in ir.nodes if is_float16(n)]
    if not bad or profile.float16:
        return
    ops = tuple(n.name + "." for n in bad if n.attrs.get("float16"))
    bad = [n for n in bad if n.attrs.get("float16") or not n.name.startswith(ops)]   # an op's casts: the op says it
    lines = "\n".join(f"  {n.name!r} ({n.op}) from {n.source or '<unknown>'}" for n in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    ok = [m.value for m in March if get_profile(m).float16]
    raise ConvertError(
        f"cannot convert for {march.value}: these nodes compute in float16, which {march.value} does not run "
        f"(float16 runs on {', '.join(ok)}):\n{lines}{more}\nConvert for one of those marches "
        "(convert(ir, March.NASH_P)), or make these ops integer: give them an integer qconfig "
        "(qconfig_template.ModuleNameQconfigSetter({name: get_qconfig()}) instead of out_dtype=torch.float16 / "
        "all_fp16_qconfig_setter) and remove FakeCast modules, then prepare and calibrate again.")


# -- the pipeline -----------------------------------------------------------------------------------
def convert(ir: Graph, march: March | str | None = None) -> Graph:
    """Lower ``ir`` (level ``"quant"``) to an integer-only graph for ``march``.

    Raises ``TypeError`` when ``ir`` is not a ``Graph`` (a prepared model: export it first),
    ``ConvertError`` for a graph already at level ``"int"``, ``ValueError`` for an unknown march.
    """
    expect_graph(ir, "convert", "ir")
    if ir.level != "quant":
        raise ConvertError(f"convert takes the IR that export returns (level 'quant'), got level {ir.level!r}")
    march = March(march) if march is not None else get_march()
    profile = get_profile(march)
    if profile.rounding != ROUNDING:
        raise ConvertError(f"march {march.value} rounds {profile.rounding!r}; edgequant's integer kernels implement "
                           f"{ROUNDING!r} (qmath A6) only")
    check_float16(ir, march, profile)
    integer_conv = (not profile.conv_float_output) or ir._integer_conv
    ctx = LowerCtx(ir, profile, integer_conv)
    ctx.values.update({name: ir.values[name] for name in ir.inputs})

    for node in ir.nodes:                                  # 1. per node, through the op table
        if node.name not in ctx.lowered:
            lower_node(ctx, node)
    fuse_rescale(ctx)                                      # 2. graph passes
    outputs = dequantize_outputs(ctx, ir.outputs)
    values, constants = prune(ctx)
    meta = {**ir.meta, "march": march.value, "integer_conv": integer_conv, "rounding": profile.rounding}
    g = Graph("int", list(ir.inputs), outputs, values, ctx.nodes, constants, meta)
    check_graph(g)                                         # 3. the check
    return g


__all__ = ["convert", "ConvertError", "LowerCtx"]
