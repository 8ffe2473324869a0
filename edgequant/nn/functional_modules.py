"""FloatFunctional: tensor arithmetic as module methods, for users who prefer them.

Takes tensors (and Python scalars where the method allows); returns what the same torch
expression returns. ``prepare`` treats ``ff.add(x, y)`` exactly like ``x + y``: each call
becomes a quantizable op named after the FloatFunctional's module path, so users who write
their arithmetic this way (seed 000's ``self.sub.sub(img, 1)``) get the same integer model.
"""
from __future__ import annotations

import torch
from torch import nn


class FloatFunctional(nn.Module):
    """``add``, ``sub``, ``mul``, ``div``, ``add_scalar``, ``mul_scalar``, ``cat``, ``stack``,
    ``matmul``, ``maximum``, ``minimum``, ``sum``, ``mean``, ``exp``, ``clamp``."""

    def forward(self, x):
        raise RuntimeError("FloatFunctional is not callable; use its methods, e.g. ff.add(x, y)")

    def add(self, x, y):
        return torch.add(x, y)

    def sub(self, x, y):
        return torch.sub(x, y)

    def mul(self, x, y):
        return torch.mul(x, y)

    def div(self, x, y):
        return torch.div(x, y)

    def add_scalar(self, x, y: float):
        return torch.add(x, y)

    def mul_scalar(self, x, y: float):
        return torch.mul(x, y)

    def cat(self, xs, dim: int = 0):
        return torch.cat(list(xs), dim=dim)

    def stack(self, xs, dim: int = 0):
        return torch.stack(list(xs), dim=dim)

    def matmul(self, x, y):
        return torch.matmul(x, y)

    def maximum(self, x, y):
        return torch.maximum(x, y)

    def minimum(self, x, y):
        return torch.minimum(x, y)

    def sum(self, x, dim=None, keepdim: bool = False):
        return torch.sum(x) if dim is None else torch.sum(x, dim=dim, keepdim=keepdim)

    def mean(self, x, dim=None, keepdim: bool = False):
        return torch.mean(x) if dim is None else torch.mean(x, dim=dim, keepdim=keepdim)

    def exp(self, x):
        return torch.exp(x)

    def clamp(self, x, min=None, max=None):
        return torch.clamp(x, min, max)
