"""Sliding-window moves: ``F.unfold`` (``aten.im2col``) and ``F.fold`` (``aten.col2im``).

Stage: ``convert`` (the rows' ``lower``), ``run`` at level "int" (``k_window``) and both ONNX
flavours (``onnx_im2col``, ``onnx_col2im``). Takes a rank-4 ``(N, C, H, W)`` tensor (im2col) or a rank-3
``(N, C*kh*kw, L)`` one (col2im), or the same without the batch dim, quantized per tensor; returns
the same codes moved, on the input's grid.

Both ops only move values: every output element is one input element or padding. im2col
copies each window of the zero-padded input into a column; col2im puts each column back into
its window and SUMS where windows overlap. A sum leaves the grid, so col2im is taken only when
no two windows share an output position (MobileViT-v2's patch folding: stride = kernel); an
overlapping fold is refused at convert, naming the node. Padding and the positions no window
covers hold 0.0, which is the zero point on the input's grid: exact.

The int kernel reads one index table (``window_index``): for each output element, its position
in the flattened input, or the position of one extra element that holds the fill code; the table
has one entry per output element of one batch item, at most ``MAX_ELEMENTS`` or 64 times the
input's (a file cannot make a run allocate more than its tensors back). ONNX writes fold as
``Reshape`` / ``Pad`` (the extra element) / ``Gather`` / ``Reshape`` with the same table (static
sizes), and unfold as ``Pad`` and one strided ``Slice`` per kernel offset, ``Concat``, ``Reshape``
(static channels; height and width may be dynamic, as a text model's sequence is). The integer
model, the integer ONNX file and the simulation (torch's own unfold/fold on the fake-quantized
floats) agree bit for bit (0 LSB).
"""
from __future__ import annotations

import functools
import json

import torch

from ..ir import Node
from .operands import arg, quantize_value
from .shape import lower_move
from .spec import OpSpec

_IM2COL, _COL2IM = "aten.im2col.default", "aten.col2im.default"
MAX_ELEMENTS = 1 << 24    # per batch item, or 64 times the input's: what a window table may hold


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    v = v * 2 if len(v) == 1 else v
    if len(v) != 2 or not all(type(x) is int for x in v):
        raise ValueError(f"expected two ints, got {v!r:.60}")
    return v[0], v[1]


def _geometry(target: str, args: list, kwargs: dict) -> dict:
    """kernel, dilation, padding, stride (and col2im's output size) of a recorded call."""
    names = ("kernel_size", "dilation", "padding", "stride")
    if target == _COL2IM:
        names = ("output_size",) + names
    g = {}
    for k, name in enumerate(names):
        v = args[k + 1] if len(args) > k + 1 else kwargs.get(name)
        g[name] = _pair(v)
    if min(g["kernel_size"] + g["dilation"] + g["stride"]) < 1 or min(g["padding"]) < 0:
        raise ValueError(f"kernel, dilation and stride must be >= 1 and padding >= 0, got {g}")
    return g


