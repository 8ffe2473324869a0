"""save/load: a graph round-trips bit-identically; every broken file fails with IRFileError.

References: the graph that was saved (its outputs and every intermediate, compared with
torch.equal) and the file layout of docs/ir.md section 5 (the corruption cases edit it by hand).
"""
import ast
import functools
import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.check import IRCheckError
from edgequant.convert import ConvertError
from edgequant.ir import Graph, Node, QParams, Value
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8
from edgequant.serialize import FORMAT_VERSION, HEADER_SIZE, MAGIC, IRFileError, SerializeError, dumps, loads

from models import calibrate, trained_cnn
from seeds import decint, smallmodel

PACKAGE = Path(eq.__file__).resolve().parent


# -- graphs the tests share (test_check_visualize imports these) ---------------------------------
def calibrated(model, example, batches, setter=T8):
    return calibrate(eq.prepare(model, example, qconfig_setter=(setter,)), batches)


class Moves(nn.Module):
    """Only ops convert already lowers: quantize, max pool, reshape, dequantize + quantize."""

    def __init__(self):
        super().__init__()
        self.quant, self.quant2 = eq.QuantStub(), eq.QuantStub()
        self.dequant, self.dequant2 = eq.DeQuantStub(), eq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = F.max_pool2d(x, 2).flatten(1)
        y = self.dequant(x)                    # an output that is also an input: becomes a rescale
        z = self.quant2(y).reshape(x.shape[0], -1, 2)
        return {"z": self.dequant2(z), "y": y}


def moves_graphs(setter=T8):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4)
    cm = calibrated(Moves().eval(), x, [x, 2 * torch.randn(3, 2, 4, 4)], setter)
    ir = eq.export(cm, x)
    return ir, eq.convert(ir, "nash-m"), x


@functools.lru_cache(maxsize=1)
def cnn_graphs():
    """(calibrated model, quant-level IR, test images), built once per process for both test files."""
    model, (xtr, _, xte, _) = trained_cnn()
    cm = calibrated(model, xtr[:2], xtr[:128].split(64))
    return cm, eq.export(cm, xtr[:2]), xte[:50]


@pytest.fixture
def cnn():
    return cnn_graphs()


def same_outputs(a, b) -> bool:
    la, sa = torch.utils._pytree.tree_flatten(a)
    lb, sb = torch.utils._pytree.tree_flatten(b)
    return sa == sb and len(la) == len(lb) and all(
        type(p) is type(q) and (not isinstance(p, torch.Tensor) or (p.dtype == q.dtype and torch.equal(p, q)))
        for p, q in zip(la, lb))


def assert_round_trip(g: Graph, inputs, path) -> Graph:
    eq.save(g, path)
    h = eq.load(path)
    assert (h.level, h.inputs, h.outputs, h.nodes, h.values) == (g.level, g.inputs, g.outputs, g.nodes, g.values)
    assert list(h.constants) == list(g.constants)
    assert all(h.constants[k].dtype == t.dtype and torch.equal(h.constants[k], t) for k, t in g.constants.items())
    assert h.meta == {k: v for k, v in g.meta.items() if not k.startswith("_")}
    assert dumps(h) == Path(path).read_bytes()            # saving the loaded graph gives the same bytes
    want, env_g = g(*inputs, return_intermediates=True)
    got, env_h = h(*inputs, return_intermediates=True)
    assert same_outputs(got, want)
    assert env_g.keys() == env_h.keys()
    assert all(same_outputs(env_h[k], v) for k, v in env_g.items())
    return h


# -- round trips -----------------------------------------------------------------------------------
def test_cnn_quant_level_round_trip_is_bit_identical(cnn, tmp_path):
    cm, ir, x = cnn
    h = assert_round_trip(ir, (x,), tmp_path / "cnn.eqm")
    assert torch.equal(h(x[:7]), cm(x[:7]))          # still the VALIDATION simulation, any batch size


