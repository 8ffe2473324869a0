"""Recorded aten calls -> ONNX nodes: the index, mask and rounding arithmetic models do next to
their quantized values (position ids by ``cumsum``, masks by logical ops, ``argmax`` heads, ...).

Takes a ``ctx.Ctx`` and the ONNX names of the outputs, as ``aten.py``'s translations do (merged
into ``aten.ATEN``); each writes torch's semantics exactly on integer and boolean tensors (torch's
type promotions included: ``cumsum`` of integers or booleans is int64) and in float on float
tensors. Nothing here rounds a quantized value.
"""
from __future__ import annotations

from .ctx import ONNX_DTYPE, Ctx, Ref, arg, as_list

_FLOATS = ("float32", "float64")


def cumsum(c: Ctx, out):
    args, kw = c.args()
    x, d = args[0], int(args[1])
    dt = kw.get("dtype")
    dt = dt[1] if dt else (c.dtype_of(x) if c.dtype_of(x) in _FLOATS + ("int64",) else "int64")
    if dt != c.dtype_of(x):
        x = c.b.op("Cast", [x], to=ONNX_DTYPE[dt])
    return c.b.op("CumSum", [x, c.b.i64(d)], out)


def _arg_extreme(op_type: str):
    def f(c: Ctx, out):
        args, kw = c.args()
        x, d, keep = args[0], arg(args, kw, 1, "dim"), int(bool(arg(args, kw, 2, "keepdim", False)))
        (x,), _ = c.carried([x])
        if d is None:
            x, d, keep = c.b.op("Reshape", [x, c.b.i64([-1])]), 0, 0
        return c.b.op(op_type, [x], out, axis=int(d), keepdims=keep)
    return f


def _any_all(op_type: str):
    """any / all (over everything or a dim) as ReduceMax / ReduceMin of the truth as int32."""
    def f(c: Ctx, out):
        args, kw = c.args()
        x = c.b.op("Cast", [c.b.op("Cast", [args[0]], to=ONNX_DTYPE["bool"])], to=ONNX_DTYPE["int32"])
        d = arg(args, kw, 1, "dim") if not c.node.attrs["target"].endswith(".default") else None
        keep = int(bool(arg(args, kw, 2, "keepdim", False))) if d is not None else 0
        inputs = [x, c.b.i64([int(v) for v in as_list(d, 1)])] if d is not None else [x]
        return c.b.op("Cast", [c.b.op(op_type, inputs, keepdims=keep)], out, to=ONNX_DTYPE["bool"])
    return f


def _logical(op_type: str):
    def f(c: Ctx, out):
        args, _ = c.args()
        xs = [x if c.dtype_of(x) == "bool" else c.b.op("Cast", [x], to=ONNX_DTYPE["bool"]) for x in args[:2]]
        return c.b.op(op_type, xs, out)
    return f


def logical_not(c: Ctx, out):
    x = c.args()[0][0]
    return c.b.op("Not", [x if c.dtype_of(x) == "bool" else c.b.op("Cast", [x], to=ONNX_DTYPE["bool"])], out)


def _rounding(op_type: str):
    """floor / ceil / round / trunc / sign: float ops; on integers the value itself (sign: Sign)."""
    def f(c: Ctx, out):
        args, kw = c.args()
        x = args[0]
        if c.dtype_of(x) not in _FLOATS:
            return c.b.op("Sign" if op_type == "Sign" else "Identity", [x], out)
        if arg(args, kw, 1, "decimals", 0):
            raise c.fail("round with decimals is not supported")
        if op_type == "Trunc":
            return c.b.op("Mul", [c.b.op("Sign", [x]), c.b.op("Floor", [c.b.op("Abs", [x])])], out)
        return c.b.op(op_type, [x], out)
    return f


def remainder(c: Ctx, out):
    """Python's modulo (the sign of the divisor): ``Mod(fmod=0)`` on integers, ``a - floor(a / b) * b``
    on floats."""
    args, _ = c.args()
    a, b = args[0], args[1]
    b = b if isinstance(b, Ref) else c.scalar(b, a)
    if c.dtype_of(a) not in _FLOATS:
        return c.b.op("Mod", [a, b], out, fmod=0)
    return c.b.op("Sub", [a, c.b.op("Mul", [c.b.op("Floor", [c.b.op("Div", [a, b])]), b])], out)


def bitwise_xor(c: Ctx, out):
    args, _ = c.args()
    a, b = args[0], args[1]
    b = b if isinstance(b, Ref) else c.scalar(b, a)
    return c.b.op("Xor" if c.dtype_of(a) == "bool" else "BitwiseXor", [a, b], out)


def index_select(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Gather", [args[0], args[2]], out, axis=int(args[1]))


def expand_as(c: Ctx, out):
    args, _ = c.args()
    return c.b.op("Expand", [args[0], c.b.op("Shape", [args[1]])], out)


def masked_fill_tensor(c: Ctx, out):
    args, _ = c.args()
    x, mask, v = args
    (x, v), back = c.carried([x, v])
    return c.emit("Where", [mask, c.b.op("CastLike", [v, x]), x], out, back)


def trilu(upper: int):
    def f(c: Ctx, out):
        args, kw = c.args()
        return c.b.op("Trilu", [args[0], c.b.i64(int(arg(args, kw, 1, "diagonal", 0)))], out, upper=upper)
    return f


def _is(op_type: str):
    return lambda c, out: c.b.op(op_type, [c.args()[0][0]], out)


ATEN_INDEX = {
    "aten.cumsum.default": cumsum, "aten.argmax.default": _arg_extreme("ArgMax"),
    "aten.argmin.default": _arg_extreme("ArgMin"), "aten.any.default": _any_all("ReduceMax"),
    "aten.any.dim": _any_all("ReduceMax"), "aten.all.default": _any_all("ReduceMin"),
    "aten.all.dim": _any_all("ReduceMin"), "aten.logical_and.default": _logical("And"),
    "aten.logical_or.default": _logical("Or"), "aten.logical_xor.default": _logical("Xor"),
    "aten.logical_not.default": logical_not,
    "aten.bitwise_xor.Tensor": bitwise_xor, "aten.floor.default": _rounding("Floor"),
    "aten.ceil.default": _rounding("Ceil"), "aten.round.default": _rounding("Round"),
    "aten.trunc.default": _rounding("Trunc"), "aten.sign.default": _rounding("Sign"),
    "aten.remainder.Tensor": remainder, "aten.remainder.Scalar": remainder,
    "aten.index_select.default": index_select, "aten.expand_as.default": expand_as,
    "aten.masked_fill.Tensor": masked_fill_tensor, "aten.tril.default": trilu(0), "aten.triu.default": trilu(1),
    "aten.isnan.default": _is("IsNaN"), "aten.isinf.default": _is("IsInf"),
}
