"""The op table: every op, one row each, declared in its family's file.

``ALL_SPECS`` is the literal concatenation of the family lists (nothing registers by import);
``OPS`` maps an op name (a ``Node.op``) to its row, ``spec_for_target`` a captured call target
(an aten overload, ``operator.getitem``, a marker) to the row capture gives it. The stages ask
the table, not the op's name:

- ``lower_node(ctx, node)``: convert's per-node dispatch (the row's ``lower``; float and
  index-math nodes are copied; shared-grid rows name ``shape.lower_move``);
- ``run_int_node(g, node, args, callables)``: run's per-node dispatch at the int level (the
  row's ``kernel``, or its plain-int ``reference``);
- ``is_quantize``/``is_dequantize``/``calls_python``: the roles that graph walks need.

Families: ``core`` (the IR's own ops), ``matmul_like``, ``elementwise``, ``shape``,
``pool_reduce``, ``grid_sample``, ``norm_softmax``, ``nonlinear``, ``scatter``, ``atan2``, ``window``
(unfold and fold).
``docs/adding-an-op.md`` walks one op through.
"""
from __future__ import annotations

import operator

from . import (atan2, core, elementwise, grid_sample, matmul_forms, matmul_like, nonlinear, norm_softmax, pool_reduce,
               scatter, shape, window)
from .call import call_target
from .lowering import ConvertError, LowerCtx, lower_plain
from .nonlinear import lower_lut
from .names import resolve, set_table, torch_op  # noqa: F401  (resolve: the allow-listed lookup)
from .spec import OpSpec

ALL_SPECS: list[OpSpec] = [
    *core.SPECS, *matmul_like.SPECS, *matmul_forms.SPECS, *elementwise.SPECS, *shape.SPECS, *pool_reduce.SPECS,
    *grid_sample.SPECS, *norm_softmax.SPECS, *nonlinear.SPECS, *scatter.SPECS, *atan2.SPECS,
    *window.SPECS,
]
OPS: dict[str, OpSpec] = {s.name: s for s in ALL_SPECS}
SEGMENT_LUT: OpSpec = next(s for s in ALL_SPECS if s.python_call and s.table)   # a SegmentLUT leaf's row
FAKE_CAST: OpSpec = next(s for s in ALL_SPECS if s.kernel is core.k_fake_cast)  # FakeCast's row (float16 round trip)
set_table(ALL_SPECS)   # the allow-lists of ops.names: every row's name and targets

_BY_TARGET: dict[object, OpSpec] = {}
for _spec in ALL_SPECS:
    for _t in _spec.targets:
        if _t == "getitem":
            _BY_TARGET[operator.getitem] = _spec
        elif _t.startswith("aten."):
            _op = torch_op(_t)
            if _op is not None:
                _BY_TARGET[_op] = _spec


def spec_for_target(target) -> OpSpec | None:
    """The OpSpec of a graph call target, or None if edgequant does not support it."""
    return _BY_TARGET.get(target)


def spec_of(op) -> OpSpec | None:
    """The row of a ``Node.op`` (None for a name the table does not have)."""
    return OPS.get(op) if isinstance(op, str) else None


def is_quantize(op) -> bool:
    s = spec_of(op)
    return s is not None and s.boundary == "quantize"


def is_dequantize(op) -> bool:
    s = spec_of(op)
    return s is not None and s.boundary == "dequantize"


def calls_python(op) -> bool:
    """Whether nodes of ``op`` run a Python callable the graph holds (``wrap``, SegmentLUT)."""
    s = spec_of(op)
    return s is not None and s.python_call


def is_float16(node) -> bool:
    """Whether an IR node computes in float16: a ``fake_cast``, or an op of a float16 island
    (``attrs["float16"]``, written by export for an op whose qconfig is float16)."""
    return bool(node.attrs.get("float16")) or spec_of(node.op) is FAKE_CAST


def is_float_op(op) -> bool:
    """Whether nodes of ``op`` are kept float by the IR (a recorded aten call, float code)."""
    s = spec_of(op)
    return s is not None and s.float_op


# -- convert: one quant-level node -> int-level nodes -------------------------------------------
def _touches_quant(ctx: LowerCtx, node) -> bool:
    ins = [i for i in node.inputs if i is not None]
    outs_q = any(ctx.q.values[o].qparams is not None for o in node.outputs)
    return outs_q or any(ctx.qparams(i) is not None for i in ins) or node.attrs.get("high_precision", False) \
        or "fused_into" in node.attrs


def lower_node(ctx: LowerCtx, node) -> None:
    """Lower one quant-level node through its row (``convert`` calls this for every node)."""
    spec = spec_of(node.op)
    if spec is not None and (spec.boundary is not None or spec.float_op) and spec.lower is not None:
        spec.lower(ctx, node)   # the boundary; float rows (lower_plain, or fake_cast's own)
    elif node.attrs.get("float") or (spec is not None and spec.float_op) or not _touches_quant(ctx, node):
        lower_plain(ctx, node)
    elif "lut" in node.attrs:  # simulated with a table (edgequant.lut), tensor / tensor division included
        lower_lut(ctx, node)
    elif spec is not None and spec.lower is not None:
        spec.lower(ctx, node)
    else:
        raise ctx.error(node, "edgequant has no integer lowering for this op yet")


# -- run: one int-level node ---------------------------------------------------------------------
def run_int_node(g, node, args, callables, reference: bool = False):
    """Run one int-level node (``run`` calls this for every node of an int graph); with
    ``reference=True`` the rows' plain-int reference kernels run where they have one."""
    spec = spec_of(node.op)
    if spec is not None and spec.python_call:
        return callables.get(node.attrs.get("callable_ref"))(*args)
    if node.attrs.get("float"):   # copied by lower_plain (index math, float code): its torch call
        return call_target(node, args)
    k = None if spec is None else (spec.reference if reference and spec.reference else spec.kernel)
    if k is None:
        if spec is not None and spec.rule == "shared":
            return call_target(node, args)
        raise RuntimeError(f"no integer kernel for op {node.op!r}")
    return k(g, node, args)


__all__ = ["OPS", "ALL_SPECS", "OpSpec", "spec_for_target", "spec_of", "is_quantize", "is_dequantize",
           "calls_python", "is_float_op", "is_float16", "FAKE_CAST", "lower_node", "run_int_node", "ConvertError",
           "LowerCtx"]
