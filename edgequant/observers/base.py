"""The common shape of every observer.

An observer is an ``nn.Module`` placed on a tensor edge. ``forward(x)`` takes a tensor, records
statistics about its finite values in registered buffers (bounded memory, never the tensor) and
returns ``x`` itself. ``calculate_qparams()`` returns ``(scale, zero_point)``: a float32 and an
int64 tensor of shape ``[]`` (per tensor) or ``[C]`` (per channel), always made by
``qmath.scale_from_range`` from the clipping range the observer chose (``clip_range()``).
``statistics()`` / ``load_statistics()`` expose the state as a dict of tensors, and
``REDUCTIONS`` names the reduction ("min", "max", "sum", "mean") that combines each entry
across observers; ``merge_(other)`` applies them to two observers, so that merging min/max
statistics equals observing both streams.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..argcheck import expect_flag, expect_int
from ..dtype import QuantDType, get_dtype, qint8
from ..qmath import scale_from_range


def _mean_of_seen(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean of two ranges, where an infinite entry (never seen) yields to the other."""
    return torch.where(torch.isinf(a), b, torch.where(torch.isinf(b), a, (a + b) / 2))


_REDUCE = {"min": torch.minimum, "max": torch.maximum, "mean": _mean_of_seen}  # histograms merge on a grid


