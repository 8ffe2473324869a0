"""edgequant.deploy: the integer YUV -> RGB input op and segmented deployment on converted graphs."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.check import check_graph
from edgequant.deploy import DeployError, insert_yuv2rgb, run_stages, split
from edgequant.functional import centered_yuv2rgb, rgb2centered_yuv
from edgequant.qconfig_template import default_calibration_qconfig_setter

MEAN, STD = [120.0, 115.0, 110.0], [70.0, 65.0, 60.0]


def quantize_model(model, calib, example):
    c = eq.prepare(model, example, qconfig_setter=(default_calibration_qconfig_setter,))
    eq.set_fake_quantize(c, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for xb in calib.split(128):
            c(xb)
    eq.set_fake_quantize(c, eq.FakeQuantState.VALIDATION)
    q = eq.export(c, example)
    return c, q, eq.convert(q, eq.March.NASH_M)


def colour_digits():
    """scikit-learn digits as 8-bit RGB images: each digit in a random colour on a contrasting random background."""
    from sklearn.datasets import load_digits

    d = load_digits()
    g = torch.Generator().manual_seed(0)
    ink = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0          # (N, 1, 8, 8)
    fg = torch.randint(150, 256, (len(ink), 3, 1, 1), generator=g).float()   # contrasting colours,
    bg = torch.randint(0, 106, (len(ink), 3, 1, 1), generator=g).float()     # light on dark or dark on light
    swap = torch.rand(len(ink), 1, 1, 1, generator=g) < 0.5
    fg, bg = torch.where(swap, bg, fg), torch.where(swap, fg, bg)
    rgb = torch.round(bg + (fg - bg) * ink)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(rgb), generator=g)
    return rgb[perm][:1400], y[perm][:1400], rgb[perm][1400:], y[perm][1400:]


def normalise(rgb):
    return (rgb - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)


class ColourNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.quant = eq.QuantStub()
        self.conv1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Linear(c * 16, 10)
        self.dequant = eq.DeQuantStub()

    def forward(self, x):
        x = self.conv2(self.conv1(self.quant(x)))
        return self.dequant(self.head(F.avg_pool2d(x, 2).flatten(1)))


@pytest.fixture(scope="module")
def rgb_classifier():
    xtr, ytr, xte, yte = colour_digits()
    torch.manual_seed(0)
    model = ColourNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(xtr)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(normalise(xtr[idx])), ytr[idx]).backward()
            opt.step()
    model.eval()
    _, _, g = quantize_model(model, normalise(xtr[:512]), normalise(xtr[:2]))
    return g, xte, yte


def test_yuv2rgb_inserted_classifier_agrees(rgb_classifier, tmp_path):
    g, xte, yte = rgb_classifier
    rgb_pred = g(normalise(xte)).argmax(1)
    acc = (rgb_pred == yte).float().mean().item()
    assert acc > 0.85, acc                                  # the RGB-trained model works
    h = insert_yuv2rgb(g, "quant", swing="full", mean=MEAN, std=torch.tensor(STD))
    assert h.values[h.nodes[0].outputs[0]].qparams.scale == (1.0,)
    yuv = rgb2centered_yuv(xte, "full")
    yuv_pred = h(yuv).argmax(1)
    agree = (yuv_pred == rgb_pred).float().mean().item()
    print(f"RGB int model accuracy {acc:.4f}; YUV-input model agrees on {agree:.4f} of {len(xte)} test images")
    assert agree >= 0.99, agree
    # integer op against its float reference; codes in int8 also as an integer tensor input
    _, env = h(yuv, return_intermediates=True)
    qp = g.values[g.nodes[0].outputs[0]].qparams   # the stub's qparams: affine int8, so a zero point
    ref = centered_yuv2rgb(yuv, "full", MEAN, STD, qp.scale[0], zero_point=qp.zero_point[0])
    assert (env[g.nodes[0].outputs[0]].float() - ref).abs().max() <= 1
    assert torch.equal(h(yuv.to(torch.int8)), h(yuv))
    eq.save(h, tmp_path / "yuv.eqm")
    eq.visualize(h, tmp_path / "yuv.onnx")
    assert torch.equal(eq.load(tmp_path / "yuv.eqm")(yuv), h(yuv))


def test_yuv2rgb_integer_op_on_colour_grid():
    levels = torch.linspace(0, 255, 32).round()
    r, gg, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    rgb = torch.stack([r, gg, b]).reshape(1, 3, 1024, 32)

    _, _, g = quantize_model(Id(), rgb - 128, rgb - 128)
    for swing, tol in (("full", 1), ("studio", 2)):
        h = insert_yuv2rgb(g, "quant", swing=swing, mean=128, std=1)
        back = h(rgb2centered_yuv(rgb, swing))
        assert (back - (rgb - 128)).abs().max() <= tol
        diff = (back - centered_yuv2rgb(rgb2centered_yuv(rgb, swing), swing, 128, 1, 1)).abs()
        print(f"{swing}: integer op equals the float reference on {(diff == 0).float().mean().item():.5f} "
              f"of {diff.numel()} codes, max diff {diff.max().item():.0f}")
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.998   # fixed-point (2^-14) coefficients


def test_insert_refuses_training_and_quant_models():
    m = ColourNet().eval()
    x = torch.rand(2, 3, 8, 8)
    c, q, g = quantize_model(m, x, x)
    for bad in (c, m, q):
        with pytest.raises(DeployError, match="convert"):
            insert_yuv2rgb(bad, "quant")
    with pytest.raises(DeployError, match="not a quantize node"):
        insert_yuv2rgb(g, "conv1")


class Id(nn.Module):
    """A QuantStub (scale 1) straight into a DeQuantStub: integer images in, the same out."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(scale=1.0), eq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.quant(x))


class TwoStage(nn.Module):
    """A backbone, then a QuantStub(scale=None) cut point, then a head (two deployed stages)."""

    def __init__(self):
        super().__init__()
        self.quant = eq.QuantStub()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.quant_mid = eq.QuantStub()          # scale=None: calibration records it
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16, 10)
        self.dequant = eq.DeQuantStub()

    def forward(self, x):
        x = self.quant_mid(self.backbone(self.quant(x)))
        x = F.relu(self.conv(x))
        return self.dequant(self.head(F.avg_pool2d(x, 2).flatten(1)))


def test_split_stages_bit_identical(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    _, q, g = quantize_model(TwoStage().eval(), x, x[:2])
    cut = next(n for n in g.nodes if n.name == "quant_mid")
    assert cut.op in ("identity", "rescale")         # the cut stub on an integer tensor stays integer
    assert (g(x) - q(x)).abs().max() < 1e-2
    stages = split(g, cut_points=["quant_mid"])
    assert len(stages) == 2
    for s in stages:
        check_graph(s)
    s1, s2 = stages
    mid = s1(x)
    assert mid.dtype == torch.int8 and s2.inputs == s1.outputs
    _, env = g(x, return_intermediates=True)
    assert torch.equal(mid, env[s1.outputs[0]])
    assert torch.equal(s2(mid), g(x))
    assert torch.equal(run_stages(stages, x), g(x))
    for i, s in enumerate(stages):
        eq.save(s, tmp_path / f"stage{i}.eqm")
        eq.visualize(s, tmp_path / f"stage{i}.onnx")
    l1, l2 = (eq.load(tmp_path / f"stage{i}.eqm") for i in range(2))
    assert torch.equal(l2(l1(x)), g(x))
    with pytest.raises(DeployError, match="not a node"):
        split(g, ["nope"])
    with pytest.raises(DeployError, match="convert"):
        split(q, ["quant_mid"])
