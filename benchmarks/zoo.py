"""Every model-zoo architecture through edgequant and its peers: SQNR against float, and edgequant's stage times.

For each ``ZOO`` architecture of ``tests/zoo/models.py`` (random weights, tiny widths, batch 2,
issue #20), on the same calibration batches (``make_inputs(seed)`` for ``--calib`` seeds 1, 2, ...)
and the same held-out batches (seeds 99, 100, ...), one process per model runs:

- edgequant, each template (``int8``; ``int16``: int8 weights, int16 activations) the way
  ``tests/zoo/harness.py`` runs it: ``prepare`` (example input ``make_inputs(0)``), ``calibrate``,
  ``export``, ``convert`` (``nash-e``), the integer model on the held-out batches (``run``) and the
  QDQ ONNX export (``qdq``), each timed. The score is the INTEGER model's outputs against float.
- ONNX Runtime ``quantize_static``: the float model exported by ``torch.onnx.export`` (TorchScript
  exporter, ``dynamo=False``, opset 17, static shapes), ``quant_pre_process``, then QDQ format,
  per-channel QInt8 weights, QInt8 (asymmetric) activations, CalibrationMethod MinMax and
  Percentile (ONNX Runtime's default 99.999), every op it quantizes (the settings of
  ``workloads.onnx_runtime_quantized``); the quantized file runs in ONNX Runtime (CPU, all graph
  optimisations, one thread). A cell gets the float export's own SQNR when that is below 60 dB, and
  the quantized file's SQNR with graph optimisations at ORT_ENABLE_BASIC when that differs by more
  than 1 dB (ONNX Runtime's extended QDQ fusions change the result). What it quantized is counted
  in the quantized file (``peers.onnx_qdq_ops``: its nodes with a dequantized input or a quantized
  output, as torchao's graph is counted).
- torch.ao FX PTQ: ``prepare_fx`` / ``convert_fx`` with ``get_default_qconfig_mapping("x86")``
  (HistogramObserver quint8 activations with ``reduce_range``, per-channel int8 weights), run as
  torch's integer model; "does not trace" when ``prepare_fx`` raises.

SQNR is 10 log10(|float|^2 / |quantized - float|^2) over every output element of every held-out
batch (``harness.sqnr``). torch runs with one thread. Each model runs in a forked child that is
killed at ``--seconds``: a tool still running then reads "timed out", the later ones "not run".
Prints a markdown table (one row per model) and a summary per tool.

    python benchmarks/zoo.py [--models a,b] [--quick] [--calib 8] [--eval 16] [--seconds 240] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import peers as P  # noqa: E402  (torchao's PT2E flow and AIMET-torch, as accuracy.py runs them)
import workloads as W  # noqa: E402  (ONNX Runtime's pre-processing and quiet context, as accuracy.py uses them)

sys.path.insert(0, os.path.join(ROOT, "tests"))  # ahead of benchmarks/: `zoo` is tests/zoo, not this script
from zoo import harness as H  # noqa: E402
from zoo.models import ZOO  # noqa: E402

import edgequant as eq  # noqa: E402

EQ_TEMPLATES = ("int8", "int16")
ORT_METHODS = ("MinMax", "Percentile")
NEW_PEERS = ("torchao X86", "torchao XNNPACK", "AIMET")
TOOLS = ("eq int8", "eq int16", "ORT MinMax", "ORT Percentile", "torch.ao") + NEW_PEERS
PEERS = tuple(t for t in TOOLS if not t.startswith("eq "))
BEHIND_DB = 1.0
FULL_COVERAGE = 0.9  # a torchao cell notes its coverage below this share of ops with a quantized input or output
EQ_STAGES = ("prepare", "calibrate", "export", "convert", "run", "qdq")
# 16 held-out batches (32 samples): with 4, the draw of batches alone moved a model's SQNR gap between
# two tools by several dB (HF ConvNeXt, edgequant int8 - ORT MinMax on three 4-batch draws: -1.3, +0.3
# and +5.1 dB; on 16-batch draws +2.3, +2.4 and +6.2; on 64 batches +3.5), more than the 1 dB the
# summary line judges
EVAL_SEED, N_EVAL = 99, 16
QUICK_MODELS = ("resnet18_basic", "mobilenet_v3_small", "yolov8n", "unet_bilinear", "vit_b16_mha", "hf_bert",
                "tcn", "lstm_classifier")
OPSET = 17
EXPORT_CHECK_DB = 60.0
BASIC_GAP_DB = 1.0


def why(exc: BaseException, limit: int = 110) -> str:
    text = H.first_line(exc).replace(ROOT + os.sep, "").replace("|", "/").replace("\n", " ")
    if not str(exc).strip() and exc.__traceback__ is not None:  # a bare `assert`: say where it is
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"{type(exc).__name__} (a bare assert) at {os.path.basename(frame.filename)}:{frame.lineno}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def outputs(fn, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for b in batches for t in H.tensors(fn(*b))]


def fresh(entry, example) -> torch.nn.Module:
    """A new float model (``make_model`` is seeded: the same weights every time) after one float
    forward, as the harness's model has run before ``prepare`` (YOLOv8's Detect caches its anchors then)."""
    model = entry.make_model()
    with torch.no_grad():
        model(*example)
    return model


@contextlib.contextmanager
def timed(seconds: dict, stage: str):
    t0 = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t0


# ---- the tools, each returning {"sqnr": dB or None, "error": why or None, "seconds": {stage: s}, ...} ----
def edgequant(entry, key, example, calib, evals, ref, tmp) -> dict:
    secs = {}
    res = {"sqnr": None, "error": None, "seconds": secs, "sim_sqnr": None}
    stage = "build"
    try:
        model = fresh(entry, example)
        stage = "prepare"
        with timed(secs, stage):
            cm = eq.prepare(model, example, qconfig_setter=(H.TEMPLATES[key],))
        stage = "calibrate"
        with timed(secs, stage):
            eq.calibrate(cm, calib)
        stage = "simulate"
        res["sim_sqnr"] = H.sqnr(outputs(cm, evals), ref)
        stage = "export"
        with timed(secs, stage):
            ir = eq.export(cm, example)
        stage = "convert"
        with timed(secs, stage):
            g = eq.convert(ir, H.MARCH)
        stage = "run"
        with timed(secs, stage):
            y = outputs(g, evals)
        res["sqnr"] = H.sqnr(y, ref)
    except Exception as exc:  # noqa: BLE001  (a failure is a result)
        res["error"] = f"fails at {stage}: {why(exc)}"
        res["failed_stage"] = stage
    if "calibrate" in secs:  # the QDQ file needs only the calibrated model
        try:
            with timed(secs, "qdq"):
                eq.export_onnx(cm, os.path.join(tmp, f"eq_{key}.qdq.onnx"), example, flavour="qdq")
        except Exception as exc:  # noqa: BLE001
            res["qdq_error"] = why(exc)
    return res


def _ort_outputs(path, names, batches, level=None) -> list:
    """``path`` in ONNX Runtime (``H.ort_session``: CPU, one thread, every graph optimisation; ``level``:
    a lower ``GraphOptimizationLevel``) on ``batches``, all outputs of each in order."""
    if level is None:
        sess = H.ort_session(path)
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level, so.intra_op_num_threads = 3, 1
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    out = []
    for b in batches:
        out += sess.run(None, {n: x.numpy() for n, x in zip(names, b) if n in wanted})
    return out


def onnx_runtime(entry, example, calib, evals, ref, tmp):
    """Yields ``(tool, result)`` for each calibration method."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    names = [f"input_{i}" for i in range(len(example))]
    float_path = os.path.join(tmp, "float.onnx")
    secs = {}
    try:
        with timed(secs, "export"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fresh(entry, example), example, float_path, dynamo=False, opset_version=OPSET,
                              input_names=names)
        export_sqnr = H.sqnr(_ort_outputs(float_path, names, evals), ref)
    except Exception as exc:  # noqa: BLE001
        for m in ORT_METHODS:
            yield f"ORT {m}", {"sqnr": None, "error": f"export fails: {why(exc)}", "seconds": dict(secs)}
        return
    note = None
    try:
        with timed(secs, "pre_process"):
            pre = W.ort_preprocessed(float_path)
    except Exception as exc:  # noqa: BLE001  (quantize the export as it is)
        pre, note = float_path, f"without quant_pre_process, which fails: {why(exc, 80)}"

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{n: x.numpy() for n, x in zip(names, b)} for b in calib])

        def get_next(self):
            return next(self.feeds, None)

    for m in ORT_METHODS:
        s = dict(secs)
        res = {"sqnr": None, "error": None, "seconds": s, "export_sqnr": export_sqnr, "note": note}
        out = os.path.join(tmp, f"ort_{m}.onnx")
        try:
            with timed(s, "quantize"), W.ort_quiet():
                quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, m))
            with timed(s, "run"):
                y = _ort_outputs(out, names, evals)
            res["sqnr"] = H.sqnr(y, ref)
            res["sqnr_basic"] = H.sqnr(_ort_outputs(out, names, evals, "ORT_ENABLE_BASIC"), ref)
            ops, kinds = P.onnx_qdq_ops(out)   # what it quantized, counted as for torchao
            peer = P.Peer(None, "", ops, input_kinds=kinds)
            res.update(scope=peer.scope, weighted=peer.weighted(), coverage=peer.coverage(), ops=ops)
        except Exception as exc:  # noqa: BLE001
            res["error"] = f"fails: {why(exc)}"
        yield f"ORT {m}", res


