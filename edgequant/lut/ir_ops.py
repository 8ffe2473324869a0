"""Table ops in the IR: ``export`` writes them, ``run`` and ``convert`` execute them.

At level ``"quant"`` a table op keeps its canonical name (``sigmoid``, ``segment_lut``,
``softmax``, ``layer_norm``, ``div``, ...), its original call (``attrs["target"]``/``args``, for
float runs) and gains ``attrs["lut"]``:

    {"kind": "table" | "softmax" | "layer_norm" | "div",
     "tables": [LutTable.attrs(), ...],   # one per table constant
     "params": {...},                     # the op's integer parameters (JSON)
     "consts": ["g0", ...],               # names of extra integer tensors
     "n_quant": 1 | 2}                    # quantized inputs, first in ``inputs``

The last ``len(tables) + len(consts)`` inputs are integer constants: each table's entries, then
the extra tensors. Running the quant-level node quantizes its inputs with their qparams, runs
the integer kernel and dequantizes, which is exactly what VALIDATION computed. ``convert``
lowers it to one integer node (``lut``, ``softmax``, ``layer_norm`` or ``lut_div``) with the same
attributes, reading the quantized inputs and the constants.
"""
from __future__ import annotations

import torch
from torch import fx

from ..ir import Graph, Node
from ..qmath import dequantize, quantize
from .sim import LutOp, run_kernel
from .table import LutTable

INT_OPS = {"table": "lut", "softmax": "softmax", "layer_norm": "layer_norm", "div": "lut_div"}


def _target_str(target) -> str:
    if target is None:
        return "segment_lut"
    return f"{target.namespace}.{target._schema.name.split('::')[1]}.{target._overloadname}"


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def export_lut_op(ex, node: fx.Node, mod: LutOp):
    """Emit ``node`` (a call of ``mod``) with its tables into the exporter ``ex``."""
    args = [_fetch(ex.gm, a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None for a in node.args]
    p = mod.int_params(args)
    extra_attrs = {}
    seg = getattr(mod, "segment_lut", None)
    if seg is not None:  # float runs of the quant-level graph still call the user's function
        ex.callables[node.target] = seg
        extra_attrs["callable_ref"] = node.target
    out = ex._emit(node, mod.op, node.args, node.kwargs, **extra_attrs)
    last = ex.nodes[-1]
    extra = [ex._const(f"{last.name}.lut{i}", t.entries) for i, t in enumerate(p["tables"])]
    extra += [ex._const(f"{last.name}.{role}", c) for role, c in p["consts"].items()]
    lut = {"kind": mod.kind, "tables": [t.attrs() for t in p["tables"]], "params": p["params"],
           "consts": list(p["consts"]), "n_quant": len(mod.in_fqs)}
    attrs = {**last.attrs, "target": _target_str(mod.target), "lut": lut}
    ex.nodes[-1] = Node(last.name, last.op, tuple(last.inputs) + tuple(extra), last.outputs, attrs, last.source)
    return out


def unpack(lut: dict, extra: list[torch.Tensor]) -> dict:
    """The kernel parameters from a node's ``attrs["lut"]`` and its trailing constant inputs."""
    nt = len(lut["tables"])
    return {"params": lut["params"],
            "tables": [LutTable.from_attrs(a, e) for a, e in zip(lut["tables"], extra[:nt])],
            "consts": dict(zip(lut["consts"], extra[nt:]))}


def n_extra(lut: dict) -> int:
    return len(lut["tables"]) + len(lut["consts"])


def run_quant(g: Graph, node: Node, args: list, fake_quant: bool, callables: dict):
    """One quant-level table node: the integer kernel between quantize and dequantize (or, with
    ``fake_quant=False``, the float function)."""
    lut = node.attrs["lut"]
    if not fake_quant:
        fn = callables.get(node.attrs.get("callable_ref"))
        if fn is not None:
            return fn(args[0])
        if node.attrs["target"] != "segment_lut":
            from ..run import call_target

            return call_target(node, args)
    nq = lut["n_quant"]
    qs = []
    for name, x in zip(node.inputs[:nq], args[:nq]):
        qp = g.values[name].qparams
        qs.append(quantize(x, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype))
    yq = run_kernel(lut["kind"], qs, unpack(lut, args[len(args) - n_extra(lut):]))
    qp = g.values[node.outputs[0]].qparams
    return dequantize(yq, qp.scale_tensor(), qp.zero_point_tensor())


def lower_lut(ctx, node: Node) -> None:
    """quant-level table node -> one integer node reading the codes and the table constants."""
    lut = node.attrs.get("lut")
    if lut is None:
        raise ctx.error(node, "this table op was not simulated with a table (its input or output is not "
                              "quantized per tensor); give it per-tensor qconfigs")
    nq, ne = lut["n_quant"], n_extra(lut)
    qins = list(node.inputs[:nq])
    extras = list(node.inputs[len(node.inputs) - ne:])
    for i in qins:
        if ctx.qparams(i) is None:
            raise ctx.error(node, f"its input {i!r} is not quantized")
    for e in extras:
        ctx.add_const(e, ctx.q.constants[e])
    qp = ctx.q.values[node.outputs[0]].qparams
    ctx.set_value(node.outputs[0], qp.dtype, qp)
    keep = {k: node.attrs[k] for k in ("target", "args", "kwargs", "callable_ref") if k in node.attrs}  # for reports
    ctx.emit(Node(node.name, INT_OPS[lut["kind"]], tuple(qins + extras), node.outputs, {"lut": lut, **keep},
                  node.source))


def k_lut(g: Graph, node: Node, args):
    """Integer kernel of ``lut``, ``softmax``, ``layer_norm`` and ``lut_div`` nodes."""
    lut = node.attrs["lut"]
    nq = lut["n_quant"]
    return run_kernel(lut["kind"], list(args[:nq]), unpack(lut, list(args[nq:])))
