"""Recorded aten calls -> ONNX nodes: the float, index and shape ops both flavours share.

Takes an IR node whose ``attrs`` record an aten call (``target``, ``args``, ``kwargs``; see
docs/ir.md) and the ONNX names of its inputs; appends standard ONNX nodes to a ``Builder`` and
returns the ONNX names of its outputs. The same translation serves float tensors (the QDQ
flavour's float ops) and integer tensors (the integer flavour's reshapes, slices and index
arithmetic): every op here moves or compares values without rounding. ``ATEN`` also holds the
translations of ``aten_more.py`` (joining, splitting, selections, scalar arithmetic, casts and
creation, Python's operators on symbolic sizes), ``aten_spatial.py`` (reductions, pooling,
resizing, transposed convolution) and ``aten_index.py`` (index, mask and rounding arithmetic).
An op-table row may carry its own translations (``OpSpec.onnx``, in its family file), which take
precedence over ``ATEN``; a target with neither raises ``OnnxExportError`` naming the node.
"""
from __future__ import annotations

import numpy as np

from ..ops import spec_of
from . import aten_index, aten_more, aten_spatial
from .ctx import INT64_MAX, NP as _NP, ONNX_DTYPE as _ONNX_DTYPE, Ctx, Ref, arg as _arg, as_list as _list


# -- the translations, by aten target ---------------------------------------------------------------
def conv(c: Ctx, out):
    args, kw = c.args()
    x, w, bias = args[0], args[1], _arg(args, kw, 2, "bias")
    nd = c.rank_of(w) - 2
    stride, pad = _list(_arg(args, kw, 3, "stride", 1), nd), _list(_arg(args, kw, 4, "padding", 0), nd)
    if isinstance(pad, str) or any(isinstance(p, str) for p in pad):
        raise c.fail("string padding ('same'/'valid') is not supported; use integer padding")
    dil, groups = _list(_arg(args, kw, 5, "dilation", 1), nd), _arg(args, kw, 6, "groups", 1)
    return c.b.op("Conv", [x, w] + ([bias] if bias else []), out, strides=stride, pads=pad + pad,
                  dilations=dil, group=groups)


def linear(c: Ctx, out):
    """``Gemm(transB=1)`` on the input flattened to 2-D. (A DequantizeLinear weight feeding a
    ``MatMul`` is fused by ONNX Runtime into ``MatMulNBits``, which may compute with 8-bit
    activations and so no longer matches the simulation; ``Gemm`` keeps the float product.)"""
    args, kw = c.args()
    x, w, bias = args[0], args[1], _arg(args, kw, 2, "bias")
    inputs = [w, bias] if bias else [w]
    if c.rank_of(x) == 2:
        return c.b.op("Gemm", [x] + inputs, out, transB=1)
    k = c.b.op("Shape", [w], start=1, end=2)
    flat = c.on_grid(c.b.op("Reshape", [x, c.b.op("Concat", [c.b.i64([-1]), k], axis=0)]), 0)
    y = c.b.op("Gemm", [flat] + inputs, transB=1)
    shape = c.b.op("Concat", [c.b.op("Shape", [x], start=0, end=-1), c.b.op("Shape", [w], start=0, end=1)], axis=0)
    return c.b.op("Reshape", [y, shape], out)


def _binary(onnx_op):
    def f(c: Ctx, out):
        args, kw = c.args()
        a, b = args[0], args[1]
        if not isinstance(a, Ref):
            a, b = (c.scalar(a, b), b)
        if not isinstance(b, Ref):
            b = c.scalar(b, a)
        floats = [t for t in (a, b) if isinstance(t, Ref) and c.dtype_of(t) in ("float32", "float64")]
        if len(floats) == 1 and isinstance(a, Ref) and isinstance(b, Ref) and onnx_op in ("Add", "Sub", "Mul"):
            # torch promotes an integer tensor to the float operand's dtype (DeBERTa's log buckets)
            a, b = (t if t in floats else c.b.op("CastLike", [t, floats[0]]) for t in (a, b))
        alpha = kw.get("alpha", 1)
        if alpha != 1:
            b = c.b.op("Mul", [b, c.scalar(alpha, b)])
        if onnx_op in ("And", "Or") and c.dtype_of(a) != "bool":
            return c.b.op("Bitwise" + onnx_op, [a, b], out)
        return c.b.op(onnx_op, [a, b], out)
    return f


def _compare(onnx_op):
    def f(c: Ctx, out):
        args, _ = c.args()
        a, b = args[0], args[1]
        b = b if isinstance(b, Ref) else c.scalar(b, a)
        return c.b.op(onnx_op, [a, b], out)
    return f


def _unary(onnx_op, **attrs):
    return lambda c, out: c.b.op(onnx_op, [c.args()[0][0]], out, **attrs)


