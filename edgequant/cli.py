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

Errors come out as one line on stderr, ``edgequant: error: ...``: exit status 2 for a usage
error (an unknown option, a missing argument or file, a bad SPEC, an unknown template or
march), 1 for a failure while running (a corrupt ``.eqm`` file, a model edgequant cannot
capture, an exception in the SPEC's factory, which is reported with the factory's file and
line). The global ``--debug`` option (``edgequant --debug quantize ...``) also prints the
Python traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from . import (FakeQuantState, calibrate, convert, export, load, prepare, ptq, qconfig_template, save,
               set_fake_quantize, visualize)
from .analysis import featuremap_similarity
from .analysis import report as write_report
from .demo import main as run_demo
from .march import March
from .onnx_export import export_onnx

app = typer.Typer(help="edgequant: float PyTorch model -> calibrated simulation -> integer model -> ONNX.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

TEMPLATES = {
    "int8": "default_calibration_qconfig_setter",
    "int16": "calibration_8bit_weight_16bit_act_qconfig_setter",
    "int4w": "calibration_4bit_weight_8bit_act_qconfig_setter",
}


_options = {"debug": False}


class FactoryError(RuntimeError):
    """The SPEC's factory (or the file that defines it) raised; the message names its file and line."""


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"edgequant {version('edgequant')}")
        except PackageNotFoundError:
            typer.echo("edgequant (not installed as a package)")
        raise typer.Exit(0)


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="print the Python traceback of an error"),
                    _v: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="print the version and exit")):
    _options["debug"] = debug


def _fail(msg: str) -> None:
    """A usage error: one line on stderr, exit status 2."""
    typer.echo(f"edgequant: error: {msg}", err=True)
    raise typer.Exit(2)


def _user_frame(exc: BaseException, path: str | None) -> str:
    """``file:line`` of the deepest traceback frame of ``exc`` inside the user's file ``path``."""
    where = None
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        where = f"{exc.filename}:{exc.lineno}"
    for frame in traceback.extract_tb(exc.__traceback__):
        if path and os.path.realpath(frame.filename) == os.path.realpath(path):
            where = f"{frame.filename}:{frame.lineno}"
    return where or "?"


def _call_user(what: str, path: str | None, fn, *args):
    """Run user code (load the SPEC's file or call its factory); an exception becomes a FactoryError."""
    try:
        return fn(*args)
    except (Exception, SystemExit) as exc:
        raise FactoryError(f"{what} raised {type(exc).__name__}: {_one_line(str(exc))} "
                           f"(at {_user_frame(exc, path)})") from exc


def _module_file(name: str) -> str | None:
    try:
        return importlib.util.find_spec(name).origin
    except Exception:  # a missing module or parent: import_module says which
        return None


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
        _call_user(f"loading {path}", str(path), module_spec.loader.exec_module, module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = _call_user(f"importing {mod_name}", _module_file(mod_name), importlib.import_module, mod_name)
        except FactoryError as exc:
            missing = exc.__cause__
            if isinstance(missing, ModuleNotFoundError) and missing.name and \
                    (mod_name + ".").startswith(missing.name + "."):  # the SPEC's module itself
                _fail(f"cannot import {mod_name!r} for SPEC {spec!r}: {missing}")
            raise
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        _fail(f"{mod_name} has no function {fn_name!r} (SPEC {spec!r})")
    made = _call_user(f"the factory {spec}", getattr(module, "__file__", None), fn)
    if isinstance(made, dict):
        made = (made.get("model"), made.get("example_inputs"), made.get("calibration"))
    if not isinstance(made, (tuple, list)) or len(made) != 3:
        got = f"{len(made)} items" if isinstance(made, (tuple, list)) else type(made).__name__
        _fail(f"{spec} must return (model, example_inputs, calibration_batches), got {got}")
    import torch

    model, example_inputs, _ = made
    if not isinstance(model, torch.nn.Module):
        _fail(f"{spec} returned {type(model).__name__} as the model; it must be a torch nn.Module")
    if example_inputs is None or not all(isinstance(t, torch.Tensor) for t in _as_tuple(example_inputs)):
        _fail(f"{spec} returned {type(example_inputs).__name__} as example_inputs; they must be a tensor or a "
              "tuple of tensors")
    return made


def _setter(template: str):
    name = TEMPLATES.get(template, template)
    setter = None if name.startswith("_") else getattr(qconfig_template, name, None) or getattr(ptq, name, None)
    if setter is None or not name.endswith("qconfig_setter"):
        _fail(f"unknown template {template!r}; use {', '.join(TEMPLATES)} or a setter name of "
              "edgequant.qconfig_template")
    return setter


def _march(march: str) -> str:
    try:
        return March(march).value
    except ValueError as exc:
        _fail(str(exc))


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _prepare(model, example_inputs, template: str, march: str):
    return prepare(model, _as_tuple(example_inputs), qconfig_setter=(_setter(template),), march=march)


def _calibrate(calib, batches, n: int) -> list:
    """Calibrate ``calib`` on up to ``n`` batches (progress bar); returns the batches used."""
    from itertools import islice

    try:
        batches = iter(batches)
    except TypeError:
        _fail(f"the SPEC's calibration batches must be an iterable, got {type(batches).__name__}")
    used = list(islice(batches, n))
    if not used:
        _fail("the calibration iterable gave no batches")
    calibrate(calib, used, progress=True)
    return used


def save_state(calib, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in calib.state_dict().items()}, str(path))


