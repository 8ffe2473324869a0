"""Capture's retrace (issue 20): in-place ops functionalized, casts that keep float32 dropped,
``padding="same"`` convolutions made explicit, attention returned in aten's memory layout.

References: the float model itself (the captured graph must compute exactly what it computes,
for other inputs and batch sizes than the example), ``F.scaled_dot_product_attention`` and
aten's own ``padding="same"``; the integer model against the simulation end to end."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
import edgequant.capture_rewrite as retrace
from edgequant.capture import CaptureError, capture
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8


def _targets(gm) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def _mutating(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable]


def _same_function(model, gm, *shapes):
    """The captured graph computes the float model's outputs exactly, on fresh inputs."""
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            want, got = model(x.clone()), gm(x.clone())
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        for w, g in zip(want, got):
            assert torch.equal(w, g)


def _end_to_end(model, xs, template):
    """prepare, calibrate, export, convert: (float, simulation, integer output, output step)."""
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    ir = eq.export(cm, (xs[0],))
    g = eq.convert(ir, "nash-e")
    x = xs[-1]
    with torch.no_grad():
        ref, sim = model(x.clone()), cm(x)
    step = g.values[g.nodes[-1].inputs[0]].qparams.scale[0]
    return ref, sim, g(x), step


# -- in-place ops ------------------------------------------------------------------------------------
class InplaceNet(nn.Module):
    """The in-place ops of the zoo's failures: ``out += identity`` (resnet), ReLU6/Hardswish/SiLU
    with ``inplace=True`` (mobilenet, efficientnet), ``nn.Dropout(inplace=True)`` (mobilenet_v3,
    hf_mobilevit)."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.relu, self.relu6 = nn.ReLU(inplace=True), nn.ReLU6(inplace=True)
        self.hswish, self.silu = nn.Hardswish(inplace=True), nn.SiLU(inplace=True)
        self.drop = nn.Dropout(0.2, inplace=True)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.q(x)
        identity = self.relu(self.bn1(self.c1(x)))
        out = self.bn2(self.c2(identity))
        out += identity
        out = self.relu(out)
        y = self.relu6(self.c3(out))
        y = self.hswish(y) + self.silu(self.c3(y))
        y = self.drop(y.mean((2, 3)))
        return self.dq(self.fc(y))


def test_inplace_ops_are_functionalized_and_compute_the_float_model():
    torch.manual_seed(0)
    model = InplaceNet().eval()
    gm = capture(model, torch.randn(2, 3, 8, 8))
    assert _mutating(gm) == []
    assert not any("dropout" in t for t in _targets(gm))   # eval-mode dropout vanishes
    # the source line of `out += identity` survives the retrace
    add = [n for n in gm.graph.nodes if "out += identity" in n.meta.get("eq_source", "")]
    assert add and all("test_capture_inplace.py" in n.meta["eq_source"] for n in add)
    _same_function(model, gm, (2, 3, 8, 8), (5, 3, 8, 8), (1, 3, 8, 8))


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_inplace_model_converts_and_the_integer_model_tracks_the_simulation(template):
    torch.manual_seed(0)
    model = InplaceNet().eval()
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    ref, sim, y, step = _end_to_end(model, xs, template)
    assert (y - sim).abs().max() <= 2 * step
    assert (sim - ref).abs().max() <= 0.1 * ref.abs().max()


class Aliasing(nn.Module):
    """``+=`` through another name and ``mul_`` through a view of a tensor used afterwards."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        z = y
        z += 1.0                  # y changes too
        w = y.view(y.shape[0], -1)
        w.mul_(0.5)               # and again, through a view
        out = torch.relu_(y) + x.mean(1, keepdim=True)
        return out, w             # w aliases y: it holds relu's output


def test_aliased_inplace_updates_keep_their_meaning():
    model = Aliasing().eval()
    gm = capture(model, torch.randn(2, 3, 5, 5))
    assert _mutating(gm) == []
    _same_function(model, gm, (2, 3, 5, 5), (3, 3, 5, 5))


class NormalizesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x.sub_(0.5).mul_(2.0)     # in-place preprocessing of the caller's tensor
        return self.c(x)


def test_inplace_preprocessing_of_an_input_computes_the_same_outputs():
    model = NormalizesItsInput().eval()
    gm = capture(model, torch.randn(2, 3, 6, 6))
    assert _mutating(gm) == []
    x = torch.randn(2, 3, 6, 6)
    kept = x.clone()
    with torch.no_grad():
        assert torch.equal(gm(x), model(x.clone()))
    assert torch.equal(x, kept)   # the graph leaves the caller's tensor alone


class CumsumInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x)
        y.cumprod_(1)
        return y


def test_unsupported_inplace_op_is_refused_at_the_users_line():
    with pytest.raises(CaptureError) as err:
        eq.prepare(CumsumInplace().eval(), torch.randn(2, 3, 6, 6), qconfig_setter=(T8,))
    msg = str(err.value)
    assert "aten.cumprod.default" in msg and "test_capture_inplace.py" in msg and "y.cumprod_(1)" in msg


# -- casts that keep the dtype ------------------------------------------------------------------------
class Casts(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x):
        x = x.to(dtype=self.c.weight.dtype)          # HF: pixel_values.to(dtype=target_dtype)
        y = self.c(x.to(torch.float32)).float().type_as(x)
        y = y.to(x.device, x.dtype).mean((2, 3))
        idx = (y * 3).abs().long().clamp(max=9)      # a real cast: stays
        return torch.gather(self.fc(y), 1, idx) + y


def test_casts_that_keep_float32_are_dropped_and_real_casts_stay():
    model = Casts().eval()
    gm = capture(model, torch.randn(2, 3, 6, 6))
    casts = [n for n in gm.graph.nodes if n.op == "call_function" and "to" in str(n.target).split(".")[1:2]
             or "_to_copy" in str(n.target) or "type_as" in str(n.target)]
    dtypes = [n.meta["val"].dtype for n in casts]
    assert dtypes == [torch.int64], [str(n.target) for n in casts]
    _same_function(model, gm, (2, 3, 6, 6), (4, 3, 6, 6))


def test_a_float32_cast_no_longer_blocks_prepare():
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x.to(dtype=self.c.weight.dtype)).flatten(1)

    ref, sim, y, step = _end_to_end(M().eval(), [torch.randn(2, 3, 6, 6) for _ in range(3)], T8)
    assert (y - sim).abs().max() <= 2 * step


class ChannelDropouts(nn.Module):
    """nn.Dropout2d (HF MobileNetV2's DeepLab head), nn.AlphaDropout, nn.FeatureAlphaDropout: eval-mode no-ops."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
        self.drops = nn.ModuleList([nn.Dropout2d(0.1), nn.AlphaDropout(0.1), nn.FeatureAlphaDropout(0.1)])

    def forward(self, x):
        y = self.c1(x)
        for d in self.drops:
            y = d(y)
        return self.c2(y)


def test_channel_dropouts_vanish_in_eval_and_the_model_converts():
    torch.manual_seed(0)
    model = ChannelDropouts().eval()
    gm = capture(model, torch.randn(2, 3, 6, 6))
    assert not [n for n in gm.graph.nodes if "dropout" in str(n.target)]
    _same_function(model, gm, (2, 3, 6, 6))
    ref, sim, y, step = _end_to_end(model, [torch.randn(2, 3, 6, 6) for _ in range(3)], T8)
    assert (y - sim).abs().max() <= 2 * step


class MaskedEmbeddings(nn.Module):
    """ESM's ``embeddings * attention_mask.unsqueeze(-1)`` on an int64 mask, and a bool one added."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x, mask):
        y = self.fc(x) * mask.unsqueeze(-1)
        return self.out(y + (mask > 0).unsqueeze(-1))


