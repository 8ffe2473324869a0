"""The integer flavour: an int-level ``Graph`` -> ONNX integer ops that reproduce it bit for bit.

Takes the graph ``convert`` returns (level ``"int"``) and a ``Builder``; writes each integer
kernel of ``edgequant/ops`` in standard ONNX ops (docs/onnx.md has the table). A node is written
by its ``attrs["kernel"]`` when it has one, else by the writer of its op row's integer form
(``OpSpec.onnx_int``, the keys of ``FORMS``), else as its recorded aten call:

- ``quantize``: (A1) as ``Div`` (one float32 division), ``Round`` (half to even), ``Add`` of the
  zero point, ``Clip``, ``Cast``; ``dequantize``: (A2) ``(q - z)`` in int64, one float32 ``Mul``;
- conv/linear/matmul (form ``reduce``): the exact accumulator, by ``ConvInteger``/
  ``MatMulInteger`` (int8/uint8 operands, int32 sums) or an int64 ``MatMul``; a conv on wider
  codes by a float32 ``Conv`` on the centered codes when convert proved every partial sum below
  2^24 (docs/arithmetic.md, section 9), else the custom op ``ai.edgequant.ConvAccumulate``
  (``custom_ops``); a transposed conv by a float32 ``ConvTranspose`` on the centered codes (or
  their two limbs, carrier ``float32_limbs``), refused for the float64/int64 carriers; then the
  bias and (A7) requantization in int64 (``intmath``);
- ``affine`` (add, sub, scalar mul, clamps, batch norm), ``product``, ``window_sum`` (average
  pooling, by ``CumSum`` differences), ``reduce_sum``, ``rescale``, ``bilinear`` (gathered rows
  and columns times fixed-point weights), ``grid_sample`` (``grid_sample.py``: gathered taps times
  fixed-point weights), ``interval`` and ``compare2`` (comparisons), embeddings
  (``Gather``) and table ops (``tables``): the kernels' int64 arithmetic op by op;
- ``rescale_call`` (cat, stack, where, maximum, minimum, clamp with tensor bounds, slice writes,
  index_put): each input's ``affine`` rescale, then the recorded call on the codes (``aten_more``,
  ``ops/scatter.py``); ``scatter_add`` (index_put with accumulate): the recorded call on int64 terms,
  one rounding; ``running_sum`` (cumsum): ``CumSum`` then (A7); ``angle`` (atan2: ``atan2.py``);
- max pooling on a float carrier (exact: it only compares codes), shape and index ops through
  ``aten.translate``.

Every quantized tensor between ops has its storage type (INT8, UINT8, INT16, INT32, INT64), so
the graph's value types are those of the integer model. A kernel with no translation raises
``OnnxExportError`` naming the node.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto

from ..dtype import get_dtype
from ..ir import Graph, Node, QParams
from ..ops import OpSpec, calls_python, spec_of
from . import aten, tables
from .builder import Builder
from .custom_ops import conv_accumulate
from .errors import translate_nodes, unsupported
from .atan2 import write_atan2
from .grid_sample import write_grid_sample
from .integer_types import storage_elem, storage_name, storage_np
from .intmath import along, requantize, rounding_shift, saturate_cast, to_i64

FLAVOUR = "integer"
FORMS: dict[str, Callable] = {}   # integer ONNX form (an op row's ``onnx_int``) -> its writer


def form(name: str):
    """Register the decorated writer ``(IntWriter, node, ins, out)`` as the integer form ``name``."""
    def register(fn):
        FORMS[name] = fn
        return fn
    return register


class IntWriter:
    def __init__(self, g: Graph, b: Builder):
        self.g, self.b = g, b
        self.names: dict[str, str] = {}

    # -- helpers ------------------------------------------------------------------------------------
    def rank(self, name: str) -> int:
        return len(self.g.values[name].shape)

    def storage(self, name: str) -> str:
        return storage_name(self.g.values[name].dtype)

    def const_np(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.g.constants[name].numpy()

    def write(self) -> None:
        g, b = self.g, self.b
        for name in list(g.inputs) + list(g.values):
            b.claim(name)
        self.names.update({n: n for n in g.inputs})
        used = {i for n in g.nodes for i in n.inputs if i is not None} | {o for o in g.outputs if isinstance(o, str)}
        for name, t in g.constants.items():
            if name in used:
                self.names[name] = b.initializer(name, t.numpy().astype(storage_np(g.values[name].dtype))
                                                 if g.values[name].qparams is not None else t.numpy(), g.values[name])
        translate_nodes(b, g.nodes, FLAVOUR, self._step)

    def _step(self, node: Node) -> None:
        self._node(node)
        for o in node.outputs:
            self.names.setdefault(o, o)

    def _node(self, node: Node) -> None:
        ins = [self.names[i] if i is not None else None for i in node.inputs]
        out = list(node.outputs)
        a = node.attrs
        if a.get("float"):
            return self._aten(node, ins, out)
        kernel = a.get("kernel")
        if kernel in _KERNELS:
            return _KERNELS[kernel](self, node, ins, out)
        if kernel is not None:
            raise unsupported(node, FLAVOUR, f"its integer kernel {kernel!r} has no ONNX translation yet")
        spec = spec_of(node.op)
        if spec is not None and spec.onnx_int is not None:
            if spec.onnx_int not in FORMS:
                raise unsupported(node, FLAVOUR, f"its integer form {spec.onnx_int!r} has no ONNX writer")
            return FORMS[spec.onnx_int](self, node, ins, out)
        if calls_python(node.op):
            raise unsupported(node, FLAVOUR, "it runs Python code")
        return self._aten(node, ins, out)

    def _aten(self, node: Node, ins, out) -> None:
        g = self.g
        dtypes = [self.storage(i) if i is not None else None for i in node.inputs]
        shapes = [tuple(g.values[i].shape) if i is not None else () for i in node.inputs]
        aten.translate(aten.Ctx(self.b, node, ins, dtypes, [len(s) for s in shapes], FLAVOUR, shapes,
                                [tuple(g.values[o].shape) for o in node.outputs]), out)

    def out_cast(self, node: Node, y: str, out: list, lo=None, hi=None) -> None:
        """Saturate int64 ``y`` to the output's quantized type (and ``[lo, hi]``), cast to its storage."""
        saturate_cast(self.b, y, self.g.values[out[0]].dtype, out, lo, hi)