def torch_ao(entry, example, calib, evals, ref) -> dict:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    secs = {}
    res = {"sqnr": None, "error": None, "seconds": secs}
    try:
        with timed(secs, "prepare_fx"):
            prepared = prepare_fx(fresh(entry, example), get_default_qconfig_mapping("x86"), example)
    except Exception as exc:  # noqa: BLE001
        res["error"] = f"does not trace: {why(exc).split('. ')[0]}"
        return res
    stage = "calibrate"
    try:
        with timed(secs, stage):
            outputs(prepared, calib)
        stage = "convert_fx"
        with timed(secs, stage):
            q = convert_fx(prepared)
        stage = "run"
        with timed(secs, stage):
            y = outputs(q, evals)
        res["sqnr"] = H.sqnr([t.dequantize() if t.is_quantized else t for t in y], ref)
    except Exception as exc:  # noqa: BLE001
        res["error"] = f"fails at {stage}: {why(exc)}"
    return res


class _Flat(torch.nn.Module):
    """The model with its output as a flat tuple of tensors (``H.tensors`` order): AIMET takes only a
    tensor or a tuple/list/dict of tensors, and Hugging Face models return ``ModelOutput``s."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return tuple(H.tensors(self.model(*args)))


def _capturable(entry, example) -> torch.nn.Module:
    """A fresh float model, wrapped in ``_Flat`` unless it returns a tensor or a (nested) tuple/list of them."""
    model = fresh(entry, example)
    with torch.no_grad():
        out = model(*example)

    def plain(o):
        return isinstance(o, torch.Tensor) or type(o) in (tuple, list) and all(plain(x) for x in o)

    return model if plain(out) else _Flat(model).eval()


def _peer_result(peer: P.Peer, evals, ref, secs) -> dict:
    with timed(secs, "run"):
        y = outputs(peer, evals)
    return {"sqnr": H.sqnr(y, ref), "error": None, "seconds": secs, "scope": peer.scope,
            "weighted": peer.weighted(), "coverage": peer.coverage(), "setting": peer.setting, "ops": peer.ops}


def torchao(entry, example, calib, evals, ref, kind: str) -> dict:
    """torchao PT2E (``peers.torchao_pt2e``) with ``kind``'s quantizer ("x86" or "xnnpack")."""
    secs = {}
    try:
        with timed(secs, "quantize"):
            peer = P.torchao_pt2e(_capturable(entry, example), example, calib, kind)
        return _peer_result(peer, evals, ref, secs)
    except Exception as exc:  # noqa: BLE001
        return {"sqnr": None, "error": f"fails: {why(exc)}", "seconds": secs}


