"""Feature-map similarity: how far apart two stages of one model are, layer by layer.

Takes two models of the same network, each any of: the float ``nn.Module``, a prepared model
(calibrated or QAT, as ``prepare`` returned it), an exported quant-level ``Graph`` or a
converted integer ``Graph``; and a batch of inputs. Returns a ``Similarity``: one row per
quantized tensor the two share (the IR value names are the common key), in graph order, with
the cosine similarity, the SQNR in dB (model_a as the reference), the largest absolute error
and that error in units of the tensor's quantization step (LSB).

How each stage is run: a prepared model is exported and its quant-level graph run with fake
quantization (the VALIDATION simulation, bit for bit); a quant-level graph is run the same
way; an integer graph is run and every integer tensor dequantized with its own qparams; a
float module is prepared afresh (no bias correction, min-max ranges from ``inputs``) and its
graph run without fake quantization, which is the float network with batch norms folded.
``stage(model, inputs)`` runs one stage; ``stage_similarity(a, b)`` compares two stages already
run, so that one run serves several comparisons (``QuantAnalysis.compare_per_layer``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..export import export
from ..fake_quant import calibrate
from ..ir import Graph
from ..ops import spec_of
from ..prepare import prepare
from ..qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter
from ..qmath import dequantize
from ..run import run
from .compare import _step, cosine, sqnr


@dataclass
class Similarity:
    """Per-layer agreement of ``model_a`` (reference) and ``model_b`` (``rows``, graph order)."""

    kind_a: str
    kind_b: str
    rows: list[dict] = field(default_factory=list)

    def worst(self, k: int = 5, key: str = "sqnr") -> list[dict]:
        """The ``k`` rows with the lowest ``key`` (``"sqnr"`` or ``"cosine"``)."""
        return sorted(self.rows, key=lambda r: r[key])[:k]

    def to_dict(self) -> dict:
        return {"kind_a": self.kind_a, "kind_b": self.kind_b, "rows": [dict(r) for r in self.rows]}

    def __str__(self) -> str:
        head = f"{'layer':<32}{'op':<12}{'dtype':<8}{'cosine':>10}{'SQNR dB':>10}{'max err':>11}{'max LSB':>10}"
        lines = [f"{self.kind_a} vs {self.kind_b}", head]
        for r in self.rows:
            lines.append(f"{r['name'][:31]:<32}{r['op'][:11]:<12}{str(r['dtype'])[:7]:<8}{r['cosine']:>10.5f}"
                         f"{r['sqnr']:>10.2f}{r['max_abs']:>11.4g}{r['max_lsb']:>10.2f}")
        return "\n".join(lines)


def stage_kind(model) -> str:
    """``"float"``, ``"prepared"``, ``"quant"`` (exported graph) or ``"int"`` (integer graph)."""
    if isinstance(model, Graph):
        return model.level
    if isinstance(model, fx.GraphModule) and "edgequant" in getattr(model, "meta", {}):
        return "prepared"
    if isinstance(model, nn.Module):
        return "float"
    raise TypeError(f"featuremap_similarity compares nn.Modules, prepared models and edgequant Graphs, "
                    f"not {type(model).__name__}")


def _float_graph(model: nn.Module, xs: tuple) -> Graph:
    calib = prepare(model, xs, qconfig_setter=(calibration_8bit_weight_16bit_act_qconfig_setter,),
                    bias_correction=False, weight_rounding="nearest")   # the float weights, as they are
    return export(calibrate(calib, [xs]))


def stage_values(model, inputs) -> tuple[Graph, dict[str, torch.Tensor]]:
    """Run one stage (module docstring) on ``inputs``: its graph and ``{value name: float tensor}``."""
    xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    kind = stage_kind(model)
    if kind == "float":
        g = _float_graph(model, xs)
        _, env = run(g, *xs, return_intermediates=True, fake_quant=False)
    elif kind == "prepared":
        g = export(model)
        _, env = run(g, *xs, return_intermediates=True)
    else:
        g = model
        _, env = run(g, *xs, return_intermediates=True)
    out = {}
    for name, t in env.items():
        if not isinstance(t, torch.Tensor):
            continue
        v = g.values.get(name)
        if kind == "int" and not t.is_floating_point():
            if v is None or v.qparams is None:
                continue
            qp = v.qparams
            t = dequantize(t, qp.scale_tensor(), qp.zero_point_tensor(), qp.ch_axis)
        if t.is_floating_point():
            out[name] = t
    return g, out


def _sites(g: Graph) -> dict[str, tuple[str, str]]:
    """``{node name: (site, op)}``, the op site that owns the node's output: an activation
    fused into a conv reports as the conv (``stem.2`` -> ``stem.0``), the name setters and
    sensitivity use."""
    into = {n.attrs["fused_into"]: n for n in g.nodes if n.attrs.get("fused_into")}
    ops = {n.name: n.op for n in g.nodes}
    out = {}
    for n in g.nodes:
        name = n.name
        while name in into and _is_activation(ops[name]):
            name = into[name].name
        out[n.name] = (name, ops[name])
    return out


def _is_activation(op: str) -> bool:
    spec = spec_of(op)
    return spec is not None and spec.activation


def featuremap_similarity(model_a, model_b, inputs) -> Similarity:
    """Per-layer cosine, SQNR and max error (absolute and in LSB) of ``model_b`` against
    ``model_a`` on ``inputs`` (see the module docstring for what each model may be)."""
    return stage_similarity(stage(model_a, inputs), stage(model_b, inputs))


def stage(model, inputs) -> tuple[str, Graph, dict[str, torch.Tensor]]:
    """``(stage_kind, graph, values)`` of one stage run on ``inputs`` (``stage_values``)."""
    return (stage_kind(model), *stage_values(model, inputs))


def stage_similarity(a: tuple[str, Graph, dict], b: tuple[str, Graph, dict]) -> Similarity:
    """``featuremap_similarity`` of two stages already run (``stage``), ``a`` the reference."""
    (kind_a, ga, va), (kind_b, gb, vb) = a, b
    # the quantized tensors: those with qparams in the graph that knows them (an integer graph
    # has qparams only on integer values; fused intermediates have none anywhere)
    ref = gb if gb.level == "int" else ga if ga.level == "int" else gb
    other = ga if ref is gb else gb
    result = Similarity(kind_a, kind_b)
    site = _sites(ga if ga.level == "quant" else gb)
    hp = {o for n in other.nodes if n.attrs.get("high_precision") for o in n.outputs}
    for node in ref.nodes:
        for name in node.outputs:
            v, ov = ref.values.get(name), other.values.get(name)
            qp = v.qparams if v is not None else None
            # both sides must hold the same tensor: a value fused away in one graph (a conv's
            # pre-activation output) has no qparams there and is skipped
            same = ov is not None and (ov.qparams is not None or name in hp)
            if (qp is None and name not in hp) or not same or name not in va or name not in vb:
                continue
            a, b = va[name].double(), vb[name].double()
            if a.shape != b.shape or not a.numel():
                continue
            diff = (a - b).abs()
            # a high-precision output has no grid before convert: its LSB is unknown there
            lsb = diff / _step(qp, diff).double() if qp is not None else torch.full_like(diff, math.nan)
            result.rows.append({"name": site.get(node.name, (node.name,))[0], "node": node.name, "value": name,
                                "op": site.get(node.name, (None, node.op))[1],
                                "dtype": qp.dtype if qp is not None else "qint32",
                                "cosine": cosine(a, b), "sqnr": sqnr(a, b), "max_abs": float(diff.max()),
                                "max_lsb": float(lsb.max()), "mean_lsb": float(lsb.mean())})
    return result


def finite(x: float, cap: float = 100.0) -> float:
    """``x`` with infinities replaced by ``+-cap`` (for plots and sorting)."""
    return cap if x == math.inf else -cap if x == -math.inf else x