# -- generic ------------------------------------------------------------------------------------------
@form("quantize")
def k_quantize(w: IntWriter, node: Node, ins, out) -> None:
    b, qp = w.b, w.g.values[out[0]].qparams
    r = w.rank(out[0])
    x = ins[0] if w.g.values[node.inputs[0]].dtype == "float32" else b.op("Cast", [ins[0]], to=TensorProto.FLOAT)
    s = b.const(np.asarray(qp.scale, np.float32).reshape(along(qp.zero_point, qp.ch_axis, r).shape), base="scale")
    carrier = np.float32 if get_dtype(qp.dtype).bits <= 16 else np.float64
    y = b.op("Round", [b.op("Div", [x, s])])
    if carrier is np.float64:
        y = b.op("Cast", [y], to=TensorProto.DOUBLE)
    zp = along(qp.zero_point, qp.ch_axis, r)
    if zp.any():
        y = b.op("Add", [y, b.const(zp.astype(carrier), base="zero_point")])
    dt = get_dtype(qp.dtype)
    y = b.op("Clip", [y, b.const(np.asarray(dt.qmin, carrier)), b.const(np.asarray(dt.qmax, carrier))])
    b.op("Cast", [y], out, to=storage_elem(qp.dtype))


def dequantize(w: IntWriter, x: str, qp: QParams, rank: int, out=1) -> str:
    """(A2): ``(q - z)`` exact in int64, one float32 conversion and one float32 product."""
    b = w.b
    v = b.op("Cast", [to_i64(b, x, qp.zero_point, qp.ch_axis, rank)], to=TensorProto.FLOAT)
    s = np.asarray(qp.scale, np.float32).reshape(along(qp.zero_point, qp.ch_axis, rank).shape)
    return b.op("Mul", [v, b.const(s, base="scale")], out)


