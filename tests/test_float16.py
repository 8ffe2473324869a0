"""Float16 islands: FakeCast, float16 qconfigs, all_fp16_qconfig_setter, convert per march, ONNX.

Acceptance (issue 18): a float16 island on NASH_P: the integer model agrees with its simulation
(every float16 node exactly, given the simulation's inputs; the whole model exactly where no
integer op precedes the island, else within the integer ops' own LSB bounds); NASH_M refuses the
node by name.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant import qconfig_template as qt
from edgequant.convert import ConvertError
from edgequant.ops import FAKE_CAST, is_dequantize, is_float16, run_int_node, spec_of
from edgequant.qconfig import FakeCastSpec
from models import ResidualCNN, TinyBlock as Block

FP16 = eq.get_qconfig(out_dtype=torch.float16)


class WithCast(nn.Module):
    """A user's FakeCast between two convs (seed 000 imports FakeCast)."""

    def __init__(self):
        super().__init__()
        self.quant, self.conv, self.cast = eq.QuantStub(), nn.Conv2d(3, 4, 3), eq.FakeCast()
        self.conv2, self.dequant = nn.Conv2d(4, 4, 1), eq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.conv2(self.cast(F.relu(self.conv(self.quant(x))))))


def _pipeline(model, x, setters, march="nash-p"):
    torch.manual_seed(0)
    p = eq.prepare(model.eval(), x, qconfig_setter=setters, march=march)
    eq.calibrate(p, [x])
    ir = eq.export(p, x)
    return p, ir, eq.convert(ir, march)


def _float16_nodes_exact(ir, g, x) -> int:
    """Run every float16 node of ``g`` on the simulation's own inputs: each output must equal the
    simulation's bit for bit. Returns how many nodes were compared."""
    _, sim = ir(x, return_intermediates=True)
    producer = g.producer()
    n = 0
    for node in g.nodes:
        if not is_float16(node):
            continue
        args = []
        for i in node.inputs:
            if i in g.constants:
                args.append(g.constants[i])
            elif i in sim:
                args.append(sim[i])
            else:   # a dequantize convert wrote: the simulation's value of the codes it reads
                assert is_dequantize(producer[i].op), (node.name, i)
                args.append(sim[producer[i].inputs[0]])
        out = run_int_node(g, node, args, {})
        assert torch.equal(out, sim[node.outputs[0]]), node.name
        if spec_of(node.op) is FAKE_CAST:
            assert torch.equal(out, out.half().float()), node.name   # float16 values
        n += 1
    return n


def test_fake_cast_is_half_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=g) * s for s in (1e-7, 1e-4, 1.0, 1e3, 1e5)])
    halves = torch.arange(-2048, 2048, dtype=torch.float32) + 0.5   # float16 ties at 2048..4096: to even
    x = torch.cat([x, halves + 2048 * torch.sign(halves), torch.tensor([0.0, -0.0, 65504.0, 65520.0, -7e4])])
    cast = eq.FakeCast()
    assert torch.equal(cast(x), x.half().float())
    assert torch.isinf(cast(torch.tensor([65520.0, -7e4]))).all()       # beyond float16: inf, as .half()
    y = x[:100].clone().requires_grad_()
    cast(y).mul(3).sum().backward()                                     # straight-through gradient
    assert torch.equal(y.grad, torch.full_like(y, 3.0))
    cast.set_state(eq.FakeQuantState.FLOAT)
    assert torch.equal(cast(x), x)
    with pytest.raises(ValueError, match="float16"):
        eq.FakeCast(torch.bfloat16)


def test_get_qconfig_float16():
    qc = eq.get_qconfig(out_dtype=torch.float16)
    assert qc.float16 and isinstance(qc.activation, FakeCastSpec) and isinstance(qc.weight, FakeCastSpec)
    assert eq.get_qconfig(out_dtype="float16", weight_dtype=None).weight is None
    assert eq.get_qconfig(in_dtype=torch.float16, out_dtype=torch.float16).float16
    assert not eq.get_qconfig().float16 and eq.get_qconfig().weight.dtype == eq.qint8
    with pytest.raises(ValueError, match="weight_dtype"):
        eq.get_qconfig(out_dtype=torch.float16, weight_dtype=eq.qint8)
    with pytest.raises(ValueError, match="out_dtype=torch.float16"):
        eq.get_qconfig(weight_dtype=torch.float16)
    with pytest.raises(ValueError, match="bfloat16"):
        eq.get_qconfig(out_dtype=torch.bfloat16)


@pytest.mark.parametrize("island", [["pw"], ["dw"], ["pw", "add"], ["stem", "head"]])
def test_island_on_nash_p_agrees_and_nash_m_refuses(island):
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    setters = (qt.default_calibration_qconfig_setter, qt.ModuleNameQconfigSetter({k: FP16 for k in island}))
    p, ir, g = _pipeline(ResidualCNN(), x, setters)
    sim = p(x)
    assert torch.equal(ir(x), sim)                         # the quant level is the simulation
    assert _float16_nodes_exact(ir, g, x) >= 2 * len(island)
    flagged = {n.name for n in g.nodes if n.attrs.get("float16")}
    assert {n if n != "stem" else "stem.0" for n in island} <= flagged
    # end to end: the integer ops before and after the island keep their own bounds (<= 1 LSB each);
    # measured 1.5e-8 (pw, dw), 2.6e-4 ... on logits of magnitude ~0.3
    assert (g(x) - sim).abs().max() < 1e-3
    for march in ("nash-m", "nash-e"):
        with pytest.raises(ConvertError) as e:
            eq.convert(ir, march)
        msg = str(e.value)
        assert all(f"'{n if n != 'stem' else 'stem.0'}'" in msg for n in island), msg
        assert "nash-p" in msg and "float16" in msg