def test_cnn_int_level_round_trip_is_bit_identical(cnn, tmp_path):
    _, ir, x = cnn
    try:
        qm = eq.convert(ir, "nash-m")
    except ConvertError as exc:
        pytest.skip(f"convert does not lower the CNN yet: {exc}")
    assert_round_trip(qm, (x,), tmp_path / "cnn_int.eqm")


@pytest.mark.parametrize("setter", [T8, T16], ids=["int8", "int16"])
def test_int_level_round_trip_is_bit_identical(setter, tmp_path):
    ir, qm, x = moves_graphs(setter)
    assert any(n.op == "rescale" for n in qm.nodes)
    for g in (ir, qm):
        h = assert_round_trip(g, (x,), tmp_path / f"{g.level}.eqm")
        out = h(x)
        assert isinstance(out, dict) and list(out) == ["z", "y"]   # the output structure is restored
    _, env = eq.load(tmp_path / "int.eqm")(x, return_intermediates=True)
    assert env["eq_fq_quant"].dtype == (torch.int8 if setter is T8 else torch.int16)


@pytest.mark.parametrize("both", [False, True])
def test_seed002_round_trip_keeps_output_tuple(both, tmp_path):
    _, calib_out, cm, x = smallmodel.run(both)
    h = assert_round_trip(eq.export(cm, x), (x,), tmp_path / "small.eqm")
    assert same_outputs(h(x), calib_out)


def test_every_op_round_trips_and_draws(tmp_path):
    """Every op of the coverage table: its quant-level graph round-trips and visualizes."""
    from test_op_coverage import CASES, _inputs
    from edgequant.visualize import to_onnx

    for name in sorted(CASES):
        _, model, factory = CASES[name]
        torch.manual_seed(0)
        x = _inputs(factory)
        cm = eq.prepare(model.eval(), x, qconfig_setter=(T16,))
        eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
        with torch.no_grad():
            cm(*x)
            cm(*_inputs(factory))
        eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
        ir = eq.export(cm, x)
        assert_round_trip(ir, x, tmp_path / f"{name}.eqm")
        assert len(to_onnx(ir).graph.node) == len(ir.nodes)     # to_onnx runs the full ONNX check


def test_save_refuses_a_graph_that_runs_python_code(tmp_path):
    x = Value("x", ("s0", 3), "float32")
    y = Value("y", ("s0", 3), "float32")
    node = Node("pre", "float_call", ("x",), ("y",), {"module": "pre", "callable_ref": "pre", "float": True}, "m.py:9")
    g = Graph("quant", ["x"], ["y"], {"x": x, "y": y}, [node], {}, {"_callables": {"pre": torch.nn.ReLU()}})
    with pytest.raises(SerializeError, match=r"node 'pre' \(float_call\) from m.py:9 runs Python code \(pre\)"):
        eq.save(g, tmp_path / "pre.eqm")
    assert list(tmp_path.iterdir()) == []                  # nothing half-written


def test_seed000_saves_its_tables_or_is_refused_by_name(tmp_path):
    """DecInt's SegmentLUT: refused by name while it needs its Python function; once the node
    carries its tables as constants (edgequant.lut), it round-trips at both levels."""
    _, _, cm = decint.run()
    ir = eq.export(cm)
    x = torch.randint(0, 4096, (3, 1, 4, 4)).float()
    try:
        eq.save(ir, tmp_path / "decint.eqm")
    except SerializeError as exc:
        assert "node 'to_dec' (segment_lut)" in str(exc) and "Python code" in str(exc)
        assert list(tmp_path.iterdir()) == []
        return
    assert_round_trip(ir, (x,), tmp_path / "decint.eqm")
    assert_round_trip(eq.convert(ir, "nash-m"), (x,), tmp_path / "decint_int.eqm")


