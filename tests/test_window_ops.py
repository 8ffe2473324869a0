"""``F.unfold`` / ``F.fold`` (aten im2col / col2im, ``edgequant/ops/window.py``): moves on the input's grid.

The window table against torch's own float kernels on many geometries; end to end on a model
whose unfolded tensor has a zero point other than 0 (so padding must be the zero point, not code
0): the integer model moves its codes exactly as torch's float kernels do, within 1 LSB of the
simulation (the conv before them), ONNX Runtime runs both flavours (the
integer file bit for bit); an overlapping fold is refused at convert naming the node; MobileViT-v2
(HF transformers, random weights) goes float -> integer -> ONNX Runtime; a file cannot make the
kernel allocate more than its tensors back.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.ops import OPS, ConvertError
from edgequant.ops.window import gather_window, window_index
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from onnx_export_models import check_onnx_file

GEOMETRIES = [  # kernel, dilation, padding, stride
    ((2, 2), (1, 1), (0, 0), (2, 2)), ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (2, 0), (1, 3)),
    ((1, 1), (1, 1), (0, 0), (1, 1)), ((4, 4), (1, 1), (3, 1), (4, 2)), ((2, 3), (3, 2), (1, 2), (2, 1)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_window_table_is_torchs_unfold_and_fold(geometry):
    k, d, p, s = geometry
    x = torch.randint(-128, 128, (2, 3, 9, 11))
    index, shape, _ = window_index("aten.im2col.default", tuple(x.shape), [None, list(k), list(d), list(p), list(s)], {})
    want = F.unfold(x.double(), k, dilation=d, padding=p, stride=s)
    got = gather_window(x, index, shape, 0)
    assert torch.equal(got.double(), want)
    # fold: torch sums overlapping windows; where none overlap the table moves each column back
    cols = torch.randint(-128, 128, tuple(want.shape))
    index, shape, overlapping = window_index("aten.col2im.default", tuple(cols.shape),
                                             [None, [9, 11], list(k), list(d), list(p), list(s)], {})
    folded = F.fold(cols.double(), (9, 11), k, dilation=d, padding=p, stride=s)
    ones = F.fold(torch.ones_like(cols).double(), (9, 11), k, dilation=d, padding=p, stride=s)
    assert overlapping == bool((ones > 1).any())
    if not overlapping:
        assert torch.equal(gather_window(cols, index, shape, 0).double(), folded)


def test_the_fill_is_the_padding_value():
    x = torch.full((1, 1, 2, 2), 7)
    index, shape, _ = window_index("aten.im2col.default", (1, 1, 2, 2), [None, [3, 3], [1, 1], [1, 1], [1, 1]], {})
    y = gather_window(x, index, shape, -5)
    assert set(y.unique().tolist()) == {7, -5} and int((y == 7).sum()) == 16


class Patches(nn.Module):
    """MobileViT-v2-style unfold -> per-patch linear -> fold, and a padded, dilated unfold."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Conv2d(8 + 72, 4, 1)

    def forward(self, x):
        y = self.conv(self.q(x)) + 1.5                          # shifted: a zero point far from 0
        cols = F.unfold(y, kernel_size=2, stride=2)             # (N, 32, 16): 2 x 2 patches
        n, _, L = cols.shape
        patches = self.mix(cols.reshape(n, 8, 4, L).permute(0, 2, 3, 1))
        back = F.fold(patches.permute(0, 3, 1, 2).reshape(n, 32, L), y.shape[-2:], kernel_size=2, stride=2)
        wide = F.unfold(y, kernel_size=3, padding=2, dilation=2).reshape(n, 72, 8, 8)
        return self.dq(self.head(torch.cat([back, wide], 1)))


def _converted(template, model=None):
    torch.manual_seed(0)
    model = (model or Patches()).eval()
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    return model, cm, ir, eq.convert(ir, "nash-e"), torch.randn(2, 3, 8, 8)


def test_unfold_and_fold_are_rows_of_the_op_table():
    for name, target in (("im2col", "aten.im2col.default"), ("col2im", "aten.col2im.default")):
        row = OPS[name]
        assert row.rule == "shared" and row.targets == (target,) and set(row.onnx) == {target}


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_integer_model_moves_the_simulations_codes(template):
    model, cm, ir, g, x = _converted(template)
    moves = [n for n in g.nodes if n.op in ("im2col", "col2im")]
    assert sorted(n.op for n in moves) == ["col2im", "im2col", "im2col"]
    _, qenv = ir(x, return_intermediates=True)
    _, env = g(x, return_intermediates=True)
    for n in moves:
        qp = g.values[n.outputs[0]].qparams
        z = qp.zero_point[0]
        assert qp is not None and n.attrs["fill"] == z and g.values[n.inputs[0]].qparams == qp
        # the move itself is exact: torch's float kernel on the codes minus the zero point (padding 0)
        a, kw = n.attrs["args"], n.attrs["kwargs"]
        codes_in = (env[n.inputs[0]].double() - z)
        if n.op == "im2col":
            want = F.unfold(codes_in, a[1], dilation=a[2], padding=a[3], stride=a[4]) + z
        else:
            want = F.fold(codes_in, a[1], a[2], dilation=a[3], padding=a[4], stride=a[5]) + z
        assert torch.equal(env[n.outputs[0]].double(), want), n.name
        # and the simulation's values lie on the same grid, within the 1 LSB of the conv before it
        sim_codes = torch.round(qenv[n.outputs[0]] / qp.scale[0]) + z
        assert (env[n.outputs[0]].to(torch.int64) - sim_codes.to(torch.int64)).abs().max() <= 1, n.name
    if template is T8:   # the unfolded tensor is shifted: its zero point is not 0, so padding is not code 0
        assert any(g.values[n.inputs[0]].qparams.zero_point[0] != 0 for n in moves)
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    assert (g(x) - sim).abs().max() <= 0.01 * sim.abs().max()   # 1 LSB upstream, through the head
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_onnx_runtime_runs_it(flavour, tmp_path):
    _, cm, _, g, x = _converted(T8)
    check_onnx_file(flavour, cm, g, x, tmp_path / f"window_{flavour}.onnx")