def _mask_batch(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return torch.randn(2, 5, 8, generator=g), mask


def test_float_arithmetic_on_an_integer_tensor_quantizes_it_as_float(tmp_path):
    torch.manual_seed(0)
    model = MaskedEmbeddings().eval()
    gm = capture(model, _mask_batch(0))
    casts = [n for n in gm.graph.nodes if n.target is torch.ops.aten._to_copy.default]
    assert [n.meta["val"].dtype for n in casts] == [torch.float32, torch.float32]
    assert all(u.target in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor) for n in casts for u in n.users)
    cm = eq.prepare(model, _mask_batch(0), qconfig_setter=(T8,))
    eq.calibrate(cm, [_mask_batch(i) for i in range(1, 4)])
    g = eq.convert(eq.export(cm, _mask_batch(0)), "nash-e")     # was: input 'unsqueeze' (int64) is not quantized
    x = _mask_batch(9)
    with torch.no_grad():
        ref, sim, y = model(*x), cm(*x), g(*x)
    step = g.values[g.nodes[-1].inputs[0]].qparams.scale[0]
    assert (y - sim).abs().max() <= 2 * step
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


# -- convolutions with padding="same" -----------------------------------------------------------------
SAME_CASES = {   # kernel, dilation: symmetric padding or an extra zero column/row on the right
    "k3": (2, 3, 1), "k4": (2, 4, 1), "k3x4": (2, (3, 4), 1), "k3_dil2": (2, 3, 2), "k2_dil3": (2, 2, 3),
    "1d_k3": (1, 3, 1), "1d_k4": (1, 4, 1)}


class SameConv(nn.Module):
    def __init__(self, dims, k, dilation, padding="same"):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.conv = conv(3, 4, k, padding=padding, dilation=dilation)
        self.dims = dims

    def forward(self, x):
        return self.dq(torch.relu(self.conv(self.q(x))))


def _shape(dims, n=2):
    return (n, 3, 9, 8) if dims == 2 else (n, 3, 11)


@pytest.mark.parametrize("case", sorted(SAME_CASES))
def test_same_padding_becomes_explicit_and_matches_aten(case):
    dims, k, dil = SAME_CASES[case]
    torch.manual_seed(0)
    model = SameConv(dims, k, dil).eval()
    gm = capture(model, torch.randn(_shape(dims)))
    assert not any(t.endswith(".padding") for t in _targets(gm))
    convs = [n for n in gm.graph.nodes if str(n.target).startswith(f"aten.conv{dims}d")]
    assert len(convs) == 1 and all(isinstance(p, int) for p in convs[0].args[4])
    ks = (k, k) if isinstance(k, int) and dims == 2 else (k if dims == 2 else (k,))
    odd = any(dil * (kk - 1) % 2 for kk in ks)
    assert ("aten.constant_pad_nd.default" in _targets(gm) or "aten.pad.default" in _targets(gm)) == odd
    _same_function(model, gm, _shape(dims), _shape(dims, 5))


@pytest.mark.parametrize("case", ["k3", "k4", "1d_k4"])
def test_same_padding_converts_and_the_integer_model_tracks_the_simulation(case):
    dims, k, dil = SAME_CASES[case]
    torch.manual_seed(0)
    model = SameConv(dims, k, dil).eval()
    ref, sim, y, step = _end_to_end(model, [torch.randn(_shape(dims)) for _ in range(4)], T8)
    assert (y - sim).abs().max() <= 2 * step
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


def test_valid_padding_is_no_padding():
    model = SameConv(2, 3, 1, padding="valid").eval()
    gm = capture(model, torch.randn(2, 3, 9, 8))
    conv = next(n for n in gm.graph.nodes if str(n.target).startswith("aten.conv2d"))
    assert str(conv.target) == "aten.conv2d.default" and list(conv.args[4] if len(conv.args) > 4 else [0, 0]) == [0, 0]
    _same_function(model, gm, (2, 3, 9, 8))