def test_save_takes_only_graphs(cnn, tmp_path):
    cm, ir, _ = cnn
    with pytest.raises(TypeError, match=r"got GraphModule.*exporting it first"):
        eq.save(cm, tmp_path / "model.eqm")
    g = Graph(ir.level, ir.inputs, ir.outputs, ir.values, ir.nodes, ir.constants, {**ir.meta, "note": {1, 2}})
    with pytest.raises(SerializeError, match="meta"):
        eq.save(g, tmp_path / "model.eqm")
    g = Graph(ir.level, ir.inputs, ir.outputs, ir.values, ir.nodes, ir.constants, {**ir.meta, "out_spec": None})
    with pytest.raises(SerializeError, match="output structure"):
        eq.save(g, tmp_path / "model.eqm")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_atomically(tmp_path):
    ir, qm, x = moves_graphs()
    path = tmp_path / "m.eqm"
    eq.save(ir, path)
    eq.save(qm, str(path))
    assert eq.load(path).level == "int" and [p.name for p in tmp_path.iterdir()] == ["m.eqm"]


# -- broken files ------------------------------------------------------------------------------------
def rehash(data: bytes) -> bytes:
    """The file with its SHA-256 recomputed (to reach the checks after the checksum)."""
    head = data[:28]
    return head + hashlib.sha256(head + data[HEADER_SIZE:]).digest() + data[HEADER_SIZE:]


def with_document(data: bytes, edit) -> bytes:
    _, _, jl, tl = struct.unpack_from("<8sIQQ", data)
    doc = json.loads(data[HEADER_SIZE:HEADER_SIZE + jl])
    edit(doc)
    body = json.dumps(doc).encode()
    head = struct.pack("<8sIQQ", MAGIC, FORMAT_VERSION, len(body), tl)
    return rehash(head + bytes(32) + body + data[HEADER_SIZE + jl:])


