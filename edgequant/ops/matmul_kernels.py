"""The integer kernels of conv, linear, matmul and embedding: exact sums, then the output stage.

Takes an int-level node that ``matmul_like`` lowered (``attrs``: ``output``, ``carrier``,
zero points, conv arguments, ...) and its input tensors ``(x, w_q, b_q, m0, shift)``
(embedding: ``(table_q, indices[, m0, shift])``); returns the output codes (or floats, for a
``"float"`` output). Equation labels are those of ``docs/arithmetic.md``::

    acc[c] = sum_j (x_q[j] - z_x) * (w_q[c, j] - z_w[c]) + b_q[c]           (A5.3's sum)
    requant: y = clamp(requantize(acc, m0[c], shift[c], z_y), lo_q, hi_q)   (A7, then the bounds)
    acc:     y = saturate(acc)  (never clamps: |acc| <= A fits the dtype)
    float:   y = dequantize(acc, s_acc[c], 0)                                (A2)

The sum is computed two ways, tested bit for bit against each other: the reference
(``k_reduce_reference``) in int64, conv as a loop over kernel offsets of strided slices times
the weight tap (im2col written out, ``ref_conv``), conv_transpose as the scatter-add of those
taps, linear/matmul as int64 matmuls; the fast path (``k_reduce``) runs torch's float
conv/matmul on the centered codes in the carrier ``choose_carrier`` picks from the (A8) bound
``A``: every product and partial sum is an integer of magnitude <= ``A``, exact in float32 below
2^24 and in float64 below 2^53, so any summation order gives the same integer
(``"float32_limbs"`` splits the input so that each float32 partial sum stays below 2^24 and adds
the bias after, in float64). NNPACK (Winograd/FFT) and, on CUDA, cuDNN (Winograd/FFT algorithms,
TF32) are switched off around the float calls (CUDA convolutions then run torch's own im2col +
cuBLAS GEMM, or its direct depthwise kernel), and float32 falls back to float64 if torch, oneDNN,
cuBLAS or cuDNN is set to compute float32 products in reduced precision (``_float32_exact``:
bf16/tf32 on the CPU, TF32 on CUDA, which PyTorch enables for cuDNN convolutions by default).
The int64 carrier and the reference run on the CPU for CUDA tensors (CUDA has no int64
matmul) and return to the tensor's device: the same integers. A matmul lowered for a dynamic reduction length (carrier ``"dynamic"``) checks the
length it gets against ``max_reduction`` and picks its carrier per call. Requantization, most
of the kernels' time, runs over rows of the output (``_CHUNK`` elements at a time) so that
(A7)'s int64 temporaries stay in cache; the values are the same.

Embedding gathers the table's codes, requantized by (A7) when the output has its own grid.
"""
from __future__ import annotations

import contextlib
import itertools
import os

import torch
import torch.nn.functional as F

from ..dtype import get_dtype
from ..ir import Node
from ..qmath import channel_vector, dequantize, requantize, saturate