def clip(lo_default=None, hi_default=None):
    def f(c: Ctx, out):
        args, kw = c.args()
        x = args[0]
        lo = _arg(args, kw, 1, "min", lo_default) if lo_default is None or len(args) > 1 else lo_default
        hi = _arg(args, kw, 2, "max", hi_default) if hi_default is None or len(args) > 2 else hi_default
        bounds = [c.scalar(v, x) if v is not None else None for v in (lo, hi)]
        return c.b.op("Clip", [x] + bounds, out)
    return f


def bitwise_not(c: Ctx, out):
    x = c.args()[0][0]
    return c.b.op("Not" if c.dtype_of(x) == "bool" else "BitwiseNot", [x], out)


def max_pool(c: Ctx, out):
    args, kw = c.args()
    x, k = args[0], _list(args[1], 2)
    stride = _arg(args, kw, 2, "stride", []) or k
    pad = _list(_arg(args, kw, 3, "padding", 0), len(k))
    dil = _list(_arg(args, kw, 4, "dilation", 1), len(k))
    stride = _list(stride, len(k))
    ceil = bool(_arg(args, kw, 5, "ceil_mode", False))
    if ceil and c.shapes is not None and c.out_shapes:
        # ceil_mode only where it adds a window: onnx's reference evaluator adds one where torch and
        # ONNX Runtime do not (3x3 windows at stride 1, googlenet's)
        n_in, n_out = c.shape_of(x)[-len(k):], c.out_shapes[0][-len(k):]
        floor = [(n + 2 * p - d * (kk - 1) - 1) // s + 1 if isinstance(n, int) else None
                 for n, p, d, kk, s in zip(n_in, pad, dil, k, stride)]
        ceil = list(n_out) != floor
    return c.b.op("MaxPool", [x], out, kernel_shape=k, strides=stride, pads=pad + pad,
                  dilations=dil, ceil_mode=int(ceil))


def avg_pool(c: Ctx, out):
    args, kw = c.args()
    x, k = args[0], _list(args[1], 2)
    stride = _list(_arg(args, kw, 2, "stride", []) or k, len(k))
    pad = _list(_arg(args, kw, 3, "padding", 0), len(k))
    ceil = int(bool(_arg(args, kw, 4, "ceil_mode", False)))
    incl = int(bool(_arg(args, kw, 5, "count_include_pad", True)))
    if _arg(args, kw, 6, "divisor_override") is not None:
        raise c.fail("divisor_override is not supported")
    return c.b.op("AveragePool", [x], out, kernel_shape=k, strides=stride, pads=pad + pad, ceil_mode=ceil,
                  count_include_pad=incl)


def flatten(c: Ctx, out):
    args, kw = c.args()
    x, start, end = args[0], _arg(args, kw, 1, "start_dim", 0), _arg(args, kw, 2, "end_dim", -1)
    r = c.rank_of(x)
    start, end = start % r if r else 0, end % r if r else 0
    if end == r - 1 and start <= 1:             # ONNX Flatten always makes a 2-D tensor
        if start == 0:
            return c.b.op("Reshape", [x, c.b.i64([-1])], out)
        return c.b.op("Flatten", [x], out, axis=start)
    shape = c.b.op("Shape", [x])
    parts = [c.b.op("Slice", [shape, c.b.i64([0]), c.b.i64([start])]), c.b.i64([-1]),
             c.b.op("Slice", [shape, c.b.i64([end + 1]), c.b.i64([INT64_MAX])])]
    return c.b.op("Reshape", [x, c.b.op("Concat", parts, axis=0)], out)


