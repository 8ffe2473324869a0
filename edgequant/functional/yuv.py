"""BT.601 colour conversion between RGB/BGR images and centered YUV444.

Edge image pipelines deliver centered YUV444: YUV with 128 subtracted, int8 in [-128, 127].
Two uses:

- Training-time preprocessing (``rgb2centered_yuv``, ``bgr2centered_yuv``): convert a float
  image in [0, 255] to centered YUV so the model is trained on what the device delivers
  (recommended; no cost or loss at inference).
- Deployment of a model trained on RGB (``centered_yuv2rgb``, ``centered_yuv2bgr``): the float
  reference of the op that ``edgequant.deploy.insert_yuv2rgb`` inserts right after the input
  ``quantize`` of a converted model. It converts centered YUV back to RGB, normalises with the
  training ``mean``/``std`` and quantizes with the input QuantStub's scale ``q_scale``. Do not
  use it in training.

Swings (BT.601): ``"full"`` (Y, U, V in 0..255, JPEG/JFIF; what edge image pipelines deliver)
and ``"studio"`` (Y in 16..235, U, V in 16..240).

Rounding: every rounding is ``torch.round`` (half to even, as in ``edgequant.qmath``), every
result is saturated to its 8-bit range. Images are NCHW (or CHW) with 3 channels on dim -3.
A bad argument (an image that is not a tensor, an unknown swing, a non-finite ``mean``/``std``,
``std == 0``, ``q_scale`` not finite and positive, ``qmin > qmax``) raises ``TypeError`` or
``ValueError`` naming the argument, its value and what is expected.
"""
from __future__ import annotations

import math
from numbers import Integral

import torch

# RGB -> YUV: yuv = M @ rgb + OFFSET (per swing), in float64
_M = {
    "full": ((0.299, 0.587, 0.114),
             (-0.168735891647856, -0.331264108352144, 0.5),
             (0.5, -0.418687589158345, -0.081312410841655)),
}
_OFFSET = {"full": (0.0, 128.0, 128.0), "studio": (16.0, 128.0, 128.0)}


def _studio():
    kr, kb = 0.299, 0.114
    kg = 1 - kr - kb
    y = torch.tensor([kr, kg, kb], dtype=torch.float64) * (219.0 / 255.0)
    u = torch.tensor([-kr, -kg, 1 - kb], dtype=torch.float64) / (2 * (1 - kb)) * (224.0 / 255.0)
    v = torch.tensor([1 - kr, -kg, -kb], dtype=torch.float64) / (2 * (1 - kr)) * (224.0 / 255.0)
    return torch.stack([y, u, v])


SWINGS = ("full", "studio")


def yuv_matrices(swing: str = "full"):
    """``(M, offset, M_inv)`` (float64) with ``yuv = M @ rgb + offset`` and ``rgb = M_inv @ (yuv - offset)``."""
    if not isinstance(swing, str) or swing not in SWINGS:
        raise ValueError(f"swing must be 'full' or 'studio', got {swing!r}")
    m = torch.tensor(_M["full"], dtype=torch.float64) if swing == "full" else _studio()
    return m, torch.tensor(_OFFSET[swing], dtype=torch.float64), torch.linalg.inv(m)


def _check_image(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the image must be a torch.Tensor (NCHW or CHW, 3 channels on dim -3), got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"the image must hold real numbers, got dtype {x.dtype}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected an image with 3 channels on dim -3 (NCHW or CHW), got shape {tuple(x.shape)}")


