"""``pixel_shuffle``, the first op added through the op table after issue 16: one row in
``edgequant/ops/shape.py`` (capture target, shared-grid rule, lowering, ONNX translation) and
nothing else in the package. End to end: simulation close to float, the integer model equal to
the simulation (a move on the input's grid is exact), and both ONNX flavours equal to the
integer model in ONNX Runtime."""
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file


class Upsampler(nn.Module):
    """An ESPCN-style head: conv to C*r*r channels, pixel_shuffle, conv."""

    def __init__(self, r=2):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.expand = nn.Conv2d(3, 4 * r * r, 3, padding=1)
        self.shuffle = nn.PixelShuffle(r)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.dq(self.out(torch.relu(self.shuffle(self.expand(self.q(x))))))


def _converted(template, march="nash-e"):
    torch.manual_seed(0)
    model = Upsampler().eval()
    xs = [torch.randn(2, 3, 6, 6) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return model, cm, ir, eq.convert(ir, march), xs[0]


def test_pixel_shuffle_is_one_row_of_the_op_table():
    row = OPS["pixel_shuffle"]
    assert row.rule == "shared" and row.targets == ("aten.pixel_shuffle.default",)
    assert set(row.onnx) == {"aten.pixel_shuffle.default"}


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_model_equals_simulation_and_float(template):
    model, cm, ir, g, x = _converted(template)
    assert "pixel_shuffle" in [n.op for n in g.nodes]
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y_int, env = g(x, return_intermediates=True)
    # the shuffle moves codes: its integer output is the simulation's, exactly
    node = next(n for n in g.nodes if n.op == "pixel_shuffle")
    qp = g.values[node.outputs[0]].qparams
    _, qenv = ir(x, return_intermediates=True)
    codes = torch.round(qenv[node.outputs[0]] / qp.scale[0]) + qp.zero_point[0]
    assert torch.equal(env[node.outputs[0]].to(torch.int64), codes.to(torch.int64))
    assert torch.allclose(y_int, sim, atol=2 * g.values[g.nodes[-1].inputs[0]].qparams.scale[0])
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_it(flavour, tmp_path):
    _, cm, _, g, x = _converted(T8)
    path = tmp_path / f"ps_{flavour}.onnx"
    check_onnx_file(flavour, cm, g, x, path)
