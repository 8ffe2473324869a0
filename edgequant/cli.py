"""The ``edgequant`` command line: the whole flow from a shell (typer; ``--help`` on every command).

Takes command-line arguments; writes files and prints tables. Commands:

- ``quantize SPEC``: SPEC names a Python factory ``module:function`` (or ``path/file.py:function``)
  returning ``(model, example_inputs, calibration_batches)``; prepares the model with
  ``--template``, calibrates on ``--calib-batches`` batches, exports and converts for
  ``--march`` and writes into ``--out``: ``prepared.safetensors`` (the calibrated state),
  ``quant.eqm`` (the exported graph), ``model.eqm`` (the integer model), ``model.onnx``
  (``visualize``), ``model.qdq.onnx`` / ``model.int.onnx`` (``edgequant.onnx_export``),
  ``example_inputs.npz``, ``quantize.json`` (how it was made) and ``report.html``;
- ``compare A B INPUT.npz``: per-layer similarity of two stages (each a ``.eqm`` file, a
  ``quantize`` output directory = its calibrated model, or a SPEC = its float model);
- ``report DIR``: rebuild a ``quantize`` output's calibrated model and write its report;
- ``run MODEL INPUT.npz``: run a saved model on arrays, write the outputs to ``--out``;
- ``summary MODEL``: one line per node of a saved model;
- ``demo``: the bundled demo (``edgequant.demo``).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="edgequant: float PyTorch model -> calibrated simulation -> integer model -> ONNX.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

TEMPLATES = {
    "int8": "default_calibration_qconfig_setter",
    "int16": "calibration_8bit_weight_16bit_act_qconfig_setter",
    "int4w": "calibration_4bit_weight_8bit_act_qconfig_setter",
}


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def load_spec(spec: str):
    """``module:function`` or ``file.py:function`` -> ``(model, example_inputs, calibration batches)``."""
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        _fail(f"SPEC must look like module:function or path/file.py:function, got {spec!r}")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.exists():
            _fail(f"{path}: no such file (SPEC {spec!r})")
        sys.path.insert(0, str(path.resolve().parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            _fail(f"cannot import {mod_name!r} for SPEC {spec!r}: {exc}")
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        _fail(f"{mod_name} has no function {fn_name!r} (SPEC {spec!r})")
    made = fn()
    if isinstance(made, dict):
        made = (made.get("model"), made.get("example_inputs"), made.get("calibration"))
    if not isinstance(made, (tuple, list)) or len(made) != 3:
        _fail(f"{spec} must return (model, example_inputs, calibration_batches), got {type(made).__name__}")
    return made


def _setter(template: str):
    from . import qconfig_template
    from . import ptq

    name = TEMPLATES.get(template, template)
    setter = getattr(qconfig_template, name, None) or getattr(ptq, name, None)
    if setter is None:
        _fail(f"unknown template {template!r}; use {', '.join(TEMPLATES)} or a setter name of "
              "edgequant.qconfig_template")
    return setter


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _prepare(model, example_inputs, template: str, march: str):
    from . import prepare

    return prepare(model, _as_tuple(example_inputs), qconfig_setter=(_setter(template),), march=march)


def _calibrate(calib, batches, n: int) -> list:
    """Calibrate ``calib`` on up to ``n`` batches (progress bar); returns the batches used."""
    from itertools import islice

    from . import calibrate

    used = []

    def first_n():
        for b in islice(batches, n):
            used.append(b)
            yield b

    calibrate(calib, first_n(), progress=True)
    if not used:
        _fail("the calibration iterable gave no batches")
    return used


def save_state(calib, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in calib.state_dict().items()}, str(path))


def load_state(calib, path: Path) -> None:
    from safetensors.torch import load_file

    from . import FakeQuantState, set_fake_quantize

    calib.load_state_dict(load_file(str(path)))
    set_fake_quantize(calib, FakeQuantState.VALIDATION)


def _onnx_files(quantized, calib, example_inputs, out: Path) -> list[Path]:
    """ONNX files: the visualize picture always, the runnable flavours when export_onnx exists."""
    from . import visualize

    written = [out / "model.onnx"]
    visualize(quantized, written[0])
    try:
        from .onnx_export import export_onnx
    except ImportError:
        return written
    for flavour, model, name in (("qdq", calib, "model.qdq.onnx"), ("integer", quantized, "model.int.onnx")):
        try:
            export_onnx(model, out / name, _as_tuple(example_inputs), flavour=flavour)
            written.append(out / name)
        except Exception as exc:  # the other files stay useful; say what failed
            typer.echo(f"warning: ONNX {flavour} export failed: {exc}", err=True)
    return written


@app.command()
def quantize(spec: str = typer.Argument(..., help="module:function returning (model, example_inputs, calibration batches)"),
             template: str = typer.Option("int8", help="int8, int16, int4w, or a setter name of edgequant.qconfig_template"),
             march: str = typer.Option("nash-m", help="target: nash-e, nash-m, nash-p, nash-h"),
             calib_batches: int = typer.Option(32, help="calibration batches to use"),
             out: Path = typer.Option(Path("edgequant-out"), help="output directory"),
             report: bool = typer.Option(True, help="write report.html"),
             sensitivity: bool = typer.Option(True, help="include per-op sensitivity in the report")):
    """Prepare, calibrate, export and convert a model; write the state, the integer model, ONNX and a report."""
    import numpy as np

    from . import convert, export, save

    model, example_inputs, batches = load_spec(spec)
    out.mkdir(parents=True, exist_ok=True)
    calib = _prepare(model, example_inputs, template, march)
    used = _calibrate(calib, batches, calib_batches)
    save_state(calib, out / "prepared.safetensors")
    ir = export(calib, _as_tuple(example_inputs))
    save(ir, out / "quant.eqm")
    quantized = convert(ir, march)
    save(quantized, out / "model.eqm")
    onnx_paths = _onnx_files(quantized, calib, example_inputs, out)
    np.savez(out / "example_inputs.npz", **{n: t.detach().numpy() for n, t in zip(ir.inputs, _as_tuple(example_inputs))})
    (out / "quantize.json").write_text(json.dumps({"spec": spec, "template": template, "march": march,
                                                   "calib_batches": len(used)}, indent=1))
    files = [out / "prepared.safetensors", out / "quant.eqm", out / "model.eqm", *onnx_paths, out / "example_inputs.npz",
             out / "quantize.json"]
    if report:
        from .analysis import report as write_report

        files.append(write_report(out / "report.html", model, calib, quantized, used[:4], sensitivity=sensitivity,
                                  title=f"edgequant report: {spec}"))
    typer.echo(f"calibrated on {len(used)} batches with {template} for {march}; wrote:")
    for f in files:
        typer.echo(f"  {f}")


def _load_stage(what: str, example_like=None):
    """A ``.eqm`` file, a quantize output directory (its calibrated model) or a SPEC (float model)."""
    from . import load

    p = Path(what)
    if p.is_file():
        return load(p)
    if p.is_dir():
        return _rebuild(p)[1]
    return load_spec(what)[0]


def _rebuild(out: Path):
    """``(float model, calibrated model, calibration batches, quantize.json)`` of a quantize output."""
    meta_path = out / "quantize.json"
    if not meta_path.exists():
        _fail(f"{out} is not an `edgequant quantize` output directory (no quantize.json)")
    meta = json.loads(meta_path.read_text())
    model, example_inputs, batches = load_spec(meta["spec"])
    calib = _prepare(model, example_inputs, meta["template"], meta["march"])
    load_state(calib, out / "prepared.safetensors")
    return model, calib, batches, meta


def _npz_inputs(path: Path, input_names: list[str] | None = None) -> tuple:
    import numpy as np
    import torch

    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        if input_names and set(input_names) <= set(keys):
            keys = list(input_names)
        return tuple(torch.from_numpy(np.array(data[k])) for k in keys)


@app.command()
def compare(a: str = typer.Argument(..., help="reference: a .eqm file, a quantize output dir, or a SPEC (float)"),
            b: str = typer.Argument(..., help="compared: same choices as A"),
            inputs: Path = typer.Argument(..., help="an .npz file with the input arrays"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows as JSON")):
    """Per-layer cosine, SQNR and max error (LSB) of B against A."""
    from .analysis import featuremap_similarity

    sim = featuremap_similarity(_load_stage(a), _load_stage(b), _npz_inputs(inputs))
    typer.echo(str(sim))
    if json_out is not None:
        json_out.write_text(json.dumps(sim.to_dict(), indent=1, default=str))


@app.command()
def report(out_dir: Path = typer.Argument(..., help="an `edgequant quantize` output directory"),
           html: Optional[Path] = typer.Option(None, help="report path (default OUT_DIR/report.html)"),
           batches: int = typer.Option(4, help="data batches for the analysis"),
           sensitivity: bool = typer.Option(True, help="include per-op sensitivity")):
    """Rebuild a quantize output's calibrated model and write its HTML report."""
    from . import load
    from .analysis import report as write_report

    model, calib, data, meta = _rebuild(out_dir)
    used = []
    for bt in data:
        if len(used) >= batches:
            break
        used.append(bt)
    quantized = load(out_dir / "model.eqm") if (out_dir / "model.eqm").exists() else None
    path = write_report(html or out_dir / "report.html", model, calib, quantized, used, sensitivity=sensitivity,
                        title=f"edgequant report: {meta['spec']}")
    typer.echo(f"report written to {path}")


