"""``einsum`` as a batched matrix product: one row in ``edgequant/ops/matmul_forms.py`` that permutes
the operands (int-level ``permute`` moves) and lowers as ``matmul``. References: the same model
written with ``@`` and ``transpose`` gives bit-identical integer outputs (the matmul row, an
independent path); the simulation is close to float; both ONNX flavours run in ONNX Runtime (QDQ:
``Einsum``; integer: the matmul form, bit exact). Other equations are refused by node name."""
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.convert import ConvertError
from edgequant.ops import OPS
from edgequant.ops.matmul_forms import _einsum_plan
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file

EQUATIONS = {"bhid,bhjd->bhij": lambda q, k: q @ k.transpose(-1, -2),
             "bhij,bhjd->bhid": lambda p, v: p @ v,
             "bhdi,bhjd->bhij": lambda q, k: q.transpose(-1, -2) @ k.transpose(-1, -2)}


class Scores(nn.Module):
    def __init__(self, equation, with_einsum=True):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.equation, self.with_einsum = equation, with_einsum

    def forward(self, x):
        x = self.q(x)
        a, b = self.a(x), self.b(x)
        y = torch.einsum(self.equation, a, b) if self.with_einsum else EQUATIONS[self.equation](a, b)
        return self.dq(torch.relu(y))


def _convert(model, template, xs):
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return cm, ir, eq.convert(ir, "nash-e")


def _pair(equation, template):
    torch.manual_seed(0)
    a = Scores(equation).eval()
    b = Scores(equation, with_einsum=False).eval()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    xs = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    return a, b, _convert(a, template, xs), _convert(b, template, xs), xs[0]


def test_einsum_is_one_row_of_the_op_table():
    assert OPS["einsum"].targets == ("aten.einsum.default",) and set(OPS["einsum"].onnx) == {"aten.einsum.default"}
    assert _einsum_plan("bhid,bhjd->bhij") == ([0, 1, 2, 3], [0, 1, 3, 2], list("bhij"))
    # an output in another order is the product then a permute; a constant operand may broadcast (Funnel)
    assert _einsum_plan("bij,bjk->bki") == ([0, 1, 2], [0, 1, 2], list("bik"))
    assert _einsum_plan("binh,tnh->bnit") == ([0, 2, 1, 3], [1, 2, 0], list("bnit"))
    for bad in ("ii->i", "ij,jk,kl->il", "...ij,...jk->...ik", "bij,bjk->bk", "ijk,jl->il", "bnih,bht->bnit"):
        assert _einsum_plan(bad) is None, bad


@pytest.mark.parametrize("equation", list(EQUATIONS))
@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_model_equals_matmul_and_simulation(equation, template):
    a, b, (cm_a, ir_a, g_a), (cm_b, ir_b, g_b), x = _pair(equation, template)
    assert "einsum" in [n.op for n in ir_a.nodes] and "matmul" in [n.op for n in g_a.nodes]
    with torch.no_grad():
        ref, sim = a(x), cm_a(x)
        y = g_a(x)
        assert torch.equal(y, g_b(x))               # the matmul row's integer model, bit for bit
        assert torch.equal(sim, cm_b(x))
    lsb = g_a.values[g_a.nodes[-1].inputs[0]].qparams.scale[0]
    assert float((y - sim).abs().max()) <= 1.01 * lsb
    assert float((sim - ref).abs().max()) <= 0.05 * float(ref.abs().max())


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_it(flavour, tmp_path):
    _, _, (cm, ir, g), _, x = _pair("bhid,bhjd->bhij", T8)
    path = tmp_path / f"einsum_{flavour}.onnx"
    check_onnx_file(flavour, cm, g, x, path)


def test_other_equations_are_refused_by_name():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.dq, self.a = eq.QuantStub(), eq.DeQuantStub(), nn.Linear(4, 4)

        def forward(self, x):
            y = self.a(self.q(x))
            return self.dq(torch.einsum("bi,bj->bij", y, y))

    torch.manual_seed(0)
    xs = [torch.randn(2, 4) for _ in range(2)]
    cm = eq.prepare(Outer().eval(), (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs])
    with pytest.raises(ConvertError, match="einsum"):
        eq.convert(eq.export(cm, (xs[0],)), "nash-e")