def choose_carrier(bound: int, wsum, x_range: tuple[int, int] | None) -> dict:
    """The fast path's carrier from the bound (A8); for ``"float32_limbs"`` the split.

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


def _center(q: torch.Tensor, zp, axis, dtype: torch.dtype) -> torch.Tensor:
    """``q - z`` in the carrier ``dtype`` (exact: codes and zero points are small integers)."""
    c = q.to(dtype)
    if isinstance(zp, list):
        return c - channel_vector(zp, q.dim(), axis, dtype)
    return c - zp if zp else c


def _unbatched(attrs: dict, x: torch.Tensor, w: torch.Tensor) -> bool:
    """A conv (its node records ``groups``) of one unbatched sample: ``x`` lacks the batch dim."""
    return "groups" in attrs and x.dim() == w.dim() - 1


# -- reference: int64, the sums written out ------------------------------------------------------
def ref_conv(x, w, a):
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


def ref_conv_transpose(x, w, a):
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
    "conv1d": ref_conv, "conv2d": ref_conv, "conv3d": ref_conv, "conv_transpose2d": ref_conv_transpose,
    "conv_transpose1d": ref_conv_transpose,
    "linear": lambda x, w, a: torch.matmul(x, w.t()),
    "matmul": lambda x, w, a: torch.matmul(x, w),
}

# -- fast: torch's float kernels on exact integer-valued carriers ---------------------------------
_FAST = {
    "conv1d": lambda x, w, b, a: F.conv1d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
    "conv2d": lambda x, w, b, a: F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
    "conv3d": lambda x, w, b, a: F.conv3d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
    "conv_transpose2d": lambda x, w, b, a: F.conv_transpose2d(x, w, b, a["stride"], a["padding"],
                                                              a["output_padding"], a["groups"], a["dilation"]),
    "conv_transpose1d": lambda x, w, b, a: F.conv_transpose1d(x, w, b, a["stride"], a["padding"],
                                                              a["output_padding"], a["groups"], a["dilation"]),
    "linear": lambda x, w, b, a: F.linear(x, w, b),
    "matmul": lambda x, w, b, a: torch.matmul(x, w),
}
_CARRIERS = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


_EXACT_FP32 = ("none", "ieee")   # fp32_precision settings that multiply float32 in float32


def _fp32_precisions(*backends) -> list[str]:
    """The ``fp32_precision`` settings (torch >= 2.9) of ``backends`` and their sub-backends."""
    out = []
    for b in backends:
        for obj in (b, *(getattr(b, k, None) for k in ("conv", "matmul", "rnn"))):
            v = getattr(obj, "fp32_precision", None) if obj is not None else None
            if isinstance(v, str):
                out.append(v.lower())
    return out


def _float32_exact(device: torch.device | str | None = None) -> bool:
    """False if float32 products on ``device`` (default CPU) may be computed in reduced precision:
    bf16/tf32 in torch or oneDNN on the CPU; TF32 in cuBLAS or cuDNN on CUDA
    (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``, their
    ``fp32_precision``, ``torch.set_float32_matmul_precision``). Settings torch cannot report
    (it refuses a mix of its legacy and new precision APIs) count as reduced."""
    try:
        return _settings_exact(device)
    except RuntimeError:
        return False


def _settings_exact(device) -> bool:
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if not all(s in _EXACT_FP32 for s in _fp32_precisions(torch.backends)):   # the global default
        return False
    if torch.device(device or "cpu").type == "cuda":
        cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        if getattr(cuda, "allow_tf32", False) or getattr(cudnn, "allow_tf32", False):
            return False
        return all(s in _EXACT_FP32 for s in _fp32_precisions(cuda, cudnn))
    mk = torch.backends.mkldnn
    settings = [getattr(getattr(mk, k, None), "fp32_precision", "none") for k in ("conv", "matmul")]
    fpmath = os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", os.environ.get("DNNL_DEFAULT_FPMATH_MODE", "strict"))
    return all(s in _EXACT_FP32 for s in settings) and fpmath.lower() == "strict"


def _exact_backends(device: torch.device):
    """NNPACK (CPU) and, for CUDA tensors, cuDNN off: the float calls then use algorithms whose
    every partial sum is an exact integer (no Winograd/FFT transforms, no TF32)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.backends.nnpack.flags(enabled=False))
    if device.type == "cuda":   # only ``enabled``: cudnn.flags() would also reset TF32/precision settings
        stack.enter_context(_cudnn_disabled())
    return stack


@contextlib.contextmanager
def _cudnn_disabled():
    prev = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = prev


