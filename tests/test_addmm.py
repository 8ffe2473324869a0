"""``addmm`` (GPT-2's ``Conv1D``: ``torch.addmm(bias, x.view(-1, nx), weight)``, weight ``(in, out)``):
one row in ``edgequant/ops/matmul_like.py`` that lowers as ``linear`` with the transposed weight.
References: the same model written with ``nn.Linear`` (weight ``w.T``) gives bit-identical integer
outputs (an independent path through the linear row); the simulation is close to float; both ONNX
flavours run in ONNX Runtime (QDQ: ``Gemm``; integer: the linear's reduce form, bit exact)."""
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.convert import ConvertError
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class MLP(nn.Module):
    def __init__(self, linear=False):
        super().__init__()
        self.fc, self.proj = Conv1D(12, 8), Conv1D(8, 12)
        if linear:   # the same weights through nn.Linear
            self.fc_l, self.proj_l = nn.Linear(8, 12), nn.Linear(12, 8)
        self.linear = linear

    def forward(self, x):
        if self.linear:   # no activation between: nn.Linear would absorb it (one rounding fewer)
            return self.proj_l(self.fc_l(x))
        return self.proj(self.fc(x))


def _models():
    torch.manual_seed(0)
    a = MLP().eval()
    b = MLP(linear=True).eval()
    with torch.no_grad():
        for c, l in ((a.fc, b.fc_l), (a.proj, b.proj_l)):
            l.weight.copy_(c.weight.t())
            l.bias.copy_(c.bias)
    return a, b


def _convert(model, template, xs):
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,), bias_correction=False)
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return cm, ir, eq.convert(ir, "nash-e")


def test_addmm_is_one_row_of_the_op_table():
    row = OPS["addmm"]
    assert row.targets == ("aten.addmm.default",) and row.weight_arg == 2 and row.weight_ch_axis == 1
    assert set(row.onnx) == {"aten.addmm.default"}


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_model_equals_linear_and_simulation(template):
    a, b = _models()
    torch.manual_seed(1)
    xs = [torch.randn(2, 5, 8) for _ in range(4)]
    x = torch.randn(2, 5, 8)
    cm_a, ir_a, g_a = _convert(a, template, xs)
    cm_b, ir_b, g_b = _convert(b, template, xs)
    assert [n.op for n in ir_a.nodes].count("addmm") == 2
    assert [n.op for n in g_a.nodes].count("linear") == 2
    with torch.no_grad():
        ref, sim = a(x), cm_a(x)
        y, env_a = g_a(x, return_intermediates=True)
        _, env_b = g_b(x, return_intermediates=True)
    # the first layer's integer codes equal nn.Linear's, bit for bit (the last layer differs in
    # form: a Linear that ends the model keeps its accumulator, docs "high-precision output")
    assert g_a.values["addmm"].qparams == g_b.values["linear"].qparams
    assert torch.equal(env_a["addmm"].reshape(env_b["linear"].shape), env_b["linear"])
    lsb = max(v.qparams.scale[0] for v in ir_a.values.values() if v.qparams is not None and len(v.qparams.scale) == 1)
    assert float((y - sim).abs().max()) <= 1.01 * lsb
    assert float((sim - ref).abs().max()) <= 0.05 * float(ref.abs().max())


# ONNX Runtime at ORT_ENABLE_EXTENDED and above computes the int16 QDQ Gemm whose weight is dequantized
# per column (axis 1) 0.02 away from the simulation (exact at ORT_ENABLE_BASIC, and with int8)
_ORT_INT16_GEMM = pytest.mark.xfail(reason="ONNX Runtime's extended QDQ optimisations misread an int16 Gemm "
                                           "with a per-column weight (exact at ORT_ENABLE_BASIC)", strict=False)


@pytest.mark.parametrize("flavour,template", [("qdq", T8), pytest.param("qdq", T16, marks=_ORT_INT16_GEMM),
                                              ("integer", T8), ("integer", T16)],
                         ids=["qdq-int8", "qdq-int16", "integer-int8", "integer-int16"])
def test_onnx_runtime_runs_it(flavour, template, tmp_path):
    a, _ = _models()
    torch.manual_seed(1)
    xs = [torch.randn(2, 5, 8) for _ in range(4)]
    cm, ir, g = _convert(a, template, xs)
    x = xs[0]
    path = tmp_path / f"addmm_{flavour}.onnx"
    check_onnx_file(flavour, cm, g, x, path)


def test_addmm_with_beta_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = Conv1D(4, 4)

        def forward(self, x):
            return torch.addmm(self.c.bias, x, self.c.weight, beta=0.5)

    torch.manual_seed(0)
    xs = [torch.randn(3, 4) for _ in range(2)]
    cm = eq.prepare(Scaled().eval(), (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs])
    with pytest.raises(ConvertError, match="beta"):
        eq.convert(eq.export(cm, (xs[0],)), "nash-e")
