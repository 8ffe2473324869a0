"""QConfig: how one op's tensors are quantized.

Takes dtypes and observer classes (or their names: ``"minmax"``, ``"mse"``, ...); returns a
frozen ``QConfig`` record whose ``activation`` and ``weight`` fields build the ``FakeQuantize``
modules ``prepare`` inserts on the op's output and on its weight. ``get_qconfig`` is the short way to write one (seed 002 uses it); the templates
in ``qconfig_template`` assign qconfigs to every op of a graph. ``get_qconfig(out_dtype=torch.float16)``
makes a float16 qconfig: its ``activation`` and ``weight`` are ``FakeCastSpec`` records (a float16
round trip, no observer or scale) and the op runs in float16 (``edgequant.float16``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import observers as obs
from .argcheck import expect_flag
from .dtype import QuantDType, get_dtype, qint8
from .fake_quant import FakeQuantize
from .ir import Graph
from .nn.fake_cast import FakeCast
from .observers import (OBSERVERS, FixedScaleObserver, KLObserver, MinMaxObserver,  # noqa: F401
                        MovingAverageMinMaxObserver, MSEObserver, PercentileObserver)  # seed scripts import these


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
class FakeCastSpec:
    """A float16 tensor: no observer, no scale; ``build`` makes the ``FakeCast`` that rounds it."""

    dtype: torch.dtype = torch.float16

    def build(self, name: str, ch_axis: int | None = None) -> FakeCast:
        fc = FakeCast(self.dtype)
        fc.name = name
        return fc


class _DefaultWeight:
    """``get_qconfig``'s default ``weight_dtype``: qint8, or float16 for a float16 output."""

    def __repr__(self) -> str:
        return "qint8"


_DEFAULT_WEIGHT = _DefaultWeight()


@dataclass(frozen=True)
class QConfig:
    """Quantization of one op: its output (``activation``) and its weight (``weight``).

    ``activation=None`` leaves the output float; ``weight=None`` leaves the weight float.
    ``input_dtype`` (optional) asks for the op's float inputs to be quantized to that dtype
    first (used for ops whose input must be quantized a particular way, e.g. int16 tables).
    A float16 qconfig has ``FakeCastSpec`` records (``float16`` is True): the op, its inputs,
    weights and output are float16.
    """

    activation: FakeQuantSpec | None
    weight: FakeQuantSpec | None
    input_dtype: QuantDType | None = None

    def __post_init__(self):
        for arg in ("activation", "weight"):
            v = getattr(self, arg)
            if v is not None and not isinstance(v, (FakeQuantSpec, FakeCastSpec)):
                raise TypeError(f"QConfig: {arg} must be a FakeQuantSpec or None (a FakeCastSpec for float16), got {type(v).__name__} ({v!r:.60}); "
                                "build qconfigs with edgequant.get_qconfig(...)")
        if self.input_dtype is not None and not isinstance(self.input_dtype, QuantDType):
            raise TypeError(f"QConfig: input_dtype must be a QuantDType (edgequant.qint8, ...) or None, "
                            f"got {self.input_dtype!r:.60}")

    @property
    def out_dtype(self) -> QuantDType | torch.dtype | None:
        return self.activation.dtype if self.activation else None

    @property
    def float16(self) -> bool:
        """Whether the op computes in float16 (its output is a ``FakeCastSpec``)."""
        return isinstance(self.activation, FakeCastSpec)


def get_qconfig(
    observer: type | None = None,
    in_dtype: QuantDType | str | None = None,
    weight_dtype: QuantDType | str | torch.dtype | None = _DEFAULT_WEIGHT,
    out_dtype: QuantDType | str | torch.dtype | None = qint8,
    fix_scale: bool = False,
    weight_observer: type | None = None,
    qat: bool = False,
    learnable: bool = False,
    observer_kwargs: dict | None = None,
) -> QConfig:
    """A QConfig from the usual choices.

    Args:
        observer: activation observer class (default MinMaxObserver; MovingAverageMinMaxObserver
            when ``qat``), or its name in ``edgequant.observers.OBSERVERS`` (``"minmax"``,
            ``"moving_average_minmax"``, ``"percentile"``, ``"mse"``, ``"kl"``, ``"fixed_scale"``,
            ``"mix"``; any case) or its class name (``"MSEObserver"``).
        in_dtype: dtype the op's float inputs are quantized to first (None: as produced).
        weight_dtype: dtype of weights, per output channel (None: float weights). Default qint8,
            or float16 when ``out_dtype`` is float16.
        out_dtype: dtype of the output (None: float output). ``torch.float16`` (or ``"float16"``)
            makes the op a float16 op: its inputs, weights and output are rounded to float16 in
            simulation, no observer is used, and ``convert`` runs it in float16 on NASH_P/NASH_H
            (``edgequant.float16``); ``weight_dtype`` must then be float16 (the default) or None,
            and ``in_dtype`` float16 or None.
        fix_scale: keep activation scales fixed after calibration (QAT with fixed scales).
        weight_observer: weight observer class or name (default per-channel MinMaxObserver).
        qat: build for quantization-aware training.
        learnable: learn activation scales by LSQ in QAT.

    Raises ``ValueError`` for an unknown observer or dtype name (listing the valid ones) and
    ``TypeError`` for an observer that is not an observer class or name.
    """
    for arg, flag in (("fix_scale", fix_scale), ("qat", qat), ("learnable", learnable)):
        expect_flag(flag, "get_qconfig", arg)
    if observer is None:
        observer = obs.MovingAverageMinMaxObserver if qat else obs.MinMaxObserver
    observer = _observer_class(observer, "observer")
    weight_observer = _observer_class(obs.MinMaxObserver if weight_observer is None else weight_observer,
                                      "weight_observer")
    if observer_kwargs is not None and not isinstance(observer_kwargs, dict):
        raise TypeError(f"get_qconfig: observer_kwargs must be a dict of keyword arguments for the observer, "
                        f"got {type(observer_kwargs).__name__}")
    if observer_kwargs:
        _check_observer_kwargs(observer, observer_kwargs)
    out_dtype = _dtype_arg(out_dtype, "out_dtype")
    if weight_dtype is _DEFAULT_WEIGHT:
        weight_dtype = torch.float16 if out_dtype is torch.float16 else qint8
    in_dtype, weight_dtype = (_dtype_arg(d, n) for d, n in ((in_dtype, "in_dtype"), (weight_dtype, "weight_dtype")))
    if out_dtype is torch.float16 or torch.float16 in (in_dtype, weight_dtype):
        return _float16_qconfig(in_dtype, weight_dtype, out_dtype)
    activation = None
    if out_dtype is not None:
        activation = FakeQuantSpec(out_dtype, observer, dict(observer_kwargs or {}),
                                   fixed_scale=fix_scale, learnable=learnable)
    weight = None
    if weight_dtype is not None:
        weight = FakeQuantSpec(weight_dtype, weight_observer, ch_axis=0)
    return QConfig(activation, weight, in_dtype)


