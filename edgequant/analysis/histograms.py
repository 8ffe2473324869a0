"""Activation histograms: what values reach each fake-quantized tensor, and where it clips.

Takes a prepared, calibrated model and an iterable of input batches (tensors or tuples);
runs them (the model's FakeQuantize state is left as it is) and returns one record per
activation FakeQuantize, in graph order:

- ``name``, ``dtype``, ``observer`` (class name), ``scale``;
- ``clip``: ``(lo, hi)``, the real range the chosen qparams represent,
  ``scale * (qmin - zero_point)`` to ``scale * (qmax - zero_point)``;
- ``min``, ``max``: the exact extremes of the data, and ``clipped_share``: the exact share of
  elements outside ``clip`` (counted over every element of every batch);
- ``counts``, ``edges``: a histogram (``bins`` bins spanning the data and the clip range) of a
  uniform random subsample of at most ``max_values`` elements per tensor and batch, so memory
  stays bounded on any data size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..argcheck import expect_batches, expect_int
from ..fake_quant import FakeQuantize, expect_fake_quant


class _Recorder:
    def __init__(self, max_values: int, generator: torch.Generator):
        self.max_values, self.g = max_values, generator
        self.samples: list[np.ndarray] = []
        self.lo, self.hi = float("inf"), float("-inf")
        self.total = 0
        self.clip = None
        self.outside = 0

    def __call__(self, module: FakeQuantize, args) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not x.numel():
            return
        x = x.detach().flatten().float()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.total += x.numel()
        if bool(module.calibrated):
            lo, hi = clip_range(module)
            self.clip = (lo, hi)
            self.outside += int(((x < lo) | (x > hi)).sum())
        if x.numel() > self.max_values:
            x = x[torch.randint(0, x.numel(), (self.max_values,), generator=self.g)]
        self.samples.append(x.numpy())


def clip_range(fq: FakeQuantize) -> tuple[float, float]:
    """The real interval a per-tensor FakeQuantize represents with its current qparams."""
    scale, zp = fq.qparams()
    s, z = float(scale.flatten()[0]), int(zp.flatten()[0])
    return s * (fq.dtype.qmin - z), s * (fq.dtype.qmax - z)


def activation_fake_quants(model: nn.Module) -> list[tuple[str, FakeQuantize]]:
    """``(tensor name, FakeQuantize)`` of every per-tensor activation FakeQuantize of ``model``."""
    return [(m.name, m) for m in model.modules()
            if isinstance(m, FakeQuantize) and not m.is_weight and m.ch_axis is None]


def activation_histograms(model: nn.Module, batches, bins: int = 128, max_values: int = 50_000,
                          seed: int = 0) -> list[dict]:
    """Histogram of every activation tensor of a prepared model (see the module docstring)."""
    expect_fake_quant(model, "activation_histograms", "model")
    expect_batches(batches, "activation_histograms", "batches")
    expect_int(bins, "activation_histograms", "bins", lo=1)
    expect_int(max_values, "activation_histograms", "max_values", lo=1)
    expect_int(seed, "activation_histograms", "seed", lo=0)
    g = torch.Generator().manual_seed(seed)
    recs = {name: _Recorder(max_values, g) for name, _ in activation_fake_quants(model)}
    hooks = [fq.register_forward_pre_hook(recs[name]) for name, fq in activation_fake_quants(model)]
    try:
        with torch.no_grad():
            for b in batches:
                model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for name, fq in activation_fake_quants(model):
        r = recs[name]
        if not r.samples:
            continue
        data = np.concatenate(r.samples)
        lo, hi = r.lo, r.hi
        if r.clip is not None:
            lo, hi = min(lo, r.clip[0]), max(hi, r.clip[1])
        if hi <= lo:
            hi = lo + 1.0
        counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
        out.append({"name": name, "dtype": str(fq.dtype), "observer": type(fq.observer).__name__,
                    "scale": float(fq.qparams()[0].flatten()[0]) if r.clip is not None else None,
                    "clip": r.clip, "min": r.lo, "max": r.hi,
                    "clipped_share": (r.outside / r.total) if r.clip is not None else None,
                    "counts": counts.tolist(), "edges": edges.tolist()})
    return out
