"""QConfig: how one op's tensors are quantized.

Takes dtypes and observer classes; returns a frozen ``QConfig`` record whose ``activation`` and
``weight`` fields build the ``FakeQuantize`` modules ``prepare`` inserts on the op's output and
on its weight. ``get_qconfig`` is the short way to write one (seed 002 uses it); the templates
in ``qconfig_template`` assign qconfigs to every op of a graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .dtype import QuantDType, get_dtype, qint8
from .fake_quant import FakeQuantize
from .observers import (FixedScaleObserver, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,  # noqa: F401
                        MSEObserver, PercentileObserver)  # seed scripts import observers from here


@dataclass(frozen=True)
class FakeQuantSpec:
    """A recipe for one FakeQuantize: the dtype, the observer class and its keyword arguments."""

    dtype: QuantDType
    observer: type
    observer_kwargs: dict[str, Any] = field(default_factory=dict)
    ch_axis: int | None = None
    fixed_scale: bool = False
    learnable: bool = False

    def build(self, name: str, ch_axis: int | None = None) -> FakeQuantize:
        """A new FakeQuantize for the tensor called ``name`` (used in error messages)."""
        axis = self.ch_axis if ch_axis is None else ch_axis
        kwargs = dict(self.observer_kwargs)
        kwargs.setdefault("dtype", self.dtype)
        if axis is not None:
            kwargs["ch_axis"] = axis
        obs = self.observer(**kwargs)
        obs.name = name
        return FakeQuantize(obs, self.dtype, ch_axis=axis, fixed_scale=self.fixed_scale, learnable=self.learnable)

    def with_dtype(self, dtype) -> "FakeQuantSpec":
        return replace(self, dtype=get_dtype(dtype))


@dataclass(frozen=True)
class QConfig:
    """Quantization of one op: its output (``activation``) and its weight (``weight``).

    ``activation=None`` leaves the output float; ``weight=None`` leaves the weight float.
    ``input_dtype`` (optional) asks for the op's float inputs to be quantized to that dtype
    first (used for ops whose input must be quantized a particular way, e.g. int16 tables).
    """

    activation: FakeQuantSpec | None
    weight: FakeQuantSpec | None
    input_dtype: QuantDType | None = None

    @property
    def out_dtype(self) -> QuantDType | None:
        return self.activation.dtype if self.activation else None


def get_qconfig(
    observer: type | None = None,
    in_dtype: QuantDType | str | None = None,
    weight_dtype: QuantDType | str | None = qint8,
    out_dtype: QuantDType | str | None = qint8,
    fix_scale: bool = False,
    weight_observer: type | None = None,
    qat: bool = False,
    learnable: bool = False,
    observer_kwargs: dict | None = None,
) -> QConfig:
    """A QConfig from the usual choices.

    Args:
        observer: activation observer class (default MinMaxObserver; MovingAverageMinMaxObserver
            when ``qat``).
        in_dtype: dtype the op's float inputs are quantized to first (None: as produced).
        weight_dtype: dtype of weights, per output channel (None: float weights).
        out_dtype: dtype of the output (None: float output).
        fix_scale: keep activation scales fixed after calibration (QAT with fixed scales).
        weight_observer: weight observer class (default per-channel MinMaxObserver).
        qat: build for quantization-aware training.
        learnable: learn activation scales by LSQ in QAT.
    """
    from . import observers as obs

    if observer is None:
        observer = obs.MovingAverageMinMaxObserver if qat else obs.MinMaxObserver
    activation = None
    if out_dtype is not None:
        activation = FakeQuantSpec(get_dtype(out_dtype), observer, dict(observer_kwargs or {}),
                                   fixed_scale=fix_scale, learnable=learnable)
    weight = None
    if weight_dtype is not None:
        weight = FakeQuantSpec(get_dtype(weight_dtype), weight_observer or obs.MinMaxObserver, ch_axis=0)
    return QConfig(activation, weight, get_dtype(in_dtype) if in_dtype is not None else None)
