"""Mix observer: per tensor, the best of several calibration strategies by the op's own output error.

Takes tensors batch by batch into one bounded histogram (as the percentile, MSE and KL
observers do: one min/max pass and one exact binning pass per batch, 2048 float64 counts);
``calculate_qparams()`` asks every member strategy for its range on that histogram, measures
each range by the squared error it gives the op's output, ``sum_j n_j (Q(c_j) - c_j)^2`` over
the histogram's bins (``clip_search.BinErrors``: the quantization grid of the range, each bin's
values at its center), and returns ``scale_from_range`` of the range with the least error
(the first listed wins a tie). ``chosen`` names that member after the call, ``errors()`` gives
every member's error. The earlier ops are taken as float (the observer sees float values);
``edgequant.ptq.auto_calibrate`` is the search that measures the model's final output instead.

Members are strategy names: ``"minmax"``, ``"mse"``, ``"kl"``, ``"percentile"`` (99.99 %) or
``"percentile<P>"`` (e.g. ``"percentile99.9"``). ``strategy_observer(name, histogram, ...)``
builds the observer of one strategy holding a histogram's statistics; auto-calibration stores
its choices that way. In a QConfig:

    get_qconfig(observer=MixObserver, observer_kwargs={"members": ("minmax", "percentile", "mse")})

Statistics, merging (also across processes) and the state dict are the histogram's, exactly
as for the other histogram observers.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..argcheck import describe
from ..dtype import QuantDType, get_dtype
from .base import Observer
from .clip_search import BinErrors
from .histogram import Histogram
from .histogram_observers import KLObserver, MSEObserver, PercentileObserver, _HistogramObserver
from .minmax import MinMaxObserver

DEFAULT_MEMBERS = ("minmax", "percentile", "mse", "kl")
_PERCENTILE = re.compile(r"^percentile(\d+(?:\.\d*)?)?$")


def check_strategy(name: str) -> str:
    """``name`` if it names a strategy (see the module docstring), else ``ValueError``."""
    if name in ("minmax", "mse", "kl") or (isinstance(name, str) and _PERCENTILE.match(name)):
        return name
    raise ValueError(f"unknown calibration strategy {name!r}; use 'minmax', 'mse', 'kl', 'percentile' "
                     "or 'percentile<P>' such as 'percentile99.9'")


def strategy_observer(name: str, hist: Histogram, dtype: QuantDType | str, symmetric: bool = True) -> Observer:
    """An observer of strategy ``name`` holding ``hist``'s statistics (min-max: its exact range)."""
    check_strategy(name)
    dtype = get_dtype(dtype)
    if name == "minmax":
        obs = MinMaxObserver(dtype=dtype, symmetric=symmetric)
        obs.load_statistics({"min_val": hist.min_val, "max_val": hist.max_val})
        return obs
    if name.startswith("percentile"):
        p = _PERCENTILE.match(name).group(1)
        obs = PercentileObserver(percentile=float(p) if p else 99.99, bins=hist.bins, dtype=dtype, symmetric=symmetric)
    else:
        obs = (MSEObserver if name == "mse" else KLObserver)(bins=hist.bins, dtype=dtype, symmetric=symmetric)
    obs.load_statistics({k: getattr(hist, k) for k in Histogram.REDUCTIONS})
    return obs


class MixObserver(_HistogramObserver):
    """The member strategy whose range quantizes this tensor with the least squared error."""

    def __init__(self, members: Sequence[str] = DEFAULT_MEMBERS, bins: int = 2048, **config):
        super().__init__(bins, **config)
        if isinstance(members, str) or not isinstance(members, (list, tuple)):
            raise TypeError(f"{self.name}: members must be a list or tuple of strategy names such as "
                            f"('minmax', 'mse'), got {describe(members)}")
        members = tuple(check_strategy(m) for m in members)
        if not members:
            raise ValueError(f"{self.name}: give at least one member strategy")
        self.members = members
        self.chosen: str | None = None

    def config(self) -> dict:
        return dict(super().config(), members=self.members)

    def errors(self) -> dict[str, tuple[tuple[float, float], float]]:
        """``{member: ((lo, hi), squared error over the histogram)}``."""
        ranges = {m: strategy_observer(m, self.histogram, self.dtype, self.symmetric).clip_range()
                  for m in self.members}
        lo = np.array([float(r[0]) for r in ranges.values()])
        hi = np.array([float(r[1]) for r in ranges.values()])
        h = self.histogram
        err = BinErrors(h.centers().cpu().numpy(), h.counts.cpu().numpy(), self.dtype, self.symmetric)(lo, hi)
        return {m: ((float(a), float(b)), float(e)) for m, a, b, e in zip(ranges, lo, hi, err)}

    def _search(self):
        errors = self.errors()
        self.chosen = min(errors, key=lambda m: errors[m][1])  # min keeps the first of equal errors
        return errors[self.chosen][0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}"


__all__ = ["MixObserver", "strategy_observer", "check_strategy", "DEFAULT_MEMBERS"]
