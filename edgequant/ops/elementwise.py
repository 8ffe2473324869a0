"""Elementwise arithmetic and piecewise-linear activations: specs, integer lowering, kernels.

Stage: ``convert`` (a row's ``lower``: quant-level node -> int-level node) and ``run`` at level
"int" (``run_kernel``). Every lowered node keeps its canonical ``op`` and carries integer
parameters only (multipliers, shifts, zero points, bounds) in ``attrs``; ``attrs["kernel"]``
names the integer kernel of ``KERNELS`` that runs it. All rounding is qmath's (A6) half to even.
Operands and the int-level node are ``ops.operands``'; the affine plan and kernel ``ops.affine``'.

The kernels
-----------
``affine`` (add, sub, rsub, scalar add/sub/mul/div, neg, abs, clamp/hardtanh/relu6, relu,
leaky_relu, prelu, and batch_norm in ``norm_softmax``): one integer sum, one rounding
(``ops.affine``), with the input bounds ``B_i`` of ``ops.operands.Operand``.

``product`` (tensor * tensor): ``y = requantize((qa - za) * (qb - zb), m0, n)`` (A7) with
``m0`` of ``b = min(multiplier_bits, 63 - bitlength(Ba * Bb))`` bits (A5.6, ``requant_bits``).

``rescale_call`` (cat, stack, where, maximum, minimum, clamp with tensor bounds): every
quantized input is first rescaled onto the output grid by an ``affine`` plan (skipped when it
already is on it), then the recorded torch op runs on the integers. Exact by monotonicity:
``fq(max(a, b)) = max(fq(a), fq(b))``, likewise for clamp, where and concatenation.

``interval`` (compare against a scalar): the boolean is ``lo <= q <= hi`` (negated for ``ne``),
with integer thresholds found at convert time by evaluating the simulation's own float32
comparison on every code of the input type: bit-exact. ``compare2`` (two quantized tensors):
``s_a (qa - za)`` vs ``s_b (qb - zb)`` compared exactly as integers (float32 scales are
``mantissa * 2^exponent``; both sides are brought to the smaller exponent).

Agreement with the simulation (quant-level graph), in LSB of the op's output
-----------------------------------------------------------------------------
| op | bound | why |
|---|---|---|
| compare vs scalar, relu on its input's grid | 0 (bit exact) | integer thresholds |
| add, sub, rsub, mul, div (scalar), neg, abs, clamp family, relu (rescaled), leaky_relu, prelu, maximum, minimum, where | <= 1 | one rounding of a sum exact to ~2^-31 |
| compare of two tensors | exact in real arithmetic | the float32 sim may differ where two products round to the same float |

A 1-LSB difference happens only where the exact value is at, or within ~2^-20 LSB of, a
rounding tie: the simulation's float32 intermediates pick a side there, the integer model
rounds half to even per its fixed-point multiplier. Exact ties are frequent with simple
ratios (a leaky slope of 0.1: 3% of int16 elements differ by 1 LSB); elsewhere well under 1%.
Measured per op in ``tests/test_int_elementwise.py``.

The rows' ``OpSpec.lsb`` (checked node by node on real models by ``edgequant.analysis.op_lsb``):
1 for the rows of the second line (``relu`` included: 0 on its input's grid, 1 rescaled), 0 for
``compare``. Its boolean is compared exactly; for two tensors the integer comparison is exact and
only the float32 simulation can flip an element (two different products rounding to the same
float), which ``op_lsb`` reports so that it is looked at (none seen in the model zoo, where every
comparison runs on float index or mask values).

The conv+add fusion and fused activations (the handshake with ``matmul_like``)
---------------------------------------------------------------------------------
- A conv/linear fused into an add (its ``attrs["fused_into"]`` names the add) lowers to a node
  with ``attrs["output"] == "acc"`` whose output value has an accumulator dtype (``qint32``,
  ``qint48`` or ``qint64``) and per-channel ``QParams``: scale ``s_x * s_w[c]``, zero point 0,
  ``ch_axis`` the channel axis. The add makes it one more ``affine`` term (per-channel
  multipliers ``s_x s_w[c] / s_out``, hence per-channel shifts), so both inputs are summed
  exactly before the one rounding. Its bound ``B`` is that node's ``attrs["bound"]`` (the
  (A8) accumulator bound), else the dtype's range.
- A producer fused into an activation (its ``attrs["fused_into"]`` names a relu, relu6,
  hardtanh or clamp node) applies it: it requantizes straight to the activation's output
  ``QParams``, clamps to the activation's bounds quantized on that grid (``activation_bounds``;
  exact: ``fq(clamp(x, a, b)) = clamp(fq(x), fq(a), fq(b))``), sets
  ``attrs["fused_activation"] = <activation node name>`` on its int-level node, emits the
  activation as an ``identity`` node (same name, ``attrs["fused_into_producer"]``) and adds the
  activation's name to ``ctx.lowered`` so the driver skips it. The add here and conv/linear/
  matmul in ``matmul_like`` do exactly this; an activation that still reaches its lowering while
  its producer was fused into it is refused with an error naming both.
"""
from __future__ import annotations

