"""The torch.distributed collectives on calibration statistics: one module at a time.

Takes one observer (or one ``BiasCorrection``) on every rank of an initialised process group;
after ``sync_observer(m)`` (or ``sync_sums(m)``) every rank holds the same statistics, hence bitwise identical qparams.
Nothing happens when torch.distributed is not initialised or the world has one rank, so
single-process code pays nothing. It knows modules only by their protocol (``REDUCTIONS``,
``statistics()``/``load_statistics()``, ``histogram``), never by class: ``fake_quant`` calls it
from inside a forward, and ``edgequant.distributed`` walks whole models with it.

What is reduced (``REDUCTIONS`` of each observer, docs/observers.md "Merging"):

- min-max observers: ``min_val`` all-reduce MIN, ``max_val`` MAX (exact: equals one process
  observing every rank's batches);
- moving-average min-max: mean of the ranks' ranges (sum / number of ranks that saw data; an
  unseen rank is neutral);
- histogram observers (percentile, MSE, KL): phase 1 reduces ``min_val`` (MIN), ``max_val``
  (MAX), ``log2_width`` (MAX), every rank re-bins onto that shared grid (``Histogram.align_``,
  exact), phase 2 sums the counts (float64 integers: exact). Equals one process observing every
  batch (binning is exact);
- a module without ``statistics()`` whose ``REDUCTIONS`` name its own buffers
  (``BiasCorrection``: ``input_sum`` and ``count``): the buffers are summed.

Sums are not idempotent, so each module remembers what it held after its last sync (its
baseline, ``mark_module_synced``) and only the *new* part (local minus that baseline, on the
shared grid for histograms) is summed: a second sync, or a second calibration phase, never
counts a batch twice. Finally every reduced statistic is broadcast from rank 0, so
floating-point sums and means are bitwise identical on all ranks whatever the backend's
reduction order.
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


def _is_observer(mod: nn.Module) -> bool:
    """An observer (``statistics()``/``load_statistics()``), not a module of summed buffers."""
    return hasattr(mod, "load_statistics")


@torch.no_grad()
def sync_sums(mod: nn.Module, group=None) -> None:
    """Sum the buffers ``mod.REDUCTIONS`` names (BiasCorrection): only what was added since the
    last sync is reduced."""
    if not is_distributed(group):
        return
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


def sync_modules(mods, group=None) -> None:
    """Synchronise each of ``mods`` (observers and modules of summed buffers), in order: every
    rank must pass the same modules in the same order (the collectives pair up by position)."""
    if not is_distributed(group):
        return
    for m in mods:
        (sync_observer if _is_observer(m) else sync_sums)(m, group)


def mark_module_synced(mod: nn.Module) -> None:
    """Take ``mod``'s current sums as already global: the next sync adds only what comes after."""
    if not _is_observer(mod):
        object.__setattr__(mod, _BASE, {k: getattr(mod, k).clone() for k in mod.REDUCTIONS})
    elif hasattr(mod, "histogram"):
        object.__setattr__(mod, _BASE, copy.deepcopy(mod.histogram))


def forget_module_sync(mod: nn.Module) -> None:
    """Drop ``mod``'s baseline: the next sync sums everything it holds."""
    if _BASE in mod.__dict__:
        object.__delattr__(mod, _BASE)


__all__ = ["is_distributed", "sync_observer", "sync_sums", "sync_modules", "mark_module_synced",
           "forget_module_sync"]
