"""``edgequant.analysis.op_lsb``: every integer node within its op's LSB bound (``OpSpec.lsb``).

Small models through both templates (a residual CNN with pooling, padding, concatenation,
bilinear resizing and a sigmoid table; a transformer block with attention, softmax, layer norm,
GELU and a masked fill): every node the checker compares is within its op's stated bound, and
the comparisons cover the op families. The checker can fail: an integer graph whose one conv
multiplier is 3/2 of what convert wrote is flagged at that node and no other (each node runs on
the simulation's inputs, so the error does not spread to the nodes after it). A pad value off the
grid is within its row's 1/2 LSB, and the node reading it is skipped (its simulated input is off
the grid, so the two would not run on the same inputs).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.analysis import op_lsb, op_lsb_violations
from edgequant.ops import OPS, spec_of
from edgequant.qconfig_template import (calibration_8bit_weight_16bit_act_qconfig_setter,
                                        default_calibration_qconfig_setter)
from models import ResidualCNN

TEMPLATES = {"int8": default_calibration_qconfig_setter, "int16": calibration_8bit_weight_16bit_act_qconfig_setter}


class _Cnn(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.a = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.b = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.c = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        x = self.a(self.quant(x))
        y = F.interpolate(torch.sigmoid(self.b(x)), scale_factor=2, mode="bilinear", align_corners=False)
        z = torch.cat([F.pad(x, (1, 1, 1, 1))[..., 1:-1, 1:-1], y], 1)
        z = F.avg_pool2d(F.leaky_relu(self.c(z), 0.1), 2)
        return self.dequant(z.mean((2, 3)) - x.amax((2, 3)) * 0.5)


class _Block(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = self.quant(x)
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        x = x + self.ff(self.ln2(x))
        return self.dequant(x)


def _quantize(model, make, template):
    torch.manual_seed(0)
    model = model.eval()
    cm = eq.prepare(model, make(0), qconfig_setter=(TEMPLATES[template],))
    eq.calibrate(cm, [make(s) for s in (1, 2, 3)])
    return cm, eq.convert(eq.export(cm), "nash-e")


CASES = {
    "residual_cnn": (ResidualCNN, lambda s: torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(s))),
    "cnn": (_Cnn, lambda s: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(s))),
    "block": (_Block, lambda s: torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(s))),
}


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("case", list(CASES))
def test_every_integer_node_is_within_its_ops_bound(case, template):
    build, make = CASES[case]
    torch.manual_seed(0)
    cm, g = _quantize(build(), make, template)
    rows = op_lsb(cm, g, make(99))
    assert not op_lsb_violations(rows), op_lsb_violations(rows)
    compared = [r for r in rows if r["skip"] is None]
    assert len(compared) >= len(rows) // 2, [r for r in rows if r["skip"]]
    for r in compared:
        assert r["bound"] == spec_of(r["op"]).lsb and 0 <= r["share_differ"] <= 1
    ops = {r["op"] for r in compared}
    want = {"residual_cnn": {"quantize", "conv2d", "add", "max_pool", "avg_pool", "reshape"},
            "cnn": {"conv2d", "lut", "interpolate_bilinear", "cat", "pad", "avg_pool", "mean", "max", "sub"},
            "block": {"linear", "matmul", "softmax", "layer_norm", "lut", "masked_fill", "add", "permute"}}[case]
    assert want <= ops, want - ops


def test_bounds_come_from_the_op_table():
    assert OPS["reshape"].lsb == 0 and OPS["quantize"].lsb == 0 and OPS["lut"].lsb == 0
    assert OPS["conv2d"].lsb == 1 and OPS["add"].lsb == 1 and OPS["relu"].lsb == 1 and OPS["pad"].lsb == 0.5


class _Pad(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()

    def forward(self, x):
        return self.dequant(F.pad(self.quant(x), (2, 2), value=0.3))


def test_a_pad_value_off_the_grid_is_half_an_lsb_and_its_consumer_is_skipped():
    make = lambda s: torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(s))  # noqa: E731
    cm, g = _quantize(_Pad(), make, "int8")
    rows = {r["op"]: r for r in op_lsb(cm, g, make(99))}
    assert 0 < rows["pad"]["max_lsb"] <= 0.5 and rows["pad"]["ok"]
    assert rows["dequantize"]["skip"] and "off its grid" in rows["dequantize"]["skip"]


def test_a_wrong_multiplier_is_flagged_at_its_node_only():
    _, make = CASES["residual_cnn"]
    torch.manual_seed(0)
    cm, g = _quantize(ResidualCNN(), make, "int8")
    node = next(n for n in g.nodes if n.name == "dw")
    m0 = node.inputs[spec_of(node.op).int_inputs.index("m0")]
    bad = copy.copy(g)
    bad.constants = dict(g.constants)
    bad.constants[m0] = g.constants[m0] * 3 // 2
    rows = op_lsb(cm, bad, make(99))
    flagged = op_lsb_violations(rows)
    assert [r["node"] for r in flagged] == ["dw"], flagged
    assert flagged[0]["max_lsb"] > 2 and flagged[0]["bound"] == 1
    assert not op_lsb_violations(op_lsb(cm, g, make(99)))