def _mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m @ x`` over the channel dim (-3) in float64."""
    _check_image(x)
    return torch.einsum("ij,...jhw->...ihw", m, x.to(torch.float64))


def channel_values(v, name: str, *, nonzero: bool = False, error=ValueError) -> list[float]:
    """``v`` (a number, or one or three numbers as a list or tensor) as three finite floats;
    raises ``error`` naming ``name`` otherwise (``nonzero``: zero refused too)."""
    try:
        t = torch.as_tensor(v, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise error(f"{name} takes one or three numbers (one per channel), got {v!r}") from None
    if t.numel() not in (1, 3):
        raise error(f"{name} takes one or three values (one per channel), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise error(f"{name} must be finite, got {t.tolist()}")
    if nonzero and bool((t == 0).any()):
        raise error(f"{name} must not be zero (it divides the image), got {t.tolist()}")
    return [float(a) for a in t.expand(3).tolist()]


def _per_channel(v, x: torch.Tensor, name: str, nonzero: bool = False) -> torch.Tensor:
    return torch.tensor(channel_values(v, name, nonzero=nonzero), dtype=torch.float64).reshape(3, 1, 1)


def check_q_scale(q_scale, error=ValueError) -> float:
    """The QuantStub's scale as a float; raises ``error`` unless it is one finite positive number."""
    try:
        t = torch.as_tensor(q_scale, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise error(f"q_scale is the QuantStub's (per-tensor) scale, one positive number; got {q_scale!r}") from None
    if t.numel() != 1:
        raise error("q_scale is the QuantStub's (per-tensor) scale: one value")
    if not math.isfinite(float(t)) or float(t) <= 0:
        raise error(f"q_scale must be finite and positive (the QuantStub's scale), got {float(t)}")
    return float(t)


def rgb2centered_yuv(x: torch.Tensor, swing: str = "full") -> torch.Tensor:
    """RGB float image in [0, 255] -> centered YUV444 (float32 holding integers in [-128, 127]).

    ``round(M @ rgb + offset) - 128`` saturated to [-128, 127]; rounding half to even.
    """
    m, off, _ = yuv_matrices(swing)
    yuv = _mix(x, m) + off.reshape(3, 1, 1)
    return (torch.round(yuv) - 128).clamp_(-128, 127).to(torch.float32)


def bgr2centered_yuv(x: torch.Tensor, swing: str = "full") -> torch.Tensor:
    """As ``rgb2centered_yuv`` for a BGR image."""
    _check_image(x)
    return rgb2centered_yuv(x.flip(-3), swing)


def centered_yuv2rgb(x: torch.Tensor, swing: str = "full", mean=128.0, std=1.0, q_scale=1.0,
                     qmin: int = -128, qmax: int = 127, bgr: bool = False, zero_point: int = 0) -> torch.Tensor:
    """Centered YUV444 -> normalised, quantized RGB codes (deployment only).

    1. ``rgb = clamp(round(M_inv @ (yuv + 128 - offset)), 0, 255)`` (the 8-bit RGB image);
    2. ``(rgb - mean) / std`` with the training normalisation (one or three values, list or tensor);
    3. ``clamp(round(. / q_scale) + zero_point, qmin, qmax)`` with the input QuantStub's scale
       ``q_scale`` and zero point ``zero_point`` (an affine int8 stub's, 0 for a symmetric one).

    Returns the integer codes as a float32 tensor (the float simulation of the integer op;
    a ``quantize`` with scale 1 passes them through unchanged, which is why the QuantStub's
    scale becomes 1 after the op is inserted). Roundings are half to even.
    """
    _, off, minv = yuv_matrices(swing)
    if not isinstance(bgr, bool):
        raise TypeError(f"centered_yuv2rgb: bgr must be True or False, got {bgr!r}")
    if bgr:
        minv = minv.flip(0)
    mean_t, std_t = _per_channel(mean, x, "mean"), _per_channel(std, x, "std", nonzero=True)
    q_scale = torch.tensor(check_q_scale(q_scale), dtype=torch.float64)
    if not all(isinstance(q, Integral) and not isinstance(q, bool) for q in (qmin, qmax)) or qmin > qmax:
        raise ValueError(f"qmin and qmax must be integers with qmin <= qmax, got qmin={qmin!r}, qmax={qmax!r}")
    if not isinstance(zero_point, Integral) or isinstance(zero_point, bool) or not qmin <= zero_point <= qmax:
        raise ValueError(f"zero_point must be an integer in [qmin, qmax], got {zero_point!r}")
    _check_image(x)
    rgb = torch.round(_mix(x + 128.0, minv) - (minv @ off).reshape(3, 1, 1)).clamp_(0, 255)
    norm = (rgb - mean_t) / std_t
    return (torch.round(norm / q_scale) + int(zero_point)).clamp_(qmin, qmax).to(torch.float32)


def centered_yuv2bgr(x: torch.Tensor, swing: str = "full", mean=128.0, std=1.0, q_scale=1.0,
                     qmin: int = -128, qmax: int = 127, zero_point: int = 0) -> torch.Tensor:
    """As ``centered_yuv2rgb`` for a model trained on BGR (``mean``/``std`` in BGR order)."""
    return centered_yuv2rgb(x, swing, mean, std, q_scale, qmin, qmax, bgr=True, zero_point=zero_point)