def _accumulate(op, attrs, x, w, b, reference):
    """``accumulate`` in its carrier: float32/float64 tensors hold the exact integers.

    On a float carrier the bias is the float kernel's own bias: every partial sum, bias
    included, is bounded by ``A`` (which counts ``|b_q|``), so it stays exact."""
    carrier = "int64" if reference else attrs["carrier"]
    if carrier in ("float32", "float32_limbs") and not _float32_exact(x.device):
        carrier = "float64"
    if carrier == "int64" and x.device.type != "cpu":   # CUDA has no int64 matmul: the same sums on the CPU
        dev = x.device
        with torch.device("cpu"):
            acc = _accumulate(op, {**attrs, "carrier": "int64"}, x.cpu(), w.cpu(), None if b is None else b.cpu(),
                              reference)
        return acc.to(dev)
    if carrier == "float32_limbs":
        return _accumulate_limbs(op, attrs, x, w, b)
    dt = _CARRIERS[carrier]
    xc = _center(x, attrs["x_zero_point"], attrs.get("x_ch_axis"), dt)
    wc = _center(w, attrs["w_zero_point"], attrs.get("w_ch_axis"), dt)
    unbatched = _unbatched(attrs, xc, w)
    if unbatched:
        xc = xc.unsqueeze(0)
    if dt == torch.int64:
        acc = _REFERENCE[op](xc, wc, attrs)
        if b is not None:
            acc = acc + channel_vector(b, acc.dim(), attrs["ch_axis"] + (1 if unbatched else 0))
    else:
        with _exact_backends(xc.device):      # NNPACK's and cuDNN's Winograd/FFT are not exact
            acc = _FAST[op](xc, wc, None if b is None else b.to(dt), attrs)
    return acc.squeeze(0) if unbatched else acc


def _accumulate_limbs(op, attrs, x, w, b):
    """Exact float32 sums of ``x_q - z_x`` (``limb_shift = 0``) or of its limbs ``hi * 2^s + lo``
    (bounds in ``choose_carrier``), joined with the bias exactly in float64 (``|acc| < 2^53``)."""
    s = attrs["limb_shift"]
    xi = x.to(torch.int32) - attrs["x_zero_point"]              # per-tensor zero point (limbs only then)
    limbs = [xi.to(torch.float32)] if s == 0 else [(xi >> s).to(torch.float32), (xi & ((1 << s) - 1)).to(torch.float32)]
    wc = _center(w, attrs["w_zero_point"], attrs.get("w_ch_axis"), torch.float32)
    unbatched = _unbatched(attrs, x, w)
    if unbatched:
        limbs = [t.unsqueeze(0) for t in limbs]
    with _exact_backends(wc.device):
        acc = _FAST[op](limbs[0], wc, None, attrs).to(torch.float64)
        if s:
            acc.mul_(1 << s).add_(_FAST[op](limbs[1], wc, None, attrs))
    if b is not None:
        acc += channel_vector(b, acc.dim(), attrs["ch_axis"] + (1 if unbatched else 0), torch.float64)
    return acc.squeeze(0) if unbatched else acc


_CHUNK = 1 << 16   # elements requantized at a time: the int64 temporaries of (A7) stay in cache


def _finish(acc: torch.Tensor, attrs: dict, m0, shift) -> torch.Tensor:
    """The output stage; ``acc`` holds exact integers (int64, or a float carrier, which qmath
    converts to int64 exactly)."""
    ch, nd, mode = attrs["ch_axis"], acc.dim(), attrs["output"]
    if mode == "requant":
        m0, shift = channel_vector(m0, nd, ch), channel_vector(shift, nd, ch)
        args = (attrs["out_dtype"], attrs["out_zero_point"], attrs.get("bound"))
        per_row = acc[0].numel() if nd > 1 and acc.shape[0] else acc.numel()  # acc[0]: not on an empty batch
        if nd > 1 and ch != 0 and acc.numel() > _CHUNK:      # rows of axis 0 at a time (same values)
            y = torch.empty(acc.shape, dtype=get_dtype(attrs["out_dtype"]).storage, device=acc.device)
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
    return dequantize(acc, torch.tensor(attrs["acc_scale"], device=acc.device), 0, ch)


def _dynamic_carrier(node: Node, x: torch.Tensor) -> dict:
    """A matmul lowered for reductions up to ``max_reduction``: check K, pick its carrier."""
    a = node.attrs
    k = x.shape[-1]
    if k > a["max_reduction"]:
        raise RuntimeError(f"node {node.name!r}: reduction length {k} exceeds {a['max_reduction']}, the longest "
                           "for which convert checked the accumulator bound (docs/arithmetic.md A8)")
    choice = choose_carrier(k * a["x_max_abs"] * a["w_max_abs"], k * a["w_max_abs"],
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
