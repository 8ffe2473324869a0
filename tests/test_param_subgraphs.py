"""Weights, biases and constants that the forward computes from parameters, buffers or constants
alone (``edgequant.param_subgraphs``, ``capture_rewrite.fold_made_constants``).

Each model is the minimal form of a zoo failure: ``nn.MultiheadAttention`` whose q, k, v are not
one tensor (DETR, RT-DETR's AIFI, SigLIP's pooling head: ``in_proj_weight`` is split before the
linears), a bias cloned and zeroed in part (Swin V2), an integer index built by slice assignments
(BEiT/data2vec's relative position index), a bicubically resized position embedding (YOLOS) and
``10000 ** omega`` (RT-DETR's sin-cos embedding). Each runs float -> simulation -> integer model
-> QDQ file in ONNX Runtime -> integer ONNX file; QAT still trains ``in_proj_weight``.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator

import edgequant as eq
from edgequant.capture import capture
from edgequant.onnx_export.custom_ops import REFERENCE_OPS
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8, default_qat_qconfig_setter as Q8

SHAPE = (2, 6, 8)


class CrossPos(nn.Module):
    """DETR's encoder layer: ``q = k = x + pos``, ``value = x``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(6, 8))
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = self.lin(x)
        q = k = x + self.pos
        return self.mha(q, k, value=x)[0]


class Probe(nn.Module):
    """SigLIP's pooling head: a learned probe attends to the tokens."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.probe = nn.Parameter(torch.randn(1, 1, 8))
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = self.lin(x)
        return self.mha(self.probe.repeat(x.shape[0], 1, 1), x, x)[0]


class ZeroedBias(nn.Module):
    """torchvision Swin V2's qkv bias: the key part zeroed in a clone."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 24)

    def forward(self, x):
        b = self.lin.bias.clone()
        b[8:16].zero_()
        return F.linear(x, self.lin.weight, b)


class MadeIndex(nn.Module):
    """BEiT's relative position index: an integer tensor built in forward, indexing a table."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.table = nn.Parameter(torch.randn(10, 8))

    def forward(self, x):
        idx = torch.zeros(4, 4, dtype=torch.long)
        idx[1:, 1:] = torch.arange(9).reshape(3, 3)
        idx[0, :] = 9
        return self.lin(x) + self.table[idx.reshape(-1)].reshape(16, 8)[:6]


class Bicubic(nn.Module):
    """YOLOS: a position embedding resized bicubically to the input's grid."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(1, 1, 3, 8))

    def forward(self, x):
        return self.lin(x) + F.interpolate(self.pos, size=(6, 8), mode="bicubic", align_corners=False)[0]


class PowOmega(nn.Module):
    """RT-DETR's 2D sin-cos embedding: ``1 / 10000 ** omega``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        omega = torch.arange(8.) / 8
        return self.lin(x) * (1.0 / (10000.0 ** omega))


class SharedComputed(nn.Module):
    """One weight computed from two parameters, read by two linears."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(4, 8) * 0.3)
        self.b = nn.Parameter(torch.randn(4, 8) * 0.3)

    def forward(self, x):
        w = torch.cat([self.a, self.b])
        return F.linear(x, w) + F.linear(x.flip(1), w)


MODELS = {"cross_pos": CrossPos, "probe": Probe, "zeroed_bias": ZeroedBias, "made_index": MadeIndex,
          "bicubic": Bicubic, "pow_omega": PowOmega, "shared_computed": SharedComputed}


def _inputs(seed):
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(seed))


def _calibrated(model, template=T8):
    gm = eq.prepare(model, _inputs(0), qconfig_setter=(template,))
    eq.calibrate(gm, [_inputs(s) for s in range(1, 17)])   # enough samples to see both tails: an affine
    # int8 range (the int8 template's) ends where the calibration data ends, where a symmetric one mirrors the larger end
    return gm


def _targets(nodes) -> set[str]:
    return {str(n.target) for n in nodes if n.op == "call_function"}


def _sqnr(x, ref) -> float:
    err = float((x - ref).pow(2).mean())
    return float("inf") if err == 0 else 10 * float(np.log10(float(ref.pow(2).mean()) / err))