def aimet(entry, example, calib, evals, ref) -> dict:
    """AIMET QuantizationSimModel (``peers.aimet_sim``), tf (min-max) and tf_enhanced: the closer of the
    two. Without ``prepare_model`` (modules only) when torch.fx cannot trace the model."""
    secs, results, errors, note = {}, [], [], None
    try:
        with timed(secs, "prepare"):
            try:
                ready = P.aimet_ready(_capturable(entry, example), example)
            except P.PrepareFails as exc:
                note = why(exc, 80).removeprefix("PrepareFails: ")
                ready = P.aimet_ready(_capturable(entry, example), example, prepare=False)
    except Exception as exc:  # noqa: BLE001
        return {"sqnr": None, "error": f"fails: {why(exc)}", "seconds": secs}
    for scheme in ("tf", "tf_enhanced"):
        s = {}
        try:
            with timed(s, f"quantize {scheme}"):
                peer = P.aimet_sim(ready, example, calib, scheme)
            results.append({**_peer_result(peer, evals, ref, s), "scheme": scheme})
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{scheme} fails: {why(exc, 120).removeprefix('RuntimeError: ')}")
        secs.update({(f"run {scheme}" if k == "run" else k): v for k, v in s.items()})
    if not results:
        same = len({e.split(" fails: ", 1)[1] for e in errors}) == 1
        return {"sqnr": None, "seconds": secs,
                "error": f"tf and tf_enhanced fail: {errors[0].split(' fails: ', 1)[1]}" if same else "; ".join(errors)}
    res = max(results, key=lambda r: -math.inf if math.isnan(r["sqnr"]) else r["sqnr"])
    res["seconds"], res["note"] = secs, "; ".join([n for n in (note, *errors) if n]) or None
    return res