@form("dequantize")
def k_dequantize(w: IntWriter, node: Node, ins, out) -> None:
    qp = w.g.values[node.inputs[0]].qparams
    if qp is None:
        w.b.op("Identity", [ins[0]], out)
        return
    dequantize(w, ins[0], qp, w.rank(node.inputs[0]), out)


@form("rescale")
def k_rescale(w: IntWriter, node: Node, ins, out) -> None:
    a, r = node.attrs, w.rank(node.inputs[0])
    x = to_i64(w.b, ins[0], a["in_zero_point"], a["ch_axis"], r)
    w.out_cast(node, requantize(w.b, x, a["m0"], a["shift"], a["out_zero_point"], axis=a["ch_axis"], rank=r), out)


@form("identity")
def k_identity(w: IntWriter, node: Node, ins, out) -> None:
    w.b.op("Identity", [ins[0]], out)


@form("max_pool")
def k_max_pool(w: IntWriter, node: Node, ins, out) -> None:
    """The recorded pooling on a float carrier of the codes (exact: it only compares them)."""
    b = w.b
    wide = get_dtype(w.g.values[node.inputs[0]].dtype).bits > 16
    carrier = b.op("Cast", [ins[0]], to=TensorProto.DOUBLE if wide else TensorProto.FLOAT)
    shapes = [tuple(w.g.values[node.inputs[0]].shape)]
    raw = b.fresh(f"{out[0]}.carrier")
    aten.translate(aten.Ctx(b, node, [carrier], ["float64" if wide else "float32"], [len(shapes[0])], FLAVOUR,
                            shapes, [tuple(w.g.values[o].shape) for o in node.outputs]), [raw] + out[1:])
    b.op("Cast", [raw], out[:1], to=storage_elem(w.g.values[out[0]].dtype))   # out[1:]: indices, int64


# -- conv / linear / matmul -----------------------------------------------------------------------------
def _small(dt: str) -> bool:
    return dt in ("qint8", "quint8", "qint4")


def _zp_input(b: Builder, zp, dtype: str) -> str:
    arr = np.asarray(zp).astype(storage_np(dtype))
    return b.const(arr if isinstance(zp, list) else arr.reshape(()), base="zero_point")