def _cosine(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def _run_onnx(path, x):
    m = onnx.load(path)
    if any(n.domain == "ai.edgequant" for n in m.graph.node):
        ref = ReferenceEvaluator(m, new_ops=REFERENCE_OPS)
        return ref.run(None, {ref.input_names[0]: x.numpy()})[0]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float_simulation_integer_and_onnx_agree(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    gm = _calibrated(model)
    x = _inputs(99)
    with torch.no_grad():
        ref, sim = model(x), gm(x)
    assert _sqnr(sim, ref) >= 20
    ir = eq.export(gm, _inputs(0))
    assert not {"aten.slice_scatter.default", "aten.select_scatter.default", "aten.upsample_bicubic2d.vec",
                "aten.chunk.default", "aten.pow.Scalar"} & {n.attrs.get("target") for n in ir.nodes}
    g = eq.convert(ir, "nash-e")
    y = g(x)
    assert _sqnr(y, sim) >= 30
    qdq = os.path.join(tmp_path, "qdq.onnx")
    eq.export_onnx(gm, qdq, _inputs(0), flavour="qdq")
    assert _cosine(_run_onnx(qdq, x), sim) >= 0.995
    integer = os.path.join(tmp_path, "int.onnx")
    eq.export_onnx(g, integer, _inputs(0), flavour="integer")
    assert np.array_equal(_run_onnx(integer, x), y.numpy())


@pytest.mark.parametrize("name", ["cross_pos", "probe", "shared_computed"])
def test_every_computed_weight_is_quantized_once_per_op(name):
    """The split ``in_proj_weight`` pieces get a per-channel weight fake-quant each, on the
    computed weight and for its own linear (a computed weight two linears read: one each)."""
    torch.manual_seed(0)
    gm = eq.prepare(MODELS[name]().eval(), _inputs(0), qconfig_setter=(T8,))
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default
               and n.meta.get("eq_domain") == "quant"]   # (the probe's own projection reads no quantized input)
    assert len(linears) >= 2
    for n in linears:
        w = n.args[1]
        assert w.op == "call_module" and gm.get_submodule(w.target).is_weight, n.name
        assert [u for u in w.users if u.op == "call_function"] == [n] and gm.get_submodule(w.target).ch_axis == 0
    assert len({n.args[1] for n in linears}) == len(linears)


def test_constants_built_in_forward_fold_at_capture_integer_and_float():
    torch.manual_seed(0)
    gm = capture(MadeIndex().eval(), _inputs(0))
    assert not {"aten.zeros.default", "aten.arange.default", "aten.slice_scatter.default",
                "aten.select_scatter.default", "aten.fill.Tensor", "aten.copy.default"} & _targets(gm.graph.nodes)
    index = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.index.Tensor)
    const = index.args[1][0]
    assert const.op == "get_attr" and getattr(gm, const.target).dtype == torch.int64
    assert getattr(gm, const.target)[:4].tolist() == [9, 9, 9, 9]
    pow_gm = capture(PowOmega().eval(), _inputs(0))
    assert not {"aten.pow.Scalar", "aten.arange.default", "aten.reciprocal.default"} & _targets(pow_gm.graph.nodes)


def test_values_computed_from_parameters_stay_in_the_prepared_graph():
    """Folding them at prepare would stop QAT training the parameters: they stay ops until export."""
    torch.manual_seed(0)
    gm = eq.prepare(Bicubic().eval(), _inputs(0), qconfig_setter=(T8,))
    assert "aten.upsample_bicubic2d.vec" in _targets(gm.graph.nodes)
    gm = eq.prepare(ZeroedBias().eval(), _inputs(0), qconfig_setter=(T8,))
    assert "aten.slice_scatter.default" in _targets(gm.graph.nodes)


def test_a_buffer_the_forward_writes_is_not_folded():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.register_buffer("steps", torch.zeros(8))

        def forward(self, x):
            self.steps.add_(1.0)
            return self.lin(x) + self.steps * 0.01

    model = Counter().eval()
    gm = capture(model, _inputs(0))
    assert any(n.op == "get_attr" and n.target == "steps" for n in gm.graph.nodes)


def test_qat_trains_the_split_in_proj_weight_and_export_follows():
    torch.manual_seed(0)
    model = CrossPos().train()
    gm = _calibrated(model, Q8)
    eq.set_fake_quantize(gm, eq.FakeQuantState.QAT)
    gm.train()
    x = _inputs(7)
    params = dict(gm.named_parameters())
    key = next(k for k in params if k.endswith("in_proj_weight"))
    before = params[key].detach().clone()
    with torch.no_grad():
        y0 = gm(x)
    loss = gm(x).pow(2).mean()
    loss.backward()
    assert params[key].grad is not None and params[key].grad[:8].abs().sum() > 0   # the q rows: through the split
    torch.optim.SGD(gm.parameters(), lr=0.5).step()
    assert not torch.equal(params[key].detach(), before)
    eq.set_fake_quantize(gm, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        y1 = gm(x)
    assert not torch.allclose(y0, y1)
    g = eq.convert(eq.export(gm, _inputs(0)), "nash-e")
    y = g(x)
    assert float((y - y1).pow(2).mean()) <= 1e-3 * float(y1.pow(2).mean())


def test_a_bias_computed_from_the_input_gets_no_correction():
    """Only a constant bias can be corrected (and converted): one computed from the input is left
    as it is, and the model still prepares, calibrates and simulates."""
    class InputBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return F.linear(x, self.lin.weight, x.mean((0, 1)))

    torch.manual_seed(0)
    model = InputBias().eval()
    gm = _calibrated(model)
    assert not hasattr(gm, "eq_bc") or not len(gm.eq_bc)
    assert any(fq.is_weight for fq in gm.eq_fq.values())
    x = _inputs(99)
    with torch.no_grad():
        assert _sqnr(gm(x), model(x)) >= 20
