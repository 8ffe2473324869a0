"""Fake quantization modules and the model-wide state switch.

Takes float tensors; returns float tensors that carry a quantization grid. A ``FakeQuantize``
sits on one tensor of a prepared model: it owns an observer (which chooses the range) and the
resulting ``scale``/``zero_point`` buffers (a state dict loads them as ``saved_qparams``
checks), and behaves according to its ``FakeQuantState``:

- ``FLOAT``: identity; the model computes in float.
- ``CALIBRATION``: the observer records the tensor; the output is the float input unchanged.
- ``VALIDATION``: observers frozen; the tensor is quantized then dequantized (qmath A3).
- ``QAT``: as VALIDATION with straight-through gradients; the observer keeps updating unless
  the scale is fixed, and with ``learnable=True`` the scale is a trained parameter (LSQ).

``set_fake_quantize(model, state)`` switches every FakeQuantize of a model at once; leaving
CALIBRATION (or QAT) freezes the observers' current ranges into ``scale``/``zero_point``.
``calibrate(model, batches)`` is the usual calibration: CALIBRATION, every batch, VALIDATION.
Under torch.distributed the modules ``shared_statistics(model)`` lists are synced
(``edgequant.collectives``) before they freeze; ``edgequant.distributed`` has the manual calls.

A ``BiasCorrection`` sits on the bias of a conv/linear whose weight is fake-quantized. Rounding
the weights shifts the mean of each output channel by ``sum (w_q - w) * E[x]``; a depthwise or
zero-sum (edge-detecting) kernel with large weights can shift it by much more than the
activation grid step. In CALIBRATION it records ``E[x]`` (per input channel and kernel offset,
so padding is accounted for); in VALIDATION the op uses ``bias - shift``, the bias the integer
model is given (bias correction, Nagel et al. 2019, "Data-Free Quantization", section 4.2, with
the expectation measured on the calibration data). VALIDATION also rounds that bias to the
accumulator grid ``s_x * s_w`` by (A1), as export stores it in int32, once ``prepare`` has bound
the input's and weight's fake-quants (``bind_grid``): the simulation then adds the bias the
integer model adds, and a value near a rounding tie no longer lands on different sides. Once a
model enters QAT, the bias is trained instead and the correction stays off for good.
"""
from __future__ import annotations

import math
from enum import Enum

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .argcheck import PREPARE_HINT, check_batch, describe, expect_batches, expect_flag, expect_int, expect_module, \
    is_prepared
from .collectives import is_distributed, sync_modules, sync_observer
from .dtype import QuantDType, get_dtype
from .nn.fake_cast import FakeCast
from .observers.base import MASK_LIMIT
from .ops import spec_of
from .qmath import accumulator_scale, bias_dtype, bias_steps, fake_quantize, fake_quantize_learnable, quantize_bias
from .saved_qparams import dtype_code, loadable_state


class FakeQuantState(str, Enum):
    """What every FakeQuantize of a model does (see the module docstring)."""

    FLOAT = "float"
    CALIBRATION = "calibration"
    VALIDATION = "validation"
    QAT = "qat"

    @classmethod
    def _missing_(cls, value):
        """Names in any case (``"CALIBRATION"``, ``"Qat"``); anything else is refused listing the states."""
        if isinstance(value, str) and value.lower() in cls._value2member_map_:
            return cls(value.lower())
        raise ValueError(f"unknown fake-quant state {value!r}; use a FakeQuantState or one of {[s.value for s in cls]}")


