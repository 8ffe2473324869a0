"""Calibration and QAT under torch.distributed: observers agree across ranks.

Takes a prepared model (or one observer / BiasCorrection) on every rank of an initialised
process group; after ``sync_observers(model)`` every rank holds the same statistics, hence
bitwise identical qparams. Nothing happens when torch.distributed is not initialised or the
world has one rank, so single-process code pays nothing.

What is reduced (``REDUCTIONS`` of each observer, docs/observers.md "Merging"):

- min-max observers: ``min_val`` all-reduce MIN, ``max_val`` MAX (exact: equals one process
  observing every rank's batches);
- moving-average min-max: mean of the ranks' ranges (sum / number of ranks that saw data; an
  unseen rank is neutral);
- histogram observers (percentile, MSE, KL): phase 1 reduces ``min_val`` (MIN), ``max_val``
  (MAX), ``log2_width`` (MAX), every rank re-bins onto that shared grid (``Histogram.align_``,
  exact), phase 2 sums the counts (float64 integers: exact). Equals one process observing every
  batch (binning is exact);
- ``BiasCorrection``: ``input_sum`` and ``count`` are summed.

Sums are not idempotent, so each module remembers what it held after its last sync and only
the *new* part (local minus that baseline, on the shared grid for histograms) is summed: a
second sync, or a second calibration phase, never counts a batch twice. After loading
already-synchronised statistics from a checkpoint call ``mark_synced(model)``; after
``reset()`` of an observer call ``forget_sync(model)``.
Finally every reduced statistic is broadcast from rank 0, so floating-point sums and means are
bitwise identical on all ranks whatever the backend's reduction order.

When it happens (all ranks run the same model code, so all issue the same collectives in the
same order):

- ``set_fake_quantize(model, state)`` leaving CALIBRATION or QAT syncs every activation
  observer and BiasCorrection *before* the ranges are frozen into ``scale``/``zero_point``;
- in QAT, a moving-average (non-fixed, non-learnable) ``FakeQuantize`` syncs its observer in
  every forward, between the update and ``freeze_qparams``: each rank moves the common range by
  its own batch, the mean is where one update with the mean batch min/max would go, and the
  scales stay identical on all ranks at every step. Learnable scales (LSQ) are parameters and
  DDP averages their gradients; fixed scales never change;
- ``sync_observers(model)`` explicitly, e.g. before reading qparams while still calibrating.

Calibrate the unwrapped model, not through ``DistributedDataParallel``: its ``broadcast_buffers``
copies rank 0's buffers over the other ranks' at every forward, which would overwrite their
histogram counts before the sync. In QAT that broadcast is harmless (statistics are equal after
every step's sync).

Weight fake-quants are not synced: their qparams come from the current weights, which are
identical on all ranks (same initial model; DDP keeps them identical).
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

_BASE = "_eq_sync_base"  # attribute holding the statistics a module had after its last sync
_MAX_DIMS = 8


def is_distributed(group=None) -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


_OPS = {"min": "MIN", "max": "MAX", "sum": "SUM"}


def _all_reduce(t: torch.Tensor, how: str, group=None) -> torch.Tensor:
    t = t.contiguous()
    dist.all_reduce(t, getattr(dist.ReduceOp, _OPS[how]), group=group)
    return t


def _broadcast(t: torch.Tensor, group=None) -> torch.Tensor:
    t = t.contiguous()
    dist.broadcast(t, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return t


def _agree_shape(t: torch.Tensor, group=None) -> torch.Size:
    """The shape of the non-empty copies of ``t`` (a rank that saw nothing may hold ``[0]``)."""
    v = torch.zeros(_MAX_DIMS + 1, dtype=torch.int64, device=t.device)
    if t.numel():
        v[0] = t.dim()
        v[1:1 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64, device=t.device)
    v = _all_reduce(v, "max", group)
    nd = int(v[0])
    return torch.Size(v[1:1 + nd].tolist()) if nd else t.shape


def _neutral(how: str, shape, like: torch.Tensor) -> torch.Tensor:
    fill = {"min": float("inf"), "max": -float("inf"), "mean": float("inf"), "sum": 0.0}[how]
    return torch.full(shape, fill, dtype=like.dtype, device=like.device)


def _reduce_stat(t: torch.Tensor, how: str, group=None) -> torch.Tensor:
    shape = _agree_shape(t, group) if t.dim() > 0 else t.shape
    if t.shape != shape:
        t = _neutral(how, shape, t)
    if how in ("min", "max", "sum"):
        out = _all_reduce(t.clone(), how, group)
    elif how == "mean":  # mean of the ranks that saw data (inf marks an unseen side)
        seen = ~torch.isinf(t)
        total = _all_reduce(torch.where(seen, t, torch.zeros_like(t)).double(), "sum", group)
        n = _all_reduce(seen.double(), "sum", group)
        out = torch.where(n > 0, (total / n.clamp(min=1)).to(t.dtype), t)
    else:
        raise ValueError(f"unknown reduction {how!r}")
    return _broadcast(out, group)


# ---- one module ------------------------------------------------------------------------------------
@torch.no_grad()
def sync_observer(obs: nn.Module, group=None) -> None:
    """Synchronise one observer's statistics across the ranks of ``group`` (all ranks must call)."""
    if not is_distributed(group):
        return
    stats = obs.statistics()
    how = obs.REDUCTIONS
    if not how:
        return
    if "counts" in stats and hasattr(obs, "histogram"):
        _sync_histogram(obs, group)
        return
    obs.load_statistics({k: _reduce_stat(stats[k], how[k], group) for k in how})


