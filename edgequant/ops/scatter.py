"""Writes into parts of a tensor and gathers: the functional forms of in-place slice writes,
``index_put`` and ``gather``.

Stage: ``convert`` (the rows' ``lower``), ``run`` at level "int" (their ``kernel``) and both ONNX
flavours (the rows' ``onnx`` translations). ``torch.export`` functionalises an in-place write into a
slice of an activation (``t[..., 0:2] = f(t[..., 0:2])``, ``t[..., 0:2] += ref``, ``z = y[..., :4];
z *= 0.5``, ``t[:, :, 0] = ...``) into ``slice_scatter`` / ``select_scatter`` of the written part
into the whole, with ``copy(dst, src)`` (``src`` broadcast to ``dst``'s shape) for a plain
assignment; a write through advanced indices (``canvas[:, idx] = values``) into ``index_put``.

| op | integer form | LSB vs simulation |
|---|---|---|
| ``slice_scatter``, ``select_scatter``, ``copy``, ``index_put`` (and its ``accumulate``: below) | like ``cat``: one output grid (its own fake-quant); every quantized input not already on it is rescaled by the ``affine`` kernel (``ops.affine``: one rounding), then the recorded op runs on the codes (a move) | <= 1 |
| ``gather`` (``torch.gather`` with an index tensor) | shared grid: the codes are gathered unchanged (``GatherElements``) | 0 |

The simulation fake-quantizes the inputs on their own grids and the op's float output on its
grid: the same two steps as the integer model, whose only difference is the one rounding of a
rescale (a value exactly between two output codes: float32 may take the other side), hence 1 LSB.
A canvas made by ``torch.zeros`` is a quantized constant whose 0.0 rescales to the output's zero
point exactly.

``index_put(..., accumulate=True)`` (a scatter-add) is the ``scatter_add`` kernel: the canvas and
the values become int64 terms ``(q - z) * m`` with one common shift ``n`` (``m = round(s / s_out *
2^n)``, the larger with the march's multiplier bits, ``n`` lowered until the canvas bound plus
(number of index positions) x (values' bound) fits 2^62), the recorded ``index_put`` adds them
exactly, and one rounding ``>> n`` (half to even) gives the output: <= 1 LSB (the simulation's
float32 sum of a few values is within ~1e-6 LSB of exact; a tie may round the other way).

ONNX: ``slice_scatter`` with step 1 and ``select_scatter`` are ``Concat`` of the two kept ``Slice``s
of the destination around the source (any batch size); another step ``ScatterElements`` with the
source's static positions; ``copy`` is ``Expand`` of the source to the destination's ``Shape``;
``index_put`` is ``ScatterND`` on the tensor transposed so that the indexed dims lead (index
tensors at any dims, torch's layout of the values for adjacent and for separated index dims). The integer flavour writes the same on the codes
after the rescale (``rescale_call``); the QDQ flavour on the dequantized values, with exact QDQ
pairs after the moved parts (``Ctx.on_grid``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ir import Node
from ..qmath import quantize_multiplier, rounding_shift_right, saturate
from .affine import fixed_point
from .call import call_target
from .elementwise import k_rescale_call, lower_rescale_call, output_grid
from .operands import Operand, arg, emit_op, operand
from .shape import lower_move
from .spec import OpSpec

_BIG = (1 << 63) - 1


def lower_index_put(ctx, node: Node) -> None:
    """``index_put``: without accumulation a move after rescaling (``rescale_call``); with
    ``accumulate=True`` the ``scatter_add`` kernel (one sum, one rounding)."""
    if not arg(node, 3, "accumulate", False):
        lower_rescale_call(ctx, node)
        return
    out, qp, lo, hi, act = output_grid(ctx, node)
    ops_ = []
    for pos, key in ((0, "self"), (2, "values")):
        o = operand(ctx, node, arg(node, pos, key))
        if not isinstance(o, Operand) or (o.qp.ch_axis is not None and len(o.qp.scale) > 1):
            raise ctx.error(node, f"index_put's {key} must be a per-tensor quantized tensor")
        ops_.append(o)
    idx = [i for i in node.inputs if i is not None and ctx.value(i).dtype in ("int64", "int32")]
    for i in idx:
        if i in ctx.q.constants and i not in ctx.constants:
            ctx.add_const(i, ctx.q.constants[i])
    count = 1
    for i in idx:
        shape = ctx.value(i).shape
        if not all(isinstance(d, int) for d in shape):
            raise ctx.error(node, "index_put(accumulate=True) needs index tensors of static shape (its int64 bound)")
        count = max(count, math.prod(shape))
    reals = [o.qp.scale[0] / qp.scale[0] for o in ops_]
    bounds = [ops_[0].bound, count * ops_[1].bound]
    n = quantize_multiplier(max(reals), ctx.profile.multiplier_bits)[1]
    while n >= 0 and sum(b * abs(fixed_point(r, n)) for b, r in zip(bounds, reals)) >= 1 << 62:
        n -= 1
    if n < 0:
        raise ctx.error(node, "index_put(accumulate=True): the sum of the canvas and every value overflows int64")
    attrs = {"kernel": "scatter_add", "target": node.attrs["target"], "args": node.attrs["args"],
             "kwargs": node.attrs["kwargs"], "zp": [o.qp.zero_point[0] for o in ops_],
             "m": [fixed_point(r, n) for r in reals], "shift": n, "out_zp": qp.zero_point[0], "lo": lo, "hi": hi,
             "out_dtype": qp.dtype}
    emit_op(ctx, node, node.inputs, out, attrs, qp, act)


def _scatter_add_terms(node: Node) -> tuple[int, int]:
    """The input positions of the canvas and of the values of a recorded ``index_put``."""
    return arg(node, 0, "self")["$in"], arg(node, 2, "values")["$in"]


def k_scatter_add(g, node: Node, args):
    """``z_out + round(((q_c - z_c) m_c + sum of the values' (q_v - z_v) m_v put at each index) / 2^n)``:
    the recorded ``index_put(accumulate=True)`` on the int64 terms (exact), one rounding."""
    a = node.attrs
    kc, kv = _scatter_add_terms(node)
    xs = list(args)
    xs[kc] = (args[kc].to(torch.int64) - a["zp"][0]) * a["m"][0]
    xs[kv] = (args[kv].to(torch.int64) - a["zp"][1]) * a["m"][1]
    y = rounding_shift_right(call_target(node, xs), a["shift"]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


def run_index_put(g, node: Node, args):
    """The row's kernel: ``scatter_add`` or ``rescale_call`` (by ``attrs["kernel"]``)."""
    return (k_scatter_add if node.attrs.get("kernel") == "scatter_add" else k_rescale_call)(g, node, args)


# -- ONNX -------------------------------------------------------------------------------------------------
def _cat_around(c, dst, part, dim: int, start, end, outs):
    """``Concat(dst[..:start], part, dst[end:..])`` along ``dim`` (the kept slices are moved
    copies of input 0: on its grid in the QDQ flavour)."""
    head = c.on_grid(c.b.op("Slice", [dst, c.b.i64([0]), c.b.i64([start]), c.b.i64([dim])]), 0)
    tail = c.on_grid(c.b.op("Slice", [dst, c.b.i64([end]), c.b.i64([_BIG]), c.b.i64([dim])]), 0)
    return c.b.op("Concat", [head, part, tail], outs, axis=dim)


def onnx_slice_scatter(c, outs):
    """``slice_scatter(dst, src, dim, start, end, step)``."""
    args, kw = c.args()
    dst, src = args[0], args[1]
    r = c.rank_of(dst)
    dim = int(arg_(args, kw, 2, "dim", 0)) % r
    start, end = arg_(args, kw, 3, "start", None), arg_(args, kw, 4, "end", None)
    step = int(arg_(args, kw, 5, "step", 1))
    n = c.shape_of(dst)[dim]
    start = 0 if start is None else int(start)
    end = _BIG if end is None else int(end)
    if isinstance(n, int):
        start, end = (start + n if start < 0 else start), (end + n if end < 0 else end)
        start, end = min(max(start, 0), n), min(max(end, start), n)
    elif start < 0 or end < 0:
        raise c.fail(f"slice_scatter with negative bounds along the dynamic dim {dim}")
    if step == 1:
        return _cat_around(c, dst, src, dim, start, end, outs)
    shape = c.shape_of(src)
    if not all(isinstance(s, int) for s in shape):
        raise c.fail(f"slice_scatter with step {step} needs the static shape of the source, got {shape}")
    pos = (start + step * np.arange(shape[dim], dtype=np.int64)).reshape([-1] + [1] * (r - 1 - dim))
    idx = c.b.i64(np.broadcast_to(pos, shape).copy(), "scatter_index")
    return c.b.op("ScatterElements", [dst, idx, src], outs, axis=dim)


def onnx_select_scatter(c, outs):
    """``select_scatter(dst, src, dim, index)``: ``src`` unsqueezed at ``dim`` between the slices."""
    args, kw = c.args()
    dst, src = args[0], args[1]
    r = c.rank_of(dst)
    dim, i = int(arg_(args, kw, 2, "dim", 0)) % r, int(arg_(args, kw, 3, "index", 0))
    if i < 0:
        i += c.static_dims(dst, [dim], "select_scatter with a negative index")[0]
    part = c.on_grid(c.b.op("Unsqueeze", [src, c.b.i64([dim])]), 1)
    return _cat_around(c, dst, part, dim, i, i + 1, outs)


def onnx_copy(c, outs):
    """``copy(dst, src)``: ``src`` broadcast to ``dst``'s shape (``Expand``), in ``dst``'s dtype."""
    args, _ = c.args()
    dst, src = args[0], args[1]
    same = c.dtype_of(src) == c.dtype_of(dst)
    y = c.b.op("Expand", [src, c.b.op("Shape", [dst])], outs if same else 1)
    return y if same else c.b.op("CastLike", [y, dst], outs)


def onnx_index_put(c, outs):
    """``index_put(dst, indices, values)`` with index tensors at some dims (``None``: a full slice):
    ``ScatterND`` on ``dst`` transposed so that the indexed dims lead, the index tensors broadcast
    and stacked, ``values`` expanded to the written part's shape in torch's layout (the broadcast
    index dims where the indexed dims were when they are adjacent, else first) and transposed
    alike; negative indices wrapped (static sizes)."""
    args, kw = c.args()
    dst, indices, values = args[0], list(args[1]), args[2]
    acc = bool(arg_(args, kw, 3, "accumulate", False))
    r = c.rank_of(dst)
    dims = [d for d, t in enumerate(indices) if t is not None]
    given = [indices[d] for d in dims]
    if not given or any(c.dtype_of(t) == "bool" for t in given):
        raise c.fail("index_put's ONNX form takes integer index tensors (a boolean mask: use masked_fill or where)")
    rest = [d for d in range(r) if d not in dims]
    sizes = c.static_dims(dst, dims, "index_put")
    bshape = list(np.broadcast_shapes(*[tuple(c.shape_of(t)) for t in given]))
    if not all(isinstance(s, int) for s in bshape):
        raise c.fail("index_put needs index tensors of static shape")
    cols = []
    for t, n in zip(given, sizes):
        t = c.b.op("CastLike", [t, c.b.i64(0)]) if c.dtype_of(t) != "int64" else t
        t = c.b.op("Where", [c.b.op("Less", [t, c.b.i64(0)]), c.b.op("Add", [t, c.b.i64(n)]), t])
        cols.append(c.b.op("Unsqueeze", [c.b.op("Expand", [t, c.b.i64(bshape)]), c.b.i64([-1])]))
    idx = c.b.op("Concat", cols, axis=-1)
    nb, shape = len(bshape), c.b.op("Shape", [dst])
    if dims == list(range(dims[0], dims[-1] + 1)):       # adjacent: the index dims replace them in place
        p = dims[0]
        head = [c.b.op("Slice", [shape, c.b.i64([0]), c.b.i64([p])])] if p else []
        full = c.b.op("Concat", head + [c.b.i64(bshape), c.b.op("Slice", [shape, c.b.i64([dims[-1] + 1]),
                                                                          c.b.i64([r])])], axis=0)
        perm_v = list(range(p, p + nb)) + list(range(p)) + list(range(p + nb, nb + len(rest)))
    else:                                                # apart: the index dims first (torch's rule)
        full = c.b.op("Concat", [c.b.i64(bshape), c.b.op("Gather", [shape, c.b.i64(rest)], axis=0)], axis=0)
        perm_v = list(range(nb + len(rest)))
    kv = c.names.index(values)
    vals = c.on_grid(c.b.op("Expand", [values, full]), kv)
    perm_d = dims + rest
    d_t = c.on_grid(c.b.op("Transpose", [dst], perm=perm_d), 0)
    if perm_v != sorted(perm_v):
        vals = c.on_grid(c.b.op("Transpose", [vals], perm=perm_v), kv)
    y = c.b.op("ScatterND", [d_t, idx, vals], **({"reduction": "add"} if acc else {}))
    return c.b.op("Transpose", [y], outs, perm=[perm_d.index(d) for d in range(r)])


def arg_(args, kwargs, pos, key, default=None):
    """Argument ``pos`` of a decoded call, or keyword ``key``, or ``default``."""
    return args[pos] if len(args) > pos else kwargs.get(key, default)


_CAT_LIKE = dict(kernel=k_rescale_call, int_attrs={"kernel": "named kernel"})

SPECS = [
    OpSpec("slice_scatter", ("aten.slice_scatter.default", "aten.select_scatter.default"), lower=lower_rescale_call,
           onnx={"aten.slice_scatter.default": onnx_slice_scatter,
                 "aten.select_scatter.default": onnx_select_scatter}, **_CAT_LIKE),
    OpSpec("copy", ("aten.copy.default",), lower=lower_rescale_call, onnx={"aten.copy.default": onnx_copy},
           **_CAT_LIKE),
    OpSpec("index_put", ("aten.index_put.default",), lower=lower_index_put, kernel=run_index_put,
           onnx={"aten.index_put.default": onnx_index_put},
           int_attrs={"kernel": {"rescale_call": {"target": "target", "args": "list", "kwargs": "dict",
                                                  "rescale": "rescales", "out_dtype": "qdtype"},
                                 "scatter_add": {"target": "target", "args": "list", "kwargs": "dict",
                                                 "zp": "ints", "m": "ints", "shift": "right shift", "out_zp": "int",
                                                 "lo": "int", "hi": "int", "out_dtype": "qdtype"}}}),
    OpSpec("gather", ("aten.gather.default",), rule="shared", lower=lower_move),
]