def load_state(calib, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: the calibrated state of this quantize output is missing")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a safetensors state dict ({_one_line(str(exc))})") from None
    calib.load_state_dict(state)
    set_fake_quantize(calib, FakeQuantState.VALIDATION)


def _onnx_files(quantized, calib, example_inputs, out: Path) -> list[Path]:
    """ONNX files: the visualize picture always, the runnable flavours that export (a warning for the others)."""
    written = [out / "model.onnx"]
    visualize(quantized, written[0])
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

    _setter(template)  # usage errors come before the factory runs
    if calib_batches < 1:
        _fail(f"--calib-batches must be at least 1, got {calib_batches}")
    _march(march)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; give a directory (it is created if missing)")
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
        files.append(write_report(out / "report.html", model, calib, quantized, used[:4], sensitivity=sensitivity,
                                  title=f"edgequant report: {spec}"))
    typer.echo(f"calibrated on {len(used)} batches with {template} for {march}; wrote:")
    for f in files:
        typer.echo(f"  {f}")


def _load_stage(what: str, example_like=None):
    """A ``.eqm`` file, a quantize output directory (its calibrated model) or a SPEC (float model)."""
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
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("spec", "template", "march") if not isinstance(meta, dict) or not isinstance(meta.get(k), str)]
    if missing:
        raise ValueError(f"{meta_path}: not written by `edgequant quantize` (no {', '.join(missing)})")
    model, example_inputs, batches = load_spec(meta["spec"])
    calib = _prepare(model, example_inputs, meta["template"], meta["march"])
    load_state(calib, out / "prepared.safetensors")
    return model, calib, batches, meta


def _npz_inputs(path: Path, input_names: list[str] | None = None) -> tuple:
    import numpy as np
    import torch

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # OSError, ValueError, zipfile.BadZipFile, ...
        raise ValueError(f"{path}: not an .npz file of arrays ({type(exc).__name__}: {exc})") from None
    if not hasattr(data, "keys"):
        raise ValueError(f"{path}: a single array (.npy), expected an .npz file of named arrays (numpy.savez)")
    with data:
        keys = list(data.keys())
        if input_names and set(input_names) <= set(keys):
            keys = list(input_names)
        if not keys:
            raise ValueError(f"{path}: holds no arrays")
        arrays = []
        for k in keys:
            try:
                a = data[k]
            except Exception as exc:  # object arrays (allow_pickle=False), damaged members
                raise ValueError(f"{path}: array {k!r} cannot be read without pickle ({_one_line(str(exc))})") from None
            if a.dtype.kind not in "biuf":
                raise ValueError(f"{path}: array {k!r} has dtype {a.dtype}; inputs are numeric arrays")
            if a.dtype == np.uint64 or a.dtype == np.uint32 or a.dtype == np.uint16:
                a = a.astype(np.int64)
            arrays.append(torch.from_numpy(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))))
        return tuple(arrays)


