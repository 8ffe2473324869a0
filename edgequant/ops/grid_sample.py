"""``grid_sample``: sampling a 4-D feature map at positions a grid gives, in integers.

Takes ``F.grid_sample(x, grid, mode, padding_mode, align_corners)`` as captured
(``aten.grid_sampler.default`` / ``aten.grid_sampler_2d.default``): ``x`` ``(N, C, H, W)``
quantized per tensor, ``grid`` ``(N, Ho, Wo, 2)`` of normalized ``(x, y)`` positions in
``[-1, 1]`` quantized per tensor (every template gives it int16, ``OpSpec.int16_args``: the NPU
reads an int16 grid; symmetric, as it spans ``[-1, 1]``); returns ``(N, C, Ho, Wo)`` on its own
output grid (rule "compute", as the bilinear resize: the simulation fake-quantizes the float
``grid_sample`` of the fake-quantized inputs). Modes ``bilinear`` and ``nearest``, padding
``zeros`` and ``border``, ``align_corners`` either way; ``bicubic``, ``reflection`` and 5-D
inputs are refused by convert, naming the node.

Integer form (``convert`` bakes the static ``H``, ``W``; ``run``'s kernel and its plain-int
reference twin compute in int64):

1. position, per axis of size ``S``: the real coordinate ``i = A * (g - z_g) + (S - 1) / 2`` with
   ``A = s_g * S' / 2`` (``S' = S - 1`` with ``align_corners``, else ``S``) is
   ``T * 2^-n`` for ``T = (g - z_g) * m + (S - 1) * 2^(n-1)``: ``m * 2^-n`` is ``A`` exactly
   (a float32 scale times a small integer; ``qmath.quantize_multiplier`` with 62 bits, trailing
   zeros dropped), so ``T`` is the dequantized position without error;
2. ``bilinear``: ``c = A6(T, n - 16)`` (rounding 1: the position to 2^-16 pixel), ``border``
   clamps ``c`` to ``[0, (S - 1) * 2^16]``; ``i0 = c >> 16``, ``w1 = c - i0 * 2^16``,
   ``w0 = 2^16 - w1`` (the weights of a pixel sum to one exactly);
   ``nearest``: ``i0 = A6(T, n)``, round half to even as torch's ``nearbyint``; ``border`` clamps
   ``i0`` to ``[0, S - 1]`` (the same as clamping the position first);
3. the 4 (1) taps ``x[iy, ix] - z_x`` times ``wy * wx`` summed exactly (32 (0) fractional bits);
   a tap outside the image reads 0 (``zeros``: the real value 0 is the zero point);
4. rounding 2: ``A6(acc, drop)`` keeps ``G`` fractional bits (``G`` as large as int64 allows the
   next product; 0 for nearest), then (A7) with ``s_x / s_out`` and shift ``n_out + G``.

| mode | LSB vs simulation |
|---|---|
| bilinear, zeros or border, align_corners either way | <= 1 (rounding-2 ties and the 2^-16-pixel position; float32 noise of the simulation) |
| nearest, zeros or border, align_corners either way | <= 1 (A7 ties), except where a position lies within the simulation's float32 error of a half-pixel tie: there the neighbour is read |

Measured (8 combinations x both templates, 10 batches of (2, 8, 16, 20) sampled at 12 x 14 with
an int16 grid): bilinear max 1 LSB, on ~0.02% of int8 and 4-5% of int16 outputs (a 2^-17-pixel
position error times a neighbour difference of up to 2^16 codes, as the bilinear resize's 16-bit
weights); nearest 0 LSB.
"""
from __future__ import annotations

import torch

from ..dtype import get_dtype
from ..ir import Node
from ..qmath import multiply_by_quantized_multiplier, quantize_multiplier, rounding_shift_right, saturate
from .affine import requant_multiplier
from .elementwise import output_grid
from .operands import Operand, arg, emit_op, operand
from .spec import OpSpec

WEIGHT_BITS = 16                   # fractional bits of a position, hence of the bilinear weights
MODES = {0: "bilinear", 1: "nearest", 2: "bicubic"}            # aten's interpolation_mode
PADDINGS = {0: "zeros", 1: "border", 2: "reflection"}          # aten's padding_mode
_LIMIT = 1 << 62                   # |T| and the sums stay below it


def _input(ctx, node: Node, pos: int, name: str, what: str) -> Operand:
    v = operand(ctx, node, arg(node, pos, name))
    if not isinstance(v, Operand):
        raise ctx.error(node, f"its {what} is not a quantized tensor; quantize it (a QuantStub) or keep the op float "
                              "(@edgequant.wrap)")
    if v.qp.ch_axis is not None and len(v.qp.scale) > 1:
        raise ctx.error(node, f"its {what} is quantized per channel (an accumulator); requantize it first")
    return v


