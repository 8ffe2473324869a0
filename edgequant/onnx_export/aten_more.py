"""More recorded aten calls -> ONNX nodes: joining and splitting, moves, selections and comparisons,
scalar arithmetic, Python's operators on symbolic sizes and the float forms of the op table's
computing rows (``aten_spatial.py`` has reductions, pooling, resizing, transposed convolution).

Takes a ``ctx.Ctx`` (the node, its inputs' ONNX names, dtypes, ranks and shapes) and the ONNX
names of the outputs; appends standard ONNX nodes and returns the outputs' names, as the
translations of ``aten.py`` do (``ATEN_MORE`` is merged into ``aten.ATEN``). In the QDQ flavour
these ops run on float values between QDQ pairs; in the integer flavour the ones that only move,
select or compare codes run on the codes (8/16-bit codes on an exact int32 carrier where ONNX
Runtime has no kernel of their type). A translation refuses what it cannot write exactly (a
dynamic size it needs) with ``OnnxExportError`` naming the node.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from ..ops.names import DTYPES
from .ctx import INT64_MAX, ONNX_DTYPE, Ctx, Ref, arg, as_list

INT64_MIN = -(1 << 63)


def _const_like(c: Ctx, v, like: str) -> str:
    return v if isinstance(v, Ref) else c.scalar(v, like)


# -- joining and splitting ------------------------------------------------------------------------------
def cat(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("Concat", list(args[0]), out, axis=int(arg(args, kw, 1, "dim", 0)))


def stack(c: Ctx, out):
    args, kw = c.args()
    xs = list(args[0])
    d = int(arg(args, kw, 1, "dim", 0)) % (c.rank_of(xs[0]) + 1)
    parts = [c.on_grid(c.b.op("Unsqueeze", [x, c.b.i64([d])]), c.names.index(x)) for x in xs]
    return c.b.op("Concat", parts, out, axis=d)


def _split(c: Ctx, x: str, dim: int, sizes: list[int], out, squeeze: bool = False):
    if len(sizes) != len(out):
        raise c.fail(f"the split makes {len(sizes)} parts, the node has {len(out)} outputs")
    if not squeeze:
        return c.b.op("Split", [x, c.b.i64(sizes)], out, axis=dim)
    parts = c.b.op("Split", [x, c.b.i64(sizes)], len(sizes), axis=dim)
    parts = parts if isinstance(parts, list) else [parts]
    return [c.b.op("Squeeze", [p, c.b.i64([dim])], [o]) for p, o in zip(parts, out)]


def _even_sizes(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def split_tensor(c: Ctx, out):
    args, kw = c.args()
    x, size, dim = args[0], int(args[1]), int(arg(args, kw, 2, "dim", 0))
    n = c.static_dims(x, [dim], "split")[0]
    return _split(c, x, dim, _even_sizes(n, size), out)


def split_with_sizes(c: Ctx, out):
    args, kw = c.args()
    return _split(c, args[0], int(arg(args, kw, 2, "dim", 0)), [int(s) for s in args[1]], out)


def chunk(c: Ctx, out):
    args, kw = c.args()
    x, chunks, dim = args[0], int(args[1]), int(arg(args, kw, 2, "dim", 0))
    n = c.static_dims(x, [dim], "chunk")[0]
    return _split(c, x, dim, _even_sizes(n, max(1, -(-n // chunks))), out)


def unbind(c: Ctx, out):
    args, kw = c.args()
    x, dim = args[0], int(arg(args, kw, 1, "dim", 0))
    n = c.static_dims(x, [dim], "unbind")[0]
    return _split(c, x, dim % c.rank_of(x), [1] * n, out, squeeze=True)


def meshgrid(c: Ctx, out):
    """``meshgrid(tensors, indexing)``: 1-D tensor ``k`` reshaped to vary along its output dim (dims 0
    and 1 swapped for ``"xy"``), expanded to the sizes of all of them."""
    args, kw = c.args()
    xs = list(args[0])
    xy = arg(args, kw, 1, "indexing", "ij") == "xy" and len(xs) > 1
    if len(xs) != len(out):
        raise c.fail(f"meshgrid of {len(xs)} tensors has {len(out)} outputs")
    dims = [1, 0, *range(2, len(xs))] if xy else list(range(len(xs)))
    sizes = [c.b.op("Shape", [xs[d]]) for d in dims]
    shape = c.b.op("Concat", sizes, axis=0) if len(sizes) > 1 else sizes[0]
    res = []
    for k, (x, o) in enumerate(zip(xs, out)):
        view = [1] * len(xs)
        view[dims.index(k)] = -1
        res.append(c.b.op("Expand", [c.b.op("Reshape", [x, c.b.i64(view)]), shape], [o]))
    return res


# -- moves --------------------------------------------------------------------------------------------
def flip(c: Ctx, out):
    args, kw = c.args()
    dims = [int(d) for d in as_list(arg(args, kw, 1, "dims"), 1)]
    k = len(dims)
    return c.b.op("Slice", [args[0], c.b.i64([-1] * k), c.b.i64([INT64_MIN] * k), c.b.i64(dims),
                            c.b.i64([-1] * k)], out)


def narrow(c: Ctx, out):
    args, kw = c.args()
    x, dim, start, length = args[0], int(args[1]), args[2], args[3]
    if isinstance(start, Ref) or isinstance(length, Ref):
        raise c.fail("narrow with a symbolic start or length is not supported")
    return c.b.op("Slice", [x, c.b.i64([start]), c.b.i64([start + length]), c.b.i64([dim])], out)


def repeat(c: Ctx, out):
    args, _ = c.args()
    x, reps = args[0], list(args[1])
    k = len(reps) - c.rank_of(x)
    if k > 0:                                   # torch adds leading dims of size 1
        x = c.b.op("Unsqueeze", [x, c.b.i64(list(range(k)))])
    return c.b.op("Tile", [x, c.sizes(reps)], out)


def t(c: Ctx, out):
    x = c.args()[0][0]
    if c.rank_of(x) < 2:
        return c.b.op("Identity", [x], out)
    return c.b.op("Transpose", [x], out, perm=[1, 0])


def squeeze_all(c: Ctx, out):
    return c.b.op("Squeeze", [c.args()[0][0]], out)


def unflatten(c: Ctx, out):
    args, kw = c.args()
    x, sizes = args[0], list(args[2])
    r = c.rank_of(x)
    d = int(args[1]) % r
    shape = c.b.op("Shape", [x])
    parts = [c.b.op("Slice", [shape, c.b.i64([0]), c.b.i64([d])]), c.sizes(sizes),
             c.b.op("Slice", [shape, c.b.i64([d + 1]), c.b.i64([INT64_MAX])])]
    return c.b.op("Reshape", [x, c.b.op("Concat", parts, axis=0)], out)


def identity(c: Ctx, out):
    return c.b.op("Identity", [c.args()[0][0]], out)


def constant_pad_nd(c: Ctx, out):
    args, kw = c.args()
    x, p, value = args[0], [int(v) for v in args[1]], arg(args, kw, 2, "value", 0)
    r, k = c.rank_of(x), len(p) // 2
    begins = [0] * (r - k) + [p[2 * (k - 1 - i)] for i in range(k)]
    ends = [0] * (r - k) + [p[2 * (k - 1 - i) + 1] for i in range(k)]
    (x,), back = c.carried([x])
    inputs = [x, c.b.i64(begins + ends)] + ([c.scalar(value, x)] if value else [])
    return c.emit("Pad", inputs, out, back, mode="constant")


# -- selections and comparisons of values (exact on codes) ----------------------------------------------
def ne(c: Ctx, out):
    args, _ = c.args()
    a, b = args[0], args[1]
    return c.b.op("Not", [c.b.op("Equal", [a, _const_like(c, b, a)])], out)


def _elementwise(op_type: str):
    """maximum / minimum of two tensors."""
    def f(c: Ctx, out):
        args, _ = c.args()
        xs, back = c.carried([args[0], args[1]])
        return c.emit(op_type, xs, out, back)
    return f


def _bound(op_type: str, key: str):
    """clamp_min / clamp_max: ``Max`` / ``Min`` against a number or a tensor."""
    def f(c: Ctx, out):
        args, kw = c.args()
        (x, v), back = c.carried([args[0], arg(args, kw, 1, key)])
        return c.emit(op_type, [x, _const_like(c, v, x)], out, back)
    return f


def clamp_tensor(c: Ctx, out):
    args, kw = c.args()
    (x, lo, hi), back = c.carried([args[0], arg(args, kw, 1, "min"), arg(args, kw, 2, "max")])
    if lo is not None:
        x = c.b.op("Max", [x, _const_like(c, lo, x)])
    if hi is not None:
        x = c.b.op("Min", [x, _const_like(c, hi, x)])
    return c.emit("Identity", [x], out, back)


def where(c: Ctx, out):
    args, _ = c.args()
    cond = args[0]
    (a, b), back = c.carried([args[1], args[2]])
    like = a if isinstance(a, Ref) else b
    return c.emit("Where", [cond, _const_like(c, a, like), _const_like(c, b, like)], out, back)


def _extreme(op_type: str):
    """max/min (over a dim: values and indices; over all), amax/amin."""
    def f(c: Ctx, out):
        args, kw = c.args()
        target = c.node.attrs["target"]
        (x,), back = c.carried([args[0]])
        if target.endswith(".dim"):
            d, keep = int(args[1]), int(bool(arg(args, kw, 2, "keepdim", False)))
            vals = c.emit(f"Reduce{op_type}", [x, c.b.i64([d])], out[:1], back, keepdims=keep)
            if len(out) > 1:
                c.b.op(f"Arg{op_type}", [x], out[1:2], axis=d, keepdims=keep)
            return vals
        dims = as_list(arg(args, kw, 1, "dim", []), 1) if target.startswith("aten.am") else []
        keep = int(bool(arg(args, kw, 2, "keepdim", False))) if target.startswith("aten.am") else 0
        inputs = [x, c.b.i64([int(d) for d in dims])] if dims else [x]
        return c.emit(f"Reduce{op_type}", inputs, out, back, keepdims=keep)
    return f


# -- arithmetic with numbers, float forms of computing rows -------------------------------------------
def _scalar_binary(onnx_op: str, reverse: bool = False):
    """add/sub/mul/div with a number (``.Scalar``), rsub (``other - alpha * self``)."""
    def f(c: Ctx, out):
        args, kw = c.args()
        a, b = args[0], args[1]
        like = a if isinstance(a, Ref) else b
        a, b = _const_like(c, a, like), _const_like(c, b, like)
        alpha = arg(args, kw, 2, "alpha", 1)
        if reverse:
            a, b = b, a
        if alpha not in (1, None):
            b = c.b.op("Mul", [b, c.scalar(alpha, like)])
        return c.b.op(onnx_op, [a, b], out)
    return f


def true_div(c: Ctx, out):
    """``a / b``: true division, in float32 for integer tensors (as torch's ``div``)."""
    args, _ = c.args()
    like = args[0] if isinstance(args[0], Ref) else args[1]
    a, b = _const_like(c, args[0], like), _const_like(c, args[1], like)
    if c.dtype_of(like) not in ("float32", "float64"):
        a, b = (c.b.op("Cast", [v], to=ONNX_DTYPE["float32"]) for v in (a, b))
    return c.b.op("Div", [a, b], out)


def div_mode(c: Ctx, out):
    """``div(a, b, rounding_mode)``: ``None`` true division; ``"trunc"``/``"floor"`` rounded quotients."""
    args, kw = c.args()
    a, b, mode = args[0], args[1], arg(args, kw, 2, "rounding_mode")
    like = a if isinstance(a, Ref) else b
    a, b = _const_like(c, a, like), _const_like(c, b, like)
    if mode is None:
        return true_div(c, out)
    if c.dtype_of(like) in ("float32", "float64"):
        q = c.b.op("Div", [a, b])
        if mode == "floor":
            return c.b.op("Floor", [q], out)
        return c.b.op("Mul", [c.b.op("Sign", [q]), c.b.op("Floor", [c.b.op("Abs", [q])])], out)
    if mode == "trunc":                                       # integers: ONNX Div truncates
        return c.b.op("Div", [a, b], out)
    return _floor_div(c, a, b, out)


def leaky_relu(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("LeakyRelu", [args[0]], out, alpha=float(arg(args, kw, 1, "negative_slope", 0.01)))


def prelu(c: Ctx, out):
    """``PRelu``; torch's ``prelu`` weight of ``C`` slopes applies along dim 1 (ONNX broadcasts from
    the right, so it is reshaped to ``(C, 1, ...)``); ``_prelu_kernel``'s already broadcasts."""
    args, _ = c.args()
    x, w = args[0], args[1]
    r = c.rank_of(x)
    if c.node.attrs["target"] == "aten.prelu.default" and c.rank_of(w) == 1 and r > 2:
        w = c.b.op("Reshape", [w, c.b.i64([-1] + [1] * (r - 2))])
    return c.b.op("PRelu", [x, w], out)


def log_softmax(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("LogSoftmax", [args[0]], out, axis=int(arg(args, kw, 1, "dim")))


# -- casts and creation of index tensors and masks --------------------------------------------------
def _dtype(v, default: str) -> str:
    return v[1] if isinstance(v, tuple) and v and v[0] == "dtype" else default


def to(c: Ctx, out):
    """``to.dtype(x, dtype)``, ``to.device(x, device, dtype?)``, ``to.dtype_layout(x, dtype=...)``."""
    args, kw = c.args()
    x = args[0]
    dt = next((_dtype(v, "") for v in list(args[1:3]) + [kw.get("dtype")] if _dtype(v, "")), None)
    if dt is None or dt == c.dtype_of(x):
        return c.b.op("Identity", [x], out)
    return c.b.op("Cast", [x], out, to=ONNX_DTYPE[dt])


def type_as(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("CastLike", [args[0], args[1]], out)


def _filled(c: Ctx, shape: str, value, dt: str, out):
    v = bool(value) if dt == "bool" else (float(value) if dt.startswith("float") else int(value))
    return c.b.op("ConstantOfShape", [shape], out, value=helper.make_tensor("value", ONNX_DTYPE[dt], [1], [v]))


def _like(fill):
    """zeros_like / ones_like / empty_like (``fill`` a number) and full_like (``fill`` None: argument 1)."""
    def f(c: Ctx, out):
        args, kw = c.args()
        x = args[0]
        value = arg(args, kw, 1, "fill_value") if fill is None else fill
        return _filled(c, c.b.op("Shape", [x]), value, _dtype(kw.get("dtype"), c.dtype_of(x)), out)
    return f


def _new(fill):
    """new_zeros / new_empty (``fill`` a number) and new_full (``fill`` None: argument 2)."""
    def f(c: Ctx, out):
        args, kw = c.args()
        value = arg(args, kw, 2, "fill_value") if fill is None else fill
        return _filled(c, c.sizes(list(args[1])), value, _dtype(kw.get("dtype"), c.dtype_of(args[0])), out)
    return f


def _sized(fill):
    """zeros / ones (``fill`` a number) and full (``fill`` None: argument 1), float32 by default."""
    def f(c: Ctx, out):
        args, kw = c.args()
        value = arg(args, kw, 1, "fill_value") if fill is None else fill
        default = "float32" if fill is not None or isinstance(value, float) else \
            "bool" if isinstance(value, bool) else "int64"             # torch.full infers it from the value
        dt = _dtype(kw.get("dtype"), default)
        return _filled(c, c.sizes(list(args[0])), value, dt, out)
    return f


def linspace(c: Ctx, out):
    """``linspace(start, end, steps)`` of constant arguments is a constant: the values torch computes,
    as an initializer (torch's CPU kernel rounds differently inside and across its vector lanes,
    which ONNX ops would not reproduce bit for bit)."""
    args, kw = c.args()
    vals = [arg(args, kw, k, key) for k, key in ((0, "start"), (1, "end"), (2, "steps"))]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        raise c.fail("linspace needs constant start, end and steps")
    dt = _dtype(kw.get("dtype"), "float32")
    values = torch.linspace(vals[0], vals[1], int(vals[2]), dtype=DTYPES[dt])
    return c.b.op("Identity", [c.b.const(values.numpy())], out)


def _sym_operator(op_type: str, **attrs):
    """Python's operators on symbolic sizes (0-d int64 tensors) and ints: ``operator.mul(s, 12)``."""
    def f(c: Ctx, out):
        args, _ = c.args()
        xs = [a if isinstance(a, Ref) else c.b.const(np.asarray(a, np.int64)) for a in args]
        if op_type == "FloorDiv":
            return _floor_div(c, xs[0], xs[1], out)
        if op_type == "TrueDiv":
            return c.b.op("Div", [c.b.op("Cast", [x], to=ONNX_DTYPE["float64"]) for x in xs], out)
        if op_type == "NotEqual":
            return c.b.op("Not", [c.b.op("Equal", xs)], out)
        return c.b.op(op_type, xs, out, **attrs)
    return f


def _floor_div(c: Ctx, a: str, b: str, out):
    """``a // b`` on integers: ONNX ``Div`` truncates, so subtract 1 where the remainder is nonzero
    and its sign differs from the divisor's."""
    q = c.b.op("Div", [a, b])
    rem = c.b.op("Sub", [a, c.b.op("Mul", [q, b])])
    zero = c.b.op("Sub", [b, b])
    fix = c.b.op("And", [c.b.op("Not", [c.b.op("Equal", [rem, zero])]),
                         c.b.op("Xor", [c.b.op("Less", [rem, zero]), c.b.op("Less", [b, zero])])])
    return c.b.op("Sub", [q, c.b.op("CastLike", [fix, q])], out)


def floor_divide(c: Ctx, out):
    """``a // b``; a Python number on either side becomes a constant of the tensor side's dtype."""
    args, _ = c.args()
    a, b = args[0], args[1]
    if not isinstance(a, Ref):
        a = c.scalar(a, b)
    if not isinstance(b, Ref):
        b = c.scalar(b, a)
    if c.dtype_of(a) in ("float32", "float64"):
        return c.b.op("Floor", [c.b.op("Div", [a, b])], out)
    return _floor_div(c, a, b, out)


def _unary(*chain, **attrs):
    """A float function as a chain of unary ONNX ops (the last writes ``out``)."""
    def f(c: Ctx, out):
        y = c.args()[0][0]
        for i, op_type in enumerate(chain):
            y = c.b.op(op_type, [y], out if i == len(chain) - 1 else 1, **(attrs if i == len(chain) - 1 else {}))
        return y
    return f


def silu(c: Ctx, out):
    x = c.args()[0][0]
    return c.b.op("Mul", [x, c.b.op("Sigmoid", [x])], out)


def softplus(c: Ctx, out):   # torch's x past threshold / beta is log(1 + exp) there, in float32
    args, kw = c.args()
    x, beta = args[0], float(arg(args, kw, 1, "beta", 1.0))
    if beta == 1:
        return c.b.op("Softplus", [x], out)
    return c.b.op("Div", [c.b.op("Softplus", [c.b.op("Mul", [x, c.scalar(beta, x)])]), c.scalar(beta, x)], out)


def elu(c: Ctx, out):
    args, kw = c.args()
    if float(arg(args, kw, 2, "scale", 1.0)) != 1 or float(arg(args, kw, 3, "input_scale", 1.0)) != 1:
        raise c.fail("elu with scale or input_scale other than 1 has no ONNX form here")
    return c.b.op("Elu", [args[0]], out, alpha=float(arg(args, kw, 1, "alpha", 1.0)))


def celu(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("Celu", [args[0]], out, alpha=float(arg(args, kw, 1, "alpha", 1.0)))


def pow_scalar(c: Ctx, out):
    args, kw = c.args()
    return c.b.op("Pow", [args[0], c.scalar(arg(args, kw, 1, "exponent"), args[0])], out)


def pow_scalar_base(c: Ctx, out):
    """``pow.Scalar(base, exponent)``: a number raised to a tensor, ``Pow`` of a constant of the
    exponent's dtype."""
    args, kw = c.args()
    e = arg(args, kw, 1, "exponent")
    return c.b.op("Pow", [c.scalar(arg(args, kw, 0, "self"), e), e], out)


ATEN_MORE = {
    "aten.cat.default": cat, "aten.stack.default": stack, "aten.split.Tensor": split_tensor,
    "aten.split_with_sizes.default": split_with_sizes, "aten.chunk.default": chunk, "aten.unbind.int": unbind,
    "aten.flip.default": flip, "aten.narrow.default": narrow, "aten.repeat.default": repeat, "aten.t.default": t,
    "aten.squeeze.default": squeeze_all, "aten.unflatten.int": unflatten, "aten.detach_.default": identity,
    "aten.lift_fresh_copy.default": identity, "aten.constant_pad_nd.default": constant_pad_nd,
    "aten.ne.Scalar": ne, "aten.ne.Tensor": ne,
    "aten.maximum.default": _elementwise("Max"), "aten.minimum.default": _elementwise("Min"),
    "aten.clamp_min.default": _bound("Max", "min"), "aten.clamp_max.default": _bound("Min", "max"),
    "aten.clamp.Tensor": clamp_tensor, "aten.where.self": where, "aten.where.ScalarOther": where,
    "aten.where.ScalarSelf": where,
    "aten.max.dim": _extreme("Max"), "aten.max.default": _extreme("Max"), "aten.amax.default": _extreme("Max"),
    "aten.min.dim": _extreme("Min"), "aten.min.default": _extreme("Min"), "aten.amin.default": _extreme("Min"),
    "aten.add.Scalar": _scalar_binary("Add"), "aten.sub.Scalar": _scalar_binary("Sub"),
    "aten.mul.Scalar": _scalar_binary("Mul"), "aten.div.Scalar": _scalar_binary("Div"),
    "aten.rsub.Scalar": _scalar_binary("Sub", reverse=True), "aten.rsub.Tensor": _scalar_binary("Sub", reverse=True),
    "aten.div.Tensor_mode": div_mode, "aten.abs.default": _unary("Abs"), "aten.leaky_relu.default": leaky_relu,
    "aten.prelu.default": prelu, "aten._prelu_kernel.default": prelu,
    "aten.log_softmax.int": log_softmax, "aten._log_softmax.default": log_softmax,
    "aten.log.default": _unary("Log"), "aten.sqrt.default": _unary("Sqrt"),
    "aten.rsqrt.default": _unary("Sqrt", "Reciprocal"), "aten.reciprocal.default": _unary("Reciprocal"),
    "aten.silu.default": silu, "aten.hardswish.default": _unary("HardSwish"),
    "aten.hardsigmoid.default": _unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5), "aten.erf.default": _unary("Erf"),
    "aten.pow.Tensor_Scalar": pow_scalar, "aten.cos.default": _unary("Cos"), "aten.sin.default": _unary("Sin"),
    "aten.softplus.default": softplus, "aten.elu.default": elu, "aten.celu.default": celu,
    "aten.selu.default": _unary("Selu", alpha=1.6732632423543772, gamma=1.0507009873554805),
    "aten.log_sigmoid.default": _unary("Neg", "Softplus", "Neg"), "aten.mish.default": _unary("Mish"),
    "aten.pow.Tensor_Tensor": _elementwise("Pow"), "aten.pow.Scalar": pow_scalar_base,
    "_operator.add": _sym_operator("Add"), "_operator.sub": _sym_operator("Sub"), "_operator.mul": _sym_operator("Mul"),
    "_operator.floordiv": _sym_operator("FloorDiv"), "_operator.truediv": _sym_operator("TrueDiv"),
    "_operator.mod": _sym_operator("Mod", fmod=0), "_operator.neg": _sym_operator("Neg"),
    "_operator.eq": _sym_operator("Equal"), "_operator.ne": _sym_operator("NotEqual"),
    "_operator.lt": _sym_operator("Less"), "_operator.le": _sym_operator("LessOrEqual"),
    "_operator.gt": _sym_operator("Greater"), "_operator.ge": _sym_operator("GreaterOrEqual"),
    "aten.floor_divide.default": floor_divide,
    "aten.to.dtype": to, "aten.to.device": to, "aten.to.dtype_layout": to, "aten.type_as.default": type_as,
    "aten.zeros_like.default": _like(0), "aten.ones_like.default": _like(1), "aten.empty_like.default": _like(0),
    "aten.full_like.default": _like(None), "aten.new_zeros.default": _new(0), "aten.new_empty.default": _new(0),
    "aten.new_full.default": _new(None), "aten.zeros.default": _sized(0), "aten.ones.default": _sized(1),
    "aten.full.default": _sized(None), "aten.linspace.default": linspace,
    "aten.meshgrid.indexing": meshgrid, "aten.meshgrid.default": meshgrid,
}