def load_error(tmp_path, data: bytes, name="broken.eqm") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IRFileError) as info:
        eq.load(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_layout_matches_the_documented_header():
    ir, _, _ = moves_graphs()
    data = dumps(ir)
    magic, version, jl, tl = struct.unpack_from("<8sIQQ", data)
    assert (magic, version, HEADER_SIZE) == (b"\x89EQIR\r\n\x1a", 1, 60)
    assert len(data) == 60 + jl + tl
    assert data[28:60] == hashlib.sha256(data[:28] + data[60:]).digest()
    assert json.loads(data[60:60 + jl])["format"] == "edgequant.graph"
    assert struct.unpack_from("<Q", data, 60 + jl)[0] < tl      # safetensors: its header length first


def test_every_flipped_byte_is_detected():
    _, qm, _ = moves_graphs()
    data = dumps(qm)
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(IRFileError):
                loads(bytes(bad), "m.eqm")


def test_flipped_bytes_in_header_json_and_tensors_of_the_cnn(cnn, tmp_path):
    _, ir, _ = cnn
    data = dumps(ir)
    jl = struct.unpack_from("<Q", data, 12)[0]
    regions = {"header": range(0, HEADER_SIZE), "json": range(HEADER_SIZE, HEADER_SIZE + jl, 37),
               "tensors": range(HEADER_SIZE + jl, len(data), 997)}
    for region, offsets in regions.items():
        for i in offsets:
            bad = bytearray(data)
            bad[i] ^= 0x10
            with pytest.raises(IRFileError):
                loads(bytes(bad), "cnn.eqm")
    msg = load_error(tmp_path, data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    assert "SHA-256" in msg and "corrupted" in msg


def test_truncated_files(cnn, tmp_path):
    _, ir, _ = cnn
    data = dumps(ir)
    jl = struct.unpack_from("<Q", data, 12)[0]
    for n in (1, 7, 8, 12, 28, 59, 60, 61, HEADER_SIZE + jl // 2, HEADER_SIZE + jl, HEADER_SIZE + jl + 5,
              len(data) - 1):
        assert "truncated" in load_error(tmp_path, data[:n])
    assert "unexpected bytes" in load_error(tmp_path, data + b"\0")


def test_empty_foreign_and_missing_files(tmp_path):
    assert "empty" in load_error(tmp_path, b"")
    assert "not an edgequant graph file" in load_error(tmp_path, b"hello, world\n" * 10)
    torch.save({"w": torch.ones(2)}, tmp_path / "weights.pt")
    with pytest.raises(IRFileError, match="torch.save"):
        eq.load(tmp_path / "weights.pt")
    ir, _, _ = moves_graphs()
    eq.visualize(ir, tmp_path / "m.onnx")
    with pytest.raises(IRFileError, match="not an edgequant graph file.*ONNX"):
        eq.load(tmp_path / "m.onnx")
    with pytest.raises(IRFileError, match="is a directory"):
        eq.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        eq.load(tmp_path / "missing.eqm")


def test_wrong_version(tmp_path):
    ir, _, _ = moves_graphs()
    data = dumps(ir)
    newer = data[:8] + struct.pack("<I", FORMAT_VERSION + 1) + data[12:]
    assert "format version 2 is newer" in load_error(tmp_path, newer)
    assert "format version 0 is unknown" in load_error(tmp_path, data[:8] + struct.pack("<I", 0) + data[12:])
    msg = load_error(tmp_path, with_document(data, lambda d: d.update(ir_version=99)))
    assert "IR version 99" in msg


def test_valid_checksum_but_malformed_or_broken_graph(tmp_path):
    ir, _, _ = moves_graphs()
    data = dumps(ir)
    assert "malformed" in load_error(tmp_path, with_document(data, lambda d: d.pop("nodes")))
    assert "malformed" in load_error(tmp_path, with_document(data, lambda d: d.update(format="other")))
    assert "malformed" in load_error(tmp_path, with_document(data, lambda d: d["constants"].append("ghost")))

    def negative_scale(doc):
        v = next(v for v in doc["values"] if v["name"] == "eq_fq_quant")
        v["qparams"]["scale"] = [-1.0]
    msg = load_error(tmp_path, with_document(data, negative_scale))
    assert "breaks an IR rule" in msg and "'eq_fq_quant'" in msg and "scale" in msg

    def out_of_order(doc):
        doc["nodes"].reverse()
    assert "topological" in load_error(tmp_path, with_document(data, out_of_order))


def test_load_never_unpickles(tmp_path):
    """A file whose tensor section is not safetensors is rejected without running anything."""
    ir, _, _ = moves_graphs()
    data = dumps(ir)
    jl, tl = struct.unpack_from("<QQ", data, 12)
    import pickle   # noqa: only the test builds a pickle, to show load refuses it

    payload = pickle.dumps({"x": 1})
    body = data[HEADER_SIZE:HEADER_SIZE + jl]
    head = struct.pack("<8sIQQ", MAGIC, FORMAT_VERSION, jl, len(payload))
    assert "malformed" in load_error(tmp_path, rehash(head + bytes(32) + body + payload))


# -- no pickle anywhere in the package ---------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "joblib", "marshal"}


def _unsafe_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            base = node.func.value
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(base, ast.Name) and base.id == "torch":
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    found.append(f"torch.load without weights_only=True (line {node.lineno})")
            if isinstance(base, ast.Name) and base.id in ("np", "numpy"):
                a = kw.get("allow_pickle")
                if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                    found.append(f"numpy.load with allow_pickle (line {node.lineno})")
    return found


def test_the_scan_finds_what_it_looks_for():
    assert _unsafe_uses("import pickle\nfrom dill import loads\nimport torch\ntorch.load('a')\n"
                        "torch.load('b', weights_only=False)\nnp.load('c', allow_pickle=True)") == [
        "pickle", "dill", "torch.load without weights_only=True (line 4)",
        "torch.load without weights_only=True (line 5)", "numpy.load with allow_pickle (line 6)"]
    assert _unsafe_uses("import torch\ntorch.load('a', weights_only=True)\n") == []


def test_no_module_of_edgequant_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(PACKAGE)): u for f in files if (u := _unsafe_uses(f.read_text()))}
    assert bad == {}
