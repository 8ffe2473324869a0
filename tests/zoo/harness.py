"""Run one zoo model through edgequant the way a new user would, stage by stage (issue #20).

``run_case(name, template)`` takes a ``models.ZOO`` name and a template (``"int8"``, ``"int16"``
or one of the two qconfig setters) and returns a dict: ``name``, ``template``, ``seconds`` and
``stages``, one entry per stage in ``STAGES`` order, each ``{"status": "ok"|"fail"|"skip",
"value": float|None, "error": "Type: first line"|None, "seconds": float}``. A failed stage skips
the stages that need its result. Values: SQNR in dB (``sqnr_int_sim``: integer model against the
simulation; ``sqnr_sim_float``: simulation against float), ``op_lsb``: the largest difference of
one integer node from the simulation on the same inputs, in output LSB (``edgequant.analysis.op_lsb``;
status "fail" when a node exceeds its op's bound ``OpSpec.lsb``; ``note``: ``{op: [worst, bound]}``),
``qdq_ort``: the smallest cosine of ONNX Runtime's outputs (QDQ file, default session options, i.e.
every graph optimisation on) against the simulation; ``int_onnx_run``: 1.0 when the integer file's
outputs equal the integer model's bit for bit, else the fraction of equal elements (and status
"fail"); the file runs in ONNX Runtime, or under onnx's reference evaluator when it uses the custom
domain ``ai.edgequant``.
``acceptance(result)`` returns the first unmet line of issue #20's acceptance (None when met).

``python tests/zoo/harness.py [name ...] [--template int8|int16]`` runs the cases (all by default)
one after the other in this process and prints a model x stage table per template, totals, the
failure causes grouped and the wall time; each case is cut at ``CASE_SECONDS`` by ``signal.alarm``.
"""
from __future__ import annotations

import math
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict

import numpy as np
import torch

if __package__ in (None, ""):          # run as a script: import the zoo as the tests do
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "zoo"

import edgequant as eq  # noqa: E402
from edgequant.analysis.op_bounds import op_lsb, violations, worst_per_op  # noqa: E402
from edgequant.onnx_export.errors import OnnxExportError  # noqa: E402
from edgequant.qconfig_template import (calibration_8bit_weight_16bit_act_qconfig_setter,  # noqa: E402
                                        default_calibration_qconfig_setter)

from .models import ZOO  # noqa: E402

TEMPLATES = {"int8": default_calibration_qconfig_setter, "int16": calibration_8bit_weight_16bit_act_qconfig_setter}
STAGES = ("build", "float", "prepare", "calibrate", "simulate", "sqnr_sim_float", "export", "convert", "int_run",
          "sqnr_int_sim", "op_lsb", "qdq_export", "qdq_ort", "int_onnx_export", "int_onnx_run")
NEEDS = {"float": "build", "prepare": "float", "calibrate": "prepare", "simulate": "calibrate",
         "sqnr_sim_float": "simulate", "export": "simulate", "convert": "export", "int_run": "convert",
         "sqnr_int_sim": "int_run", "op_lsb": "int_run", "qdq_export": "simulate", "qdq_ort": "qdq_export",
         "int_onnx_export": "int_run", "int_onnx_run": "int_onnx_export"}
CALIB_SEEDS = (1, 2, 3, 4)
EVAL_SEED = 99
CASE_SECONDS = 120
MIN_SQNR_INT_SIM = 30.0
MIN_QDQ_COSINE = {"int8": 0.995, "int16": 0.999}
MARCH = "nash-e"


class CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout(f"case ran past {CASE_SECONDS} s")


def template_key(template) -> str:
    if isinstance(template, str):
        return template
    return next(k for k, v in TEMPLATES.items() if v is template)


def first_line(exc: BaseException) -> str:
    """``"Type: first line"``; a first line that introduces a list (ends with ':') gets the distinct
    aten targets of the list (capture's "cannot quantize these ops:")."""
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}"
    if text.endswith(":"):
        targets = sorted(set(re.findall(r"^\s+\S+ \((.+?)\) at ", str(exc), re.M)))
        text += " " + ", ".join(targets or [m.strip() for m in msg[1:2]])
    return text if len(text) <= 240 else text[:237] + "..."


