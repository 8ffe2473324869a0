"""The ``edgequant`` command line: every command, run through typer's CliRunner (same process).

``quantize`` runs on the factory ``tests/cli_factory.py:residual_cnn`` (the trained MNIST CNN);
the files it writes are then checked against the library called directly: the saved integer
model reloads and equals ``convert(export(...))`` of the saved calibrated state, ``run``
writes exactly what the loaded graph computes, ``summary`` lists every node, ``compare`` and
``report`` work from those files. ``demo`` runs with a few images and no sensitivity pass.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgequant as eq
from edgequant.cli import app

SPEC = f"{Path(__file__).resolve().parent / 'cli_factory.py'}:residual_cnn"
runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.exception!r}"
    return res.output


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    text = invoke("quantize", SPEC, "--template", "int8", "--march", "nash-m", "--calib-batches", 3,
                  "--out", out, "--no-sensitivity")
    return out, text


def test_help_on_every_command():
    assert "quantize" in invoke("--help")
    for cmd in ("quantize", "compare", "report", "run", "summary", "demo"):
        assert "--help" in invoke(cmd, "--help") or "Usage" in invoke(cmd, "--help")


def test_quantize_writes_state_models_onnx_and_report(quantized_dir):
    out, text = quantized_dir
    for name in ("prepared.safetensors", "quant.eqm", "model.eqm", "model.onnx", "example_inputs.npz",
                 "quantize.json", "report.html"):
        assert (out / name).exists(), name
        assert str(out / name) in text
    meta = json.loads((out / "quantize.json").read_text())
    assert meta["calib_batches"] == 3 and meta["template"] == "int8"
    # the saved state rebuilds the same integer model as the saved one
    from edgequant.cli import _rebuild, load_spec

    _, calib, _, _ = _rebuild(out)
    again = eq.convert(eq.export(calib), eq.March.NASH_M)
    x = load_spec(SPEC)[1][0]
    assert torch.equal(again(x), eq.load(out / "model.eqm")(x))
    import onnx

    onnx.checker.check_model(onnx.load(out / "model.onnx"))


def test_run_writes_what_the_loaded_model_computes(quantized_dir, tmp_path):
    out, _ = quantized_dir
    x = torch.rand(5, 1, 28, 28)
    np.savez(tmp_path / "in.npz", x=x.numpy())
    text = invoke("run", out / "model.eqm", tmp_path / "in.npz", "--out", tmp_path / "o.npz")
    assert "output 0: shape (5, 10)" in text
    got = np.load(tmp_path / "o.npz")["output0"]
    assert np.array_equal(got, eq.load(out / "model.eqm")(x).numpy())


def test_summary_lists_every_node(quantized_dir):
    out, _ = quantized_dir
    text = invoke("summary", out / "model.eqm")
    g = eq.load(out / "model.eqm")
    for row in g.summary():
        assert row["name"][:35] in text


def test_compare_float_spec_quant_and_integer_files(quantized_dir, tmp_path):
    out, _ = quantized_dir
    text = invoke("compare", out / "quant.eqm", out / "model.eqm", out / "example_inputs.npz",
                  "--json", tmp_path / "c.json")
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert rows and all(r["max_lsb"] <= 4 + 1e-3 for r in rows if r["dtype"] != "qint32")
    assert "quant vs int" in text
    text = invoke("compare", SPEC, out, out / "example_inputs.npz")    # float model vs the calibrated one
    assert "float vs prepared" in text and "down.0" in text


def test_report_rebuilds_the_calibrated_model(quantized_dir, tmp_path):
    out, _ = quantized_dir
    text = invoke("report", out, "--html", tmp_path / "r.html", "--batches", 1)
    html = (tmp_path / "r.html").read_text()
    assert str(tmp_path / "r.html") in text and "Op sensitivity" in html and "data:image/png;base64," in html


def test_quantize_refuses_a_bad_spec_by_name(tmp_path):
    res = runner.invoke(app, ["quantize", "no_such_module_xyz:make", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "no_such_module_xyz" in res.output


def test_demo_small(tmp_path):
    text = invoke("demo", "--out", tmp_path, "--calib-images", 8, "--test-images", 4)
    assert "integer model (saved, reloaded)" in text and "top-1 acc" in text
    for name in ("efficientnet_lite0.eqm", "report.html", "efficientnet_lite0.int.picture.onnx"):
        assert (tmp_path / name).exists() and str(tmp_path / name) in text


# -- errors: one line on stderr, exit 2 for usage errors and 1 for failures (subprocesses) --------
def edgequant(*args, cwd=None):
    """Run the installed ``edgequant`` script (or ``python -m edgequant.cli``) as a user would."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "edgequant"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "edgequant.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("edgequant: error: "), res.stderr
    return lines[0]


