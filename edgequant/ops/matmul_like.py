"""Conv, linear, matmul and embedding: ops that reduce products into an accumulator.

Stage: ``convert`` (the rows' ``lower``: a quant-level node -> int-level nodes and integer
constants); the rows' kernels, which ``run`` calls at level ``"int"``, are in
``ops.matmul_kernels``. Equation labels are those of ``docs/arithmetic.md``; every rounding,
shift and saturation below is a ``qmath`` call, and ``s_acc``, the bias on its grid and the
multiplier's bits are qmath's one function each (``accumulator_scale``, ``bias_steps`` /
``bias_dtype`` / ``quantize_bias``, ``multiplier_bits`` through ``affine.requant_bits``).

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

Kernels (``ops.matmul_kernels``, integer only): ``acc[c] = sum_j (x_q[j] - z_x) * (w_q[c, j] -
z_w[c]) + b_q[c]`` exactly (an int64 reference, and torch's float kernels on exact carriers),
then the output stage: (A7) with the bounds, the saturated accumulator, or (A2).

Embedding (rule "source"): the table is quantized by (A1) and the kernel gathers its codes; the
output lies on the table's grid (exact, 0 LSB). If the output were fake-quantized onto another
grid, the gathered codes are requantized by (A7) with ``M = s_table / s_y``.

Agreement with the quant-level graph (the VALIDATION simulation), stated per op in output LSB:
conv1d/conv2d/conv_transpose2d/linear/matmul with a requantized output: at most 1 LSB (A7.1:
the multiplier's relative error 2^-b and float32 summation in the simulation; a 1-LSB difference
happens only near a rounding tie, or, where ``b`` is close to the output's bits, within
``2^(bits - 1 - b)`` LSB of one: a matmul of two int16 activations over a dynamic reduction length
keeps ``b = 16`` for its int16 output, so its value before rounding may be off by 1/2 LSB (0.26
measured) and up to 11 % of the elements of BERT/RoBERTa's int16 ``probs @ V`` differ by 1 LSB
(``edgequant.analysis.op_lsb`` on the model zoo). The simulation puts a conv1d/conv2d/linear bias
on the same accumulator grid as here, by the same (A1) rounding of ``bias / (s_x * s_w)``
(``fake_quant.BiasCorrection.grid_bias``); where it does not (conv_transpose2d, or
``prepare(..., bias_correction=False)``), the bias's rounding adds at most ``M/2`` LSB. Measured
on one-op models: 100 % of elements exact for conv1d, conv2d (plain and depthwise + relu6),
linear and matmul, 99.998 % for a strided dilated conv2d + relu, 99.92 % for conv_transpose2d,
the rest 1 LSB (tests/test_int_matmul_like.py). Accumulator and float outputs: within
``s_acc/2`` (the bias rounding, where the simulation does not do it) plus the simulation's
float32 error. Embedding: exact on the table's grid; requantized onto another grid, one (A7)
rounding, <= 1 LSB (its row's ``OpSpec.lsb`` is 1; the other rows' the default 1).
"""
from __future__ import annotations

import math

import torch

from ..dtype import DTYPES, get_dtype
from ..ir import Node, QParams
from ..qmath import accumulator_scale, bias_dtype, bias_steps, channel_vector, quantize, quantize_bias, \
    quantize_multiplier
from .affine import requant_bits
from .elementwise import activation_bounds, is_activation
from .matmul_kernels import choose_carrier, k_embedding, k_reduce, k_reduce_reference
from .operands import activation_identity, arg, dtype_bound, find_qnode, input_name
from .spec import OpSpec

_CONV = dict(weight_arg=1, bias_arg=2, fuse_activation=True, fuse_add=True, high_precision_output=True)


