"""``roll`` (Swin's shifted windows): one shared-grid row in ``edgequant/ops/shape.py`` with its ONNX
translation (``Slice`` + ``Concat`` per dim). The integer model moves codes, so its rolled codes
equal the simulation's exactly; the roll is checked against ``torch.roll`` of the integer input
(an independent reference), the simulation against float, and both ONNX flavours in ONNX Runtime."""
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file


class Shifted(nn.Module):
    """A Swin-style cyclic shift of a (B, H, W, C) map between two linears, and back."""

    def __init__(self, shifts=(-1, -2), dims=(1, 2)):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.shifts, self.dims = shifts, dims

    def forward(self, x):
        y = torch.roll(self.a(self.q(x)), shifts=self.shifts, dims=self.dims)
        y = torch.relu(self.b(y))
        return self.dq(torch.roll(y, shifts=tuple(-s for s in self.shifts), dims=self.dims))


def _converted(template, shifts=(-1, -2), dims=(1, 2)):
    torch.manual_seed(0)
    model = Shifted(shifts, dims).eval()
    xs = [torch.randn(2, 5, 6, 4) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return model, cm, ir, eq.convert(ir, "nash-e"), xs[0]


def test_roll_is_one_row_of_the_op_table():
    row = OPS["roll"]
    assert row.rule == "shared" and row.targets == ("aten.roll.default",)
    assert set(row.onnx) == {"aten.roll.default"}


@pytest.mark.parametrize("shifts,dims", [((-1, -2), (1, 2)), ((3,), (2,)), ((2, 1), (1, 2))])
@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_model_equals_simulation_and_float(template, shifts, dims):
    model, cm, ir, g, x = _converted(template, shifts, dims)
    rolls = [n for n in g.nodes if n.op == "roll"]
    assert len(rolls) == 2
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y_int, env = g(x, return_intermediates=True)
    _, qenv = ir(x, return_intermediates=True)
    for node in rolls:
        qp = g.values[node.outputs[0]].qparams
        codes = torch.round(qenv[node.outputs[0]] / qp.scale[0]) + qp.zero_point[0]
        # the roll moves its input codes; its input may differ from the quant IR by the 1 LSB a
        # requantized op is allowed (a rounding tie taken the other way)
        assert (env[node.outputs[0]].to(torch.int64) - codes.to(torch.int64)).abs().max() <= 1
        a = node.attrs["args"]
        assert torch.equal(env[node.outputs[0]], torch.roll(env[node.inputs[0]], a[1], a[2]))
    assert torch.allclose(y_int, sim, atol=2 * g.values[g.nodes[-1].inputs[0]].qparams.scale[0])
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_it(flavour, template, tmp_path):
    _, cm, _, g, x = _converted(template)
    path = tmp_path / f"roll_{flavour}.onnx"
    check_onnx_file(flavour, cm, g, x, path)