@form("reduce")
def k_reduce(w: IntWriter, node: Node, ins, out) -> None:
    g, b, a = w.g, w.b, node.attrs
    x_name, w_name = node.inputs[0], node.inputs[1]
    xv, wv = g.values[x_name], g.values[w_name]
    spec = spec_of(node.op)
    r = w.rank(node.outputs[0])
    per_tensor_x = not isinstance(a["x_zero_point"], list)
    w_const = w_name in g.constants
    if spec.transposed:
        acc = _transposed(w, node, spec, ins)
    elif _small(xv.dtype) and _small(wv.dtype) and per_tensor_x and (w_const or not spec.weighted):
        acc = _integer_op(w, node, spec, ins)
    elif spec.spatial_dims is None:                        # linear, matmul
        xc = to_i64(b, ins[0], a["x_zero_point"], a.get("x_ch_axis"), len(xv.shape))
        wc = to_i64(b, ins[1], a["w_zero_point"], a.get("w_ch_axis"), len(wv.shape))
        if spec.weight_transposed_in_product:
            wc = b.op("Transpose", [wc], perm=[1, 0])
        acc = b.op("MatMul", [xc, wc])
    elif a.get("carrier") == "float32" and not a.get("limb_shift"):
        xc = b.op("Cast", [to_i64(b, ins[0], a["x_zero_point"], a.get("x_ch_axis"), len(xv.shape))],
                  to=TensorProto.FLOAT)
        wc = b.op("Cast", [to_i64(b, ins[1], a["w_zero_point"], a.get("w_ch_axis"), len(wv.shape))],
                  to=TensorProto.FLOAT)
        acc = b.op("Cast", [_conv(b, node, spec, [xc, wc])], to=TensorProto.INT64)
    else:
        acc = conv_accumulate(w, node, ins)
    if ins[2] is not None:                                 # the int32 (or wide) bias, along the channel axis
        bias = w.const_np(node.inputs[2]).astype(np.int64)
        acc = b.op("Add", [acc, b.i64(along(bias, a["ch_axis"], r), "bias")])
    mode = a["output"]
    if mode == "requant":
        m0, sh = w.const_np(node.inputs[3]), w.const_np(node.inputs[4])
        y = requantize(b, acc, m0, sh, a["out_zero_point"], axis=a["ch_axis"], rank=r)
        lo, hi = a.get("clamp", (None, None))
        w.out_cast(node, y, out, lo, hi)
    elif mode == "acc":
        w.out_cast(node, acc, out)
    else:
        s = np.asarray(a["acc_scale"], np.float32)
        s = s.reshape(along(np.zeros(s.size), a["ch_axis"], r).shape) if s.size > 1 else s.reshape(())
        b.op("Mul", [b.op("Cast", [acc], to=TensorProto.FLOAT), b.const(s, base="acc_scale")], out)


def _transposed(w: IntWriter, node: Node, spec: OpSpec, ins) -> str:
    """A transposed conv's exact accumulator: float32 ``ConvTranspose`` on the centered codes, for
    the carriers convert proved exact in float32 (``"float32"``: every partial sum below 2^24;
    ``"float32_limbs"``: on the limbs ``hi * 2^s + lo`` of ``x - z_x``, joined in float64)."""
    b, a, g = w.b, node.attrs, w.g
    if a.get("carrier") not in ("float32", "float32_limbs"):
        raise unsupported(node, FLAVOUR, f"its accumulator needs the {a.get('carrier')} carrier; ONNX ConvTranspose "
                                         "is exact only below 2^24 (float32)")
    xv, wv = g.values[node.inputs[0]], g.values[node.inputs[1]]
    x = to_i64(b, ins[0], a["x_zero_point"], a.get("x_ch_axis"), len(xv.shape))
    wc = b.op("Cast", [to_i64(b, ins[1], a["w_zero_point"], a.get("w_ch_axis"), len(wv.shape))], to=TensorProto.FLOAT)
    s = a.get("limb_shift") or 0
    if not s:
        return b.op("Cast", [_conv(b, node, spec, [b.op("Cast", [x], to=TensorProto.FLOAT), wc], "ConvTranspose")],
                    to=TensorProto.INT64)
    lo = b.op("Mod", [x, b.i64(1 << s)], fmod=0)
    hi = b.op("Div", [b.op("Sub", [x, lo]), b.i64(1 << s)])
    parts = [b.op("Cast", [_conv(b, node, spec, [b.op("Cast", [v], to=TensorProto.FLOAT), wc], "ConvTranspose")],
                  to=TensorProto.DOUBLE) for v in (hi, lo)]
    acc = b.op("Add", [b.op("Mul", [parts[0], b.const(np.asarray(float(1 << s)), base="limb")]), parts[1]])
    return b.op("Cast", [acc], to=TensorProto.INT64)


def _conv(b: Builder, node: Node, spec: OpSpec, inputs: list[str], op_type: str = "Conv"):
    a = node.attrs
    nd = spec.spatial_dims
    kw = dict(strides=list(a["stride"]), pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), group=a["groups"])
    if spec.transposed and any(a.get("output_padding") or ()):
        kw["output_padding"] = list(a["output_padding"])
    if len(a["stride"]) != nd:
        raise ValueError("stride does not match the conv's spatial rank")
    return b.op(op_type, inputs, **kw)