# argument positions of the aten overloads (after input, weight, bias)
_CONV_ARGS = {
    "conv1d": (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv2d": (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv3d": (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv_transpose2d": (("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)),
    "conv_transpose1d": (("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)),
}


def _row(op: str) -> OpSpec:
    """This family's row of ``op`` (its ``spatial_dims``, ``transposed``, ``weight_ch_axis``)."""
    return next(s for s in SPECS if s.name == op)


def _fresh(ctx, base: str) -> str:
    name, k = base, 1
    while name in ctx.values or name in ctx.constants:
        name, k = f"{base}_{k}", k + 1
    return name


def _activation_qparams(ctx, node: Node, name: str | None) -> QParams:
    """The per-tensor qparams of an activation input (errors name the node)."""
    qp = ctx.qparams(name) if name is not None else None
    if qp is None:
        raise ctx.error(node, f"its input {name!r} is not quantized")
    if qp.ch_axis is not None and len(qp.scale) > 1:
        raise ctx.error(node, f"its input {name!r} is quantized per channel ({qp.dtype}); "
                              "conv/linear/matmul take per-tensor activations")
    return qp


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
    return q.to(torch.int64) - channel_vector(qp.zero_point, q.dim(), qp.ch_axis)


def _zero_point_attr(qp: QParams):
    """``int`` (per tensor) or ``list`` (per channel) zero point; ``0`` when all are zero."""
    if all(z == 0 for z in qp.zero_point):
        return 0
    return list(qp.zero_point) if qp.ch_axis is not None and len(qp.zero_point) > 1 else qp.zero_point[0]


def _conv_params(node: Node) -> dict:
    nd = _row(node.op).spatial_dims
    out = {}
    for i, (key, default) in enumerate(_CONV_ARGS[node.op], start=3):
        v = arg(node, i, key, default)
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
    fused = find_qnode(ctx, a["fused_into"]) if a.get("fused_into") else None
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
        after.append(activation_identity(act, out, node.name))
    else:
        out_qp = ctx.q.values[out].qparams
    if out_qp.ch_axis is not None and len(out_qp.scale) > 1:
        raise ctx.error(node, "a per-channel quantized output is not supported")
    bits = requant_bits(ctx, node, bound, out_qp.dtype)     # (A5.6); A7.1's 1 LSB needs b >= the output's bits
    pairs = [quantize_multiplier(s / out_qp.scale[0], bits) for s in acc_scale64]   # (A5.4), (A5)
    base = node.name
    m0 = _const_i64(ctx, f"{base}.m0", [p[0] for p in pairs])
    shift = _const_i64(ctx, f"{base}.shift", [p[1] for p in pairs])
    attrs.update(output="requant", out_dtype=out_qp.dtype, out_zero_point=int(out_qp.zero_point[0]),
                 multiplier_bits=bits)
    ctx.set_value(out, out_qp.dtype, out_qp)
    return attrs, [m0, shift], after


def _weight_sums(spec: OpSpec, wc: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_j |w_q[c, j] - z_w|`` per output channel (int64)."""
    if spec.transposed:   # (C_in, C_out/g, *K): output channel g*C_out/g + j
        cin, cg = wc.shape[0], wc.shape[1]
        return wc.abs().reshape(groups, cin // groups, cg, -1).sum(dim=(1, 3)).reshape(-1)
    return wc.abs().reshape(wc.shape[0], -1).sum(dim=1)


def lower_weighted(ctx, node: Node) -> None:
    """conv1d, conv2d, conv_transpose2d, linear (see the module docstring)."""
    op, spec = node.op, _row(node.op)
    x_name, w_name = input_name(node, 0, "input"), input_name(node, 1, "weight")
    b_name = input_name(node, 2, "bias")
    x_qp = _activation_qparams(ctx, node, x_name)
    if w_name is None or ctx.const(w_name) is None:
        raise ctx.error(node, "its weight must be a constant")
    w_q, w_qp = _quantize_const(ctx, node, w_name)
    try:
        conv = _conv_params(node) if spec.spatial_dims else {}
    except ValueError as exc:
        raise ctx.error(node, f"unsupported convolution argument {exc}") from None
    groups = conv.get("groups", 1)
    c_out = w_q.shape[1] * groups if spec.transposed else w_q.shape[0]
    w_axis = spec.weight_ch_axis
    if w_qp.ch_axis is not None and len(w_qp.scale) > 1 and w_qp.ch_axis % w_q.dim() != w_axis:
        raise ctx.error(node, f"its weight is quantized along axis {w_qp.ch_axis}; expected the output-channel axis {w_axis}")
    s_x, s_w = x_qp.scale[0], w_qp.scale_tensor()   # s_w: per tensor, per channel, or per transposed-conv group
    acc_scale_t = accumulator_scale(s_x, s_w, c_out)                        # s_acc, float32 (step 1)
    acc_scale64 = accumulator_scale(s_x, s_w, c_out, torch.float64).tolist()
    wsum = _weight_sums(spec, _centered(w_q, w_qp), groups)
    bound_w = wsum * dtype_bound(x_qp)
    b_q = None
    if b_name is not None:
        b = ctx.const(b_name)
        if b is None:
            raise ctx.error(node, f"its bias {b_name!r} must be a constant")
        steps = bias_steps(b, acc_scale_t)
        b_dtype = bias_dtype(steps, ctx.profile.wide_acc_bits)   # qint32, else the wide accumulator's type
        if b_dtype is None:
            raise ctx.error(node, f"its bias reaches {steps:.3g} steps of s_x * s_w, beyond the "
                                  f"{ctx.profile.wide_acc_bits}-bit accumulator")
        b_q = quantize_bias(b, acc_scale_t, b_dtype)   # (A1)
        bound_w = bound_w + b_q.to(torch.int64).abs()
    bound = int(bound_w.max()) if bound_w.numel() else 0
    out_shape = ctx.q.values[node.outputs[0]].shape
    ch_axis = len(out_shape) - 1 - (spec.spatial_dims or 0)
    carrier = choose_carrier(bound, wsum, _x_range(x_qp))
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
    act = find_qnode(ctx, node.attrs["fused_into"]) if node.attrs.get("fused_into") else None
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
    a_name, b_name = input_name(node, 0, "self"), input_name(node, 1, "other")
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
    s_a, s_b = pa.scale_tensor(), pb.scale_tensor()             # one of them may be per channel
    acc_scale_t = accumulator_scale(s_a, s_b)                    # float32
    acc_scale64 = accumulator_scale(s_a, s_b, dtype=torch.float64).tolist()
    ch_axis = out_nd - 2 if pc_a else out_nd - 1 if pc_b else None
    ma = _centered(qa, pa).abs() if ca else None
    mb = _centered(qb, pb).abs() if cb else None
    wsum = None                   # what multiplies max|a - z_a| when a is an activation (for the split)
    if cb:   # per output column n: sum_k |b[k, n]| * max|a|
        wsum = mb.sum(dim=-2 if mb.dim() > 1 else 0).max()
        bound = int(wsum) * (dtype_bound(pa) if not ca else int(ma.max()))
    elif ca:  # per output row m: sum_k |a[m, k]| * max|b|
        bound = int(ma.sum(dim=-1).max()) * dtype_bound(pb)
    else:
        k = next((d for d in (a_shape[-1], b_shape[-2] if len(b_shape) > 1 else b_shape[-1]) if isinstance(d, int)), None)
        dynamic = k is None
        if dynamic:   # e.g. attention's probs @ V over the sequence: the longest K the accumulator takes
            k = _max_reduction(ctx, node, dtype_bound(pa) * dtype_bound(pb))
        wsum = k * dtype_bound(pb)
        bound = k * dtype_bound(pa) * dtype_bound(pb)
    split = not ca and not pc_a and wsum is not None
    carrier = choose_carrier(bound, wsum, _x_range(pa) if split else None)
    if not ca and not cb and dynamic:     # the kernel picks the carrier for the K it gets, checks K <= max
        carrier = {"carrier": "dynamic", "max_reduction": k, "x_max_abs": dtype_bound(pa), "w_max_abs": dtype_bound(pb),
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
    t_name, idx_name = input_name(node, 0, "weight"), input_name(node, 1, "indices")
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
    ctx.copy_const(idx_name)  # constant indices (CLIP's position_ids buffer) travel with the node
    ctx.set_value(out, grid.dtype, grid)
    ctx.emit(Node(node.name, "embedding", (tq_name, idx_name, *mult), node.outputs, attrs, node.source))


# int-level attrs (read by edgequant.check_attrs) as lower_weighted, lower_matmul and lower_embedding write them
_REDUCE_ATTRS = {
    "carrier": {"float32": {}, "float64": {}, "int64": {},
                "float32_limbs": {"limb_shift": "limb shift", "x_zero_point": "int"},
                "dynamic": {"max_reduction": "count", "x_max_abs": "int", "w_max_abs": "int",
                            "x_range": "optional int pair"}},
    "x_zero_point": "int or ints", "w_zero_point": "int or ints", "ch_axis": "axis", "clamp?": "int pair",
    "output": {"requant": {"out_dtype": "qdtype", "out_zero_point": "int"}, "acc": {"out_dtype": "qdtype"},
               "float": {"acc_scale": "numbers"}}}
_CONV_ATTRS = {**_REDUCE_ATTRS, "stride": "sizes", "padding": "paddings", "dilation": "sizes", "groups": "groups"}
_EMBEDDING_ATTRS = {"output": {"requant": {"in_zero_point": "int", "out_dtype": "qdtype", "out_zero_point": "int"},
                               "gather": {}}}
_R = dict(lower=lower_weighted, kernel=k_reduce, reference=k_reduce_reference, onnx_int="reduce",
          int_inputs=("x", "w", "bias?", "m0", "shift"), int_zero_points=(("x_zero_point", 0), ("w_zero_point", 1)))
SPECS = [
    OpSpec("conv1d", ("aten.conv1d.default",), spatial_dims=1, bias_correction=True, int_attrs=_CONV_ATTRS,
           **_CONV, **_R),
    OpSpec("conv2d", ("aten.conv2d.default",), spatial_dims=2, bias_correction=True, int_attrs=_CONV_ATTRS,
           **_CONV, **_R),
    # video and volumetric models (VideoMAE's tubelet embedding, 3-D CNNs): the same code, three spatial dims
    OpSpec("conv3d", ("aten.conv3d.default",), spatial_dims=3, bias_correction=True, int_attrs=_CONV_ATTRS,
           **_CONV, **_R),
    OpSpec("conv_transpose2d", ("aten.conv_transpose2d.input",), weight_ch_axis=1, spatial_dims=2, transposed=True,
           int_attrs={**_CONV_ATTRS, "output_padding": "paddings"}, **_CONV, **_R),
    # audio decoders and vocoders (HiFi-GAN, EnCodec, Demucs): the same code, one spatial dim
    OpSpec("conv_transpose1d", ("aten.conv_transpose1d.default",), weight_ch_axis=1, spatial_dims=1, transposed=True,
           int_attrs={**_CONV_ATTRS, "output_padding": "paddings"}, **_CONV, **_R),
    OpSpec("linear", ("aten.linear.default",), bias_correction=True, weight_transposed_in_product=True,
           int_attrs=_REDUCE_ATTRS, **_CONV, **_R),
    OpSpec("matmul", ("aten.matmul.default", "aten.bmm.default", "aten.mm.default"),
           fuse_activation=True, high_precision_output=True, int_attrs=_REDUCE_ATTRS, **{**_R, "lower": lower_matmul}),
    OpSpec("embedding", ("aten.embedding.default",), rule="source", weight_arg=0, lower=lower_embedding,
           kernel=k_embedding, onnx_int="embedding", int_attrs=_EMBEDDING_ATTRS,
           int_inputs=("table", "indices", "m0", "shift"), lsb=1.0),   # 0 on the table's grid, 1 requantized
]
