"""Products written in other forms that lower through ``matmul_like``: ``addmm`` and ``einsum``.

Stage: ``convert`` (the rows' ``lower``); the int-level nodes they write are ``linear`` and
``matmul`` nodes (and ``permute`` moves), run and exported by those rows, so the bounds of
``matmul_like`` hold (its docstring: 1 LSB against the simulation).

- ``addmm(bias, x, w)`` with a constant ``w`` of shape ``(in, out)`` (GPT-2's ``Conv1D``): the
  weight is fake-quantized per output column (``weight_ch_axis=1``) and lowers as a ``linear``
  with ``w.T``; ``beta``/``alpha`` other than 1 are refused. ONNX (QDQ): ``Gemm``.
- ``einsum`` that is a batched matrix product (``"bhid,bhjd->bhij"``; Funnel's ``"binh,tnh->bnit"``
  with a constant broadcast operand, ``"bnij,bjnd->bind"``): its operands are permuted to
  ``(batch..., i, k)`` and ``(batch..., k, j)`` (a per-tensor quantized constant at convert time; an
  operand without leading batch letters broadcasts), it lowers as ``matmul`` and a ``permute``
  (codes moved) puts the product in the equation's output order; any other equation is refused by
  node name. ONNX (QDQ): ``Einsum``.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node, QParams, Value
from .matmul_kernels import k_reduce, k_reduce_reference
from .matmul_like import _activation_qparams, _fresh, lower_matmul, lower_weighted
from .operands import arg, input_name
from .spec import OpSpec


def onnx_addmm(c, outs):
    """``addmm(bias, x, w, beta, alpha)`` is ONNX ``Gemm(x, w, bias)`` (2-D ``x`` and ``w``)."""
    args, kwargs = c.args()
    beta = args[3] if len(args) > 3 else kwargs.get("beta", 1)
    alpha = args[4] if len(args) > 4 else kwargs.get("alpha", 1)
    if float(alpha) != 1.0 or float(beta) != 1.0:
        raise c.fail("addmm with beta or alpha other than 1 is not exported")
    return c.b.op("Gemm", [args[1], args[2], args[0]], outs)


def lower_addmm(ctx, node: Node) -> None:
    """``addmm(bias, x, w)`` with a constant ``w`` of shape ``(in, out)`` (GPT-2's ``Conv1D``) is a
    linear with weight ``w.T``: it lowers as ``linear`` (the int-level node is a ``linear``, with the
    transposed codes; per-channel scales move from axis 1 to axis 0). ``beta``/``alpha`` other than 1
    are refused."""
    for pos, key in ((3, "beta"), (4, "alpha")):
        v = arg(node, pos, key, 1)
        if v not in (1, 1.0, None):
            raise ctx.error(node, f"addmm with {key}={v!r} has no integer form (only beta = alpha = 1)")
    b_name, x_name, w_name = input_name(node, 0, "self"), input_name(node, 1, "mat1"), input_name(node, 2, "mat2")
    w, w_val = ctx.q.constants.get(w_name) if w_name else None, ctx.q.values.get(w_name) if w_name else None
    if w is None or w_val is None or w_val.qparams is None or w.dim() != 2:
        raise ctx.error(node, "its second matrix must be a quantized 2-D constant weight (in, out)")
    qp = w_val.qparams
    if qp.ch_axis is not None and len(qp.scale) > 1 and qp.ch_axis % 2 != 1:
        raise ctx.error(node, f"its weight is quantized along axis {qp.ch_axis}; expected the output axis 1")
    wt_name = _fresh(ctx, f"{w_name}.t")
    wt_qp = QParams(qp.dtype, qp.scale, qp.zero_point, 0 if qp.ch_axis is not None else None)
    q2 = Graph(ctx.q.level, ctx.q.inputs, ctx.q.outputs, {**ctx.q.values, wt_name: Value(wt_name, (w.shape[1], w.shape[0]),
               w_val.dtype, wt_qp)}, ctx.q.nodes, {**ctx.q.constants, wt_name: w.t().contiguous()}, ctx.q.meta)
    ins = (x_name, wt_name, b_name)
    args = [{"$in": 0}, {"$in": 1}, {"$in": 2} if b_name is not None else None]
    attrs = {k: v for k, v in node.attrs.items() if k not in ("target", "args", "kwargs")}
    linear = Node(node.name, "linear", ins, node.outputs, {**attrs, "target": "aten.linear.default", "args": args,
                                                            "kwargs": {}}, node.source)
    lower_weighted(replace(ctx, q=q2), linear)


def _einsum_plan(eq: str):
    """``(perm_a, perm_b, mm_order)`` that make ``einsum(eq, a, b)`` the batched ``matmul(a', b')`` with
    ``a' = (batch_a..., i, k)``, ``b' = (batch_b..., k, j)`` (an operand without some leading batch
    letters broadcasts over them, as ``matmul`` does) and the output ``(batch..., i, j)``, ``mm_order``
    its letters (a permute to ``eq``'s output order follows when they differ); the row ``i`` and the
    column ``j`` are the last output letters of one operand only. None when ``eq`` is not such a
    product (one row, column and contracted letter)."""
    if not isinstance(eq, str) or "." in eq or "->" not in eq:
        return None
    ins, out = eq.replace(" ", "").split("->")
    parts = ins.split(",")
    if len(parts) != 2:
        return None
    a, b = parts
    if any(len(set(t)) != len(t) for t in (a, b, out)):
        return None
    sa, sb, so = set(a), set(b), set(out)
    only_a, only_b = [c for c in out if c in sa and c not in sb], [c for c in out if c in sb and c not in sa]
    k = sorted((sa & sb) - so)
    if not only_a or not only_b or len(k) != 1 or (sa | sb) != so | set(k):
        return None
    i, j = only_a[-1], only_b[-1]
    batch = [c for c in out if c not in (i, j)]
    batch_a, batch_b = [c for c in batch if c in sa], [c for c in batch if c in sb]
    if batch_a != batch[len(batch) - len(batch_a):] or batch_b != batch[len(batch) - len(batch_b):]:
        return None                   # a missing batch letter that is not leading: matmul cannot broadcast it
    return [a.index(c) for c in batch_a + [i] + k], [b.index(c) for c in batch_b + k + [j]], batch + [i, j]


def lower_einsum(ctx, node: Node) -> None:
    """``einsum`` that is a batched matrix product (``"bhid,bhjd->bhij"``, ``"binh,tnh->bnit"``): the
    operands are permuted (int-level ``permute`` nodes, codes moved; a quantized constant operand is
    permuted at convert time), the product lowers as ``matmul`` and a ``permute`` puts its output in
    the equation's order; any other equation is refused by node name."""
    eq = arg(node, 0, "equation")
    plan = _einsum_plan(eq)
    ops_ = arg(node, 1, "tensors")
    if plan is None or not isinstance(ops_, list) or len(ops_) != 2 or not all(isinstance(o, dict) for o in ops_):
        raise ctx.error(node, f"einsum {eq!r} is not a product of two tensors with one row, one column and one "
                              "contracted index; it has no integer form")
    values, constants = dict(ctx.q.values), dict(ctx.q.constants)
    names = []
    for which, o, perm in (("a", ops_[0], plan[0]), ("b", ops_[1], plan[1])):
        name = node.inputs[o["$in"]]
        if name in ctx.q.constants:
            v = ctx.q.values[name]
            if v.qparams is None or (v.qparams.ch_axis is not None and len(v.qparams.scale) > 1):
                raise ctx.error(node, f"its constant operand {name!r} is not quantized per tensor")
            if perm != list(range(len(perm))):
                moved = _fresh(ctx, f"{name}.{node.name}")
                constants[moved] = ctx.q.constants[name].permute(perm).contiguous()
                values[moved] = Value(moved, tuple(v.shape[p] for p in perm), v.dtype, v.qparams)
                name = moved
            names.append(name)
            continue
        qp = _activation_qparams(ctx, node, name)
        if perm != list(range(len(perm))):
            moved = _fresh(ctx, f"{node.name}.{which}")
            shape = ctx.value(name).shape
            ctx.values[moved] = Value(moved, tuple(shape[p] for p in perm), ctx.value(name).dtype, qp)
            ctx.emit(Node(moved, "permute", (name,), (moved,), {"target": "aten.permute.default",
                                                                "args": [{"$in": 0}, perm], "kwargs": {}}, node.source))
            name = moved
        names.append(name)
    out_letters = eq.replace(" ", "").split("->")[1]
    back = [plan[2].index(c) for c in out_letters]
    out = node.outputs[0]
    mm = out
    if back != list(range(len(back))):
        ov = ctx.q.values[out]
        if ov.qparams is None:
            raise ctx.error(node, f"einsum {eq!r} needs its output permuted, which takes a quantized output")
        mm = _fresh(ctx, f"{node.name}.product")
        values[mm] = Value(mm, tuple(ov.shape[out_letters.index(c)] for c in plan[2]), ov.dtype, ov.qparams)
    q2 = Graph(ctx.q.level, ctx.q.inputs, ctx.q.outputs, values, ctx.q.nodes, constants, ctx.q.meta)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("target", "args", "kwargs")}
    lower_matmul(replace(ctx, q=q2), Node(node.name, "matmul", tuple(names), (mm,) + tuple(node.outputs[1:]), {
        **attrs, "target": "aten.matmul.default", "args": [{"$in": 0}, {"$in": 1}], "kwargs": {}}, node.source))
    if mm != out:
        ctx.emit(Node(f"{node.name}.permute", "permute", (mm,), (out,), {
            "target": "aten.permute.default", "args": [{"$in": 0}, back], "kwargs": {}}, node.source))
        ctx.set_value(out, ctx.values[mm].dtype, ctx.values[mm].qparams)


def onnx_einsum(c, outs):
    """``einsum(eq, [a, b])`` is ONNX ``Einsum``."""
    args, kwargs = c.args()
    eq, ts = args[0], args[1] if len(args) > 1 else kwargs.get("tensors")
    return c.b.op("Einsum", list(ts), outs, equation=str(eq))


SPECS = [
    OpSpec("addmm", ("aten.addmm.default",), weight_arg=2, weight_ch_axis=1, bias_arg=0, fuse_activation=True,
           lower=lower_addmm,
           kernel=k_reduce, reference=k_reduce_reference, onnx={"aten.addmm.default": onnx_addmm}),
    OpSpec("einsum", ("aten.einsum.default",), fuse_activation=True, lower=lower_einsum,
           onnx={"aten.einsum.default": onnx_einsum}),
]