def _float16_qconfig(in_dtype, weight_dtype, out_dtype) -> QConfig:
    """``get_qconfig`` for a float16 op: every dtype float16 (weights may stay float32: None)."""
    if out_dtype is not torch.float16:
        which = "in_dtype" if in_dtype is torch.float16 else "weight_dtype"
        raise ValueError(f"get_qconfig: {which}=torch.float16 needs out_dtype=torch.float16 (a float16 op reads, "
                         f"weighs and writes float16), got out_dtype={out_dtype!r}")
    for arg, d in (("in_dtype", in_dtype), ("weight_dtype", weight_dtype)):
        if d is not None and d is not torch.float16:
            raise ValueError(f"get_qconfig: out_dtype=torch.float16 makes a float16 op, whose {arg} is float16 "
                             f"(or None), got {arg}={d!r}; a float16 op has no integer tensors")
    return QConfig(FakeCastSpec(), FakeCastSpec() if weight_dtype is torch.float16 else None, None)


def _observer_class(observer, arg: str) -> type:
    """An observer class from a class or a name (``OBSERVERS`` key or class name, any case)."""
    from torch import nn

    if isinstance(observer, str):
        key = observer.strip().lower().replace("-", "_")
        by_name = {**{k.replace("_", ""): v for k, v in OBSERVERS.items()},
                   **{v.__name__.lower(): v for v in OBSERVERS.values()}}
        found = OBSERVERS.get(key) or by_name.get(key.replace("_", ""))
        if found is None:
            raise ValueError(f"get_qconfig: unknown {arg} {observer!r}; use one of {sorted(OBSERVERS)} "
                             "or an observer class from edgequant.observers")
        return found
    if (isinstance(observer, type) and issubclass(observer, nn.Module)) or \
            (callable(observer) and not isinstance(observer, (type, nn.Module, Graph))):
        return observer  # a class, or a factory such as functools.partial(MSEObserver, bins=4096)
    hint = f" (pass the class {type(observer).__name__}, not an instance)" if isinstance(observer, nn.Module) else ""
    raise TypeError(f"get_qconfig: {arg} must be an observer class or one of the names {sorted(OBSERVERS)}, "
                    f"got {observer!r}{hint}")


def _check_observer_kwargs(observer: type, kwargs: dict) -> None:
    """Refuse keywords ``observer`` does not take now, not when ``prepare`` builds it."""
    import inspect

    known: set[str] = set()
    for cls in observer.__mro__:  # **config is passed on to the base class: collect along the way
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters
        known |= {k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    else:
        return
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        known = sorted(known)
        raise ValueError(f"get_qconfig: observer_kwargs {unknown} are not arguments of {observer.__name__}; "
                         f"it takes {known}")


def _dtype_arg(dtype, arg: str) -> QuantDType | torch.dtype | None:
    """``get_dtype`` with the argument named in its error (None stays None: float; torch.float16
    or ``"float16"`` is float16)."""
    if dtype is None:
        return None
    if dtype is torch.float16 or (isinstance(dtype, str) and dtype.strip().lower() in ("float16", "fp16", "half")):
        return torch.float16
    if isinstance(dtype, torch.dtype):
        raise ValueError(f"get_qconfig: {arg}: unknown quantized dtype {dtype}; use a quantized dtype "
                         "(edgequant.qint8, ...), torch.float16 or None for float")
    try:
        return get_dtype(dtype)
    except ValueError as exc:
        raise ValueError(f"get_qconfig: {arg}: {exc} (or torch.float16, or None for float)") from None