class OverlappingFold(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()

    def forward(self, x):
        return self.dq(F.fold(F.unfold(self.q(x), 3, padding=1), x.shape[-2:], 3, padding=1))


def test_an_overlapping_fold_is_refused_naming_the_node():
    torch.manual_seed(0)
    xs = [torch.randn(1, 2, 6, 6) for _ in range(2)]
    cm = eq.prepare(OverlappingFold().eval(), (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs])
    with pytest.raises(ConvertError, match=r"col2im.*overlapping windows.*DeQuantStub"):
        eq.convert(eq.export(cm, (xs[0],)), "nash-e")


def test_a_window_table_larger_than_the_tensors_back_is_refused():
    with pytest.raises(ValueError, match="is refused"):
        window_index("aten.im2col.default", (1, 3, 64, 64), [None, [64, 64], [1, 1], [64, 64], [1, 1]], {})


def test_mobilevit_v2_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    from zoo.models import ZOO

    model, example = ZOO["hf_mobilevitv2"].build()      # random weights, norms randomised as in the zoo
    xs = [ZOO["hf_mobilevitv2"].make_inputs(i) for i in range(1, 5)]
    cm = eq.prepare(model, example, qconfig_setter=(T8,))
    eq.calibrate(cm, xs)
    g = eq.convert(eq.export(cm, example), "nash-e")
    assert {"im2col", "col2im"} <= {n.op for n in g.nodes}
    (x,) = ZOO["hf_mobilevitv2"].make_inputs(99)
    with torch.no_grad():
        ref, sim = model(x), cm(x)
    y = g(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum())
    assert sqnr > 25, float(sqnr)
    assert (y - sim).abs().max() <= 0.01 * sim.abs().max()
    check_onnx_file("integer", cm, g, x, tmp_path / "mobilevitv2.onnx")


class SequenceUnfold(nn.Module):
    """ConvBERT's span-based convolution: unfold over the (dynamic) sequence of a text model."""

    def __init__(self):
        super().__init__()
        self.emb, self.proj = nn.Embedding(50, 8), nn.Linear(8, 8)
        self.mix = nn.Linear(8 * 3, 8)

    def forward(self, ids):                                   # (N, T) token ids: T stays dynamic
        y = self.proj(self.emb(ids)).transpose(1, 2).unsqueeze(-1)   # (N, 8, T, 1)
        cols = F.unfold(y, kernel_size=[3, 1], padding=[1, 0])  # (N, 24, T)
        return self.mix(cols.transpose(1, 2))


def test_unfold_over_a_dynamic_sequence(tmp_path):
    torch.manual_seed(0)
    model = SequenceUnfold().eval()
    xs = [torch.randint(0, 50, (2, 12)) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    node = next(n for n in g.nodes if n.op == "im2col")
    assert not isinstance(g.values[node.inputs[0]].shape[2], int)      # the sequence stays dynamic
    for t in (12, 7):                                                  # another length than traced
        x = torch.randint(0, 50, (2, t))
        with torch.no_grad():
            ref, sim = model(x), cm(x)
        y = g(x)
        assert y.shape == ref.shape and (y - sim).abs().max() <= 0.01 * sim.abs().max()
        check_onnx_file("integer", cm, g, x, tmp_path / f"seq{t}.onnx")


class Unbatched(nn.Module):
    """unfold and fold of an unbatched (C, H, W) / (C*kh*kw, L) tensor, which torch also takes."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(self.q(x))[0] + 1.0                       # (4, 8, 8), zero point off 0
        cols = F.unfold(y, 3, padding=1, stride=2)              # (36, 16)
        back = F.fold(F.unfold(y, 2, stride=2), (8, 8), 2, stride=2)
        return self.dq(cols.sum(0) + back.flatten()[:16])


@pytest.mark.parametrize("flavour", ["qdq", "integer"])
def test_unbatched_unfold_and_fold(flavour, tmp_path):
    torch.manual_seed(0)
    model = Unbatched().eval()
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(T8,))
    eq.calibrate(cm, [(x,) for x in xs[:3]])
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    _, env = g(xs[3], return_intermediates=True)
    for n in (n for n in g.nodes if n.op in ("im2col", "col2im")):
        a, z = n.attrs["args"], n.attrs["fill"]
        codes_in = env[n.inputs[0]].double() - z
        want = (F.unfold(codes_in, a[1], dilation=a[2], padding=a[3], stride=a[4]) if n.op == "im2col"
                else F.fold(codes_in, a[1], a[2], dilation=a[3], padding=a[4], stride=a[5])) + z
        assert torch.equal(env[n.outputs[0]].double(), want), n.name
    check_onnx_file(flavour, cm, g, xs[3], tmp_path / f"unbatched_{flavour}.onnx")