# -- attention in aten's memory layout -------------------------------------------------------------------
class CausalAttention(nn.Module):
    """nanoGPT's attention: the output is viewed back to (B, T, C) after transpose().contiguous(),
    which aten's layout makes a no-op (no copy is traced)."""

    def __init__(self, c=32, heads=2, kv_heads=None, mask=None):
        super().__init__()
        self.heads, self.kv = heads, kv_heads or heads
        d = c // heads
        self.qp, self.kp, self.vp = nn.Linear(c, c), nn.Linear(c, self.kv * d), nn.Linear(c, self.kv * d)
        self.proj = nn.Linear(c, c)
        self.mask = mask

    def forward(self, x):
        B, T, C = x.size()
        d = C // self.heads
        q = self.qp(x).view(B, T, self.heads, d).transpose(1, 2)
        k = self.kp(x).view(B, T, self.kv, d).transpose(1, 2)
        v = self.vp(x).view(B, T, self.kv, d).transpose(1, 2)
        gqa = self.kv != self.heads
        if self.mask == "bool":
            m = torch.ones(T, T, dtype=torch.bool).tril()
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.mask is None, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


@pytest.mark.parametrize("kv_heads,mask", [(None, None), (None, "bool"), (2, None), (1, "bool")],
                         ids=["causal", "bool_mask", "gqa", "mqa"])
def test_attention_decomposition_keeps_aten_layout_and_values(kv_heads, mask):
    torch.manual_seed(0)
    model = CausalAttention(heads=4 if kv_heads else 2, kv_heads=kv_heads, mask=mask).eval()
    gm = capture(model, torch.randn(2, 6, 32))
    assert "aten.scaled_dot_product_attention.default" not in _targets(gm)
    for shape in ((2, 6, 32), (3, 6, 32)):
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_attention_model_converts():
    # without a mask: the -inf of a causal mask saturates to the grid's end in the simulation
    # (masked scores keep some weight), which no capture change fixes
    # The output projection's int32 accumulator is the output: each int16 input may differ from the
    # simulation by 1 LSB (the per-op bound of a requantized output, a rounding tie taken the other
    # way), which moves an output by up to that LSB times the row's sum of |weights|
    torch.manual_seed(0)
    model = CausalAttention(mask="none").eval()
    xs = [torch.randn(2, 6, 32) for _ in range(4)]
    ref, sim, y, step = _end_to_end(model, xs, T16)
    s_in = float(model.proj.weight.abs().sum(1).max()) * _proj_input_step(model, xs, T16)
    assert (y - sim).abs().max() <= 4 * step + 1.01 * s_in
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


def _proj_input_step(model, xs, template) -> float:
    """The quantization step of ``model.proj``'s input, as ``_end_to_end`` calibrates it."""
    cm = eq.calibrate(eq.prepare(model, (xs[0],), qconfig_setter=(template,)), [(x,) for x in xs])
    return float(cm.eq_bc.proj__bias_correction._grid[0].qparams()[0])


def test_a_failure_in_the_retrace_names_the_users_line(monkeypatch):
    # without the layout, the decomposition returns a contiguous tensor that .view() refuses
    monkeypatch.setattr(retrace, "_sdpa_layouts", lambda ep: {})
    with pytest.raises(CaptureError) as err:
        capture(CausalAttention().eval(), torch.randn(2, 6, 32))
    msg = str(err.value)
    assert "<unknown source>" not in msg
    assert "test_capture_inplace.py" in msg and "view(B, T, C)" in msg


@eq.wrap
def _numpy_gain(x):
    return torch.from_numpy(x.detach().numpy() * 0.5)