# ---- one model, in a forked child -------------------------------------------------------------------------
def _child(name, calib_seeds, eval_seeds, conn, missing):
    os.dup2(2, 1)   # the child's stdout (the TorchScript exporter prints whole graphs on failure) goes to stderr
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    entry = ZOO[name]
    try:
        example = entry.make_inputs(0)
        calib = [entry.make_inputs(s) for s in calib_seeds]
        evals = [entry.make_inputs(s) for s in eval_seeds]
        ref = outputs(fresh(entry, example), evals)
    except Exception as exc:  # noqa: BLE001
        conn.send(("float", {"error": f"float model fails: {why(exc)}"}))
        conn.send(("done", None))
        return
    with tempfile.TemporaryDirectory(prefix="edgequant-zoo-") as tmp:
        for key in EQ_TEMPLATES:
            conn.send(("started", f"eq {key}"))
            conn.send((f"eq {key}", edgequant(entry, key, example, calib, evals, ref, tmp)))
        conn.send(("started", "ORT MinMax"))
        for tool, res in onnx_runtime(entry, example, calib, evals, ref, tmp):
            conn.send((tool, res))
            conn.send(("started", "ORT Percentile"))
    conn.send(("started", "torch.ao"))
    conn.send(("torch.ao", torch_ao(entry, example, calib, evals, ref)))
    for tool in NEW_PEERS:
        package = "aimet" if tool == "AIMET" else "torchao"
        if missing.get(package):
            conn.send((tool, {"sqnr": None, "error": missing[package]}))
            continue
        conn.send(("started", tool))
        if tool == "AIMET":
            conn.send((tool, aimet(entry, example, calib, evals, ref)))
        else:
            conn.send((tool, torchao(entry, example, calib, evals, ref, tool.split()[-1].lower())))
    conn.send(("done", None))


