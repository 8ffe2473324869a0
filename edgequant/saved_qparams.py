"""What a FakeQuantize's saved state dict may hold: the dtype record and the calibrated qparams.

Takes a ``FakeQuantize`` (read through its ``dtype``, ``name``, ``ch_axis``, ``observer``,
``calibrated`` and ``scale``) and the state dict being loaded into it; returns nothing, or
raises ``ValueError`` naming the key. ``dtype_code`` is the ``qdtype`` buffer a FakeQuantize
saves (``[bits, signed]`` of its dtype); ``check_saved_dtype`` refuses scales calibrated for
another dtype (they would be off by the ratio of the two ranges) or a damaged record, and
``check_saved_scale`` a calibrated scale that is not finite and positive, a zero point outside
the dtype's range, and per-channel scales where the fake-quant is per tensor (or the reverse,
or another channel count). A state dict that calibrated nothing loads whatever its shapes.
``loadable_state`` applies these checks for ``FakeQuantize._load_from_state_dict``, and
``tolerate_observer_changes`` is the prepared model's pre-hook for observers of other types.
"""
from __future__ import annotations

import torch

from .dtype import DTYPES, QuantDType


def dtype_code(dtype: QuantDType) -> torch.Tensor:
    """The ``qdtype`` record of ``dtype``: ``[bits, signed]`` as an int64 tensor."""
    return torch.tensor([dtype.bits, int(dtype.signed)], dtype=torch.int64)


def _dtype_from_code(code) -> QuantDType | None:
    """The dtype a saved ``qdtype`` buffer names, or None if it names none."""
    if not isinstance(code, torch.Tensor) or code.shape != (2,) or code.is_floating_point() or code.is_complex():
        return None
    bits, signed = (int(v) for v in code.tolist())
    return next((d for d in DTYPES.values() if d.bits == bits and int(d.signed) == signed), None)


def _range_ratio(a: QuantDType, b: QuantDType) -> float:
    wide, narrow = sorted((a.qmax - a.qmin, b.qmax - b.qmin))[::-1]
    return wide / narrow


def _show(t) -> str:
    return f"{t.tolist()}" if isinstance(t, torch.Tensor) and t.numel() <= 8 else repr(t)[:60]


def check_saved_dtype(fq, code, prefix: str) -> None:
    """Refuse a saved ``qdtype`` record that names no dtype, or another dtype than ``fq``'s."""
    saved = _dtype_from_code(code)
    if saved is None:
        raise ValueError(f"{prefix}qdtype: {_show(code)} is not a quantized dtype record ([bits, signed] of one "
                         f"of {sorted(DTYPES)}); the state dict is damaged or was not saved by edgequant")
    if saved != fq.dtype:
        ratio = _range_ratio(saved, fq.dtype)
        raise ValueError(
            f"{prefix}scale: the state dict was calibrated for {saved}, but this model quantizes the tensor "
            f"{fq.name} as {fq.dtype} (its scales would be off by about {ratio:.0f}x); "
            "load it into a model prepared with the same qconfig template, or calibrate this model instead"
        )


def check_saved_scale(fq, state_dict, prefix: str) -> None:
    """Refuse calibrated qparams that ``fq`` cannot take (module docstring)."""
    scale, calibrated = state_dict.get(prefix + "scale"), state_dict.get(prefix + "calibrated")
    if not isinstance(scale, torch.Tensor) or not isinstance(calibrated, torch.Tensor) \
            or calibrated.numel() != 1 or not bool(calibrated.reshape(())):
        return  # nothing calibrated was saved: it resets this fake-quant, whatever its shape
    if scale.numel() and not bool((torch.isfinite(scale.double()) & (scale.double() > 0)).all()):
        raise ValueError(f"{prefix}scale: the state dict holds {_show(scale)}; a calibrated scale must be finite "
                         f"and > 0 ({fq.name}); the state dict is damaged: calibrate the model again")
    zp = state_dict.get(prefix + "zero_point")
    if isinstance(zp, torch.Tensor) and zp.numel() and (zp.is_floating_point() or int(zp.min()) < fq.dtype.qmin
                                                       or int(zp.max()) > fq.dtype.qmax):
        raise ValueError(f"{prefix}zero_point: the state dict holds {_show(zp)}, outside {fq.dtype}'s range "
                         f"[{fq.dtype.qmin}, {fq.dtype.qmax}] ({fq.name}); the state dict is damaged")
    fixed_scalar = getattr(fq.observer, "scale", None)
    fixed_scalar = isinstance(fixed_scalar, torch.Tensor) and fixed_scalar.dim() == 0
    if fq.ch_axis is None and scale.numel() != 1:
        got = f"{scale.numel()} per-channel scales"
    elif fq.ch_axis is not None and scale.dim() != 1 and not fixed_scalar:
        got = f"a scale of shape {list(scale.shape)}"
    elif fq.ch_axis is not None and bool(fq.calibrated) and fq.scale.dim() == 1 \
            and scale.dim() == 1 and scale.numel() != fq.scale.numel():
        got = f"{scale.numel()} per-channel scales where this model has {fq.scale.numel()} channels"
    else:
        return
    want = "one scale (per tensor)" if fq.ch_axis is None else f"one scale per channel along axis {fq.ch_axis}"
    raise ValueError(f"{prefix}scale: the state dict holds {got}, but {fq.name} takes {want}; "
                     "the state dict comes from a differently prepared model")