def _integer_op(w: IntWriter, node: Node, spec: OpSpec, ins) -> str:
    """ConvInteger / MatMulInteger on int8/uint8 codes with their zero points: exact int32 sums."""
    g, b, a = w.g, w.b, node.attrs
    xv, wv = g.values[node.inputs[0]], g.values[node.inputs[1]]
    x, wt = ins[0], ins[1]
    x_zp = _zp_input(b, a["x_zero_point"], xv.dtype)
    w_zp = _zp_input(b, a["w_zero_point"], wv.dtype)
    if spec.spatial_dims is not None:
        acc = _conv(b, node, spec, [x, wt, x_zp, w_zp], "ConvInteger")
    elif spec.weight_transposed_in_product:
        wt = b.op("Transpose", [wt], perm=[1, 0])
        acc = b.op("MatMulInteger", [x, wt, x_zp, w_zp])
    else:
        acc = b.op("MatMulInteger", [x, wt, x_zp, w_zp])
    return b.op("Cast", [acc], to=TensorProto.INT64)


# -- elementwise kernels ----------------------------------------------------------------------------------
def affine_sum(w: IntWriter, a: dict, ins, in_names) -> str:
    """The ``affine`` kernel's plan ``a`` on ``ins`` (``ops.affine``): the int64 result, not clamped."""
    b, axis = w.b, a["axis"]
    acc = None
    for t in a["terms"]:
        v = to_i64(b, ins[t["in"]], t["zp"], axis, w.rank(in_names[t["in"]]))
        m = b.i64(along(t["m0"], axis, None), "m0")
        if t.get("m0_neg") is not None:
            m = b.op("Where", [b.op("GreaterOrEqual", [v, b.i64(0)]), m, b.i64(along(t["m0_neg"], axis, None), "m0")])
        v = b.op("Mul", [v, m])
        acc = v if acc is None else b.op("Add", [acc, v])
    const = along(a["const"], axis, None)
    if acc is None:
        shape = b.op("Shape", [ins[0]]) if ins else None
        acc = b.op("Expand", [b.i64(const), shape]) if shape else b.i64(const)
    elif const.any():
        acc = b.op("Add", [acc, b.i64(const, "const")])
    y = rounding_shift(b, acc, along(a["shift"], axis, None))
    return b.op("Add", [y, b.i64(a["out_zp"])]) if a["out_zp"] else y


def k_affine(w: IntWriter, node: Node, ins, out) -> None:
    a = node.attrs
    w.out_cast(node, affine_sum(w, a, ins, node.inputs), out, a["lo"], a["hi"])


def k_rescale_call(w: IntWriter, node: Node, ins, out) -> None:
    """cat, stack, where, maximum, minimum, clamp(Tensor): each input with a plan rescaled onto the
    output grid by its ``affine`` plan, then the recorded call on the codes (``aten_more``)."""
    a, g = node.attrs, w.g
    xs, dtypes = [], []
    for name, x, plan in zip(node.inputs, ins, a["rescale"]):
        if plan is not None:
            x = saturate_cast(w.b, affine_sum(w, plan, [x], [name]), plan["out_dtype"], 1, plan["lo"], plan["hi"])
        xs.append(x)
        dtypes.append(storage_name(plan["out_dtype"] if plan is not None else g.values[name].dtype)
                      if name is not None else None)
    shapes = [tuple(g.values[i].shape) if i is not None else () for i in node.inputs]
    aten.translate(aten.Ctx(w.b, node, xs, dtypes, [len(s) for s in shapes], FLAVOUR, shapes,
                            [tuple(g.values[o].shape) for o in node.outputs]), out)


