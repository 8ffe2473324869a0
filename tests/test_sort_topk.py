"""``sort`` / ``topk`` of quantized values (detection heads' top-k scores, token pruning, ranking):
one shared-grid row in ``edgequant/ops/pool_reduce.py`` whose kernel sorts the codes stably (equal
codes keep their order, the lower index first, as ONNX's TopK orders ties), with its ONNX
translation (``TopK``) for both flavours.

References: NumPy's stable argsort of the integer input codes (values and indices, ties included),
the simulation's values (the same codes), the float model, and ONNX Runtime (QDQ file, and the
integer file bit for bit, indices included)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.metrics import sqnr
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import session


class Ranked(nn.Module):
    """Scores from a linear and a ReLU (its zeros are ties); their top-k (values and indices) and
    their full sort along ``dim``."""

    def __init__(self, k=5, dim=-1, largest=True, descending=False, stable=False):
        super().__init__()
        self.lin = nn.Linear(12, 12)
        self.k, self.dim, self.largest, self.descending, self.stable = k, dim, largest, descending, stable

    def forward(self, x):
        s = torch.relu(self.lin(x))
        top, where = s.topk(self.k, dim=self.dim, largest=self.largest)
        if self.stable:
            ordered, order = torch.sort(s, dim=self.dim, descending=self.descending, stable=True)
        else:
            ordered, order = torch.sort(s, dim=self.dim, descending=self.descending)
        return top.relu() * 2, where, ordered, order


def _batches(n=4):
    return [(torch.randn(3, 6, 12),) for _ in range(n)]


def _converted(template, **kw):
    torch.manual_seed(0)
    model = Ranked(**kw).eval()
    xs = _batches()
    cm = eq.prepare(model, xs[0], qconfig_setter=(template,))
    eq.calibrate(cm, xs)
    ir = eq.export(cm, xs[0])
    return model, cm, ir, eq.convert(ir, "nash-e"), xs[0][0]


def _stable_order(codes: np.ndarray, dim: int, descending: bool) -> np.ndarray:
    """Indices of a stable sort (ties: the lower index first), descending too."""
    key = -codes.astype(np.int64) if descending else codes.astype(np.int64)
    return np.argsort(key, axis=dim, kind="stable")


def test_sort_and_topk_are_one_row_of_the_op_table():
    row = OPS["sort"]
    assert row.rule == "shared" and row.lsb == 0.0
    assert set(row.targets) == set(row.onnx) == {"aten.sort.default", "aten.sort.stable", "aten.topk.default"}


CASES = [dict(), dict(k=3, dim=1, largest=False, descending=True), dict(k=12, stable=True, descending=True)]


@pytest.mark.parametrize("kw", CASES, ids=["last_dim", "dim1_smallest", "stable_full"])
@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_sort_is_the_stable_sort_of_the_codes(template, kw):
    model, cm, ir, g, x = _converted(template, **kw)
    nodes = [n for n in g.nodes if n.op == "sort"]
    assert len(nodes) == 2
    _, env = g(x, return_intermediates=True)
    ties = 0
    for node in nodes:   # capture wrote the topk as a stable sort and a slice (capture_decomp)
        codes = env[node.inputs[0]].numpy()
        assert node.attrs["target"] == "aten.sort.stable"
        kwargs = node.attrs["kwargs"]
        dim = kwargs.get("dim", -1)
        order = _stable_order(codes, dim, kwargs.get("descending", False))
        values, indices = (env[o].numpy() for o in node.outputs[:2])
        np.testing.assert_array_equal(indices, order)
        np.testing.assert_array_equal(values, np.take_along_axis(codes, order, axis=dim))
        ties += int((np.diff(np.sort(codes, axis=dim), axis=dim) == 0).sum())
    assert ties > 0   # the rule was exercised
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y = g(x)
    for i in (0, 2):   # values: the same codes as the simulation's
        torch.testing.assert_close(y[i], sim[i], rtol=0, atol=0)
        assert sqnr(ref[i], sim[i]) > (25 if template is T8 else 40)
    for i in (1, 3):   # indices: ties too (capture writes sort and topk as a stable sort)
        assert torch.equal(y[i], sim[i])


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_it(flavour, template, tmp_path):
    _, cm, _, g, x = _converted(template, **CASES[1])
    path = tmp_path / f"sort_{flavour}.onnx"
    eq.export_onnx(g if flavour == "integer" else cm, path, (x,), flavour=flavour)
    sess = session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in (g(x) if flavour == "integer" else cm(x))]
    assert len(got) == len(want) == 4
    if flavour == "integer":
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)   # indices too: both order ties by the lower index
    else:
        for i in (0, 2):   # ONNX Runtime's dequantized values, sorted: the simulation's
            np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-5)


def test_saved_and_loaded_model_sorts_the_same(tmp_path):
    _, _, _, g, x = _converted(T8, **CASES[1])
    eq.save(g, tmp_path / "sort.eqm")
    loaded = eq.load(tmp_path / "sort.eqm")
    for a, b in zip(g(x), loaded(x)):
        assert torch.equal(a, b)
