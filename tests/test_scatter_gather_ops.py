"""Writes into slices, gathers, cumsum, atan2, uneven adaptive pooling and two ONNX export fixes
found by the zoo battery (``tests/zoo/models_extra.py``), each as a minimal model: a QuantStub,
``lin = nn.Linear(8, 8)`` (or a 3x3 conv), the op, a DeQuantStub.

Each case runs the whole pipeline: the simulation close to float; the integer model against the
simulation node by node within each row's ``OpSpec.lsb`` (``edgequant.analysis.op_lsb``) and equal
to its plain-int reference; the integer ONNX file equal to the integer model bit for bit in ONNX
Runtime; the QDQ file within 3 output steps of the simulation in ONNX Runtime.
"""
import functools
import math

import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.analysis.op_bounds import op_lsb, violations
from edgequant.ir import Node
from edgequant.ops import OPS
from edgequant.ops.atan2 import ANGLE_BITS, k_atan2
from edgequant.qmath import quantize_multiplier
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file


class Repro(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.lin = nn.Linear(8, 8)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fn = fn
        g = torch.Generator().manual_seed(1)
        self.register_buffer("ref", torch.rand(2, 6, 2, generator=g))
        self.register_buffer("mask", (torch.rand(2, 6, generator=g) > 0.3).float())
        self.register_buffer("pos", torch.randint(0, 8, (1, 1, 6), generator=g))
        self.register_buffer("idx", torch.tensor([3, 0, 7, 9, 12, 15]))
        self.register_buffer("r_head", torch.randn(5, 2, 4, generator=g))

    def forward(self, x):
        return self.dq(self.fn(self, self.q(x)))


def _assign_sigmoid(m, x):
    t = m.lin(x)
    t[..., 0:2] = t[..., 0:2].sigmoid()
    return t


def _add_into_slice(m, x):
    t = m.lin(x)
    t[..., 0:2] += m.ref
    return t


def _scale_a_view(m, x):
    y = m.lin(x)
    z = y[..., :4]
    z *= 0.5
    return y


def _assign_select(m, x):
    t = m.lin(x)
    t[:, :, 0] = t[:, :, 1] * 2
    return t


def _index_put(m, x):
    z = torch.zeros(2, 16, 8)
    z[:, m.idx] = m.lin(x)
    return z


def _index_put_apart(m, x):
    """LSS's BEV canvas: index tensors on dims 0 and 2 around a full slice (the values' index dim first)."""
    k = torch.arange(12)
    z = torch.zeros(3, 8, 5)
    z[k % 3, :, k // 3 + 1] = m.lin(x).reshape(12, 8)
    return z


def _einsum_permuted_output(m, x):
    """Funnel's attention output: ``"bnij,bjnd->bind"`` is a matmul then a permute."""
    t = m.lin(x)
    return torch.einsum("bnij,bjnd->bind", t.view(2, 6, 2, 4).permute(0, 2, 1, 3), t[:, :4].reshape(2, 4, 2, 4))


def _index_put_accumulate(m, x):
    """A scatter-add (LSS-style pooling of several values into one cell): one sum, one rounding."""
    z = torch.zeros(2, 16, 8)
    return z.index_put((torch.arange(2)[:, None], m.idx[None] % 4), m.lin(x), accumulate=True)


SEQ, IMG = (lambda: torch.randn(2, 6, 8)), (lambda: torch.randn(2, 3, 7, 7))
CASES = {   # name: (model body, input factory, the row it exercises)
    "assign_sigmoid": (_assign_sigmoid, SEQ, "slice_scatter"),
    "add_into_slice": (_add_into_slice, SEQ, "slice_scatter"),
    "scale_a_view": (_scale_a_view, SEQ, "slice_scatter"),
    "assign_select": (_assign_select, SEQ, "copy"),
    "type_as": (lambda m, x: m.lin(x) * m.mask.type_as(x)[..., None], SEQ, "mul"),
    "gather": (lambda m, x: torch.gather(m.lin(x), -1, m.pos.expand(2, 6, 6)), SEQ, "gather"),
    "index_put": (_index_put, SEQ, "index_put"),
    "index_put_apart": (_index_put_apart, SEQ, "index_put"),
    "index_put_accumulate": (_index_put_accumulate, SEQ, "index_put"),
    "cumsum": (lambda m, x: m.lin(x).cumsum(1), SEQ, "cumsum"),
    "einsum_constant_broadcast": (lambda m, x: torch.einsum("binh,tnh->bnit", m.lin(x).view(2, 6, 2, 4), m.r_head),
                                  SEQ, "matmul"),
    "einsum_permuted_output": (_einsum_permuted_output, SEQ, "matmul"),
    "atan2": (lambda m, x: (lambda y: torch.atan2(y[:, :1], y[:, 1:]))(m.conv(x)), IMG, "atan2"),
    "atan2_linear": (lambda m, x: (lambda y: torch.atan2(y[..., :4], y[..., 4:]))(m.lin(x)), SEQ, "atan2"),
    "adaptive_avg_7to6": (lambda m, x: nn.functional.adaptive_avg_pool2d(m.conv(x), 6), IMG, "avg_pool"),
    "adaptive_max_7to6": (lambda m, x: nn.functional.adaptive_max_pool2d(m.conv(x), 6), IMG, "max_pool"),
    "floor_divide_scalar": (lambda m, x: m.lin(x) + torch.arange(8.) // 2, SEQ, "add"),
    "pow_scalar_base": (lambda m, x: m.lin(x) * (2.0 ** torch.arange(8.) / 100), SEQ, "mul"),
}
RUNS = [(n, "int8") for n in CASES] + [(n, "int16") for n in ("assign_sigmoid", "index_put_accumulate", "cumsum",
                                                               "atan2_linear")]


@functools.lru_cache(maxsize=None)
def _pipeline(name, template):
    fn, make, _ = CASES[name]
    torch.manual_seed(0)
    model = Repro(fn).eval()
    xs = [make() for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(T8 if template == "int8" else T16,))
    eq.calibrate(cm, [(x,) for x in xs])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    return model, cm, g, xs[1]


@pytest.mark.parametrize("name,template", RUNS)
def test_simulation_integer_model_and_bounds(name, template):
    model, cm, g, x = _pipeline(name, template)
    assert CASES[name][2] in {n.op for n in g.nodes}
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    # the simulation near float (atan2 magnifies its inputs' rounding near the origin)
    tol = 0.1 if name.startswith("atan2") else 0.04
    assert (sim - ref).abs().max() <= tol * ref.abs().max(), (sim - ref).abs().max()
    assert torch.equal(g(x), g(x, reference=True))
    rows = op_lsb(cm, g, (x,))
    assert not violations(rows), violations(rows)[:3]
    if name.startswith("einsum"):   # convert's permutes have no simulation counterpart: the product end to end
        lsb = g.values[g.nodes[-1].inputs[0]].qparams.scale[0]
        assert (g(x) - sim).abs().max() <= 1.01 * lsb
        return
    checked = [r for r in rows if r["op"] == CASES[name][2] and r["skip"] is None]
    assert checked and all(r["max_lsb"] <= OPS[r["op"]].lsb for r in checked)


@pytest.mark.parametrize("flavour", ["integer", "qdq"])
@pytest.mark.parametrize("name,template", RUNS)
def test_onnx_runtime(name, template, flavour, tmp_path):
    if flavour == "integer" and template == "int16" and name.startswith("adaptive"):
        pytest.skip("int16 convs need the custom ConvAccumulate op (reference evaluator, not ONNX Runtime)")
    _, cm, g, x = _pipeline(name, template)
    check_onnx_file(flavour, cm, g, x, tmp_path / f"{name}_{flavour}.onnx")


@pytest.mark.parametrize("dtype,zp,scale", [("qint8", 0, 0.02), ("qint16", 3, 1e-4)])
def test_atan2_kernel_against_float_on_every_quadrant(dtype, zp, scale):
    """The integer atan2 of equal-scale codes against float64 atan2 of the same values: within
    the row's 1 LSB (the analysis bound is far below it, module docstring of ops/atan2.py)."""
    s_out = 2 * math.pi / (255 if dtype == "qint8" else 65535)
    real = 2.0 ** -ANGLE_BITS / s_out
    m0, sh = quantize_multiplier(real, 31)
    lo, hi = (-128, 127) if dtype == "qint8" else (-32768, 32767)
    q = torch.arange(-60, 61, dtype=torch.int64) * (1 if dtype == "qint8" else 97)
    qy, qx = torch.meshgrid(q, q, indexing="ij")
    node = Node("a", "atan2", ("y", "x"), ("o",), {"kernel": "angle", "zp": [zp, zp], "m": [1 << 20, 1 << 20],
                                                   "m0": m0, "shift": sh, "out_zp": 0, "lo": lo, "hi": hi,
                                                   "out_dtype": dtype})
    got = k_atan2(None, node, [qy + zp, qx + zp]).to(torch.int64)
    want = torch.round(torch.atan2((qy * scale).double(), (qx * scale).double()) / s_out).clamp(lo, hi)
    assert (got - want).abs().max() <= 1


@pytest.mark.parametrize("name", ["assign_select", "index_put", "index_put_accumulate", "cumsum", "atan2_linear",
                                  "gather"])
def test_saved_file_passes_the_checker_and_runs_the_same(name, tmp_path):
    """The new rows' int-level attrs pass the file checker (``int_attrs``, rules F1/F2) on load."""
    _, _, g, x = _pipeline(name, "int8")
    eq.save(g, tmp_path / "m.eqm")
    assert torch.equal(eq.load(tmp_path / "m.eqm")(x), g(x))
