"""Issue #20's smaller ops, end to end: ``group_norm`` and ``instance_norm`` (captured as a layer
norm over channel groups, ``edgequant/capture_decomp.py``), ``pixel_unshuffle``, ``swapaxes`` /
``swapdims`` / ``movedim`` (rows of ``edgequant/ops/shape.py``), fills whose shape follows the
batch (``y.new_ones(y.shape)``, ``torch.full_like``), and ``glu`` / ``logsumexp`` / ``sign`` (also
written in other ops by capture).

References: the float model (torch's own group/instance norm kernels), the simulation, ONNX
Runtime (QDQ file) and the integer ONNX file. The decomposition itself is checked in float
against ``F.group_norm`` / ``F.instance_norm`` to float32 rounding."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.capture import capture
from edgequant.capture_decomp import _group_norm, _instance_norm
from edgequant.metrics import sqnr
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file


class GroupNormNet(nn.Module):
    def __init__(self, groups=4, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(groups, 16, affine=affine)
        self.out = nn.Conv2d(16, 4, 1)
        if affine:
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.out(F.silu(self.norm(self.conv(x))))


class InstanceNormNet(nn.Module):
    def __init__(self, affine=True, running=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=affine, track_running_stats=running)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.conv(x))))


class Moves(nn.Module):
    """pixel_unshuffle, swapaxes, swapdims, movedim and batch-shaped fills around convs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        y = self.conv(F.pixel_unshuffle(x, 2))                      # (N, 8, 4, 4)
        t = torch.swapaxes(y.flatten(2), 1, 2)                      # (N, 16, 8)
        t = self.lin(t) + t.new_ones(t.shape) - torch.full_like(t, 0.25)
        t = torch.swapdims(t, 2, 1).reshape(y.shape)
        return torch.movedim(t, 1, 3).relu()


def _converted(model, template, n=6, shape=(2, 3, 8, 8)):
    torch.manual_seed(1)
    xs = [torch.randn(*shape) for _ in range(n)]
    cm = eq.prepare(model.eval(), (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs[:-1]])
    g = eq.convert(eq.export(cm, (xs[0],)))
    return cm, g, xs[-1]


