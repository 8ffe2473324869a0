"""BiasCorrection's shift against a direct float64 reference: the mean output change of a conv
or linear when its weights are rounded, measured on the recorded inputs.

The reference computes the layer's outputs with ``w_q`` and with ``w`` on every recorded batch
(float64 ``F.conv*``), takes the mean difference per output channel, and compares it with the
shift the module derives from its window means alone.
"""
import pytest
import torch
import torch.nn.functional as F

from edgequant.fake_quant import BiasCorrection, FakeQuantState


@pytest.mark.parametrize("op,groups,stride,padding,dilation", [
    ("conv2d", 1, (1, 1), (1, 1), (1, 1)),
    ("conv2d", 4, (2, 2), (2, 1), (1, 2)),      # grouped, strided, dilated
    ("conv2d", 8, (1, 1), (2, 2), (1, 1)),      # depthwise 5x5
    ("conv1d", 2, (2,), (1,), (1,)),
    ("linear", 1, (1,), (0,), (1,)),
])
def test_shift_equals_mean_output_change(op, groups, stride, padding, dilation):
    g = torch.Generator().manual_seed(0)
    c, o = 8, 8 if groups == 8 else 12
    if op == "linear":
        w = torch.randn(o, c, generator=g, dtype=torch.float64)
        batches = [torch.randn(3, 5, c, generator=g, dtype=torch.float64) + 0.5 for _ in range(3)]
    else:
        k = (5, 5) if groups == 8 else ((3, 3) if op == "conv2d" else (3,))
        w = torch.randn(o, c // groups, *k, generator=g, dtype=torch.float64)
        size = (9, 11) if op == "conv2d" else (13,)
        batches = [torch.rand(2, c, *size, generator=g, dtype=torch.float64) for _ in range(3)]
    wq = torch.round(w * 4) / 4
    bc = BiasCorrection(op, stride, padding, dilation, groups)
    bc.set_state(FakeQuantState.CALIBRATION)
    for x in batches:
        bc(x, w, wq, None)

    def layer(x, weight):
        if op == "linear":
            return F.linear(x, weight).reshape(-1, o)
        conv = F.conv2d if op == "conv2d" else F.conv1d
        y = conv(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
        return y.transpose(0, 1).reshape(o, -1).T
    diff = torch.cat([layer(x, wq) - layer(x, w) for x in batches])
    expected = diff.mean(0)
    got = bc.shift(w, wq)
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
