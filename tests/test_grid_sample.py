"""``grid_sample`` end to end (``edgequant/ops/grid_sample.py``), for every mode x padding x
align_corners the row supports: the simulation close to float ``F.grid_sample``; the integer codes
within the family docstring's bound of the simulation (1 LSB) and of an independent float64
``F.grid_sample`` on the dequantized inputs; the int64 kernel equal to its plain-int reference;
the integer ONNX file equal to the integer model in ONNX Runtime, and the QDQ file (ONNX
``GridSample`` between Q/DQ pairs) within one output step of the simulation. The int8 template
gives the grid int16 (the NPU's grid); what has no integer kernel is refused by name."""
import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.ops import OPS, ConvertError
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import session

COMBOS = [(m, p, a) for m in ("bilinear", "nearest") for p in ("zeros", "border") for a in (False, True)]
IDS = [f"{m}-{p}-{'ac' if a else 'noac'}" for m, p, a in COMBOS]


class Sampler(nn.Module):
    """``grid_sample`` between stubs; the grid is a second input (its own QuantStub)."""

    def __init__(self, mode="bilinear", padding="zeros", align=False):
        super().__init__()
        self.qx, self.qg, self.dq = eq.QuantStub(), eq.QuantStub(), eq.DeQuantStub()
        self.kw = dict(mode=mode, padding_mode=padding, align_corners=align)

    def forward(self, x, grid):
        return self.dq(F.grid_sample(self.qx(x), self.qg(grid), **self.kw))