def k_scatter_add(w: IntWriter, node: Node, ins, out) -> None:
    """``scatter.k_scatter_add``: the canvas and the values as int64 terms, the recorded
    ``index_put(accumulate=True)`` on them (``ScatterND``, reduction add: exact), one rounding."""
    a, g = node.attrs, w.g
    kc, kv = a["args"][0]["$in"], a["args"][2]["$in"]
    xs, dtypes = list(ins), [storage_name(g.values[i].dtype) if i is not None else None for i in node.inputs]
    for k, zp, m in ((kc, a["zp"][0], a["m"][0]), (kv, a["zp"][1], a["m"][1])):
        xs[k], dtypes[k] = w.b.op("Mul", [to_i64(w.b, ins[k], zp), w.b.i64(m)]), "int64"
    shapes = [tuple(g.values[i].shape) if i is not None else () for i in node.inputs]
    acc = w.b.fresh(f"{out[0]}.acc")
    aten.translate(aten.Ctx(w.b, node, xs, dtypes, [len(s) for s in shapes], FLAVOUR, shapes,
                            [tuple(g.values[o].shape) for o in node.outputs]), [acc])
    y = rounding_shift(w.b, acc, np.asarray(a["shift"], np.int64))
    w.out_cast(node, w.b.op("Add", [y, w.b.i64(a["out_zp"])]), out, a["lo"], a["hi"])


def k_interval(w: IntWriter, node: Node, ins, out) -> None:
    """A comparison with a number: ``lo <= q <= hi`` (negated for ``ne``), thresholds from convert."""
    b, a = w.b, node.attrs
    q = to_i64(b, ins[0])
    inside = b.op("And", [b.op("GreaterOrEqual", [q, b.i64(a["lo"])]), b.op("LessOrEqual", [q, b.i64(a["hi"])])],
                  1 if a["invert"] else out)
    if a["invert"]:
        b.op("Not", [inside], out)


_CMP2 = {"gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual", "eq": "Equal", "ne": "Equal"}


def k_compare2(w: IntWriter, node: Node, ins, out) -> None:
    """Two quantized tensors compared exactly: ``(qa - za) * fa`` against ``(qb - zb) * fb`` in int64."""
    b, a = w.b, node.attrs
    va = b.op("Mul", [to_i64(b, ins[0], a["zp"][0]), b.i64(a["f"][0])])
    vb = b.op("Mul", [to_i64(b, ins[1], a["zp"][1]), b.i64(a["f"][1])])
    if a["fn"] == "ne":
        b.op("Not", [b.op("Equal", [va, vb])], out)
    else:
        b.op(_CMP2[a["fn"]], [va, vb], out)


def k_bilinear(w: IntWriter, node: Node, ins, out) -> None:
    """``pool_reduce.k_bilinear``: gathered rows then columns times the fixed-point weights (int64),
    rounding 1 (``drop``), rounding 2 (A7)."""
    b, a = w.b, node.attrs
    v = to_i64(b, ins[0], a["zp"])
    for d, tp in zip((-2, -1), a["taps"]):
        shape = [-1] + [1] * (-d - 1)
        w0 = b.i64(np.asarray(tp["w0"], np.int64).reshape(shape), "w0")
        w1 = b.i64(np.asarray(tp["w1"], np.int64).reshape(shape), "w1")
        v0 = b.op("Gather", [v, b.i64(tp["i0"], "i0")], axis=d)
        v1 = b.op("Gather", [v, b.i64(tp["i1"], "i1")], axis=d)
        v = b.op("Add", [b.op("Mul", [v0, w0]), b.op("Mul", [v1, w1])])
    r = rounding_shift(b, v, np.asarray(a["drop"], np.int64))
    w.out_cast(node, requantize(b, r, a["m0"], a["shift"], a["out_zp"]), out, a["lo"], a["hi"])