import math

import torch

from ..dtype import get_dtype
from ..ir import Node, QParams
from ..qmath import dequantize, multiply_by_quantized_multiplier, saturate
from .affine import INT64_LIMIT, affine, k_affine, operand_term, plan_affine, requant_bits, requant_multiplier, rescale_plan
from .call import call_target
from .names import resolve
from .operands import Operand, arg, emit, emit_op, find_qnode, is_input, operand, quantize_value, scalar
from .spec import OpSpec


# == activations: the rows a producer may absorb, and their bounds ====================================
def is_activation(op: str) -> bool:
    """Whether ``op`` is a row of this family that a conv/linear/add may absorb (relu, clamp)."""
    return any(s.name == op and s.activation for s in SPECS)


def activation_range(target: str, get):
    """The real bounds ``(lo, hi)`` of a relu/relu6/hardtanh/clamp/clamp_min/clamp_max call.

    ``target`` is the aten overload's name (``"aten.clamp.default"``); ``get(index, name,
    default)`` returns the call's argument at position ``index`` or keyword ``name``, so this
    reads converter IR nodes and torch.fx nodes alike. An absent bound is ``None``; a bound is
    returned as ``get`` gives it (a number, or whatever stands for a tensor). Returns ``None``
    for any other target (e.g. ``aten.clamp.Tensor``).
    """
    if target.startswith("aten.relu"):
        return 0.0, (6.0 if target == "aten.relu6.default" else None)
    if target == "aten.hardtanh.default":
        return get(1, "min_val", -1.0), get(2, "max_val", 1.0)
    if target == "aten.clamp.default":
        return get(1, "min", None), get(2, "max", None)
    if target == "aten.clamp_min.default":
        return get(1, "min", None), None
    if target == "aten.clamp_max.default":
        return None, get(1, "max", None)
    return None


def activation_bounds(ctx, act: Node, qp: QParams) -> tuple[int, int]:
    """The integer clamp ``(lo, hi)`` on ``qp``'s grid of a relu/relu6/hardtanh/clamp node.

    Exact: ``fq(clamp(x, a, b)) = clamp(fq(x), fq(a), fq(b))`` for any monotone quantizer.
    """
    dt = get_dtype(qp.dtype)
    t = act.attrs.get("target", "")
    bounds = activation_range(t, lambda i, name, default: scalar(arg(act, i, name, default)))
    if bounds is None:
        raise ctx.error(act, f"{t} has no scalar bounds to apply as an integer clamp")
    lo_r, hi_r = bounds
    if any(is_input(v) for v in (lo_r, hi_r)):
        raise ctx.error(act, "a clamp with tensor bounds cannot be fused into its producer")
    lo = dt.qmin if lo_r is None else quantize_value(lo_r, qp)
    hi = dt.qmax if hi_r is None else quantize_value(hi_r, qp)
    return lo, hi


