"""Arguments and files that do not fit are refused with an error naming them.

- State dicts record each fake-quant's dtype (``qdtype``): scales calibrated for another dtype, or
  per channel where the model quantizes per tensor (or the reverse), raise ``ValueError`` naming
  the state-dict key; the same template loads bit for bit, also through safetensors as the CLI
  saves it; a state dict saved before ``qdtype`` existed still loads.
- Deployment helpers (``edgequant.deploy``, ``edgequant.functional.yuv``) raise ``DeployError`` /
  ``ValueError`` / ``TypeError`` naming the argument and its value.
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

import edgequant as eq
from edgequant.deploy import DeployError, insert_yuv2rgb, run_stages, split
from edgequant.fake_quant import FakeQuantize
from edgequant.functional import centered_yuv2rgb, rgb2centered_yuv
from edgequant.functional.yuv import bgr2centered_yuv
from edgequant.observers import MinMaxObserver
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn
from test_deploy import Id, TwoStage, quantize_model


@pytest.fixture(scope="module")
def cnn():
    model, (xtr, _, xte, _) = trained_cnn()
    return model, xtr, xte


def _calibrated(cnn, setter):
    model, xtr, _ = cnn
    return calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(setter,)), xtr[:128].split(64))


def _fresh(cnn, setter):
    model, xtr, _ = cnn
    return eq.prepare(model, xtr[:2], qconfig_setter=(setter,))


def _via_safetensors(sd, tmp_path):
    path = tmp_path / "prepared.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))   # as edgequant.cli does
    return load_file(str(path))


# -- state dicts know their dtype ----------------------------------------------------------------------
def test_int16_scales_into_an_int8_model_are_refused_naming_the_key(cnn, tmp_path):
    sd = _calibrated(cnn, T16).state_dict()
    for loaded in (sd, _via_safetensors(sd, tmp_path)):
        for strict in (True, False):
            with pytest.raises(ValueError, match=r"eq_fq\.quant\.scale: .*calibrated for qint16.* as qint8"):
                _fresh(cnn, T8).load_state_dict(loaded, strict=strict)


def test_the_same_template_loads_bit_for_bit_through_safetensors(cnn, tmp_path):
    _, _, xte = cnn
    a = _calibrated(cnn, T16)
    b = _fresh(cnn, T16)
    b.load_state_dict(_via_safetensors(a.state_dict(), tmp_path))
    eq.set_fake_quantize(b, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        assert torch.equal(a(xte[:50]), b(xte[:50]))
    assert b.eq_fq["quant"].qdtype.tolist() == [16, 1] and b.eq_fq["stem__0__weight"].qdtype.tolist() == [8, 1]


def test_a_state_dict_saved_before_the_dtype_was_recorded_still_loads(cnn):
    _, _, xte = cnn
    a = _calibrated(cnn, T8)
    # nor the float weights that rounding passes keep (``float_weight``)
    old = {k: v for k, v in a.state_dict().items() if not k.endswith((".qdtype", ".float_weight"))}
    assert len(old) < len(a.state_dict())
    keys = set(old)
    b = _fresh(cnn, T8)
    b.load_state_dict(old)                      # strict: no missing key either
    assert set(old) == keys                     # the caller's dict is left as it was
    eq.set_fake_quantize(b, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        assert torch.equal(a(xte[:50]), b(xte[:50]))
    # one FakeQuantize on its own fills the same keys in
    p = "eq_fq.stem__0__weight."
    lone = _fresh(cnn, T8).eq_fq["stem__0__weight"]
    lone.load_state_dict({k[len(p):]: v for k, v in old.items() if k.startswith(p)})
    assert torch.equal(lone.scale, a.eq_fq["stem__0__weight"].scale) and lone.qdtype.tolist() == [8, 1]
    assert lone.float_weight.numel() == 0


def test_per_channel_and_per_tensor_scales_do_not_swap(cnn):
    sd = _calibrated(cnn, T8).state_dict()
    vector = dict(sd, **{"eq_fq.dw.scale": sd["eq_fq.dw__weight.scale"].clone(),
                         "eq_fq.dw.zero_point": sd["eq_fq.dw__weight.zero_point"].clone()})
    with pytest.raises(ValueError, match=r"eq_fq\.dw\.scale: .*16 per-channel scales.*one scale \(per tensor\)"):
        _fresh(cnn, T8).load_state_dict(vector)
    scalar = dict(sd, **{"eq_fq.dw__weight.scale": torch.tensor(0.01), "eq_fq.dw__weight.zero_point": torch.tensor(0)})
    with pytest.raises(ValueError, match=r"eq_fq\.dw__weight\.scale: .*shape \[\].*one scale per channel"):
        _fresh(cnn, T8).load_state_dict(scalar)
    # a calibrated model knows its channel count: 8 scales for 16 channels is refused too
    short = dict(sd, **{"eq_fq.dw__weight.scale": sd["eq_fq.dw__weight.scale"][:8].clone(),
                        "eq_fq.dw__weight.zero_point": sd["eq_fq.dw__weight.zero_point"][:8].clone()})
    with pytest.raises(ValueError, match=r"eq_fq\.dw__weight\.scale: .*8 per-channel scales where this model has 16"):
        _calibrated(cnn, T8).load_state_dict(short)


def test_one_fake_quantize_checks_the_recorded_dtype():
    src = FakeQuantize(MinMaxObserver(dtype="qint16"), "qint16")
    src.observer(torch.linspace(-1, 1, 11))
    src.freeze_qparams()
    dst = FakeQuantize(MinMaxObserver(dtype="quint8", symmetric=False), "quint8")
    with pytest.raises(ValueError, match=r"^scale: the state dict was calibrated for qint16, .* as quint8"):
        dst.load_state_dict(src.state_dict())
    bad = dict(src.state_dict(), qdtype=torch.tensor([7, 1]))
    with pytest.raises(ValueError, match=r"qdtype: \[7, 1\] is not a quantized dtype record"):
        FakeQuantize(MinMaxObserver(dtype="qint16"), "qint16").load_state_dict(bad)
    same = FakeQuantize(MinMaxObserver(dtype="qint16"), "qint16")
    same.load_state_dict(src.state_dict())
    assert torch.equal(same.scale, src.scale)


# -- deployment helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def id_graph():
    rgb = torch.rand(2, 3, 4, 4) * 255
    return quantize_model(Id(), rgb - 128, rgb - 128)[2]


@pytest.mark.parametrize("kw,match", [
    (dict(std=0), r"std must be positive.*\[0\.0, 0\.0, 0\.0\]"),
    (dict(std=[60, -1, 60]), r"std must be positive"),
    (dict(std=float("nan")), r"std must be finite"),
    (dict(mean=[120, float("inf"), 110]), r"mean must be finite"),
    (dict(mean="grey"), r"mean takes one or three numbers.*'grey'"),
    (dict(mean=[1, 2]), r"mean takes one or three values.*got 2"),
    (dict(mean=1e9), r"mean must be within"),
    (dict(std=1e-12), r"std .* gives 1e\+12 output codes per RGB level"),
    (dict(swing="hdr"), r"swing must be 'full' or 'studio', got 'hdr'"),
    (dict(bgr="yes"), r"bgr must be True or False, got 'yes'"),
    (dict(stub_name=3), r"stub_name is the name of a quantize node \(a str\), got int"),
    (dict(stub_name="nope"), r"'nope' is not a quantize node"),
])
def test_insert_yuv2rgb_names_the_bad_argument(id_graph, kw, match):
    args = dict(stub_name="quant", mean=128, std=1)
    args.update(kw)
    with pytest.raises(DeployError, match=match):
        insert_yuv2rgb(id_graph, **args)


def test_split_and_run_stages_name_the_bad_argument(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    _, _, g = quantize_model(TwoStage().eval(), x, x[:2])
    assert len(split(g, ["quant", "quant_mid"])) == 3
    with pytest.raises(DeployError, match=r"'quant_mid' is listed 2 times"):
        split(g, ["quant_mid", "quant_mid"])
    with pytest.raises(DeployError, match=r"graph order, but 'quant' comes before 'quant_mid'"):
        split(g, ["quant_mid", "quant"])
    for bad in (None, 3, ["quant_mid", 2]):
        with pytest.raises(DeployError, match="cut_points is a node name or a list of node names"):
            split(g, bad)
    stages = split(g, ["quant_mid"])
    with pytest.raises(DeployError, match=r"the model takes 1 input\(s\) \['x'\], got 2"):
        run_stages(stages, x, x)
    with pytest.raises(DeployError, match="non-empty list of graphs"):
        run_stages([], x)
    with pytest.raises(DeployError, match="has no 'model_inputs'"):
        run_stages([g], x)


@pytest.mark.parametrize("kw,err,match", [
    (dict(q_scale=0), ValueError, r"q_scale must be finite and positive.*got 0\.0"),
    (dict(q_scale=-0.5), ValueError, r"q_scale must be finite and positive.*got -0\.5"),
    (dict(q_scale=float("inf")), ValueError, r"q_scale must be finite and positive.*got inf"),
    (dict(q_scale=[1.0, 2.0]), ValueError, r"q_scale is the QuantStub's \(per-tensor\) scale: one value"),
    (dict(q_scale="x"), ValueError, r"q_scale is the QuantStub's .*'x'"),
    (dict(std=0), ValueError, r"std must not be zero"),
    (dict(std=[1, float("nan"), 1]), ValueError, r"std must be finite"),
    (dict(mean=float("-inf")), ValueError, r"mean must be finite"),
    (dict(qmin=10, qmax=-10), ValueError, r"qmin and qmax must be integers with qmin <= qmax, got qmin=10, qmax=-10"),
    (dict(qmin=0.5), ValueError, r"qmin and qmax must be integers"),
    (dict(swing="HDR"), ValueError, r"swing must be 'full' or 'studio', got 'HDR'"),
])
def test_centered_yuv2rgb_names_the_bad_argument(kw, err, match):
    yuv = torch.zeros(1, 3, 2, 2)
    with pytest.raises(err, match=match):
        centered_yuv2rgb(yuv, **kw)


def test_yuv_functions_name_a_bad_image():
    for fn in (rgb2centered_yuv, bgr2centered_yuv, centered_yuv2rgb):
        with pytest.raises(TypeError, match="the image must be a torch.Tensor .* got list"):
            fn([[[0.0]]] * 3)
        with pytest.raises(ValueError, match=r"3 channels on dim -3.*\(1, 4, 2, 2\)"):
            fn(torch.zeros(1, 4, 2, 2))
    # the checks leave valid calls as they were: a grey image maps to the grey codes
    grey = rgb2centered_yuv(torch.full((1, 3, 2, 2), 128.0))
    assert torch.equal(centered_yuv2rgb(grey, mean=128, std=1, q_scale=1), torch.zeros(1, 3, 2, 2))
