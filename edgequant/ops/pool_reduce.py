"""Pooling, resizing and reductions: specs, integer lowering, kernels.

Stage: ``convert`` (the rows' ``lower``) and ``run`` at level "int" (their ``kernel``). Parameters are
computed at convert time from the static spatial sizes (a symbolic spatial size is refused);
kernels are integer only (int64), with qmath's half-to-even rounding.

| op | integer form | LSB vs simulation |
|---|---|---|
| max_pool (1-D, 2-D, 3-D), adaptive max pool, max/min/amax/amin, sort/topk (a stable sort: ties keep the lower index first, as ONNX's TopK), nearest and nearest-exact interpolation (1-D to 3-D) | the torch op on the codes (a float32/float64 carrier where torch has no integer kernel: exact, no arithmetic) | 0 |
| avg_pool, adaptive avg_pool | exact window sums of ``q - z`` (prefix sums, int64), then (A7) with a multiplier per output position ``s_in / (count * s_out)`` (count: torch's divisor, incl. ``count_include_pad``, ``divisor_override``, clipped windows) | <= 1 |
| mean, sum | ``sum(q - z)`` in int64, then (A7) with ``s_in / (N * s_out)`` (``N = 1`` for sum) | <= 1 |
| cumsum | running sums of ``q - z`` in int64 (exact), then (A7) with ``s_in / s_out`` | <= 1 |
| bilinear (align_corners either way) | fixed-point weights, two roundings (below) | <= 1 |

A 1-LSB difference happens only at (or within ~2^-20 LSB of) a rounding tie, which averages
over 4 or 9 values and bilinear weights of 1/4, 3/4 make frequent (up to ~2-6% of int16
elements for bilinear, < 0.3% for pooling): the simulation's float32 picks a side, the
integer model rounds half to even.

Multipliers have ``b = min(multiplier_bits, 63 - bitlength(A))`` bits (A5.6,
``affine.requant_bits``) for the sum bound ``A = max|q - z| * (largest count)``; a node whose
``b`` would drop below the output's bit width + 2 is refused (``ConvertError``), as int64 could
not hold a precise product.

Bilinear interpolation: source positions and ``lambda`` follow torch's CPU kernel in float32
(``src = (dst + 0.5) / scale - 0.5`` clamped at 0, or ``dst * (in - 1) / (out - 1)`` with
``align_corners``); each ``lambda`` becomes ``w1 = round(lambda * 2^16)`` (half to even) and
``w0 = 2^16 - w1``, so the weights of a pixel sum to exactly one. Rows then columns are
combined exactly in int64 (``acc`` has 32 fractional bits); rounding 1 keeps ``G`` fractional
bits (``rounding_shift_right(acc, 32 - G)``, ``G`` as large as int64 allows the following
product, 16 for int16 inputs); rounding 2 is (A7) with ``s_in / s_out`` and shift ``n + G``.
"""
from __future__ import annotations

import torch

from ..ir import Node
from ..qmath import multiply_by_quantized_multiplier, rounding_shift_right, saturate
from .affine import fixed_point, requant_bits, requant_multiplier
from .call import call_target, decode
from .elementwise import output_grid
from .operands import Operand, arg, emit_op, operand, scalar
from .shape import lower_move
from .spec import OpSpec


WEIGHT_BITS = 16  # fractional bits of the bilinear weights


def _input(ctx, node: Node) -> Operand:
    x = operand(ctx, node, arg(node, 0, "self"))
    if not isinstance(x, Operand):
        raise ctx.error(node, "the input is not a quantized tensor")
    if x.qp.ch_axis is not None and len(x.qp.scale) > 1:
        raise ctx.error(node, "a per-channel quantized input (an accumulator) is not supported; requantize it first")
    return x


def _static(ctx, node: Node, shape, dims) -> list[int]:
    sizes = [shape[d] for d in dims]
    if not all(isinstance(s, int) for s in sizes):
        raise ctx.error(node, f"it reduces over dims {list(dims)} of shape {shape}, some of which may change "
                              "between calls (the batch dim is dynamic): the integer multiplier and the int64 "
                              "bound need their sizes. Reduce over fixed dims, or give the model a fixed size")
    return sizes


def _mult(ctx, node: Node, real: float, bits: int) -> tuple[int, int]:
    return requant_multiplier(ctx, node, real, bits,
                              "the multiplier exceeds 2^bits; the output scale is too small for the input")