def tensors(out) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors(o)]
    if hasattr(out, "to_tuple"):
        return tensors(out.to_tuple())
    raise TypeError(f"model output of type {type(out).__name__} holds no tensor")


def _flat(ts) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t)
                      .detach().reshape(-1).to(torch.float64) for t in ts])


def sqnr(x, ref) -> float:
    """10 log10(|ref|^2 / |x - ref|^2) over all outputs, in dB (inf when equal)."""
    x, ref = _flat(x), _flat(ref)
    if x.shape != ref.shape:
        raise ValueError(f"output sizes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    noise = float(((x - ref) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)


def cosine(x, ref) -> float:
    """The smallest cosine similarity over the outputs (each flattened)."""
    if len(x) != len(ref):
        raise ValueError(f"{len(x)} outputs vs {len(ref)}")
    worst = 1.0
    for a, b in zip(x, ref):
        a, b = _flat([a]), _flat([b])
        if a.shape != b.shape:
            raise ValueError(f"output sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        den = float(a.norm() * b.norm())
        worst = min(worst, 1.0 if den == 0 and float((a - b).abs().max()) == 0 else float(a @ b) / den if den else 0.0)
    return worst


def ort_session(path):
    """ONNX Runtime, CPU, default graph optimisation level (ORT_ENABLE_ALL), one thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(names, inputs):
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX file has {len(names)} inputs, the model {len(inputs)}")
    return {n: x.numpy() for n, x in zip(names, inputs)}


def ort_run(path, inputs) -> list[np.ndarray]:
    sess = ort_session(path)
    return sess.run(None, _feeds([i.name for i in sess.get_inputs()], inputs))


def onnx_run(path, inputs) -> tuple[list[np.ndarray], str]:
    """An integer file in ONNX Runtime; one that uses edgequant's custom domain (int16 convs, which
    ONNX Runtime has no kernel for: README "ONNX export") under onnx's reference evaluator."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from edgequant.onnx_export.custom_ops import REFERENCE_OPS

    m = onnx.load(path)
    if not any(n.domain == "ai.edgequant" for n in m.graph.node):
        return ort_run(path, inputs), "onnxruntime"
    ref = ReferenceEvaluator(m, new_ops=REFERENCE_OPS)
    return ref.run(None, _feeds(list(ref.input_names), inputs)), "reference evaluator"


class _Case:
    """The stages of one case; each stage method returns its value (or None)."""

    def __init__(self, name, key, tmp):
        self.entry, self.key, self.tmp = ZOO[name], key, tmp
        self.stages = {}

    def run(self):
        for stage in STAGES:
            need = NEEDS.get(stage)
            if need and self.stages[need]["status"] != "ok":
                self.stages[stage] = {"status": "skip", "value": None, "error": None, "seconds": 0.0}
                continue
            t0 = time.perf_counter()
            self.note = None
            try:
                value = getattr(self, stage)()
                status, error = "ok", None
                if isinstance(value, tuple):       # (value, failure message)
                    value, error = value
                    status = "fail" if error else "ok"
            except CaseTimeout:
                raise
            except Exception as exc:            # noqa: BLE001  (every failure is a result)
                value, status, error = None, "fail", first_line(exc)
            self.stages[stage] = {"status": status, "value": value, "error": error,
                                  "seconds": time.perf_counter() - t0}
            if self.note:
                self.stages[stage]["note"] = self.note

    def build(self):
        self.model, self.example = self.entry.build()
        self.calib = [self.entry.make_inputs(s) for s in CALIB_SEEDS]
        self.x = self.entry.make_inputs(EVAL_SEED)

    def float(self):
        with torch.no_grad():
            self.y_float = tensors(self.model(*self.x))

    def prepare(self):
        self.cm = eq.prepare(self.model, self.example, qconfig_setter=(TEMPLATES[self.key],))

    def calibrate(self):
        eq.calibrate(self.cm, self.calib)

    def simulate(self):
        with torch.no_grad():
            self.y_sim = tensors(self.cm(*self.x))

    def sqnr_sim_float(self):
        return sqnr(self.y_sim, self.y_float)

    def export(self):
        self.ir = eq.export(self.cm, self.example)

    def convert(self):
        self.g = eq.convert(self.ir, MARCH)

    def int_run(self):
        with torch.no_grad():
            self.y_int = tensors(self.g(*self.x))

    def sqnr_int_sim(self):
        return sqnr(self.y_int, self.y_sim)

    def op_lsb(self):
        rows = op_lsb(self.ir, self.g, self.x)
        self.note = {op: list(v) for op, v in worst_per_op(rows).items()}
        bad = violations(rows)
        worst = max((r["max_lsb"] for r in rows if r["skip"] is None), default=0.0)
        why = "; ".join(f"{r['node']} ({r['op']}): {r['max_lsb']:.3g} LSB > bound {r['bound']:g}" for r in bad[:3])
        return worst, (f"{len(bad)} node(s) over their op's LSB bound: {why}" if bad else None)

    def qdq_export(self):
        self.qdq_path = os.path.join(self.tmp, "qdq.onnx")
        eq.export_onnx(self.cm, self.qdq_path, self.example, flavour="qdq")

    def qdq_ort(self):
        return cosine(ort_run(self.qdq_path, self.x), self.y_sim)

    def int_onnx_export(self):
        self.int_path = os.path.join(self.tmp, "int.onnx")
        eq.export_onnx(self.g, self.int_path, self.example, flavour="integer")

    def int_onnx_run(self):
        got, self.note = onnx_run(self.int_path, self.x)
        if len(got) != len(self.y_int):
            return None, f"{len(got)} outputs vs {len(self.y_int)}"
        equal = total = 0
        for a, b in zip(got, self.y_int):
            b = b.numpy()
            if a.shape != b.shape:
                return None, f"output shape {a.shape} vs {b.shape}"
            equal += int((a == b).sum())
            total += a.size
        frac = equal / max(total, 1)
        return frac, (None if equal == total else f"{total - equal} of {total} output elements differ")


def run_case(name: str, template) -> dict:
    """Run model ``name`` with ``template`` (see the module docstring for the result)."""
    key = template_key(template)
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CASE_SECONDS)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = _Case(name, key, tmp)
        try:
            case.run()
        except CaseTimeout as exc:       # the stage that was running fails, the rest are skipped
            running = next(s for s in STAGES if s not in case.stages)
            case.stages[running] = {"status": "fail", "value": None, "error": first_line(exc), "seconds": 0.0}
            for stage in STAGES:
                case.stages.setdefault(stage, {"status": "skip", "value": None, "error": None, "seconds": 0.0})
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return {"name": name, "template": key, "seconds": time.perf_counter() - t0, "stages": case.stages}


