"""Conv, linear, matmul and embedding: ops that reduce products into an accumulator.

Stage: ``convert`` (``LOWER``: a quant-level node -> int-level nodes and integer constants) and
``run`` at level ``"int"`` (``INT_KERNELS``). Equation labels are those of ``docs/arithmetic.md``;
every rounding, shift and saturation below is a ``qmath`` call.

Lowering ("prepare", once per node, at convert time)

1. Weights: ``w_q = quantize(w, s_w, z_w)`` (A1) per output channel in the weight's dtype (qint8,
   qint4, qint16; symmetric, so ``z_w = 0``, but a zero point is honoured). Bias:
   ``b_q = quantize(b, s_acc, 0, qint32)`` (A1) with ``s_acc[c] = s_x * s_w[c]`` (one float32
   product), the scale of the accumulator; the bias is the (bias-corrected) constant export wrote.
   A bias beyond int32 at that scale (a dead channel: BN folding left weights ~0, so ``s_w`` sits
   at its floor, next to a real bias) is stored in the wide accumulator's type (``qint48`` /
   ``qint64``), which the bound below then routes the node to.
2. Accumulator bound (A8): ``A = max_c sum_j |w_q[c, j] - z_w| * max|x_q - z_x| + |b_q[c]|``, the
   activation range taken from its dtype (two activations, as in matmul: ``K * max * max``). ``A``
   within the march's ``acc_bits`` -> ``attrs["acc_bits"] = 32``; else within ``wide_acc_bits`` ->
   the wide accumulator; else ``ConvertError`` naming the node and ``A``.
3. Carrier (section 9): ``"float32"`` if ``A < 2^24``; for ``A < 2^53``, ``"float32_limbs"`` if
   the bias-free sums fit float32 once the bias is left out (added after, in float64) and, if
   need be, the centered input is split into two limbs ``hi * 2^s + lo``
   (``attrs["limb_shift"] = s``, 0 for no split) so that each partial sum stays below 2^24
   (int16 activations, long int8 reductions, large int16-scale biases: float32 convs are much
   faster than a float64 conv, 17x for a depthwise one); else ``"float64"``; else ``"int64"``
   (``attrs["carrier"]``). A matmul of two activations whose reduction length is dynamic
   (attention's ``probs @ V`` over the sequence) is lowered for the longest ``K`` its
   accumulator takes (``attrs["max_reduction"]``: the 32-bit one if it allows ``K >= 4096``,
   else the wide one, keeping the multiplier's bits); ``A`` is the bound at that ``K``, the
   carrier is ``"dynamic"`` (chosen per call from the actual ``K``), and the kernel refuses a
   longer reduction at run time instead of overflowing. A requantizing node whose ``b`` (A5.6) would fall below
   the output's bits is refused (A7.1's 1-LSB guarantee needs ``b >= bits``).
4. Output, one of (``attrs["output"]``):

   - ``"requant"``, the op's output is fake-quantized (``attrs["fq"]``):
     ``M[c] = s_x * s_w[c] / s_y`` (A5.4, float64) -> ``(m0[c], shift[c])`` (A5) with
     ``b = min(multiplier_bits, 63 - bitlength(A))`` bits (A5.6), int64 constants.
   - ``"requant"`` with ``attrs["clamp"] = [lo_q, hi_q]``, the op is ``fused_into`` a relu/clamp:
     the same, into the *activation's* output qparams; ``lo_q``/``hi_q`` are the activation's
     bounds quantized on that grid by (A1) (relu: ``[z_y, qmax]``).
   - ``"acc"``: the op feeds an add at accumulator precision (``fused_into`` an add), or is a
     high-precision output (seed 002): the raw accumulator, dtype ``qint32`` (``qint48``/``qint64``
     when ``A`` needs the wide accumulator), QParams ``scale = s_acc[c]``, zero point 0, along the
     output's channel axis. No requantization.
   - ``"float"``: a high-precision output on NASH_P/NASH_H (``ctx.integer_conv`` False): the
     accumulator dequantized (A2) with ``s_acc``: float32, no qparams. Only high-precision
     outputs become float: an op whose output is requantized for a next integer op stays integer.

The int node keeps the op's name and canonical ``op``; ``inputs = (x, w_q, b_q, m0, shift)``
(``None`` where absent; matmul: ``(a, b, None, m0, shift)``, a constant operand quantized like a
weight; embedding: ``(table_q, indices[, m0, shift])``); ``attrs``: ``output``, ``out_dtype``,
``out_zero_point``, ``clamp``, ``bound``, ``acc_bits``, ``carrier``, ``multiplier_bits``,
``ch_axis`` (output channel axis), ``x_zero_point``/``w_zero_point`` (int, or a list along
``x_ch_axis``/``w_ch_axis``), the conv's ``stride``/``padding``/``dilation``/``groups``
(``output_padding``), ``acc_scale`` (float output only), and ``fq``/``high_precision``/
``fused_into`` copied from the quant level.

Fused activations: the relu/clamp an op is ``fused_into`` is emitted by *this* lowering as an
``identity`` node (same name, reads the op's already-clamped output, writes the activation's
output value) and recorded in ``ctx.lowered`` so the driver skips it; the elementwise family's
relu/clamp lowering never sees a fused activation. The op's int node names it in
``attrs["fused_activation"]``.

Kernels ("eval", integer only)

    acc[c] = sum_j (x_q[j] - z_x) * (w_q[c, j] - z_w[c]) + b_q[c]           (A5.3's sum)
    requant: y = clamp(requantize(acc, m0[c], shift[c], z_y), lo_q, hi_q)   (A7, then the bounds)
    acc:     y = saturate(acc)  (never clamps: |acc| <= A fits the dtype)
    float:   y = dequantize(acc, s_acc[c], 0)                                (A2)

The sum is computed two ways, tested bit for bit against each other: the reference
(``REFERENCE_KERNELS``) in int64, conv as a loop over kernel offsets of strided slices times the
weight tap (im2col written out), conv_transpose as the scatter-add of those taps, linear/matmul as
int64 matmuls; the fast path (``INT_KERNELS``) runs torch's float conv/matmul on the centered
codes in the carrier chosen from ``A``: every product and partial sum is an integer of magnitude
<= ``A``, exact in float32 below 2^24 and in float64 below 2^53, so any summation order gives
the same integer. NNPACK (Winograd/FFT) is switched off around the float calls, and float32 falls
back to float64 if torch or oneDNN is set to compute float32 products in reduced precision.
Requantization, most of the kernels' time, runs over rows of the output (``_CHUNK`` elements
at a time) so that (A7)'s int64 temporaries stay in cache; the values are the same.

Embedding (rule "source"): the table is quantized by (A1) and the kernel gathers its codes; the
output lies on the table's grid (exact, 0 LSB). If the output were fake-quantized onto another
grid, the gathered codes are requantized by (A7) with ``M = s_table / s_y``.

Agreement with the quant-level graph (the VALIDATION simulation), stated per op in output LSB:
conv1d/conv2d/conv_transpose2d/linear/matmul with a requantized output: at most 1 LSB (A7.1:
the multiplier's relative error 2^-b and float32 summation in the simulation; a 1-LSB difference
happens only near a rounding tie). The simulation puts a conv1d/conv2d/linear bias on the same
accumulator grid as here, by the same (A1) rounding of ``bias / (s_x * s_w)``
(``fake_quant.BiasCorrection.grid_bias``); where it does not (conv_transpose2d, or
``prepare(..., bias_correction=False)``), the bias's rounding adds at most ``M/2`` LSB. Measured
on one-op models: 100 % of elements exact for conv1d, conv2d (plain and depthwise + relu6),
linear and matmul, 99.998 % for a strided dilated conv2d + relu, 99.92 % for conv_transpose2d,
the rest 1 LSB (tests/test_int_matmul_like.py). Accumulator and float outputs: within
``s_acc/2`` (the bias rounding, where the simulation does not do it) plus the simulation's
float32 error. Embedding: exact.
"""
from __future__ import annotations

