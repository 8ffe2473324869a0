"""Every op the README lists prepares, calibrates and simulates close to float.

Each case is a one-op model between a QuantStub and a DeQuantStub. The test checks that capture
maps it to the expected canonical op, and that the VALIDATION output (int16 activations,
int8 per-channel weights) stays close to the float model on fresh data.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8


class One(nn.Module):
    def __init__(self, fn, mod=None, n_inputs=1):
        super().__init__()
        self.fn, self.mod, self.n = fn, mod, n_inputs
        self.q = nn.ModuleList(eq.QuantStub() for _ in range(n_inputs))
        self.dq = eq.DeQuantStub()

    def forward(self, *xs):
        xs = [q(x) for q, x in zip(self.q, xs)]
        y = self.fn(self.mod, *xs) if self.mod is not None else self.fn(*xs)
        return self.dq(y)


def x4():
    return torch.randn(2, 4, 8, 8)


CASES = {
    # name: (canonical op, model, input factory)
    "conv1d": ("conv1d", One(lambda m, x: m(x), nn.Conv1d(4, 6, 3, padding=2, dilation=2)), lambda: torch.randn(2, 4, 16)),
    "conv2d_groups": ("conv2d", One(lambda m, x: m(x), nn.Conv2d(4, 8, 3, groups=2, stride=2)), x4),
    "conv2d_depthwise": ("conv2d", One(lambda m, x: m(x), nn.Conv2d(4, 4, 3, groups=4, padding=1)), x4),
    "conv3d": ("conv3d", One(lambda m, x: m(x), nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 2), padding=1)),
               lambda: torch.randn(2, 4, 3, 8, 8)),
    "conv_transpose2d": ("conv_transpose2d", One(lambda m, x: m(x), nn.ConvTranspose2d(4, 3, 2, stride=2)), x4),
    "linear": ("linear", One(lambda m, x: m(x), nn.Linear(8, 5)), lambda: torch.randn(3, 8)),
    "matmul": ("matmul", One(torch.matmul, n_inputs=2), lambda: (torch.randn(2, 3, 5), torch.randn(2, 5, 4))),
    "bmm": ("matmul", One(torch.bmm, n_inputs=2), lambda: (torch.randn(2, 3, 5), torch.randn(2, 5, 4))),
    "batchnorm_alone": ("batch_norm", One(lambda m, x: m(x), nn.BatchNorm2d(4).eval()), x4),
    "relu": ("relu", One(F.relu), x4),
    "relu6": ("clamp", One(F.relu6), x4),
    "leaky_relu": ("leaky_relu", One(lambda x: F.leaky_relu(x, 0.1)), x4),
    "prelu": ("prelu", One(lambda m, x: m(x), nn.PReLU(4)), x4),
    "hardtanh": ("clamp", One(lambda x: F.hardtanh(x, -0.5, 0.7)), x4),
    "max_pool": ("max_pool", One(lambda x: F.max_pool2d(x, 2)), x4),
    "avg_pool": ("avg_pool", One(lambda x: F.avg_pool2d(x, 2)), x4),
    "adaptive_avg_pool": ("avg_pool", One(lambda x: F.adaptive_avg_pool2d(x, 3)), x4),
    "add": ("add", One(torch.add, n_inputs=2), lambda: (x4(), x4())),
    "sub": ("sub", One(torch.sub, n_inputs=2), lambda: (x4(), x4())),
    "mul": ("mul", One(torch.mul, n_inputs=2), lambda: (x4(), x4())),
    "div": ("div", One(lambda a, b: a / (b.abs() + 1), n_inputs=2), lambda: (x4(), x4())),
    "add_scalar": ("add", One(lambda x: x + 0.5), x4),
    "mul_scalar": ("mul", One(lambda x: x * 3), x4),
    "rsub_scalar": ("sub", One(lambda x: 1 - x), x4),
    "cat": ("cat", One(lambda a, b: torch.cat([a, b], 1), n_inputs=2), lambda: (x4(), 2 * x4())),
    "stack": ("stack", One(lambda a, b: torch.stack([a, b], 1), n_inputs=2), lambda: (x4(), x4())),
    "split": ("split", One(lambda x: torch.split(x, 2, 1)[1]), x4),
    "chunk": ("split", One(lambda x: x.chunk(2, dim=-1)[0]), x4),
    "view": ("reshape", One(lambda x: x.view(x.size(0), -1)), x4),
    "reshape": ("reshape", One(lambda x: x.reshape(2, 16, 16)), x4),
    "flatten": ("reshape", One(lambda x: x.flatten(1)), x4),
    "permute": ("permute", One(lambda x: x.permute(0, 2, 3, 1)), x4),
    "transpose": ("permute", One(lambda x: x.transpose(1, 2)), x4),
    "squeeze": ("squeeze", One(lambda x: x[:, :1].squeeze(1)), x4),
    "unsqueeze": ("unsqueeze", One(lambda x: x.unsqueeze(1)), x4),
    "contiguous": ("identity", One(lambda x: x.transpose(1, 2).contiguous()), x4),
    "getitem_slicing": ("slice", One(lambda x: x[:, 1:3, ::2]), x4),
    "mean": ("mean", One(lambda x: x.mean(dim=(2, 3))), x4),
    "sum": ("sum", One(lambda x: x.sum(dim=1)), x4),
    "max_dim": ("max", One(lambda x: x.max(dim=1)[0]), x4),
    "topk": ("sort", One(lambda x: x.topk(3, dim=-1).values), x4),
    "sort": ("sort", One(lambda x: torch.sort(x, dim=1, descending=True).values), x4),
    "min_dim": ("max", One(lambda x: x.min(dim=1)[0]), x4),
    "clamp": ("clamp", One(lambda x: torch.clamp(x, -1, 1)), x4),
    "pad": ("pad", One(lambda x: F.pad(x, (1, 1, 2, 0))), x4),
    "interpolate_nearest": ("interpolate_nearest", One(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), x4),
    "interpolate_bilinear": ("interpolate_bilinear",
                             One(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)), x4),
    "layer_norm": ("layer_norm", One(lambda m, x: m(x), nn.LayerNorm(8)), x4),
    "softmax": ("softmax", One(lambda x: torch.softmax(x, -1)), x4),
    "sigmoid": ("sigmoid", One(torch.sigmoid), x4),
    "tanh": ("tanh", One(torch.tanh), x4),
    "exp": ("exp", One(torch.exp), x4),
    "log": ("log", One(lambda x: torch.log(x.abs() + 0.5)), x4),
    "sqrt": ("sqrt", One(lambda x: torch.sqrt(x.abs())), x4),
    "rsqrt": ("rsqrt", One(lambda x: torch.rsqrt(x.abs() + 0.5)), x4),
    "reciprocal": ("reciprocal", One(lambda x: 1 / (x.abs() + 0.5)), x4),
    "gelu": ("gelu", One(F.gelu), x4),
    "silu": ("silu", One(F.silu), x4),
    "hardswish": ("hardswish", One(F.hardswish), x4),
    "hardsigmoid": ("hardsigmoid", One(F.hardsigmoid), x4),
    "pixel_shuffle": ("pixel_shuffle", One(lambda x: F.pixel_shuffle(x, 2)), x4),
    "nearest_exact": ("interpolate_nearest", One(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest-exact")),
                      x4),
    "nearest3d": ("interpolate_nearest", One(lambda x: F.interpolate(x, scale_factor=(1, 2, 2))),
                  lambda: torch.randn(2, 4, 3, 4, 4)),
    "log_softmax": ("log", One(lambda x: F.log_softmax(x, 1)), x4),
    "logsumexp": ("log", One(lambda x: torch.logsumexp(x, 1)), x4),
    "glu": ("mul", One(lambda x: F.glu(x, 1)), x4),
    "sign": ("sub", One(torch.sign), x4),
    "softplus": ("softplus", One(F.softplus), x4),
    "mish": ("mish", One(F.mish), x4),
    "sin": ("sin", One(torch.sin), x4),
    "square": ("mul", One(torch.square), x4),
    "std": ("sqrt", One(lambda x: x.std(1, keepdim=True)), x4),
    "channel_shuffle": ("permute", One(lambda x: F.channel_shuffle(x, 2)), x4),
    "unfold": ("im2col", One(lambda x: F.unfold(x, 3, padding=1, stride=2)), x4),
    "fold": ("col2im", One(lambda x: F.fold(x, (8, 8), 2, stride=2)), lambda: torch.randn(2, 16, 16)),
    "grid_sample": ("grid_sample", One(lambda x, g: F.grid_sample(x, g, align_corners=False), n_inputs=2),
                    lambda: (x4(), torch.rand(2, 5, 6, 2) * 2 - 1)),
    "masked_fill": ("masked_fill", One(lambda x: x.masked_fill(x > 1, 0.0)), x4),
    "where": ("where", One(lambda a, b: torch.where(a > 0, a, b), n_inputs=2), lambda: (x4(), x4())),
    "float_functional": ("sub", One(lambda m, x: m.sub(x, 1), eq.FloatFunctional()), x4),
    "slice_scatter": ("slice_scatter", One(lambda x: torch.slice_scatter(x, x[..., :2] * 0.5, -1, 0, 2)), x4),
    "select_scatter": ("slice_scatter", One(lambda x: torch.select_scatter(x, x[:, 1] * 2, 1, 0)), x4),
    "gather": ("gather", One(lambda x: torch.gather(x, -1, torch.tensor([3, 0, 5, 5]).expand(2, 4, 8, 4))), x4),
    "cumsum": ("cumsum", One(lambda x: x.cumsum(2)), x4),
    "atan2": ("atan2", One(lambda x: torch.atan2(x[:, :2], x[:, 2:])), x4),
}


def _inputs(factory):
    x = factory()
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_prepares_and_simulates_close_to_float(name):
    op, model, factory = CASES[name]
    torch.manual_seed(0)
    model.eval()
    example = _inputs(factory)
    cm = eq.prepare(model, example, qconfig_setter=(T16,))
    ops = {n.meta["eq_spec"].name for n in cm.graph.nodes if n.meta.get("eq_spec") is not None}
    assert op in ops, f"{name}: expected canonical op {op!r}, captured {sorted(ops)}"
    x = _inputs(factory)
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():  # the data simulated is among the calibration batches: no range misses
        for batch in [x] + [_inputs(factory) for _ in range(3)]:
            cm(*batch)
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        ref, sim = model(*x), cm(*x)
    err = (sim - ref).abs().max().item()
    peak = ref.abs().max().item()
    # int16 activations and int8 per-channel weights: within 1% of the output's peak
    assert sim.shape == ref.shape
    assert err <= 0.01 * peak + 1e-3, f"{name}: max error {err:.3g} vs peak {peak:.3g}"


def test_int8_template_quantizes_every_case_to_int8():
    op, model, factory = CASES["conv2d_groups"]
    cm = eq.prepare(model.eval(), _inputs(factory), qconfig_setter=(T8,))
    assert {fq.dtype for fq in cm.eq_fq.values()} == {eq.qint8}