def acceptance(result: dict) -> str | None:
    """The first unmet acceptance line of issue #20 as ``"<stage>: <why>"``, or None.

    The integer model runs; SQNR(integer vs simulation) >= 30 dB, and every integer node agrees with
    the simulation on the same inputs within its op's LSB bound (``op_lsb``); the QDQ file runs in
    ONNX Runtime at its default optimisation level with cosine to the simulation >= 0.995 (int8) /
    0.999 (int16); the integer ONNX file matches the integer model bit for bit where it can be exported (an
    ``OnnxExportError`` naming the op counts as "cannot be exported")."""
    st = result["stages"]
    for stage in ("build", "float", "prepare", "calibrate", "simulate", "export", "convert", "int_run",
                  "sqnr_int_sim", "qdq_export", "qdq_ort"):
        if st[stage]["status"] == "fail":
            return f"{stage}: {st[stage]['error']}"
    if st["sqnr_int_sim"]["value"] < MIN_SQNR_INT_SIM:
        return f"sqnr_int_sim: {st['sqnr_int_sim']['value']:.1f} dB < {MIN_SQNR_INT_SIM:.0f} dB"
    if st["op_lsb"]["status"] == "fail":
        return f"op_lsb: {st['op_lsb']['error']}"
    need = MIN_QDQ_COSINE[result["template"]]
    if st["qdq_ort"]["value"] < need:
        return f"qdq_ort: cosine {st['qdq_ort']['value']:.5f} < {need}"
    ex = st["int_onnx_export"]
    if ex["status"] == "fail" and not ex["error"].startswith(OnnxExportError.__name__ + ":"):
        return f"int_onnx_export: {ex['error']}"
    if st["int_onnx_run"]["status"] == "fail":
        return f"int_onnx_run: {st['int_onnx_run']['error']}"
    return None


