"""Lookup tables: the table core, its integer kernel against a plain-Python twin, accuracy per
function, and table ops through prepare -> VALIDATION -> export -> convert, bit for bit.

Run alone with ``-s`` to print the measured errors:
``HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s tests/test_lut.py``
"""
import math
import random
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.lut import build_table, lut_apply
from edgequant.lut.reference import lut_reference, shift_half_even
from edgequant.lut.sim import LutOp, TableOp
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8
from edgequant.qmath import dequantize, quantize, rounding_shift_right


class One(nn.Module):
    def __init__(self, fn, n_inputs=1):
        super().__init__()
        self.fn = fn
        self.q = nn.ModuleList(eq.QuantStub() for _ in range(n_inputs))
        self.dq = eq.DeQuantStub()

    def forward(self, *xs):
        return self.dq(self.fn(*[q(x) for q, x in zip(self.q, xs)]))


def calibrated(model, batches, setter=T16):
    cm = eq.prepare(model.eval(), batches[0], qconfig_setter=(setter,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for b in batches:
            cm(*b)
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    return cm


def the_lut_op(cm) -> LutOp:
    ops = [m for m in cm.modules() if isinstance(m, LutOp)]
    assert len(ops) == 1, ops
    return ops[0]


# -- the kernel against its plain-Python twin ------------------------------------------------------
def test_shift_half_even_twin_matches_qmath():
    vs = [5, 7, -5, -7, 6, 10, 0, 1, -1, (1 << 40) + (1 << 9), -(1 << 40) - 3 * (1 << 9)]
    for v in vs:
        for n in range(0, 12):
            assert shift_half_even(v, n) == int(rounding_shift_right(torch.tensor(v), n))


CORE_CASES = [  # (in dtype, in zero, mode, strategy, function)
    ("qint16", 0, "ASYM", "evenly", lambda x: torch.sin(3 * x) + x),
    ("qint16", 1234, "ASYM", "curvature", lambda x: torch.exp(-x * x)),
    ("qint16", 0, "CSYM", "curvature", torch.tanh),
    ("qint16", 0, "YSYM", "evenly", lambda x: x * x),
    ("qint16", -777, "YSYM", "curvature", torch.cosh),
    ("qint8", 0, "ASYM", "evenly", torch.sigmoid),
    ("qint8", 5, "CSYM", "evenly", torch.atan),
    ("quint8", 100, "YSYM", "evenly", lambda x: x.abs().sqrt()),
]


@pytest.mark.parametrize("in_dtype,in_zero,mode,strategy,fn", CORE_CASES)
def test_kernel_equals_plain_python_reference(in_dtype, in_zero, mode, strategy, fn):
    dt = eq.dtype.get_dtype(in_dtype)
    t = build_table(fn, in_dtype, 2.5 / dt.qmax, in_zero, "qint16", 1.5 / 32767, -3, symmetric_mode=mode,
                    strategy=strategy, input_range=(-2.0, 1.5) if dt.bits == 16 else None, gradients=None)
    codes = list(range(dt.qmin, dt.qmax + 1)) if dt.bits == 8 else \
        [dt.qmin, dt.qmax, 0, -1, 1, in_zero] + random.Random(0).sample(range(dt.qmin, dt.qmax + 1), 3000)
    got = lut_apply(torch.tensor(codes), t).tolist()
    attrs, entries = t.attrs(), t.entries.tolist()
    assert got == [lut_reference(q, attrs, entries) for q in codes]


def test_segmented_layout_follows_the_march():
    prof = eq.march.get_profile(eq.March.NASH_M)
    t = build_table(torch.sigmoid, "qint16", 8 / 32767, 0, "qint16", 1 / 32767, 0)
    assert len(t.shifts) == prof.lut_segments and t.intervals == prof.lut_segment_entries
    assert t.entries.numel() == prof.lut_segments * (prof.lut_segment_entries + 1) + 1
    for k, p in enumerate(t.shifts):  # each segment: 64 intervals of 2^p codes cover it
        assert (t.starts[k + 1] - t.starts[k]) <= prof.lut_segment_entries << p
    t8 = build_table(torch.sigmoid, "qint8", 8 / 127, 0, "qint8", 1 / 127, 0)
    assert t8.kind == "direct" and t8.entries.numel() == prof.lut_int8_entries


def test_direct_table_is_the_exactly_rounded_function():
    s_in, s_out = 6 / 127, 1 / 127
    t = build_table(torch.tanh, "qint8", s_in, 0, "qint8", s_out, 0)
    q = torch.arange(-128, 128)
    want = torch.round(torch.tanh(dequantize(q, s_in).double()) / s_out).clamp(-128, 127)
    assert torch.equal(lut_apply(q, t).long(), want.long())


def test_symmetric_modes_store_half_and_mirror():
    q = torch.arange(-32767, 32768)
    c = build_table(torch.tanh, "qint16", 4 / 32767, 0, "qint16", 1 / 32767, 0, symmetric_mode="CSYM")
    y = build_table(lambda x: x * x, "qint16", 4 / 32767, 0, "qint16", 16 / 32767, 0, symmetric_mode="YSYM")
    assert c.starts[0] == 0 and y.starts[0] == 0          # only x >= 0 is stored
    assert torch.equal(lut_apply(-q, c), -lut_apply(q, c))
    assert torch.equal(lut_apply(-q, y), lut_apply(q, y))


def test_dividing_points_are_the_segment_upper_bounds():
    s = 4 / 32767
    pts = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0]
    t = build_table(torch.tanh, "qint16", s, 0, "qint16", 1 / 32767, 0, dividing_points=pts, input_range=(-4, 4))
    assert list(t.starts[1:]) == [min(32767, math.floor(p / s)) for p in pts]
    few = build_table(torch.tanh, "qint16", s, 0, "qint16", 1 / 32767, 0, dividing_points=[0.0, 4.0],
                      input_range=(-4, 4))
    assert len(few.shifts) == 8 and math.floor(0.0 / s) in few.starts   # the widest are split


def _max_rel_error(t, fn, s_in, s_out, lo, hi):
    q = torch.arange(math.ceil(lo / s_in), math.floor(hi / s_in) + 1)
    exact = fn(dequantize(q, s_in).double())
    err = (dequantize(lut_apply(q, t), s_out).double() - exact).abs().max()
    return float(err / exact.abs().max())


def test_curvature_dividing_beats_even_dividing_where_the_function_bends():
    s_in, lo, hi = 10 / 32767, 0.1, 10.0
    s_out = 10 / 32767
    errs = {st: _max_rel_error(build_table(torch.reciprocal, "qint16", s_in, 0, "qint16", s_out, 0, strategy=st,
                                           input_range=(lo, hi)), torch.reciprocal, s_in, s_out, lo, hi)
            for st in ("evenly", "curvature")}
    assert errs["curvature"] * 20 < errs["evenly"], errs
    assert errs["curvature"] < 1e-4, errs


def test_extrapolation_uses_the_gradients_outside_the_input_range():
    s_in, s_out = 4 / 32767, 16 / 32767
    t = build_table(lambda x: x, "qint16", s_in, 0, "qint16", s_out, 0, input_range=(-1, 1), gradients=(2.0, 3.0))
    x = torch.tensor([-3.0, -2.0, 0.5, 2.0, 3.0])
    y = dequantize(lut_apply(quantize(x, s_in, 0, "qint16"), t), s_out)
    want = torch.tensor([-1 - 2 * 2.0, -1 - 2 * 1.0, 0.5, 1 + 3 * 1.0, 1 + 3 * 2.0])
    assert torch.allclose(y, want, atol=2e-3), y
    default = build_table(torch.exp, "qint16", s_in, 0, "qint16", 64 / 32767, 0, input_range=(-1, 1))
    y = dequantize(lut_apply(quantize(torch.tensor([1.5]), s_in, 0, "qint16"), default), 64 / 32767)
    assert abs(float(y) - (math.e + 0.5 * math.e)) < 0.02   # continues the last interval's slope


def test_inverse_func_gives_the_input_range_a_decreasing_function_needs():
    s_in, s_out = 20 / 32767, 1 / 32767
    t = build_table(lambda x: torch.exp(-x), "qint16", s_in, 0, "qint16", s_out, 0,
                    inverse_func=lambda y: -torch.log(y))
    assert t.in_range[0] == pytest.approx(0.0, abs=s_in) and t.in_range[1] == pytest.approx(20.0, abs=1e-3)
    neg = quantize(torch.tensor([-5.0, -0.5]), s_in, 0, "qint16")
    assert lut_apply(neg, t).tolist() == [32767, 32767]          # exp(-x) > 1 saturates
    assert _max_rel_error(t, lambda x: torch.exp(-x), s_in, s_out, 0, 20) < 1e-3


def test_building_is_deterministic_and_takes_milliseconds():
    kw = dict(strategy="curvature", input_range=(0.01, 10))
    t0 = time.perf_counter()
    a = build_table(torch.rsqrt, "qint16", 10 / 32767, 0, "qint16", 10 / 32767, 0, **kw)
    took = time.perf_counter() - t0
    b = build_table(torch.rsqrt, "qint16", 10 / 32767, 0, "qint16", 10 / 32767, 0, **kw)
    assert torch.equal(a.entries, b.entries) and a.attrs() == b.attrs()
    assert took < 0.05, f"{took * 1e3:.1f} ms"


# -- accuracy per function, on int16 inputs over the calibrated range ------------------------------
# bound: max |table - f(x)| over every input code of the calibrated range, relative to the peak
# |f| there (x is the dequantized code, so input quantization is not counted).
ACCURACY = [  # (name, function, calibrated range, bound)
    ("sigmoid", torch.sigmoid, (-8.0, 8.0), 1e-3),
    ("tanh", torch.tanh, (-4.0, 4.0), 1e-3),
    ("exp", torch.exp, (-8.0, 4.0), 1e-3),
    ("gelu", F.gelu, (-6.0, 6.0), 1e-3),
    ("silu", F.silu, (-8.0, 8.0), 1e-3),
    ("reciprocal", torch.reciprocal, (0.1, 10.0), 1e-3),
    ("rsqrt", torch.rsqrt, (0.01, 10.0), 1e-3),
    ("log", torch.log, (0.01, 10.0), 1e-3),
]


@pytest.mark.parametrize("name,fn,rng,bound", ACCURACY, ids=[a[0] for a in ACCURACY])
def test_int16_tables_are_accurate_over_the_calibrated_range(name, fn, rng, bound):
    lo, hi = rng
    x = torch.linspace(lo, hi, 4096).reshape(2, 2048)
    cm = calibrated(One(fn), [(x,)])
    op = the_lut_op(cm)
    assert isinstance(op, TableOp) and op.op == name
    t = op.table()
    s_in, s_out = t.in_scale, t.out_scale
    rel = _max_rel_error(t, lambda v: fn(v), s_in, s_out, lo, hi)
    print(f"\n{name:10s} range {rng}: max error {rel:.2e} of the peak (bound {bound:g}), "
          f"segments {t.starts}, shifts {t.shifts}")
    assert rel <= bound
    with torch.no_grad():  # the simulation is the table
        want = dequantize(lut_apply(quantize(x, s_in, 0, "qint16"), t), s_out)
        assert torch.equal(cm(x), want)


# -- simulation states ------------------------------------------------------------------------------
def test_float_and_calibration_use_the_exact_function_qat_its_gradient():
    x = torch.linspace(-6, 6, 1000).reshape(2, 500)
    cm = calibrated(One(torch.sigmoid), [(x,)])
    eq.set_fake_quantize(cm, eq.FakeQuantState.FLOAT)
    assert torch.equal(cm(x), torch.sigmoid(x))
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    val = cm(x)
    eq.set_fake_quantize(cm, eq.FakeQuantState.QAT)
    xg = x.clone().requires_grad_(True)
    y = cm(xg)
    assert torch.equal(y.detach(), val)                       # QAT forward = the table
    y.sum().backward()
    s = torch.sigmoid(x)
    assert torch.allclose(xg.grad, s * (1 - s), atol=2e-5)    # the exact gradient (at the fake-quantized input)


# -- export / convert: the IR reproduces the simulation bit for bit --------------------------------
def _pos(shape=(2, 3, 8, 16)):
    return lambda: torch.rand(shape) * 4 + 0.05


def _sym(scale=4.0, shape=(2, 3, 8, 16)):
    return lambda: (torch.rand(shape) * 2 - 1) * scale


IR_CASES = {
    "sigmoid": (torch.sigmoid, _sym(), "lut"),
    "tanh": (torch.tanh, _sym(), "lut"),
    "exp": (torch.exp, _sym(), "lut"),
    "log": (torch.log, _pos(), "lut"),
    "sqrt": (torch.sqrt, _pos(), "lut"),
    "rsqrt": (torch.rsqrt, _pos(), "lut"),
    "reciprocal": (torch.reciprocal, _pos(), "lut"),
    "gelu": (F.gelu, _sym(), "lut"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), _sym(), "lut"),
    "silu": (F.silu, _sym(), "lut"),
    "hardswish": (F.hardswish, _sym(), "lut"),
    "hardsigmoid": (F.hardsigmoid, _sym(), "lut"),
    "erf": (torch.erf, _sym(2.0), "lut"),
    "pow": (lambda x: x ** 3, _sym(2.0), "lut"),
    "softplus": (F.softplus, _sym(), "lut"),
    "mish": (F.mish, _sym(), "lut"),
    "elu": (lambda x: F.elu(x, 0.5), _sym(), "lut"),
    # the slope jumps from 1.76 to 1.05 at 0, inside one table segment: 0.11 % of the peak at int16
    "selu": (F.selu, _sym(), "lut", 1.2e-3),
    "celu": (lambda x: F.celu(x, 1.5), _sym(), "lut"),
    "log_sigmoid": (F.logsigmoid, _sym(), "lut"),
    "sin": (torch.sin, _sym(6.0), "lut"),
    "cos": (torch.cos, _sym(6.0), "lut"),
    "segment_lut": (eq.SegmentLUT(lambda x: torch.atan(2 * x), symmetric_mode="CSYM"), _sym(), "lut"),
    "softmax": (lambda x: torch.softmax(x, -1), _sym(6.0), "softmax"),
    "softmax_dim1": (lambda x: torch.softmax(x, 1), _sym(6.0), "softmax"),
    "layer_norm": (nn.LayerNorm(16), _sym(3.0), "layer_norm"),
}


