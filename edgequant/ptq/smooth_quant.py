"""SmoothQuant-style scale migration (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models") for the linears that read a LayerNorm.

``smooth_quant(model, batches, alpha=0.5)`` takes a float model (left untouched) and calibration
batches (tensors or tuples of model inputs) and returns a new float model that computes the same
function, in which the inputs of the linears fed by a ``nn.LayerNorm`` have their per-channel
outliers moved into the weights. For the linears reading one LayerNorm output (a transformer's
Q/K/V projections, its first MLP layer) it measures each input channel's largest magnitude
``|x_j|`` over the batches and the largest weight magnitude of that input column ``|w_j|`` (over
the group), and takes ``s_j = |x_j| ** alpha / |w_j| ** (1 - alpha)``: the input channel ``j``
is divided by ``s_j`` and the weight column ``j`` multiplied by it. Where it goes:

- the LayerNorm output is read by these linears only (pre-norm transformers): ``1 / s`` is folded
  into the LayerNorm's weight and bias, so the graph does not change;
- the LayerNorm output is read by something else too (post-norm transformers such as BERT, whose
  layer-norm output is also the residual shortcut, which must keep its outliers: the next layer
  norm's statistics need them): each linear becomes a ``SmoothedLinear`` that multiplies its
  input by the constant ``1 / s`` first, so only the product's input is smoothed. The constant is
  a quantized tensor in the integer model, so its entries are snapped to ``k / 127`` of its
  largest entry (``k`` in 1..127): every int8 or int16 quantization of it is then exact, and the
  weights take the ``s`` that goes with the snapped values.

The result is meant for ``prepare``. Smoothing helps where the tensor before the scaling is
quantized finer than the product's input: a LayerNorm folded this way, or a ``SmoothedLinear``
whose input is int16 while the multiply's output is int8 (``gemm_int8_calibration_qconfig_setter``,
which gives int16 to a tensor that a non-GEMM reads). With an int8 LayerNorm output (the int8
template on BERT) the multiply reads an already rounded int8 tensor and gains nothing. Measured on
all-MiniLM-L6-v2 (sentence cosine on the benchmark's 48 held-out sentences, 32 for calibration):
see ``tests/test_smooth_quant.py``.

``smoothed.eq_smooth_quant`` (a dict on the returned model) says, per LayerNorm, which linears were
smoothed, how (``"folded"`` or ``"scaled input"``) and the largest and smallest ``s``.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

from ..argcheck import check_batch, expect_batches, expect_module
from ..fake_quant import run_batch

SNAP_LEVELS = 127   # the constant 1/s of a SmoothedLinear lies on an int8 grid of its largest entry


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)``: a linear whose weight columns were multiplied by ``1 / inv_scale``."""

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale.detach().to(linear.weight.dtype))

    def forward(self, x):
        return self.linear(x * self.inv_scale)


def _run(model: nn.Module, batches) -> int:
    n = 0
    with torch.no_grad():
        for b in batches:
            check_batch(b, n, "smooth_quant")
            run_batch(model, b)
            n += 1
    return n


def _example(batches):
    b = next(iter(batches), None)
    if b is None:
        raise ValueError("smooth_quant: batches is empty; it needs calibration batches to measure the inputs")
    if isinstance(b, dict):
        raise TypeError("smooth_quant: batches must be tensors or tuples of positional model inputs "
                        "(the model is captured with the first one), got a dict")
    return tuple(b) if isinstance(b, (tuple, list)) else (b,)