def output_grid(ctx, node: Node):
    """``(out_value, QParams, lo, hi, fused activation node or None)`` of a computing node.

    A node fused into an activation produces that activation's output grid and clamp.
    """
    act = None
    fused = node.attrs.get("fused_into")
    if fused:
        act = find_qnode(ctx, fused)
        if act is None or not is_activation(act.op):
            raise ctx.error(node, f"it is fused into {fused!r}, which is not an activation edgequant can fuse")
        qp = ctx.q.values[act.outputs[0]].qparams
    else:
        qp = ctx.q.values[node.outputs[0]].qparams
    if qp is None:
        raise ctx.error(node, "its output has no qparams (a float output of quantized inputs); "
                              "put a DeQuantStub before the op or give it a qconfig")
    if qp.ch_axis is not None and len(qp.scale) > 1:
        raise ctx.error(node, "per-channel output qparams are not supported for this op")
    qp = QParams(qp.dtype, qp.scale[:1], qp.zero_point[:1], None)
    if act is not None:
        lo, hi = activation_bounds(ctx, act, qp)
    else:
        dt = get_dtype(qp.dtype)
        lo, hi = dt.qmin, dt.qmax
    return node.outputs[0], qp, lo, hi, act

# == lowerings ========================================================================================
def _linear_parts(ctx, node: Node):
    """``[(operand or number, coefficient)]`` of add/sub/rsub (``alpha`` included)."""
    t = node.attrs["target"]
    a, b = operand(ctx, node, arg(node, 0, "self")), operand(ctx, node, arg(node, 1, "other"))
    alpha = scalar(arg(node, 2, "alpha", 1))
    alpha = 1 if alpha is None else alpha
    if t.startswith("aten.add"):
        return [(a, 1.0), (b, float(alpha))]
    if t.startswith("aten.sub"):
        return [(a, 1.0), (b, -float(alpha))]
    if t.startswith("aten.rsub"):
        return [(b, 1.0), (a, -float(alpha))]
    raise ctx.error(node, f"unexpected target {t}")


def _lower_parts(ctx, node: Node, parts, neg_parts=None) -> None:
    """Lower a weighted sum of operands and numbers (plus the fused activation, if any)."""
    out, qp, lo, hi, act = output_grid(ctx, node)
    terms, const, inputs = [], 0.0, []
    for x, coef in parts:
        if isinstance(x, Operand):
            inputs.append(x.name)
            terms.append(operand_term(ctx, node, x, len(inputs) - 1, coef, qp))
        elif isinstance(x, (int, float)):
            v = float(x) * coef
            if not math.isfinite(v):
                raise ctx.error(node, f"the constant {x!r} is not finite")
            const += v / qp.scale[0]
        else:
            raise ctx.error(node, f"unsupported operand {x!r}")
    if not terms:
        raise ctx.error(node, "no quantized tensor input")
    _check_mask_saturates(ctx, node, parts, qp, lo, const)
    emit_op(ctx, node, inputs, out, plan_affine(ctx, node, terms, qp, lo, hi, const), qp, act)


def _check_mask_saturates(ctx, node: Node, parts, qp: QParams, lo: int, const: float) -> None:
    """An additive attention mask (an operand export lists in ``meta["mask_values"]``, observers/base.py
    MASK_FILL) must push the sum below its output's range for every value the other operands can
    hold, so that the masked positions saturate to ``lo`` in the simulation and the integer model
    alike (docs/observers.md "Mask values"); refused otherwise, never approximated."""
    masks = set(ctx.q.meta.get("mask_values") or ())
    ops_ = [(x, c) for x, c in parts if isinstance(x, Operand) and x.qp.ch_axis is None]
    if not masks or not any(x.name in masks for x, _ in ops_):
        return
    top = const * qp.scale[0]   # the largest real sum with every mask at its masked code
    for x, c in ops_:
        dt, s, z = get_dtype(x.qp.dtype), x.qp.scale[0], x.qp.zero_point[0]
        ends = [(dt.qmin - z) * s * c] if x.name in masks else [(dt.qmin - z) * s * c, (dt.qmax - z) * s * c]
        top += max(ends)
    floor = (lo - qp.zero_point[0] - 0.5) * qp.scale[0]
    if top >= floor:
        raise ctx.error(node, f"an additive attention mask does not saturate this sum: with the mask its largest value is "
                              f"{top:.6g}, above the output's lowest step {floor:.6g} (the other operands' range is wider "
                              "than the mask's depth, docs/observers.md 'Mask values')")