@app.command()
def run(model: Path = typer.Argument(..., help="a saved model (.eqm)"),
        inputs: Path = typer.Argument(..., help="an .npz file: arrays named as the model's inputs, or in order"),
        out: Optional[Path] = typer.Option(None, help="write the outputs to this .npz")):
    """Run a saved (integer or quant-level) model on the arrays of an .npz file."""
    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    from . import load

    g = load(model)
    xs = _npz_inputs(inputs, g.inputs)
    outs = [t for t in pytree.tree_leaves(g(*xs)) if isinstance(t, torch.Tensor)]
    for i, t in enumerate(outs):
        flat = t.flatten()[:6].tolist()
        typer.echo(f"output {i}: shape {tuple(t.shape)} {t.dtype} first values {[round(v, 5) for v in flat]}")
    if out is not None:
        np.savez(out, **{f"output{i}": t.numpy() for i, t in enumerate(outs)})
        typer.echo(f"outputs written to {out}")


@app.command()
def summary(model: Path = typer.Argument(..., help="a saved model (.eqm)")):
    """One line per node of a saved model: name, op, dtype, scale."""
    from . import load

    g = load(model)
    typer.echo(f"{g!r}")
    typer.echo(f"{'node':<36}{'op':<14}{'dtype':<9}scale")
    for r in g.summary():
        s = r["scale"]
        s = f"{s:.4g}" if isinstance(s, float) else (f"per channel ({len(s)})" if s else "-")
        typer.echo(f"{r['name'][:35]:<36}{r['op'][:13]:<14}{str(r['dtype']):<9}{s}")


@app.command()
def demo(out: Optional[Path] = typer.Option(None, help="output directory (default: a new temporary one)"),
         calib_images: int = typer.Option(32, help="calibration crops"),
         test_images: int = typer.Option(48, help="held-out crops"),
         sensitivity: bool = typer.Option(False, help="add per-op sensitivity to the report (several minutes)")):
    """EfficientNet-Lite0 on scikit-image photographs: float -> calibrated -> integer -> ONNX, with a report."""
    from .demo import main as run_demo

    run_demo(out_dir=out, calib_images=calib_images, test_images=test_images, sensitivity=sensitivity)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