def test_decompositions_equal_torchs_kernels_in_float():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 12, 5, 7), torch.rand(12) + 0.5, torch.randn(12)
    torch.testing.assert_close(_group_norm(x, 3, w, b, 1e-5), F.group_norm(x, 3, w, b, 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_group_norm(x, 1, None, None, 1e-3), F.group_norm(x, 1, eps=1e-3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_instance_norm(x, w, b), F.instance_norm(x, weight=w, bias=b), rtol=1e-5, atol=1e-5)
    mean, var = torch.randn(12), torch.rand(12) + 0.2
    torch.testing.assert_close(_instance_norm(x, w, b, mean, var, False),
                               F.instance_norm(x, mean, var, w, b, use_input_stats=False), rtol=1e-5, atol=1e-5)


class Statistics(nn.Module):
    """Hand-written normalisations and moves: x.std / x.var, square, cosine similarity, tile,
    repeat_interleave, channel_shuffle (capture writes them in ops edgequant quantizes)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        z = (y - y.mean(1, keepdim=True)) / (y.std(1, keepdim=True) + 1e-3)
        z = z + torch.square(y) * 0.1 + y.var((2, 3), unbiased=False, keepdim=True)
        z = F.channel_shuffle(z, 2) + y.tile(1, 1, 1, 1) + y[:, :4].repeat_interleave(2, dim=1)
        cos = F.cosine_similarity(y, z, dim=1).unsqueeze(1)
        return self.out(z * cos)


class CtcHead(nn.Module):
    """A CTC-style head: per-frame class log-probabilities (log_softmax has an integer form)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, x):
        return F.log_softmax(self.conv(x).flatten(2), dim=1)


class Gates(nn.Module):
    """Gated linear units (``F.glu``), a log-sum-exp pooling and a sign (capture writes them in ops
    with integer forms: halves, sigmoid and a product; max, exp, sum and log; masks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.glu(self.conv(x), dim=1)
        pooled = torch.logsumexp(y, dim=(2, 3), keepdim=True) + torch.logsumexp(y, 1).unsqueeze(1)
        return self.out(y * torch.sign(y - 0.1) + pooled)


def test_statistics_and_moves_are_captured_exactly():
    torch.manual_seed(0)
    model = Statistics().eval()
    gm = capture(model, (torch.randn(2, 3, 8, 8),))
    left = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"} & {
        "aten.std.correction", "aten.var.correction", "aten.square.default", "aten.cosine_similarity.default",
        "aten.tile.default", "aten.repeat_interleave.self_int", "aten.channel_shuffle.default"}
    assert not left
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_gates_are_captured_exactly():
    torch.manual_seed(0)
    model = Gates().eval()
    gm = capture(model, (torch.randn(2, 3, 8, 8),))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & {"aten.glu.default", "aten.logsumexp.default", "aten.sign.default"}
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


CASES = {
    "group_norm": lambda: GroupNormNet(),
    "group_norm_one_group_no_affine": lambda: GroupNormNet(groups=1, affine=False),
    "instance_norm_affine": lambda: InstanceNormNet(),
    "instance_norm_plain": lambda: InstanceNormNet(affine=False),
    "moves_and_fills": Moves,
    "statistics_and_moves": Statistics,
    "log_softmax_head": CtcHead,
    "glu_logsumexp_sign": Gates,
}


def _running_stats_model():
    m = InstanceNormNet(running=True)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(4, 3, 8, 8) * 2 + 1)
    return m.eval()


CASES["instance_norm_running_stats"] = _running_stats_model


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("case", list(CASES))
def test_integer_model_follows_simulation_and_float(case, template):
    torch.manual_seed(0)
    model = CASES[case]()
    cm, g, x = _converted(model, template)
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y = g(x)
    assert y.shape == ref.shape
    # the simulation is a quantized copy of the float model (int8: ~20-30 dB, int16: ~40 dB and more)
    assert sqnr(ref, sim) > (18 if template is T8 else 30), sqnr(ref, sim)
    # the integer model computes what the simulation says, to its rounding rule
    assert sqnr(sim, y) > 35, sqnr(sim, y)


def test_group_norm_is_a_layer_norm_table_over_groups():
    cm, g, _ = _converted(GroupNormNet(), T8)
    ops = [n.op for n in g.nodes]
    assert "layer_norm" in ops and "group_norm" not in ops


def test_batch_shaped_fills_follow_the_batch():
    cm, g, _ = _converted(Moves(), T8)
    x = torch.randn(5, 3, 8, 8)                      # another batch than the traced one
    with torch.no_grad():
        assert sqnr(cm(x), g(x)) > 35


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
@pytest.mark.parametrize("case", ["group_norm", "instance_norm_affine", "moves_and_fills", "glu_logsumexp_sign"])
def test_onnx_runtime_runs_them(case, flavour, tmp_path):
    cm, g, x = _converted(CASES[case](), T8)
    check_onnx_file(flavour, cm, g, x, tmp_path / f"{case}_{flavour}.onnx")


class Aliases(nn.Module):
    """torch.multiply/subtract/divide/true_divide/clip/negative/absolute/concat/concatenate (ConvBERT's
    torch.multiply, RT-DETR's torch.concat): torch.export keeps them under their own names."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.c(x)
        z = torch.multiply(y, y.flip(1)) + torch.subtract(y, 0.5) + torch.divide(y, 3.0) + torch.true_divide(y, 2)
        z = torch.clip(z, -1, 1) + torch.negative(torch.absolute(y))
        return torch.concat([z, y], 1) + torch.concatenate([y, z], 1)


def test_aliases_are_captured_as_their_ops_and_convert():
    torch.manual_seed(0)
    model = Aliases().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = capture(model, (x,))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not {t for t in targets if t.split(".")[1] in (
        "multiply", "subtract", "divide", "true_divide", "clip", "negative", "absolute", "concat", "concatenate")}
    assert torch.equal(gm(x), model(x))
    cm, g, x = _converted(model, T8)
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    assert (g(x) - sim).abs().max() <= 0.02 * ref.abs().max()
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()