def _data(seed, shape=(2, 3, 5, 6), out=(4, 7)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    grid = torch.rand(shape[0], *out, len(shape) - 2, generator=gen) * 2.4 - 1.2     # some positions outside
    grid[0, 0, :3] = 0.0        # exactly the centre: x = 2.5 on a width of 6, a half-pixel tie for nearest
    return x, grid


@functools.lru_cache(maxsize=None)
def _converted(mode, padding, align, template=T8):
    model = Sampler(mode, padding, align).eval()
    cm = eq.prepare(model, _data(0), qconfig_setter=(template,))
    eq.calibrate(cm, [_data(s) for s in range(4)])
    g = eq.convert(eq.export(cm, _data(0)), "nash-e")
    return model, cm, g


def _node(g):
    return next(n for n in g.nodes if n.op == "grid_sample")


def _codes(v, qp):
    return torch.round(v / qp.scale[0]).to(torch.int64) + qp.zero_point[0]


def test_grid_sample_is_one_row_of_the_op_table():
    row = OPS["grid_sample"]
    assert row.rule == "compute" and set(row.targets) == {"aten.grid_sampler.default", "aten.grid_sampler_2d.default"}
    assert row.int16_args == (1,) and row.reference is not None and set(row.onnx) == set(row.targets)


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
@pytest.mark.parametrize("mode,padding,align", COMBOS, ids=IDS)
def test_integer_model_against_simulation_reference_and_float(mode, padding, align, template):
    model, cm, g = _converted(mode, padding, align, template)
    x = _data(7)
    node = _node(g)
    xq, gq, oq = (g.values[v].qparams for v in (*node.inputs, node.outputs[0]))
    assert gq.dtype == "qint16" and list(gq.zero_point) == [0]         # the NPU's grid: int16, symmetric
    with torch.no_grad():
        ref, sim = model(*x), cm(*x)
    # simulation vs float: the inputs' and the output's rounding (nearest: a grid step may move a pick)
    err = (sim - ref).abs()
    assert float(err.max()) <= 4 * oq.scale[0] + 2 * xq.scale[0] or float((err > 4 * oq.scale[0]).float().mean()) < 0.02
    _, env = g(*x, return_intermediates=True)
    codes = env[node.outputs[0]].to(torch.int64)
    assert int((codes - _codes(sim, oq)).abs().max()) <= 1                       # the docstring's bound
    # an independent float64 grid_sample on the dequantized codes, rounded onto the output grid
    xd = (env[node.inputs[0]].double() - xq.zero_point[0]) * xq.scale[0]
    gd = (env[node.inputs[1]].double() - gq.zero_point[0]) * gq.scale[0]
    exact = F.grid_sample(xd, gd, mode=mode, padding_mode=padding, align_corners=align)
    assert int((codes - _codes(exact, oq).clamp(-(1 << 15), (1 << 15) - 1)).abs().max()) <= 1
    _, env_ref = g(*x, return_intermediates=True, reference=True)
    assert torch.equal(env_ref[node.outputs[0]], env[node.outputs[0]])             # kernel == plain-int twin


@pytest.mark.parametrize("mode,padding,align", COMBOS, ids=IDS)
def test_onnx_files_in_onnx_runtime(mode, padding, align, tmp_path):
    _, cm, g = _converted(mode, padding, align)
    x = _data(7)
    feeds = lambda s: {i.name: v.numpy() for i, v in zip(s.get_inputs(), x)}   # noqa: E731
    eq.export_onnx(g, tmp_path / "int.onnx", x, flavour="integer")
    s = session(tmp_path / "int.onnx")
    np.testing.assert_array_equal(s.run(None, feeds(s))[0], g(*x).numpy())     # bit for bit
    qdq = eq.export_onnx(cm, tmp_path / "qdq.onnx", x, flavour="qdq")
    assert "GridSample" in {n.op_type for n in qdq.graph.node}
    s = session(tmp_path / "qdq.onnx")
    y = s.run(None, feeds(s))[0]
    step = g.values[_node(g).outputs[0]].qparams.scale[0]
    with torch.no_grad():
        assert np.abs(y - cm(*x).numpy()).max() <= 1.01 * step


def test_nearest_rounds_half_to_even_as_torch():
    """Position 2.5 (the grid's exact 0 on a width of 6) reads pixel 2 (nearbyint), in the integer model too."""
    _, cm, g = _converted("nearest", "zeros", False)
    x, grid = _data(7)
    node = _node(g)
    _, env = g(x, grid, return_intermediates=True)
    xin = env[node.inputs[0]].to(torch.int64)
    out = env[node.outputs[0]].to(torch.int64)
    xq, oq = g.values[node.inputs[0]].qparams, g.values[node.outputs[0]].qparams
    want = _codes((xin[0, :, 2, 2] - xq.zero_point[0]).double() * xq.scale[0], oq)   # row (5 - 1) / 2, column 2
    assert torch.equal(out[0, :, 0, 0], want)


def test_int8_template_gives_a_constant_grid_int16():
    """A grid buffer (float, a constant) gets the op's input fake-quant, int16 whatever the template."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
            self.register_buffer("grid", _data(3)[1][:1])

        def forward(self, x):
            return self.dq(F.grid_sample(self.q(x), self.grid.expand(x.shape[0], -1, -1, -1), align_corners=False))

    x = _data(0)[0]
    cm = eq.prepare(Fixed().eval(), (x,), qconfig_setter=(T8,))
    eq.calibrate(cm, [(_data(s)[0],) for s in range(3)])
    dtypes = {k: str(fq.dtype) for k, fq in cm.eq_fq.items()}
    # the output is int16 too: only the caller reads it (OpSite.caller_only)
    assert dtypes["grid_sample__input1"] == "qint16" and dtypes["grid_sample"] == "qint16", dtypes
    g = eq.convert(eq.export(cm, (x,)), "nash-e")
    with torch.no_grad():
        assert float((g(x) - cm(x)).abs().max()) <= 1.01 * g.values[_node(g).outputs[0]].qparams.scale[0]


class Volumetric(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.qg, self.dq = eq.QuantStub(), eq.QuantStub(), eq.DeQuantStub()

    def forward(self, x, grid):
        return self.dq(F.grid_sample(self.q(x), self.qg(grid), align_corners=False))


@pytest.mark.parametrize("case", ["5-d", "reflection", "bicubic"])
def test_what_has_no_integer_kernel_is_refused_by_name(case):
    if case == "5-d":
        model, ex = Volumetric(), (torch.randn(1, 2, 3, 4, 5), torch.rand(1, 2, 3, 4, 3) * 2 - 1)
        words = ["rank 5", "@edgequant.wrap"]
    else:
        mode, pad = ("bilinear", "reflection") if case == "reflection" else ("bicubic", "zeros")
        model, ex = Sampler(mode, pad), _data(0)
        words = [f"{'padding_mode' if case == 'reflection' else 'mode'}={case!r}", "@edgequant.wrap"]
    cm = eq.prepare(model.eval(), ex, qconfig_setter=(T8,))    # the simulation runs it (float torch)
    eq.calibrate(cm, [ex])
    with pytest.raises(ConvertError) as e:
        eq.convert(eq.export(cm, ex), "nash-e")
    msg = str(e.value)
    assert "'grid_sample'" in msg and all(w in msg for w in words), msg