def test_cli_corrupt_model_file_is_one_line_exit_1(tmp_path):
    bad = tmp_path / "model.eqm"
    bad.write_bytes(b"\x89EQIR\r\n\x1a" + b"\x00" * 7)
    res = edgequant("summary", bad)
    assert res.returncode == 1
    assert str(bad) in one_error_line(res)


def test_cli_usage_errors_exit_2(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 1, 28, 28), np.float32))
    res = edgequant("run", tmp_path / "missing.eqm", tmp_path / "in.npz")       # a missing file
    assert res.returncode == 2 and "missing.eqm" in one_error_line(res)
    res = edgequant("quantize", SPEC, "--template", "int7", "--out", tmp_path)  # refused before the factory runs
    assert res.returncode == 2 and "unknown template 'int7'" in one_error_line(res)
    res = edgequant("quantize", SPEC, "--march", "nash-x", "--out", tmp_path)
    assert res.returncode == 2 and "'nash-m'" in one_error_line(res)
    res = edgequant("quantize", "no_colon_here", "--out", tmp_path)
    assert res.returncode == 2 and "SPEC must look like" in one_error_line(res)
    res = edgequant("quantize", SPEC, "--calib-batchez", 3)                     # click's own usage errors
    assert res.returncode == 2 and "--calib-batchez" in one_error_line(res)
    res = edgequant("summary")
    assert res.returncode == 2 and "Missing argument" in one_error_line(res)
    assert not list(tmp_path.glob("*.eqm"))


FACTORY = '''
import torch


def load_images(n):
    raise ValueError(f"cannot read {n} images")  # line 6


def broken():
    return load_images(3)


class Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # line 19: data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


def untraceable():
    return Untraceable(), torch.randn(2, 4), [torch.randn(2, 4)]
'''


def test_cli_factory_exception_names_its_file_and_line(tmp_path):
    (tmp_path / "factory.py").write_text(FACTORY)
    spec = f"{tmp_path / 'factory.py'}:broken"
    res = edgequant("quantize", spec, "--out", tmp_path / "out")
    assert res.returncode == 1
    line = one_error_line(res)
    assert f"{tmp_path / 'factory.py'}:6" in line and "ValueError: cannot read 3 images" in line
    debug = edgequant("--debug", "quantize", spec, "--out", tmp_path / "out")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and 'raise ValueError(f"cannot read' in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line.replace(" (edgequant --debug ... shows the traceback)", "")
    res = edgequant("quantize", f"{tmp_path / 'factory.py'}:untraceable", "--out", tmp_path / "out")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr   # no torch.export dumps or logs
    assert f"could not trace the model at {tmp_path / 'factory.py'}:19" in one_error_line(res)


def test_cli_misuse_in_process(tmp_path, capsys):
    """--version; .npz files that are not numeric arrays, pickled object arrays and a broken
    zip name the file; a factory returning a non-model is a usage error (exit 2)."""
    from edgequant.cli import main

    def status(*args):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        return info.value.code, capsys.readouterr()

    code, io = status("--version")
    assert code == 0 and io.out.startswith("edgequant")
    model = tmp_path / "m.eqm"
    from eqm_craft import small_files
    model.write_bytes(small_files()["int"])
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp_path / "str.npz", x=np.array(["a"]))
    for name in ("obj.npz", "zip.npz", "str.npz"):
        code, io = status("run", model, tmp_path / name)
        assert code == 1 and f"error: ValueError: {tmp_path / name}: " in io.err, io.err
    np.savez(tmp_path / "be.npz", x=np.zeros((2, 1, 8, 8), ">f4"))
    code, io = status("run", model, tmp_path / "be.npz", "--out", tmp_path / "o")
    assert code == 0 and (tmp_path / "o.npz").exists() and str(tmp_path / "o.npz") in io.out
    (tmp_path / "f.py").write_text("def bad():\n    return 'model', None, []\n")
    code, io = status("quantize", f"{tmp_path / 'f.py'}:bad", "--out", tmp_path / "q")
    assert code == 2 and "nn.Module" in io.err
    code, io = status("quantize", f"{tmp_path / 'f.py'}:bad", "--out", model)
    assert code == 2 and "is a file" in io.err