# == avg_pool ==========================================================================================
def _list(v, k: int) -> list[int]:
    v = v if isinstance(v, list) else [v]
    return [int(e) for e in (v * k if len(v) == 1 else v)]


def _windows(ctx, node: Node, in_sizes, out_sizes):
    """Per spatial dim: ``(starts, ends, pool_sizes)`` of every output position (torch's rule)."""
    t = node.attrs["target"]
    k = len(in_sizes)
    if "adaptive" in t:
        res = []
        for n_in, n_out in zip(in_sizes, out_sizes):
            starts = [(o * n_in) // n_out for o in range(n_out)]
            ends = [-((-(o + 1) * n_in) // n_out) for o in range(n_out)]
            res.append((starts, ends, [e - s for s, e in zip(starts, ends)]))
        return res
    ks = _list(arg(node, 1, "kernel_size"), k)
    stride = arg(node, 2, "stride", [])
    ss = _list(stride, k) if stride not in ([], None) else ks
    ps = _list(arg(node, 3, "padding", 0), k)
    res = []
    for n_in, n_out, kk, s, p in zip(in_sizes, out_sizes, ks, ss, ps):
        starts, ends, pools = [], [], []
        for o in range(n_out):
            st = o * s - p
            en = min(st + kk, n_in + p)
            pools.append(en - st)
            starts.append(max(st, 0))
            ends.append(min(en, n_in))
        res.append((starts, ends, pools))
    return res


def lower_avg_pool(ctx, node: Node) -> None:
    x = _input(ctx, node)
    out, qp, lo, hi, act = output_grid(ctx, node)
    k = 1 if "1d" in node.attrs["target"] else 2
    in_shape, out_shape = ctx.value(x.name).shape, ctx.q.values[out].shape
    dims = list(range(len(in_shape) - k, len(in_shape)))
    in_sizes, out_sizes = _static(ctx, node, in_shape, dims), _static(ctx, node, out_shape, dims)
    wins = _windows(ctx, node, in_sizes, out_sizes)
    include_pad = bool(arg(node, 5, "count_include_pad", True)) if "adaptive" not in node.attrs["target"] else False
    override = arg(node, 6, "divisor_override") if k == 2 and "adaptive" not in node.attrs["target"] else None
    grids = torch.meshgrid(*[torch.arange(n) for n in out_sizes], indexing="ij")
    valid = torch.ones(out_sizes, dtype=torch.int64)
    pooled = torch.ones(out_sizes, dtype=torch.int64)
    for g, (st, en, pool) in zip(grids, wins):
        valid = valid * (torch.tensor(en) - torch.tensor(st)).clamp(min=0)[g]
        pooled = pooled * torch.tensor(pool)[g]
    divisor = torch.full(out_sizes, int(override)) if override else (pooled if include_pad else valid)
    bits = requant_bits(ctx, node, x.bound * max(1, int(valid.max())), qp.dtype, spare=2)
    table = {}
    for d in sorted(set(divisor.flatten().tolist())):
        table[d] = _mult(ctx, node, x.qp.scale[0] / (d * qp.scale[0]), bits) if d > 0 else (0, 0)
    m0 = torch.tensor([table[d][0] for d in divisor.flatten().tolist()], dtype=torch.int64).reshape(out_sizes)
    sh = torch.tensor([table[d][1] for d in divisor.flatten().tolist()], dtype=torch.int64).reshape(out_sizes)
    m0 = torch.where(valid > 0, m0, torch.zeros_like(m0))  # an empty window averages to 0
    m_name = ctx.add_const(f"{out}.m0", m0)
    s_name = ctx.add_const(f"{out}.shift", sh)
    attrs = {"kernel": "window_sum", "starts": [w[0] for w in wins], "ends": [w[1] for w in wins],
             "zp": x.qp.zero_point[0], "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [x.name, m_name, s_name], out, attrs, qp, act)


def k_window_sum(g, node: Node, args):
    a = node.attrs
    v = args[0].to(torch.int64) - a["zp"]
    k = len(a["starts"])
    for i, (st, en) in enumerate(zip(a["starts"], a["ends"])):
        d = v.dim() - k + i
        c = v.cumsum(d)
        c = torch.cat([torch.zeros_like(c.narrow(d, 0, 1)), c], d)  # c[j] = sum of v[:j]
        v = c.index_select(d, torch.tensor(en)) - c.index_select(d, torch.tensor(st))
    y = multiply_by_quantized_multiplier(v, args[1], args[2]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


# == mean / sum =========================================================================================
def lower_reduce(ctx, node: Node) -> None:
    x = _input(ctx, node)
    out, qp, lo, hi, act = output_grid(ctx, node)
    shape = ctx.value(x.name).shape
    nd = len(shape)
    t = node.attrs["target"]
    dims = None if t.endswith(".default") else arg(node, 1, "dim")
    dims = list(range(nd)) if dims in (None, []) else sorted({int(d) % nd for d in (dims if isinstance(dims, list) else [dims])})
    keepdim = False if t.endswith(".default") else bool(arg(node, 2, "keepdim", False))
    count = 1
    for s in _static(ctx, node, shape, dims):
        count *= s
    bits = requant_bits(ctx, node, x.bound * max(count, 1), qp.dtype, spare=2)
    divisor = count if node.op == "mean" else 1
    m0, n = _mult(ctx, node, x.qp.scale[0] / (divisor * qp.scale[0]), bits)
    attrs = {"kernel": "reduce_sum", "dims": dims, "keepdim": keepdim, "zp": x.qp.zero_point[0], "m0": m0,
             "shift": n, "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


def k_reduce_sum(g, node: Node, args):
    a = node.attrs
    v = (args[0].to(torch.int64) - a["zp"]).sum(dim=a["dims"], keepdim=a["keepdim"])
    y = multiply_by_quantized_multiplier(v, a["m0"], a["shift"]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


# == cumsum ===============================================================================================
def lower_cumsum(ctx, node: Node) -> None:
    """``cumsum(x, dim)``: exact int64 running sums of ``q - z``, then one (A7) with ``s_in / s_out``."""
    x = _input(ctx, node)
    out, qp, lo, hi, act = output_grid(ctx, node)
    shape = ctx.value(x.name).shape
    dim = int(arg(node, 1, "dim")) % max(len(shape), 1)
    n = _static(ctx, node, shape, [dim])[0] if shape else 1
    bits = requant_bits(ctx, node, x.bound * max(n, 1), qp.dtype, spare=2)
    m0, sh = _mult(ctx, node, x.qp.scale[0] / qp.scale[0], bits)
    attrs = {"kernel": "running_sum", "dim": dim, "zp": x.qp.zero_point[0], "m0": m0, "shift": sh,
             "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


def k_cumsum(g, node: Node, args):
    a = node.attrs
    v = (args[0].to(torch.int64) - a["zp"]).cumsum(a["dim"])
    y = multiply_by_quantized_multiplier(v, a["m0"], a["shift"]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


def onnx_cumsum(c, outs):
    """``cumsum(x, dim)`` of float values (the QDQ flavour): ``CumSum``."""
    args, kw = c.args()
    dim = args[1] if len(args) > 1 else kw.get("dim")
    return c.b.op("CumSum", [args[0], c.b.i64(int(dim))], outs)


# == bilinear =============================================================================================
def _linear_taps(n_in: int, n_out: int, align: bool, scale):
    """torch's CPU ``compute_source_index_and_lambda`` in float32: ``(i0, i1, lambda1)``."""
    f32 = torch.float32
    if n_in == n_out:
        idx = torch.arange(n_out)
        return idx, idx, torch.zeros(n_out, dtype=f32)
    if align:
        ratio = (torch.tensor(n_in - 1, dtype=f32) / (n_out - 1)) if n_out > 1 else torch.tensor(0.0, dtype=f32)
    elif scale is not None and scale > 0:
        ratio = torch.tensor(1.0 / scale, dtype=f32)
    else:
        ratio = torch.tensor(n_in, dtype=f32) / n_out
    dst = torch.arange(n_out, dtype=f32)
    src = ratio * dst if align else (ratio * (dst + 0.5) - 0.5).clamp(min=0)
    i0 = torch.floor(src).to(torch.int64).clamp(max=n_in - 1)
    lam = (src - i0.to(f32)).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    return i0, i1, lam


def lower_bilinear(ctx, node: Node) -> None:
    x = _input(ctx, node)
    out, qp, lo, hi, act = output_grid(ctx, node)
    in_shape, out_shape = ctx.value(x.name).shape, ctx.q.values[out].shape
    dims = [len(in_shape) - 2, len(in_shape) - 1]
    in_sizes, out_sizes = _static(ctx, node, in_shape, dims), _static(ctx, node, out_shape, dims)
    align = bool(arg(node, 2, "align_corners", False))
    scales = arg(node, 3, "scale_factors")
    taps = []
    one = 1 << WEIGHT_BITS
    for d in range(2):
        s = scalar(scales[d]) if isinstance(scales, list) else None
        i0, i1, lam = _linear_taps(in_sizes[d], out_sizes[d], align, s)
        w1 = [fixed_point(float(v), WEIGHT_BITS) for v in lam.tolist()]
        taps.append({"i0": i0.tolist(), "i1": i1.tolist(), "w0": [one - w for w in w1], "w1": w1})
    bits = ctx.profile.multiplier_bits
    frac = min(2 * WEIGHT_BITS, 63 - bits - x.bound.bit_length())
    if frac < 0:
        raise ctx.error(node, "the input range is too wide for an int64 bilinear sum")
    m0, n = _mult(ctx, node, x.qp.scale[0] / qp.scale[0], bits)
    attrs = {"kernel": "bilinear", "taps": taps, "drop": 2 * WEIGHT_BITS - frac, "zp": x.qp.zero_point[0],
             "m0": m0, "shift": n + frac, "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [x.name], out, attrs, qp, act)


def k_bilinear(g, node: Node, args):
    a = node.attrs
    v = args[0].to(torch.int64) - a["zp"]
    for d, tp in zip((-2, -1), a["taps"]):
        shape = [-1] + [1] * (-d - 1)
        w0, w1 = torch.tensor(tp["w0"]).reshape(shape), torch.tensor(tp["w1"]).reshape(shape)
        v = v.index_select(d, torch.tensor(tp["i0"])) * w0 + v.index_select(d, torch.tensor(tp["i1"])) * w1
    r = rounding_shift_right(v, a["drop"])                          # rounding 1: keep G fractional bits
    y = multiply_by_quantized_multiplier(r, a["m0"], a["shift"]) + a["out_zp"]   # rounding 2: (A7)
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


# == ops that only move codes ===============================================================================
def k_carrier(g, node: Node, args):
    """Run the recorded torch op on the codes through a float carrier (exact: it only moves or
    compares values; float32 holds every code of 24 bits or fewer, float64 of 32 or fewer)."""
    x = args[0]
    carrier = torch.float32 if x.dtype in (torch.int8, torch.uint8, torch.int16) else torch.float64
    out = call_target(node, [x.to(carrier)] + list(args[1:]))
    if isinstance(out, (tuple, list)):
        return type(out)([out[0].to(x.dtype), *out[1:]])
    return out.to(x.dtype)


# == sort, topk ==========================================================================================
def _order_call(target: str, args, kw) -> tuple[int, bool, int | None]:
    """``(dim, largest first, k)`` of a recorded sort/topk call (``k`` None: the whole dim)."""
    def _at(args, kw, pos, key, default=None):
        return args[pos] if len(args) > pos else kw.get(key, default)

    if target == "aten.topk.default":
        return (int(_at(args, kw, 2, "dim", -1)), bool(_at(args, kw, 3, "largest", True)),
                int(_at(args, kw, 1, "k")))
    if target == "aten.sort.stable":   # every argument keyword-only
        return int(kw.get("dim", -1)), bool(kw.get("descending", False)), None
    return int(_at(args, kw, 1, "dim", -1)), bool(_at(args, kw, 2, "descending", False)), None


def k_order(g, node: Node, args):
    """sort / topk of the codes: a stable sort (equal codes keep their order, the lower index first,
    as ONNX's TopK orders ties), then the first ``k``; returns ``(values, indices)``."""
    dim, largest, k = _order_call(node.attrs["target"], decode(node.attrs["args"], args),
                                  decode(node.attrs["kwargs"], args))
    x = args[0]
    values, indices = torch.sort(x.to(torch.int64), dim=dim, descending=largest, stable=True)
    if k is not None:
        values, indices = values.narrow(dim, 0, k), indices.narrow(dim, 0, k)
    return values.to(x.dtype), indices


def onnx_order(c, outs):
    """sort / topk (both flavours): ONNX ``TopK`` (sorted; ties: the lower index first), with ``K``
    the dim's size for a sort; integer codes through an int32 carrier."""
    args, kw = c.args()
    dim, largest, k = _order_call(c.node.attrs["target"], args, kw)
    (x,), back = c.carried([args[0]])
    count = c.b.i64([k]) if k is not None else c.b.op("Gather", [c.b.op("Shape", [x]), c.b.i64([dim])])
    outs = list(outs)
    values = c.b.fresh("topk_values") if back else outs[0]
    indices = outs[1] if len(outs) > 1 else c.b.fresh("topk_indices")
    c.b.op("TopK", [x, count], [values, indices], axis=dim, largest=int(largest), sorted=1)
    return c.emit("Identity", [values], outs[:1], back) if back else values


# int-level attrs (read by edgequant.check_attrs) as lower_avg_pool, lower_reduce and lower_bilinear write them
_GRID_ATTRS = {"out_zp": "int", "lo": "int", "hi": "int", "out_dtype": "qdtype"}
_AVG_POOL_ATTRS = {"kernel": ("window_sum",), "starts": "windows", "ends": "windows", "zp": "int", **_GRID_ATTRS}
_REDUCE_SUM_ATTRS = {"kernel": ("reduce_sum",), "dims": "dims", "keepdim": "bool", "zp": "int", "m0": "int",
                     "shift": "shift", **_GRID_ATTRS}
_CUMSUM_ATTRS = {"kernel": ("running_sum",), "dim": "dim", "zp": "int", "m0": "int", "shift": "shift", **_GRID_ATTRS}
_BILINEAR_ATTRS = {"kernel": ("bilinear",), "taps": "taps", "drop": "right shift", "zp": "int", "m0": "int",
                   "shift": "shift", **_GRID_ATTRS}
_ZP = dict(int_zero_points=(("zp", 0),))
SPECS = [
    OpSpec("max_pool", ("aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool3d.default",
                        "aten.adaptive_max_pool2d.default"), rule="shared", lower=lower_move, kernel=k_carrier,
           onnx_int="max_pool"),
    OpSpec("max", ("aten.max.dim", "aten.max.default", "aten.amax.default",
                   "aten.min.dim", "aten.min.default", "aten.amin.default"), rule="shared", lower=lower_move),
    OpSpec("sort", ("aten.sort.default", "aten.sort.stable", "aten.topk.default"), rule="shared", lower=lower_move,
           kernel=k_order, onnx={t: onnx_order for t in ("aten.sort.default", "aten.sort.stable", "aten.topk.default")}),
    OpSpec("avg_pool", ("aten.avg_pool1d.default", "aten.avg_pool2d.default",
                        "aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default"),
           lower=lower_avg_pool, kernel=k_window_sum, int_attrs=_AVG_POOL_ATTRS, int_inputs=("x", "m0", "shift"),
           int_per_channel=("starts", "ends"), **_ZP),
    OpSpec("mean", ("aten.mean.dim", "aten.mean.default"), lower=lower_reduce, kernel=k_reduce_sum,
           int_attrs=_REDUCE_SUM_ATTRS, int_inputs=("x",), **_ZP),
    OpSpec("sum", ("aten.sum.dim_IntList", "aten.sum.default"), lower=lower_reduce, kernel=k_reduce_sum,
           int_attrs=_REDUCE_SUM_ATTRS, int_inputs=("x",), **_ZP),
    OpSpec("cumsum", ("aten.cumsum.default",), lower=lower_cumsum, kernel=k_cumsum, int_attrs=_CUMSUM_ATTRS,
           int_inputs=("x",), onnx={"aten.cumsum.default": onnx_cumsum}, **_ZP),
    OpSpec("interpolate_nearest", ("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec",
                                   "aten.upsample_nearest3d.vec", "aten._upsample_nearest_exact1d.vec",
                                   "aten._upsample_nearest_exact2d.vec"), rule="shared",
           lower=lower_move, kernel=k_carrier),
    OpSpec("interpolate_bilinear", ("aten.upsample_bilinear2d.vec",), lower=lower_bilinear, kernel=k_bilinear,
           int_attrs=_BILINEAR_ATTRS, int_inputs=("x",)),
]