def lower_add_sub(ctx, node: Node) -> None:
    _lower_parts(ctx, node, _linear_parts(ctx, node))


def lower_mul(ctx, node: Node) -> None:
    a, b = operand(ctx, node, arg(node, 0, "self")), operand(ctx, node, arg(node, 1, "other"))
    if isinstance(a, Operand) and isinstance(b, Operand):
        _lower_product(ctx, node, a, b)
    elif isinstance(a, Operand):
        _lower_parts(ctx, node, [(a, float(b))])
    elif isinstance(b, Operand):
        _lower_parts(ctx, node, [(b, float(a))])
    else:
        raise ctx.error(node, "no quantized tensor input")


def _lower_product(ctx, node: Node, a: Operand, b: Operand) -> None:
    out, qp, lo, hi, act = output_grid(ctx, node)
    if a.qp.ch_axis is not None or b.qp.ch_axis is not None:
        raise ctx.error(node, "a product of per-channel quantized tensors is not supported")
    bits = requant_bits(ctx, node, a.bound * b.bound, qp.dtype, spare=2)
    m0, n = requant_multiplier(ctx, node, a.qp.scale[0] * b.qp.scale[0] / qp.scale[0], bits,
                               "the product's multiplier exceeds 2^bits; the output scale is too small")
    attrs = {"kernel": "product", "zp": [a.qp.zero_point[0], b.qp.zero_point[0]], "m0": m0, "shift": n,
             "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [a.name, b.name], out, attrs, qp, act)


def lower_div(ctx, node: Node) -> None:
    a, b = operand(ctx, node, arg(node, 0, "self")), operand(ctx, node, arg(node, 1, "other"))
    mode = arg(node, 2, "rounding_mode")
    if isinstance(b, Operand):
        raise ctx.error(node, "edgequant has no integer lowering for this op yet: division by a tensor runs as a "
                              "lookup table (edgequant.lut, as a SegmentLUT does), which prepare builds only when "
                              "both inputs and the output are quantized per tensor; give them per-tensor qconfigs")
    if mode is not None:
        raise ctx.error(node, f"division with rounding_mode={mode!r} has no integer lowering")
    if not isinstance(a, Operand) or not isinstance(b, (int, float)) or b == 0:
        raise ctx.error(node, f"expected a quantized tensor divided by a nonzero number, got {b!r}")
    _lower_parts(ctx, node, [(a, 1.0 / float(b))])


def lower_neg(ctx, node: Node) -> None:
    _lower_parts(ctx, node, [(operand(ctx, node, arg(node, 0, "self")), -1.0)])


def _lower_signed(ctx, node: Node, x: Operand, pos: float, neg) -> None:
    """``pos * x`` where ``x >= 0`` and ``neg * x`` below (abs, leaky_relu, prelu, relu)."""
    out, qp, lo, hi, act = output_grid(ctx, node)
    attrs = plan_affine(ctx, node, [operand_term(ctx, node, x, 0, pos, qp, neg_coef=neg)], qp, lo, hi)
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


def lower_abs(ctx, node: Node) -> None:
    _lower_signed(ctx, node, operand(ctx, node, arg(node, 0, "self")), 1.0, -1.0)


def lower_leaky_relu(ctx, node: Node) -> None:
    slope = float(scalar(arg(node, 1, "negative_slope", 0.01)))
    _lower_signed(ctx, node, operand(ctx, node, arg(node, 0, "self")), 1.0, slope)


def lower_prelu(ctx, node: Node) -> None:
    x = operand(ctx, node, arg(node, 0, "self"))
    w_arg = arg(node, 1, "weight")
    w = ctx.q.constants.get(node.inputs[w_arg["$in"]]) if is_input(w_arg) else None
    if not isinstance(x, Operand) or w is None:
        raise ctx.error(node, "prelu needs a quantized input and a constant slope")
    slopes = [float(v) for v in w.detach().flatten().tolist()]
    nd = len(ctx.value(x.name).shape)
    if len(slopes) == 1:
        _lower_signed(ctx, node, x, 1.0, slopes[0])
        return
    if node.attrs["target"] == "aten.prelu.default":
        axis = 1 if nd >= 2 else 0
    else:  # _prelu_kernel: the weight broadcasts against the input (right aligned)
        big = [d for d, n in enumerate(w.shape) if n > 1]
        if len(big) != 1:
            raise ctx.error(node, f"slopes of shape {tuple(w.shape)} vary along more than one axis")
        axis = nd - w.dim() + big[0]
    if x.qp.ch_axis is not None:
        raise ctx.error(node, "prelu of a per-channel quantized input is not supported")
    out, qp, lo, hi, act = output_grid(ctx, node)
    term = operand_term(ctx, node, x, 0, 1.0, qp, neg_coef=slopes, axis=axis - nd)
    attrs = plan_affine(ctx, node, [term], qp, lo, hi)
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


def _check_not_fused(ctx, node: Node) -> None:
    """A producer fused into this activation must have lowered it (module docstring)."""
    src = node.inputs[0]
    for qn in ctx.q.nodes:
        if src in qn.outputs and qn.attrs.get("fused_into") == node.name:
            raise ctx.error(node, f"its producer {qn.name!r} ({qn.op}) is fused into it, but that op's integer "
                                  "lowering did not apply the activation (no attrs['fused_activation'])")


def lower_activation(ctx, node: Node) -> None:
    """relu, relu6, hardtanh, clamp (not fused into their producer): rescale + integer clamp."""
    _check_not_fused(ctx, node)
    if node.attrs.get("target") == "aten.clamp.Tensor":
        lower_rescale_call(ctx, node)
        return
    x = operand(ctx, node, arg(node, 0, "self"))
    if not isinstance(x, Operand):
        raise ctx.error(node, "no quantized tensor input")
    qp = ctx.q.values[node.outputs[0]].qparams or x.qp  # relu without its own fake-quant: the input's grid
    if qp.ch_axis is not None:
        raise ctx.error(node, "an activation on a per-channel quantized tensor is not supported")
    lo, hi = activation_bounds(ctx, node, qp)
    attrs = plan_affine(ctx, node, [operand_term(ctx, node, x, 0, 1.0, qp)], qp, lo, hi)
    emit(ctx, node, node.op, [x.name], [node.outputs[0]], attrs, qp)


_SCALAR_DATA_ARGS = {"aten.where.ScalarOther": 2, "aten.where.ScalarSelf": 1}  # a number that is data


def lower_rescale_call(ctx, node: Node) -> None:
    """cat, stack, where, maximum, minimum, clamp(Tensor): rescale the inputs, run the op.

    Masks and index tensors pass unchanged; a number that is data (``where(c, x, 0.0)``) is
    quantized onto the output grid by (A1).
    """
    out, qp, lo, hi, act = output_grid(ctx, node)
    plans = []
    for k, name in enumerate(node.inputs):
        plan = None
        if name is not None:
            if ctx.value(name).dtype in ("bool", "int64", "int32"):
                if name in ctx.q.constants and name not in ctx.constants:
                    ctx.add_const(name, ctx.q.constants[name])
            else:
                o = operand(ctx, node, {"$in": k})
                if not isinstance(o, Operand):
                    raise ctx.error(node, f"input {name!r} is neither quantized nor a mask")
                plan = rescale_plan(ctx, node, o, 0, qp)
        plans.append(plan)
    args = list(node.attrs["args"])
    pos = _SCALAR_DATA_ARGS.get(node.attrs["target"])
    if pos is not None:
        v = scalar(arg(node, pos, ("self", "other")[pos - 1]))
        if pos < len(args):
            args[pos] = quantize_value(float(v), qp)
    attrs = {"kernel": "rescale_call", "target": node.attrs["target"], "args": args,
             "kwargs": node.attrs["kwargs"], "rescale": plans, "out_dtype": qp.dtype}
    emit_op(ctx, node, node.inputs, out, attrs, qp, act)


_CMP = {"gt": torch.gt, "ge": torch.ge, "lt": torch.lt, "le": torch.le, "eq": torch.eq, "ne": torch.ne}


def lower_compare(ctx, node: Node) -> None:
    fn = node.attrs["target"].split(".")[1]
    a, b = operand(ctx, node, arg(node, 0, "self")), operand(ctx, node, arg(node, 1, "other"))
    if isinstance(a, Operand) and isinstance(b, Operand):
        _lower_compare2(ctx, node, fn, a, b)
        return
    if not isinstance(a, Operand) or not isinstance(b, (int, float)):
        raise ctx.error(node, "expected a quantized tensor compared with a number or another quantized tensor")
    if a.qp.ch_axis is not None:
        raise ctx.error(node, "comparing a per-channel quantized tensor is not supported")
    dt = get_dtype(a.qp.dtype)
    if dt.bits > 16:
        raise ctx.error(node, f"comparisons of {dt.name} tensors are not supported")
    codes = torch.arange(dt.qmin, dt.qmax + 1, dtype=torch.int64)
    real = dequantize(codes, a.qp.scale[0], a.qp.zero_point[0])  # exactly the simulation's values
    # the simulation's own comparison: a float32 tensor against the number (cast to float32)
    truth = resolve(f"aten.{fn}.Scalar")(real, b)
    invert = fn == "ne"
    if invert:
        truth = ~truth
    idx = truth.nonzero().flatten()
    if idx.numel() == 0:
        lo, hi = dt.qmax + 1, dt.qmax
    else:
        lo, hi = int(codes[idx[0]]), int(codes[idx[-1]])
        if idx.numel() != hi - lo + 1:
            raise ctx.error(node, "the comparison is not an interval of codes (non-monotone dequantization)")
    attrs = {"kernel": "interval", "lo": lo, "hi": hi, "invert": invert}
    emit(ctx, node, node.op, [a.name], [node.outputs[0]], attrs, None, out_dtype="bool")


def _mant_exp(s: float) -> tuple[int, int]:
    """``s = m * 2^e`` exactly with an odd integer ``m`` (``s`` a float32 scale)."""
    m, e = math.frexp(s)
    m, e = int(m * (1 << 53)), e - 53
    while m % 2 == 0:
        m //= 2
        e += 1
    return m, e


def _lower_compare2(ctx, node: Node, fn: str, a: Operand, b: Operand) -> None:
    if a.qp.ch_axis is not None or b.qp.ch_axis is not None:
        raise ctx.error(node, "comparing per-channel quantized tensors is not supported")
    (ma, ea), (mb, eb) = _mant_exp(a.qp.scale[0]), _mant_exp(b.qp.scale[0])
    e = min(ea, eb)
    fa, fb = ma << (ea - e), mb << (eb - e)
    if max(a.bound * fa, b.bound * fb) >= INT64_LIMIT:
        raise ctx.error(node, "the two scales are too far apart for an exact int64 comparison")
    attrs = {"kernel": "compare2", "fn": fn, "zp": [a.qp.zero_point[0], b.qp.zero_point[0]], "f": [fa, fb]}
    emit(ctx, node, node.op, [a.name, b.name], [node.outputs[0]], attrs, None, out_dtype="bool")


# == integer kernels ==================================================================================
def k_product(g, node: Node, args):
    a = node.attrs
    v = (args[0].to(torch.int64) - a["zp"][0]) * (args[1].to(torch.int64) - a["zp"][1])
    y = multiply_by_quantized_multiplier(v, a["m0"], a["shift"]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


def k_rescale_call(g, node: Node, args):
    a = node.attrs
    xs = [affine([x], p) if p is not None else x for x, p in zip(args, a["rescale"])]
    return call_target(node, xs)


def k_interval(g, node: Node, args):
    a = node.attrs
    q = args[0].to(torch.int64)
    inside = (q >= a["lo"]) & (q <= a["hi"])
    return ~inside if a["invert"] else inside


def k_compare2(g, node: Node, args):
    a = node.attrs
    va = (args[0].to(torch.int64) - a["zp"][0]) * a["f"][0]
    vb = (args[1].to(torch.int64) - a["zp"][1]) * a["f"][1]
    return _CMP[a["fn"]](va, vb)


KERNELS = {"affine": k_affine, "product": k_product, "rescale_call": k_rescale_call, "interval": k_interval,
           "compare2": k_compare2}


def run_kernel(g, node: Node, args):
    """Run an int-level node of this family by its ``attrs["kernel"]``."""
    k = KERNELS.get(node.attrs.get("kernel"))
    if k is None:
        raise RuntimeError(f"node {node.name!r} ({node.op}) names no integer kernel ({node.attrs.get('kernel')!r})")
    return k(g, node, args)


_K = dict(kernel=run_kernel, int_attrs={"kernel": "named kernel"})   # int attrs: those of the kernel it names
SPECS = [
    OpSpec("add", ("aten.add.Tensor", "aten.add.Scalar"), fuse_activation=True, residual_add=True,
           lower=lower_add_sub, **_K),
    OpSpec("sub", ("aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Scalar", "aten.rsub.Tensor"),
           lower=lower_add_sub, **_K),
    OpSpec("mul", ("aten.mul.Tensor", "aten.mul.Scalar"), lower=lower_mul, **_K),
    OpSpec("div", ("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode"), table="div",
           sensitive_input=True, lower=lower_div, lsb=1.0, **_K),   # scalar: affine (tensor / tensor: lut_div)
    OpSpec("neg", ("aten.neg.default",), lower=lower_neg, **_K),
    OpSpec("abs", ("aten.abs.default",), lower=lower_abs, **_K),
    OpSpec("maximum", ("aten.maximum.default",), lower=lower_rescale_call, **_K),
    OpSpec("minimum", ("aten.minimum.default",), lower=lower_rescale_call, **_K),
    OpSpec("where", ("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf"),
           lower=lower_rescale_call, **_K),
    OpSpec("clamp", ("aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default",
                     "aten.clamp_max.default", "aten.hardtanh.default", "aten.relu6.default"), activation=True,
           lower=lower_activation, **_K),
    OpSpec("relu", ("aten.relu.default", "aten.relu_.default"), rule="shared", activation=True,
           lower=lower_activation, lsb=1.0, **_K),   # 0 on its input's grid, 1 rescaled
    OpSpec("leaky_relu", ("aten.leaky_relu.default",), lower=lower_leaky_relu, **_K),
    OpSpec("prelu", ("aten.prelu.default", "aten._prelu_kernel.default"), param_args=(1,),
           lower=lower_prelu, **_K),
    OpSpec("compare", ("aten.gt.Scalar", "aten.gt.Tensor", "aten.ge.Scalar", "aten.ge.Tensor",
                       "aten.lt.Scalar", "aten.lt.Tensor", "aten.le.Scalar", "aten.le.Tensor",
                       "aten.eq.Scalar", "aten.eq.Tensor", "aten.ne.Scalar", "aten.ne.Tensor"), rule="shared",
           lower=lower_compare, **_K),
]
