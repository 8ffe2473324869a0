"""conv_transpose1d (audio decoders and vocoders: HiFi-GAN, EnCodec, Demucs): one row of the op
table next to conv_transpose2d.

A HiFi-GAN-style upsampler (conv1d, leaky_relu, a stride-4 transposed conv with output padding and
groups, BatchNorm1d folded into it (per group), conv1d) goes float -> integer -> ONNX Runtime: the kernel
(torch's float conv_transpose1d on exact carriers) equals the plain-int64 scatter-add reference,
the integer model tracks float and the simulation, and both ONNX flavours run (the integer file
bit for bit).
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.ops import OPS
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file
from zoo.harness import onnx_run


class Upsampler(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.pre = nn.Conv1d(4, 8, 7, padding=3)
        self.up = nn.ConvTranspose1d(8, 6, 8, stride=4, padding=2, output_padding=1, groups=groups)
        self.bn = nn.BatchNorm1d(6)
        self.post = nn.Conv1d(6, 1, 7, padding=3)

    def forward(self, x):
        y = self.up(F.leaky_relu(self.pre(x), 0.1))
        return torch.tanh(self.post(F.leaky_relu(self.bn(y), 0.1)))


def _converted(template, groups=2):
    torch.manual_seed(0)
    m = Upsampler(groups).eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2)
    xs = [torch.randn(2, 4, 32) for _ in range(5)]
    cm = eq.prepare(m, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs[:4]])
    return m, cm, eq.convert(eq.export(cm, (xs[0],)), "nash-e"), xs[4]


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_conv_transpose1d_converts_and_tracks_float(template):
    m, cm, g, x = _converted(template)
    ups = [n for n in g.nodes if n.op == "conv_transpose1d"]
    assert len(ups) == 1 and not [n for n in g.nodes if "batch_norm" in n.op]
    y, env = g(x, return_intermediates=True)
    n = ups[0]
    args = [env[i] if i in env else g.constants.get(i) if i is not None else None for i in n.inputs]
    row = OPS["conv_transpose1d"]
    assert torch.equal(row.kernel(g, n, args), row.reference(g, n, args))
    with torch.no_grad():
        ref, sim = m(x), cm(x)
    assert y.shape == ref.shape == (2, 1, 129)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum())
    assert sqnr > (30 if template is T8 else 50), float(sqnr)
    assert (y - sim).abs().max() <= 1e-3 * ref.abs().max()   # <= 1 LSB per op, through the post conv and tanh


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_conv_transpose1d(flavour, tmp_path):
    _, cm, g, x = _converted(T8)
    check_onnx_file(flavour, cm, g, x, tmp_path / f"ct1d_{flavour}.onnx")


def test_int16_integer_file_is_bit_exact(tmp_path):
    # int16 convs write the custom ConvAccumulate, so the file runs under onnx's reference evaluator,
    # whose ConvTranspose mishandles groups (a reshape error): one group here
    _, _, g, x = _converted(T16, groups=1)
    path = tmp_path / "ct1d16.onnx"
    eq.export_onnx(g, path, (x,), flavour="integer")
    (y,), _ = onnx_run(str(path), (x,))
    np.testing.assert_array_equal(y, g(x).numpy())