@app.command()
def compare(a: str = typer.Argument(..., help="reference: a .eqm file, a quantize output dir, or a SPEC (float)"),
            b: str = typer.Argument(..., help="compared: same choices as A"),
            inputs: Path = typer.Argument(..., help="an .npz file with the input arrays", exists=True, dir_okay=False),
            json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows as JSON")):
    """Per-layer cosine, SQNR and max error (LSB) of B against A."""
    sim = featuremap_similarity(_load_stage(a), _load_stage(b), _npz_inputs(inputs))
    typer.echo(str(sim))
    if json_out is not None:
        json_out.write_text(json.dumps(sim.to_dict(), indent=1, default=str))


@app.command()
def report(out_dir: Path = typer.Argument(..., help="an `edgequant quantize` output directory", exists=True,
                                          file_okay=False),
           html: Optional[Path] = typer.Option(None, help="report path (default OUT_DIR/report.html)"),
           batches: int = typer.Option(4, help="data batches for the analysis"),
           sensitivity: bool = typer.Option(True, help="include per-op sensitivity")):
    """Rebuild a quantize output's calibrated model and write its HTML report."""
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
def run(model: Path = typer.Argument(..., help="a saved model (.eqm)", exists=True, dir_okay=False),
        inputs: Path = typer.Argument(..., help="an .npz file: arrays named as the model's inputs, or in order",
                                      exists=True, dir_okay=False),
        out: Optional[Path] = typer.Option(None, help="write the outputs to this .npz")):
    """Run a saved (integer or quant-level) model on the arrays of an .npz file."""
    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    if out is not None:
        out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")   # what np.savez writes
        if out.is_dir() or not out.parent.is_dir():
            _fail(f"--out {out}: {'a directory' if out.is_dir() else 'its directory does not exist'}; "
                  "give the path of an .npz file to write")
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
def summary(model: Path = typer.Argument(..., help="a saved model (.eqm)", exists=True, dir_okay=False)):
    """One line per node of a saved model: name, op, dtype, scale."""
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
    run_demo(out_dir=out, calib_images=calib_images, test_images=test_images, sensitivity=sensitivity)


def _one_line(msg: str) -> str:
    """A multi-line message (e.g. a CaptureError listing ops) joined into one line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return " ".join(ln if ln.endswith(":") or i == len(lines) - 1 else ln + ";" for i, ln in enumerate(lines))


def _error_line(exc: BaseException) -> str:
    """``edgequant: error: ...``; edgequant's own errors by their message, others with their type."""
    msg = _one_line(str(exc)) or repr(exc)
    if isinstance(exc, (FactoryError, FileNotFoundError)) or type(exc).__module__.startswith("edgequant"):
        return f"edgequant: error: {msg}"
    return f"edgequant: error: {type(exc).__name__}: {msg}"


def main(argv: list[str] | None = None) -> None:
    """The ``edgequant`` entry point: runs ``app``; every error ends as one line and an exit status."""
    try:
        code = app(args=argv, prog_name="edgequant", standalone_mode=False)
    except Exception as exc:
        code = _report(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc: Exception) -> int:
    """Print ``exc`` as one line; its exit status. Click's exceptions are told apart by class name:
    typer ships its own copy of click, older typers use click itself."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    from_cli = type(exc).__module__.startswith(("typer", "click"))
    if from_cli and "NoArgsIsHelpError" in kinds:  # a bare `edgequant`: the help text
        if exc.format_message().strip():  # (typer's rich help is printed as the error is made)
            typer.echo(exc.format_message())
        return 2
    if from_cli and "UsageError" in kinds:  # unknown option, missing argument, bad value or path
        ctx = getattr(exc, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "edgequant"
        typer.echo(f"edgequant: error: {_one_line(exc.format_message())} (see `{cmd} --help`)", err=True)
        return 2
    if from_cli and ("ClickException" in kinds or "TyperException" in kinds):
        typer.echo(f"edgequant: error: {_one_line(exc.format_message())}", err=True)
        return int(getattr(exc, "exit_code", 1))
    if from_cli and "Abort" in kinds:
        typer.echo("edgequant: error: interrupted", err=True)
        return 130
    if _options["debug"]:
        traceback.print_exc()
    typer.echo(_error_line(exc) + ("" if _options["debug"] else " (edgequant --debug ... shows the traceback)"),
               err=True)
    return 2 if isinstance(exc, FileNotFoundError) else 1


if __name__ == "__main__":
    main()
