"""Recorded aten calls -> ONNX nodes: reductions, pooling, resizing, transposed convolution and
inference batch norm (the float forms the QDQ flavour writes; merged into ``aten.ATEN``).

Takes a ``ctx.Ctx`` and the ONNX names of the outputs, as ``aten.py``'s translations do. Float
values only, except nearest resizing, which on integer codes (the integer flavour) gathers the
source rows and columns that torch's own index rule picks (``_nearest_index``): exact by
construction. What ONNX cannot write as the recorded call (an adaptive pooling whose windows
differ in size, a size that is dynamic where one is needed) raises ``OnnxExportError`` naming the
node.
"""
from __future__ import annotations

import numpy as np
import torch

from .ctx import ONNX_DTYPE, Ctx, arg, as_list


# -- reductions and pooling (float values) ------------------------------------------------------------
def _reduce(op_type: str):
    """mean/sum over dims (``.dim``/``.dim_IntList``) or over everything (``.default``)."""
    def f(c: Ctx, out):
        args, kw = c.args()
        x = args[0]
        by_dim = not c.node.attrs["target"].endswith(".default")
        dims = as_list(arg(args, kw, 1, "dim"), 1) if by_dim and arg(args, kw, 1, "dim") is not None else []
        keep = int(bool(arg(args, kw, 2, "keepdim", False))) if by_dim else 0
        dt = kw.get("dtype")
        if dt is not None:
            x = c.b.op("Cast", [x], to=ONNX_DTYPE[dt[1]])
        inputs = [x, c.b.i64([int(d) for d in dims])] if dims else [x]
        return c.b.op(op_type, inputs, out, keepdims=keep)
    return f


def avg_pool1d(c: Ctx, out):
    args, kw = c.args()
    k = as_list(args[1], 1)
    stride = as_list(arg(args, kw, 2, "stride", []) or k, 1)
    pad = as_list(arg(args, kw, 3, "padding", 0), 1)
    return c.b.op("AveragePool", [args[0]], out, kernel_shape=k, strides=stride, pads=pad + pad,
                  ceil_mode=int(bool(arg(args, kw, 4, "ceil_mode", False))),
                  count_include_pad=int(bool(arg(args, kw, 5, "count_include_pad", True))))


def _adaptive_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """torch's adaptive windows ``[floor(o n_in / n_out), ceil((o + 1) n_in / n_out))``."""
    return [((o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)) for o in range(n_out)]


def _per_window(c: Ctx, x: str, axes: list[int], n_in: list[int], sizes: list[int], out):
    """Adaptive average pooling as one ``ReduceMean`` per window and dim: ``Slice`` each window,
    reduce it with ``keepdims``, ``Concat`` the windows; dim after dim (an average over a rectangle
    is the average of its row averages: torch's divisor is the product of the windows' sizes). The
    first dim's slices are moved copies of the input: the QDQ flavour puts them back on its grid."""
    y = x
    for i, (d, n, s) in enumerate(zip(axes, n_in, sizes)):
        last = i == len(axes) - 1
        if n == s:
            y = c.b.op("Identity", [y], out) if last else y
            continue
        parts = []
        for a, e in _adaptive_windows(n, s):
            sl = c.b.op("Slice", [y, c.b.i64([a]), c.b.i64([e]), c.b.i64([d])])
            parts.append(c.b.op("ReduceMean", [c.on_grid(sl, 0) if y == x else sl, c.b.i64([d])], keepdims=1))
        y = c.b.op("Concat", parts, out if last else 1, axis=d)
    return y


