"""Recurrent layers end to end (issue #20): ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` are unrolled at
capture (``edgequant/capture_rnn.py``) into linear, table and elementwise ops per time step.

Checked against independent references: the captured graph against the float layer (same
function), the simulation against the float layer (SQNR), the integer model against the
simulation, ONNX Runtime on the QDQ file (default optimisation level) against the simulation, the
integer ONNX file against the integer model bit for bit; for two layers, both directions,
``batch_first`` either way, initial states given or not, ``proj_size``; the int8 template's
int16 cell state; the error a packed sequence raises; and ``nn.LSTMCell``/``GRUCell``/``RNNCell``
called in the model's own loop over time.
"""
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.capture import capture
from edgequant.capture_markers import CaptureError
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

B, T, F, H = 16, 5, 4, 8   # batch_first=False fixes the batch at capture (dim 0 is time)


class Net(nn.Module):
    """A recurrent layer returning its output and final states (flattened to a tuple)."""

    def __init__(self, rnn, with_state=False):
        super().__init__()
        self.rnn, self.with_state = rnn, with_state

    def forward(self, x, h0=None, c0=None):
        if self.with_state:
            out, h = self.rnn(x, (h0, c0) if isinstance(self.rnn, nn.LSTM) else h0)
        else:
            out, h = self.rnn(x)
        return (out, *h) if isinstance(h, tuple) else (out, h)


def _state(rnn, n: int, seed: int, b: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    d = (2 if rnn.bidirectional else 1) * rnn.num_layers
    hs = getattr(rnn, "proj_size", 0) or rnn.hidden_size
    shapes = [(d, b, hs), (d, b, rnn.hidden_size)][:n]
    return tuple(0.5 * torch.randn(s, generator=g) for s in shapes)


def _inputs(rnn, seed: int, states: int, b: int = B) -> tuple:
    g = torch.Generator().manual_seed(seed)
    shape = (b, T, F) if rnn.batch_first else (T, b, F)
    return (torch.randn(shape, generator=g), *_state(rnn, states, seed + 100, b))


CASES = {   # name -> (layer, initial states passed)
    "lstm_2layer_batch_first": (lambda: nn.LSTM(F, H, num_layers=2, batch_first=True), 0),
    "gru_bidir_2layer_h0": (lambda: nn.GRU(F, H, num_layers=2, bidirectional=True), 1),
    "lstm_bidir_proj_h0c0": (lambda: nn.LSTM(F, H, bidirectional=True, proj_size=5), 2),
    "rnn_tanh": (lambda: nn.RNN(F, H, batch_first=True), 0),
}
FLOAT_ONLY = {   # checked against the float layer only
    "rnn_relu_h0": (lambda: nn.RNN(F, H, num_layers=2, nonlinearity="relu"), 1),
    "lstm_no_bias_h0c0": (lambda: nn.LSTM(F, H, bias=False, batch_first=True), 2),
}


def _sqnr(x, ref) -> float:
    noise = float(((x.double() - ref.double()) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref.double() ** 2).sum()) / noise)


def _build(name):
    torch.manual_seed(0)
    make, states = {**CASES, **FLOAT_ONLY}[name]
    model = Net(make(), with_state=states > 0).eval()
    return model, [_inputs(model.rnn, s, states) for s in range(3)], _inputs(model.rnn, 99, states)


_CONVERTED = {}


def _converted(name, template):
    key = (name, template.__name__)
    if key not in _CONVERTED:
        model, calib, x = _build(name)
        cm = eq.prepare(model, calib[0], qconfig_setter=(template,))
        eq.calibrate(cm, calib)
        ir = eq.export(cm, calib[0])
        _CONVERTED[key] = model, cm, eq.convert(ir, "nash-e"), calib[0], x
    return _CONVERTED[key]


@pytest.mark.parametrize("name", [*CASES, *FLOAT_ONLY])
def test_unrolled_graph_computes_the_layer(name):
    model, _, x = _build(name)
    gm = capture(model, x)
    with torch.no_grad():
        want, got = model(*x), gm(*x)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# simulation against float, dB: on a calibration batch (the grid's precision) and on a held-out
# batch (each time step has its own observers, so values past the calibrated ranges clip)
SIM_FLOAT_DB = {"int8": (30.0, 25.0), "int16": (45.0, 27.0)}


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("name", list(CASES))
def test_simulation_and_integer_model(name, template):
    model, cm, g, example, held_out = _converted(name, template)
    key = "int8" if template is T8 else "int16"
    for x, db in zip((example, held_out), SIM_FLOAT_DB[key]):
        with torch.no_grad():
            ref, sim, got = model(*x), cm(*x), g(*x)
        assert len(ref) == len(sim) == len(got)
        for f, s, i in zip(ref, sim, got):
            assert f.shape == s.shape == i.shape
            assert _sqnr(s, f) >= db, (name, key, _sqnr(s, f))
            assert _sqnr(i, s) >= 40.0, (name, key, _sqnr(i, s))


def test_batch_first_keeps_the_batch_size_free():
    model, cm, g, _, (x,) = _converted("lstm_2layer_batch_first", T8)
    x = x[:2]
    with torch.no_grad():
        ref, sim, got = model(x), cm(x), g(x)
    for f, s, i in zip(ref, sim, got):
        assert f.shape == s.shape == i.shape
        assert _sqnr(i, s) >= 40.0 and _sqnr(s, f) >= 25.0