# ---------------------------------------------------------------- command line
COLUMNS = (("prep", "prepare"), ("calib", "calibrate"), ("export", "export"), ("convert", "convert"),
           ("int", "int_run"), ("i/s dB", "sqnr_int_sim"), ("op LSB", "op_lsb"), ("s/f dB", "sqnr_sim_float"),
           ("qdq", "qdq_export"),
           ("qdq cos", "qdq_ort"), ("i-onnx", "int_onnx_export"), ("i-exact", "int_onnx_run"))


def _cell(s: dict, stage: str) -> str:
    if s["status"] == "skip":
        return "-"
    if s["status"] == "fail":
        if stage == "int_onnx_export" and s["error"].startswith(OnnxExportError.__name__):
            return "n/e"
        return "FAIL" if s["value"] is None else f"{s['value']:.4f}!"
    v = s["value"]
    if v is None:
        return "ok"
    if stage == "qdq_ort":
        return f"{v:.5f}"
    if stage == "int_onnx_run":
        return "exact" + ("*" if s.get("note") == "reference evaluator" else "")
    return "inf" if math.isinf(v) else f"{v:.1f}"


def table(results: list[dict]) -> str:
    lines = []
    for key in TEMPLATES:
        rows = [r for r in results if r["template"] == key]
        if not rows:
            continue
        w = max(len(r["name"]) for r in rows)
        head = f"{'model (' + key + ')':<{w}} " + " ".join(f"{c:>8}" for c, _ in COLUMNS) + "   accept     s"
        lines += [head, "-" * len(head)]
        for r in rows:
            cells = " ".join(f"{_cell(r['stages'][s], s):>8}" for _, s in COLUMNS)
            lines.append(f"{r['name']:<{w}} {cells}   {'PASS' if acceptance(r) is None else 'fail':>6} {r['seconds']:5.1f}")
        ok = Counter()
        for r in rows:
            for _, s in COLUMNS:
                ok[s] += r["stages"][s]["status"] == "ok"
        lines.append(f"{'ok of ' + str(len(rows)):<{w}} " + " ".join(f"{ok[s]:>8}" for _, s in COLUMNS)
                     + f"   {sum(acceptance(r) is None for r in rows):>6}")
        lines.append("")
    return "\n".join(lines)


def causes(results: list[dict]) -> str:
    """Failures grouped by stage and error type + first line (numbers masked), most frequent first."""
    groups = defaultdict(list)
    for r in results:
        why = acceptance(r)
        if why is None:
            continue
        stage, msg = why.split(": ", 1)
        key = stage + ": " + re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", re.sub(r"'[^']*'", "'.'", msg))
        groups[key].append((r["name"], r["template"], why))
    out = []
    for key, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        name, tmpl, why = items[0]
        cases = ", ".join(sorted({f"{n}/{t}" for n, t, _ in items}))
        out.append(f"{len(items):3d}  {why}\n       e.g. {name} ({tmpl}); all: {cases}")
    return "\n".join(out)


def main(argv=None):
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="zoo models (default: all)")
    p.add_argument("--template", choices=sorted(TEMPLATES), action="append", help="default: both")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    names = args.names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(ZOO)}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = []
    for key in args.template or list(TEMPLATES):
        for n in names:
            r = run_case(n, key)
            results.append(r)
            print(f"[{time.perf_counter() - t0:7.1f}s] {n} {key}: {acceptance(r) or 'PASS'}", flush=True)
    print()
    print(table(results))
    print("failure causes (acceptance of issue #20), most frequent first:")
    print(causes(results))
    print(f"\n{len(results)} cases, {sum(acceptance(r) is None for r in results)} pass; "
          f"wall time {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
