"""Per-op agreement of the integer model with its simulation, in output LSB, against the op table's bounds.

Takes the prepared (calibrated or QAT) model, or the quant-level ``Graph`` exported from it, the
converted integer ``Graph`` and a batch of inputs; returns one row per output of every integer
node: ``{node, op, value, max_lsb, share_differ, bound, ok, skip}``. ``max_lsb`` is the largest
difference between that node's integer output and the simulation's, in units of the output's
quantization step, when the node runs on the simulation's own input values (quantized onto its
input grids, which they lie on exactly); ``bound`` is the row's ``OpSpec.lsb`` (the bound its
family docstring states); ``ok`` is ``max_lsb <= bound`` (within 1/64 LSB of float32 noise).
Unlike ``compare`` (end to end, where errors pile up over the layers) this isolates each kernel.

How: the quant-level graph runs once with fake quantization (the VALIDATION simulation), then each
integer node runs once through the op table (``ops.run_int_node``) on inputs rebuilt from the
simulation's values. Integer and simulation values share names; a producer that applies a fused
activation (``attrs["fused_activation"]``) writes the activation's grid, so it is compared with the
activation's simulated output. A simulated value beyond its grid's range (a ``-inf`` or
``finfo.min`` fill) counts as the saturated code the integer model stores. Booleans and integer
index outputs (compare, argmax) compare exactly: a mismatch is 1.

Compared: every node with a quantized (or boolean/index) output whose inputs all have simulation
values, including ``rescale`` nodes that convert inserts (they write the quantize's value) and the
``identity`` of a fused activation. An accumulator input (a conv fused into an add) is the
simulation's unquantized float32 sum rounded onto the accumulator grid: ``M / 2`` output LSB at
most, with ``M = s_acc / s_out`` far below 1.

Skipped, with ``skip`` saying why (``max_lsb`` and ``bound`` None): float ops and float outputs
(no grid); an accumulator output (a conv/linear fused into an add, a high-precision output, and
the ``dequantize`` convert adds after it): the simulation keeps the unquantized float32 sum, whose
own rounding is not bounded in accumulator LSB (measured: a linear over 4096 int16 inputs differs
by 5.8 accumulator LSB, over 16384 by 8.0, while its int16-requantized twin stays within 1 output
LSB), so its consumer is checked instead; a node whose input or output the simulation holds on
another grid; and one whose simulated input has values off its grid (after a ``pad`` with a fill
value off the grid: a shared-grid op's output is not re-quantized in the simulation, so that
node's inputs are not the integer model's).
"""
from __future__ import annotations

import torch

from ..argcheck import expect_graph, expect_prepared
from ..dtype import get_dtype
from ..export import export
from ..ir import Graph, QParams
from ..ops import is_dequantize, run_int_node, spec_of
from ..qmath import dequantize, quantize
from ..run import run

TOLERANCE = 1 / 64   # LSB: float32 noise of dequantized values; any real disagreement is >= 1/2


def _same_grid(a: QParams | None, b: QParams | None) -> bool:
    if a is None or b is None:
        return False
    return (str(a.dtype) == str(b.dtype) and tuple(a.scale) == tuple(b.scale)
            and tuple(a.zero_point) == tuple(b.zero_point) and (a.ch_axis is None) == (b.ch_axis is None))


def _is_acc(dtype) -> bool:
    try:
        return get_dtype(dtype).bits > 16
    except (KeyError, ValueError, TypeError):
        return False


def _bcast(vec: torch.Tensor, qp: QParams, ref: torch.Tensor) -> torch.Tensor:
    """A per-tensor or per-channel parameter shaped to broadcast against ``ref``."""
    if qp.ch_axis is not None and vec.numel() > 1 and ref.dim():
        shape = [1] * ref.dim()
        shape[qp.ch_axis % ref.dim()] = -1
        return vec.reshape(shape)
    return vec.reshape(()) if vec.numel() == 1 else vec


