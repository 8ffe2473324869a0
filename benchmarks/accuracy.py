"""How close each toolkit's quantized model stays to float, on three real models, in one process.

For each workload (``workloads.py``: EfficientNet-Lite0, all-MiniLM-L6-v2, the MNIST residual
CNN) the float model, edgequant (int8 and int8-weight/int16-activation templates, each as the
VALIDATION simulation and as the converted integer model), torch.ao.quantization FX PTQ,
ONNX Runtime ``quantize_static`` (MinMax, Entropy, Percentile; every op, and for MiniLM also
only MatMul/Gemm), torchao's PT2E flow (X86InductorQuantizer, XNNPACKQuantizer) and AIMET-torch's
QuantizationSimModel (tf_enhanced, tf) (``peers.py``; installed by ``make bench``) all see the same
calibration batches and are scored on the same held-out batches. The float ONNX export run by
ONNX Runtime gets a row of its own, so a gap between float and the ONNX Runtime rows is
quantization, not export. A peer that cannot handle a model gets a row saying why, in one line;
when AIMET's ``prepare_model`` cannot trace a model (MiniLM) a second row runs QuantizationSimModel
without it. torchao's and AIMET's rows say in brackets which ops they quantize ("GEMM only": only
linear/matmul inputs, as torchao's X86 quantizer does on MiniLM; "modules only": AIMET without
``prepare_model``, functional ops float), and a list under each table gives their settings as run.
The acceptance check compares edgequant with the best peer that quantizes the same ops: the int8
template with the peers quantizing every op, the GEMM-int8 template (when ``workloads.TEMPLATES``
has it) with the GEMM-only peers. On transformers (MiniLM) each template also runs on
``ptq.smooth_quant``'s model (rows "+ smooth_quant"), and the check takes the better of the two.
Prints one markdown table per model.

ONNX Runtime's Entropy rows equal its MinMax rows: ``quantize_static``'s Entropy calibrator has
128 histogram bins and 128 quantized bins (``quantize_static`` passes no option to change them),
so its KL search has one candidate, the full range.

    python benchmarks/accuracy.py [--models efficientnet,minilm,cnn]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers as P  # noqa: E402
import workloads as W  # noqa: E402

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
ORT_FLOAT = "float ONNX export run by ONNX Runtime (export check, not quantized)"


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:160].replace("|", "/")


class Row(NamedTuple):
    label: str
    scores: dict | str        # {metric: value}, or "failed: why"
    seconds: float
    scope: str | None = None  # peers: which ops it quantizes ("every op", "GEMM only", "modules only")
    note: str = ""            # peers: the setting as run and the ops with a quantized input


def peer_settings(w: W.Workload) -> list[tuple[str, Callable]]:
    """``(row label, () -> Peer)`` for torchao's and AIMET's settings (``peers.py``) on ``w``."""
    m, ex, names, dyn = w.capture_model, w.calib[0], w.input_names, w.dynamic_axes
    out = [(f"torchao PT2E {q}", lambda k=k: P.torchao_pt2e(m, ex, w.calib, k, names, dyn))
           for k, q in (("x86", "X86InductorQuantizer"), ("xnnpack", "XNNPACKQuantizer, per-channel"))]
    out += [(f"AIMET QuantSim {label}", lambda s=s: P.aimet(m, ex, w.calib, s))
            for s, label in (("tf_enhanced", "tf_enhanced"), ("tf", "tf (min-max)"))]
    return out


def rows_for(w: W.Workload, only: str = "") -> list[Row]:
    """A ``Row`` for every flow on ``w`` (whose label contains ``only``)."""
    ref = w.run(w.model)
    rows = []

    def add(label, make_fn, scope=None):
        if only not in label and label != "float":
            return
        start = time.perf_counter()
        try:
            fn = make_fn()
            scores = w.score(ref, w.run(fn))
            if isinstance(fn, P.Peer):
                scope = fn.scope
                label = label if scope == "every op" else f"{label} [{scope}]"
                note = f"{fn.setting}; quantized: {fn.ops_text() or 'nothing'}"
            rows.append(Row(label, scores, time.perf_counter() - start, scope, note if isinstance(fn, P.Peer) else ""))
        except Exception as exc:  # a peer (or we) failing on a model is a result, not a crash
            rows.append(Row(label, f"failed: {_why(exc)}", time.perf_counter() - start, scope))
        print(f"  {w.name}: {rows[-1].label} ({rows[-1].seconds:.0f} s): {rows[-1].scores}", file=sys.stderr, flush=True)
        return rows[-1]

    add("float", lambda: w.model)
    for tname, setter in W.TEMPLATES.items():
        variants = [(False, "")] + ([(True, "")] if w.smooth else []) + ([(False, "nearest")] if tname == "int8" else [])
        for smooth, weights in variants:
            label = f"edgequant {tname}{W.SMOOTHED if smooth else ''}{W.NEAREST if weights else ''}"
            holder = {}
            if only and only not in f"{label}, simulation" + f"{label}, integer model":
                continue
            make = lambda s=setter, sm=smooth, wt=weights: holder.setdefault(  # noqa: E731
                "cm", W.edgequant_calibrated(w, s, sm, wt))
            add(f"{label}, simulation", make)
            if "cm" not in holder and only in f"{label}, integer model":
                make()
            if "cm" in holder:
                add(f"{label}, integer model", lambda: W.edgequant_integer(w, holder["cm"]))
    add("torch.ao FX, HistogramObserver, per-channel", lambda: W.torch_ao_fx(w, "histogram"), "every op")
    if not only or "ONNX Runtime" in only:
        ort_rows(w, add, rows)
    missing = P.available()
    for label, make in peer_settings(w):
        tool = "aimet" if label.startswith("AIMET") else "torchao"
        if missing[tool]:
            if only in label:
                rows.append(Row(label, f"failed: {missing[tool]}", 0.0))
            continue
        row = add(label, make)
        if row is not None and isinstance(row.scores, str) and "prepare_model fails" in row.scores:
            scheme = "tf_enhanced" if "tf_enhanced" in label else "tf"
            add(f"{label}, without prepare_model",
                lambda s=scheme: P.aimet(w.capture_model, w.calib[0], w.calib, s, prepare=False))
    return rows


def ort_rows(w: W.Workload, add, rows) -> None:
    """ONNX Runtime's float export and its ``quantize_static`` settings, added to ``rows``."""
    settings = [(m, ()) for m in ORT_METHODS] + [(m, w.ort_op_types) for m in ORT_METHODS if w.ort_op_types]
    with W.temp_dir() as tmp:
        float_onnx = os.path.join(tmp, "float.onnx")
        try:
            W.export_onnx(w, float_onnx)
        except Exception as exc:
            for m, ops in settings:
                rows.append(Row(W.ort_label(m, ops), f"failed: export: {_why(exc)}", 0.0))
            return
        add(ORT_FLOAT, lambda: W.ort_runner(w, float_onnx))
        for m, ops in settings:
            add(W.ort_label(m, ops), lambda: W.ort_runner(w, W.onnx_runtime_quantized(w, float_onnx, m, tmp, ops)),
                "GEMM only" if ops else "every op")