class WrappedAndInplace(nn.Module):
    """A wrapped function (a leaf marker through the trace) in a graph that is retraced."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        y = self.act(self.c(self.q(x)))
        y += self.c(self.q(x))
        return _numpy_gain(self.dq(y))


def test_wrapped_functions_survive_the_retrace():
    torch.manual_seed(0)
    model = WrappedAndInplace().eval()
    gm = capture(model, torch.randn(2, 3, 5, 5))
    assert _mutating(gm) == [] and any(n.op == "call_module" for n in gm.graph.nodes)
    _same_function(model, gm, (2, 3, 5, 5), (3, 3, 5, 5))
    cm = eq.prepare(model, torch.randn(2, 3, 5, 5), qconfig_setter=(T8,))
    eq.calibrate(cm, [(torch.randn(2, 3, 5, 5),) for _ in range(2)])
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert (cm(x) - model(x)).abs().max() <= 0.1 * model(x).abs().max()


class PreActivation(nn.Module):
    """DenseNet's order: batch norm, in-place ReLU, conv; the norm folds into no conv."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.c0 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 4, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.q(x)
        y = torch.cat([self.c0(x), self.c0(x) * 0.5], 1)
        return self.dq(self.c(F.relu(self.bn(y), inplace=True)))


def test_an_unfolded_batch_norm_stays_one_node_after_the_retrace():
    torch.manual_seed(0)
    model = PreActivation().eval()
    gm = capture(model, torch.randn(2, 3, 6, 6))
    assert "aten.batch_norm.default" in _targets(gm)
    assert "aten._native_batch_norm_legit_no_training.default" not in _targets(gm)
    _same_function(model, gm, (2, 3, 6, 6), (3, 3, 6, 6))
    ref, sim, y, step = _end_to_end(model, [torch.randn(2, 3, 6, 6) for _ in range(4)], T8)
    assert (y - sim).abs().max() <= 2 * step
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


class WindowMask(nn.Module):
    """Swin's shifted-window attention mask: built in the forward from ``x.new_zeros`` and
    slice assignments of numbers, then added to the attention scores."""

    def __init__(self, n=6, d=8):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.qk = nn.Linear(d, 2 * d)
        self.n = n

    def forward(self, x):
        x = self.q(x)
        q, k = self.qk(x).chunk(2, -1)
        mask = x.new_zeros((self.n, self.n))
        cnt = 0
        for s in (slice(0, -2), slice(-2, None)):
            mask[s, :] = cnt
            cnt += 1
        mask[:, -1] += 1.0
        mask = mask.masked_fill(mask != 0, -3.0)
        return self.dq(torch.softmax(q @ k.transpose(-1, -2) + mask, -1))


def test_a_mask_made_from_constants_is_folded_into_a_buffer():
    torch.manual_seed(0)
    model = WindowMask().eval()
    gm = capture(model, torch.randn(2, 6, 8))
    assert not {"aten.new_zeros.default", "aten.fill.Scalar", "aten.fill.Tensor", "aten.slice_scatter.default",
                "aten.masked_fill.Scalar"} & _targets(gm)
    assert any(n.op == "get_attr" and n.target.startswith("eq_const_") for n in gm.graph.nodes)
    _same_function(model, gm, (2, 6, 8), (3, 6, 8))
    ref, sim, y, step = _end_to_end(model, [torch.randn(2, 6, 8) for _ in range(4)], T8)
    assert (y - sim).abs().max() <= 2 * step
    assert (sim - ref).abs().max() <= 0.05 * ref.abs().max()


class EmptyCache(nn.Module):
    """GPT-2's legacy key/value cache: ``torch.cat((past, k), dim=-2)`` with an empty 1-D past."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("past", torch.zeros(0))

    def forward(self, x):
        k = self.fc(self.q(x))
        return self.dq(torch.cat((self.past, k), dim=-2) * 0.5)


def test_empty_1d_cat_inputs_are_left_out():
    torch.manual_seed(0)
    model = EmptyCache().eval()
    gm = capture(model, torch.randn(2, 5, 8))
    assert "aten.cat.default" not in _targets(gm)
    _same_function(model, gm, (2, 5, 8), (3, 5, 8))
    ref, sim, y, step = _end_to_end(model, [torch.randn(2, 5, 8) for _ in range(3)], T8)
    assert (y - sim).abs().max() <= 2 * step