class FakeQuantize(nn.Module):
    """Observe and fake-quantize one tensor.

    Args:
        observer: an observer module (``edgequant.observers``) configured with the same dtype.
        dtype: the integer type simulated.
        ch_axis: per-channel axis (weights) or None (per tensor).
        fixed_scale: keep ``scale`` as loaded/calibrated; observers never update it in QAT.
        learnable: in QAT, train ``scale`` by LSQ (implies the observer only initialises it).

    Its state dict holds ``scale``, ``zero_point``, ``calibrated``, ``qdtype`` (``[bits, signed]``
    of ``dtype``) and the observer's statistics. Loading scales calibrated for another dtype, or
    per channel where this one is per tensor (or the reverse), raises ``ValueError`` naming the key.
    """

    def __init__(self, observer: nn.Module, dtype: QuantDType | str, ch_axis: int | None = None,
                 fixed_scale: bool = False, learnable: bool = False):
        super().__init__()
        if not isinstance(observer, nn.Module) or isinstance(observer, FakeQuantize) or \
                not hasattr(observer, "calculate_qparams"):
            raise TypeError(f"FakeQuantize: observer must be an observer instance such as "
                            f"edgequant.observers.MinMaxObserver(), got {describe(observer)}")
        expect_int(ch_axis, "FakeQuantize", "ch_axis", none=True)
        expect_flag(fixed_scale, "FakeQuantize", "fixed_scale")
        expect_flag(learnable, "FakeQuantize", "learnable")
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
        # ``[bits, signed]`` of ``dtype``: a state dict records what its scales were calibrated for
        self.register_buffer("qdtype", dtype_code(self.dtype))
        # a weight whose rounding a pass chose (``ptq.gptq``, ``ptq.adaround``) holds the float weight the
        # pass replaced, for FLOAT (the float model); empty otherwise, and dropped when QAT trains it
        self.register_buffer("float_weight", torch.empty(0))
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
        if state == FakeQuantState.QAT:
            self.float_weight = torch.empty(0, device=self.float_weight.device)
        self.state = state

    def freeze_qparams(self) -> None:
        """Copy the observer's current choice into ``scale``/``zero_point`` (if it saw data)."""
        if not self._observer_has_data():
            return
        scale, zp = self.observer.calculate_qparams()
        self._set_qparams(scale, zp)

    def observe_weight(self, w: torch.Tensor) -> None:
        """Set the qparams of a weight from its current values alone."""
        self.observer.reset()
        self.observer(w.detach())
        self.freeze_qparams()

    def _observer_has_data(self) -> bool:
        has = getattr(self.observer, "has_data", None)
        if getattr(self.observer, "mask_seen", False) and getattr(self.observer, "ch_axis", None) is None:
            return True   # mask values only: the observer's clip_range gives a pure mask's range
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
        if state == FakeQuantState.FLOAT and self.float_weight.numel() and x.is_floating_point():
            if self.float_weight.shape != x.shape:
                raise ValueError(f"{self.name}: its float weight has shape {tuple(self.float_weight.shape)}, the "
                                 f"weight {tuple(x.shape)}; the state dict loaded was saved from another model")
            return self.float_weight.to(x.dtype)
        if state == FakeQuantState.FLOAT or not x.is_floating_point():
            return x
        if self.is_weight:
            if state == FakeQuantState.CALIBRATION or state == FakeQuantState.QAT or not bool(self.calibrated):
                self.observe_weight(x)
            if state == FakeQuantState.CALIBRATION:
                return x
        elif state == FakeQuantState.CALIBRATION:
            if not self.fixed_scale or not bool(self.calibrated):
                self.observer(x.detach())
            return x
        elif state == FakeQuantState.QAT and not self.fixed_scale and not self.learnable:
            self.observer(x.detach())
            sync_observer(self.observer)  # torch.distributed: the same range on every rank
            self.freeze_qparams()
        scale, zp = self.qparams()
        if state == FakeQuantState.QAT and self.learnable:
            return fake_quantize_learnable(x, self.learned_scale.abs().clamp(min=1e-12), zp, self.dtype, self.ch_axis,
                                           grad_factor=_lsq_grad_factor(x, self))
        out = fake_quantize(x, scale, zp, self.dtype, self.ch_axis)
        if getattr(self.observer, "mask_seen", False):
            # an attention mask's "minus infinity" (observers/base.py MASK_LIMIT) stays itself: the
            # sum it feeds saturates either way, and observers after it (QAT) still see a mask value
            out = torch.where(x <= MASK_LIMIT, x, out)
        return out

    # -- state dict: scales always load; observer statistics load when the observer matches --
    # A state dict whose scales were calibrated for another dtype, or per channel where this
    # fake-quant is per tensor (or the reverse), raises ValueError naming the key; one saved
    # before ``qdtype`` existed loads as it always did.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.qdtype.copy_(dtype_code(self.dtype))  # follows ``dtype`` even if it was reassigned
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict = loadable_state(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self.qdtype.copy_(dtype_code(self.dtype))


class BiasCorrection(nn.Module):
    """The bias of one conv/linear, corrected for the mean shift its weight quantization causes.

    Called as ``bc(x, w, w_q, bias)`` with the op's input, float weight, fake-quantized weight
    and bias (or None); returns the bias the op uses (see the module docstring). It records
    ``E[x]`` over every window the op reads: per input channel and kernel offset for conv1d,
    conv2d and conv3d (``stride``, ``padding``, ``dilation`` of the op), per input feature for linear.
    Statistics are sums (``REDUCTIONS``), so they merge across processes by summing.
    """

    REDUCTIONS = {"input_sum": "sum", "count": "sum"}

    def __init__(self, op: str, stride=(1,), padding=(0,), dilation=(1,), groups: int = 1):
        super().__init__()
        if spec_of(op) is None or not spec_of(op).bias_correction:
            raise ValueError(f"BiasCorrection supports linear and conv1d/2d/3d, not {op}")
        self.op, self.spatial_dims = op, spec_of(op).spatial_dims  # spatial_dims None: linear
        self.stride, self.padding, self.dilation = (tuple(int(v) for v in a) for a in (stride, padding, dilation))
        self.groups = int(groups)
        self.state = FakeQuantState.FLOAT
        self.register_buffer("input_sum", torch.empty(0, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("trained", torch.zeros((), dtype=torch.bool))
        # the rest of the mean output shift, measured on calibration batches against the float model
        # (``edgequant.ptq.empirical_bias``): per output channel, empty until measured
        self.register_buffer("empirical", torch.empty(0))
        # False: leave the empirical shift out (``ptq.op_sensitivity`` measures each op on its own, and the
        # shift also compensates what the quantized ops before it do)
        self.use_empirical = True

    def extra_repr(self) -> str:
        return f"{self.op}, state={self.state.value}, active={self.active()}"

    def set_state(self, state: FakeQuantState | str) -> None:
        self.state = FakeQuantState(state)
        if self.state == FakeQuantState.QAT:
            self.trained.fill_(True)

    def active(self) -> bool:
        """Whether VALIDATION applies a correction (calibration data seen, never trained)."""
        return bool(self.count > 0) and not bool(self.trained)

    def reset(self) -> None:
        self.input_sum = torch.empty(0, dtype=torch.float64, device=self.input_sum.device)
        self.count.zero_()
        self.empirical = torch.empty(0, device=self.empirical.device)

    @torch.no_grad()
    def _record(self, x: torch.Tensor, ksize: tuple[int, ...]) -> None:
        if self.spatial_dims is None:
            total, n = x.detach().reshape(-1, x.shape[-1]).sum(0).double(), x.numel() // x.shape[-1]
        else:
            if x.dim() != 2 + len(ksize) or x.shape[0] == 0:
                return
            total, n = self._window_means(x.detach().sum(0).double(), ksize), x.shape[0]
            if total is None:
                return
        if self.input_sum.shape != total.shape:
            self.input_sum = torch.zeros_like(total)
            self.count.zero_()
        self.input_sum += total
        self.count += n

    def _window_means(self, xs: torch.Tensor, ksize: tuple[int, ...]) -> torch.Tensor | None:
        """``[C, *ksize]``: for each kernel offset, the mean of the (batch-summed) input ``xs``
        over the output positions, i.e. the mean of what that weight multiplies.

        The sum over output positions is separable, so it runs one spatial dim at a time: along
        each dim, every kernel offset sums its strided slice, and that dim becomes the offsets.
        This reads ``xs`` about ``k / stride`` times instead of ``(k / stride)**2`` times.
        """
        xs = F.pad(xs, [p for p in reversed(self.padding) for _ in range(2)])
        outs = [(xs.shape[1 + i] - self.dilation[i] * (k - 1) - 1) // self.stride[i] + 1 for i, k in enumerate(ksize)]
        if min(outs) <= 0:
            return None
        total = xs
        for i, (k, n) in enumerate(zip(ksize, outs)):
            d, s, dim = self.dilation[i], self.stride[i], 1 + i
            lead = (slice(None),) * dim
            total = torch.cat([total[(*lead, slice(o * d, o * d + (n - 1) * s + 1, s))].sum(dim, keepdim=True)
                               for o in range(k)], dim)
        return total / math.prod(outs)

    def shift(self, w: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        """The mean output shift per output channel, ``sum (w_q - w) * E[x]``."""
        with torch.no_grad():
            dw = (wq - w).to(torch.float64)
            mean = self.input_sum / self.count
            if self.spatial_dims is None:
                return (dw @ mean).to(w.dtype)
            # the conv of the window mean with dw, which has a 1x1 output, as one contraction per
            # group (torch's float64 depthwise conv2d takes seconds on a 1152-channel 5x5 kernel)
            g, o, c = self.groups, dw.shape[0], mean.shape[0]
            d = dw.reshape(g, o // g, c // g, -1)
            return torch.einsum("gock,gck->go", d, mean.reshape(g, c // g, -1)).reshape(o).to(w.dtype)

    def bind_grid(self, x_fq: FakeQuantize, w_fq: FakeQuantize) -> None:
        """The fake-quants of the op's input and weight: VALIDATION then puts the bias on the
        accumulator grid ``s_x * s_w`` (``grid_bias``). Kept in a tuple, so they are references,
        not submodules (no second copy in the state dict)."""
        self._grid = (x_fq, w_fq)

    def _weight_quantized(self) -> bool:
        """Whether the op's weight fake-quant (``bind_grid``) quantizes now: the empirical shift belongs
        to the quantized op, not to the float one a sweep may run (``ptq.sensitivity``)."""
        grid = getattr(self, "_grid", None)
        return grid is None or grid[1].state != FakeQuantState.FLOAT

    def grid_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """``bias`` rounded by (A1) to the accumulator grid ``s_acc = s_x * s_w`` (float32 product,
        per output channel), as export stores it (both by ``qmath.accumulator_scale`` and
        ``qmath.quantize_bias``, in ``ops.matmul_like.lower_weighted``); unchanged
        when no grid is bound or the bias needs more than int32 there (the integer model then
        keeps it in the wide accumulator type, exactly)."""
        grid = getattr(self, "_grid", None)
        if grid is None or bias is None:
            return bias
        s_x, s_w = grid[0].qparams()[0], grid[1].qparams()[0]
        if s_x.numel() != 1:
            return bias
        acc = accumulator_scale(s_x, s_w, bias.shape[0])
        if acc.numel() != bias.shape[0] or bias_dtype(bias_steps(bias, acc)) is None:
            return bias
        return quantize_bias(bias, acc, "qint32", fake=True).to(bias.dtype)

    def forward(self, x, w, wq, bias):
        if self.state == FakeQuantState.CALIBRATION and not bool(self.trained):
            self._record(x, tuple(w.shape[2:]))
            return bias
        if self.state != FakeQuantState.VALIDATION or wq is w or not self._weight_quantized():
            return bias   # a float weight (FLOAT returns the float copy a rounding pass keeps) is not corrected
        if self.active():
            delta = self.shift(w, wq)
            if self.empirical.numel() and self.use_empirical and self._weight_quantized():
                if self.empirical.shape != delta.shape:
                    raise ValueError(f"BiasCorrection of a {self.op}: its empirical shift has shape "
                                     f"{tuple(self.empirical.shape)}, the op has {delta.shape[0]} output channels; "
                                     "the state dict loaded was saved for another model: calibrate again")
                delta = delta + self.empirical.to(delta.dtype)
            bias = -delta if bias is None else bias - delta
        return self.grid_bias(bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "input_sum")
        if saved is not None and saved.shape != self.input_sum.shape:
            self.input_sum = torch.empty(saved.shape, dtype=self.input_sum.dtype, device=self.input_sum.device)
        if prefix + "empirical" not in state_dict:   # saved before the empirical shift existed
            state_dict = dict(state_dict)
            state_dict[prefix + "empirical"] = torch.empty(0)
        saved = state_dict[prefix + "empirical"]
        if isinstance(saved, torch.Tensor) and saved.shape != self.empirical.shape:
            self.empirical = torch.empty(saved.shape, dtype=self.empirical.dtype, device=self.empirical.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _lsq_grad_factor(x: torch.Tensor, fq: FakeQuantize) -> float | None:
    """Under torch.distributed, LSQ's ``1 / sqrt(N qmax)`` counts the global batch (N x world size),
    so DDP (gradients averaged) trains the scale as one process with the combined batch would."""
    if not is_distributed():
        return None  # qmath's default from the local tensor
    per_scale = x.numel() if fq.ch_axis is None or fq.learned_scale.dim() == 0 else x.numel() // max(1, x.shape[fq.ch_axis])
    return 1.0 / math.sqrt(max(1, per_scale * dist.get_world_size()) * max(1, fq.dtype.qmax))


def fake_quant_modules(model: nn.Module):
    """Every ``(name, FakeQuantize)`` of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantize)]


def shared_statistics(model: nn.Module):
    """The modules whose statistics all ranks share under torch.distributed (``edgequant.collectives``):
    the activation observers that declare ``REDUCTIONS``, and every BiasCorrection, in module order."""
    for m in model.modules():
        if isinstance(m, FakeQuantize) and not m.is_weight and getattr(m.observer, "REDUCTIONS", None):
            yield m.observer
        elif isinstance(m, BiasCorrection):
            yield m


def expect_fake_quant(value, fn: str, arg: str) -> nn.Module:
    """``value`` if it is a module with edgequant fake quantization (a prepared model, or a module
    that holds one, such as a DistributedDataParallel wrapper); raises like ``edgequant.argcheck``."""
    expect_module(value, fn, arg)
    if not is_prepared(value) and not any(isinstance(m, FakeQuantize) for m in value.modules()):
        raise ValueError(f"{fn}: {arg} ({type(value).__name__}) has no edgequant fake-quant modules; pass the "
                         f"model that edgequant.prepare returned, not the float model ({PREPARE_HINT})")
    return value


# Steps that follow a state change, ``hook(model, state, ended_calibration)`` (``ended_calibration``:
# the model was calibrating, on one process); ``edgequant.ptq.empirical_bias`` adds its own
STATE_HOOKS: list = []


def set_fake_quantize(model: nn.Module, state: FakeQuantState | str) -> nn.Module:
    """Switch every FakeQuantize (and BiasCorrection, FakeCast) of ``model`` to ``state``; returns ``model``.

    CALIBRATION and VALIDATION put the model in eval mode (observers must not see dropout or
    batch-norm updates); QAT leaves ``train()``/``eval()`` to the user. Raises ``ValueError``
    for a model without fake quantization (the float model instead of the prepared one) and
    for an unknown state.
    """
    expect_fake_quant(model, "set_fake_quantize", "model")
    if not isinstance(state, FakeQuantState) and (not isinstance(state, str) or state.lower() not in
                                                  [s.value for s in FakeQuantState]):
        raise ValueError(f"set_fake_quantize: unknown state {state!r}; use a FakeQuantState or one of "
                         f"{[s.value for s in FakeQuantState]}")
    state = FakeQuantState(state)

    if is_distributed() and any(fq.state != state and fq.state in (FakeQuantState.CALIBRATION, FakeQuantState.QAT)
                                for _, fq in fake_quant_modules(model)):
        sync_modules(shared_statistics(model))  # every rank freezes the same statistics (edgequant.collectives)
    calibrating = any(fq.state == FakeQuantState.CALIBRATION for _, fq in fake_quant_modules(model))
    for _, fq in fake_quant_modules(model):
        fq.set_state(state)
    for m in model.modules():
        if isinstance(m, (BiasCorrection, FakeCast)):   # FakeCast: float16 round trips (edgequant.float16)
            m.set_state(state)
    if state in (FakeQuantState.CALIBRATION, FakeQuantState.VALIDATION):
        model.eval()
    for hook in STATE_HOOKS:
        hook(model, state, calibrating and not is_distributed())
    return model


def run_batch(model: nn.Module, b):
    """``model`` called on one batch: a dict as keyword inputs, a tuple/list as positional ones,
    anything else as the one input."""
    if isinstance(b, dict):
        return model(**b)
    if isinstance(b, (tuple, list)):
        return model(*b)
    return model(b)


def calibrate(model: nn.Module, batches, progress: bool | str = False) -> nn.Module:
    """Calibrate ``model``: set CALIBRATION, run every batch under ``torch.no_grad()``, set
    VALIDATION (which freezes the observed ranges); returns ``model``.

    A batch is a tensor (the model's single input), a tuple/list of inputs or a dict of keyword
    inputs. ``progress``: a tqdm bar (True, or a str for its label; the total is ``len(batches)``
    when ``batches`` has one). Raises ``ValueError`` for a model without fake quantization and
    for ``batches`` that yield nothing (no observer would see data), ``TypeError`` for ``batches``
    that is not an iterable of batches and for a batch of another type.
    """
    expect_fake_quant(model, "calibrate", "model")
    expect_batches(batches, "calibrate", "batches")
    if not isinstance(progress, str):
        expect_flag(progress, "calibrate", "progress")
    set_fake_quantize(model, FakeQuantState.CALIBRATION)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(batches, desc=progress if isinstance(progress, str) else "calibration", unit="batch")
    seen = 0
    try:
        with torch.no_grad():
            for b in batches:
                check_batch(b, seen, "calibrate")
                run_batch(model, b)
                seen += 1
                if progress:
                    bar.update(1)
    except BaseException:
        if progress:   # clear the bar: the error, not a half-drawn bar, is what the user reads last
            bar.leave = False
            bar.close()
        raise
    if progress:
        bar.close()
    if not seen:
        set_fake_quantize(model, FakeQuantState.VALIDATION)
        raise ValueError("calibrate: batches gave no batch, so no observer saw data; pass at least one batch "
                         "(a tensor, a tuple of the model's inputs or a dict of keyword inputs)")
    return set_fake_quantize(model, FakeQuantState.VALIDATION)