def reduce_statistic(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """Combine one statistic of two observers; an empty tensor (no channels seen yet) is neutral."""
    if a.numel() == 0:
        return b.clone()
    if b.numel() == 0:
        return a.clone()
    return _REDUCE[how](a, b)


# Additive attention masks (docs/observers.md, "Mask values"): a value at or below MASK_LIMIT
# (``torch.finfo(float32).min`` exactly, as HF's eager masks write it, or ``-inf``, as
# ``nn.MultiheadAttention``'s padding masks do) means "minus infinity". Observers leave such values out
# of their statistics and remember that they saw some; a range that had them reaches further down,
# so that the masked positions saturate to the code ``qmin`` and a softmax after them gives weight
# 0, as in float: a pure mask (its finite values all equal, e.g. 0) by MASK_FILL (the ``-10000``
# that HF BERT's masks used), a masked sum (``scores + mask``) by MASK_MARGIN (``exp(-32)`` is
# below every softmax table's resolution).
MASK_LIMIT = float(torch.finfo(torch.float32).min)
MASK_FILL = 10000.0
MASK_MARGIN = 32.0


def as_observable(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached as float32 or float64 (other dtypes are converted to float32)."""
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


class Observer(nn.Module):
    """Base class: configuration, the non-finite check, qparams, merging.

    Subclasses implement ``_observe(x)`` (``x`` detached, float32/float64, non-empty),
    ``_clip_range()`` (the ``(min, max)`` tensors handed to ``scale_from_range``),
    ``has_data()`` and ``reset()``, and declare their statistics in ``REDUCTIONS``.
    """

    REDUCTIONS: dict[str, str] = {}

    def __init__(self, dtype: QuantDType | str = qint8, symmetric: bool = True, ch_axis: int | None = None,
                 ignore_nonfinite: bool = False):
        super().__init__()
        fn = type(self).__name__
        expect_flag(symmetric, fn, "symmetric")
        expect_flag(ignore_nonfinite, fn, "ignore_nonfinite")
        expect_int(ch_axis, fn, "ch_axis", none=True)
        self.dtype = get_dtype(dtype)
        self.symmetric = bool(symmetric)
        self.ch_axis = ch_axis
        self.ignore_nonfinite = bool(ignore_nonfinite)
        self.name = type(self).__name__  # `prepare` replaces it with the module path
        self.mask_seen = False  # saw mask values (MASK_LIMIT); a plain flag, merged by merge_

    # ---- recording ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel():
            self._observe(as_observable(x))
        return x

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _all_finite(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """True if ``x`` is finite (judged from its min/max, which NaN and Inf always reach).

        Otherwise raise ``ValueError``, or return False when ``ignore_nonfinite`` is set.
        """
        if lo.numel() == 1:  # per tensor: two Python floats, no tensor ops
            if math.isfinite(lo.item()) and math.isfinite(hi.item()):
                return True
        elif bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            return True
        if self.ignore_nonfinite:
            return False
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{self.name}: the observed tensor has {n_nan} NaN and {n_inf} Inf values (of {x.numel()}). "
            "Check the calibration data and the layers that produce this tensor, or construct the "
            "observer with ignore_nonfinite=True to leave non-finite values out of the statistics."
        )

    def _batch_range(self, x: torch.Tensor):
        """``(x_finite, min, max)`` of this batch, per tensor or per channel; None if nothing is finite.

        Per channel, ``x_finite`` is ``x`` itself and a channel without finite values has
        ``min = +inf``, ``max = -inf`` (neutral for min/max updates).
        """
        if self.ch_axis is None:
            lo, hi = torch.aminmax(x)
            if lo.item() <= MASK_LIMIT:  # mask values: left out (NaN and +inf are still refused below)
                self.mask_seen = True
                x = x[~(x <= MASK_LIMIT)]
                if not x.numel():
                    return None
                lo, hi = torch.aminmax(x)
            if self._all_finite(x, lo, hi):
                return x, lo, hi
            x = x[torch.isfinite(x)]
            return (x, *torch.aminmax(x)) if x.numel() else None
        flat = x.movedim(self.ch_axis, 0).reshape(x.shape[self.ch_axis], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        masked = None
        if bool((lo <= MASK_LIMIT).any()):
            self.mask_seen = True
            masked = flat <= MASK_LIMIT
            rest = flat[~masked]
            if rest.numel():
                self._all_finite(rest, *torch.aminmax(rest))
        elif self._all_finite(x, lo, hi):
            return x, lo, hi
        finite = torch.isfinite(flat) if masked is None else ~masked & torch.isfinite(flat)
        inf = torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
        lo = torch.where(finite, flat, inf).amin(dim=1)
        hi = torch.where(finite, flat, -inf).amax(dim=1)
        return x, lo, hi

    # ---- results ------------------------------------------------------------------------------
    def has_data(self) -> bool:
        raise NotImplementedError

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(min, max)`` this observer chose, float32 tensors; raises if it saw no data."""
        if not self.has_data() and self.mask_seen and self.ch_axis is None:
            # nothing but mask values (GPT-Neo's ``where(causal, scores, finfo.min)`` fill): a pure
            # mask whose unmasked value would be 0, so the fill saturates to qmin
            return torch.tensor(-MASK_FILL), torch.tensor(0.0)
        if not self.has_data():
            raise RuntimeError(
                f"{self.name} has not observed any (finite) data, so it has no range. Run calibration "
                "batches through the model before asking for qparams, or load a state_dict that has statistics."
            )
        lo, hi = self._clip_range()
        if self.mask_seen:  # (MASK_LIMIT) the masked positions saturate below the finite range
            lo = torch.where(hi > lo, lo - MASK_MARGIN, lo - MASK_FILL).to(lo.dtype)
        return lo, hi

    def _clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale float32, zero_point int64)``, shape ``[]`` or ``[C]``, by ``scale_from_range``."""
        lo, hi = self.clip_range()
        return scale_from_range(lo, hi, self.dtype, self.symmetric)

    # ---- state and merging ---------------------------------------------------------------------
    def config(self) -> dict:
        """What two observers must share to be merged."""
        return dict(type=type(self).__name__, dtype=self.dtype, symmetric=self.symmetric, ch_axis=self.ch_axis)

    def statistics(self) -> dict[str, torch.Tensor]:
        """A copy of the state; combine entries across observers with ``REDUCTIONS[name]``."""
        return {k: getattr(self, k).clone() for k in self.REDUCTIONS}

    def load_statistics(self, stats: dict[str, torch.Tensor]) -> None:
        """Set the state from ``statistics()``-shaped tensors (e.g. after an all-reduce)."""
        for k in self.REDUCTIONS:
            setattr(self, k, stats[k].to(getattr(self, k)).clone())

    def merge_(self, other: Observer) -> Observer:
        """Combine ``other``'s statistics into this observer, in place; returns ``self``."""
        if other.config() != self.config():
            raise ValueError(f"{self.name}: cannot merge observers with different settings: "
                             f"{self.config()} vs {other.config()}")
        self._merge(other)
        self.mask_seen = self.mask_seen or getattr(other, "mask_seen", False)
        return self

    def _merge(self, other: Observer) -> None:
        mine, theirs = self.statistics(), other.statistics()
        self.load_statistics({k: reduce_statistic(mine[k], theirs[k], how) for k, how in self.REDUCTIONS.items()})

    def reset(self) -> None:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel statistics get their channel count from the first batch; take it from the state.
        if self.ch_axis is not None:
            for name, buf in self._buffers.items():
                saved = state_dict.get(prefix + name)
                if buf is not None and saved is not None and saved.shape != buf.shape:
                    self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        axis = "" if self.ch_axis is None else f", ch_axis={self.ch_axis}"
        return f"name={self.name!r}, dtype={self.dtype}, symmetric={self.symmetric}{axis}"
