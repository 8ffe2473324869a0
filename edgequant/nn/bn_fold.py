"""BatchNormFold: a conv1d/conv2d/linear + BatchNorm pair kept for QAT (simulated folding).

Takes the parameters of one weighted op and the batch norm after it (moved here from the
prepared model: the op's ``weight`` and ``bias``, BN's ``bn_weight``/``bn_bias`` (gamma, beta),
``running_mean``, ``running_var``, ``num_batches_tracked``); returns, at three call sites of the
prepared graph, the tensors the op uses: ``unit("weight")`` the folded weight (before the weight
fake-quant), ``unit("bias")`` the folded bias, ``unit("output", y)`` the op's output as BN would
have given it. ``prepare`` (``edgequant.qat_bn``) writes those calls when a model in train mode is
prepared with a QAT template. The scheme is the simulated fold of Jacob et al. 2018 (section 3.2)
and Krishnamoorthi 2018 (section 3.2), as torch.ao's ``_ConvBnNd``:

- training (``self.training`` and not ``frozen``): ``w' = w * s`` with ``s = gamma / sqrt(running_var
  + eps)`` (the statistics before this step's update), fake-quantized; the op runs without bias;
  the output is divided by ``s`` per channel, the op's bias added, then batch-normalised with the
  batch statistics, which updates ``running_mean``/``running_var``. The forward value is BN of
  the (fake-quantized) op, and gamma, beta, w and b all get gradients.
- eval, or ``frozen`` (``edgequant.freeze_bn``): the folded op itself, ``w' = w * s`` and
  ``b' = (b - running_mean) * s + beta``, with the output passed through: exactly the conv the
  integer model runs (export folds with the same expressions, ``export_ir``). Statistics stay.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormFold(nn.Module):
    """One conv/linear + BatchNorm unit (see the module docstring).

    Args:
        weight, bias: the op's weight (output channels on dim 0) and bias (or None).
        bn_weight, bn_bias: BN's gamma and beta (None: 1 and 0, not trained).
        running_mean, running_var, num_batches_tracked: BN's statistics.
        eps, momentum: BN's; ``momentum=None`` is the cumulative average, as in ``nn.BatchNorm``.
        names: the constant names export gives the folded weight and bias.
    """

    def __init__(self, weight: torch.Tensor, bias, bn_weight, bn_bias, running_mean: torch.Tensor,
                 running_var: torch.Tensor, num_batches_tracked=None, eps: float = 1e-5,
                 momentum: float | None = 0.1, names: tuple[str, str] = ("weight", "bias")):
        super().__init__()
        c = running_var.numel()
        self.weight = _param(weight)
        self.bias = _param(bias) if bias is not None else None
        self.bn_weight = _param(bn_weight) if bn_weight is not None else None
        self.bn_bias = _param(bn_bias) if bn_bias is not None else None
        self.register_buffer("running_mean", running_mean.detach().clone())
        self.register_buffer("running_var", running_var.detach().clone())
        nbt = num_batches_tracked if num_batches_tracked is not None else torch.zeros((), dtype=torch.long)
        self.register_buffer("num_batches_tracked", nbt.detach().clone())
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.eps, self.momentum, self.channels = float(eps), momentum, c
        self.names = tuple(names)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}, frozen={bool(self.frozen)}"

    # -- torch.ao's names -----------------------------------------------------------------------
    def freeze_bn_stats(self) -> "BatchNormFold":
        """Use the running statistics from now on, in train mode too, and stop updating them."""
        self.frozen.fill_(True)
        return self

    def update_bn_stats(self) -> "BatchNormFold":
        """Undo ``freeze_bn_stats``: train mode normalises by batch statistics and updates them."""
        self.frozen.fill_(False)
        return self

    def simulating_batch_stats(self) -> bool:
        return self.training and not bool(self.frozen)

    # -- the fold ----------------------------------------------------------------------------------
    def _gamma_beta(self):
        gamma = self.bn_weight if self.bn_weight is not None else torch.ones_like(self.running_var)
        beta = self.bn_bias if self.bn_bias is not None else torch.zeros_like(self.running_var)
        return gamma, beta

    def factor(self) -> torch.Tensor:
        """``gamma / sqrt(running_var + eps)`` per output channel (as ``fuse.fold_batch_norms``)."""
        return self._gamma_beta()[0] / torch.sqrt(self.running_var + self.eps)

    def folded_weight(self) -> torch.Tensor:
        shape = [1] * self.weight.dim()
        shape[0] = -1
        return self.weight * self.factor().reshape(shape)

    def folded_bias(self) -> torch.Tensor:
        b = self.bias if self.bias is not None else torch.zeros_like(self.running_mean)
        return (b - self.running_mean) * self.factor() + self._gamma_beta()[1]

    def forward(self, part: str, y: torch.Tensor | None = None):
        if part == "weight":
            return self.folded_weight()
        if part == "bias":
            return None if self.simulating_batch_stats() else self.folded_bias()
        if part != "output":
            raise ValueError(f"BatchNormFold: unknown part {part!r}")
        if not self.simulating_batch_stats():
            return y
        shape = [1] * y.dim()
        shape[1] = -1
        raw = y / self.factor().reshape(shape)           # the unfolded op's output
        if self.bias is not None:
            raw = raw + self.bias.reshape(shape)
        self.num_batches_tracked.add_(1)
        average = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        gamma, beta = self._gamma_beta()
        return F.batch_norm(raw, self.running_mean, self.running_var, gamma, beta, True, average, self.eps)

    # -- export ------------------------------------------------------------------------------------
    def export_ir(self, exporter, node):
        """The folded weight and bias as constants (the running statistics, gamma, beta and eps at
        export time, by the expressions the eval-mode simulation uses); the output passes through."""
        part = node.args[0]
        if part == "output":
            return exporter.env[node.args[1]]
        with torch.no_grad():
            value = self.folded_weight() if part == "weight" else self.folded_bias()
        return exporter._const(self.names[0 if part == "weight" else 1], value)


def _param(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone())


def bn_fold_units(model: nn.Module):
    """Every ``BatchNormFold`` of ``model``."""
    return [m for m in model.modules() if isinstance(m, BatchNormFold)]


__all__ = ["BatchNormFold", "bn_fold_units"]
