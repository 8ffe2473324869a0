"""Compare: float model vs fake-quant simulation vs integer model, per output and per layer.

Takes the float model, the prepared (calibrated or QAT) model, the converted integer graph and
a batch of inputs; returns a ``Comparison`` with one row per model output and one row per
quantized tensor of the integer graph. Each row holds, for the pairs float/sim, float/int and
sim/int, the cosine similarity, the SQNR in dB (``10 log10(sum a^2 / sum (a - b)^2)``) and, for
sim/int, the largest difference in units of the tensor's quantization step (LSB) and the share
of elements that differ at all. Per-layer float and simulation values come from the exported
quant-level graph run without and with fake quantization; integer values are dequantized with
their own qparams.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

from ..argcheck import expect_graph, expect_module, expect_prepared
from ..export import export
from ..ir import Graph
from ..metrics import cosine, sqnr
from ..ops import is_dequantize
from ..qmath import dequantize
from ..run import run


@dataclass
class Comparison:
    outputs: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)

    def worst_layers(self, k: int = 5, key: str = "sqnr_float_int") -> list[dict]:
        return sorted(self.layers, key=lambda r: r[key])[:k]

    def __str__(self) -> str:
        head = f"{'tensor':<36}{'cos f/sim':>10}{'cos f/int':>10}{'SQNR f/int':>11}{'max LSB sim/int':>16}{'% differ':>9}"
        lines = ["outputs", head]
        for r in self.outputs + [{"name": "-" * 10}] + self.layers:
            if "cos_float_sim" not in r:
                lines.append("layers")
                continue
            lines.append(f"{r['name'][:35]:<36}{r['cos_float_sim']:>10.5f}{r['cos_float_int']:>10.5f}"
                         f"{r['sqnr_float_int']:>11.2f}{r.get('max_lsb_sim_int', float('nan')):>16.2f}"
                         f"{100 * r.get('share_differ', float('nan')):>9.3f}")
        return "\n".join(lines)


def _row(name, f, s, i, step=None) -> dict:
    row = {"name": name, "cos_float_sim": cosine(f, s), "cos_float_int": cosine(f, i), "cos_sim_int": cosine(s, i),
           "sqnr_float_sim": sqnr(f, s), "sqnr_float_int": sqnr(f, i), "sqnr_sim_int": sqnr(s, i),
           "max_abs_sim_int": float((s.double() - i.double()).abs().max()) if s.numel() else 0.0}
    if step is not None:
        diff = ((s.double() - i.double()).abs() / step.double())
        row["max_lsb_sim_int"] = float(diff.max()) if diff.numel() else 0.0
        row["share_differ"] = float((diff > 1e-6).double().mean()) if diff.numel() else 0.0
    return row


def _step(qp, t: torch.Tensor) -> torch.Tensor:
    s = qp.scale_tensor()
    if qp.ch_axis is not None and s.numel() > 1:
        shape = [1] * t.dim()
        shape[qp.ch_axis % t.dim()] = -1
        s = s.reshape(shape)
    return s.expand_as(t) if t.dim() else s


def compare(float_model, calib_model, quantized: Graph, inputs) -> Comparison:
    """Per-output and per-layer agreement of the three stages on ``inputs`` (module docstring)."""
    expect_module(float_model, "compare", "float_model")
    expect_prepared(calib_model, "compare", "calib_model")
    expect_graph(quantized, "compare", "quantized")
    xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    with torch.no_grad():
        s_out = pytree.tree_leaves(calib_model(*xs))  # first: it checks the inputs and names a wrong one
        f_out = pytree.tree_leaves(float_model(*xs))
        i_out = pytree.tree_leaves(quantized(*xs))
    result = Comparison()
    producer = quantized.producer()
    for k, (f, s, i) in enumerate(zip(f_out, s_out, i_out)):
        if isinstance(f, torch.Tensor) and f.is_floating_point():
            step = None
            name = quantized.outputs[k] if k < len(quantized.outputs) else None
            node = producer.get(name) if isinstance(name, str) else None
            if node is not None and is_dequantize(node.op):  # the output's LSB: the grid it leaves
                qp = quantized.values[node.inputs[0]].qparams
                step = _step(qp, i) if qp is not None else None
            result.outputs.append(_row(f"output {k}", f, s, i, step))
    ir = export(calib_model)
    _, f_env = run(ir, *xs, return_intermediates=True, fake_quant=False)
    _, s_env = run(ir, *xs, return_intermediates=True)
    _, i_env = run(quantized, *xs, return_intermediates=True)
    hp = {o for n in ir.nodes if n.attrs.get("high_precision") for o in n.outputs}
    for node in quantized.nodes:
        for name in node.outputs:
            v = quantized.values.get(name)
            if v is None or v.qparams is None or name not in f_env or name not in s_env:
                continue
            sim_v = ir.values.get(name)
            if sim_v is None or (sim_v.qparams is None and name not in hp):
                continue  # a fused intermediate: the simulation keeps it unquantized, pre-activation
            q = i_env[name]
            if not isinstance(q, torch.Tensor) or q.is_floating_point():
                continue
            deq = dequantize(q, v.qparams.scale_tensor(), v.qparams.zero_point_tensor(), v.qparams.ch_axis)
            row = _row(node.name, f_env[name], s_env[name], deq, _step(v.qparams, deq))
            row.update({"op": node.op, "dtype": v.dtype})
            result.layers.append(row)
    return result