@pytest.mark.parametrize("setter", [T16, T8], ids=["int16", "int8"])
@pytest.mark.parametrize("name", sorted(IR_CASES))
def test_table_ops_quant_ir_equals_validation_and_int_ir_equals_both(name, setter):
    fn, make, int_op, *kink = IR_CASES[name]
    torch.manual_seed(0)
    if isinstance(fn, nn.LayerNorm):
        with torch.no_grad():
            fn.weight.uniform_(0.5, 1.5)
            fn.bias.uniform_(-0.5, 0.5)
    xs = [(make(),) for _ in range(2)]
    cm = calibrated(One(fn), xs, setter)
    assert isinstance(the_lut_op(cm), LutOp)
    ir = eq.export(cm, xs[0])
    qg = eq.convert(ir, eq.March.NASH_M)
    assert int_op in [r["op"] for r in qg.summary()]
    x = make()
    with torch.no_grad():
        sim = cm(x)
    assert torch.equal(ir(x), sim)
    assert torch.equal(qg(x), sim)
    # against the exact function of the quantized input, saturated to the output's range
    op = the_lut_op(cm)
    (s_in, z_in), (s_out, z_out) = (op._scale_zero(fq) for fq in (op.in_fqs[0], op.out_fq))
    dt_in, dt_out = op.in_fqs[0].dtype, op.out_fq.dtype
    with torch.no_grad():
        ref = fn(dequantize(quantize(x, s_in, z_in, dt_in), s_in, z_in))
    ref = ref.clamp(s_out * (dt_out.qmin - z_out), s_out * (dt_out.qmax - z_out))
    tol = (kink[0] if kink else 1e-3) if setter is T16 else 0.01
    err, peak = (sim - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * peak + 1.01 * s_out, f"{name}: error {err:.3g}, peak {peak:.3g}, LSB {s_out:.3g}"


def test_division_by_a_tensor_is_a_reciprocal_table_and_a_multiply():
    torch.manual_seed(0)
    make = lambda: (torch.randn(4, 64) * 3, torch.rand(4, 64) * 4 + 0.25)  # noqa: E731
    model = One(lambda a, b: a / b, n_inputs=2)
    cm = calibrated(model, [make() for _ in range(3)])
    ir = eq.export(cm)
    qg = eq.convert(ir, eq.March.NASH_M)
    assert "lut_div" in [r["op"] for r in qg.summary()]
    a, b = make()
    with torch.no_grad():
        sim = cm(a, b)
    assert torch.equal(ir(a, b), sim) and torch.equal(qg(a, b), sim)
    op = the_lut_op(cm)
    qa, qb = (dequantize(quantize(v, *op._scale_zero(fq), fq.dtype), *op._scale_zero(fq))
              for v, fq in zip((a, b), op.in_fqs))
    s_out, _ = op._scale_zero(op.out_fq)
    ref = (qa / qb).clamp(-32768 * s_out, 32767 * s_out)
    assert (sim - ref).abs().max() <= 1.01 * s_out   # one rounding; the table's error is ~2^-15 relative


@pytest.mark.parametrize("flavour", ["integer", "qdq"])
def test_division_by_a_tensor_in_onnx_equals_the_integer_kernel(flavour, tmp_path):
    """The integer ONNX writer of ``lut_div`` (onnx_export/tables.divide) against the integer model,
    bit for bit in ONNX Runtime: negative divisors, divisors that quantize to 0 (x / 0 saturates,
    0 / 0 gives 0) and a broadcast divisor (ConvNeXt-V2's GRN divides by a per-sample mean)."""
    import onnxruntime as ort
    torch.manual_seed(0)
    make = lambda: (torch.randn(4, 8, 16) * 3, torch.randn(4, 8, 1) * 2)  # noqa: E731
    model = One(lambda a, b: a / b, n_inputs=2)
    cm = calibrated(model, [make() for _ in range(3)])
    qg = eq.convert(eq.export(cm), eq.March.NASH_M)
    a, b = make()
    a[0, 0, :4] = 0.0
    b[0, :2] = 0.0
    b[1, :2] = 1e-6
    path = str(tmp_path / f"div_{flavour}.onnx")
    eq.export_onnx(qg if flavour == "integer" else cm, path, (a, b), flavour=flavour)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    (y,) = sess.run(None, {names[0]: a.numpy(), names[1]: b.numpy()})
    with torch.no_grad():
        want = (qg(a, b) if flavour == "integer" else cm(a, b)).numpy()
    assert (y == want).all(), float(abs(y - want).max())


# -- the LUT report ---------------------------------------------------------------------------------
def test_report_gives_per_segment_errors_and_the_used_share_for_model_and_ir():
    from edgequant.lut import format_report, report

    x = torch.linspace(-4, 4, 2048).reshape(2, 1024)
    cm = calibrated(One(lambda v: torch.softmax(torch.tanh(v), -1)), [(x,)])
    rows = report(cm)
    assert [(r["op"], r["table"]) for r in rows] == [("tanh", "main"), ("softmax", "exp"), ("softmax", "recip")]
    main = rows[0]
    assert len(main["segments"]) == 8 and all(s["rel_error"] < 1e-3 for s in main["segments"])
    assert 0.5 < main["used_share"] <= 1.0
    ir_rows = report(eq.convert(eq.export(cm, x)))
    assert [r["segments"] for r in ir_rows] == [r["segments"] for r in rows]
    text = format_report(rows)
    assert "tanh" in text and "softmax" in text
    # a table built over the whole input type but fed a narrow range: most entries unused
    wide = build_table(torch.tanh, "qint16", 4 / 32767, 0, "qint16", 1 / 32767, 0, symmetric_mode="CSYM")
    import dataclasses
    from edgequant.lut.quality import _used_share
    assert _used_share(dataclasses.replace(wide, calibrated_range=(-0.5, 0.5))) < 0.2
