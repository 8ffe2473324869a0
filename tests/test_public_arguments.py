"""Wrong arguments to public functions get one clear error naming the function and the argument.

Each case passes one wrong value (a bool for a count, NaN for a scale, a str for a flag, a
numpy array for batches, ...) that used to be misread silently or to fail deep inside torch or
Python; the test requires a TypeError/ValueError whose message names the function and argument.
"""
import numpy as np
import pytest
import torch
from torch import nn

import edgequant as eq
from edgequant import analysis, lut, observers, ptq
from edgequant.functional import centered_yuv2rgb
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16

X = torch.randn(2, 3, 4, 4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.conv, self.dq = eq.QuantStub(), nn.Conv2d(3, 4, 3), eq.DeQuantStub()

    def forward(self, x):
        return self.dq(self.conv(self.q(x)))


@pytest.fixture(scope="module")
def prepared():
    return eq.calibrate(eq.prepare(Net().eval(), X, qconfig_setter=(T16,)), [X])


CASES = [
    ("quantize", "x", lambda: eq.quantize(np.zeros(3), 0.1, 0, "qint8")),
    ("quantize", "scale", lambda: eq.quantize(X, float("nan"), 0, "qint8")),
    ("quantize", "scale", lambda: eq.quantize(X, -0.1, 0, "qint8")),
    ("fake_quantize", "zero_point", lambda: eq.fake_quantize(X, 0.1, 0.5, "qint8")),
    ("dequantize", "ch_axis", lambda: eq.dequantize(torch.zeros(3, dtype=torch.int8), 0.1, 0, ch_axis="0")),
    ("requantize", "m0", lambda: eq.requantize(torch.tensor([10]), 1.5, 1, "qint8")),
    ("quantize_multiplier", "bits", lambda: eq.quantize_multiplier(0.3, bits=True)),
    ("MinMaxObserver", "symmetric", lambda: observers.MinMaxObserver(symmetric="no")),
    ("MinMaxObserver", "ch_axis", lambda: observers.MinMaxObserver(ch_axis=0.5)),
    ("MovingAverageMinMaxObserver", "averaging_constant", lambda: observers.MovingAverageMinMaxObserver(None)),
    ("PercentileObserver", "percentile", lambda: observers.PercentileObserver(percentile="99")),
    ("MSEObserver", "bins", lambda: observers.MSEObserver(bins=float("nan"))),
    ("FixedScaleObserver", "zero_point", lambda: observers.FixedScaleObserver(0.1, zero_point=0.5)),
    ("MixObserver", "members", lambda: observers.MixObserver(members=None)),
    ("shrink_range", "x", lambda: observers.shrink_range(np.zeros(3), 1.0)),
    ("shrink_range", "sigma", lambda: observers.shrink_range(X, 0, sigma=-1.0)),
    ("shrink_range", "generator", lambda: observers.shrink_range(X, 1.0, generator="seed")),
    ("FakeQuantize", "observer", lambda: eq.FakeQuantize(None, "qint8")),
    ("FakeQuantize", "learnable", lambda: eq.FakeQuantize(observers.MinMaxObserver(), "qint8", learnable="yes")),
    ("get_qconfig", "qat", lambda: eq.get_qconfig(qat="no")),
    ("get_qconfig", "weight_observer", lambda: eq.get_qconfig(weight_observer=[])),
    ("prepare", "bias_correction", lambda: eq.prepare(Net().eval(), X, (T16,), bias_correction="no")),
    ("prepare", "qconfig_setter", lambda: eq.prepare(Net().eval(), X, qconfig_setter=torch.ones(2))),
    ("freeze_bn", "model", lambda: eq.freeze_bn(Net().eval())),
    ("cosine", "b", lambda: analysis.cosine(X, None)),
    ("sqnr", "test", lambda: analysis.sqnr(X, torch.ones(3))),
    ("build_table", "in_scale", lambda: lut.build_table(torch.tanh, "qint8", float("nan"), 0, "qint8", 0.01, 0)),
    ("build_table", "segments", lambda: lut.build_table(torch.tanh, "qint16", 0.001, 0, "qint16", 1e-4, 0,
                                                         segments=True)),
    ("lut_apply", "t", lambda: lut.lut_apply(torch.zeros(3, dtype=torch.int8), None)),
    ("centered_yuv2rgb", "bgr", lambda: centered_yuv2rgb(X, bgr="yes")),
    ("from_dict", "d", lambda: ptq.SensitivityTable.from_dict({"metric": "sqnr"})),
]


@pytest.mark.parametrize("fn, arg, call", CASES, ids=[f"{f}-{a}-{i}" for i, (f, a, _) in enumerate(CASES)])
def test_wrong_argument_is_named(fn, arg, call):
    with pytest.raises((TypeError, ValueError)) as e:
        call()
    assert fn in str(e.value) and arg in str(e.value), str(e.value)


MODEL_CASES = [
    ("prepare", "model", lambda m: eq.prepare(m, X, qconfig_setter=(T16,))),
    ("calibrate", "progress", lambda m: eq.calibrate(m, [X], progress=None)),
    ("freeze_bn", "freeze", lambda m: eq.freeze_bn(m, freeze="yes")),
    ("activation_histograms", "bins", lambda m: analysis.activation_histograms(m, [X], bins=True)),
    ("QuantAnalysis", "metric", lambda m: analysis.QuantAnalysis(Net().eval(), m, [X], metric=[])),
    ("QuantAnalysis", "data", lambda m: analysis.QuantAnalysis(Net().eval(), m, np.zeros((2, 3, 4, 4)))),
    ("op_sensitivity", "num_batches", lambda m: ptq.op_sensitivity(m, [X], num_batches=1.5, progress=False)),
    ("op_sensitivity", "data", lambda m: ptq.op_sensitivity(m, None, progress=False)),
    ("auto_calibrate", "bins", lambda m: ptq.auto_calibrate(m, [X], bins="2048", progress=False)),
    ("auto_calibrate", "candidates", lambda m: ptq.auto_calibrate(m, [X], candidates=None, progress=False)),
    ("adaround", "custom_config_dict", lambda m: ptq.adaround(m, [X], custom_config_dict=7)),
]


@pytest.mark.parametrize("fn, arg, call", MODEL_CASES, ids=[f"{f}-{a}" for f, a, _ in MODEL_CASES])
def test_wrong_argument_with_a_prepared_model(prepared, fn, arg, call):
    with pytest.raises((TypeError, ValueError)) as e:
        call(prepared)
    assert fn in str(e.value) and arg in str(e.value), str(e.value)


def test_valid_values_stay_accepted():
    """What worked keeps working: 0/1 flags, numpy and 0-d tensor scalars, percentile=True."""
    observers.MinMaxObserver(symmetric=0, ch_axis=np.int64(0))
    observers.PercentileObserver(percentile=np.float32(99.0), bins=np.int64(64))
    observers.shrink_range(X, True)
    assert eq.quantize(X, torch.tensor(0.1), torch.tensor(0), "qint8").dtype == torch.int8
    assert eq.quantize_multiplier(np.float64(0.5)) is not None
    assert analysis.cosine(X, X) == pytest.approx(1.0)


@pytest.mark.parametrize("call", [
    lambda s: s(None, {}), lambda s: s(["conv"], {}), lambda s: s("conv", {}), lambda s: s([], None)])
def test_setters_called_by_hand_name_their_arguments(call):
    from edgequant import qconfig_template as qt

    for setter in (qt.default_calibration_qconfig_setter, qt.ModuleNameQconfigSetter({"conv": None})):
        with pytest.raises(TypeError, match="(sites|current) must be"):
            call(setter)
    with pytest.raises(TypeError, match="apply_setters: sites must be"):
        qt.apply_setters((qt.default_calibration_qconfig_setter,), None)
