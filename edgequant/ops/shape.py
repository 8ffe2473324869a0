"""Ops that move values without changing them: their output shares the input's grid.

Stage: ``convert`` (the rows' ``lower``) and ``run`` at level "int" (their ``kernel``). Reshape-like ops,
slicing, splitting, flipping, expanding, ``swapaxes``/``movedim`` and ``pixel_shuffle``/``pixel_unshuffle``
run their recorded torch op on the integer codes (the driver's shared-grid fallback): bit exact,
0 LSB. What this family adds:

- ``pad`` (constant mode): the pad value is quantized onto the input's grid by (A1)
  (0.0 -> the zero point, so zero padding stays exact); a value off the grid differs from
  the simulation, which keeps it unquantized, by at most 1/2 LSB.
- ``masked_fill``: the fill value is quantized the same way; -inf -> qmin, +inf -> qmax (the
  simulation keeps the infinity, or a finite value beyond the grid, which the integer model
  saturates; a finite value inside the range and off the grid differs by at most 1/2 LSB, as
  for pad; on-grid values are bit exact).
- ``cat`` / ``stack``: their output has its own grid; every input not already on it is
  rescaled by the ``affine`` kernel (``ops.affine``: one rounding, <= 1 LSB), then the torch
  op concatenates the integers.
- a per-channel quantized tensor (an accumulator) cannot pass through a reshape-like op: its
  channel axis would move; such a graph is refused with an error naming the node.

The rows' bounds (``OpSpec.lsb``, checked per node by ``edgequant.analysis.op_lsb``): 0 for the
moves, 1/2 for ``pad`` and ``masked_fill`` (a fill value off the grid; saturation of a value
beyond the grid's range counts as agreement), 1 for ``cat`` / ``stack``.
"""
from __future__ import annotations

import math

from ..ir import Node
from .core import k_identity
from .elementwise import k_rescale_call, lower_rescale_call
from .lowering import lower_shared
from .operands import arg, is_input, quantize_value, scalar
from .spec import OpSpec


def _per_tensor_input(ctx, node: Node):
    src = node.inputs[0] if node.inputs else None
    qp = ctx.qparams(src) if src is not None else None
    if qp is not None and qp.ch_axis is not None and len(qp.scale) > 1:
        raise ctx.error(node, f"input {src!r} is quantized per channel (an accumulator); moving it would move "
                              "its channel axis. Requantize it first (give the producer an output fake-quant)")
    return qp


def lower_move(ctx, node: Node) -> None:
    """Reshape-like ops: the driver's shared-grid lowering, for per-tensor inputs."""
    _per_tensor_input(ctx, node)
    for i in node.inputs:  # index tensors and other integer constants the op reads
        if i is not None and i in ctx.q.constants and i not in ctx.constants:
            t = ctx.q.constants[i]
            if t.is_floating_point():
                raise ctx.error(node, f"it reads the float constant {i!r}, which has no integer form")
            ctx.add_const(i, t)
    lower_shared(ctx, node)


def _with_arg(node: Node, pos: int, name: str, value) -> Node:
    """A copy of ``node`` whose call has ``value`` as argument ``pos`` / keyword ``name``."""
    args, kwargs = list(node.attrs.get("args", [])), dict(node.attrs.get("kwargs", {}))
    if len(args) > pos:
        args[pos] = value
    else:
        kwargs[name] = value
    return Node(node.name, node.op, node.inputs, node.outputs, {**node.attrs, "args": args, "kwargs": kwargs},
                node.source)


def _fill_code(ctx, node: Node, value, qp) -> int:
    v = scalar(value)
    if is_input(v) or not isinstance(v, (int, float)) or isinstance(v, float) and math.isnan(v):
        raise ctx.error(node, f"the fill value {v!r} must be a number (not NaN)")
    return quantize_value(float(v), qp)  # (A1) saturates: -inf -> qmin, +inf -> qmax


def lower_pad(ctx, node: Node) -> None:
    qp = _per_tensor_input(ctx, node)
    if qp is None:
        raise ctx.error(node, "the padded tensor is not quantized")
    if node.attrs["target"] == "aten.constant_pad_nd.default":
        node = _with_arg(node, 2, "value", _fill_code(ctx, node, arg(node, 2, "value", 0.0), qp))
    elif (arg(node, 2, "mode", "constant") or "constant") == "constant":
        v = arg(node, 3, "value", None)
        node = _with_arg(node, 3, "value", _fill_code(ctx, node, 0.0 if v is None else v, qp))
    lower_move(ctx, node)