def _sync_histogram(obs: nn.Module, group=None) -> None:
    h = obs.histogram
    base = getattr(obs, _BASE, None)
    if base is not None and float(base.counts.sum()) > float(h.counts.sum()):
        base = None  # the observer was reset since: nothing of the old sync remains
    lo = _reduce_stat(h.min_val.clone(), "min", group)
    hi = _reduce_stat(h.max_val.clone(), "max", group)
    e = _reduce_stat(h.log2_width.clone(), "max", group)
    h.align_(float(lo), float(hi), int(e))
    new = h.counts.clone()
    if base is not None:
        base.align_(float(lo), float(hi), int(e))
        new -= base.counts
    total = _all_reduce(new, "sum", group)
    if base is not None:
        total += base.counts
    h.counts.copy_(_broadcast(total, group))
    object.__setattr__(obs, _BASE, copy.deepcopy(h))


def _sync_sums(mod: nn.Module, group=None) -> None:
    """Sum statistics (BiasCorrection): only what was added since the last sync is reduced."""
    base = getattr(mod, _BASE, None)
    names = list(mod.REDUCTIONS)
    if base is not None and float(mod.count) < float(base["count"]):
        base = None  # reset since
    out = {}
    for k in names:
        t = getattr(mod, k)
        shape = _agree_shape(t, group) if t.dim() > 0 else t.shape
        local = t if t.shape == shape else torch.zeros(shape, dtype=t.dtype, device=t.device)
        delta = local.clone()
        if base is not None and base[k].shape == shape:
            delta -= base[k]
        total = _all_reduce(delta, "sum", group)
        if base is not None and base[k].shape == shape:
            total += base[k]
        out[k] = _broadcast(total, group)
    for k, v in out.items():
        setattr(mod, k, v)
    object.__setattr__(mod, _BASE, {k: v.clone() for k, v in out.items()})


# ---- a whole model ---------------------------------------------------------------------------------
def _targets(model: nn.Module):
    from .fake_quant import BiasCorrection, FakeQuantize

    for _, m in model.named_modules():
        if isinstance(m, FakeQuantize) and not m.is_weight and getattr(m.observer, "REDUCTIONS", None):
            yield m.observer
        elif isinstance(m, BiasCorrection):
            yield m


@torch.no_grad()
def sync_observers(model: nn.Module, group=None) -> nn.Module:
    """Synchronise every activation observer and BiasCorrection of ``model`` across ranks.

    All ranks must call it (it issues collectives in module order). No-op without an
    initialised multi-rank process group. Returns ``model``.
    """
    from .argcheck import expect_fake_quant

    expect_fake_quant(model, "sync_observers", "model")
    if not is_distributed(group):
        return model
    from .fake_quant import BiasCorrection

    for m in _targets(model):
        if isinstance(m, BiasCorrection):
            _sync_sums(m, group)
        else:
            sync_observer(m, group)
    return model


def mark_synced(model: nn.Module) -> nn.Module:
    """Declare the current statistics already global (e.g. loaded from a synced checkpoint)."""
    from .argcheck import expect_fake_quant

    expect_fake_quant(model, "mark_synced", "model")
    from .fake_quant import BiasCorrection

    for m in _targets(model):
        if isinstance(m, BiasCorrection):
            object.__setattr__(m, _BASE, {k: getattr(m, k).clone() for k in m.REDUCTIONS})
        elif hasattr(m, "histogram"):
            object.__setattr__(m, _BASE, copy.deepcopy(m.histogram))
    return model


def forget_sync(model: nn.Module) -> nn.Module:
    """Forget the baselines (after resetting observers by hand)."""
    from .argcheck import expect_fake_quant

    expect_fake_quant(model, "forget_sync", "model")
    for m in _targets(model):
        if _BASE in m.__dict__:
            object.__delattr__(m, _BASE)
    return model


@torch.no_grad()
def broadcast_qparams(model: nn.Module, src: int = 0, group=None) -> nn.Module:
    """Copy every FakeQuantize's ``scale``/``zero_point`` (and learned scale) from rank ``src``."""
    from .argcheck import expect_fake_quant

    expect_fake_quant(model, "broadcast_qparams", "model")
    if not is_distributed(group):
        return model
    from .fake_quant import FakeQuantize

    for _, m in model.named_modules():
        if isinstance(m, FakeQuantize):
            for t in (m.scale, m.zero_point, m.calibrated):
                dist.broadcast(t, src, group=group)
            if m.learnable:
                dist.broadcast(m.learned_scale.data, src, group=group)
    return model


__all__ = ["is_distributed", "sync_observer", "sync_observers", "mark_synced", "forget_sync", "broadcast_qparams"]