def _groups(model: nn.Module, example) -> list[tuple[str, list[str], bool]]:
    """``(layer norm path, [linear paths], only_linears)`` for each LayerNorm output read by linears."""
    from ..capture import capture

    gm = capture(model, example, ())
    modules = dict(model.named_modules())

    def module_of(node: fx.Node, kind):
        """The path of the ``kind`` module whose forward is ``node`` (nn.LayerNorm and nn.Linear
        each run one op: the layer norm with its affine parameters, the weighted product)."""
        spec, path = node.meta.get("eq_spec"), node.meta.get("eq_path")
        mod = modules.get(path) if isinstance(path, str) else None
        if spec is None or not isinstance(mod, kind):
            return None
        return path if (spec.weighted if kind is nn.Linear else bool(spec.param_args)) else None

    calls = Counter(n.meta.get("eq_path") for n in gm.graph.nodes if n.meta.get("eq_spec") is not None)
    groups = []
    for node in gm.graph.nodes:
        ln = module_of(node, nn.LayerNorm)
        if ln is None or calls[ln] != 1:
            continue
        linears, others = [], 0
        for u in node.users:
            lin = module_of(u, nn.Linear)
            if lin is not None and u.args and u.args[0] is node and calls[lin] == 1 and node not in u.args[1:]:
                linears.append(lin)
            else:
                others += 1
        if linears:
            groups.append((ln, linears, others == 0))
    return groups


def _snap(inv: torch.Tensor) -> torch.Tensor:
    """``inv`` scaled to a largest entry of 1 and rounded to ``k / SNAP_LEVELS``, ``k >= 1``."""
    inv = inv / inv.max()
    return (inv * SNAP_LEVELS).round().clamp(min=1) / SNAP_LEVELS


def smooth_quant(model: nn.Module, batches, alpha: float = 0.5) -> nn.Module:
    """A copy of ``model`` with the inputs of the linears fed by LayerNorms smoothed (module
    docstring). ``alpha`` in [0, 1]: how much of each channel's range moves into the weights
    (0: none, 1: all)."""
    expect_module(model, "smooth_quant", "model")
    expect_batches(batches, "smooth_quant", "batches")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"smooth_quant: alpha must be a number in [0, 1], got {alpha!r}")
    batches = list(batches)
    example = _example(batches)
    smoothed = copy.deepcopy(model).eval()
    groups = _groups(smoothed, example)
    modules = dict(smoothed.named_modules())
    absmax: dict[str, torch.Tensor] = {}

    def hook(path):
        def record(_mod, args):
            x = args[0].detach()
            a = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
            absmax[path] = a if path not in absmax else torch.maximum(absmax[path], a)
        return record

    handles = [modules[lin].register_forward_pre_hook(hook(lin)) for _, lins, _ in groups for lin in lins]
    try:
        _run(smoothed, batches)
    finally:
        for h in handles:
            h.remove()
    report = {}
    for ln_path, lins, only_linears in groups:
        lins = [p for p in lins if p in absmax]
        if not lins:
            continue
        x_max = torch.stack([absmax[p] for p in lins]).amax(0).clamp(min=1e-5)
        w_max = torch.stack([modules[p].weight.detach().abs().amax(0).float() for p in lins]).amax(0).clamp(min=1e-5)
        s = x_max.pow(float(alpha)) / w_max.pow(1.0 - float(alpha))
        ln = modules[ln_path]
        foldable = only_linears and ln.weight is not None and ln.weight.shape == s.shape
        with torch.no_grad():
            if foldable:
                ln.weight.div_(s.to(ln.weight))
                if ln.bias is not None:
                    ln.bias.div_(s.to(ln.bias))
            else:
                inv = _snap(1.0 / s)
                s = 1.0 / inv
            for p in lins:
                lin = modules[p]
                lin.weight.mul_(s.to(lin.weight)[None, :])
                if not foldable:
                    parent, _, leaf = p.rpartition(".")
                    setattr(smoothed.get_submodule(parent) if parent else smoothed, leaf,
                            SmoothedLinear(lin, inv.to(lin.weight.device)))
        report[ln_path] = {"linears": lins, "mode": "folded" if foldable else "scaled input",
                           "max_scale": float(s.max()), "min_scale": float(s.min())}
    smoothed.eq_smooth_quant = report
    return smoothed