def loadable_state(fq, state_dict: dict, prefix: str) -> dict:
    """The state dict ``fq`` (a ``FakeQuantize``) loads: its dtype record checked (or, saved before
    it existed, filled in), its scales checked, its buffers resized to the saved shapes, the learned
    scale of an LSQ fake-quant, and an empty ``float_weight`` where the file has none (saved before
    it existed). ``state_dict`` is copied only where something is filled in (a prepared model's
    pre-hook, ``tolerate_observer_changes``, fills them in place for all its fake-quants at once)."""
    def filled(key, value):
        nonlocal state_dict
        state_dict = dict(state_dict)
        state_dict[prefix + key] = value

    if prefix + "qdtype" in state_dict:
        check_saved_dtype(fq, state_dict[prefix + "qdtype"], prefix)
    else:  # saved before the dtype was recorded: nothing to compare, nothing missing
        filled("qdtype", dtype_code(fq.dtype))
    check_saved_scale(fq, state_dict, prefix)
    for key in ("scale", "zero_point"):
        if prefix + key in state_dict:
            getattr(fq, key).resize_(state_dict[prefix + key].shape)
    if fq.learnable and prefix + "learned_scale" in state_dict:
        fq.learned_scale.data = torch.empty_like(state_dict[prefix + "learned_scale"])
    elif fq.learnable and prefix + "scale" in state_dict:
        filled("learned_scale", state_dict[prefix + "scale"].clone().float())
    if prefix + "float_weight" not in state_dict:
        filled("float_weight", torch.empty(0))
    saved = state_dict[prefix + "float_weight"]
    if isinstance(saved, torch.Tensor) and saved.shape != fq.float_weight.shape:
        fq.float_weight = torch.empty(saved.shape, dtype=fq.float_weight.dtype, device=fq.float_weight.device)
    return state_dict


def _fill_missing(fq, state_dict: dict, prefix: str) -> None:
    """In place, the keys a file saved before they existed lacks for ``fq`` (as ``loadable_state``
    fills them), where the file holds ``fq`` at all: done once per load instead of one copy of the
    whole state dict per fake-quant."""
    if prefix + "scale" not in state_dict:
        return
    state_dict.setdefault(prefix + "qdtype", dtype_code(fq.dtype))
    state_dict.setdefault(prefix + "float_weight", torch.empty(0))
    if fq.learnable and prefix + "learned_scale" not in state_dict:
        state_dict[prefix + "learned_scale"] = state_dict[prefix + "scale"].clone().float()


FQ_CONTAINER = "eq_fq"   # the prepared model's container of its FakeQuantizes (``prepare``)


def tolerate_observer_changes(module, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
    """The prepared model's ``load_state_dict`` pre-hook. Loading a calibrated state dict into a model
    prepared with another template (e.g. the fixed-scale QAT one) keeps the scales and drops
    observer statistics of other observer types. A weight whose grid a rounding pass fixed
    (calibration's GPTQ step, ``ptq.gptq``, ``ptq.adaround``: a ``FixedScaleObserver`` holding
    ``scale`` and ``zero_point``) stays fixed in a model prepared with a calibration template, so
    that the loaded model computes and recalibrates as the saved one; a QAT template's weights
    train, and their observers keep following them."""
    from .observers import FixedScaleObserver

    fqs = getattr(module, FQ_CONTAINER, None)
    if fqs is None:
        return
    qat = getattr(module, "meta", {}).get("edgequant", {}).get("qat", False)
    for key, fq in fqs.items():
        _fill_missing(fq, state_dict, f"{prefix}{FQ_CONTAINER}.{key}.")
        base = f"{prefix}{FQ_CONTAINER}.{key}.observer."
        theirs = {k for k in state_dict if k.startswith(base)}
        if fq.is_weight and not qat and theirs == {base + "scale", base + "zero_point"} \
                and not isinstance(fq.observer, FixedScaleObserver):
            scale = state_dict[base + "scale"]
            fixed = FixedScaleObserver(scale, zero_point=state_dict[base + "zero_point"], dtype=fq.dtype,
                                       ch_axis=fq.ch_axis if scale.dim() else None)
            fixed.name = getattr(fq.observer, "name", fixed.name)
            fq.observer, fq.fixed_scale = fixed.to(scale.device), True
        ours = {base + k for k in fq.observer.state_dict()}
        if theirs and theirs != ours:
            for k in theirs:
                del state_dict[k]
            for k in ours:
                state_dict[k] = fq.observer.state_dict()[k[len(base):]]
