"""The public Python API on misuse and odd models: a clear error naming the argument, or the right answer.

Found by a red-team battery of bad inputs (issue 17). Each test fails without its fix: a float
op (a wrapped function, an op a setter keeps float) reading a quantized value got the integer
codes; a model without submodules could not be prepared; a ``None`` output, data of another
shape given to the ptq searches, setters returning non-qconfigs or unknown names, damaged state
dicts, bad QuantStub scales and SegmentLUT functions returning non-tensors reached internals.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgequant as eq
from edgequant import distributed, ptq
from edgequant.export import ExportError
from edgequant.qconfig_template import ModuleNameQconfigSetter, default_calibration_qconfig_setter as T8

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@eq.wrap
def _doubled(x):
    return x * 2


class WrappedFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.c(_doubled(x))


class NoSubmodules(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


def _stages(model, setters=(T8,)):
    torch.manual_seed(0)
    gm = eq.calibrate(eq.prepare(model.eval(), (X,), qconfig_setter=setters), [X, torch.randn_like(X)])
    ir = eq.export(gm)
    return gm, ir, eq.convert(ir)


@pytest.fixture(scope="module")
def calibrated():
    return _stages(Net())[0]


@pytest.mark.parametrize("make", [lambda: (WrappedFirst(), (T8,)),
                                  lambda: (Net(), (T8, ModuleNameQconfigSetter({"fc": None})))],
                         ids=["wrapped function", "op kept float"])
def test_a_float_op_reading_a_quantized_value_gets_its_float_value(make):
    model, setters = make()
    gm, ir, ig = _stages(model, setters)
    ref = ir(X)                                  # the quant level hands the float op fake-quantized floats
    assert torch.allclose(ig(X), ref, atol=1e-4)


def test_a_model_without_submodules_quantizes():
    gm, ir, ig = _stages(NoSubmodules())
    assert torch.allclose(ig(X), NoSubmodules()(X), atol=0.05)


def test_an_output_that_is_not_a_tensor_is_refused_at_export():
    class ReturnsNone(nn.Module):
        def forward(self, x):
            return None

    gm = eq.calibrate(eq.prepare(ReturnsNone(), (X,), qconfig_setter=(T8,)), [X])
    with pytest.raises(ExportError, match="output 0 of the model is None"):
        eq.export(gm)


@pytest.mark.parametrize("search", [
    lambda gm, d: ptq.op_sensitivity(gm, d, progress=False),
    lambda gm, d: ptq.auto_calibrate(gm, d, progress=False),
    lambda gm, d: ptq.adaround(gm, d, {"num_step": 1, "progress": False}),
], ids=["op_sensitivity", "auto_calibrate", "adaround"])
def test_the_ptq_searches_check_their_data_like_the_model(calibrated, search):
    with pytest.raises(ValueError, match=r"input 'x' has shape \(2, 3, 9, 9\) but the model was traced with"):
        search(copy.deepcopy(calibrated), [torch.randn(2, 3, 9, 9)])


def test_a_setter_must_return_qconfigs_for_sites_of_the_model():
    with pytest.raises(TypeError, match="returned str for 'conv'; expected a QConfig"):
        eq.prepare(Net(), (X,), qconfig_setter=(lambda sites, cur: {"conv": "int8"},))
    with pytest.raises(ValueError, match="returned the name 'nosuch', which is no op site"):
        eq.prepare(Net(), (X,), qconfig_setter=(lambda sites, cur: {"nosuch": eq.get_qconfig()},))
    with pytest.raises(TypeError, match="QConfig: activation must be a FakeQuantSpec or None"):
        eq.QConfig(activation="int8", weight=None)
    with pytest.raises(ValueError, match=r"observer_kwargs \['nosuch'\] are not arguments of MinMaxObserver"):
        eq.get_qconfig(observer="minmax", observer_kwargs={"nosuch": 1})
    with pytest.raises(TypeError, match="table must be the SensitivityTable"):
        ptq.get_sensitive_op_qconfig_setter([("conv", 1.0)], topk=1)


@pytest.mark.parametrize("scale", [-1.0, 0.0, float("nan"), "0.1"])
def test_a_quant_stub_refuses_a_scale_that_is_not_a_positive_number(scale):
    with pytest.raises(ValueError, match="QuantStub: scale must be a finite number > 0"):
        eq.QuantStub(scale=scale)


@pytest.mark.parametrize("key, value, match", [
    ("input_x.scale", float("nan"), r"eq_fq\.input_x\.scale: the state dict holds nan"),
    ("input_x.scale", 0.0, r"eq_fq\.input_x\.scale: the state dict holds 0\.0"),
    ("input_x.zero_point", 1000, r"eq_fq\.input_x\.zero_point: the state dict holds 1000, outside qint8"),
])
def test_a_damaged_state_dict_is_refused_naming_the_key(calibrated, key, value, match):
    sd = calibrated.state_dict()
    sd["eq_fq." + key] = torch.full_like(sd["eq_fq." + key], value)
    fresh = eq.prepare(Net(), (X,), qconfig_setter=(T8,))
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)


@pytest.mark.parametrize("fn, got", [(lambda x: x.numpy(), "gave ndarray"),
                                     (lambda x: (x * 10).long(), "gave a torch.int64 tensor")])
def test_a_segment_lut_function_must_return_a_float_tensor(fn, got):
    with pytest.raises(ValueError, match=f"must return a floating-point torch tensor.*{got}"):
        eq.SegmentLUT(fn, input_range=(-1, 1))


def test_an_increasing_inverse_func_is_refused():
    with pytest.raises(ValueError, match="inverse_func must be the inverse of a monotonically decreasing"):
        eq.SegmentLUT(torch.exp, inverse_func=torch.exp, input_range=(-1, 1))

    class Lut(nn.Module):   # 8-bit input: a direct table, which never used inverse_func
        def __init__(self):
            super().__init__()
            self.c, self.l = nn.Conv2d(3, 3, 1), eq.SegmentLUT(torch.exp, inverse_func=torch.exp)

        def forward(self, x):
            return self.l(self.c(x))

    with pytest.raises(ValueError, match="inverse_func must be the inverse of a monotonically decreasing"):
        _stages(Lut())


def test_other_misuse_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"sync_observers: model \(Net\) has no edgequant fake-quant modules"):
        distributed.sync_observers(Net())
    with pytest.raises(TypeError, match="edgequant.wrap takes a function"):
        eq.wrap(5)
    with pytest.raises(ValueError, match=r"example input 0 is empty \(shape \(0, 3, 8, 8\)\)"):
        eq.prepare(Net(), (torch.randn(0, 3, 8, 8),), qconfig_setter=(T8,))
    assert eq.FakeQuantState("CALIBRATION") is eq.FakeQuantState.CALIBRATION
    with pytest.raises(ValueError, match="unknown fake-quant state 'calib'"):
        eq.FakeQuantState("calib")


def test_data_dependent_control_flow_is_named_without_guard_text():
    class Branches(nn.Module):
        def forward(self, x):
            if x.sum().item() > 0:
                return x * 2
            return x - 1

    with pytest.raises(eq.CaptureError, match="a tensor's value decides the Python code") as info:
        eq.prepare(Branches(), (X,), qconfig_setter=(T8,))
    assert "guard" not in str(info.value).lower() and "if x.sum().item() > 0" in str(info.value)


def test_graphs_take_inputs_by_name_and_refuse_unknown_names():
    gm, ir, q = _stages(Net())
    name = q.inputs[0]
    assert torch.equal(q(**{name: X}), q(X)) and torch.equal(ir(**{name: X}), ir(X))
    with pytest.raises(TypeError, match="unknown keyword 'image'"):
        q(image=X)
    with pytest.raises(TypeError, match=f"'{name}' twice"):
        q(X, **{name: X})


def test_export_checks_its_example_inputs_as_a_call_does():
    gm, _, _ = _stages(Net())
    with pytest.raises(TypeError, match="input 'x' must be a tensor"):
        eq.export(gm, "x")
    with pytest.raises(ValueError, match=r"input 'x' has shape \(2, 3, 9, 9\)"):
        eq.export(gm, torch.randn(2, 3, 9, 9))


def test_analysis_refuses_label_pairs_and_a_bad_count():
    gm, _, q = _stages(Net())
    with pytest.raises(ValueError, match=r"batch 0 holds 2 items but the model takes 1 input.*\(x for x, _ in loader\)"):
        eq.analysis.QuantAnalysis(Net().eval(), gm, [(X, torch.zeros(2))])
    qa = eq.analysis.QuantAnalysis(Net().eval(), gm, [X])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num is how many worst samples"):
            qa.auto_find_bad_case(num=bad)


@pytest.mark.parametrize("key,value", [("lr", -0.1), ("lr", float("nan")), ("num_step", 0), ("batch_size", 0),
                                       ("num_batches", 0), ("warm_up", 1.5), ("weight", -1)])
def test_adaround_refuses_settings_that_train_nothing_or_diverge(key, value):
    gm, _, _ = _stages(Net())
    with pytest.raises(ValueError, match=f"custom_config_dict\\['{key}'\\]"):
        ptq.adaround(gm, [X], {key: value, "progress": False})


# -- issue 17, second red-team pass ------------------------------------------------------------------
class NoGradRegions(Net):
    """Grad-mode regions in the forward (nested, and set_grad_enabled): values are unaffected."""

    def forward(self, x):
        y = torch.relu(self.conv(x))
        with torch.no_grad():
            y = y * 0.5 + 0.25
            with torch.enable_grad():
                y = y - 0.125
        with torch.set_grad_enabled(False):
            return self.fc(y.flatten(1))


def test_grad_mode_regions_in_the_forward_quantize():
    model = NoGradRegions().eval()
    gm, ir, q = _stages(model)
    assert not [n for n in gm.graph.nodes if "set_grad" in str(n.target)]
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cos = torch.nn.functional.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0)
    assert cos > 0.99, cos


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_or_example_in_another_float_dtype_is_refused_at_prepare(dtype):
    with pytest.raises(TypeError, match=f"parameter 'conv.weight' is {str(dtype)[6:]}; edgequant quantizes float32 "
                                        r"models: call model.float\(\)"):
        eq.prepare(Net().to(dtype), (X.to(dtype),), qconfig_setter=(T8,))
    with pytest.raises(TypeError, match=f"example input 0 is {str(dtype)[6:]}"):
        eq.prepare(Net(), (X.to(dtype),), qconfig_setter=(T8,))


def test_an_exception_in_a_users_setter_names_the_setter_and_the_site():
    def picky(sites, current):
        for site in sites:
            if site.op == "linear":
                raise RuntimeError("no linear layers here")
        return current

    def lookup(sites, current):
        return {s.name: {"conv": T8}[s.name] for s in sites}   # KeyError on the first other site

    with pytest.raises(RuntimeError, match=r"qconfig setter .*picky \(.*test_api_misuse.py:\d+\) raised RuntimeError "
                                           r"while configuring op site 'fc' \(linear\): no linear layers here") as info:
        eq.prepare(Net(), (X,), qconfig_setter=(T8, picky))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match=r"setter .*lookup .* raised KeyError while configuring op site") as info:
        eq.prepare(Net(), (X,), qconfig_setter=(lookup,))
    assert isinstance(info.value.__cause__, KeyError)


def test_inputs_on_the_meta_device_are_refused_by_name():
    gm, ir, q = _stages(Net())
    meta = X.to("meta")
    for model in (gm, ir, q):
        with pytest.raises(ValueError, match="input 'x' is on device meta"):
            model(meta)


@pytest.mark.parametrize("points,match", [([], "is empty"), ([0.5, 0.5, 1.0], "strictly increasing"),
                                          ([1.0, 0.5], "strictly increasing")])
def test_segment_lut_refuses_dividing_points_without_segments(points, match):
    with pytest.raises(ValueError, match=f"dividing_points {match}" if match == "is empty" else match):
        eq.nn.SegmentLUT(torch.tanh, dividing_points=points)


def test_report_names_a_path_that_is_not_a_file(tmp_path):
    from edgequant.analysis.html_report import report

    with pytest.raises(TypeError, match="report: path must be a file path"):
        report(None)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        report(tmp_path)


def test_pickling_a_prepared_model_says_what_to_do_and_deepcopy_still_works():
    import io
    import pickle

    gm, _, _ = _stages(Net())
    for clone in (gm, copy.deepcopy(gm)):
        with pytest.raises(TypeError, match="cannot be pickled.*state_dict"):
            pickle.dumps(clone)
        with pytest.raises(TypeError, match="cannot be pickled"):
            torch.save(clone, io.BytesIO())
    assert torch.equal(copy.deepcopy(gm)(X), gm(X))


@pytest.mark.parametrize("kw,match", [({"sensitivity": torch.ones(2)}, "sensitivity"),
                                      ({"histogram_batches": 1.5}, "histogram_batches"),
                                      ({"sensitivity_batches": 0}, "sensitivity_batches"),
                                      ({"title": 5}, "title must be a str")])
def test_report_names_a_wrong_option(tmp_path, kw, match):
    from edgequant.analysis.html_report import report

    with pytest.raises((TypeError, ValueError), match=f"report: {match}"):
        report(tmp_path / "r.html", **kw)
