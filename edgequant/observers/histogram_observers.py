"""Observers that keep a histogram and search it for a clipping range: percentile, MSE, KL.

Each takes tensors batch by batch (per tensor only) and costs one min/max pass and one exact
binning pass (``Histogram.add_``) per batch; memory is one bounded ``Histogram`` (2048 float64 counts by
default) whatever the number of batches. ``calculate_qparams()`` searches the histogram only
(``clip_search``) and returns ``scale_from_range`` of the range found.
"""
from __future__ import annotations

import torch

from ..argcheck import expect_int, expect_real
from .base import Observer
from .clip_search import kl_clip, mse_clip, percentile_clip
from .histogram import Histogram


class _HistogramObserver(Observer):
    """The shared part: recording into ``self.histogram``, state, merging. Subclasses define ``_search``.

    Statistics and their reductions are the histogram's: ``min_val`` (min), ``max_val`` (max),
    ``log2_width`` (max) and ``counts`` (sum), where the counts may only be summed once every
    party has called ``histogram.align_(min_val, max_val, log2_width)`` with the reduced values,
    so that all hold the same grid. ``merge_`` does exactly that for two observers.
    """

    REDUCTIONS = Histogram.REDUCTIONS

    def __init__(self, bins: int = 2048, **config):
        super().__init__(**config)
        if self.ch_axis is not None:
            raise ValueError(f"{type(self).__name__} is per-tensor; ch_axis must be None, got {self.ch_axis}")
        expect_int(bins, type(self).__name__, "bins")
        self.histogram = Histogram(bins)

    def config(self) -> dict:
        return dict(super().config(), bins=self.histogram.bins)

    def _observe(self, x: torch.Tensor) -> None:
        got = self._batch_range(x)
        if got is not None:
            x, lo, hi = got
            self.histogram.add_(x, float(lo), float(hi))

    def has_data(self) -> bool:
        return not self.histogram.is_empty()

    def _search(self) -> tuple[float, float]:
        raise NotImplementedError

    def _clip_range(self):
        # The search is the costly part, and a histogram that no longer changes gives the same range
        # at every call (a table op's simulation asks at every forward in VALIDATION): the last range
        # is kept with the statistics and settings it came from, and used again while both are equal.
        key = (repr(self.config()), self.statistics())
        hit = self.__dict__.get("_range_cache")
        if hit is not None and hit[0][0] == key[0] and all(torch.equal(a, key[1][k]) for k, a in hit[0][1].items()):
            lo, hi = hit[1]
        else:
            lo, hi = self._search()
            self.__dict__["_range_cache"] = (key, (lo, hi))
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)

    def statistics(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self.histogram, k).clone() for k in self.REDUCTIONS}

    def load_statistics(self, stats: dict[str, torch.Tensor]) -> None:
        for k in self.REDUCTIONS:
            getattr(self.histogram, k).copy_(stats[k])

    def _merge(self, other: Observer) -> None:
        self.histogram.merge_(other.histogram)

    def reset(self) -> None:
        self.histogram.reset()


class PercentileObserver(_HistogramObserver):
    """Keeps ``percentile`` % of the values: cuts ``100 - percentile`` % at each end by seed 003's rule."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048, **config):
        super().__init__(bins, **config)
        expect_real(percentile, self.name, "percentile")
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"{self.name}: percentile must be in [50, 100], got {percentile}")
        self.percentile = float(percentile)

    def config(self) -> dict:
        return dict(super().config(), percentile=self.percentile)

    def _search(self):
        return percentile_clip(self.histogram, self.percentile)


class MSEObserver(_HistogramObserver):
    """The range whose quantization grid gives the least squared error over the histogram."""

    def _search(self):
        return mse_clip(self.histogram, self.dtype, self.symmetric)


class KLObserver(_HistogramObserver):
    """Entropy calibration (TensorRT style) on the histogram of ``|x|``; MSE for int16 and wider."""

    def _search(self):
        return kl_clip(self.histogram, self.dtype, self.symmetric)
