"""``edgequant.calibrate`` gives the qparams of the manual calibration loop, bit for bit.

The manual loop: ``set_fake_quantize(CALIBRATION)``, every batch under ``no_grad``,
``set_fake_quantize(VALIDATION)``. Checked on a small two-input model (conv, add, linear) with
tuple batches and a one-input model with tensor batches, each with the int8 (MSE) and int16
(min-max) templates.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.qconfig_template import (calibration_8bit_weight_16bit_act_qconfig_setter as T16,
                                        default_calibration_qconfig_setter as T8)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.qa, self.qb, self.dequant = eq.QuantStub(), eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, a, b):
        x = F.relu(self.conv(self.qa(a))) + self.qb(b)
        return self.dequant(self.fc(x.flatten(1)))


class _OneInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.dequant(self.fc2(torch.tanh(self.fc1(self.quant(x)))))


def _manual(model, batches):
    eq.set_fake_quantize(model, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for b in batches:
            model(*b) if isinstance(b, tuple) else model(b)
    eq.set_fake_quantize(model, eq.FakeQuantState.VALIDATION)
    return model


def _case(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "two_inputs":
        batches = [(torch.randn(4, 3, 6, 6, generator=g), torch.rand(4, 4, 6, 6, generator=g)) for _ in range(3)]
        return _TwoInputs().eval(), batches, batches[0]
    batches = [torch.randn(6, 8, generator=g) * (i + 1) for i in range(3)]
    return _OneInput().eval(), batches, (batches[0],)


@pytest.mark.parametrize("setter", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("kind", ["two_inputs", "one_input"])
def test_calibrate_equals_the_manual_loop_bit_for_bit(kind, setter):
    torch.manual_seed(0)
    model, batches, example = _case(kind)
    manual = _manual(eq.prepare(model, example, qconfig_setter=(setter,)), batches)
    helper = eq.prepare(model, example, qconfig_setter=(setter,))
    assert eq.calibrate(helper, batches) is helper
    a, b = manual.state_dict(), helper.state_dict()
    assert a.keys() == b.keys()
    qparams = [k for k in a if k.endswith((".scale", ".zero_point"))]
    assert qparams
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    fqs = [fq for _, fq in eq.fake_quant.fake_quant_modules(helper)]
    assert fqs and all(fq.state == eq.FakeQuantState.VALIDATION and bool(fq.calibrated) for fq in fqs)
    assert not helper.training
    with torch.no_grad():
        assert torch.equal(manual(*example), helper(*example))


def test_calibrate_takes_a_generator_and_shows_progress(capsys):
    model, batches, example = _case("one_input")
    manual = _manual(eq.prepare(model, example, qconfig_setter=(T8,)), batches)
    helper = eq.calibrate(eq.prepare(model, example, qconfig_setter=(T8,)), (b for b in batches),
                          progress="calib")
    for (k, v), w in zip(manual.state_dict().items(), helper.state_dict().values()):
        assert torch.equal(v, w), k
    assert "calib" in capsys.readouterr().err
