"""Observers: they watch the tensors of a calibration or QAT run and choose each tensor's qparams.

Takes tensors through ``forward`` (returned unchanged) and returns, from ``calculate_qparams()``,
a float32 scale and an int64 zero point per tensor or per channel. ``OBSERVERS`` lists every
observer by name (``MixObserver``: the best of several by the op's output error);
``shrink_range`` is seed 003's percentile rule as a plain function.
See docs/observers.md.
"""
from .base import Observer
from .histogram import Histogram
from .histogram_observers import KLObserver, MSEObserver, PercentileObserver
from .minmax import FixedScaleObserver, MinMaxObserver, MovingAverageMinMaxObserver
from .mix import MixObserver
from .shrink import shrink_range

OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average_minmax": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
    "fixed_scale": FixedScaleObserver,
    "mix": MixObserver,
}

__all__ = [
    "Observer", "Histogram", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
    "MSEObserver", "KLObserver", "FixedScaleObserver", "MixObserver", "shrink_range", "OBSERVERS",
]
