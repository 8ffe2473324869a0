"""The integer runner's bugs of issue #20 and the additive attention-mask rule.

1. ``ops/affine.affine`` accumulated in place into its first operand, so a sum whose first operand
   is smaller than the broadcast result (yolov8n's ``anchors - distances``: a batch-1 constant
   minus a batch-N tensor) failed with "output with shape [1, ...] doesn't match the broadcast
   shape". The kernel now widens the first term to the broadcast shape.
2. Additive attention masks (HF eager attention: ``(1 - mask) * finfo(float32).min``;
   ``nn.TransformerEncoder``'s ``-inf`` padding mask): observers leave values <= ``MASK_LIMIT``
   out of their statistics and extend the range below (``observers/base.py``, docs/observers.md
   "Mask values"), so masked positions saturate to ``qmin`` and the softmax gives them weight 0
   exactly, as float does; the integer model equals the simulation.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import edgequant as eq
from edgequant.convert import ConvertError
from edgequant.observers import MinMaxObserver
from edgequant.observers.base import MASK_FILL, MASK_LIMIT, MASK_MARGIN
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

TEMPLATES = {"int8": T8, "int16": T16}


def _int_and_sim(model, example, calib, x, template):
    cm = eq.prepare(model, example, qconfig_setter=(template,))
    eq.calibrate(cm, calib)
    with torch.no_grad():
        sim = cm(*x)
        ir = eq.export(cm, example)
        g = eq.convert(ir, "nash-e")
        out = g(*x)
    return cm, ir, g, sim, out


# == 1. a broadcast sum whose first operand is the smaller one ==========================================
class AnchorsMinus(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchors", torch.linspace(0.5, 8.0, 2 * 84).reshape(1, 2, 84))
        self.conv = nn.Conv1d(4, 2, 1)

    def forward(self, x):
        d = self.conv(x)                 # (N, 2, 84)
        return self.anchors - d, self.anchors + d


@pytest.mark.parametrize("key", ["int8", "int16"])
def test_sum_with_smaller_first_operand(key):
    torch.manual_seed(0)
    m = AnchorsMinus().eval()
    calib = [(torch.randn(2, 4, 84),) for _ in range(3)]
    x = (torch.randn(2, 4, 84),)
    cm, ir, g, sim, out = _int_and_sim(m, calib[0], calib, x, TEMPLATES[key])
    for a, b in zip(out, sim):
        assert a.shape == b.shape == (2, 2, 84)
        lsb = max(n.qparams.scale[0] for n in ir.values.values() if n.qparams is not None and n.name in ir.outputs)
        assert float((a - b).abs().max()) <= 1.01 * lsb


# == 2. additive attention masks ========================================================================
class MaskedAttention(nn.Module):
    """Eager attention with an additive mask built from an attention mask, as HF BERT does."""

    def __init__(self, dim=16, fill="finfo"):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fill = fill

    def forward(self, x, attention_mask):
        m = attention_mask[:, None, :].to(x.dtype)
        if self.fill == "finfo":
            add = (1.0 - m) * torch.finfo(torch.float32).min
        else:
            add = torch.zeros_like(m).masked_fill(m == 0, float("-inf"))
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 4.0 + add
        p = scores.softmax(-1)
        return p, p @ self.v(x)


def _batch(seed, n=2, t=8, dim=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, dim, generator=g)
    am = torch.ones(n, t, dtype=torch.int64)
    am[0, 5:] = 0
    am[1, 3:] = 0
    return x, am


@pytest.mark.parametrize("fill", ["finfo", "-inf"])
@pytest.mark.parametrize("key", ["int8", "int16"])
def test_additive_mask_end_to_end(fill, key):
    torch.manual_seed(1)
    model = MaskedAttention(fill=fill).eval()
    calib = [_batch(s) for s in range(4)]
    x = _batch(99)
    with torch.no_grad():
        ref = model(*x)
    cm, ir, g, sim, out = _int_and_sim(model, calib[0], calib, x, TEMPLATES[key])
    masked = (x[1] == 0)[:, None, :].expand_as(ref[0])
    assert bool((ref[0][masked] == 0).all())
    # masked positions get weight 0 exactly, in the simulation and in the integer model
    assert bool((sim[0][masked] == 0).all())
    assert bool((out[0][masked] == 0).all())
    # the integer model equals the simulation; the simulation is close to float
    for a, b in zip(out, sim):
        assert torch.equal(a, b) or float((a - b).abs().max()) <= 1.01 * _out_lsb(ir, a, b)
    assert float((sim[0] - ref[0]).abs().max()) < 0.02
    # every scale is an ordinary float32 number (no 1e34 from finfo.min)
    for v in ir.values.values():
        if v.qparams is not None:
            assert all(1e-12 < s < 1e6 for s in v.qparams.scale), v


def _out_lsb(ir, a, b):
    return max(v.qparams.scale[0] for v in ir.values.values() if v.qparams is not None and len(v.qparams.scale) == 1)


def test_observer_mask_rule():
    obs = MinMaxObserver(dtype="qint16", symmetric=False)
    obs(torch.tensor([0.0, torch.finfo(torch.float32).min, 0.0]))
    obs(torch.tensor([0.0, float("-inf")]))
    lo, hi = obs.clip_range()
    assert obs.mask_seen and float(lo) == -MASK_FILL and float(hi) == 0.0
    s = MinMaxObserver(dtype="qint16", symmetric=False)
    s(torch.tensor([-1.5, 2.0, MASK_LIMIT]))
    lo, hi = s.clip_range()
    assert float(lo) == -1.5 - MASK_MARGIN and float(hi) == 2.0
    plain = MinMaxObserver(dtype="qint16", symmetric=False)
    plain(torch.tensor([-1.5, 2.0]))
    assert [float(v) for v in plain.clip_range()] == [-1.5, 2.0] and not plain.mask_seen
    # NaN and +inf are still refused
    with pytest.raises(ValueError, match="NaN"):
        MinMaxObserver()(torch.tensor([0.0, float("-inf"), float("nan")]))
    with pytest.raises(ValueError, match="Inf"):
        MinMaxObserver()(torch.tensor([0.0, float("inf")]))
    # merging keeps the flag
    m = MinMaxObserver(dtype="qint16", symmetric=False)
    m(torch.tensor([-1.5, 2.0]))
    m.merge_(s)
    assert m.mask_seen
    # the margin keeps a masked position's softmax weight below every table's resolution
    assert math.exp(-MASK_MARGIN) < 2.0 ** -40


def test_extreme_finite_values_are_data():
    """Only finfo(float32).min and -inf are mask values; -3e38 is an (extreme) datum."""
    obs = MinMaxObserver(dtype="qint16", symmetric=False)
    obs(torch.tensor([-3.0e38, 1.0]))
    assert not obs.mask_seen and float(obs.clip_range()[0]) == torch.tensor(-3.0e38).item()


# == 3. runner bugs: constant embedding indices, metadata assertions, symbolic sizes ===================
class PositionIds(nn.Module):
    """CLIP's position embedding: the indices are a (non-persistent) buffer, a constant of the IR."""

    def __init__(self):
        super().__init__()
        self.e, self.l = nn.Embedding(6, 8), nn.Linear(8, 8)
        self.register_buffer("position_ids", torch.arange(6).expand((1, -1)), persistent=False)

    def forward(self, x):
        return self.l(x + self.e(self.position_ids))