def _position(ctx, node: Node, scale: float, size: int, align: bool, g_bound: int) -> tuple[int, int]:
    """``(m, n)`` with ``m * 2^-n = s_g * S' / 2`` (exactly when int64 allows), ``n > WEIGHT_BITS``."""
    a = float(scale) * ((size - 1) if align else size) / 2.0
    if a == 0.0:
        return 0, WEIGHT_BITS + 1
    for bits in (62, 31, 24, 20):
        m, n = quantize_multiplier(a, bits)
        while m and not m & 1 and n > WEIGHT_BITS + 1:    # drop trailing zeros: the same value
            m, n = m >> 1, n - 1
        while n <= WEIGHT_BITS:
            m, n = m << 1, n + 1
        if g_bound * m + (size - 1) * (1 << (n - 1)) < _LIMIT:
            return m, n
    raise ctx.error(node, f"the grid's scale {scale:.3g} is too small for int64 positions; calibrate the grid "
                          "over its real range")


def lower_grid_sample(ctx, node: Node) -> None:
    x = _input(ctx, node, 0, "input", "input")
    gr = _input(ctx, node, 1, "grid", "grid")
    mode = MODES.get(arg(node, 2, "interpolation_mode", 0))
    pad = PADDINGS.get(arg(node, 3, "padding_mode", 0))
    align = bool(arg(node, 4, "align_corners", False))
    shape = ctx.value(x.name).shape
    if len(shape) != 4:
        raise ctx.error(node, f"its input has rank {len(shape)}: only 4-D grid_sample (N, C, H, W) has an integer "
                              "kernel; keep a 5-D one float (@edgequant.wrap, or a DeQuantStub before it and a "
                              "QuantStub after it)")
    if mode not in ("bilinear", "nearest"):
        raise ctx.error(node, f"mode={mode!r} has no integer kernel (bilinear and nearest do); use one of them, or "
                              "keep the op float (@edgequant.wrap)")
    if pad not in ("zeros", "border"):
        raise ctx.error(node, f"padding_mode={pad!r} has no integer kernel (zeros and border do); use one of them, "
                              "or keep the op float (@edgequant.wrap)")
    h, w = shape[2], shape[3]
    if not isinstance(h, int) or not isinstance(w, int):
        raise ctx.error(node, f"its input's height and width {shape[2:]} may change between calls; the integer "
                              "positions need them fixed")
    out, qp, lo, hi, act = output_grid(ctx, node)
    pos = [_position(ctx, node, gr.qp.scale[0], s, align, gr.bound) for s in (w, h)]
    frac = 2 * WEIGHT_BITS if mode == "bilinear" else 0
    bits = ctx.profile.multiplier_bits
    keep = min(frac, 63 - bits - x.bound.bit_length())
    if keep < 0 or x.bound << frac >= _LIMIT:
        raise ctx.error(node, "the input range is too wide for an int64 grid_sample sum")
    m0, n = requant_multiplier(ctx, node, x.qp.scale[0] / qp.scale[0], bits,
                               "the multiplier exceeds 2^bits; the output scale is too small for the input")
    attrs = {"kernel": "grid_sample", "mode": mode, "padding": pad, "sizes": [h, w],
             "pos_m": [pos[0][0], pos[1][0]], "pos_n": [pos[0][1], pos[1][1]], "zp": x.qp.zero_point[0],
             "grid_zp": gr.qp.zero_point[0], "drop": frac - keep, "m0": m0, "shift": n + keep,
             "out_zp": qp.zero_point[0], "lo": lo, "hi": hi, "out_dtype": qp.dtype}
    emit_op(ctx, node, [x.name, gr.name], out, attrs, qp, act)


# == the kernel (int64 torch) =================================================================================
def _axis_taps(a: dict, g: torch.Tensor, k: int, size: int):
    """[(index, weight)] of axis ``k`` (0: x/width, 1: y/height) for centered grid codes ``g``."""
    m, n = a["pos_m"][k], a["pos_n"][k]
    t = g[..., k] * m + ((size - 1) << (n - 1))
    if a["mode"] == "nearest":
        i = rounding_shift_right(t, n)
        if a["padding"] == "border":
            i = i.clamp(0, size - 1)
        return [(i, torch.ones_like(i))]
    c = rounding_shift_right(t, n - WEIGHT_BITS)                     # rounding 1: the position
    if a["padding"] == "border":
        c = c.clamp(0, (size - 1) << WEIGHT_BITS)
    i0 = c >> WEIGHT_BITS
    w1 = c - (i0 << WEIGHT_BITS)
    return [(i0, (1 << WEIGHT_BITS) - w1), (i0 + 1, w1)]


def k_grid_sample(g, node: Node, args):
    a = node.attrs
    v = args[0].to(torch.int64) - a["zp"]
    grid = args[1].to(torch.int64) - a["grid_zp"]
    nb, ch, h, w = v.shape
    if [h, w] != a["sizes"]:
        raise RuntimeError(f"grid_sample {node.name!r}: input is {h}x{w}, convert baked {a['sizes']}")
    flat = v.reshape(nb, ch, h * w)
    acc = torch.zeros(nb, ch, grid.shape[1] * grid.shape[2], dtype=torch.int64)
    for iy, wy in _axis_taps(a, grid, 1, h):
        for ix, wx in _axis_taps(a, grid, 0, w):
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)            # outside: the zero point (0)
            idx = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).reshape(nb, 1, -1).expand(nb, ch, -1)
            wt = (wy * wx * ok).reshape(nb, 1, -1)
            acc += torch.gather(flat, 2, idx) * wt
    acc = acc.reshape(nb, ch, grid.shape[1], grid.shape[2])
    r = rounding_shift_right(acc, a["drop"])                             # rounding 2: G fractional bits
    y = multiply_by_quantized_multiplier(r, a["m0"], a["shift"]) + a["out_zp"]
    return saturate(y.clamp(a["lo"], a["hi"]), a["out_dtype"])