def lsb_diff(codes: torch.Tensor, sim: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``|dequantize(codes) - sim|`` in LSB of ``qp`` (``codes`` already real: a dequantize node's output);
    ``sim`` clamped to the grid's range first."""
    dt = get_dtype(qp.dtype)
    s = _bcast(qp.scale_tensor().double(), qp, codes)
    z = _bcast(qp.zero_point_tensor().double(), qp, codes)
    deq = codes if codes.is_floating_point() else dequantize(codes, qp.scale_tensor(), qp.zero_point_tensor(),
                                                               qp.ch_axis)
    deq = deq.double()
    ref = torch.maximum(torch.minimum(sim.double(), (dt.qmax - z) * s), (dt.qmin - z) * s)
    return torch.nan_to_num((deq - ref).abs() / s, nan=float("inf"))


def _exact_diff(out: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    if out.dtype == torch.bool or sim.dtype == torch.bool:
        return (out.bool() != sim.bool()).double()
    return (out.double() - sim.double()).abs()


class _Ctx:
    """The two runs and the name mapping one ``op_lsb`` call works from."""

    def __init__(self, ir: Graph, g: Graph, xs: tuple):
        self.ir, self.g, self.xs = ir, g, xs
        _, self.sim = run(ir, *xs, return_intermediates=True)
        self._int_env = None
        by_name = {n.name: n for n in g.nodes}
        self.alias = {}
        for n in g.nodes:   # a producer that applies a fused activation writes the activation's grid
            act = by_name.get(n.attrs.get("fused_activation"))
            if act is not None and len(n.outputs) == 1 and act.outputs:
                self.alias[n.outputs[0]] = act.outputs[0]

    def int_env(self) -> dict:
        if self._int_env is None:
            _, self._int_env = run(self.g, *self.xs, return_intermediates=True)
        return self._int_env

    def sim_of(self, name: str):
        """``(simulation tensor, its quant-level qparams)`` of an integer value, or (None, None)."""
        s = self.alias.get(name, name)
        t = self.sim.get(s)
        if not isinstance(t, torch.Tensor):
            return None, None
        v = self.ir.values.get(s)
        return t, (v.qparams if v is not None else None)

    def input(self, name):
        """The integer node's input rebuilt from the simulation: ``(tensor, None)`` or ``(None, why)``."""
        if name is None:
            return None, None
        if name in self.g.constants:
            return self.g.constants[name], None
        v = self.g.values.get(name)
        qp = v.qparams if v is not None else None
        t, sqp = self.sim_of(name)
        if qp is not None:
            if t is None:
                return None, f"input {name!r} has no simulation value"
            if not (_same_grid(qp, sqp) or (sqp is None and _is_acc(v.dtype))):
                return None, f"the simulation holds input {name!r} off its integer grid"
            q = quantize(t, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)
            if sqp is not None and q.numel() and float(lsb_diff(q, t, qp).max()) > TOLERANCE:
                return None, f"the simulation's input {name!r} lies off its grid (a fill value off the grid upstream)"
            return q, None
        if t is not None and (t.is_floating_point() == str(v.dtype).startswith("float") if v else True):
            return t, None
        env = self.int_env()
        return (env[name], None) if name in env else (None, f"input {name!r} has no value")


def _row(node, value, bound=None, max_lsb=None, share=None, skip=None) -> dict:
    ok = skip is not None or (max_lsb is not None and max_lsb <= bound + TOLERANCE)
    return {"node": node.name, "op": node.op, "value": value, "max_lsb": max_lsb, "share_differ": share,
            "bound": bound, "ok": ok, "skip": skip}


def _check_node(c: _Ctx, node) -> list[dict]:
    spec = spec_of(node.op)
    if spec is None or spec.float_op or spec.python_call or node.attrs.get("float"):
        return [_row(node, o, skip="float op") for o in node.outputs]
    args = []
    for i in node.inputs:
        t, why = c.input(i)
        if why is not None:
            return [_row(node, o, skip=why) for o in node.outputs]
        args.append(t)
    with torch.no_grad():
        out = run_int_node(c.g, node, args, c.g.meta.get("_callables", {}))
    outs = [out] if len(node.outputs) == 1 else list(out)
    rows = []
    for name, o in zip(node.outputs, outs):
        v = c.g.values.get(name)
        qp = v.qparams if v is not None else None
        sim, sqp = c.sim_of(name)
        if is_dequantize(node.op):   # no grid of its own: the LSB of the codes it reads
            qp = c.g.values[node.inputs[0]].qparams
            sqp = c.ir.values[node.inputs[0]].qparams if node.inputs[0] in c.ir.values else None
        if sim is None:
            rows.append(_row(node, name, skip="no simulation counterpart (convert wrote it)"))
        elif not isinstance(o, torch.Tensor) or tuple(o.shape) != tuple(sim.shape):
            rows.append(_row(node, name, skip="the simulation's value has another shape"))
        elif qp is None and (o.is_floating_point() or sim.is_floating_point()):
            rows.append(_row(node, name, skip="float output"))
        elif qp is not None and not _same_grid(qp, sqp):
            why = ("accumulator output: the simulation keeps it unquantized" if _is_acc(qp.dtype) and sqp is None
                   else "the simulation holds this output on another grid")
            rows.append(_row(node, name, skip=why))
        else:
            d = lsb_diff(o, sim, qp) if qp is not None else _exact_diff(o, sim)
            d = torch.where((d - d.round()).abs() <= TOLERANCE, d.round(), d)   # whole LSB, less float32 noise
            mx = float(d.max()) if d.numel() else 0.0
            share = float((d > TOLERANCE).double().mean()) if d.numel() else 0.0
            rows.append(_row(node, name, float(spec.lsb), mx, share))
    return rows


def op_lsb(calib_model, quantized: Graph, inputs) -> list[dict]:
    """Each integer node against the simulation on the same inputs, in output LSB (module docstring)."""
    if isinstance(calib_model, Graph) and calib_model.level == "quant":
        ir = calib_model
    else:
        expect_prepared(calib_model, "op_lsb", "calib_model")
        ir = export(calib_model)
    expect_graph(quantized, "op_lsb", "quantized")
    if quantized.level != "int":
        raise ValueError(f"op_lsb: quantized must be a converted integer graph, not a {quantized.level!r} graph")
    xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    c = _Ctx(ir, quantized, xs)
    rows = []
    for node in quantized.nodes:
        rows += _check_node(c, node)
    return rows


def violations(rows: list[dict]) -> list[dict]:
    """The rows of ``op_lsb`` over their bound, largest excess first."""
    return sorted((r for r in rows if not r["ok"]), key=lambda r: r["bound"] - r["max_lsb"])


def worst_per_op(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """``{op: (largest max_lsb measured, bound)}`` over the compared rows."""
    out: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["skip"] is None:
            prev = out.get(r["op"], (0.0, r["bound"]))
            out[r["op"]] = (max(prev[0], r["max_lsb"]), r["bound"])
    return out
