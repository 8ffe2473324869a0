"""Fake quantization modules and the model-wide state switch.

Takes float tensors; returns float tensors that carry a quantization grid. A ``FakeQuantize``
sits on one tensor of a prepared model: it owns an observer (which chooses the range) and the
resulting ``scale``/``zero_point`` buffers, and behaves according to its ``FakeQuantState``:

- ``FLOAT``: identity; the model computes in float.
- ``CALIBRATION``: the observer records the tensor; the output is the float input unchanged.
- ``VALIDATION``: observers frozen; the tensor is quantized then dequantized (qmath A3).
- ``QAT``: as VALIDATION with straight-through gradients; the observer keeps updating unless
  the scale is fixed, and with ``learnable=True`` the scale is a trained parameter (LSQ).

``set_fake_quantize(model, state)`` switches every FakeQuantize of a model at once; leaving
CALIBRATION (or QAT) freezes the observers' current ranges into ``scale``/``zero_point``.
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from .dtype import QuantDType, get_dtype
from .qmath import fake_quantize, fake_quantize_learnable


class FakeQuantState(str, Enum):
    """What every FakeQuantize of a model does (see the module docstring)."""

    FLOAT = "float"
    CALIBRATION = "calibration"
    VALIDATION = "validation"
    QAT = "qat"


class FakeQuantize(nn.Module):
    """Observe and fake-quantize one tensor.

    Args:
        observer: an observer module (``edgequant.observers``) configured with the same dtype.
        dtype: the integer type simulated.
        ch_axis: per-channel axis (weights) or None (per tensor).
        fixed_scale: keep ``scale`` as loaded/calibrated; observers never update it in QAT.
        learnable: in QAT, train ``scale`` by LSQ (implies the observer only initialises it).
    """

    def __init__(self, observer: nn.Module, dtype: QuantDType | str, ch_axis: int | None = None,
                 fixed_scale: bool = False, learnable: bool = False):
        super().__init__()
        self.observer = observer
        self.dtype = get_dtype(dtype)
        self.ch_axis = ch_axis
        self.fixed_scale = fixed_scale
        self.learnable = learnable
        self.is_weight = False  # weights: statistics of the current values only, never accumulated
        self.state = FakeQuantState.FLOAT
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int64))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        if learnable:
            self.learned_scale = nn.Parameter(torch.ones(()))

    @property
    def name(self) -> str:
        return getattr(self.observer, "name", type(self).__name__)

    def extra_repr(self) -> str:
        axis = "" if self.ch_axis is None else f", ch_axis={self.ch_axis}"
        return f"{self.dtype}{axis}, state={self.state.value}, fixed_scale={self.fixed_scale}"

    # -- state -------------------------------------------------------------------------------
    def set_state(self, state: FakeQuantState | str) -> None:
        state = FakeQuantState(state)
        leaving_observation = self.state in (FakeQuantState.CALIBRATION, FakeQuantState.QAT)
        if leaving_observation and state != self.state and not self.fixed_scale:
            self.freeze_qparams()
        if state in (FakeQuantState.VALIDATION, FakeQuantState.QAT) and not bool(self.calibrated):
            self.freeze_qparams()  # the observer may have seen data through a loaded state dict
        self.state = state

    def freeze_qparams(self) -> None:
        """Copy the observer's current choice into ``scale``/``zero_point`` (if it saw data)."""
        if not self._observer_has_data():
            return
        scale, zp = self.observer.calculate_qparams()
        self._set_qparams(scale, zp)

    def _observer_has_data(self) -> bool:
        has = getattr(self.observer, "has_data", None)
        return bool(has()) if callable(has) else True

    def _set_qparams(self, scale: torch.Tensor, zp: torch.Tensor) -> None:
        self.scale.resize_(scale.shape).copy_(scale)
        self.zero_point.resize_(zp.shape).copy_(zp)
        self.calibrated.fill_(True)
        if self.learnable:
            with torch.no_grad():
                self.learned_scale.data = scale.detach().clone().float()

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale and zero point this tensor is quantized with; raises if never calibrated."""
        if not bool(self.calibrated):
            self.freeze_qparams()
        if not bool(self.calibrated):
            raise RuntimeError(
                f"{self.name}: this tensor was never calibrated (its observer saw no data). "
                "Run calibration batches that reach it with set_fake_quantize(model, FakeQuantState.CALIBRATION), "
                "or give it a fixed scale."
            )
        if self.learnable:
            return self.learned_scale.detach().abs().clamp(min=1e-12), self.zero_point
        return self.scale, self.zero_point

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state == FakeQuantState.FLOAT or not x.is_floating_point():
            return x
        if self.is_weight:
            if state == FakeQuantState.CALIBRATION:
                return x
            if state == FakeQuantState.QAT or not bool(self.calibrated):
                self.observer.reset()
                self.observer(x.detach())
                self.freeze_qparams()
        elif state == FakeQuantState.CALIBRATION:
            if not self.fixed_scale or not bool(self.calibrated):
                self.observer(x.detach())
            return x
        elif state == FakeQuantState.QAT and not self.fixed_scale and not self.learnable:
            self.observer(x.detach())
            self.freeze_qparams()
        scale, zp = self.qparams()
        if state == FakeQuantState.QAT and self.learnable:
            return fake_quantize_learnable(x, self.learned_scale.abs().clamp(min=1e-12), zp, self.dtype, self.ch_axis)
        return fake_quantize(x, scale, zp, self.dtype, self.ch_axis)

    # -- state dict: scales always load; observer statistics load when the observer matches --
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key in ("scale", "zero_point"):
            if prefix + key in state_dict:
                getattr(self, key).resize_(state_dict[prefix + key].shape)
        if self.learnable and prefix + "learned_scale" in state_dict:
            self.learned_scale.data = torch.empty_like(state_dict[prefix + "learned_scale"])
        elif self.learnable and prefix + "scale" in state_dict:
            state_dict = dict(state_dict)
            state_dict[prefix + "learned_scale"] = state_dict[prefix + "scale"].clone().float()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def fake_quant_modules(model: nn.Module):
    """Every ``(name, FakeQuantize)`` of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantize)]


def set_fake_quantize(model: nn.Module, state: FakeQuantState | str) -> nn.Module:
    """Switch every FakeQuantize of ``model`` to ``state``; returns ``model``.

    CALIBRATION and VALIDATION put the model in eval mode (observers must not see dropout or
    batch-norm updates); QAT leaves ``train()``/``eval()`` to the user.
    """
    state = FakeQuantState(state)
    for _, fq in fake_quant_modules(model):
        fq.set_state(state)
    if state in (FakeQuantState.CALIBRATION, FakeQuantState.VALIDATION):
        model.eval()
    return model