# == the reference (plain Python integers, one output position at a time) ====================================
def _round_shift(v: int, n: int) -> int:
    """``round(v / 2^n)`` with halves to even, on a Python int (``n <= 0`` multiplies)."""
    if n <= 0:
        return v << -n
    q, r = divmod(v, 1 << n)
    half = 1 << (n - 1)
    return q + (r > half or (r == half and q % 2 == 1))


def _ref_taps(a: dict, gc: int, k: int, size: int) -> list[tuple[int, int]]:
    t = gc * a["pos_m"][k] + (size - 1) * 2 ** (a["pos_n"][k] - 1)
    one = 2 ** WEIGHT_BITS
    if a["mode"] == "nearest":
        i = _round_shift(t, a["pos_n"][k])
        return [(min(max(i, 0), size - 1) if a["padding"] == "border" else i, 1)]
    c = _round_shift(t, a["pos_n"][k] - WEIGHT_BITS)
    if a["padding"] == "border":
        c = min(max(c, 0), (size - 1) * one)
    i0 = c // one
    return [(i0, one - (c - i0 * one)), (i0 + 1, c - i0 * one)]


def r_grid_sample(g, node: Node, args):
    a = node.attrs
    xs = (args[0].to(torch.int64) - a["zp"]).tolist()
    grid = (args[1].to(torch.int64) - a["grid_zp"]).tolist()
    dt = get_dtype(a["out_dtype"])
    lo, hi = max(a["lo"], dt.qmin), min(a["hi"], dt.qmax)
    h, w = len(xs[0][0]), len(xs[0][0][0])
    out = []
    for xb, gb in zip(xs, grid):
        rows = [[[0] * len(gb[0]) for _ in gb] for _ in xb]
        for oy, grow in enumerate(gb):
            for ox, (gx, gy) in enumerate(grow):
                taps = [(iy, ix, wy * wx) for iy, wy in _ref_taps(a, gy, 1, h) for ix, wx in _ref_taps(a, gx, 0, w)
                        if 0 <= iy < h and 0 <= ix < w]
                for c, plane in enumerate(xb):
                    acc = sum(plane[iy][ix] * wt for iy, ix, wt in taps)
                    y = _round_shift(_round_shift(acc, a["drop"]) * a["m0"], a["shift"]) + a["out_zp"]
                    rows[c][oy][ox] = min(max(y, lo), hi)
        out.append(rows)
    return torch.tensor(out, dtype=torch.int64).to(dt.storage)


# == ONNX: the recorded call as GridSample (both flavours' float path: QDQ, a float grid_sample) ===============
def onnx_grid_sample(c, outs):
    """``grid_sampler(x, grid, mode, padding_mode, align_corners)`` is ONNX ``GridSample`` (opset 20+):
    modes ``linear`` / ``nearest`` (half to even, as torch) / ``cubic``, the same paddings."""
    args, kwargs = c.args()
    x, grid = args[0], args[1]
    vals = [args[k] if len(args) > k else kwargs.get(key, d)
            for k, key, d in ((2, "interpolation_mode", 0), (3, "padding_mode", 0), (4, "align_corners", False))]
    if c.rank_of(x) != 4:
        raise c.fail(f"ONNX Runtime's GridSample takes 4-D inputs; this grid_sample has rank {c.rank_of(x)}")
    mode = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}[MODES[vals[0]]]
    return c.b.op("GridSample", [x, grid], outs, mode=mode, padding_mode=PADDINGS[vals[1]],
                  align_corners=int(bool(vals[2])))


_TARGETS = ("aten.grid_sampler.default", "aten.grid_sampler_2d.default")
SPECS = [
    OpSpec("grid_sample", _TARGETS, lower=lower_grid_sample, kernel=k_grid_sample, reference=r_grid_sample,
           int16_args=(1,), onnx={t: onnx_grid_sample for t in _TARGETS},
           int_attrs={"kernel": ("grid_sample",), "mode": ("bilinear", "nearest"), "padding": ("zeros", "border"),
                      "sizes": "sizes", "pos_m": "offsets", "pos_n": "shifts", "zp": "int", "grid_zp": "int",
                      "drop": "right shift", "m0": "int", "shift": "shift", "out_zp": "int", "lo": "int", "hi": "int",
                      "out_dtype": "qdtype"},
           int_inputs=("x", "grid"), int_zero_points=(("zp", 0), ("grid_zp", 1))),
]