def adaptive_avg_pool(c: Ctx, out):
    """To 1 (``GlobalAveragePool``), to a size dividing the input's (one fixed window, ``AveragePool``),
    else one ``ReduceMean`` per window (``_per_window``; float values, the QDQ flavour)."""
    args, _ = c.args()
    x = args[0]
    k = 1 if c.node.attrs["target"].startswith("aten.adaptive_avg_pool1d") else 2
    sizes = [int(s) for s in as_list(args[1], k)]
    if all(s == 1 for s in sizes):
        return c.b.op("GlobalAveragePool", [x], out)
    r = c.rank_of(x)
    n_in = c.static_dims(x, list(range(r - k, r)), "adaptive average pooling")
    if any(s <= 0 for s in sizes):
        raise c.fail(f"adaptive average pooling to {sizes}: sizes must be positive")
    if any(n % s for n, s in zip(n_in, sizes)):
        return _per_window(c, x, list(range(r - k, r)), n_in, sizes, out)
    win = [n // s for n, s in zip(n_in, sizes)]
    return c.b.op("AveragePool", [x], out, kernel_shape=win, strides=win)


def adaptive_max_pool(c: Ctx, out):
    """``adaptive_max_pool2d``: per window (torch's windows) a ``Slice`` (a moved copy, put back on the
    input's grid in the QDQ flavour), ``ReduceMax``; and, when the graph names the indices output,
    ``ArgMax`` of the flattened window (the first maximum, as torch's kernel) mapped to the flat
    ``h * W + w`` torch returns. Exact on a float carrier of the codes (the integer flavour's
    ``max_pool`` form) as on float values."""
    args, _ = c.args()
    x = args[0]
    sizes = [int(s) for s in as_list(args[1], 2)]
    r = c.rank_of(x)
    (n_h, n_w) = c.static_dims(x, [r - 2, r - 1], "adaptive max pooling")
    with_idx = len(out) > 1 and bool(out[1])
    rows_v, rows_i = [], []
    for a, e in _adaptive_windows(n_h, sizes[0]):
        vals, idxs = [], []
        for b0, f in _adaptive_windows(n_w, sizes[1]):
            sl = c.on_grid(c.b.op("Slice", [x, c.b.i64([a, b0]), c.b.i64([e, f]), c.b.i64([r - 2, r - 1])]), 0)
            vals.append(c.b.op("ReduceMax", [sl, c.b.i64([r - 2, r - 1])], keepdims=1))
            if with_idx:
                flat = c.on_grid(c.b.op("Reshape", [sl, c.b.i64([0] * (r - 2) + [-1])]), 0)
                li = c.b.op("ArgMax", [flat], axis=-1, keepdims=1)
                wf = c.b.i64(f - b0)
                h = c.b.op("Add", [c.b.op("Div", [li, wf]), c.b.i64(a)])
                w = c.b.op("Add", [c.b.op("Mod", [li, wf]), c.b.i64(b0)])
                g = c.b.op("Add", [c.b.op("Mul", [h, c.b.i64(n_w)]), w])
                idxs.append(c.b.op("Unsqueeze", [g, c.b.i64([-1])]))
        rows_v.append(c.b.op("Concat", vals, axis=r - 1))
        if with_idx:
            rows_i.append(c.b.op("Concat", idxs, axis=r - 1))
    y = c.b.op("Concat", rows_v, out[:1], axis=r - 2)
    if with_idx:
        c.b.op("Concat", rows_i, out[1:2], axis=r - 2)
    return y


# -- resizing -----------------------------------------------------------------------------------------
def _resize_args(c: Ctx, x: str, k: int, sizes, scales):
    """Resize's inputs resizing the last ``k`` dims: ``[x, roi, scales]`` or ``[x, roi, "", sizes]``,
    over every dim (with the ``axes`` attribute, ONNX Runtime 1.32 failed on a QDQ U-Net: an
    out-of-range Gather in its optimised graph)."""
    lead = c.rank_of(x) - k
    if scales is not None:
        s = [1.0] * lead + [float(v) for v in as_list(scales, k)]
        return [x, "", c.b.const(np.asarray(s, np.float32), base="scales")]
    keep = c.b.op("Shape", [x], start=0, end=lead)
    return [x, "", "", c.b.op("Concat", [keep, c.b.i64([int(v) for v in as_list(sizes, k)])], axis=0)]


def _nearest_index(n_in: int, n_out: int, scale, exact: bool = False) -> np.ndarray:
    """The source index of every output position by torch's own nearest (or nearest-exact) rule."""
    src = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in)
    op = torch.ops.aten._upsample_nearest_exact1d.vec if exact else torch.ops.aten.upsample_nearest1d.vec
    idx = op(src, None if scale is not None else [n_out], [float(scale)] if scale is not None else None)
    if idx.shape[-1] != n_out:
        raise ValueError(f"nearest resizing gives {idx.shape[-1]} positions, the graph {n_out}")
    return idx.reshape(-1).to(torch.int64).numpy()