def k_product(w: IntWriter, node: Node, ins, out) -> None:
    b, a = w.b, node.attrs
    va = to_i64(b, ins[0], a["zp"][0])
    vb = to_i64(b, ins[1], a["zp"][1])
    y = requantize(b, b.op("Mul", [va, vb]), a["m0"], a["shift"], a["out_zp"])
    w.out_cast(node, y, out, a["lo"], a["hi"])


def k_window_sum(w: IntWriter, node: Node, ins, out) -> None:
    """Sums over windows ``[start, end)`` per pooled dim, from cumulative sums (exact int64)."""
    b, a = w.b, node.attrs
    v = to_i64(b, ins[0], a["zp"])
    r, k = w.rank(node.inputs[0]), len(a["starts"])
    for i, (st, en) in enumerate(zip(a["starts"], a["ends"])):
        d = r - k + i
        c = b.op("CumSum", [v, b.i64(d)])
        pads = [0] * (2 * r)
        pads[d] = 1
        c = b.op("Pad", [c, b.i64(pads)])                   # c[j] = sum of v[:j]
        v = b.op("Sub", [b.op("Gather", [c, b.i64(en)], axis=d), b.op("Gather", [c, b.i64(st)], axis=d)])
    m0, sh = w.const_np(node.inputs[1]), w.const_np(node.inputs[2])
    y = requantize(b, v, m0, sh, a["out_zp"])
    w.out_cast(node, y, out, a["lo"], a["hi"])


def k_reduce_sum(w: IntWriter, node: Node, ins, out) -> None:
    b, a = w.b, node.attrs
    v = b.op("ReduceSum", [to_i64(b, ins[0], a["zp"]), b.i64(a["dims"])], keepdims=int(bool(a["keepdim"])))
    w.out_cast(node, requantize(b, v, a["m0"], a["shift"], a["out_zp"]), out, a["lo"], a["hi"])


def k_cumsum(w: IntWriter, node: Node, ins, out) -> None:
    """``pool_reduce.k_cumsum``: ``CumSum`` of ``q - z`` in int64, then (A7)."""
    b, a = w.b, node.attrs
    v = b.op("CumSum", [to_i64(b, ins[0], a["zp"]), b.i64(a["dim"])])
    w.out_cast(node, requantize(b, v, a["m0"], a["shift"], a["out_zp"]), out, a["lo"], a["hi"])


@form("embedding")
def k_embedding(w: IntWriter, node: Node, ins, out) -> None:
    b, a = w.b, node.attrs
    if a.get("output") == "requant":
        y = b.op("Gather", [to_i64(b, ins[0]), ins[1]], axis=0)
        y = requantize(b, b.op("Sub", [y, b.i64(a["in_zero_point"])]), w.const_np(node.inputs[2]),
                       w.const_np(node.inputs[3]), a["out_zero_point"])
        w.out_cast(node, y, out)
    else:
        b.op("Gather", [ins[0], ins[1]], out, axis=0)


@form("lut")
def k_lut(w: IntWriter, node: Node, ins, out) -> None:
    lut = node.attrs["lut"]
    nq = lut["n_quant"]
    codes = [to_i64(w.b, x) for x in ins[:nq]]
    extra = [w.g.constants[e] for e in node.inputs[nq:]]
    w.out_cast(node, tables.emit(w.b, lut, codes, extra, node), out)


_KERNELS = {"affine": k_affine, "product": k_product, "window_sum": k_window_sum, "reduce_sum": k_reduce_sum,
            "running_sum": k_cumsum, "rescale_call": k_rescale_call, "scatter_add": k_scatter_add,
            "interval": k_interval, "compare2": k_compare2, "bilinear": k_bilinear,
            "grid_sample": write_grid_sample, "angle": write_atan2}


def build(g: Graph):
    """The integer ONNX graph of an int-level ``g`` (``export_onnx`` wraps it into a model)."""
    b = Builder("edgequant_integer")
    w = IntWriter(g, b)
    w.write()
    return b, w.names