def run_model(name, calib_seeds, eval_seeds, limit, missing=None) -> dict:
    """Every tool on ``name`` in a forked child, killed after ``limit`` seconds; ``missing``: peer
    package -> why it is not run (``peers.available()``)."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, calib_seeds, eval_seeds, send, missing or {}), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    results, running, stop, later = {}, None, None, ""
    while stop is None:
        left = t0 + limit - time.perf_counter()
        if left <= 0:
            stop, later = f"timed out (per-model limit {limit:.0f} s)", f"not run (per-model limit {limit:.0f} s reached)"
        elif recv.poll(min(left, 1.0)):
            try:
                tool, res = recv.recv()
            except EOFError:
                proc.join(5)
                stop, later = f"crashed (exit code {proc.exitcode})", "not run (the model's process crashed)"
                continue
            if tool == "done":
                stop = ""
            elif tool == "started":
                running = res
            else:
                results[tool] = res
    if proc.is_alive():
        proc.kill()
    proc.join()
    recv.close()
    if "float" in results:
        results.update({t: {"sqnr": None, "error": results["float"]["error"]} for t in TOOLS})
    for tool in TOOLS:
        if tool not in results:
            results[tool] = {"sqnr": None, "error": stop if tool == running else later}
    return {"name": name, "family": ZOO[name].family, "seconds": time.perf_counter() - t0, "tools": results}


# ---- the table ---------------------------------------------------------------------------------------------
def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def cell(tool: str, res: dict) -> str:
    if res.get("sqnr") is None:
        return res["error"] or "?"
    text = _db(res["sqnr"])
    if res.get("qdq_error"):
        text += f" (QDQ export fails: {res['qdq_error']})"
    if res.get("export_sqnr") is not None and res["export_sqnr"] < EXPORT_CHECK_DB:
        text += f" (float export {_db(res['export_sqnr'])} dB)"
    basic = res.get("sqnr_basic")
    if basic is not None and abs(basic - res["sqnr"]) > BASIC_GAP_DB:
        text += f" ({_db(basic)} at ORT_ENABLE_BASIC)"
    if res.get("scheme"):
        text += f" ({res['scheme']})"
    q, n = res.get("weighted") or (0, 0)
    cq, cn = res.get("coverage") or (0, 0)
    parts = [f"{q}/{n} conv/linear/matmul"] if q < n else []
    if cq < FULL_COVERAGE * cn:
        parts.append(f"{cq}/{cn} ops")
    if parts:
        text += f" (quantized: {', '.join(parts)})"
    if res.get("scope") in ("GEMM only", "modules only", P.RECURRENT_FLOAT):
        text += f" ({res['scope']})"
    if "non-strict export" in (res.get("setting") or ""):
        text += " (non-strict export)"
    if res.get("note"):
        text += f" ({res['note']})"
    return text


def stage_cell(res: dict) -> str:
    secs = res.get("seconds") or {}
    failed = res.get("failed_stage")
    parts = []
    for s in EQ_STAGES:
        if s in secs:
            parts.append(f"{secs[s]:.2f}")
        elif s == "qdq" and res.get("qdq_error") or s == failed:
            parts.append("fail")
        else:
            parts.append("-")
    return "/".join(parts) if secs else "-"


def table(rows) -> str:
    head = ["model", "family", *(f"{t} dB" for t in TOOLS),
            "eq int8 s (prepare/calib/export/convert/run/qdq)", "eq int16 s (same)", "all tools s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(TOOLS) + "---|---|---:|"]
    for r in rows:
        t = r["tools"]
        lines.append("| " + " | ".join([r["name"], r["family"], *(cell(k, t[k]) for k in TOOLS),
                                        stage_cell(t["eq int8"]), stage_cell(t["eq int16"]),
                                        f"{r['seconds']:.1f}"]) + " |")
    return "\n".join(lines)


def summary(rows) -> str:
    got = {k: {r["name"]: r["tools"][k]["sqnr"] for r in rows if r["tools"][k].get("sqnr") is not None}
           for k in TOOLS}
    n = len(rows)
    lines = ["| tool | models handled | median dB | eq int8 minus tool, median dB (models both handle) | "
             "eq int8 >= tool | eq int16 minus tool, median dB | eq int16 >= tool |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in TOOLS:
        vals = list(got[k].values())
        cells = [k, f"{len(vals)} of {n}", _db(statistics.median(vals)) if vals else "-"]
        for ours in ("eq int8", "eq int16"):
            both = [m for m in got[k] if m in got[ours]]
            if ours == k or not both:
                cells += ["-", "-"]
                continue
            diffs = [got[ours][m] - got[k][m] for m in both]
            finite = [d for d in diffs if not math.isnan(d)]
            cells += [_db(statistics.median(finite)) if finite else "-",
                      f"{sum(got[ours][m] >= got[k][m] for m in both)} of {len(both)}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", best_peer_line(rows)]
    med = {k: (statistics.median(got[k].values()) if got[k] else float("nan")) for k in TOOLS}
    line = ("Summary: models handled (SQNR measured) of " + str(n) + ": "
            + ", ".join(f"{k} {len(got[k])}" for k in TOOLS) + "; median SQNR: "
            + ", ".join(f"{k} {_db(med[k]) if got[k] else '-'} dB" for k in TOOLS) + ".")
    return "\n".join(lines) + "\n\n" + line


def _full(res: dict) -> bool:
    """The peer quantized the inputs of every conv/linear/matmul, the input or output of at least
    ``FULL_COVERAGE`` of the ops computing on float tensors (torchao; AIMET's per-module count says
    nothing there), and went through the whole graph (not "GEMM only", not AIMET's "modules only").
    ONNX Runtime's is counted in its QDQ file (``peers.onnx_qdq_ops``); torch.ao's, not measured
    here, counts as full."""
    q, n = res.get("weighted") or (0, 0)
    cq, cn = res.get("coverage") or (0, 0)
    return q == n and cq >= FULL_COVERAGE * cn and res.get("scope", "every op") == "every op"


def best_peer_line(rows) -> str:
    """On how many models edgequant int8 is >= the best peer that runs the model, and how many it is more
    than ``BEHIND_DB`` behind; then the same against only the peers that quantized as much (``_full``)."""
    parts = []
    for label, keep in (("the best peer that runs the model", lambda r: True),
                        (f"the best peer that quantizes every conv/linear/matmul and {FULL_COVERAGE:.0%} of all ops",
                         _full)):
        ahead, behind, n = 0, [], 0
        for r in rows:
            ours = r["tools"]["eq int8"].get("sqnr")
            peers = [r["tools"][k]["sqnr"] for k in PEERS
                     if r["tools"][k].get("sqnr") is not None and not math.isnan(r["tools"][k]["sqnr"])
                     and keep(r["tools"][k])]
            if ours is None or math.isnan(ours) or not peers:
                continue
            n += 1
            best = max(peers)
            ahead += ours >= best
            if ours < best - BEHIND_DB:
                behind.append(f"{r['name']} {ours - best:+.1f}")
        worst = ", ".join(sorted(behind, key=lambda t: float(t.split()[-1]))[:8])
        parts.append(f"against {label}: edgequant int8 >= it on {ahead} of {n} models, more than {BEHIND_DB:g} dB "
                     f"behind on {len(behind)}" + (f" (worst: {worst})" if behind else ""))
    return "Best peer per model (" + ", ".join(PEERS) + "): " + "; ".join(parts) + "."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated zoo names (default: all; --quick: a subset)")
    ap.add_argument("--quick", action="store_true", help=f"{len(QUICK_MODELS)} models, 4 calibration batches")
    ap.add_argument("--calib", type=int, default=None, help="calibration batches (default 8; --quick 4)")
    ap.add_argument("--eval", type=int, default=N_EVAL, help=f"held-out batches (default {N_EVAL})")
    ap.add_argument("--seconds", type=float, default=240, help="per-model limit for all tools together")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--peers", default="torchao,aimet",
                    help="third-party peers to run besides ONNX Runtime and torch.ao (default torchao,aimet; '' for none)")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(ZOO)}")
    n_calib = args.calib or (4 if args.quick else 8)
    calib_seeds = tuple(range(1, n_calib + 1))
    if args.eval < 1:
        ap.error(f"--eval must be >= 1, got {args.eval}")
    eval_seeds = tuple(range(EVAL_SEED, EVAL_SEED + args.eval))
    wanted = [p for p in args.peers.split(",") if p]
    missing = {p: "not run (--peers)" for p in ("torchao", "aimet") if p not in wanted}
    if wanted:  # imported here, once: each model's forked child inherits them
        missing.update({p: why for p, why in P.available().items() if why and p in wanted})
    t0 = time.perf_counter()
    rows = []
    for i, name in enumerate(names):
        r = run_model(name, calib_seeds, eval_seeds, args.seconds, missing)
        rows.append(r)
        brief = ", ".join(f"{k} {_db(v['sqnr']) if v.get('sqnr') is not None else 'x'}" for k, v in r["tools"].items()
                          if k in TOOLS)
        print(f"[{time.perf_counter() - t0:6.0f} s] {i + 1}/{len(names)} {name} ({r['seconds']:.0f} s): {brief}",
              file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    print("## Model zoo: SQNR against float per toolkit, and edgequant's stage times\n")
    print(f"{len(names)} architectures of `tests/zoo/models.py` (random weights, batch 2); every tool sees the same "
          f"{n_calib} calibration batches (`make_inputs(1..{n_calib})`) and is scored on the same {args.eval} held-out "
          f"batches (`make_inputs({eval_seeds[0]}..{eval_seeds[-1]})`): SQNR of all outputs against float, in dB. "
          "eq: edgequant's integer model (`nash-e`), templates int8 and int16 (int8 weights, int16 activations). "
          f"ORT: ONNX Runtime `quantize_static`, QDQ, per-channel QInt8 weights, QInt8 activations, of the "
          f"TorchScript `torch.onnx.export` (opset {OPSET}) after `quant_pre_process`. torch.ao: FX "
          "`prepare_fx`/`convert_fx`, `get_default_qconfig_mapping(\"x86\")`. torchao: PT2E "
          "(`torch.export`, strict unless it fails; `prepare_pt2e`/`convert_pt2e`) with X86InductorQuantizer "
          "(default config) or XNNPACKQuantizer (per-channel, static), its Q/DQ graph run in float. AIMET: "
          "QuantizationSimModel (default per-channel config, 8-bit) after `prepare_model` and BatchNorm folding "
          "(without them, modules only, when torch.fx cannot trace the model), the closer of tf and tf_enhanced. "
          "An ORT/torchao/AIMET cell says when the peer left a conv/linear/matmul float, when it left more than "
          f"{1 - FULL_COVERAGE:.0%} of the ops computing on float tensors with neither a quantized input nor "
          "a quantized output (ORT: nodes of its QDQ file; torchao), or quantized only GEMM inputs or (AIMET) "
          "modules only, or (AIMET) ran its LSTM/GRU/RNN modules' steps float (recurrent steps float: it "
          "quantizes their inputs, states and weights around torch's float kernel); AIMET's op count is its "
          "wrapped modules against those plus the compute ops its prepared graph calls as plain functions, "
          "which it leaves float (torchvision's LayerNorm2d becomes a float F.layer_norm). The line \"Best "
          "peer per model\" counts the models where edgequant int8 reaches the best peer, and again counting only "
          "the peer cells without such a note. Stage seconds: one torch thread; "
          f"`run` is the integer model on the {args.eval} held-out batches. Per-model limit {args.seconds:.0f} s.\n")
    print(table(rows) + "\n")
    print(summary(rows) + "\n")
    cmd = "python benchmarks/zoo.py" + (" --quick" if args.quick else "") + (f" --models {args.models}" if args.models else "") \
        + (f" --calib {args.calib}" if args.calib else "") + (f" --eval {args.eval}" if args.eval != N_EVAL else "") \
        + (f" --seconds {args.seconds:g}" if args.seconds != 240 else "") \
        + (f" --peers '{args.peers}'" if args.peers != "torchao,aimet" else "")
    print(f"wall time {wall / 60:.1f} min for {len(names)} models; command: `{cmd}`")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