def upsample_nearest(c: Ctx, out):
    """Float values: ``Resize`` (nearest, ``asymmetric``, ``floor``: torch's ``floor(dst * in / out)``;
    nearest-exact: ``half_pixel``, ``round_prefer_ceil``: ``floor((dst + 0.5) * in / out)``), over
    1, 2 or 3 dims. Codes: ``Gather`` along each resized dim of the indices torch itself computes (exact)."""
    args, kw = c.args()
    x, sizes, scales = args[0], arg(args, kw, 1, "output_size"), arg(args, kw, 2, "scale_factors")
    target = c.node.attrs["target"]
    k, exact = (1 if "1d" in target else 3 if "3d" in target else 2), "exact" in target
    r = c.rank_of(x)
    axes = list(range(r - k, r))
    if c.dtype_of(x) in ("float32", "float64"):
        mode = dict(coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil") if exact \
            else dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return c.b.op("Resize", _resize_args(c, x, k, sizes, scales), out, mode="nearest", **mode)
    n_in = c.static_dims(x, axes, "nearest resizing of integer codes")
    n_out = [c.out_shapes[0][d] for d in axes] if c.out_shapes else None
    if n_out is None or not all(isinstance(n, int) for n in n_out):
        raise c.fail("nearest resizing of integer codes needs the static output size")
    y = x
    for i, d in enumerate(axes):
        s = as_list(scales, k)[i] if scales is not None else None
        idx = c.b.i64(_nearest_index(n_in[i], n_out[i], s, exact), "nearest_index")
        y = c.b.op("Gather", [y, idx], out if i == k - 1 else 1, axis=d)
    return y


def upsample_bilinear(c: Ctx, out):
    """``Resize`` (linear; ``align_corners``, or ``pytorch_half_pixel``: torch's
    ``(dst + 0.5) / scale - 0.5`` clamped at 0); float values only (the integer model's bilinear
    kernel has its own writer)."""
    args, kw = c.args()
    x, sizes = args[0], arg(args, kw, 1, "output_size")
    align, scales = bool(arg(args, kw, 2, "align_corners", False)), arg(args, kw, 3, "scale_factors")
    if c.dtype_of(x) not in ("float32", "float64"):
        raise c.fail("bilinear resizing of integer codes is the integer model's bilinear kernel")
    mode = "align_corners" if align else "pytorch_half_pixel"
    return c.b.op("Resize", _resize_args(c, x, 2, sizes, scales), out, mode="linear",
                  coordinate_transformation_mode=mode)


# -- transposed convolution (float values) ------------------------------------------------------------
def conv_transpose(c: Ctx, out):
    args, kw = c.args()
    x, w, bias = args[0], args[1], arg(args, kw, 2, "bias")
    nd = c.rank_of(w) - 2
    stride, pad = as_list(arg(args, kw, 3, "stride", 1), nd), as_list(arg(args, kw, 4, "padding", 0), nd)
    out_pad = as_list(arg(args, kw, 5, "output_padding", 0), nd)
    groups, dil = int(arg(args, kw, 6, "groups", 1)), as_list(arg(args, kw, 7, "dilation", 1), nd)
    attrs = dict(strides=stride, pads=pad + pad, dilations=dil, group=groups)
    if any(out_pad):
        attrs["output_padding"] = out_pad
    return c.b.op("ConvTranspose", [x, w] + ([bias] if bias else []), out, **attrs)


def batch_norm(c: Ctx, out):
    """Inference batch norm (``batch_norm``, ``_native_batch_norm_legit_no_training``, whose two
    statistics outputs are empty tensors in torch) as ``BatchNormalization``."""
    args, kw = c.args()
    legit = c.node.attrs["target"].startswith("aten._native")
    x, w, bias, mean, var = (list(args) + [None] * 5)[:5]
    if not legit and arg(args, kw, 5, "training", False):
        raise c.fail("batch norm in training mode is not exported")
    eps = float(arg(args, kw, 6 if legit else 7, "eps", 1e-5))
    n = c.static_dims(x, [1], "batch norm without weight or bias")[0] if w is None or bias is None else None
    w = w if w is not None else c.b.const(np.ones(n, np.float32), base="bn_weight")
    bias = bias if bias is not None else c.b.const(np.zeros(n, np.float32), base="bn_bias")
    y = c.b.op("BatchNormalization", [x, w, bias, mean, var], out[:1], epsilon=eps)
    for o in out[1:]:
        c.b.op("Identity", [c.b.const(np.zeros(0, np.float32))], [o])
    return y


ATEN_SPATIAL = {
    "aten.mean.dim": _reduce("ReduceMean"), "aten.mean.default": _reduce("ReduceMean"),
    "aten.sum.dim_IntList": _reduce("ReduceSum"), "aten.sum.default": _reduce("ReduceSum"),
    "aten.avg_pool1d.default": avg_pool1d, "aten.adaptive_avg_pool1d.default": adaptive_avg_pool,
    "aten.adaptive_avg_pool2d.default": adaptive_avg_pool, "aten.adaptive_max_pool2d.default": adaptive_max_pool,
    "aten.upsample_nearest1d.vec": upsample_nearest, "aten.upsample_nearest2d.vec": upsample_nearest,
    "aten.upsample_nearest3d.vec": upsample_nearest, "aten._upsample_nearest_exact1d.vec": upsample_nearest,
    "aten._upsample_nearest_exact2d.vec": upsample_nearest,
    "aten.upsample_bilinear2d.vec": upsample_bilinear, "aten.conv_transpose2d.input": conv_transpose,
    "aten.conv_transpose1d.default": conv_transpose,
    "aten.batch_norm.default": batch_norm, "aten._native_batch_norm_legit_no_training.default": batch_norm,
}