class AssertsMetadata(nn.Module):
    """``x.to(dtype)`` as torch.export records it: an assertion on a quantized value's float dtype."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)
        torch.ops.aten._assert_tensor_metadata(y, dtype=torch.float32)
        return self.b(y)


class MHA(nn.Module):
    """nn.MultiheadAttention's slow path computes ``bsz * num_heads`` on the symbolic batch."""

    def __init__(self):
        super().__init__()
        self.a, self.l = nn.MultiheadAttention(16, 2), nn.Linear(16, 16)

    def forward(self, x):
        y, w = self.a(x, x, x)
        return self.l(y), w


@pytest.mark.parametrize("case", ["position_ids", "assert_metadata", "mha"])
def test_runner_cases(case, tmp_path):
    torch.manual_seed(0)
    if case == "position_ids":
        model, make = PositionIds(), lambda: (torch.randn(2, 6, 8),)
    elif case == "assert_metadata":
        model, make = AssertsMetadata(), lambda: (torch.randn(2, 8),)
    else:
        model, make = MHA(), lambda: (torch.randn(5, 2, 16),)
    calib = [make() for _ in range(3)]
    x = make()
    cm, ir, g, sim, out = _int_and_sim(model.eval(), calib[0], calib, x, T16)
    outs = out if isinstance(out, tuple) else (out,)
    sims = sim if isinstance(sim, tuple) else (sim,)
    for a, b in zip(outs, sims):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-3 * max(1.0, float(b.abs().max()))
    assert not any(n.attrs.get("target") == "aten._assert_tensor_metadata.default" for n in g.nodes)
    if case == "position_ids":  # the index buffer travels with the integer graph and its ONNX file
        assert "position_ids" in g.constants
        import onnxruntime as ort
        path = str(tmp_path / "int.onnx")
        eq.export_onnx(g, path, x, flavour="integer")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x[0].numpy()})[0]
        assert torch.equal(torch.from_numpy(got), outs[0])


def test_mask_rule_survives_qat():
    """In QAT the observers watch fake-quantized tensors: the mask stays a mask value there, so the
    masked sum's range does not stretch down to the mask's -MASK_FILL."""
    torch.manual_seed(1)
    model = MaskedAttention().eval()
    calib = [_batch(s) for s in range(3)]
    cm = eq.prepare(model, calib[0], qconfig_setter=(T16,))
    eq.calibrate(cm, calib)
    eq.set_fake_quantize(cm, eq.FakeQuantState.QAT)
    with torch.no_grad():
        for b in calib:
            cm(*b)
    ranges = [[float(v) for v in m.observer.clip_range()] for m in cm.modules()
              if getattr(getattr(m, "observer", None), "mask_seen", False)]
    assert len(ranges) == 2                       # the mask and the masked sum
    sums = [r for r in ranges if r[1] > 0]
    assert sums and all(-MASK_MARGIN - 20 < lo for lo, hi in sums)


def test_mask_that_cannot_saturate_is_refused():
    """Scores wider than the mask's depth (MASK_FILL): convert refuses the masked sum by name instead
    of letting masked positions leak into the softmax."""
    class Wide(MaskedAttention):
        def forward(self, x, attention_mask):
            add = (1.0 - attention_mask[:, None, :].to(x.dtype)) * torch.finfo(torch.float32).min
            scores = 4000.0 * (self.q(x) @ self.k(x).transpose(-1, -2)) + add
            return scores.softmax(-1)

    torch.manual_seed(1)
    calib = [_batch(s) for s in range(3)]
    cm = eq.prepare(Wide().eval(), calib[0], qconfig_setter=(T16,))
    eq.calibrate(cm, calib)
    ir = eq.export(cm, calib[0])
    assert ir.meta["mask_values"]
    with pytest.raises(ConvertError, match="does not saturate"):
        eq.convert(ir, "nash-e")