def _blocks(size: tuple[int, int], g: dict) -> tuple[int, int]:
    return tuple((size[i] + 2 * g["padding"][i] - g["dilation"][i] * (g["kernel_size"][i] - 1) - 1)
                 // g["stride"][i] + 1 for i in (0, 1))


def window_index(target: str, in_shape: tuple, args: list, kwargs: dict) -> tuple[torch.Tensor, tuple, bool]:
    """``(index, output shape without the batch dim, overlapping)``: for every output element of
    one batch item, its position in the flattened input item, or ``numel`` (the fill element)."""
    g = _geometry(target, args, kwargs)
    kh, kw = g["kernel_size"]
    if target == _IM2COL:
        c, h, w = (int(d) for d in in_shape[-3:])
        bh, bw = _blocks((h, w), g)
        size = (h, w)
    else:
        ck, n_blocks = (int(d) for d in in_shape[-2:])
        h, w = g["output_size"]
        bh, bw = _blocks((h, w), g)
        if ck % (kh * kw) or bh * bw != n_blocks or bh < 1 or bw < 1:
            raise ValueError(f"an input of {ck} x {n_blocks} does not hold {kh} x {kw} windows of a {h} x {w} output")
        c, size = ck // (kh * kw), (h, w)
    out_numel = c * kh * kw * bh * bw
    in_numel = int(torch.tensor([int(d) for d in in_shape[1:]]).prod())
    if out_numel > max(MAX_ELEMENTS, 64 * in_numel):
        raise ValueError(f"its {kh} x {kw} windows over {bh} x {bw} positions make {out_numel} elements per "
                         f"batch item from {in_numel}; more than {max(MAX_ELEMENTS, 64 * in_numel)} is refused")
    # for every (channel, ki, kj, block row, block col): the window element's row and column
    ki, kj = torch.arange(kh), torch.arange(kw)
    oi, oj = torch.arange(bh), torch.arange(bw)
    rows = oi.view(1, 1, -1, 1) * g["stride"][0] + ki.view(-1, 1, 1, 1) * g["dilation"][0] - g["padding"][0]
    cols = oj.view(1, 1, 1, -1) * g["stride"][1] + kj.view(1, -1, 1, 1) * g["dilation"][1] - g["padding"][1]
    rows, cols = torch.broadcast_tensors(rows, cols)                     # (kh, kw, bh, bw)
    inside = ((rows >= 0) & (rows < size[0]) & (cols >= 0) & (cols < size[1])).reshape(1, -1)
    plane = size[0] * size[1]
    pos = (rows * size[1] + cols).reshape(1, -1) + torch.arange(c).view(-1, 1) * plane   # (c, kh*kw*bh*bw)
    pos = torch.where(inside.expand_as(pos), pos, torch.full_like(pos, -1))
    if target == _IM2COL:
        numel = c * plane
        index = torch.where(pos >= 0, pos, torch.full_like(pos, numel)).reshape(-1)
        return index, (c * kh * kw, bh * bw), False
    # col2im: scatter the columns' positions back; a position written twice is an overlap
    numel = c * kh * kw * bh * bw
    src = torch.arange(numel).view(c, -1)
    hit = pos >= 0
    index = torch.full((c * plane,), numel, dtype=torch.long)
    counts = torch.bincount(pos[hit], minlength=c * plane)
    index[pos[hit]] = src[hit]
    return index, (c, h, w), bool((counts > 1).any())


@functools.lru_cache(maxsize=64)
def _cached_index(target: str, item_shape: tuple, call: str):
    args, kwargs = json.loads(call)
    return window_index(target, (None, *item_shape), args, kwargs)   # the table never reads the batch dim


def _item(target: str, shape) -> tuple:
    """The dims of one batch item: ``(C, H, W)`` for im2col, ``(C*kh*kw, L)`` for col2im (torch also
    takes an input without the batch dim, which is then the whole shape)."""
    return tuple(shape[-3:] if target == _IM2COL else shape[-2:])


def _unbatched(target: str, shape) -> bool:
    return len(shape) == len(_item(target, shape)) == (3 if target == _IM2COL else 2)


def _index_of(node: Node, in_shape: tuple):
    """``window_index`` of the node's recorded call, built once per input shape (the integer model
    runs ``k_window`` on every call)."""
    call = json.dumps([node.attrs.get("args", []), node.attrs.get("kwargs", {})], sort_keys=True)
    return _cached_index(node.attrs["target"], tuple(int(d) for d in _item(node.attrs["target"], in_shape)), call)


def gather_window(x: torch.Tensor, index: torch.Tensor, out_shape: tuple, fill) -> torch.Tensor:
    """The table's gather on any dtype: ``x`` flattened per batch item, one ``fill`` element
    appended, ``index`` picked, shaped ``(N, *out_shape)``."""
    flat = x.reshape(x.shape[0], -1)
    flat = torch.cat([flat, torch.full((x.shape[0], 1), fill, dtype=x.dtype, device=x.device)], dim=1)
    return flat[:, index.to(x.device)].reshape(x.shape[0], *out_shape)


def k_window(g, node: Node, args):
    """The int-level kernel: the codes gathered by the window table, padding = ``attrs['fill']``."""
    x = args[0]
    index, out_shape, _ = _index_of(node, tuple(x.shape))
    if _unbatched(node.attrs["target"], x.shape):
        return gather_window(x.unsqueeze(0), index, out_shape, int(node.attrs["fill"]))[0]
    return gather_window(x, index, out_shape, int(node.attrs["fill"]))


def lower_window(ctx, node: Node) -> None:
    """Per-tensor input only; the fill code is the zero point (0.0 on the grid); col2im only
    without overlapping windows."""
    src = node.inputs[0] if node.inputs else None
    qp = ctx.qparams(src) if src is not None else None
    if qp is None:
        raise ctx.error(node, "its input is not quantized")
    shape = ctx.q.values[src].shape
    item = _item(node.attrs["target"], shape)
    dynamic = not all(type(d) is int for d in item)
    if dynamic and (node.attrs["target"] == _COL2IM or type(item[0]) is not int):
        raise ctx.error(node, f"fold needs static sizes, unfold static channels; the input has shape {shape}")
    try:   # an unfold over a dynamic height or width (a text model's sequence) is checked when it runs
        overlapping = False if dynamic else _index_of(node, tuple(shape))[2]
    except ValueError as exc:
        raise ctx.error(node, str(exc)) from None
    if overlapping:
        raise ctx.error(node, "F.fold sums the values of overlapping windows, which leaves the input's grid; "
                              "only a fold whose windows do not overlap (stride >= dilation * (kernel - 1) + 1) "
                              "converts. Keep this op float (a DeQuantStub before it) or fold without overlap")
    attrs = dict(node.attrs, fill=int(quantize_value(0.0, qp)))
    lower_move(ctx, Node(node.name, node.op, node.inputs, node.outputs, attrs, node.source))


def onnx_col2im(c, outs):
    """fold: ``Reshape`` to ``(N, numel)``, ``Pad`` one fill element at the end, ``Gather`` the
    window table along axis 1, ``Reshape`` to the output (the integer flavour fills with the zero
    point's code, the QDQ one with 0.0)."""
    args, kwargs = c.args()
    x = args[0]
    shape = c.shape_of(x)
    item, lead = _item(_COL2IM, shape), [] if _unbatched(_COL2IM, shape) else [0]   # Reshape's 0: the batch
    if not all(type(d) is int for d in item):
        raise c.fail(f"fold's ONNX form needs static channels, height and width, got {shape}")
    index, out_shape, overlapping = _index_of(c.node, tuple(shape))
    if overlapping:
        raise c.fail("a fold with overlapping windows sums them; it has no ONNX form here")
    (x,), back = c.carried([x])
    numel = int(torch.tensor(item).prod())
    # each step only moves values: the QDQ flavour puts each back on the input's grid (c.on_grid),
    # which ONNX Runtime's QDQ transforms expect after every moved quantized tensor
    flat = c.on_grid(c.b.op("Reshape", [x, c.b.i64([*lead, numel])]), 0)
    fill = c.scalar(c.node.attrs.get("fill", 0), x)
    padded = c.on_grid(c.b.op("Pad", [flat, c.b.i64([0] * len(lead) + [0] + [0] * len(lead) + [1]), fill],
                              mode="constant"), 0)
    picked = c.on_grid(c.b.op("Gather", [padded, c.b.i64(index.tolist())], axis=len(lead)), 0)
    return c.emit("Reshape", [picked, c.b.i64([*lead, *out_shape])], outs, back)


def onnx_im2col(c, outs):
    """unfold: ``Pad`` (the fill), then per kernel offset a strided ``Slice`` of the block grid (its
    end counted from the back, so height and width may be dynamic), ``Concat`` of the offsets and
    ``Reshape`` to ``(N, C*kh*kw, L)``; channels must be static."""
    x = c.args()[0][0]
    shape = c.shape_of(x)
    item, b = _item(_IM2COL, shape), 0 if _unbatched(_IM2COL, shape) else 1   # b: the batch dims before C
    if type(item[0]) is not int:
        raise c.fail(f"unfold's ONNX form needs static channels, got {shape}")
    g = _geometry(_IM2COL, c.node.attrs.get("args", []), c.node.attrs.get("kwargs", {}))
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = g["kernel_size"], g["dilation"], g["padding"], g["stride"]
    (x,), back = c.carried([x])
    if ph or pw:
        fill = c.scalar(c.node.attrs.get("fill", 0), x)
        x = c.on_grid(c.b.op("Pad", [x, c.b.i64([0] * (b + 1) + [ph, pw] + [0] * (b + 1) + [ph, pw]), fill],
                             mode="constant"), 0)
    big = (1 << 63) - 1
    parts = []
    for i in range(kh):
        for j in range(kw):
            ends = [-(kh - 1 - i) * dh or big, -(kw - 1 - j) * dw or big]
            part = c.b.op("Slice", [x, c.b.i64([i * dh, j * dw]), c.b.i64(ends), c.b.i64([b + 1, b + 2]),
                                    c.b.i64([sh, sw])])
            parts.append(c.on_grid(c.b.op("Unsqueeze", [part, c.b.i64([b + 1])]), 0))   # (N, C, 1, bh, bw)
    stacked = c.on_grid(c.b.op("Concat", parts, axis=b + 1), 0) if len(parts) > 1 else parts[0]
    return c.emit("Reshape", [stacked, c.b.i64([0] * b + [item[0] * kh * kw, -1])], outs, back)


SPECS = [
    OpSpec("im2col", (_IM2COL,), rule="shared", lower=lower_window, kernel=k_window, onnx={_IM2COL: onnx_im2col},
           int_attrs={"fill": "int"}),
    OpSpec("col2im", (_COL2IM,), rule="shared", lower=lower_window, kernel=k_window, onnx={_COL2IM: onnx_col2im},
           int_attrs={"fill": "int"}),
]
