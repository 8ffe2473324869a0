"""QuantStub and DeQuantStub: where the quantized part of a model begins and ends.

Takes float tensors and returns them unchanged in float mode. ``prepare`` replaces each call
with a quantization point (``QuantStub``: the tensor is quantized, with the stub's fixed
``scale`` when one is given) or a dequantization point (``DeQuantStub``: the tensor leaves the
integer domain). torch.ao's ``QuantStub``/``DeQuantStub`` are accepted the same way.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class QuantStub(nn.Module):
    """Marks a model input (or any float tensor) to be quantized.

    Args:
        scale: a fixed scale (the tensor is quantized with it, no observer); ``None`` lets the
            qconfig's observer choose it during calibration or QAT. A stub with ``scale=None``
            inside a model is also a cut point for segmented deployment.
        zero_point: the fixed zero point that goes with ``scale``.
    """

    def __init__(self, scale: float | None = None, zero_point: int = 0):
        super().__init__()
        if scale is not None:
            try:
                value = float(scale)
            except (TypeError, ValueError, RuntimeError):
                value = None
            if isinstance(scale, (bool, str)) or value is None or not math.isfinite(value) or value <= 0:
                raise ValueError(f"QuantStub: scale must be a finite number > 0 (the fixed step of the quantized "
                                 f"input) or None (calibrated), got {scale!r}")
        if isinstance(zero_point, bool) or not isinstance(zero_point, (int, torch.Tensor)) \
                or (isinstance(zero_point, torch.Tensor) and (zero_point.numel() != 1 or zero_point.is_floating_point())):
            raise TypeError(f"QuantStub: zero_point must be an integer, got {zero_point!r}")
        self.scale = scale
        self.zero_point = zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "" if self.scale is None else f"scale={self.scale}"


class DeQuantStub(nn.Module):
    """Marks a tensor leaving the quantized part of the model (float again)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def quant_point(x: torch.Tensor) -> torch.Tensor:
    """Graph marker left by ``prepare`` where a QuantStub was: identity on values."""
    return x


def dequant_point(x: torch.Tensor) -> torch.Tensor:
    """Graph marker left by ``prepare`` where a DeQuantStub was: identity on values."""
    return x