def _cell(metric: str, v: float) -> str:
    if "SQNR" in metric and v > 200:
        return "(reference)"  # float against itself: equal up to float rounding
    return f"{v:.5f}" if "cosine" in metric else f"{v:.2f}"


def table(w: W.Workload, rows: list[Row]) -> str:
    metrics = next(r.scores for r in rows if isinstance(r.scores, dict)).keys()
    lines = [f"**{w.name}** ({w.notes['data']})", "",
             "| toolkit | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for r in rows:
        if isinstance(r.scores, dict):
            lines.append(f"| {r.label} | " + " | ".join(_cell(k, v) for k, v in r.scores.items()) + " |")
        else:
            lines.append(f"| {r.label} | {r.scores} |" + " |" * (len(metrics) - 1))
    notes = [f"- {r.label}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "torchao and AIMET as run (quantized: ops of each kind with a quantized input or output "
                      "(torchao) or any quantizer (AIMET) / ops of that kind in the graph; then the kinds with none):",
                  *notes]
    return "\n".join(lines)


def _best(got: dict[str, tuple[float, str | None]], scopes) -> tuple[str, float] | None:
    """The closest peer row whose scope is in ``scopes`` (all peers when ``scopes`` is None)."""
    cand = {k: v for k, (v, scope) in got.items() if not k.startswith(("edgequant", "float"))
            and (scopes is None or scope in scopes)}
    return max(cand.items(), key=lambda kv: kv[1]) if cand else None


def verdict(w: W.Workload, rows: list[Row]) -> str:
    """edgequant against the best peer that quantizes the same ops: the int8 template (every op) against
    the peers quantizing every op, the GEMM-int8 template against those quantizing only GEMM inputs;
    the int16-activation template against every peer's int8."""
    key = w.closeness
    got = {r.label: (r.scores[key], r.scope) for r in rows if isinstance(r.scores, dict)}
    if _best(got, None) is None:
        return f"{w.name}: no peer produced a model"

    def ours(tname, suffixes=("", W.SMOOTHED)):  # worst of simulation and integer model (the better
        worst = []                                  # of plain and smoothed), or None
        for label in (f"edgequant {tname}{x}" for x in suffixes):
            vals = [v for k, (v, _) in got.items() if k.startswith(f"{label}, ")]
            worst += [min(vals)] if vals else []
        return max(worst) if worst else None

    def against(tname, scopes, what, strictly=False):
        best = _best(got, scopes)
        if best is None:
            return f"no peer quantizing {what}"
        text = f"best peer quantizing {what} {best[1]:.5g} ({best[0]})"
        mine = ours(tname)
        if mine is None:
            return text + f"; edgequant {tname} not run"
        ok = mine > best[1] if strictly else mine >= best[1]
        return text + f"; edgequant {tname} worst of simulation/integer (best of plain/{W.SMOOTHED.strip(' +')}) {mine:.5g} -> " + ("OK" if ok else "BELOW it")

    parts = [against("int8", ("every op",), "every op"), against(W.GEMM_TEMPLATE, ("GEMM only",), "GEMM inputs only")]
    nearest_db = ours("int8", (W.NEAREST,))
    if nearest_db is not None:
        parts.append(f"int8{W.NEAREST} (no GPTQ step) worst of simulation/integer {nearest_db:.5g}")
    others = _best(got, ("modules only",))
    if others:
        parts.append(f"quantizing modules only (not compared): {others[1]:.5g} ({others[0]})")
    best_any = _best(got, None)
    mine16 = ours("int8 w / int16 act")
    if mine16 is not None:
        parts.append(f"int16 activations {mine16:.5g} against every peer's best {best_any[1]:.5g} -> "
                     + ("OK" if mine16 > best_any[1] else "NOT above every peer"))
    return f"{w.name} ({key}): " + "; ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet,minilm,cnn")
    ap.add_argument("--only", default="", help="run only the rows whose label contains this text (and float)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    verdicts = []
    print("## Accuracy against float\n")
    for key in args.models.split(","):
        w = W.WORKLOADS[key]()
        rows = rows_for(w, args.only)
        print(table(w, rows) + "\n", flush=True)
        verdicts.append(verdict(w, rows))
    print("Acceptance check:\n")
    for v in verdicts:
        print(f"- {v}")
    only = f" --only '{args.only}'" if args.only else ""
    print(f"\ncommand: python benchmarks/accuracy.py --models {args.models}{only}\n")


if __name__ == "__main__":
    main()
