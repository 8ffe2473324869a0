"""Seed 000's DecInt end to end: prepare -> calibrate -> validate -> export -> convert -> visualize.

The model is tests/seeds/decint.py (the seed's code with only its imports changed): a
SegmentLUT(to_dec_func, is_centrosymmetric=True) on 12-bit pixels with qint16 activations,
then per-image normalisation to [-1, 1] (max/min reductions, sub, add, division by a tensor,
clamp, mul, sub). On random 12-bit images the integer model stays within 0.01 of float.

The same holds on the seed's own 4x4 images once calibration has seen the whole 12-bit range
(last test); calibrated on too few pixels, the input range stops short of 4095 and clips the
brightest pixel of an image, which moves its normalisation by up to 0.011.
"""
import pytest
import torch

import edgequant as eq

from seeds import decint


def _calibrated(calib):
    model = decint.DecInt().eval()
    eq.set_march(eq.March.NASH_M)
    cm = eq.prepare(model, calib[:1], qconfig_setter=(decint.calibration_8bit_weight_16bit_act_qconfig_setter,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        cm(calib)
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    return model, cm


@pytest.fixture(scope="module")
def pipeline():
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 4096, (32, 1, 16, 16), generator=g).float()
    model, cm = _calibrated(calib)
    ir = eq.export(cm, calib[:1])
    qg = eq.convert(ir, eq.March.NASH_M)
    return model, cm, ir, qg


def test_seed000_runs_the_whole_flow_and_the_table_is_a_lut_node(pipeline, tmp_path):
    _, cm, ir, qg = pipeline
    rows = {r["name"]: r for r in qg.summary()}
    assert rows["to_dec"]["op"] == "lut" and rows["to_dec"]["dtype"] == "qint16"
    assert rows["div"]["op"] == "lut_div"
    eq.visualize(qg, tmp_path / "quantized.onnx")
    eq.save(qg, tmp_path / "quantized.eqm")
    x = torch.randint(0, 4096, (4, 1, 16, 16)).float()
    assert torch.equal(eq.load(tmp_path / "quantized.eqm")(x), qg(x))
    with torch.no_grad():
        assert torch.equal(ir(x), cm(x))


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (1024, 1, 16, 16)])  # the traced image size
def test_seed000_integer_output_within_0_01_of_float(pipeline, shape):
    model, cm, _, qg = pipeline
    x = torch.randint(0, 4096, shape, generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        ref = model(x)
    y = qg(x)
    err = (y - ref).abs().max().item()
    print(f"\nDecInt {shape}: max |int - float| = {err:.4f}")
    assert err <= 0.01


def test_seed000_tiny_images_as_in_the_seed():
    # the seed's 4x4 images; calibrated on enough of them that the 12-bit range is covered (an
    # input range calibrated below 4095 clips the brightest pixels, and with them the per-image max)
    g = torch.Generator().manual_seed(2)
    model, cm = _calibrated(torch.randint(0, 4096, (1024, 1, 4, 4), generator=g).float())
    x = torch.randint(0, 4096, (4096, 1, 4, 4), generator=g).float()
    ir = eq.export(cm, x[:1])
    qg = eq.convert(ir, eq.March.NASH_M)
    with torch.no_grad():
        ref = model(x)
        per_image = (qg(x) - ref).abs().flatten(1).amax(1)
        sim = (cm(x) - ref).abs().max().item()
    print(f"\nDecInt 4x4: integer max error {per_image.max():.4f} (simulation {sim:.4f})")
    assert per_image.max() <= 0.01
