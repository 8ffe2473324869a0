"""conv3d (video and volumetric models): one row of the op table next to conv1d/conv2d; with
max_pool3d and the global AdaptiveAvgPool3d(1) of 3-D CNNs.

A small 3-D CNN (strided stem, BatchNorm3d folded, ReLU fused, a depthwise 3-D conv, a residual
add) goes float -> integer -> ONNX: the integer conv equals the plain-int reference sum
(``ref_conv``, written independently of torch's float conv), the integer model tracks the
simulation and float, and both ONNX flavours run (the int16 integer file through the custom
``ConvAccumulate`` under onnx's reference evaluator, as int16 conv2d does).
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file
from zoo.harness import onnx_run


class Video3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, (2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1))
        self.bn = nn.BatchNorm3d(8)
        self.dw = nn.Conv3d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.bn2 = nn.BatchNorm3d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = y + torch.relu(self.bn2(self.dw(y)))
        return self.head(y.mean((2, 3, 4)))


def _model():
    torch.manual_seed(0)
    m = Video3d().eval()
    for b in (m.bn, m.bn2):
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2)
        b.weight.data.uniform_(0.5, 1.5)
        b.bias.data.uniform_(-0.2, 0.2)
    return m


def _converted(template):
    m = _model()
    xs = [torch.randn(2, 3, 4, 8, 8) for _ in range(4)]
    cm = eq.prepare(m, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return m, cm, ir, eq.convert(ir, "nash-e"), torch.randn(2, 3, 4, 8, 8)


def test_conv3d_is_a_row_of_the_op_table():
    row = OPS["conv3d"]
    assert row.spatial_dims == 3 and row.targets == ("aten.conv3d.default",) and row.bias_correction


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_conv3d_converts_and_tracks_float(template):
    m, cm, ir, g, x = _converted(template)
    convs = [n for n in g.nodes if n.op == "conv3d"]
    assert len(convs) == 2 and not [n for n in g.nodes if "batch_norm" in n.op]   # both BNs folded
    y, env = g(x, return_intermediates=True)
    # the kernel (torch's float conv3d on exact carriers) equals the plain-int64 tap-by-tap reference
    for n in convs:
        args = [env[i] if i in env else g.constants.get(i) if i is not None else None for i in n.inputs]
        assert torch.equal(OPS["conv3d"].kernel(g, n, args), OPS["conv3d"].reference(g, n, args)), n.name
        assert torch.equal(OPS["conv3d"].kernel(g, n, args), env[n.outputs[0]]), n.name
    with torch.no_grad():
        ref, sim = m(x), cm(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum())
    assert sqnr > (40 if template is T8 else 60), float(sqnr)
    assert (y - sim).abs().max() <= 1e-3 * ref.abs().max()


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_conv3d(flavour, tmp_path):
    _, cm, _, g, x = _converted(T8)
    check_onnx_file(flavour, cm, g, x, tmp_path / f"c3d_{flavour}.onnx")


def test_int16_conv3d_integer_file_is_bit_exact(tmp_path):
    _, cm, _, g, x = _converted(T16)
    path = tmp_path / "c3d16.onnx"
    eq.export_onnx(g, path, (x,), flavour="integer")
    (y,), how = onnx_run(str(path), (x,))
    np.testing.assert_array_equal(y, g(x).numpy())


class Same3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(2, 4, (2, 3, 4), padding="same", dilation=(1, 2, 1))

    def forward(self, x):
        return self.c(x)


def test_conv3d_same_padding_is_explicit_and_converts():
    torch.manual_seed(0)
    m = Same3d().eval()
    xs = [torch.randn(1, 2, 3, 6, 7) for _ in range(3)]
    cm = eq.prepare(m, (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    with torch.no_grad():
        ref, y = m(xs[0]), g(xs[0])
    assert y.shape == ref.shape and (y - ref).abs().max() <= 0.05 * ref.abs().max()


class Pooled3d(nn.Module):
    """An R3D/C3D-style stem: conv3d, max_pool3d, then AdaptiveAvgPool3d(1) and a classifier."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.gap(self.pool(torch.relu(self.c(x)))).flatten(1))


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_max_pool3d_and_global_avg_pool3d(flavour, tmp_path):
    torch.manual_seed(0)
    m = Pooled3d().eval()
    xs = [torch.randn(2, 3, 4, 8, 8) for _ in range(4)]
    cm = eq.prepare(m, (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs[:3]])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    assert {"max_pool", "mean"} <= {n.op for n in g.nodes}
    with torch.no_grad():
        ref, sim = m(xs[3]), cm(xs[3])
    y = g(xs[3])
    assert 10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum()) > 35
    assert (y - sim).abs().max() <= 1e-3 * ref.abs().max()
    check_onnx_file(flavour, cm, g, xs[3], tmp_path / f"pool3d_{flavour}.onnx")
