"""Misuse of the public API gets one clear error, never a silent no-op or a raw internal error.

Each case passes the wrong kind of object to a public function (the float model where the
prepared one belongs, a prepared model where a graph belongs, None, a string, an unknown name)
and checks the exception type and that the message names the function or argument and says
what to pass. The accepted spellings (observer names in ``get_qconfig``) are checked against
the qconfig built from the classes. Complex-valued ops (``torch.fft``, ``view_as_complex``)
are refused at ``prepare`` with the user's source line, and ``@edgequant.wrap`` remains the way
to keep them in a model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgequant as eq
from edgequant.export import ExportError
from edgequant.qconfig_template import ModuleNameQconfigSetter, default_calibration_qconfig_setter as T8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def stages():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 1, 8, 8)
    calib = eq.calibrate(eq.prepare(model, (x,), qconfig_setter=(T8,)), [x])
    ir = eq.export(calib)
    return model, x, calib, ir, eq.convert(ir)


# -- calibrate / set_fake_quantize ---------------------------------------------------------------
def test_calibrating_the_float_model_is_refused_not_a_no_op(stages):
    model, x, *_ = stages
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (lambda: eq.calibrate(model, [x]), lambda: eq.set_fake_quantize(model, eq.FakeQuantState.VALIDATION)):
        with pytest.raises(ValueError, match=r"no edgequant fake-quant modules.*edgequant\.prepare"):
            call()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("batches, match", [
    (None, "batches must be an iterable of batches.*got None"),
    (5, "got an int, which is not iterable"),
    ("abc", "got a str"),
    ("tensor", r"for one batch x pass \[x\]"),
])
def test_calibrate_refuses_what_is_not_an_iterable_of_batches(stages, batches, match):
    _, x, calib, *_ = stages
    with pytest.raises(TypeError, match=match):
        eq.calibrate(calib, x if batches == "tensor" else batches)


@pytest.mark.parametrize("batch, match", [
    (None, "batch 0 must be a tensor.*got None"),
    ("numpy", "numpy.ndarray; convert arrays with torch.from_numpy"),
    ("numpy-in-tuple", "tuple holding a numpy array"),
    ("text", "got a str"),
])
def test_calibrate_names_a_batch_of_the_wrong_type(stages, batch, match):
    _, x, calib, *_ = stages
    b = {"numpy": x.numpy(), "numpy-in-tuple": (x.numpy(),), "text": "img.png"}.get(batch, batch)
    with pytest.raises(TypeError, match=match):
        eq.calibrate(calib, [b])


def test_calibrate_with_no_batch_raises_and_leaves_the_model_usable(stages):
    model, x, *_ = stages
    fresh = eq.prepare(model, (x,), qconfig_setter=(T8,))
    with pytest.raises(ValueError, match="gave no batch, so no observer saw data"):
        eq.calibrate(fresh, iter([]))
    eq.calibrate(fresh, [x])  # then calibrates as usual
    assert torch.equal(eq.export(fresh)(x), eq.export(stages[2])(x))


def test_set_fake_quantize_names_an_unknown_state_and_a_non_module(stages):
    _, _, calib, ir, _ = stages
    with pytest.raises(ValueError, match=r"unknown state 'validate'.*'validation'"):
        eq.set_fake_quantize(calib, "validate")
    for bad, what in ((None, "got None"), (ir, "got an edgequant Graph")):
        with pytest.raises(TypeError, match=f"set_fake_quantize: model must be a torch nn.Module, {what}"):
            eq.set_fake_quantize(bad, "validation")


# -- convert / march ------------------------------------------------------------------------------
def test_convert_refuses_a_module_and_names_what_to_do(stages):
    model, _, calib, ir, qm = stages
    with pytest.raises(TypeError, match=r"convert: ir must be an edgequant Graph.*prepared model.*edgequant\.export"):
        eq.convert(calib)
    with pytest.raises(TypeError, match="got a float nn.Module"):
        eq.convert(model)
    with pytest.raises(TypeError, match="got None"):
        eq.convert(None)
    with pytest.raises(eq.convert.__globals__["ConvertError"], match="level 'int'"):
        eq.convert(qm)


@pytest.mark.parametrize("call", [lambda ir: eq.convert(ir, "nash-x"), lambda ir: eq.set_march("nashm"),
                                  lambda ir: eq.get_march().__class__(3)])
def test_an_unknown_march_lists_the_valid_ones(stages, call):
    with pytest.raises(ValueError, match=r"unknown march.*'nash-e', 'nash-m', 'nash-p', 'nash-h'"):
        call(stages[3])
    assert eq.March("NASH_P") is eq.March.NASH_P  # the spellings that worked still do


# -- qconfigs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    ("int16", "the value for 'fc' must be a QConfig.*got 'int16'"),
    (eq.qint16, "got qint16"),
    (T8, "got default_calibration_qconfig_setter"),
])
def test_module_name_setter_refuses_a_value_that_is_not_a_qconfig(bad, match):
    with pytest.raises(TypeError, match=match):
        ModuleNameQconfigSetter({"fc": bad})
    with pytest.raises(TypeError, match="key 3 must be a module name"):
        ModuleNameQconfigSetter({3: eq.get_qconfig()})
    with pytest.raises(TypeError, match="takes a dict"):
        ModuleNameQconfigSetter(["fc"])
    ModuleNameQconfigSetter({"fc": None, "conv": eq.get_qconfig()})  # what was valid still is


@pytest.mark.parametrize("name, cls", [("minmax", eq.MinMaxObserver), ("MSE", eq.MSEObserver), ("kl", eq.KLObserver),
                                       ("Percentile", eq.PercentileObserver), ("fixed_scale", eq.FixedScaleObserver),
                                       ("moving-average-minmax", eq.MovingAverageMinMaxObserver),
                                       ("MSEObserver", eq.MSEObserver)])
def test_get_qconfig_accepts_observer_names(name, cls):
    assert eq.get_qconfig(observer=name) == eq.get_qconfig(observer=cls)
    assert eq.get_qconfig(weight_observer=name) == eq.get_qconfig(weight_observer=cls)


def test_a_named_observer_calibrates_like_its_class(stages):
    model, x, *_ = stages

    def prepared(observer):
        setter = ModuleNameQconfigSetter({"conv": eq.get_qconfig(observer=observer)})
        return eq.calibrate(eq.prepare(model, (x,), qconfig_setter=(T8, setter)), [x])

    a, b = prepared("KL"), prepared(eq.KLObserver)  # the template alone would give conv an MSEObserver
    assert type(a.eq_fq["conv"].observer) is eq.KLObserver
    assert torch.equal(a.eq_fq["conv"].scale, b.eq_fq["conv"].scale)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(observer="histogram"), ValueError, r"unknown observer 'histogram'.*'minmax'"),
    (dict(weight_observer="max"), ValueError, "unknown weight_observer 'max'"),
    (dict(observer=eq.MinMaxObserver()), TypeError, "pass the class MinMaxObserver, not an instance"),
    (dict(observer=3), TypeError, "observer must be an observer class"),
    (dict(out_dtype="int8"), ValueError, r"out_dtype: unknown quantized dtype 'int8'.*qint8"),
    (dict(in_dtype=torch.int8), ValueError, "in_dtype: unknown quantized dtype"),
    (dict(observer_kwargs=[1]), TypeError, "observer_kwargs must be a dict"),
])
def test_get_qconfig_refuses_unknown_names_clearly(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        eq.get_qconfig(**kwargs)


def test_prepare_refuses_a_non_module_and_a_string_setter(stages):
    model, x, _, ir, _ = stages
    for bad in (None, "resnet18", ir):
        with pytest.raises(TypeError, match="prepare: model must be a torch nn.Module"):
            eq.prepare(bad, (x,), qconfig_setter=(T8,))
    with pytest.raises(TypeError, match="qconfig_setter must be a setter or a tuple of setters.*got 'int8'"):
        eq.prepare(model, (x,), qconfig_setter="int8")


# -- complex values -------------------------------------------------------------------------------
class _Spectrum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.fft.rfft(self.fc(x)).abs()  # complex in the middle


class _AsComplex(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        z = torch.view_as_complex(self.fc(x).reshape(-1, 4, 2))
        return torch.view_as_real(z * z).reshape(-1, 8)  # mul is supported, but on complex values


@eq.wrap
def _magnitude(x):
    return torch.fft.rfft(x).abs()


class _Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return _magnitude(self.fc(x))


@pytest.mark.parametrize("cls, op, line", [(_Spectrum, "fft_rfft", "torch.fft.rfft(self.fc(x)).abs()"),
                                           (_AsComplex, "view_as_complex", "torch.view_as_complex(")])
def test_complex_ops_are_refused_at_prepare_with_the_source_line(cls, op, line):
    with pytest.raises(eq.CaptureError, match="complex-valued") as err:
        eq.prepare(cls().eval(), torch.randn(2, 8), qconfig_setter=(T8,))
    msg = str(err.value)
    assert op in msg and "test_misuse.py" in msg and line in msg and "edgequant.wrap" in msg
    if cls is _AsComplex:
        assert "mul" in msg  # a supported op on a complex value is refused too


def test_wrapped_fft_still_quantizes():
    torch.manual_seed(0)
    model = _Wrapped().eval()
    x = torch.randn(16, 8)
    qm = eq.convert(eq.export(eq.calibrate(eq.prepare(model, x[:2], qconfig_setter=(T8,)), [x])))
    ref = model(x)
    got = qm(x)
    assert got.shape == ref.shape and torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), 0) > 0.99


# -- the other entry points -----------------------------------------------------------------------
def test_export_visualize_and_export_onnx_name_what_they_got(stages, tmp_path):
    model, _, calib, ir, _ = stages
    with pytest.raises(ExportError, match="got a float nn.Module"):
        eq.export(model)
    with pytest.raises(ExportError, match="exported already"):
        eq.export(ir)
    for fn, arg in ((eq.visualize, "model_or_ir"), (eq.export_onnx, "model")):
        with pytest.raises(TypeError, match=f"{fn.__name__}: {arg} must be an edgequant Graph or a model returned"):
            fn(model, tmp_path / "m.onnx")
        with pytest.raises(TypeError, match=f"{fn.__name__}: path must be a file path.*got None"):
            fn(ir, None)


def test_analysis_and_ptq_entry_points_name_the_argument(stages):
    model, x, calib, ir, qm = stages
    from edgequant.analysis import QuantAnalysis, activation_histograms, compare

    with pytest.raises(TypeError, match="compare: quantized must be an edgequant Graph.*edgequant.load"):
        compare(model, calib, "model.eqm", x)
    with pytest.raises(TypeError, match="compare: calib_model must be a model returned by edgequant.prepare"):
        compare(calib, model, qm, x)
    with pytest.raises(TypeError, match="QuantAnalysis: calib_model"):
        QuantAnalysis(model, qm, [x])
    with pytest.raises(TypeError, match="QuantAnalysis: data must be an iterable"):
        QuantAnalysis(model, calib, None)
    with pytest.raises(ValueError, match="activation_histograms: model .* no edgequant fake-quant"):
        activation_histograms(model, [x])
    for fn in (eq.ptq.adaround, eq.ptq.auto_calibrate, eq.ptq.op_sensitivity):
        with pytest.raises(TypeError, match=f"{fn.__name__}: calib_model must be a model returned by edgequant.prepare"):
            fn(model, [x])
    assert compare(model, calib, qm, x).layers  # the right arguments still work
    np.testing.assert_array_equal(qm(x).numpy(), eq.convert(ir)(x).numpy())
