"""How close each toolkit's quantized model stays to float, on three real models, in one process.

For each workload (``workloads.py``: EfficientNet-Lite0, all-MiniLM-L6-v2, the MNIST residual
CNN) the float model, edgequant (int8 and int8-weight/int16-activation templates, each as the
VALIDATION simulation and as the converted integer model), torch.ao.quantization FX PTQ and
ONNX Runtime ``quantize_static`` (MinMax, Entropy, Percentile; every op, and for MiniLM also
only MatMul/Gemm) all see the same calibration batches and are scored on the same held-out
batches. The float ONNX export run by ONNX Runtime gets a row of its own, so a gap between
float and the ONNX Runtime rows is quantization, not export. A peer that cannot handle a model
gets a row saying why, in one line. Prints one markdown table per model.

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

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as W  # noqa: E402

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
ORT_FLOAT = "float ONNX export run by ONNX Runtime (export check, not quantized)"


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:160].replace("|", "/")


def rows_for(w: W.Workload, only: str = "") -> list[tuple[str, dict | str, float]]:
    """``(toolkit row, scores or the failure, seconds)`` for every flow on ``w`` (whose label contains ``only``)."""
    ref = w.run(w.model)
    rows = []

    def add(label, make_fn):
        if only not in label and label != "float":
            return
        start = time.perf_counter()
        try:
            fn = make_fn()
            rows.append((label, w.score(ref, w.run(fn)), time.perf_counter() - start))
        except Exception as exc:  # a peer (or we) failing on a model is a result, not a crash
            rows.append((label, f"failed: {_why(exc)}", time.perf_counter() - start))
        print(f"  {w.name}: {label} ({rows[-1][2]:.0f} s): {rows[-1][1]}", file=sys.stderr, flush=True)

    add("float", lambda: w.model)
    for tname, setter in W.TEMPLATES.items():
        holder = {}
        if only and only not in f"edgequant {tname}, simulation" + f"edgequant {tname}, integer model":
            continue
        add(f"edgequant {tname}, simulation", lambda: holder.setdefault("cm", W.edgequant_calibrated(w, setter)))
        if "cm" not in holder and only in f"edgequant {tname}, integer model":
            holder["cm"] = W.edgequant_calibrated(w, setter)
        if "cm" in holder:
            add(f"edgequant {tname}, integer model", lambda: W.edgequant_integer(w, holder["cm"]))
    add("torch.ao FX, HistogramObserver, per-channel", lambda: W.torch_ao_fx(w, "histogram"))
    if only and "ONNX Runtime" not in only:
        return rows
    settings = [(m, ()) for m in ORT_METHODS] + [(m, w.ort_op_types) for m in ORT_METHODS if w.ort_op_types]
    with W.temp_dir() as tmp:
        float_onnx = os.path.join(tmp, "float.onnx")
        try:
            W.export_onnx(w, float_onnx)
        except Exception as exc:
            for m, ops in settings:
                rows.append((W.ort_label(m, ops), f"failed: export: {_why(exc)}", 0.0))
            return rows
        add(ORT_FLOAT, lambda: W.ort_runner(w, float_onnx))
        for m, ops in settings:
            add(W.ort_label(m, ops), lambda: W.ort_runner(w, W.onnx_runtime_quantized(w, float_onnx, m, tmp, ops)))
    return rows


def _cell(metric: str, v: float) -> str:
    if "SQNR" in metric and v > 200:
        return "(reference)"  # float against itself: equal up to float rounding
    return f"{v:.5f}" if "cosine" in metric else f"{v:.2f}"


def table(w: W.Workload, rows) -> str:
    metrics = next(s for _, s, _ in rows if isinstance(s, dict)).keys()
    lines = [f"**{w.name}** ({w.notes['data']})", "",
             "| toolkit | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for label, s, _ in rows:
        if isinstance(s, dict):
            lines.append(f"| {label} | " + " | ".join(_cell(k, v) for k, v in s.items()) + " |")
        else:
            lines.append(f"| {label} | {s} |" + " |" * (len(metrics) - 1))
    return "\n".join(lines)


def verdict(w: W.Workload, rows) -> str:
    """Does edgequant int8 reach the best peer, and int16 activations beat every peer's int8?"""
    key = w.closeness
    got = {label: s[key] for label, s, _ in rows if isinstance(s, dict)}
    peers = {k: v for k, v in got.items() if not k.startswith(("edgequant", "float"))}
    if not peers:
        return f"{w.name}: no peer produced a model"
    best_label, best = max(peers.items(), key=lambda kv: kv[1])
    if not all(any(k.startswith(ours) for k in got) for ours in ("edgequant int8,", "edgequant int8 w /")):
        return f"{w.name} ({key}): best peer {best:.5g} ({best_label}); edgequant rows not run"
    ours8 = min(v for k, v in got.items() if k.startswith("edgequant int8,"))
    ours16 = min(v for k, v in got.items() if k.startswith("edgequant int8 w / int16"))
    return (f"{w.name} ({key}): best peer {best:.5g} ({best_label}); edgequant int8 worst of simulation/integer "
            f"{ours8:.5g} -> {'OK' if ours8 >= best else 'BELOW the best peer'}; int16 activations {ours16:.5g} -> "
            f"{'OK' if ours16 > best else 'NOT above every peer'}")


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
