"""SegmentLUT: any elementwise function, computed by the integer model as a lookup table.

Takes a float tensor and returns ``simulated_func`` of it. In float mode and in calibration it
evaluates the exact function; ``prepare`` quantizes its input and output like any other op and
replaces the call by a table op (``edgequant.lut.sim``): in VALIDATION and QAT the simulation
runs the integer table (int8 input: a 256-entry table; int16: 8 segments of 64 interpolated
intervals, docs/arithmetic.md section 10), ``export`` writes the table as constants and
``convert`` lowers it to an integer ``lut`` node. ``simulated_func`` is only called on inputs
in the table's range (and, for YSYM/CSYM, only on ``x >= 0``).

The function is checked where its range is known (``edgequant.lut.validate``): at construction
when ``input_range`` is given, else when the table is built (the first VALIDATION forward,
export, convert). It must be elementwise and finite on the range the table covers (an 8-bit
input's direct table may be infinite there: it saturates), and ``inverse_func`` decreasing;
otherwise ``ValueError`` names the SegmentLUT, the sub-range and what to do.
"""
from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import Callable, Sequence

import torch
from torch import nn

from ..lut.validate import check_declared_range

_MODES = ("ASYM", "YSYM", "CSYM")
_STRATEGIES = ("evenly", "curvature")


def _finite(values) -> bool:
    """True if ``values`` is a sequence of finite numbers."""
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


class SegmentLUT(nn.Module):
    """Simulate ``simulated_func`` elementwise; a table on the integer target.

    Args:
        simulated_func: the elementwise function (tensor -> tensor of the same shape).
        is_centrosymmetric: deprecated spelling of ``symmetric_mode="CSYM"``.
        dividing_points: upper input bound of each segment, set by hand.
        input_range: the valid input range ``(low, high)``.
        auto_divide_strategy: ``"evenly"`` or ``"curvature"`` when dividing_points is None.
        inverse_func: inverse of a monotonically decreasing function, used to find the input
            range at integer inference.
        gradients: slopes of the linear extrapolation below and above the range.
        symmetric_mode: ``"ASYM"``, ``"YSYM"`` (f(x) = f(-x)) or ``"CSYM"`` (f(x) = -f(-x)).
    """

    def __init__(self, simulated_func: Callable, is_centrosymmetric: bool = False,
                 dividing_points: Sequence[Real] | None = None, input_range: Sequence[Real] | None = None,
                 auto_divide_strategy: str = "evenly", inverse_func: Callable | None = None,
                 gradients: Sequence[Real] | None = None, symmetric_mode: str = "ASYM"):
        super().__init__()
        if not callable(simulated_func):
            raise TypeError("SegmentLUT: simulated_func must be callable")
        if is_centrosymmetric:
            warnings.warn("SegmentLUT(is_centrosymmetric=True) is deprecated; use symmetric_mode='CSYM'",
                          DeprecationWarning, stacklevel=2)
            symmetric_mode = "CSYM"
        if symmetric_mode not in _MODES:
            raise ValueError(f"SegmentLUT: symmetric_mode must be one of {_MODES}, got {symmetric_mode!r}")
        if auto_divide_strategy not in _STRATEGIES:
            raise ValueError(f"SegmentLUT: auto_divide_strategy must be one of {_STRATEGIES}, got {auto_divide_strategy!r}")
        if dividing_points is not None and not _finite(dividing_points):
            raise ValueError(f"SegmentLUT: dividing_points must be finite numbers, got {dividing_points!r}")
        if dividing_points is not None:
            pts = [float(v) for v in dividing_points]
            if not pts:
                raise ValueError("SegmentLUT: dividing_points is empty; pass None to let auto_divide_strategy "
                                 "place the segments, or at least one upper segment bound")
            if any(b <= a for a, b in zip(pts, pts[1:])):
                raise ValueError(f"SegmentLUT: dividing_points must be strictly increasing (each segment's upper "
                                 f"bound above the previous one), got {list(dividing_points)!r}")
        if input_range is not None and (not _finite(input_range) or len(input_range) != 2
                                        or input_range[0] >= input_range[1]):
            raise ValueError(f"SegmentLUT: input_range must be (low, high), finite numbers with low < high, "
                             f"got {input_range!r}")
        if gradients is not None and (not _finite(gradients) or len(gradients) != 2):
            raise ValueError(f"SegmentLUT: gradients must be two finite numbers (slope below the range, slope above "
                             f"it), got {gradients!r}")
        if inverse_func is not None and not callable(inverse_func):
            raise TypeError(f"SegmentLUT: inverse_func must be callable or None, got {type(inverse_func).__name__}")
        self.simulated_func = simulated_func
        self.dividing_points = None if dividing_points is None else [float(p) for p in dividing_points]
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.auto_divide_strategy = auto_divide_strategy
        self.inverse_func = inverse_func
        self.gradients = None if gradients is None else (float(gradients[0]), float(gradients[1]))
        self.symmetric_mode = symmetric_mode
        if self.input_range is not None:
            check_declared_range(simulated_func, *self.input_range, symmetric_mode != "ASYM",
                                 f"SegmentLUT({self._fname()})", inverse=inverse_func)

    def _fname(self) -> str:
        return getattr(self.simulated_func, "__name__", type(self.simulated_func).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.simulated_func(x)

    def extra_repr(self) -> str:
        return f"{self._fname()}, symmetric_mode={self.symmetric_mode}, strategy={self.auto_divide_strategy}"
