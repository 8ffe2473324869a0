"""Calibration and QAT under torch.distributed: a prepared model's observers agree across ranks.

Takes a prepared model on every rank of an initialised process group; after
``sync_observers(model)`` every rank holds the same statistics, hence bitwise identical qparams.
Nothing happens when torch.distributed is not initialised or the world has one rank, so
single-process code pays nothing. This module walks whole models (the modules
``fake_quant.shared_statistics`` lists: activation observers and BiasCorrections); the
collectives on one module, and what each statistic reduces by, are ``edgequant.collectives``
(``is_distributed`` and ``sync_observer`` are re-exported from there).

Sums are reduced only for what was added since the last sync, so after loading
already-synchronised statistics from a checkpoint call ``mark_synced(model)``; after
``reset()`` of an observer call ``forget_sync(model)``.

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

BatchNorm kept for QAT (a model prepared in train mode, ``edgequant.qat_bn``): gamma and beta are
parameters used in every forward, so DDP averages their gradients and needs no
``find_unused_parameters``; each rank normalises by its own batch statistics and DDP's
``broadcast_buffers`` gives every rank rank 0's running statistics at each forward, as for
``nn.BatchNorm`` under DDP (no SyncBatchNorm). After ``freeze_bn`` the running statistics are equal
on all ranks and fixed, so the folded weights and their qparams are identical again.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .collectives import forget_module_sync, is_distributed, mark_module_synced, sync_modules, sync_observer
from .fake_quant import expect_fake_quant, fake_quant_modules, shared_statistics


@torch.no_grad()
def sync_observers(model: nn.Module, group=None) -> nn.Module:
    """Synchronise every activation observer and BiasCorrection of ``model`` across ranks.

    All ranks must call it (it issues collectives in module order). No-op without an
    initialised multi-rank process group. Returns ``model``.
    """
    expect_fake_quant(model, "sync_observers", "model")
    sync_modules(shared_statistics(model), group)
    return model


def mark_synced(model: nn.Module) -> nn.Module:
    """Declare the current statistics already global (e.g. loaded from a synced checkpoint)."""
    expect_fake_quant(model, "mark_synced", "model")
    for m in shared_statistics(model):
        mark_module_synced(m)
    return model


def forget_sync(model: nn.Module) -> nn.Module:
    """Forget the baselines (after resetting observers by hand)."""
    expect_fake_quant(model, "forget_sync", "model")
    for m in shared_statistics(model):
        forget_module_sync(m)
    return model


@torch.no_grad()
def broadcast_qparams(model: nn.Module, src: int = 0, group=None) -> nn.Module:
    """Copy every FakeQuantize's ``scale``/``zero_point`` (and learned scale) from rank ``src``."""
    expect_fake_quant(model, "broadcast_qparams", "model")
    if not is_distributed(group):
        return model
    for _, m in fake_quant_modules(model):
        for t in (m.scale, m.zero_point, m.calibrated):
            dist.broadcast(t, src, group=group)
        if m.learnable:
            dist.broadcast(m.learned_scale.data, src, group=group)
    return model


__all__ = ["is_distributed", "sync_observer", "sync_observers", "mark_synced", "forget_sync", "broadcast_qparams"]