def view(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Reshape", [args[0], c.sizes(args[1])], out)


def permute(c: Ctx, out):
    args, _ = c.args()
    r = c.rank_of(args[0])
    return c.b.op("Transpose", [args[0]], out, perm=[d % r for d in args[1]])


def unsqueeze(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Unsqueeze", [args[0], c.b.i64([args[1]])], out)


def squeeze(c: Ctx, out):
    args, _ = c.args()
    dims = args[1] if len(args) > 1 else None
    if dims is None:
        return c.b.op("Squeeze", [args[0]], out)
    return c.b.op("Squeeze", [args[0], c.b.i64(_list(dims, 1))], out)


def expand(c: Ctx, out):
    args, _ = c.args()
    sizes = [1 if (isinstance(s, int) and s == -1) else s for s in args[1]]   # -1 keeps the dim: broadcast 1
    return c.b.op("Expand", [args[0], c.sizes(sizes)], out)


def slice_(c: Ctx, out):
    args, kw = c.args()
    x, dim = args[0], _arg(args, kw, 1, "dim", 0)
    start, end, step = _arg(args, kw, 2, "start", None), _arg(args, kw, 3, "end", None), _arg(args, kw, 4, "step", 1)
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    return c.b.op("Slice", [x, c.sizes([start]), c.sizes([end]), c.b.i64([dim]), c.b.i64([step])], out)


def select(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Gather", [args[0], c.b.i64(args[2])], out, axis=args[1])


def index(c: Ctx, out):
    args, _ = c.args()
    x, idx = args[0], args[1]
    given = [(i, t) for i, t in enumerate(idx) if t is not None]
    if len(given) == 1:
        return c.b.op("Gather", [x, given[0][1]], out, axis=given[0][0])
    if [i for i, _ in given] == list(range(len(given))):      # leading advanced indices: broadcast, GatherND
        stacked = [c.b.op("Unsqueeze", [t, c.b.i64([-1])]) for _, t in given]
        shape = c.b.op("Shape", [c.b.op("Add", [c.b.op("Mul", [s, c.b.i64(0)]) for s in stacked[:2]])
                                 if len(stacked) > 1 else stacked[0]])
        stacked = [c.b.op("Expand", [s, shape]) for s in stacked]
        return c.b.op("GatherND", [x, c.b.op("Concat", stacked, axis=-1)], out)
    raise c.fail("advanced indexing with non-leading index tensors is not supported")


def embedding(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Gather", [args[0], args[1]], out, axis=0)


def masked_fill(c: Ctx, out):
    args, _ = c.args()
    x, mask, v = args
    dt = c.dtype_of(x)
    if dt in ("int8", "int16"):          # ONNX Runtime's Where has no 8/16-bit integer kernel: an exact int32 carrier
        wide = c.b.op("Cast", [x], to=_ONNX_DTYPE["int32"])
        v = v if isinstance(v, Ref) else c.b.const(np.asarray(v, dtype=np.int32))
        return c.b.op("Cast", [c.b.op("Where", [mask, v, wide])], out, to=_ONNX_DTYPE[dt])
    v = v if isinstance(v, Ref) else c.scalar(v, x)
    return c.b.op("Where", [mask, v, x], out)


def gather(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("GatherElements", [args[0], args[2]], out, axis=args[1])


def to_copy(c: Ctx, out):
    args, kw = c.args()
    dt = kw.get("dtype")
    if dt is None:
        return c.b.op("Identity", [args[0]], out)
    return c.b.op("Cast", [args[0]], out, to=_ONNX_DTYPE[dt[1]])


def arange(c: Ctx, out):
    args, kw = c.args()
    if len(args) == 1:
        start, end, step = 0, args[0], 1
    else:
        start, end, step = args[0], args[1], (args[2] if len(args) > 2 else 1)
    # torch's default dtype: float32 when a bound or the step is a Python float, else int64
    dt = (kw.get("dtype") or ("dtype", "float32" if any(isinstance(v, float) for v in (start, end, step))
                              else "int64"))[1]
    np_dt = _NP[dt]

    def s(v):
        if isinstance(v, Ref):
            return v if dt == "int64" else c.b.op("Cast", [v], to=_ONNX_DTYPE[dt])
        return c.b.const(np.asarray(v, dtype=np_dt))
    return c.b.op("Range", [s(start), s(end), s(step)], out)


def new_ones(c: Ctx, out):
    args, kw = c.args()
    dt = (kw.get("dtype") or ("dtype", c.dtype_of(args[0])))[1]
    from onnx import helper
    value = helper.make_tensor("value", _ONNX_DTYPE[dt], [1], [1])
    return c.b.op("ConstantOfShape", [c.sizes(args[1]) if args[1] else c.b.i64(np.zeros(0, np.int64))], out,
                  value=value)


def sym_size(c: Ctx, out):
    args, _ = c.args()
    d = args[1]
    shape = c.b.op("Shape", [args[0]], start=d, end=(d + 1) if d != -1 else None) if d != -1 else \
        c.b.op("Shape", [args[0]], start=-1)
    return c.b.op("Squeeze", [shape, c.b.i64([0])], out)


def identity(c: Ctx, out):
    return c.b.op("Identity", [c.args()[0][0]], out)


def pad(c: Ctx, out):
    args, kw = c.args()
    x, p = args[0], list(args[1])
    mode = _arg(args, kw, 2, "mode", "constant")
    value = _arg(args, kw, 3, "value", None)
    r = c.rank_of(x)
    k = len(p) // 2
    begins = [0] * (r - k) + [p[2 * (k - 1 - i)] for i in range(k)]
    ends = [0] * (r - k) + [p[2 * (k - 1 - i) + 1] for i in range(k)]
    (x,), back = c.carried([x])                   # ONNX Runtime has no int16 Pad: an int32 carrier
    inputs = [x, c.b.i64(begins + ends)]
    if mode == "constant" and value:
        inputs.append(c.scalar(value, x))
    mode = {"replicate": "edge"}.get(mode, mode)
    return c.emit("Pad", inputs, out, back, mode=mode)


def float_softmax(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Softmax", [args[0]], out, axis=args[1])


def float_layer_norm(c: Ctx, out):
    args, kw = c.args()
    x, shape = args[0], args[1]
    w, bias, eps = _arg(args, kw, 2, "weight"), _arg(args, kw, 3, "bias"), _arg(args, kw, 4, "eps", 1e-5)
    return c.b.op("LayerNormalization", [x, w, bias], out, axis=-len(shape), epsilon=float(eps))


def float_gelu(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("Gelu", [args[0]], out, approximate=kw.get("approximate", "none"))


ATEN = {
    "aten.conv1d.default": conv, "aten.conv2d.default": conv, "aten.conv3d.default": conv, "aten.linear.default": linear,
    "aten.matmul.default": _binary("MatMul"), "aten.bmm.default": _binary("MatMul"), "aten.mm.default": _binary("MatMul"),
    "aten.add.Tensor": _binary("Add"), "aten.sub.Tensor": _binary("Sub"), "aten.mul.Tensor": _binary("Mul"),
    "aten.div.Tensor": aten_more.true_div, "aten.__and__.Tensor": _binary("And"), "aten.__or__.Tensor": _binary("Or"),
    "aten.bitwise_and.Tensor": _binary("And"), "aten.bitwise_or.Tensor": _binary("Or"),
    "aten.eq.Scalar": _compare("Equal"), "aten.eq.Tensor": _compare("Equal"), "aten.ge.Scalar": _compare("GreaterOrEqual"),
    "aten.gt.Scalar": _compare("Greater"), "aten.le.Scalar": _compare("LessOrEqual"), "aten.lt.Scalar": _compare("Less"),
    "aten.ge.Tensor": _compare("GreaterOrEqual"), "aten.gt.Tensor": _compare("Greater"),
    "aten.le.Tensor": _compare("LessOrEqual"), "aten.lt.Tensor": _compare("Less"),
    "aten.bitwise_not.default": bitwise_not, "aten.neg.default": _unary("Neg"),
    "aten.relu.default": _unary("Relu"), "aten.relu_.default": _unary("Relu"), "aten.sigmoid.default": _unary("Sigmoid"),
    "aten.tanh.default": _unary("Tanh"), "aten.exp.default": _unary("Exp"), "aten.gelu.default": float_gelu,
    "aten.hardtanh.default": clip(-1.0, 1.0), "aten.hardtanh_.default": clip(-1.0, 1.0),
    "aten.relu6.default": clip(0.0, 6.0), "aten.clamp.default": clip(),
    "aten.max_pool2d.default": max_pool, "aten.max_pool3d.default": max_pool,
    "aten.avg_pool2d.default": avg_pool, "aten.flatten.using_ints": flatten,
    "aten.view.default": view, "aten._unsafe_view.default": view, "aten.reshape.default": view,
    "aten.permute.default": permute, "aten.unsqueeze.default": unsqueeze,
    "aten.squeeze.dim": squeeze, "aten.squeeze.dims": squeeze, "aten.expand.default": expand,
    "aten.slice.Tensor": slice_, "aten.select.int": select, "aten.index.Tensor": index,
    "aten.embedding.default": embedding, "aten.masked_fill.Scalar": masked_fill, "aten.gather.default": gather,
    "aten._to_copy.default": to_copy, "aten.arange.default": arange, "aten.arange.start": arange,
    "aten.arange.start_step": arange, "aten.new_ones.default": new_ones, "aten.sym_size.int": sym_size,
    "aten.clone.default": identity, "aten.alias.default": identity, "aten.contiguous.default": identity,
    "aten.dropout.default": identity, "aten.detach.default": identity, "aten.pad.default": pad,
    "aten.softmax.int": float_softmax, "aten._softmax.default": float_softmax, "aten.layer_norm.default": float_layer_norm,
    **aten_more.ATEN_MORE, **aten_spatial.ATEN_SPATIAL, **aten_index.ATEN_INDEX,
}

NO_OUTPUT = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default"}


def translate(c: Ctx, outs: list[str]):
    """Append the ONNX nodes of ``c.node``'s aten call writing ``outs``."""
    target = c.node.attrs.get("target")
    if target in NO_OUTPUT:
        return None
    spec = spec_of(c.node.op)
    fn = (spec.onnx or {}).get(target) if spec is not None else None
    fn = fn or ATEN.get(target)
    if fn is None:
        raise c.fail(f"no ONNX translation for the aten call {target}")
    return fn(c, outs)
