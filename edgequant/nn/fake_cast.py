"""FakeCast: a float16 round trip, the simulation of a tensor stored in float16.

Takes a float32 tensor; returns a float32 tensor holding the nearest float16 values
(round-to-nearest-even, exactly ``x.half().float()``: magnitudes beyond 65504 become +-inf,
tiny ones float16 subnormals or zero). Users place a ``FakeCast()`` in a model where a tensor is
float16 on the target (seed 000 imports it); ``prepare`` also inserts one on the output, the
weights and the inputs of every op whose qconfig is float16 (``get_qconfig(out_dtype=torch.float16)``,
``qconfig_template.all_fp16_qconfig_setter``: ``edgequant.float16`` says how). The gradient is
passed straight through (the round trip's derivative is taken as 1, in float32: no gradient is
rounded to float16).

A FakeCast follows ``set_fake_quantize`` like a FakeQuantize: in ``FLOAT`` and ``CALIBRATION`` it
is the identity (the prepared model computes the float function), in ``VALIDATION`` and ``QAT``
it rounds. One that no ``set_fake_quantize`` has switched (the user's own model) always rounds.
On NASH_P and NASH_H the integer model runs the cast (``convert``); NASH_E and NASH_M have no
float16 and ``convert`` refuses it by name.
"""
from __future__ import annotations

import torch
from torch import nn

ALWAYS = "always"                     # the state of a FakeCast no set_fake_quantize has switched
_ROUNDING_STATES = (ALWAYS, "validation", "qat")


class _RoundTrip(torch.autograd.Function):
    """``x.half().float()`` forward, identity backward (straight through)."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.float16).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_float16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 and back to its own float dtype (straight-through gradient)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _RoundTrip.apply(x)
    return x.to(torch.float16).to(x.dtype)


class FakeCast(nn.Module):
    """Round a float tensor to float16 and back (module docstring).

    Args:
        dtype: the simulated storage type; ``torch.float16`` (the only float type the NASH_P and
            NASH_H marches run).
    """

    def __init__(self, dtype: torch.dtype = torch.float16):
        super().__init__()
        if dtype is not torch.float16:
            raise ValueError(f"FakeCast: dtype must be torch.float16 (the float type NASH_P/NASH_H run), got {dtype!r}")
        self.dtype = dtype
        self.state = ALWAYS

    def set_state(self, state) -> None:
        """Follow a ``FakeQuantState`` (``set_fake_quantize`` calls this)."""
        self.state = str(getattr(state, "value", state)).lower()

    @property
    def active(self) -> bool:
        return self.state in _ROUNDING_STATES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        return round_float16(x)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, state={self.state}"


__all__ = ["FakeCast", "round_float16"]