def test_island_right_after_the_input_is_exact():
    """No integer op before the island: the integer model equals the simulation bit for bit."""
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    p, ir, g = _pipeline(ResidualCNN(), x, (qt.default_calibration_qconfig_setter,
                                            qt.ModuleNameQconfigSetter({"stem": FP16})))
    out, env = g(x, return_intermediates=True)
    _, sim = ir(x, return_intermediates=True)
    isl = [o for n in g.nodes if is_float16(n) for o in n.outputs]
    assert isl and all(torch.equal(env[o], sim[o]) for o in isl)


@pytest.mark.parametrize("kind", ["cnn", "block"])
def test_all_fp16_template(kind):
    torch.manual_seed(0)
    model, x = (ResidualCNN(), torch.rand(4, 1, 28, 28)) if kind == "cnn" else (Block(), torch.randn(2, 5, 16))
    p, ir, g = _pipeline(model, x, (qt.all_fp16_qconfig_setter,))
    sim = p(x)
    assert torch.equal(g(x), sim) and torch.equal(ir(x), sim)          # exact, end to end
    assert not any(v.qparams for v in g.values.values())                # no integer tensor left
    ref = model.eval()(x)
    assert ((sim - ref).abs().max() / ref.abs().max()) < 5e-3           # float16 rounding only
    assert _float16_nodes_exact(ir, g, x) == sum(is_float16(n) for n in g.nodes)
    assert len(p.meta["edgequant"]["sites"]) <= sum(bool(n.attrs.get("float16")) for n in g.nodes) + 1
    with pytest.raises(ConvertError, match="nash-m does not run"):
        eq.convert(ir, "nash-m")


def test_all_fp16_with_integer_parts():
    """The seeds' pattern: every op float16, then named parts integer (later setters win)."""
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    over = qt.ModuleNameQconfigSetter({"dw": eq.get_qconfig(), "add": eq.get_qconfig()})
    p, ir, g = _pipeline(ResidualCNN(), x, (qt.all_fp16_qconfig_setter, over))
    assert {"dw", "add"}.isdisjoint(n.name for n in g.nodes if is_float16(n))
    assert any(v.qparams for v in g.values.values())                      # the integer part
    assert _float16_nodes_exact(ir, g, x) > 10
    assert (g(x) - p(x)).abs().max() < 1e-3                               # measured 3.1e-5
    with pytest.raises(ConvertError, match="'stem.0' \\(conv2d\\)"):
        eq.convert(ir, "nash-m")


def test_user_fake_cast():
    x = torch.randn(2, 3, 8, 8)
    p, ir, g = _pipeline(WithCast(), x, (qt.default_calibration_qconfig_setter,), march="nash-h")
    casts = [n for n in g.nodes if is_float16(n)]
    assert [n.name for n in casts] == ["cast"]
    assert torch.equal(g(x), p(x)) and _float16_nodes_exact(ir, g, x) == 1
    cast = next(m for m in p.modules() if isinstance(m, eq.FakeCast))
    assert cast.state == "validation"
    eq.set_fake_quantize(p, "float")
    assert cast.state == "float" and not cast.active   # FLOAT: the prepared model computes in float
    with pytest.raises(ConvertError, match="'cast' \\(fake_cast\\)"):
        eq.convert(ir, "nash-m")


def test_qat_gradients_through_an_island():
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    p = eq.prepare(ResidualCNN().eval(), x, march="nash-p",
                   qconfig_setter=(qt.default_qat_qconfig_setter, qt.ModuleNameQconfigSetter({"pw": FP16})))
    eq.calibrate(p, [x])
    eq.set_fake_quantize(p, "qat")
    p.train()
    p(x).square().sum().backward()
    grads = {n: q.grad for n, q in p.named_parameters() if n.startswith("pw.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_save_load_and_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = torch.rand(4, 1, 28, 28)
    setters = (qt.default_calibration_qconfig_setter, qt.ModuleNameQconfigSetter({"pw": FP16, "add": FP16}))
    p, ir, g = _pipeline(ResidualCNN(), x, setters)
    eq.save(g, tmp_path / "m.eqm")
    assert torch.equal(eq.load(tmp_path / "m.eqm")(x), g(x))
    for flavour, model, ref, tol in (("qdq", p, p(x), 1e-4), ("integer", g, g(x), 0.0)):
        path = os.fspath(tmp_path / f"{flavour}.onnx")
        m = eq.export_onnx(model, path, x, flavour=flavour)
        assert sum(n.op_type == "Cast" for n in m.graph.node) >= 2
        s = ort.InferenceSession(path)
        out = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
        assert (out - ref.detach()).abs().max() <= tol, flavour
