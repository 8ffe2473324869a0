"""prepare -> calibration -> validation -> QAT on the seed examples and a trained residual CNN.

References are the float models themselves; accuracy is measured on held-out MNIST images.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.qconfig_template import (
    ModuleNameQconfigSetter, calibration_8bit_weight_16bit_act_qconfig_setter as T16,
    default_calibration_qconfig_setter as T8, default_qat_qconfig_setter as Q8,
    qat_8bit_weight_16bit_fixed_act_qconfig_setter as Q16FIXED,
)

from models import ResidualCNN, accuracy, calibrate, trained_cnn
from seeds import decint, smallmodel


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), 0).item()


@pytest.fixture(scope="module")
def cnn():
    return trained_cnn()


# -- seed examples ------------------------------------------------------------------------------------
def test_seed000_decint_runs_and_tracks_float():
    torch.manual_seed(0)
    x = torch.randint(0, 4096, (2, 1, 8, 8), dtype=torch.float32)
    out, calib_out, cm = decint.run(x)
    assert calib_out.shape == out.shape
    assert (calib_out - out).abs().max() < 0.01
    # the SegmentLUT is one opaque table op of the graph (its function is not traced through)
    assert [n.meta["eq_spec"].name for n in cm.graph.nodes
            if n.op == "call_module" and n.meta.get("eq_spec") is not None and n.meta["eq_spec"].name == "segment_lut"] \
        == ["segment_lut"]


@pytest.mark.parametrize("both", [False, True])
def test_seed002_smallmodel_high_precision_outputs(both):
    out, calib_out, cm, _ = smallmodel.run(both)
    outs = out if isinstance(out, tuple) else (out,)
    cals = calib_out if isinstance(calib_out, tuple) else (calib_out,)
    for o, c in zip(outs, cals):
        assert cosine(o, c) > 0.999
    hp = {n.meta["eq_name"] for n in cm.graph.nodes if n.meta.get("eq_high_precision")}
    assert hp == ({"linear2", "linear3"} if both else {"linear3"})
    # high-precision outputs carry no output fake-quant; their weights are still quantized
    assert "linear3" not in cm.eq_fq and "linear3__weight" in cm.eq_fq
    if both:
        assert "quant_out" in cm.eq_fq


# -- the residual CNN -------------------------------------------------------------------------------------
def test_cnn_int8_calibration_loses_at_most_half_a_point(cnn):
    model, (xtr, ytr, xte, yte) = cnn
    float_acc = accuracy(model, xte, yte)
    cm = calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(T8,)), xtr[:256].split(64))
    q_acc = accuracy(cm, xte, yte)
    print(f"float {float_acc:.2f}  int8 validation {q_acc:.2f}")
    assert q_acc >= float_acc - 0.5


def test_cnn_qat_recovers_to_within_0_2_points(cnn):
    model, (xtr, ytr, xte, yte) = cnn
    float_acc = accuracy(model, xte, yte)
    qm = eq.prepare(model, xtr[:2], qconfig_setter=(Q8,))
    calibrate(qm, xtr[:256].split(64))
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    torch.manual_seed(1)
    opt = torch.optim.Adam(qm.parameters(), lr=1e-4)
    for _ in range(2):
        qm.train()
        for idx in torch.randperm(len(xtr)).split(64):
            opt.zero_grad()
            F.cross_entropy(qm(xtr[idx]), ytr[idx]).backward()
            opt.step()
    qm.eval()
    qat_acc = accuracy(qm, xte, yte)
    print(f"float {float_acc:.2f}  int8 QAT {qat_acc:.2f}")
    assert qat_acc >= float_acc - 0.2


def test_prepare_leaves_the_model_untouched_and_float_state_matches(cnn):
    model, (xtr, *_ ) = cnn
    before = copy.deepcopy(model.state_dict())
    cm = eq.prepare(model, xtr[:4], qconfig_setter=(T8,))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "forward" not in model.quant.__dict__ and cm is not model
    with torch.no_grad():  # FLOAT state: batch norms folded, same function, any batch size
        for n in (1, 3, 17):
            torch.testing.assert_close(cm(xtr[:n]), model(xtr[:n]), rtol=1e-4, atol=1e-4)


def test_fusion_leaves_no_fake_quant_inside_groups(cnn):
    model, (xtr, *_ ) = cnn
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    names = set(cm.eq_fq.keys())
    # conv+bn+relu6 -> one output fake-quant; dw conv+relu6 -> one; pw conv feeds the residual add
    assert {"stem__0", "dw", "add"} <= names
    assert "pw" not in names and "relu" not in " ".join(names)
    assert not any(n.target in (torch.ops.aten.batch_norm.default,) for n in cm.graph.nodes)


def test_state_dict_round_trips_every_scale_and_statistic(cnn):
    model, (xtr, _, xte, _) = cnn
    a = calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(T8,)), xtr[:128].split(64))
    b = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    b.load_state_dict(a.state_dict())
    eq.set_fake_quantize(b, eq.FakeQuantState.VALIDATION)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a(xte[:50]), b(xte[:50]))


def test_fixed_activation_qat_keeps_calibrated_scales(cnn):
    model, (xtr, ytr, *_ ) = cnn
    calib = calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(T16,)), xtr[:128].split(64))
    qat = eq.prepare(model, xtr[:2], qconfig_setter=(Q16FIXED,))
    qat.load_state_dict(calib.state_dict())
    eq.set_fake_quantize(qat, eq.FakeQuantState.QAT)
    acts = {k: v.scale.clone() for k, v in qat.eq_fq.items() if not v.is_weight}
    w0 = qat.head.weight.detach().clone()
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    qat.train()
    for idx in torch.arange(256).split(64):
        opt.zero_grad()
        F.cross_entropy(qat(xtr[idx]), ytr[idx]).backward()
        opt.step()
    assert not torch.equal(qat.head.weight, w0)
    for k, s in acts.items():
        assert torch.equal(qat.eq_fq[k].scale, s), k
        assert torch.equal(qat.eq_fq[k].scale, calib.eq_fq[k].scale), k


# -- qconfig setters ----------------------------------------------------------------------------------------
def test_module_name_setter_overrides_and_rejects_unknown_names(cnn):
    model, (xtr, *_ ) = cnn
    int16 = eq.get_qconfig(out_dtype=eq.qint16)
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8, ModuleNameQconfigSetter({"down": int16})))
    assert cm.eq_fq["down__0"].dtype == eq.qint16 and cm.eq_fq["stem__0"].dtype == eq.quint8  # ReLU6 output
    with pytest.raises(ValueError, match="'nope' matches no quantizable op"):
        eq.prepare(model, xtr[:2], qconfig_setter=(T8, ModuleNameQconfigSetter({"nope": int16})))
    with pytest.raises(TypeError, match="qconfig_setter"):
        eq.prepare(model, xtr[:2], qconfig_setter=("default",))
    with pytest.raises(ValueError, match="qconfig_setter"):
        eq.prepare(model, xtr[:2])


_ACTIVATIONS = {  # name: (activation after a conv, non-negative by construction)
    "relu": (F.relu, True),
    "relu6": (F.relu6, True),
    "clamp_min_0.5": (lambda x: torch.clamp(x, min=0.5), True),
    "hardtanh_0_2": (lambda x: F.hardtanh(x, 0.0, 2.0), True),
    "hardtanh": (F.hardtanh, False),
    "clamp_-1_1": (lambda x: torch.clamp(x, -1.0, 1.0), False),
    "clamp_max_3": (lambda x: torch.clamp(x, max=3.0), False),
    "leaky_relu": (F.leaky_relu, False),
    "sigmoid": (torch.sigmoid, False),
}


class _ConvAct(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.quant, self.conv, self.dequant = eq.QuantStub(), nn.Conv2d(3, 8, 3, padding=1), eq.DeQuantStub()
        self.head, self.dequant_head = nn.Conv2d(8, 2, 1), eq.DeQuantStub()
        self.act = act

    def forward(self, x):
        y = self.act(self.conv(self.quant(x)))
        # an op computes on the activation's output, and a conv reads it (it is not the tail after the last GEMM)
        return self.dequant(y[:, :4] + y[:, 4:]), self.dequant_head(self.head(y))


@pytest.mark.parametrize("template", [T8, Q8], ids=["calibration", "qat"])
@pytest.mark.parametrize("act", list(_ACTIVATIONS))
def test_int8_templates_give_quint8_to_nonnegative_outputs_only(act, template):
    fn, nonneg = _ACTIVATIONS[act]
    torch.manual_seed(0)
    model, x = _ConvAct(fn).eval(), torch.randn(8, 3, 6, 6) * 2
    cm = eq.prepare(model, x[:2], qconfig_setter=(template,))
    out_fq, add_fq = cm.eq_fq["conv"], cm.eq_fq["add"]   # the activation's output, and the model output
    assert out_fq.dtype == (eq.quint8 if nonneg else eq.qint8)
    assert add_fq.dtype == eq.qint16   # only the caller reads it
    assert {fq.dtype for k, fq in cm.eq_fq.items() if not fq.is_weight and fq not in (out_fq, add_fq)} == {eq.qint8}
    calibrate(cm, [x])
    qm = eq.convert(eq.export(cm, x[:2]), eq.March.NASH_M)
    assert [r["dtype"] for r in qm.summary() if r["name"] == "conv"] == [str(out_fq.dtype)]
    if nonneg:  # zero point 0, all 256 codes on [0, max]
        assert int(out_fq.zero_point) == 0
    with torch.no_grad():
        sim, out = cm(x)[0], qm(x)[0]
    # integer model within 1 LSB of the activation per term, and 1 LSB of the sum
    assert (sim - out).abs().max() <= 2 * float(out_fq.scale) * 1.01 + float(add_fq.scale)

# -- errors ------------------------------------------------------------------------------------------------
class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        y = torch.cumprod(x, dim=1)
        return self.dequant(y)


def test_unsupported_op_names_op_and_source_line_and_suggests_wrap():
    with pytest.raises(eq.CaptureError) as err:
        eq.prepare(_Cumsum(), torch.randn(2, 5), qconfig_setter=(T8,))
    msg = str(err.value)
    assert "cumprod" in msg and "test_prepare.py" in msg and "torch.cumprod(x, dim=1)" in msg and "wrap" in msg


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow cannot be traced
            return x * 2
        return x


def test_untraceable_control_flow_names_source_line():
    with pytest.raises(eq.CaptureError) as err:
        eq.prepare(_DataDependent(), torch.randn(2, 5), qconfig_setter=(T8,))
    assert "test_prepare.py" in str(err.value) and "wrap" in str(err.value)


@eq.wrap
def _numpy_postprocess(x):
    return torch.from_numpy(np.tanh(x.detach().numpy()))


class _WithWrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = self.dequant(self.fc(self.quant(x)))
        return _numpy_postprocess(x) + 1


def test_wrapped_numpy_code_stays_float_and_runs():
    torch.manual_seed(0)
    m = _WithWrapped().eval()
    cm = calibrate(eq.prepare(m, torch.randn(3, 4), qconfig_setter=(T8,)), [torch.randn(8, 4)])
    x = torch.randn(5, 4)
    assert cosine(cm(x), m(x)) > 0.999


def test_nan_in_calibration_names_the_module(cnn):
    model, (xtr, *_ ) = cnn
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    bad = xtr[:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="quant"):
        cm(bad)


def test_validation_before_calibration_says_never_calibrated(cnn):
    model, (xtr, *_ ) = cnn
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    with pytest.raises(RuntimeError, match="never calibrated"):
        cm(xtr[:2])


def test_torch_ao_stubs_and_fixed_scale_quantstub():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = eq.QuantStub(scale=1 / 128)
            self.fc = nn.Linear(8, 8)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc(self.quant(x)))

    m = M().eval()
    cm = calibrate(eq.prepare(m, torch.rand(2, 8), qconfig_setter=(T8,)), [torch.rand(4, 8)])
    assert float(cm.eq_fq["quant"].scale) == pytest.approx(1 / 128)
    x = torch.rand(3, 8)
    assert cosine(cm(x), m(x)) > 0.999


@pytest.mark.parametrize("kind", ["conv1d", "conv_transpose2d", "linear"])
def test_batch_norm_folds_into_every_conv_like_op(kind):
    torch.manual_seed(0)
    if kind == "conv1d":
        layers, x = [nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)], torch.randn(4, 3, 12)
    elif kind == "conv_transpose2d":
        layers, x = [nn.ConvTranspose2d(3, 6, 2, stride=2), nn.BatchNorm2d(6)], torch.randn(4, 3, 5, 5)
    else:
        layers, x = [nn.Linear(5, 6), nn.BatchNorm1d(6)], torch.randn(8, 5)
    bn = layers[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    model = nn.Sequential(eq.QuantStub(), *layers, nn.ReLU(), eq.DeQuantStub()).eval()
    cm = eq.prepare(model, x, qconfig_setter=(T16,))
    targets = {n.target for n in cm.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.batch_norm.default not in targets           # folded away
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)   # FLOAT state: same function
    calibrate(cm, [x])
    assert cosine(cm(x), model(x)) > 0.9999
