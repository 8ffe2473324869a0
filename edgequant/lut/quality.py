"""LUT report: how good every table of a model is, and how much of it the data uses.

Takes a prepared (calibrated) model or a ``Graph`` at either level; returns one record per
table (a SegmentLUT or nonlinear op has one; softmax has EXP and RECIP, layer norm RSQRT,
tensor division RECIP):

- ``node``, ``op``, ``table`` (``"main"``, ``"exp"``, ``"recip"``, ``"rsqrt"``), ``kind``;
- ``segments``: per segment, its codes, its shift and ``max_error``: the largest
  ``|table - f|`` over every code of the segment, in real units (``f`` evaluated at the
  dequantized code, so input quantization is not counted), and ``rel_error`` (to the peak
  ``|f|`` over the table);
- ``used_share``: the share of the table's entries that inputs in the calibrated range read
  (``None`` where no calibrated range is known: the fixed mantissa tables use all of theirs).

``format_report`` prints it as a table. Functions come from the op itself; a SegmentLUT of a
loaded graph has lost its Python callable, so its errors are ``None``. Each table kind's tables,
their names and the functions of the fixed ones, are its ``lut.sim`` class's ``tables``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..dtype import get_dtype
from ..ir import Graph
from ..ops.call import decode
from ..ops.names import resolve
from ..qmath import dequantize
from .kernel import lut_values
from .params import unpack
from .sim import LUT_OPS, LutOp, TableOp
from .table import LutTable


def _codes(t: LutTable) -> torch.Tensor:
    lo, hi = t.segment_bounds()[0][0], t.segment_bounds()[-1][1]
    return torch.arange(lo, hi + 1, dtype=torch.int64)


def _errors(t: LutTable, fn) -> list[dict]:
    rows = []
    exact_all = None
    if fn is not None:
        a = _codes(t)
        with torch.no_grad():
            exact_all = torch.as_tensor(fn(dequantize(a, t.in_scale).to(torch.float64))).to(torch.float64)
        exact_all = torch.nan_to_num(exact_all, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(exact_all.abs().max()) or 1.0
    base = _codes(t)[0] if len(t.segment_bounds()) else 0
    for k, (lo, hi) in enumerate(t.segment_bounds()):
        row = {"segment": k, "codes": (lo, hi), "shift": t.shifts[k] if t.shifts else 0, "max_error": None,
               "rel_error": None}
        if fn is not None and hi >= lo:
            a = torch.arange(lo, hi + 1, dtype=torch.int64)
            lo_q, hi_q = _out_limits(t)   # the op saturates: compare saturated values
            got = dequantize(lut_values(a, t), t.out_scale).to(torch.float64).clamp(lo_q, hi_q)
            exact = exact_all[lo - base: hi - base + 1]
            err = (got - exact.clamp(lo_q, hi_q)).abs().max()
            row["max_error"] = float(err)
            row["rel_error"] = float(err) / peak
        rows.append(row)
    return rows


def _out_limits(t: LutTable) -> tuple[float, float]:
    dt = get_dtype(t.out_dtype)
    return t.out_scale * (dt.qmin - t.out_zero), t.out_scale * (dt.qmax - t.out_zero)


def _used_share(t: LutTable) -> float | None:
    """Share of entries read by inputs in the calibrated range."""
    if t.calibrated_range is None:
        return None
    c_lo = math.floor(t.calibrated_range[0] / t.in_scale)
    c_hi = math.ceil(t.calibrated_range[1] / t.in_scale)
    if t.mode != "ASYM":
        c_lo, c_hi = (0, max(-c_lo, c_hi)) if c_lo <= 0 <= c_hi else (min(abs(c_lo), abs(c_hi)), max(abs(c_lo), abs(c_hi)))
    n = t.entries.numel()
    if t.kind == "direct":
        lo, hi = max(c_lo, t.index_offset), min(c_hi, t.index_offset + n - 1)
        return max(0, hi - lo + 1) / n
    used = set()
    width = t.intervals + 1
    for k, p in enumerate(t.shifts):
        lo, hi = max(c_lo, t.starts[k]), min(c_hi, t.starts[k + 1] - 1)
        if hi < lo:
            continue
        j0, j1 = (lo - t.starts[k]) >> p, (hi - t.starts[k]) >> p
        used.update(range(k * width + j0, k * width + j1 + 2))
    if c_lo < t.starts[0]:
        used.add(0)
    if c_hi >= t.starts[-1]:
        used.add(n - 1)
    return len(used) / n


def _record(node: str, op: str, roles, tables: list[LutTable], main_fn) -> list[dict]:
    """One record per table; ``roles`` (``LutOp.tables`` of the op's kind) names them and gives
    each fixed table's function (None: the op's own, ``main_fn``)."""
    out = []
    for (name, fixed), t in zip(roles, tables):
        fn = main_fn if fixed is None else fixed
        out.append({"node": node, "op": op, "table": name, "kind": t.kind, "mode": t.mode,
                    "in_range": t.in_range, "calibrated_range": t.calibrated_range,
                    "used_share": _used_share(t), "segments": _errors(t, fn)})
    return out


def _ir_function(g: Graph, node):
    a = node.attrs
    fn = g.meta.get("_callables", {}).get(a.get("callable_ref"))
    if fn is not None:
        return getattr(fn, "simulated_func", fn)
    op = resolve(a.get("target"))
    if op is None:   # a SegmentLUT without its callable, or not on the allow-list: no function to compare
        return None
    args, kwargs = a.get("args", []), a.get("kwargs", {})
    return lambda x: op(*decode(args, [x]), **decode(kwargs, [x]))


def report(model_or_ir) -> list[dict]:
    """Every table of a prepared model or a graph (see the module docstring)."""
    out = []
    if isinstance(model_or_ir, Graph):
        g = model_or_ir
        for n in g.nodes:
            lut = n.attrs.get("lut")
            if lut is None:
                continue
            ne = len(lut["tables"]) + len(lut["consts"])
            extra = [g.constants[i] for i in n.inputs[len(n.inputs) - ne:]]
            p = unpack(lut, extra)
            out += _record(n.name, n.op, LUT_OPS[lut["kind"]].tables, p["tables"], _ir_function(g, n))
        return out
    if not isinstance(model_or_ir, nn.Module):
        raise TypeError("report takes a prepared model or an edgequant Graph")
    for name, m in model_or_ir.named_modules():
        if not isinstance(m, LutOp):
            continue
        if isinstance(m, TableOp):
            tables, fn = [m.table()], m.function()
        else:  # without the op's arguments: the tables do not depend on them (layer norm's gamma/beta)
            tables, fn = m.int_params(None)["tables"], None
        out += _record(name, m.op, m.tables, tables, fn)
    return out


def format_report(rows: list[dict]) -> str:
    """The report as text: one line per table, worst segment first in its line."""
    lines = [f"{'node':28s} {'op':12s} {'table':6s} {'kind':9s} {'used':>6s} {'worst rel err':>13s}  per-segment rel err"]
    for r in rows:
        errs = [s["rel_error"] for s in r["segments"]]
        worst = max((e for e in errs if e is not None), default=None)
        used = "-" if r["used_share"] is None else f"{100 * r['used_share']:.0f}%"
        seg = " ".join("-" if e is None else f"{e:.1e}" for e in errs)
        lines.append(f"{r['node'][:28]:28s} {r['op'][:12]:12s} {r['table']:6s} {r['kind']:9s} {used:>6s} "
                     f"{'-' if worst is None else f'{worst:.2e}':>13s}  {seg}")
    return "\n".join(lines)
