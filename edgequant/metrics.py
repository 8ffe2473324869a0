"""How far one tensor is from another: ``cosine`` similarity and ``sqnr`` in dB.

Takes two tensors with as many elements (a reference and a test); returns one float. Below the
stages that use them (``analysis`` reports, ``ptq`` sensitivity), so either can import them.
"""
from __future__ import annotations

import math

import torch

from .argcheck import expect_tensor


def _tensors(fn: str, **tensors) -> None:
    """Two tensors of one size (broadcasting one against the other is not a comparison)."""
    (na, a), (nb, b) = tensors.items()
    expect_tensor(a, fn, na)
    expect_tensor(b, fn, nb)
    if a.numel() != b.numel():
        raise ValueError(f"{fn}: {na} and {nb} must have as many elements, got shapes {tuple(a.shape)} and {tuple(b.shape)}")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    _tensors("cosine", a=a, b=b)
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float((a @ b) / (na * nb))


def sqnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    """``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB (inf when equal)."""
    _tensors("sqnr", ref=ref, test=test)
    ref, test = ref.double(), test.double()
    noise = (ref - test).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(ref.pow(2).sum() / noise))