import itertools
import math
import os

import torch
import torch.nn.functional as F

from ..dtype import DTYPES, get_dtype
from ..ir import Node, QParams
from ..qmath import dequantize, quantize, quantize_multiplier, requantize, saturate
from .elementwise import activation_bounds, is_activation
from .spec import OpSpec

_CONV = dict(weight_arg=1, bias_arg=2, fuse_activation=True, fuse_add=True, high_precision_output=True)


# argument positions of the aten overloads (after input, weight, bias)
_CONV_ARGS = {
    "conv1d": (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv2d": (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv_transpose2d": (("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)),
}
_SPATIAL = {"conv1d": 1, "conv2d": 2, "conv_transpose2d": 2}


# =============================================================================================
# Lowering
# =============================================================================================
def _arg(node: Node, pos: int, key: str, default=None):
    args, kwargs = node.attrs.get("args", []), node.attrs.get("kwargs", {})
    return args[pos] if pos < len(args) else kwargs.get(key, default)


def _input_name(node: Node, pos: int, key: str) -> str | None:
    a = _arg(node, pos, key)
    return node.inputs[a["$in"]] if isinstance(a, dict) and "$in" in a else None


def _fresh(ctx, base: str) -> str:
    name, k = base, 1
    while name in ctx.values or name in ctx.constants:
        name, k = f"{base}_{k}", k + 1
    return name


def _quant_node(ctx, name: str) -> Node | None:
    return next((n for n in ctx.q.nodes if n.name == name), None)


def _activation_qparams(ctx, node: Node, name: str | None) -> QParams:
    """The per-tensor qparams of an activation input (errors name the node)."""
    qp = ctx.qparams(name) if name is not None else None
    if qp is None:
        raise ctx.error(node, f"its input {name!r} is not quantized")
    if qp.ch_axis is not None and len(qp.scale) > 1:
        raise ctx.error(node, f"its input {name!r} is quantized per channel ({qp.dtype}); "
                              "conv/linear/matmul take per-tensor activations")
    return qp


def _max_abs(qp: QParams) -> int:
    """``max |q - z|`` over the whole range of an activation's dtype (A8)."""
    dt, z = get_dtype(qp.dtype), qp.zero_point[0]
    return max(dt.qmax - z, z - dt.qmin)


def _quantize_const(ctx, node: Node, name: str) -> tuple[torch.Tensor, QParams]:
    """A float constant with QParams -> its integer codes (A1). The quant graph's float tensor:
    a weight shared by two ops (a module called twice) has its codes under ``name`` already."""
    t, qp = ctx.q.constants.get(name), ctx.q.values[name].qparams
    t = ctx.const(name) if t is None else t
    if t is None or qp is None:
        raise ctx.error(node, f"{name!r} must be a quantized constant (a weight with QParams)")
    return quantize(t, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis), qp


def _centered(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``q - z`` in int64 (per tensor or along the QParams' channel axis)."""
    z = qp.zero_point_tensor()
    if qp.ch_axis is not None and z.numel() > 1:
        shape = [1] * q.dim()
        shape[qp.ch_axis % q.dim()] = -1
        z = z.reshape(shape)
    return q.to(torch.int64) - z


def _zero_point_attr(qp: QParams):
    """``int`` (per tensor) or ``list`` (per channel) zero point; ``0`` when all are zero."""
    if all(z == 0 for z in qp.zero_point):
        return 0
    return list(qp.zero_point) if qp.ch_axis is not None and len(qp.zero_point) > 1 else qp.zero_point[0]


def _conv_params(node: Node) -> dict:
    nd = _SPATIAL[node.op]
    out = {}
    for i, (key, default) in enumerate(_CONV_ARGS[node.op], start=3):
        v = _arg(node, i, key, default)
        if key == "groups":
            out[key] = int(v)
            continue
        if isinstance(v, str):
            raise ValueError(f"padding={v!r}")
        v = [int(e) for e in v] if isinstance(v, (list, tuple)) else [int(v)]
        out[key] = v * nd if len(v) == 1 else v
    return out


def _const_i64(ctx, name: str, values) -> str:
    return ctx.add_const(_fresh(ctx, name), torch.tensor(values, dtype=torch.int64))


def _choose_carrier(bound: int, wsum, x_range: tuple[int, int] | None) -> dict:
    """Step 3: the fast path's carrier from the bound (A8); for ``"float32_limbs"`` the split.

    ``wsum`` (per output channel) is what multiplies ``max|x_q - z_x|`` in the bound and
    ``x_range`` the range of ``x_q - z_x`` (None: x cannot be split). With the bias added
    afterwards in float64 (exact: ``|acc| <= A < 2^53``), the float32 sums are bounded by
    ``wsum * max|x - z|`` (one limb, ``limb_shift = 0``), or, splitting
    ``x_q - z_x = hi * 2^s + lo`` (``0 <= lo < 2^s``), by ``wsum * max|hi|`` and
    ``wsum * (2^s - 1)``; below 2^24 they are exact.
    """
    if bound < 2 ** 24:
        return {"carrier": "float32"}
    if bound >= 2 ** 53:
        return {"carrier": "int64"}
    if x_range is not None:
        w = int(torch.as_tensor(wsum, dtype=torch.int64).max())
        for shift in range(0, 16):
            hi = max(-(x_range[0] >> shift), x_range[1] >> shift)
            if w * hi < 2 ** 24 and w * ((1 << shift) - 1) < 2 ** 24:
                return {"carrier": "float32_limbs", "limb_shift": shift}
    return {"carrier": "float64"}


def _x_range(qp: QParams) -> tuple[int, int]:
    dt = get_dtype(qp.dtype)
    return dt.qmin - qp.zero_point[0], dt.qmax - qp.zero_point[0]


def _plan_output(ctx, node: Node, acc_scale: list[float], acc_scale64: list[float], ch_axis: int | None,
                 bound: int, carrier: dict) -> tuple[dict, list, list[Node]]:
    """Steps 2-4 of the module docstring: returns ``(attrs, [m0, shift] inputs, nodes after)``."""
    prof, a, out = ctx.profile, node.attrs, node.outputs[0]
    if bound < 2 ** (prof.acc_bits - 1):
        acc_bits = prof.acc_bits
    elif bound < 2 ** (prof.wide_acc_bits - 1):
        acc_bits = prof.wide_acc_bits
    else:
        raise ctx.error(node, f"its worst-case accumulator |acc| <= {bound} (2^{math.log2(bound):.2f}) does not fit "
                              f"the {prof.wide_acc_bits}-bit wide accumulator of {prof.march.value} "
                              "(docs/arithmetic.md A8); use narrower activations/weights or split the reduction")
    attrs = {"acc_bits": acc_bits, "bound": int(bound), **carrier, "ch_axis": ch_axis}
    for key in ("fq", "high_precision", "fused_into"):
        if key in a:
            attrs[key] = a[key]
    fused = _quant_node(ctx, a["fused_into"]) if a.get("fused_into") else None
    act = fused if fused is not None and is_activation(fused.op) else None
    if a.get("high_precision") and not ctx.integer_conv:
        attrs.update(output="float", acc_scale=[float(s) for s in acc_scale])
        ctx.set_value(out, "float32", None)
        return attrs, [None, None], []
    if not a.get("fq") and act is None:
        dtype = f"qint{acc_bits}"
        if dtype not in DTYPES:
            raise ctx.error(node, f"no quantized dtype for a {acc_bits}-bit accumulator output")
        qp = QParams(dtype, tuple(float(s) for s in acc_scale), (0,) * len(acc_scale),
                     ch_axis if len(acc_scale) > 1 else None)
        attrs.update(output="acc", out_dtype=dtype)
        ctx.set_value(out, dtype, qp)
        return attrs, [None, None], []
    after: list[Node] = []
    if act is not None:
        if act.inputs[0] != out:
            raise ctx.error(node, f"it is fused into {act.name!r}, which does not read its output")
        out_qp = ctx.q.values[act.outputs[0]].qparams
        if out_qp is None:
            raise ctx.error(act, "a fused activation's output must be fake-quantized")
        attrs["clamp"] = list(activation_bounds(ctx, act, out_qp))   # the relu/clamp's bounds on its grid (A1)
        attrs["fused_activation"] = act.name
        ctx.lowered.add(act.name)
        ctx.set_value(act.outputs[0], out_qp.dtype, out_qp)
        after.append(Node(act.name, "identity", (out,), act.outputs,
                          {"target": "aten.alias.default", "args": [{"$in": 0}], "kwargs": {},
                           "fused_into_producer": node.name}, act.source))
    else:
        out_qp = ctx.q.values[out].qparams
    if out_qp.ch_axis is not None and len(out_qp.scale) > 1:
        raise ctx.error(node, "a per-channel quantized output is not supported")
    dt = get_dtype(out_qp.dtype)
    bits = min(prof.multiplier_bits, 63 - bound.bit_length())     # (A5.6)
    if bits < dt.bits:   # A7.1's 1-LSB guarantee needs |a| * 2^-b <= 1/2 for every unsaturated |a| < 2^(bits-1)
        raise ctx.error(node, f"its accumulator bound {bound} leaves only {bits} multiplier bits for a "
                              f"{dt.name} output (docs/arithmetic.md A5.6, A7.1)")
    pairs = [quantize_multiplier(s / out_qp.scale[0], bits) for s in acc_scale64]   # (A5.4), (A5)
    base = node.name
    m0 = _const_i64(ctx, f"{base}.m0", [p[0] for p in pairs])
    shift = _const_i64(ctx, f"{base}.shift", [p[1] for p in pairs])
    attrs.update(output="requant", out_dtype=out_qp.dtype, out_zero_point=int(out_qp.zero_point[0]),
                 multiplier_bits=bits)
    ctx.set_value(out, out_qp.dtype, out_qp)
    return attrs, [m0, shift], after


def _weight_sums(op: str, wc: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_j |w_q[c, j] - z_w|`` per output channel (int64)."""
    if op == "conv_transpose2d":   # (C_in, C_out/g, *K): output channel g*C_out/g + j
        cin, cg = wc.shape[0], wc.shape[1]
        return wc.abs().reshape(groups, cin // groups, cg, -1).sum(dim=(1, 3)).reshape(-1)
    return wc.abs().reshape(wc.shape[0], -1).sum(dim=1)


def lower_weighted(ctx, node: Node) -> None:
    """conv1d, conv2d, conv_transpose2d, linear (see the module docstring)."""
    op = node.op
    x_name, w_name = _input_name(node, 0, "input"), _input_name(node, 1, "weight")
    b_name = _input_name(node, 2, "bias")
    x_qp = _activation_qparams(ctx, node, x_name)
    if w_name is None or ctx.const(w_name) is None:
        raise ctx.error(node, "its weight must be a constant")
    w_q, w_qp = _quantize_const(ctx, node, w_name)
    try:
        conv = _conv_params(node) if op in _CONV_ARGS else {}
    except ValueError as exc:
        raise ctx.error(node, f"unsupported convolution argument {exc}") from None
    groups = conv.get("groups", 1)
    c_out = w_q.shape[1] * groups if op == "conv_transpose2d" else w_q.shape[0]
    w_axis = 1 if op == "conv_transpose2d" else 0
    if w_qp.ch_axis is not None and len(w_qp.scale) > 1 and w_qp.ch_axis % w_q.dim() != w_axis:
        raise ctx.error(node, f"its weight is quantized along axis {w_qp.ch_axis}; expected the output-channel axis {w_axis}")
    s_w = w_qp.scale_tensor().reshape(-1)
    s_w = s_w.repeat(c_out // s_w.numel())                       # per tensor, or transposed-conv groups
    s_x = x_qp.scale[0]
    acc_scale_t = torch.tensor(s_x, dtype=torch.float32) * s_w  # s_acc, float32 (step 1)
    acc_scale64 = [float(s_x) * float(s) for s in s_w.tolist()]
    wsum = _weight_sums(op, _centered(w_q, w_qp), groups)
    bound_w = wsum * _max_abs(x_qp)
    b_q = None
    if b_name is not None:
        b = ctx.const(b_name)
        if b is None:
            raise ctx.error(node, f"its bias {b_name!r} must be a constant")
        b_dtype = "qint32"
        ratio = float((b.to(torch.float32) / acc_scale_t).abs().max())
        if ratio >= 2 ** 31 - 1:   # e.g. a dead channel: BN-folded weights ~0 put s_w at its floor
            b_dtype = f"qint{ctx.profile.wide_acc_bits}"
            if b_dtype not in DTYPES or ratio >= 2 ** (ctx.profile.wide_acc_bits - 1) - 1:
                raise ctx.error(node, f"its bias reaches {ratio:.3g} steps of s_x * s_w, beyond the "
                                      f"{ctx.profile.wide_acc_bits}-bit accumulator")
        b_q = quantize(b, acc_scale_t, torch.zeros(c_out, dtype=torch.int64), b_dtype, 0)   # (A1)
        bound_w = bound_w + b_q.to(torch.int64).abs()
    bound = int(bound_w.max()) if bound_w.numel() else 0
    out_shape = ctx.q.values[node.outputs[0]].shape
    ch_axis = (len(out_shape) - 1) if op == "linear" else (len(out_shape) - _SPATIAL[op] - 1)
    carrier = _choose_carrier(bound, wsum, _x_range(x_qp))
    attrs, mult, after = _plan_output(ctx, node, acc_scale_t.tolist(), acc_scale64, ch_axis, bound, carrier)
    wq_name = ctx.add_const(_fresh(ctx, w_name), w_q, w_qp, w_qp.dtype)
    bq_name = None
    if b_q is not None:
        bq_name = ctx.add_const(_fresh(ctx, f"{node.name}.bias"), b_q,
                                QParams(b_dtype, tuple(acc_scale_t.tolist()), (0,) * c_out, 0), b_dtype)
    attrs.update(conv)
    attrs.update(x_zero_point=int(x_qp.zero_point[0]), w_zero_point=_zero_point_attr(w_qp),
                 w_ch_axis=w_qp.ch_axis if len(w_qp.scale) > 1 else None)
    ctx.emit(Node(node.name, op, (x_name, wq_name, bq_name, *mult), node.outputs, attrs, node.source))
    for n in after:
        ctx.emit(n)


def _operand(ctx, node: Node, name: str | None):
    """A matmul operand: ``(int tensor or None, QParams, is_constant)``."""
    if name is not None and name in ctx.q.constants:
        q, qp = _quantize_const(ctx, node, name)
        return q, qp, True
    return None, _activation_qparams(ctx, node, name), False


_MIN_REDUCTION_32 = 1 << 12   # a dynamic reduction stays on the 32-bit accumulator if it allows this K


def _requant_dtype(ctx, node: Node) -> str | None:
    """The dtype a node requantizes to (its own fake-quant or its fused activation's), or None."""
    if node.attrs.get("fq"):
        return ctx.q.values[node.outputs[0]].qparams.dtype
    act = _quant_node(ctx, node.attrs["fused_into"]) if node.attrs.get("fused_into") else None
    if act is not None and is_activation(act.op):
        qp = ctx.q.values[act.outputs[0]].qparams
        return qp.dtype if qp is not None else None
    return None


def _max_reduction(ctx, node: Node, per_term: int) -> int:
    """The longest reduction whose bound ``K * per_term`` fits the 32-bit accumulator (if it takes
    at least ``_MIN_REDUCTION_32``), else the wide one, leaving a requantizing node at least its
    output's bits of multiplier (A5.6, A7.1). The kernel refuses longer reductions at run time."""
    out = _requant_dtype(ctx, node)
    mult_cap = 2 ** (63 - get_dtype(out).bits) - 1 if out is not None else 2 ** 63 - 1
    for bits in (ctx.profile.acc_bits, ctx.profile.wide_acc_bits):
        k = min(2 ** (bits - 1) - 1, mult_cap) // per_term
        if k >= _MIN_REDUCTION_32 or bits == ctx.profile.wide_acc_bits:
            if k < 1:
                raise ctx.error(node, f"a single product ({per_term}) exceeds its accumulator")
            return k
    raise AssertionError("unreachable")


def lower_matmul(ctx, node: Node) -> None:
    """matmul/bmm/mm: two activations, or one activation and one quantized constant."""
    a_name, b_name = _input_name(node, 0, "self"), _input_name(node, 1, "other")
    (qa, pa, ca), (qb, pb, cb) = _operand(ctx, node, a_name), _operand(ctx, node, b_name)
    a_shape, b_shape = ctx.value(a_name).shape, ctx.value(b_name).shape
    out_nd = len(ctx.q.values[node.outputs[0]].shape)
    pc_a = pa.ch_axis is not None and len(pa.scale) > 1
    pc_b = pb.ch_axis is not None and len(pb.scale) > 1
    if pc_a and pc_b:
        raise ctx.error(node, "both operands are quantized per channel")
    if pc_a and not (len(a_shape) >= 2 and pa.ch_axis % len(a_shape) == len(a_shape) - 2):
        raise ctx.error(node, "a per-channel first operand must be quantized along its rows (axis -2)")
    if pc_b and not (len(b_shape) >= 2 and pb.ch_axis % len(b_shape) == len(b_shape) - 1):
        raise ctx.error(node, "a per-channel second operand must be quantized along its columns (axis -1)")
    s_a, s_b = pa.scale_tensor().reshape(-1), pb.scale_tensor().reshape(-1)
    acc_scale_t = s_a * s_b                                      # float32, broadcast per channel
    acc_scale64 = [float(x) * float(y) for x, y in itertools.product(s_a.tolist(), s_b.tolist())]
    ch_axis = out_nd - 2 if pc_a else out_nd - 1 if pc_b else None
    ma = _centered(qa, pa).abs() if ca else None
    mb = _centered(qb, pb).abs() if cb else None
    wsum = None                   # what multiplies max|a - z_a| when a is an activation (for the split)
    if cb:   # per output column n: sum_k |b[k, n]| * max|a|
        wsum = mb.sum(dim=-2 if mb.dim() > 1 else 0).max()
        bound = int(wsum) * (_max_abs(pa) if not ca else int(ma.max()))
    elif ca:  # per output row m: sum_k |a[m, k]| * max|b|
        bound = int(ma.sum(dim=-1).max()) * _max_abs(pb)
    else:
        k = next((d for d in (a_shape[-1], b_shape[-2] if len(b_shape) > 1 else b_shape[-1]) if isinstance(d, int)), None)
        dynamic = k is None
        if dynamic:   # e.g. attention's probs @ V over the sequence: the longest K the accumulator takes
            k = _max_reduction(ctx, node, _max_abs(pa) * _max_abs(pb))
        wsum = k * _max_abs(pb)
        bound = k * _max_abs(pa) * _max_abs(pb)
    split = not ca and not pc_a and wsum is not None
    carrier = _choose_carrier(bound, wsum, _x_range(pa) if split else None)
    if not ca and not cb and dynamic:     # the kernel picks the carrier for the K it gets, checks K <= max
        carrier = {"carrier": "dynamic", "max_reduction": k, "x_max_abs": _max_abs(pa), "w_max_abs": _max_abs(pb),
                   "x_range": list(_x_range(pa)) if not pc_a else None}
    attrs, mult, after = _plan_output(ctx, node, acc_scale_t.tolist(), acc_scale64, ch_axis, bound, carrier)
    names = []
    for name, q, qp, const in ((a_name, qa, pa, ca), (b_name, qb, pb, cb)):
        names.append(ctx.add_const(_fresh(ctx, name), q, qp, qp.dtype) if const else name)
    attrs.update(x_zero_point=_zero_point_attr(pa), x_ch_axis=pa.ch_axis if pc_a else None,
                 w_zero_point=_zero_point_attr(pb), w_ch_axis=pb.ch_axis if pc_b else None)
    ctx.emit(Node(node.name, "matmul", (names[0], names[1], None, *mult), node.outputs, attrs, node.source))
    for n in after:
        ctx.emit(n)


def lower_embedding(ctx, node: Node) -> None:
    """The table's codes gathered; the output shares the table's qparams (rule "source")."""
    t_name, idx_name = _input_name(node, 0, "weight"), _input_name(node, 1, "indices")
    t_q, t_qp = _quantize_const(ctx, node, t_name)
    out = node.outputs[0]
    out_nd = len(ctx.q.values[out].shape)
    if t_qp.ch_axis is not None and len(t_qp.scale) > 1:
        if t_qp.ch_axis % 2 != 1:
            raise ctx.error(node, "an embedding table quantized per row cannot give a quantized output")
        grid = QParams(t_qp.dtype, t_qp.scale, t_qp.zero_point, out_nd - 1)
    else:
        grid = QParams(t_qp.dtype, t_qp.scale[:1], t_qp.zero_point[:1], None)
    out_qp = ctx.q.values[out].qparams if node.attrs.get("fq") else None
    attrs: dict = {"output": "gather"}
    mult: list = []
    if out_qp is not None and out_qp != grid:
        if grid.ch_axis is not None or (out_qp.ch_axis is not None and len(out_qp.scale) > 1):
            raise ctx.error(node, "requantizing a per-channel embedding output is not supported")
        bits = ctx.profile.multiplier_bits
        m0, shift = quantize_multiplier(grid.scale[0] / out_qp.scale[0], bits)          # (A5)
        mult = [_const_i64(ctx, f"{node.name}.m0", m0), _const_i64(ctx, f"{node.name}.shift", shift)]
        attrs.update(output="requant", in_zero_point=int(grid.zero_point[0]), out_dtype=out_qp.dtype,
                     out_zero_point=int(out_qp.zero_point[0]), multiplier_bits=bits)
        grid = out_qp
    tq_name = ctx.add_const(_fresh(ctx, t_name), t_q, t_qp, t_qp.dtype)
    ctx.set_value(out, grid.dtype, grid)
    ctx.emit(Node(node.name, "embedding", (tq_name, idx_name, *mult), node.outputs, attrs, node.source))


# =============================================================================================
# Kernels
# =============================================================================================
def _along(t: torch.Tensor, axis: int | None, ndim: int) -> torch.Tensor:
    """A per-channel parameter shaped to broadcast along ``axis`` of an ``ndim``-d tensor."""
    if axis is None or t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return t.reshape(shape)


def _center(q: torch.Tensor, zp, axis, dtype: torch.dtype) -> torch.Tensor:
    """``q - z`` in the carrier ``dtype`` (exact: codes and zero points are small integers)."""
    c = q.to(dtype)
    if isinstance(zp, list):
        return c - _along(torch.tensor(zp, dtype=dtype), axis, q.dim())
    return c - zp if zp else c


# -- reference: int64, the sums written out ------------------------------------------------------
def _ref_conv(x, w, a):
    """``sum_{c, k} x[n, c, o*s + k*d - p] * w[o, c, k]`` per group, one kernel tap at a time."""
    nd = w.dim() - 2
    stride, pad, dil, g = a["stride"], a["padding"], a["dilation"], a["groups"]
    x = F.pad(x, [p for p in reversed(pad) for _ in (0, 1)])    # zeros: (x_q - z_x) of a padded real 0
    n, c, size = x.shape[0], x.shape[1], x.shape[2:]
    o, k = w.shape[0], w.shape[2:]
    out = [(size[i] - dil[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    xg = x.reshape(n, g, c // g, *size)
    wg = w.reshape(g, o // g, c // g, *k)
    acc = torch.zeros((n, g, o // g, *out), dtype=torch.int64)
    for tap in itertools.product(*(range(e) for e in k)):
        win = tuple(slice(tap[i] * dil[i], tap[i] * dil[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(nd))
        patch = xg[(slice(None),) * 3 + win]                     # (n, g, c/g, *out)
        acc += torch.einsum("ngc...,goc->ngo...", patch, wg[(slice(None),) * 3 + tap])
    return acc.reshape(n, o, *out)


def _ref_conv_transpose(x, w, a):
    """Scatter: ``out[n, o, i*s + k*d - p] += x[n, c, i] * w[c, o, k]`` per group, then crop."""
    nd = w.dim() - 2
    stride, pad, opad, dil, g = a["stride"], a["padding"], a["output_padding"], a["dilation"], a["groups"]
    n, c, size = x.shape[0], x.shape[1], x.shape[2:]
    og, k = w.shape[1], w.shape[2:]
    full = [(size[i] - 1) * stride[i] + dil[i] * (k[i] - 1) + 1 + opad[i] for i in range(nd)]
    xg = x.reshape(n, g, c // g, *size)
    wg = w.reshape(g, c // g, og, *k)
    acc = torch.zeros((n, g, og, *full), dtype=torch.int64)
    for tap in itertools.product(*(range(e) for e in k)):
        win = tuple(slice(tap[i] * dil[i], tap[i] * dil[i] + stride[i] * (size[i] - 1) + 1, stride[i]) for i in range(nd))
        acc[(slice(None),) * 3 + win] += torch.einsum("ngc...,gco->ngo...", xg, wg[(slice(None),) * 3 + tap])
    crop = tuple(slice(pad[i], full[i] - pad[i]) for i in range(nd))
    return acc[(slice(None),) * 3 + crop].reshape(n, og * g, *[full[i] - 2 * pad[i] for i in range(nd)])


_REFERENCE = {
    "conv1d": _ref_conv, "conv2d": _ref_conv, "conv_transpose2d": _ref_conv_transpose,
    "linear": lambda x, w, a: torch.matmul(x, w.t()),
    "matmul": lambda x, w, a: torch.matmul(x, w),
}

# -- fast: torch's float kernels on exact integer-valued carriers ---------------------------------
_FAST = {
    "conv1d": lambda x, w, b, a: F.conv1d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
    "conv2d": lambda x, w, b, a: F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
    "conv_transpose2d": lambda x, w, b, a: F.conv_transpose2d(x, w, b, a["stride"], a["padding"],
                                                              a["output_padding"], a["groups"], a["dilation"]),
    "linear": lambda x, w, b, a: F.linear(x, w, b),
    "matmul": lambda x, w, b, a: torch.matmul(x, w),
}
_CARRIERS = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def _float32_exact() -> bool:
    """False if torch/oneDNN may multiply float32 in reduced precision (bf16/tf32 on CPU)."""
    mk = torch.backends.mkldnn
    settings = [getattr(getattr(mk, k, None), "fp32_precision", "none") for k in ("conv", "matmul")]
    fpmath = os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", os.environ.get("DNNL_DEFAULT_FPMATH_MODE", "strict"))
    return torch.get_float32_matmul_precision() == "highest" and all(s in ("none", "ieee") for s in settings) \
        and fpmath.lower() == "strict"


def accumulate(op: str, attrs: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
               reference: bool = False) -> torch.Tensor:
    """``sum_j (x_q - z_x) * (w_q - z_w) + b_q`` as int64, exactly."""
    return _accumulate(op, attrs, x, w, b, reference).to(torch.int64)


def _accumulate(op, attrs, x, w, b, reference):
    """``accumulate`` in its carrier: float32/float64 tensors hold the exact integers.

    On a float carrier the bias is the float kernel's own bias: every partial sum, bias
    included, is bounded by ``A`` (which counts ``|b_q|``), so it stays exact."""
    carrier = "int64" if reference else attrs["carrier"]
    if carrier in ("float32", "float32_limbs") and not _float32_exact():
        carrier = "float64"
    if carrier == "float32_limbs":
        return _accumulate_limbs(op, attrs, x, w, b)
    dt = _CARRIERS[carrier]
    xc = _center(x, attrs["x_zero_point"], attrs.get("x_ch_axis"), dt)
    wc = _center(w, attrs["w_zero_point"], attrs.get("w_ch_axis"), dt)
    unbatched = op in _SPATIAL and xc.dim() == w.dim() - 1
    if unbatched:
        xc = xc.unsqueeze(0)
    if dt == torch.int64:
        acc = _REFERENCE[op](xc, wc, attrs)
        if b is not None:
            acc = acc + _along(b.to(torch.int64), attrs["ch_axis"] + (1 if unbatched else 0), acc.dim())
    else:
        with torch.backends.nnpack.flags(enabled=False):      # NNPACK's Winograd/FFT are not exact
            acc = _FAST[op](xc, wc, None if b is None else b.to(dt), attrs)
    return acc.squeeze(0) if unbatched else acc


def _accumulate_limbs(op, attrs, x, w, b):
    """Exact float32 sums of ``x_q - z_x`` (``limb_shift = 0``) or of its limbs ``hi * 2^s + lo``
    (bounds in ``_choose_carrier``), joined with the bias exactly in float64 (``|acc| < 2^53``)."""
    s = attrs["limb_shift"]
    xi = x.to(torch.int32) - attrs["x_zero_point"]              # per-tensor zero point (limbs only then)
    limbs = [xi.to(torch.float32)] if s == 0 else [(xi >> s).to(torch.float32), (xi & ((1 << s) - 1)).to(torch.float32)]
    wc = _center(w, attrs["w_zero_point"], attrs.get("w_ch_axis"), torch.float32)
    unbatched = op in _SPATIAL and x.dim() == w.dim() - 1
    if unbatched:
        limbs = [t.unsqueeze(0) for t in limbs]
    with torch.backends.nnpack.flags(enabled=False):
        acc = _FAST[op](limbs[0], wc, None, attrs).to(torch.float64)
        if s:
            acc.mul_(1 << s).add_(_FAST[op](limbs[1], wc, None, attrs))
    if b is not None:
        acc += _along(b.to(torch.float64), attrs["ch_axis"] + (1 if unbatched else 0), acc.dim())
    return acc.squeeze(0) if unbatched else acc


_CHUNK = 1 << 16   # elements requantized at a time: the int64 temporaries of (A7) stay in cache


def _finish(acc: torch.Tensor, attrs: dict, m0, shift) -> torch.Tensor:
    """The output stage; ``acc`` holds exact integers (int64, or a float carrier, which qmath
    converts to int64 exactly)."""
    ch, nd, mode = attrs["ch_axis"], acc.dim(), attrs["output"]
    if mode == "requant":
        m0, shift = _along(m0, ch, nd), _along(shift, ch, nd)
        args = (attrs["out_dtype"], attrs["out_zero_point"], attrs.get("bound"))
        per_row = acc[0].numel() if nd > 1 and acc.shape[0] else acc.numel()  # acc[0]: not on an empty batch
        if nd > 1 and ch != 0 and acc.numel() > _CHUNK:      # rows of axis 0 at a time (same values)
            y = torch.empty(acc.shape, dtype=get_dtype(attrs["out_dtype"]).storage)
            step = max(1, _CHUNK // max(1, per_row))
            for i in range(0, acc.shape[0], step):
                y[i:i + step] = requantize(acc[i:i + step], m0, shift, *args)
        else:
            y = requantize(acc, m0, shift, *args)
        if "clamp" in attrs:                                    # the fused relu/clamp, on the output grid
            y = y.clamp_(*attrs["clamp"])
        return y
    if mode == "acc":
        return saturate(acc.to(torch.int64), attrs["out_dtype"])   # |acc| <= bound: never clamps
    return dequantize(acc, torch.tensor(attrs["acc_scale"]), 0, ch)


def _dynamic_carrier(node: Node, x: torch.Tensor) -> dict:
    """A matmul lowered for reductions up to ``max_reduction``: check K, pick its carrier."""
    a = node.attrs
    k = x.shape[-1]
    if k > a["max_reduction"]:
        raise RuntimeError(f"node {node.name!r}: reduction length {k} exceeds {a['max_reduction']}, the longest "
                           "for which convert checked the accumulator bound (docs/arithmetic.md A8)")
    choice = _choose_carrier(k * a["x_max_abs"] * a["w_max_abs"], k * a["w_max_abs"],
                             tuple(a["x_range"]) if a["x_range"] is not None else None)
    return {**a, **choice}


def _reduce_kernel(reference: bool):
    def kernel(g, node: Node, args):
        x, w, b, m0, shift = (list(args) + [None] * 5)[:5]
        a = _dynamic_carrier(node, x) if node.attrs["carrier"] == "dynamic" else node.attrs
        return _finish(_accumulate(node.op, a, x, w, b, reference), a, m0, shift)
    kernel.__name__ = "k_reduce_reference" if reference else "k_reduce"
    return kernel


def k_embedding(g, node: Node, args):
    table, idx = args[0], args[1]
    y = table[idx]
    a = node.attrs
    if a["output"] == "requant":
        y = requantize(y.to(torch.int64) - a["in_zero_point"], args[2], args[3], a["out_dtype"], a["out_zero_point"])
    return y


k_reduce = _reduce_kernel(reference=False)
k_reduce_reference = _reduce_kernel(reference=True)

_R = dict(lower=lower_weighted, kernel=k_reduce, reference=k_reduce_reference, onnx_int="reduce")
SPECS = [
    OpSpec("conv1d", ("aten.conv1d.default",), spatial_dims=1, **_CONV, **_R),
    OpSpec("conv2d", ("aten.conv2d.default",), spatial_dims=2, **_CONV, **_R),
    OpSpec("conv_transpose2d", ("aten.conv_transpose2d.input",), weight_ch_axis=1, spatial_dims=2, transposed=True,
           **_CONV, **_R),
    OpSpec("linear", ("aten.linear.default",), **_CONV, **_R),
    OpSpec("matmul", ("aten.matmul.default", "aten.bmm.default", "aten.mm.default"),
           fuse_activation=True, high_precision_output=True, **{**_R, "lower": lower_matmul}),
    OpSpec("embedding", ("aten.embedding.default",), rule="source", weight_arg=0, lower=lower_embedding,
           kernel=k_embedding, onnx_int="embedding"),
]