def lower_masked_fill(ctx, node: Node) -> None:
    qp = _per_tensor_input(ctx, node)
    if qp is None:
        raise ctx.error(node, "the filled tensor is not quantized")
    lower_move(ctx, _with_arg(node, 2, "value", _fill_code(ctx, node, arg(node, 2, "value"), qp)))


_DEPTH_TO_SPACE_TYPES = ("float32", "float64", "int8", "uint8")   # ONNX Runtime's CPU kernel has these


def onnx_pixel_shuffle(c, outs):
    """``pixel_shuffle(x, r)`` of a rank-4 tensor is ONNX ``DepthToSpace`` in ``CRD`` mode (both
    split channels as ``(C, r, r)`` and interleave the two ``r`` into height and width). ONNX
    Runtime has no int16 ``DepthToSpace``: an int16 tensor (static channels, height and width) is
    moved by ``Reshape`` to ``(N, C, r, r, H, W)``, ``Transpose`` to ``(N, C, H, r, W, r)`` and
    ``Reshape`` to ``(N, C, H r, W r)``, the same element order."""
    args, kwargs = c.args()
    x, r = args[0], int(args[1] if len(args) > 1 else kwargs.get("upscale_factor"))
    if c.rank_of(x) != 4:
        raise c.fail(f"ONNX DepthToSpace takes rank-4 tensors; this pixel_shuffle has rank {c.rank_of(x)}")
    if c.dtype_of(x) in _DEPTH_TO_SPACE_TYPES:
        return c.b.op("DepthToSpace", [x], outs, blocksize=r, mode="CRD")
    _, ch, h, w = c.shape_of(x)
    if not all(isinstance(d, int) for d in (ch, h, w)):
        raise c.fail(f"an int16 pixel_shuffle's ONNX form needs static channels, height and width, got {c.shape_of(x)}")
    split = c.b.op("Reshape", [x, c.b.i64([0, ch // (r * r), r, r, h, w])])
    moved = c.b.op("Transpose", [split], perm=[0, 1, 4, 2, 5, 3])
    return c.b.op("Reshape", [moved, c.b.i64([0, ch // (r * r), h * r, w * r])], outs)


def onnx_pixel_unshuffle(c, outs):
    """``pixel_unshuffle(x, r)`` of a rank-4 tensor: ``Reshape`` to ``(N, C, H/r, r, W/r, r)``,
    ``Transpose`` to ``(N, C, r, r, H/r, W/r)``, ``Reshape`` to ``(N, C r^2, H/r, W/r)`` (ONNX
    ``SpaceToDepth`` orders the channels ``(r, r, C)``, torch ``(C, r, r)``). Channels, height and
    width must be static; the batch dim is copied (Reshape's 0)."""
    args, kwargs = c.args()
    x, r = args[0], int(args[1] if len(args) > 1 else kwargs.get("downscale_factor"))
    if c.rank_of(x) != 4:
        raise c.fail(f"pixel_unshuffle's ONNX form takes rank-4 tensors; this one has rank {c.rank_of(x)}")
    _, ch, h, w = c.shape_of(x)
    if not all(isinstance(d, int) for d in (ch, h, w)):
        raise c.fail(f"pixel_unshuffle's ONNX form needs static channels, height and width, got {c.shape_of(x)}")
    split = c.b.op("Reshape", [x, c.b.i64([0, ch, h // r, r, w // r, r])])
    moved = c.b.op("Transpose", [split], perm=[0, 1, 3, 5, 2, 4])
    return c.b.op("Reshape", [moved, c.b.i64([0, ch * r * r, h // r, w // r])], outs)


def onnx_swapaxes(c, outs):
    """``transpose``/``swapaxes``/``swapdims(x, a, b)``: ONNX ``Transpose`` with ``a`` and ``b`` exchanged."""
    args, kwargs = c.args()
    r = c.rank_of(args[0])
    perm = list(range(r))
    a, b = args[1] % r, args[2] % r
    perm[a], perm[b] = perm[b], perm[a]
    return c.b.op("Transpose", [args[0]], outs, perm=perm)


def onnx_movedim(c, outs):
    """``movedim(x, source, destination)``: ONNX ``Transpose`` with the permutation torch builds."""
    args, kwargs = c.args()
    r = c.rank_of(args[0])
    src, dst = ([v] if isinstance(v, int) else list(v) for v in (args[1], args[2]))
    src, dst = [v % r for v in src], [v % r for v in dst]
    rest = iter(d for d in range(r) if d not in src)
    perm = [src[dst.index(k)] if k in dst else next(rest) for k in range(r)]
    return c.b.op("Transpose", [args[0]], outs, perm=perm)


def onnx_roll(c, outs):
    """``roll(x, shifts, dims)``: per dim, ``Concat(Slice(x, n - s, n), Slice(x, 0, n - s))`` along it
    (``s`` taken modulo a static ``n``; for a symbolic dim ``|s|`` must be below its size, as Swin's
    shifts of half a window are). A roll without ``dims`` (of the flattened tensor) is refused."""
    args, kwargs = c.args()
    x = args[0]
    shifts = args[1] if len(args) > 1 else kwargs.get("shifts")
    dims = args[2] if len(args) > 2 else kwargs.get("dims", [])
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or len(dims) != len(shifts) or not all(isinstance(v, int) for v in shifts + dims):
        raise c.fail("roll needs constant shifts and one dim per shift (a roll of the flattened tensor has no "
                     "ONNX form here)")
    shape, big = c.shape_of(x), (1 << 63) - 1
    cur = x
    for k, (s, d) in enumerate(zip(shifts, dims)):
        n = shape[d]
        if isinstance(n, int):
            s = s % n if n else 0
        if s == 0:
            continue
        # the result starts at n - s (s > 0) or at |s| (s < 0): index -s either way
        # each part is a moved copy of the input: the QDQ flavour puts it back on its grid (c.on_grid)
        first = c.on_grid(c.b.op("Slice", [cur, c.b.i64([-s]), c.b.i64([big]), c.b.i64([d])]), 0)
        second = c.on_grid(c.b.op("Slice", [cur, c.b.i64([0]), c.b.i64([-s]), c.b.i64([d])]), 0)
        last = k == len(shifts) - 1 or all((sh % shape[dd] if isinstance(shape[dd], int) and shape[dd] else sh) == 0
                                           for sh, dd in zip(shifts[k + 1:], dims[k + 1:]))
        cur = c.b.op("Concat", [first, second], outs if last else 1, axis=d)
        if last:
            return cur
    return c.b.op("Identity", [cur], outs)


_S = dict(rule="shared", lower=lower_move)

SPECS = [
    OpSpec("reshape", ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
                       "aten.flatten.using_ints", "aten.unflatten.int"), **_S),
    OpSpec("permute", ("aten.permute.default", "aten.transpose.int", "aten.t.default", "aten.swapaxes.default",
                       "aten.swapdims.default", "aten.movedim.int", "aten.movedim.intlist"),
           onnx={"aten.transpose.int": onnx_swapaxes, "aten.swapaxes.default": onnx_swapaxes,
                 "aten.swapdims.default": onnx_swapaxes,
                 "aten.movedim.int": onnx_movedim, "aten.movedim.intlist": onnx_movedim}, **_S),
    OpSpec("squeeze", ("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default"), **_S),
    OpSpec("unsqueeze", ("aten.unsqueeze.default",), **_S),
    OpSpec("identity", ("aten.contiguous.default", "aten.clone.default", "aten.alias.default",
                        "aten.detach.default", "aten.detach_.default", "aten.lift_fresh_copy.default",
                        "aten.dropout.default"), kernel=k_identity, onnx_int="identity", stub_form=True,
           int_attrs={}, int_inputs=("x",), **_S),   # int attrs: none (a recorded call, if any, is checked)
    OpSpec("expand", ("aten.expand.default", "aten.repeat.default"), **_S),
    OpSpec("slice", ("aten.slice.Tensor", "aten.select.int", "aten.narrow.default", "aten.index.Tensor"), **_S),
    OpSpec("split", ("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
                     "aten.unbind.int"), **_S),
    OpSpec("getitem", ("getitem",), **_S),
    OpSpec("flip", ("aten.flip.default",), **_S),
    OpSpec("roll", ("aten.roll.default",), onnx={"aten.roll.default": onnx_roll}, **_S),
    OpSpec("pixel_shuffle", ("aten.pixel_shuffle.default",), onnx={"aten.pixel_shuffle.default": onnx_pixel_shuffle},
           **_S),
    OpSpec("pixel_unshuffle", ("aten.pixel_unshuffle.default",),
           onnx={"aten.pixel_unshuffle.default": onnx_pixel_unshuffle}, **_S),
    OpSpec("pad", ("aten.pad.default", "aten.constant_pad_nd.default"), rule="shared", lower=lower_pad, lsb=0.5),
    OpSpec("masked_fill", ("aten.masked_fill.Scalar",), rule="shared", lower=lower_masked_fill, lsb=0.5),
    OpSpec("cat", ("aten.cat.default",), lower=lower_rescale_call, kernel=k_rescale_call,
           int_attrs={"kernel": "named kernel"}),
    OpSpec("stack", ("aten.stack.default",), lower=lower_rescale_call, kernel=k_rescale_call,
           int_attrs={"kernel": "named kernel"}),
]
