"""Observers that keep only a range: min-max, moving-average min-max, fixed scale.

Each takes tensors batch by batch (per tensor, or per channel along ``ch_axis``) and keeps one or
two numbers per channel, so memory is ``O(C)`` whatever the number of batches. They return the
range as qparams through ``scale_from_range``; ``FixedScaleObserver`` returns the scale it was given.
"""
from __future__ import annotations

import torch

from ..argcheck import expect_int, expect_real
from .base import Observer


def _unbounded(ch_axis, sign: float) -> torch.Tensor:
    """``+inf`` / ``-inf`` per tensor; an empty vector per channel (the channel count comes with data)."""
    return torch.tensor(sign * float("inf")) if ch_axis is None else torch.empty(0)


class MinMaxObserver(Observer):
    """Records the running minimum and maximum; the range is exactly ``[min, max]``.

    Merge: elementwise min of ``min_val`` and max of ``max_val`` (exact).
    """

    REDUCTIONS = {"min_val": "min", "max_val": "max"}

    def __init__(self, **config):
        super().__init__(**config)
        self.register_buffer("min_val", _unbounded(self.ch_axis, 1.0))
        self.register_buffer("max_val", _unbounded(self.ch_axis, -1.0))

    def _observe(self, x: torch.Tensor) -> None:
        got = self._batch_range(x)
        if got is None:
            return
        _, lo, hi = got
        lo, hi = lo.to(self.min_val), hi.to(self.max_val)
        if self.min_val.numel() == 0:  # first batch of a per-channel observer: one entry per channel
            self.min_val, self.max_val = torch.full_like(lo, float("inf")), torch.full_like(hi, -float("inf"))
        self._update(lo, hi)

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min_val = torch.minimum(self.min_val, lo)
        self.max_val = torch.maximum(self.max_val, hi)

    def has_data(self) -> bool:
        return self.min_val.numel() > 0 and bool((self.min_val <= self.max_val).all())

    def _clip_range(self):
        return self.min_val.clone(), self.max_val.clone()

    def reset(self) -> None:
        self.min_val = _unbounded(self.ch_axis, 1.0).to(self.min_val.device)
        self.max_val = _unbounded(self.ch_axis, -1.0).to(self.max_val.device)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max (for QAT).

    The first batch sets the range; every later one moves it by
    ``averaging_constant * (batch_min - min_val)`` (and likewise for the max).
    Merge: the mean of the two ranges (an unseen side yields to the other). An average has no
    "both streams" to equal; the mean is what DDP needs: ranks that start from the same
    synchronised range and each see a batch end, after an all-reduce mean (``ReduceOp.AVG``),
    where one update with the mean of their batch minima and maxima would have taken them.
    """

    REDUCTIONS = {"min_val": "mean", "max_val": "mean"}

    def __init__(self, averaging_constant: float = 0.01, **config):
        super().__init__(**config)
        expect_real(averaging_constant, type(self).__name__, "averaging_constant")
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = float(averaging_constant)

    def config(self) -> dict:
        return dict(super().config(), averaging_constant=self.averaging_constant)

    def _average(self, old: torch.Tensor, new: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        moved = torch.where(torch.isinf(old), new, old + self.averaging_constant * (new - old))
        return torch.where(seen, moved, old)

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        seen = lo <= hi  # False for a channel whose values were all non-finite (and ignored)
        self.min_val = self._average(self.min_val, lo, seen)
        self.max_val = self._average(self.max_val, hi, seen)


class FixedScaleObserver(Observer):
    """Returns the ``scale`` and ``zero_point`` it was given (``QuantStub(scale=...)``).

    It records nothing but still refuses NaN/Inf, so bad data are caught on this edge too.
    ``scale`` may be a vector for per-channel use (with ``ch_axis``). ``clip_range()`` is the
    range the fixed qparams represent. Merge: only observers with the same qparams merge (no-op).
    """

    def __init__(self, scale, zero_point=0, **config):
        super().__init__(**config)
        if not isinstance(scale, (list, tuple)):  # a list of per-channel scales is checked below
            expect_real(scale, self.name, "scale", positive=True, tensor=True)
        if not isinstance(zero_point, (torch.Tensor, list, tuple)):
            expect_int(zero_point, self.name, "zero_point")
        s = torch.as_tensor(scale, dtype=torch.float32).clone()
        if not bool(torch.isfinite(s).all() & (s > 0).all()):
            raise ValueError(f"{self.name}: scale must be finite and positive, got {scale}")
        if s.dim() > 1 or (s.dim() == 1 and self.ch_axis is None):
            raise ValueError(f"{self.name}: a vector of scales needs ch_axis (per-channel); got shape {tuple(s.shape)}")
        z = torch.as_tensor(zero_point, dtype=torch.int64).expand_as(s).clone()
        if bool(((z < self.dtype.qmin) | (z > self.dtype.qmax)).any()):
            raise ValueError(f"{self.name}: zero_point {zero_point} is outside [{self.dtype.qmin}, {self.dtype.qmax}]")
        self.register_buffer("scale", s)
        self.register_buffer("zero_point", z)

    def config(self) -> dict:
        return dict(super().config(), scale=self.scale.tolist(), zero_point=self.zero_point.tolist())

    def _observe(self, x: torch.Tensor) -> None:
        self._all_finite(x, *torch.aminmax(x))

    def has_data(self) -> bool:
        return True  # the qparams are given, not measured

    def _clip_range(self):
        z = self.zero_point.to(torch.float32)
        return (self.dtype.qmin - z) * self.scale, (self.dtype.qmax - z) * self.scale

    def calculate_qparams(self):
        return self.scale.clone(), self.zero_point.clone()

    def reset(self) -> None:
        pass
