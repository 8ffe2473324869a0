"""Qconfig check: the dtype and observer of every quantized tensor, and the doubtful choices.

Takes a prepared model (``edgequant.prepare``'s result, any state); returns a
``QconfigCheck`` with one row per FakeQuantize in graph order (``name``, ``kind`` weight /
activation / input, ``dtype``, ``observer``, ``ch_axis``, ``fixed_scale``, ``calibrated``,
``consumers``: the computing ops that read the tensor, looking through reshapes and other ops
that keep their input's grid) and a list of ``warnings`` (each names the tensor and says what
to do):

- an 8-bit (or narrower) activation read by an op whose row has ``sensitive_input`` (softmax,
  layer_norm, exp, log, division, reciprocal, ...): those functions amplify small differences
  (int16 keeps them);
- a 4-bit activation; a per-tensor (not per-channel) weight of a conv/linear (a ``weighted`` row);
- a tensor never calibrated although the model has left the float state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx

from ..fake_quant import FakeQuantize, FakeQuantState


@dataclass
class QconfigCheck:
    rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'tensor':<36}{'kind':<11}{'dtype':<8}{'observer':<28}{'consumers'}"]
        for r in self.rows:
            lines.append(f"{r['name'][:35]:<36}{r['kind']:<11}{r['dtype']:<8}{r['observer'][:27]:<28}"
                         f"{','.join(r['consumers'])}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _computing_consumers(node: fx.Node) -> tuple[list[str], list]:
    """Canonical ops reading ``node``, looking through shared-grid ops and fake-quants: their
    names (sorted, with ``output`` and plumbing) and the op rows among them."""
    out, specs, todo, seen = [], [], list(node.users), set()
    while todo:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        spec = u.meta.get("eq_spec")
        if spec is not None and spec.rule == "shared":
            todo += list(u.users)
        elif spec is not None:
            out.append(spec.name)
            specs.append(spec)
        elif u.op == "output":
            out.append("output")
        elif u.op == "call_module" and str(u.target).startswith(("eq_bc.", "_guards")):
            continue  # bias correction (records the conv's input) and torch.export's shape guards
        elif u.meta.get("eq_fq") is None:
            out.append(getattr(u.target, "__name__", str(u.target)).replace("_point", "").split(".")[-1])
    return sorted(set(out)), specs


def check_qconfig(prepared: fx.GraphModule) -> QconfigCheck:
    """Rows and warnings for every FakeQuantize of ``prepared`` (see the module docstring)."""
    if not isinstance(prepared, fx.GraphModule) or "edgequant" not in getattr(prepared, "meta", {}):
        raise TypeError("check_qconfig takes a model returned by edgequant.prepare")
    result = QconfigCheck()
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        fq = prepared.get_submodule(node.target)
        if not isinstance(fq, FakeQuantize):
            continue
        name = node.meta.get("eq_fq", fq.name)
        kind = "weight" if fq.is_weight else "input" if ".input" in name else "activation"
        consumers, specs = _computing_consumers(node)
        row = {"name": name, "kind": kind, "dtype": str(fq.dtype), "observer": type(fq.observer).__name__,
               "ch_axis": fq.ch_axis, "fixed_scale": bool(fq.fixed_scale), "calibrated": bool(fq.calibrated),
               "state": fq.state.value, "consumers": consumers, "source": node.meta.get("eq_source", "")}
        result.rows.append(row)
        bits = fq.dtype.bits
        where = f" (from {row['source']})" if row["source"] else ""
        if kind != "weight":
            risky = sorted({s.name for s in specs if s.sensitive_input})
            if bits <= 8 and risky:
                result.warnings.append(
                    f"{name}: {fq.dtype} activation read by {', '.join(risky)}{where}; these functions magnify "
                    f"its rounding: give it qint16 (ModuleNameQconfigSetter({{{name!r}: get_qconfig(out_dtype=qint16)}}))")
            if bits < 8:
                result.warnings.append(f"{name}: {bits}-bit activation{where}; activations below 8 bits rarely "
                                       "keep accuracy: use qint8 or qint16")
        elif fq.ch_axis is None and any(s.weighted for s in specs):
            result.warnings.append(f"{name}: per-tensor weight{where}; one scale for every output channel "
                                   "wastes levels on small channels: quantize weights per channel (ch_axis=0)")
        if fq.state != FakeQuantState.FLOAT and not bool(fq.calibrated) and not fq.is_weight:
            result.warnings.append(f"{name}: never calibrated{where}; run calibration batches that reach it "
                                   "(FakeQuantState.CALIBRATION) or give it a fixed scale")
    return result