def _computed_on(name, rows):
    """The summary rows of tensors that an op computes on (not those only the caller reads, which
    the int8 templates make int16: ``OpSite.caller_only``), seen by a setter during ``prepare``."""
    caller = set()

    def spy(sites, current):
        caller.update(s.name for s in sites if s.caller_only)
        return current

    model, calib, _ = _build(name)
    eq.prepare(model, calib[0], qconfig_setter=(T8, spy))
    assert caller   # the last step's h (and c) reach the outputs
    from edgequant.ops import ALL_SPECS

    moves = {sp.name for sp in ALL_SPECS if sp.rule == "shared"}   # a permute of such a tensor shares its grid
    return [r for r in rows if r["name"] not in caller and r["op"] not in moves]


def test_int8_template_keeps_the_lstm_cell_state_at_int16():
    _, _, g, _, _ = _converted("lstm_2layer_batch_first", T8)
    rows = g.summary()
    computed = _computed_on("lstm_2layer_batch_first", rows)
    wide = [r for r in computed if r["dtype"] == "qint16"]
    # per layer and step the cell state c = f * c + i * g and its f * c term; at step 0 the zero
    # state leaves c = i * g; the last layer's last step is after the last GEMM (its c reaches only
    # the outputs: the caller's, int16 as well)
    assert sorted(r["op"] for r in wide) == ["add"] * (2 * (T - 1) - 1) + ["mul"] * (2 * T - 1)
    tail = [r for r in rows if r not in computed and r["op"] in ("add", "mul")]
    assert tail and all(r["dtype"] == "qint16" for r in tail), tail
    g = _converted("gru_bidir_2layer_h0", T8)[2]
    assert all(r["dtype"] != "qint16" for r in _computed_on("gru_bidir_2layer_h0", g.summary()))
    assert not any(r["dtype"] == "float32" for r in rows if r["op"] not in ("dequantize",))


def _session(path):
    so = ort.SessionOptions()   # default graph optimisation level (all)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path, x):
    sess = _session(path)
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x)})


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("name", ["lstm_2layer_batch_first", "gru_bidir_2layer_h0", "lstm_bidir_proj_h0c0"])
def test_onnx_files(name, template, tmp_path):
    _, cm, g, example, x = _converted(name, template)
    qdq, integer = tmp_path / "qdq.onnx", tmp_path / "int.onnx"
    eq.export_onnx(cm, qdq, example, flavour="qdq")
    eq.export_onnx(g, integer, example, flavour="integer")
    with torch.no_grad():
        sim, want = cm(*x), g(*x)
    for y, s in zip(_run(qdq, x), sim):
        y, s = torch.from_numpy(y), s.double()
        cos = float(torch.nn.functional.cosine_similarity(y.reshape(-1).double(), s.reshape(-1), dim=0))
        assert cos >= (0.995 if template is T8 else 0.999), (name, cos)
    for y, w in zip(_run(integer, x), want):
        np.testing.assert_array_equal(y, w.numpy())


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(F, H, batch_first=True)

    def forward(self, x):
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
        _, (h, _) = self.lstm(packed)
        return h[-1]


def test_packed_sequence_names_the_layer():
    with pytest.raises(CaptureError, match=r"LSTM 'lstm' takes a packed sequence.*padded tensor"):
        eq.prepare(Packed().eval(), (torch.randn(B, T, F),), qconfig_setter=(T8,))


# -- one-step cells in the user's own loop: nn.LSTMCell, nn.GRUCell, nn.RNNCell ------------------------------
class CellLoop(nn.Module):
    """A decoder-style loop over time calling a cell; explicit zero states or none."""

    def __init__(self, cell, zeros):
        super().__init__()
        self.cell, self.zeros, self.out = cell, zeros, nn.Linear(H, 3)

    def forward(self, x):
        lstm = isinstance(self.cell, nn.LSTMCell)
        state = None
        if self.zeros:
            h = torch.zeros(x.shape[0], H)
            state = (h, torch.zeros_like(h)) if lstm else h
        outs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outs.append(self.out(state[0] if lstm else state))
        return torch.stack(outs, 1), *(state if lstm else (state,))


CELLS = {
    "lstm_cell_none": (lambda: nn.LSTMCell(F, H), False),
    "lstm_cell_zeros": (lambda: nn.LSTMCell(F, H), True),
    "gru_cell": (lambda: nn.GRUCell(F, H), True),
    "rnn_cell_relu": (lambda: nn.RNNCell(F, H, nonlinearity="relu"), False),
    "rnn_cell_tanh_no_bias": (lambda: nn.RNNCell(F, H, bias=False), True),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_loops_capture_the_cells_and_convert(name, tmp_path):
    make, zeros = CELLS[name]
    torch.manual_seed(0)
    model = CellLoop(make(), zeros).eval()
    xs = [torch.randn(B, T, F, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    gm = capture(model, (xs[0],))
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and "_cell" in str(n.target)]  # no aten.*_cell
    with torch.no_grad():
        for w, got in zip(model(xs[1]), gm(xs[1])):
            torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs[:4]])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    x = xs[4]
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y = g(x)
    assert _sqnr(y[0], ref[0]) > 20, _sqnr(y[0], ref[0])
    assert _sqnr(y[0], sim[0]) > 35, _sqnr(y[0], sim[0])
    if isinstance(model.cell, nn.LSTMCell):     # the cell state is a recurrent state: int16 under int8
        assert "qint16" in {r["dtype"] for r in g.summary() if r["op"] == "add"}
    path = tmp_path / f"{name}.onnx"
    eq.export_onnx(g, path, (x,), flavour="integer")
    for o, w in zip(_run(path, (x,)), y):
        np.testing.assert_array_equal(o, w.numpy())


def test_an_unbatched_cell_step():
    torch.manual_seed(0)

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(F, H)

        def forward(self, x):
            return self.cell(x)

    model = One().eval()
    x = torch.randn(F)
    gm = capture(model, (x,))
    for w, got in zip(model(x), gm(x)):
        assert got.shape == w.shape == (H,)
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
