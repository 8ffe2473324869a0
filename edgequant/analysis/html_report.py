"""The HTML report: one self-contained file with the tables and plots of a quantized model.

``report(path, float_model, calib_model, quantized, data, ...)`` takes any of the float model,
the prepared (calibrated or QAT) model, the converted integer model and a data set (batches),
or a ``QuantAnalysis`` already run; computes what it lacks and writes ``path``: one HTML file,
no external resource (plots are matplotlib PNGs embedded as base64 ``data:`` URIs). Sections:

- tables the caller adds (``tables={"title": [row dicts]}``, e.g. an accuracy table);
- the qconfig check (dtype and observer of every tensor, warnings);
- per-layer SQNR: float vs simulation and simulation vs integer (plot and table);
- the op sensitivity ranking and the ops proposed for int16;
- activation histograms with each tensor's chosen clipping range;
- LUT error curves: per table, the largest error of each segment over its input codes
  (``edgequant.lut.report``).

Returns the path written.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path

from ..argcheck import expect_flag, expect_int, expect_path
from ..lut.quality import report as lut_report
from .qconfig_check import check_qconfig
from .quant_analysis import QuantAnalysis
from .similarity import featuremap_similarity, finite


def _figure(*args, **kwargs):
    """A matplotlib figure without pyplot (no GUI backend); imported late so that
    ``import edgequant.analysis`` stays light."""
    from matplotlib.figure import Figure as _Figure

    return _Figure(*args, **kwargs)

_CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#eee}h2{border-bottom:2px solid #446;margin-top:32px}.warn{color:#a40}
img{max-width:100%;border:1px solid #ddd;margin:4px}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)   # fixed margins: "tight" layouts cost seconds of text layout
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if v == math.inf else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def _table(rows: list[dict], columns: list[str] | None = None, limit: int = 400) -> str:
    if not rows:
        return "<p>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows[:limit])
    more = f"<p>({len(rows) - limit} more rows not shown)</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _sqnr_plot(series: dict[str, list[dict]]) -> str:
    names = [r["name"] for r in next(iter(series.values()))]
    fig = _figure(figsize=(max(6, 0.18 * len(names) + 2), 4.6))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.35)
    ax = fig.add_subplot()
    for label, rows in series.items():
        by = {r["name"]: finite(r["sqnr"]) for r in rows}
        ax.plot(range(len(names)), [by.get(n, math.nan) for n in names], marker="o", ms=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("per-layer SQNR (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _sensitivity_plot(table, k: int = 30) -> str:
    rows = table.rows[:k]
    fig = _figure(figsize=(8, 0.22 * len(rows) + 1.2))
    fig.subplots_adjust(left=0.35, right=0.97, top=1 - 0.4 / (0.22 * len(rows) + 1.2), bottom=0.5 / (0.22 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), [finite(r.value) for r in rows], color="#c55")
    ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"output {table.metric} with only this op quantized")
    ax.set_title(f"op sensitivity, {len(rows)} most sensitive ops")
    return _png(fig)


def _grid(items: list, draw, per_fig: int = 12, cols: int = 3) -> str:
    """Small plots, ``cols`` per row, ``per_fig`` per image; ``draw(ax, item)`` draws one."""
    out = []
    for start in range(0, len(items), per_fig):
        chunk = items[start:start + per_fig]
        nrows = -(-len(chunk) // cols)
        fig = _figure(figsize=(11, 2.4 * nrows))
        fig.subplots_adjust(left=0.05, right=0.98, top=1 - 0.25 / nrows, bottom=0.3 / nrows, hspace=0.55, wspace=0.25)
        for i, item in enumerate(chunk):
            ax = fig.add_subplot(nrows, cols, i + 1)
            draw(ax, item)
            ax.tick_params(labelsize=6)
        out.append(_png(fig))
    return "".join(out)


def _draw_histogram(ax, h: dict) -> None:
    ax.stairs(h["counts"], h["edges"], fill=True, color="#68a")
    ax.set_yscale("log")
    for x in h["clip"] or ():
        ax.axvline(x, color="#c33", ls="--", lw=1)
    share = h["clipped_share"]
    note = "" if share is None else f", clipped {100 * share:.3g}%"
    ax.set_title(f"{h['name'][:34]} ({h['dtype']}{note})", fontsize=7)


def _draw_lut(ax, r: dict) -> None:
    for s in r["segments"]:
        if s["rel_error"] is not None:
            ax.hlines(max(s["rel_error"], 1e-9), *s["codes"], color="#373", lw=2)
    ax.set_yscale("log")
    ax.set_xlabel("input code", fontsize=6)
    ax.set_ylabel("max rel. error", fontsize=6)
    ax.set_title(f"{r['node'][:30]} {r['table']} ({r['kind']})", fontsize=7)


def report(path, float_model=None, calib_model=None, quantized=None, data=None, *, analysis=None,
           title: str = "edgequant quantization report", tables: dict[str, list[dict]] | None = None,
           sensitivity: bool = True, sensitivity_batches: int | None = 2, histogram_batches: int = 2) -> Path:
    """Write the report to ``path`` (see the module docstring); returns ``Path(path)``."""
    expect_path(path, "report", "path")
    expect_flag(sensitivity, "report", "sensitivity")
    expect_int(sensitivity_batches, "report", "sensitivity_batches", lo=1, none=True)
    expect_int(histogram_batches, "report", "histogram_batches", lo=1)
    if not isinstance(title, str):
        raise TypeError(f"report: title must be a str, got {type(title).__name__}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"report: path {str(path)!r} is a directory; give the HTML file to write "
                                "(e.g. report.html inside it)")

    qa = analysis
    if qa is None and calib_model is not None and data is not None:
        qa = QuantAnalysis(float_model if float_model is not None else calib_model, calib_model, data, quantized)
        if float_model is not None:
            qa.auto_find_bad_case()
            qa.compare_per_layer()
        elif quantized is not None:
            qa.layers_int = featuremap_similarity(calib_model, quantized, qa.batches[0])
        if sensitivity:
            qa.sensitivity(sensitivity_batches)
            qa.propose_int16()
        qa.histograms(histogram_batches)
    calib_model = calib_model if calib_model is not None else (qa.calib_model if qa is not None else None)
    quantized = quantized if quantized is not None else (qa.quantized if qa is not None else None)

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by edgequant</p>"]
    for name, rows in (tables or {}).items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table(rows)]
    if calib_model is not None:
        check = check_qconfig(calib_model)
        parts.append("<h2>Qconfig of every tensor</h2>")
        parts += [f'<p class="warn">warning: {html.escape(w)}</p>' for w in check.warnings]
        parts.append(_table(check.rows, ["name", "kind", "dtype", "observer", "ch_axis", "calibrated", "consumers"]))
    if qa is not None and (qa.layers is not None or qa.layers_int is not None):
        parts.append("<h2>Per-layer agreement</h2>")
        series = {}
        if qa.layers is not None:
            series["float vs simulation"] = qa.layers.rows
        if qa.layers_int is not None:
            series["simulation vs integer"] = qa.layers_int.rows
        parts.append(_sqnr_plot(series))
        if qa.bad_cases:
            parts.append(f"<p>on the {len(qa.bad_inputs[0])} inputs of the data set whose outputs agree worst "
                         f"with float ({qa.metric}: worst {qa.bad_cases[0]['value']:.4g}, median "
                         f"{qa.bad_cases[len(qa.bad_cases) // 2]['value']:.4g})</p>")
        cols = ["name", "op", "dtype", "cosine", "sqnr", "max_abs", "max_lsb"]
        for label, rows in series.items():
            parts += [f"<h3>{label}</h3>", _table(rows, cols)]
    if qa is not None and qa.table is not None:
        parts += ["<h2>Op sensitivity</h2>", _sensitivity_plot(qa.table)]
        parts.append(f"<p>proposed for int16: <b>{html.escape(', '.join(qa.proposed) or '(none)')}</b></p>")
        parts.append(_table(qa.table.to_dict()["rows"]))
    if qa is not None and qa.hist:
        parts += ["<h2>Activation histograms and clipping ranges</h2>",
                  "<p>dashed red lines: the range the chosen scale represents; values outside it saturate.</p>",
                  _grid(qa.hist, _draw_histogram),
                  _table([{k: h[k] for k in ("name", "dtype", "observer", "scale", "min", "max", "clip", "clipped_share")}
                          for h in qa.hist])]
    lut_rows = lut_report(quantized if quantized is not None and calib_model is None else calib_model) \
        if (calib_model is not None or quantized is not None) else []
    parts.append("<h2>Lookup tables</h2>")
    if lut_rows:
        parts.append(_grid([r for r in lut_rows if any(s["rel_error"] is not None for s in r["segments"])],
                           _draw_lut, per_fig=9))
        parts.append(_table([{"node": r["node"], "op": r["op"], "table": r["table"], "kind": r["kind"],
                              "used_share": r["used_share"],
                              "worst_rel_error": max((s["rel_error"] for s in r["segments"] if s["rel_error"] is not None),
                                                     default=None)} for r in lut_rows]))
    else:
        parts.append("<p>this model has no lookup tables (no nonlinear function other than relu-like ops).</p>")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path
