"""Integer lowering of the elementwise, shape, pool/reduce and batch-norm families.

Three kinds of checks:

1. Golden vectors: one-op quant-level graphs built by hand (chosen dtypes, asymmetric zero
   points, negative scalars, per-channel accumulators) are converted; the integer kernel's
   output is compared with plain-Python references (ints and Fractions, no torch arithmetic
   on the codes): (a) the integer formula the kernel documents, evaluated with the node's own
   multipliers/shifts, bit for bit everywhere (and every intermediate below 2^63); (b) the
   exact rational result ``round_half_even(real / s_out) + z_out``, bit for bit except where
   the exact value lies within 2^-12 LSB of a rounding tie (there: within 1).
2. One-op models (``CASES`` of ``test_op_coverage``): the integer model vs the quant-level
   graph (the simulation) within the bounds below, on >= 99.9% of the output elements (an op
   with bound 0 must agree on all of them).
3. The residual CNN: the integer model predicts the simulation's class on >= 99.5% of the
   test images (the issue's acceptance line).

Bounds, integer model vs simulation, in LSB of the op's output, required on >= 99.9% of the
elements (bound 0: on all of them). Measured over 3 batches: max LSB and share of elements that
differ at all, int16 / int8 templates:

| op (CASES of test_op_coverage) | bound | measured |
|---|---|---|
| relu (on its input's grid), max_pool, max_dim, min_dim, interpolate_nearest, pad, masked_fill, view, reshape, flatten, permute, transpose, squeeze, unsqueeze, contiguous, getitem_slicing, split, chunk | 0 | 0 / 0 |
| add, sub, add_scalar, rsub_scalar, float_functional, mul_scalar, clamp, relu6, cat, adaptive_avg_pool, mean, batchnorm_alone | 1 | 0 / 0 |
| mul, hardtanh, prelu, where (0.07%), stack (0.03%), avg_pool, sum (0.26%), leaky_relu (2.9%), interpolate_bilinear (2.2%) | 1 | 1 / 0 |

EXTRA_CASES (int16): bound 0 and measured 0 for where with a scalar, masked_fill(-inf) then
amax, nearest1d, reflect pad + index + flip; bound 1 for the rest, measured max 1 (at most 1%
of elements differ, 5.6% for bilinear with align_corners).

Why 1 LSB: both computations round once to the output grid, but the simulation rounds its
float32 intermediates on the way and the integer model uses a fixed-point multiplier (relative
error 2^-31). They differ only where the exact value is at, or within ~2^-20 LSB of, a rounding
tie. Exact ties are common when the real multipliers are simple ratios (leaky slope 0.1,
bilinear weights 1/4 and 3/4, averages over 4 or 9 values): the simulation's float32 errors
then pick a side arbitrarily, while the integer model rounds half to even (exactly when the
multiplier is a power of two, as with bilinear at an unchanged scale). Compare against a scalar
is bit exact on every code of the type (tested exhaustively); between two tensors it is exact
in real arithmetic.

The residual CNN, 1000 test images: the integer model predicts the simulation's class on 100%
of them (int8 and int16 templates).
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import edgequant as eq
from edgequant.convert import ConvertError, convert
from edgequant.dtype import get_dtype
from edgequant.export import export
from edgequant.ir import Graph, Node, QParams, Value
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8
from edgequant.qmath import dequantize, quantize
from edgequant.run import call_target

from reference_int import rounding_shift_right_scalar as rshift
from test_op_coverage import CASES, _inputs

BOUNDS = {
    **{n: 0 for n in ("relu", "max_pool", "max_dim", "min_dim", "interpolate_nearest", "view", "reshape", "flatten",
                      "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "getitem_slicing", "split",
                      "chunk", "pad", "masked_fill")},
    **{n: 1 for n in ("add", "sub", "add_scalar", "rsub_scalar", "float_functional", "mul", "mul_scalar", "clamp",
                      "relu6", "hardtanh", "leaky_relu", "prelu", "where", "cat", "stack", "avg_pool",
                      "adaptive_avg_pool", "mean", "sum", "interpolate_bilinear", "batchnorm_alone")},
}


def _x4():
    return torch.randn(2, 4, 8, 8)


class _AddBuffer(torch.nn.Module):
    """``x + buffer``: the buffer is a quantized constant."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.register_buffer("b", torch.randn(4, 1, 1))

    def forward(self, x):
        return self.dq(self.q(x) + self.b)


def _one(fn, n=1):
    from test_op_coverage import One

    return One(fn, n_inputs=n)


F_ = torch.nn.functional
# more one-op models (same form as CASES): name -> (model, input factory, bound in LSB)
EXTRA_CASES = {
    "where_scalar": (_one(lambda x: torch.where(x > 0, x, 0.0)), _x4, 0),
    "compare_two_tensors": (_one(lambda a, b: torch.where(a > b, a, b), 2), lambda: (_x4(), _x4()), 1),
    "masked_fill_ninf_amax": (_one(lambda x: x.masked_fill(x < -1, float("-inf")).amax(-1)), _x4, 0),
    "add_buffer": (_AddBuffer(), _x4, 1),
    "square": (_one(lambda x: x * x), _x4, 1),
    "add_relu_fused": (_one(lambda a, b: F_.relu(a + b), 2), lambda: (_x4(), _x4()), 1),
    "sub_relu6": (_one(lambda a, b: F_.relu6(a - b), 2), lambda: (_x4(), _x4()), 1),
    "maximum": (_one(torch.maximum, 2), lambda: (_x4(), _x4()), 1),
    "clamp_max": (_one(lambda x: x.clamp(max=0.5)), _x4, 1),
    "neg_abs_div": (_one(lambda x: -x.abs() / 4), _x4, 1),
    "mean_keepdim": (_one(lambda x: x.mean(-1, keepdim=True)), _x4, 1),
    "avg_pool1d": (_one(lambda x: F_.avg_pool1d(x, 3, 2, 1)), lambda: torch.randn(2, 4, 9), 1),
    "adaptive_avg_pool1d": (_one(lambda x: F_.adaptive_avg_pool1d(x, 4)), lambda: torch.randn(2, 4, 9), 1),
    "nearest1d": (_one(lambda x: F_.interpolate(x, scale_factor=3, mode="nearest")), lambda: torch.randn(2, 4, 8), 0),
    "bilinear_size_align": (_one(lambda x: F_.interpolate(x, size=(5, 11), mode="bilinear", align_corners=True)),
                            _x4, 1),
    "pad_reflect_index_flip": (_one(lambda x: F_.pad(x, (1, 1, 1, 1), mode="reflect")[:, [0, 2]].flip(1)), _x4, 0),
}


TIE = Fraction(1, 2 ** 12)
INT64 = 2 ** 63


# == building one-op graphs ================================================================================
def f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def qp(dtype: str, scale, zp=0, ch_axis=None) -> QParams:
    if isinstance(scale, (list, tuple)):
        zps = zp if isinstance(zp, (list, tuple)) else [zp] * len(scale)
        return QParams(dtype, tuple(f32(s) for s in scale), tuple(zps), ch_axis)
    return QParams(dtype, (f32(scale),), (zp,))


def build(op, target, ins, args, out_qp=None, kwargs=None, consts=None, fused=None, out_bool=False):
    """A quant-level graph: quantize each input, one ``op`` node, dequantize.

    ``ins``: ``[(shape, QParams)]``, or ``(shape, "bool")`` for a mask input; node inputs are the
    inputs in order, then ``consts`` (``{name: tensor}``) in order. ``fused``: ``(target, args,
    QParams)`` of a relu/clamp the op is fused into.
    """
    values, nodes, inputs, node_ins, examples = {}, [], [], [], []
    for i, (shape, q) in enumerate(ins):
        x = f"x{i}"
        inputs.append(x)
        if q == "bool":
            values[x] = Value(x, tuple(shape), "bool")
            node_ins.append(x)
            examples.append(torch.zeros(shape, dtype=torch.bool))
            continue
        values[x] = Value(x, tuple(shape), "float32")
        values[f"q{i}"] = Value(f"q{i}", tuple(shape), "float32", q)
        nodes.append(Node(f"quant{i}", "quantize", (x,), (f"q{i}",), {"fq": True}))
        node_ins.append(f"q{i}")
        examples.append(torch.zeros(shape))
    consts = dict(consts or {})
    for name, t in consts.items():
        values[name] = Value(name, tuple(t.shape), "float32")
        node_ins.append(name)
        examples.append(t)
    attrs = {"target": target, "args": args, "kwargs": kwargs or {}}
    probe = Node("probe", op, tuple(node_ins), ("y",), attrs)
    res = call_target(probe, examples)
    extra = list(res[1:]) if isinstance(res, tuple) else []   # e.g. the indices of a max pooling
    y_shape = tuple((res[0] if isinstance(res, tuple) else res).shape)
    outs = ("y", *[f"y{k + 1}" for k in range(len(extra))])
    for k, t in enumerate(extra):
        values[f"y{k + 1}"] = Value(f"y{k + 1}", tuple(t.shape), str(t.dtype).replace("torch.", ""))
    if fused is not None:
        attrs["fused_into"] = "act"
        values["y"] = Value("y", y_shape, "float32")
        a_target, a_args, a_qp = fused
        nodes.append(Node("op", op, tuple(node_ins), ("y",), attrs))
        values["a"] = Value("a", y_shape, "float32", a_qp)
        nodes.append(Node("act", "relu" if "relu." in a_target else "clamp", ("y",), ("a",),
                          {"target": a_target, "args": [{"$in": 0}, *a_args], "kwargs": {}, "fq": True}))
        last = "a"
    else:
        values["y"] = Value("y", y_shape, "bool" if out_bool else "float32", out_qp)
        nodes.append(Node("op", op, tuple(node_ins), outs, {**attrs, "fq": out_qp is not None}))
        last = "y"
    values["out"] = Value("out", y_shape, "bool" if out_bool else "float32")
    nodes.append(Node("dequant", "dequantize", (last,), ("out",), {}))
    return Graph("quant", inputs, ["out"], values, nodes, consts, {"version": 1})


def codes_for(shape, q: QParams, gen, lo=None, hi=None) -> torch.Tensor:
    """Random codes over the type (or ``[lo, hi]``), with the range ends and the zero point."""
    dt = get_dtype(q.dtype)
    lo = dt.qmin if lo is None else lo
    hi = dt.qmax if hi is None else hi
    c = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).flatten()
    edges = torch.tensor([lo, hi, min(max(q.zero_point[0], lo), hi)])
    c[: min(3, c.numel())] = edges[: min(3, c.numel())]
    return c.reshape(shape)


def run_graph(g: Graph, codes: list, gen=None):
    """Run the quant graph and its conversion on inputs whose codes are ``codes``.

    Returns ``(sim output, int graph, int env)``; masks (``codes`` entries of dtype bool) pass as is.
    """
    xs = []
    for name, c in zip(g.inputs, codes):
        v = g.values[f"q{name[1:]}"] if f"q{name[1:]}" in g.values else None
        if c.dtype == torch.bool:
            xs.append(c)
        else:
            q = v.qparams
            xs.append(dequantize(c, q.scale_tensor(), q.zero_point_tensor(), q.ch_axis))
    sim = g(*xs)
    qm = convert(g, "nash-m")
    _, env = qm(*xs, return_intermediates=True)
    return sim, qm, env


def op_node(qm: Graph) -> Node:
    return next(n for n in qm.nodes if n.name == "op")


def flat(t: torch.Tensor) -> list:
    return [int(v) for v in t.flatten().tolist()]


def channel_of(shape, axis):
    """Function: flat index -> channel index along the (negative) ``axis`` of ``shape``."""
    if axis is None:
        return lambda i: 0
    stride = math.prod(shape[axis + 1:]) if axis != -1 else 1
    n = shape[axis]
    return lambda i: (i // stride) % n


def pick(v, c):
    return v[c] if isinstance(v, list) else v


# == plain-Python references =================================================================================
def ref_affine(a: dict, ins: list[list[int]], shape) -> list[int]:
    """The ``affine`` kernel's documented formula, in Python ints (checks the int64 bound too)."""
    ch = channel_of(shape, a["axis"])
    qmin, qmax = get_dtype(a["out_dtype"]).qmin, get_dtype(a["out_dtype"]).qmax
    out = []
    for i in range(math.prod(shape)):
        c = ch(i)
        acc = pick(a["const"], c)
        for t in a["terms"]:
            d = ins[t["in"]][i] - pick(t["zp"], c)
            m = pick(t["m0"], c) if t["m0_neg"] is None or d >= 0 else pick(t["m0_neg"], c)
            acc += d * m
            assert abs(acc) < INT64
        y = rshift(acc, pick(a["shift"], c)) + a["out_zp"]
        out.append(min(max(y, a["lo"], qmin), a["hi"], qmax))
    return out


def ref_exact(reals: list[Fraction], q: QParams, lo=None, hi=None) -> list[tuple[int, bool]]:
    """``(clamp(round_half_even(r / s) + z), near a tie?)`` for each exact real ``r``."""
    dt = get_dtype(q.dtype)
    lo = dt.qmin if lo is None else max(lo, dt.qmin)
    hi = dt.qmax if hi is None else min(hi, dt.qmax)
    s, z = Fraction(q.scale[0]), q.zero_point[0]
    out = []
    for r in reals:
        v = r / s
        near = abs(v - math.floor(v) - Fraction(1, 2)) < TIE
        out.append((min(max(round(v) + z, lo), hi), near))
    return out


def assert_exact(got: list[int], want: list[tuple[int, bool]]) -> None:
    assert len(got) == len(want)
    for k, (g, (w, near)) in enumerate(zip(got, want)):
        assert abs(g - w) <= (1 if near else 0), f"element {k}: kernel {g}, exact {w}{' (near a tie)' if near else ''}"


def reals_of(c: list[int], q: QParams, shape=None, axis=None) -> list[Fraction]:
    if q.ch_axis is None:
        s, z = Fraction(q.scale[0]), q.zero_point[0]
        return [s * (v - z) for v in c]
    ch = channel_of(shape, axis)
    return [Fraction(q.scale[ch(i)]) * (v - q.zero_point[ch(i)]) for i, v in enumerate(c)]


def lsb_diff(sim: torch.Tensor, int_codes: torch.Tensor, q: QParams) -> torch.Tensor:
    """``|q_int - q_sim|``: the simulation's output is on the grid, so (A1) recovers its codes."""
    q_sim = quantize(sim, q.scale_tensor(), q.zero_point_tensor(), q.dtype)
    return (int_codes.to(torch.int64) - q_sim.to(torch.int64)).abs()


def assert_within(sim: torch.Tensor, int_codes: torch.Tensor, q: QParams, bound: int) -> None:
    """The integer output against the simulation, in LSB."""
    d = lsb_diff(sim, int_codes, q)
    assert int(d.max()) <= bound, f"max {int(d.max())} LSB"


# == golden vectors: affine ops ===================================================================================
S = (2, 3, 4, 5)
Q8A = qp("quint8", 0.037, 131)        # asymmetric unsigned
Q8 = qp("qint8", 0.05)
Q16 = qp("qint16", 1.3e-4, 0)
Q16A = qp("qint16", 2.1e-4, -1200)    # asymmetric signed


def _x(i):
    return {"$in": i}


AFFINE_CASES = {
    # name: (op, target, inputs, args, out qparams, kwargs, real function of the input reals)
    "add_asym": ("add", "aten.add.Tensor", [Q8A, Q8], [_x(0), _x(1)], qp("quint8", 0.06, 120), {},
                 lambda a, b: a + b),
    "add_alpha_16": ("add", "aten.add.Tensor", [Q16, Q16A], [_x(0), _x(1)], qp("qint16", 3.3e-4, 17), {"alpha": 2},
                     lambda a, b: a + 2 * b),
    "add_scalar": ("add", "aten.add.Tensor", [Q16A], [_x(0), 0.37], qp("qint16", 2.5e-4), {},
                   lambda a: a + Fraction(0.37)),
    "sub": ("sub", "aten.sub.Tensor", [Q8, Q8A], [_x(0), _x(1)], qp("qint8", 0.09, 3), {}, lambda a, b: a - b),
    "sub_scalar": ("sub", "aten.sub.Tensor", [Q8A], [_x(0), 1], qp("qint8", 0.04), {}, lambda a: a - 1),
    "rsub_scalar": ("sub", "aten.rsub.Scalar", [Q16A], [_x(0), 1.5], qp("qint16", 3e-4, 5), {},
                    lambda a: Fraction(1.5) - a),
    "mul_neg_scalar": ("mul", "aten.mul.Tensor", [Q8A], [_x(0), -2.5], qp("qint8", 0.2), {},
                       lambda a: Fraction(-2.5) * a),
    "div_scalar": ("div", "aten.div.Tensor", [Q16], [_x(0), -3], qp("qint16", 5e-5), {}, lambda a: a / -3),
    "neg": ("neg", "aten.neg.default", [Q16A], [_x(0)], qp("qint16", 2.1e-4, 1200), {}, lambda a: -a),
    "abs": ("abs", "aten.abs.default", [Q8A], [_x(0)], qp("quint8", 0.02, 0), {}, abs),
    "relu_asym": ("relu", "aten.relu.default", [Q8A], [_x(0)], Q8A, {}, lambda a: max(a, 0)),
    "relu_rescaled": ("relu", "aten.relu.default", [Q16A], [_x(0)], qp("quint8", 0.03, 0), {}, lambda a: max(a, 0)),
    "relu6": ("clamp", "aten.relu6.default", [Q8A], [_x(0)], qp("quint8", 0.0235, 0), {},
              lambda a: min(max(a, 0), 6)),
    "hardtanh": ("clamp", "aten.hardtanh.default", [Q16A], [_x(0), -0.5, 0.7], qp("qint16", 2.2e-5, 3), {},
                 lambda a: min(max(a, Fraction(f32(-0.5))), Fraction(f32(0.7)))),
    "clamp_min": ("clamp", "aten.clamp_min.default", [Q8], [_x(0), -1], qp("qint8", 0.04, 60), {},
                  lambda a: max(a, -1)),
    "leaky_relu": ("leaky_relu", "aten.leaky_relu.default", [Q8A], [_x(0), 0.1], qp("qint8", 0.03, -20), {},
                   lambda a: a if a >= 0 else Fraction(0.1) * a),
}


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_affine_kernels_match_python_ints_and_exact_rounding(name):
    op, target, in_qps, args, out_qp, kwargs, fn = AFFINE_CASES[name]
    gen = torch.Generator().manual_seed(hash(name) % 2 ** 31)
    g = build(op, target, [(S, q) for q in in_qps], args, out_qp, kwargs)
    codes = [codes_for(S, q, gen) for q in in_qps]
    sim, qm, env = run_graph(g, codes)
    node = op_node(qm)
    assert node.attrs["kernel"] == "affine"
    ins = [flat(env[i]) for i in node.inputs]
    got = flat(env["y"])
    assert got == ref_affine(node.attrs, ins, S)
    reals = [fn(*vals) for vals in zip(*[reals_of(c, q) for c, q in zip(ins, in_qps)])]
    assert_exact(got, ref_exact(reals, out_qp))
    assert_within(sim, env["y"], out_qp, 1)


def test_affine_kernel_with_ties():
    """Values exactly halfway between two output codes round to the even one."""
    # input step 0.5 of the output step: every odd code is a tie
    q_in, q_out = qp("qint8", 0.25), qp("qint8", 0.5)
    g = build("clamp", "aten.clamp.default", [((256,), q_in)], [_x(0), -100.0, 100.0], q_out)
    codes = torch.arange(-128, 128)
    _, qm, env = run_graph(g, [codes])
    assert flat(env["y"]) == [round(Fraction(c, 2)) for c in range(-128, 128)]  # Python's round: half to even


def test_prelu_per_channel_slopes_and_batch_norm():
    gen = torch.Generator().manual_seed(1)
    slopes = torch.tensor([0.25, -0.5, 0.0])
    out_qp = qp("qint16", 1.1e-4, 7)
    g = build("prelu", "aten.prelu.default", [(S, Q16A)], [_x(0), _x(1)], out_qp,
              consts={"w": slopes})
    c = codes_for((2, 3, 4, 5), Q16A, gen)
    sim, qm, env = run_graph(g, [c])
    node = op_node(qm)
    got = flat(env["y"])
    assert got == ref_affine(node.attrs, [flat(env["q0"])], (2, 3, 4, 5))
    ch = channel_of((2, 3, 4, 5), -3)
    reals = [r if r >= 0 else Fraction(f32(float(slopes[ch(i)]))) * r
             for i, r in enumerate(reals_of(flat(env["q0"]), Q16A))]
    want = ref_exact(reals, out_qp)
    assert_exact(got, want)
    assert_within(sim, env["y"], out_qp, 1)

    w, b = torch.tensor([1.5, -0.7, 0.2]), torch.tensor([0.1, 0.0, -2.0])
    mean, var = torch.tensor([0.3, -0.2, 1.0]), torch.tensor([0.5, 2.0, 0.1])
    out_qp = qp("qint8", 0.05, -3)
    g = build("batch_norm", "aten.batch_norm.default", [((2, 3, 4, 5), Q8A)],
              [_x(0), _x(1), _x(2), _x(3), _x(4), False, 0.1, 1e-5, False], out_qp,
              consts={"w": w, "b": b, "m": mean, "v": var})
    c = codes_for((2, 3, 4, 5), Q8A, gen)
    sim, qm, env = run_graph(g, [c])
    node = op_node(qm)
    assert node.inputs == ("q0",)  # the float parameters are folded into integer attrs
    got = flat(env["y"])
    assert got == ref_affine(node.attrs, [flat(env["q0"])], (2, 3, 4, 5))
    a = [Fraction(float(wi)) / Fraction(math.sqrt(float(vi) + 1e-5)) for wi, vi in zip(w.double(), var.double())]
    reals = [a[ch(i)] * r + Fraction(float(b.double()[ch(i)])) - Fraction(float(mean.double()[ch(i)])) * a[ch(i)]
             for i, r in enumerate(reals_of(flat(env["q0"]), Q8A))]
    # the fold uses float64 for 1/sqrt: allow ties within 2^-12 (the fold error is ~2^-40 LSB)
    assert_exact(got, ref_exact(reals, out_qp))
    assert_within(sim, env["y"], out_qp, 1)


def test_conv_add_fusion_with_per_channel_accumulator_and_relu():
    """An add of a per-channel qint32 accumulator and an int16 tensor, fused into a relu."""
    gen = torch.Generator().manual_seed(2)
    shape = (2, 3, 4, 4)
    acc_qp = qp("qint32", [1.2e-7, 3.3e-8, 7.7e-7], 0, ch_axis=1)
    relu_qp = qp("qint16", 2.4e-4)
    g = build("add", "aten.add.Tensor", [(shape, acc_qp), (shape, Q16)], [_x(0), _x(1)],
              fused=("aten.relu.default", [], relu_qp))
    acc = torch.randint(-2 ** 22, 2 ** 22, shape, generator=gen)
    sim, qm, env = run_graph(g, [acc, codes_for(shape, Q16, gen)])
    node = op_node(qm)
    assert node.attrs["fused_activation"] == "act" and node.attrs["axis"] == -3
    assert isinstance(node.attrs["shift"], list) and len(node.attrs["shift"]) == 3   # per-channel common shift
    act = next(n for n in qm.nodes if n.name == "act")
    assert act.op == "identity" and act.inputs == ("y",)
    got = flat(env["y"])
    assert got == ref_affine(node.attrs, [flat(env["q0"]), flat(env["q1"])], shape)
    ra = reals_of(flat(env["q0"]), acc_qp, shape, -3)
    rb = reals_of(flat(env["q1"]), Q16)
    assert_exact(got, ref_exact([max(a + b, 0) for a, b in zip(ra, rb)], relu_qp))
    assert_within(sim, env["a"], relu_qp, 1)


# == golden vectors: products, comparisons, moves ======================================================================
def test_product_kernel():
    gen = torch.Generator().manual_seed(3)
    out_qp = qp("qint16", 3.1e-4, 11)
    g = build("mul", "aten.mul.Tensor", [(S, Q8A), (S, Q16A)], [_x(0), _x(1)], out_qp)
    sim, qm, env = run_graph(g, [codes_for(S, Q8A, gen), codes_for(S, Q16A, gen)])
    a = op_node(qm).attrs
    assert a["kernel"] == "product"
    qa, qb = flat(env["q0"]), flat(env["q1"])
    dt = get_dtype(out_qp.dtype)
    want = []
    for x, y in zip(qa, qb):
        v = (x - a["zp"][0]) * (y - a["zp"][1])
        assert abs(v) * a["m0"] < INT64
        want.append(min(max(rshift(v * a["m0"], a["shift"]) + a["out_zp"], dt.qmin), dt.qmax))
    got = flat(env["y"])
    assert got == want
    ra, rb = reals_of(qa, Q8A), reals_of(qb, Q16A)
    assert_exact(got, ref_exact([x * y for x, y in zip(ra, rb)], out_qp))
    assert_within(sim, env["y"], out_qp, 1)


def _f32_py(x) -> float:
    """Round a Python number (exact in float64) to float32, in Python (struct: ties to even)."""
    import struct

    return struct.unpack("f", struct.pack("f", float(x)))[0]


@pytest.mark.parametrize("fn", ["gt", "ge", "lt", "le", "eq", "ne"])
@pytest.mark.parametrize("q_in", [Q8A, Q16A], ids=["quint8", "qint16"])
def test_compare_thresholds_are_exact_on_every_code(fn, q_in):
    dt = get_dtype(q_in.dtype)
    codes = torch.arange(dt.qmin, dt.qmax + 1)
    s, z = Fraction(q_in.scale[0]), q_in.zero_point[0]
    # plain Python: the simulation's float32 dequantization ((q - z) * s is exact in a double)
    deq = [_f32_py((q - z) * q_in.scale[0]) for q in range(dt.qmin, dt.qmax + 1)]
    ops = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
           "le": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}
    for c in (0.0, float(s * 7), float(s * -3) + 1e-9, 0.1, -1e9, 1e9):
        g = build("compare", f"aten.{fn}.Scalar", [((codes.numel(),), q_in)], [_x(0), c], out_bool=True)
        sim, qm, env = run_graph(g, [codes])
        assert op_node(qm).attrs["kernel"] == "interval"
        got = env["y"].tolist()
        assert got == sim.tolist()                       # bit exact against the simulation
        # ... compared with float32(c)
        cf = _f32_py(c)
        want = [ops[fn](v, cf) for v in deq]
        assert got == want


def test_compare_two_tensors_is_exact_in_real_arithmetic():
    gen = torch.Generator().manual_seed(4)
    qa, qb = qp("qint16", 1.3e-4, 5), qp("qint8", 0.031, -2)
    n = 4000
    ca = codes_for((n,), qa, gen)
    cb = codes_for((n,), qb, gen)
    ca[3:100] = torch.tensor([(int(b) + 2) * 0.031 / 1.3e-4 for b in cb[3:100]]).round().long() + 5  # near-equal pairs
    for fn in ("gt", "le", "eq"):
        g = build("compare", f"aten.{fn}.Tensor", [((n,), qa), ((n,), qb)], [_x(0), _x(1)], out_bool=True)
        _, qm, env = run_graph(g, [ca, cb])
        assert op_node(qm).attrs["kernel"] == "compare2"
        ra, rb = reals_of(flat(env["q0"]), qa), reals_of(flat(env["q1"]), qb)
        want = [{"gt": x > y, "le": x <= y, "eq": x == y}[fn] for x, y in zip(ra, rb)]
        assert env["y"].tolist() == want


@pytest.mark.parametrize("kind", ["cat", "stack", "where", "maximum", "minimum", "clamp_tensor"])
def test_rescale_call_ops(kind):
    gen = torch.Generator().manual_seed(5)
    out_qp = qp("qint16", 2.0e-4, -9)
    ins, args, target = [(S, Q16A), (S, Q8A)], [_x(0), _x(1)], f"aten.{kind}.default"
    if kind in ("cat", "stack"):
        args = [[_x(0), _x(1)], 1]
    elif kind == "where":
        ins, args, target = [(S, "bool"), (S, Q16A), (S, Q8A)], [_x(0), _x(1), _x(2)], "aten.where.self"
    elif kind == "clamp_tensor":
        ins, args, target = [(S, Q16A), (S, Q8A), (S, Q8)], [_x(0), _x(1), _x(2)], "aten.clamp.Tensor"
    op = {"clamp_tensor": "clamp"}.get(kind, kind)
    g = build(op, target, ins, args, out_qp)
    codes = [torch.rand(S, generator=gen) > 0.5 if q == "bool" else codes_for(S, q, gen) for _, q in ins]
    sim, qm, env = run_graph(g, codes)
    assert op_node(qm).attrs["kernel"] == "rescale_call"
    # plain Python: each quantized input rounded onto the output grid, then the op on codes
    moved, near = [], []
    for k, (_, q) in enumerate(ins):
        if q == "bool":
            moved.append(flat(codes[k].long()))
            near.append([False] * math.prod(S))
            continue
        e = ref_exact(reals_of(flat(env[f"q{k}"]), q), out_qp)
        moved.append([w for w, _ in e])
        near.append([t for _, t in e])
    if kind == "cat":
        want = torch.cat([torch.tensor(m).reshape(S) for m in moved], 1)
    elif kind == "stack":
        want = torch.stack([torch.tensor(m).reshape(S) for m in moved], 1)
    else:
        fns = {"where": lambda c, a, b: a if c else b, "maximum": max, "minimum": min,
               "clamp_tensor": lambda x, lo, hi: min(max(x, lo), hi)}
        want = torch.tensor([fns[kind](*v) for v in zip(*moved)]).reshape(S)
    got = env["y"].to(torch.int64)
    if not any(any(n) for n in near):
        assert torch.equal(got, want)
    assert int((got - want).abs().max()) <= 1
    assert_within(sim, env["y"], out_qp, 1)


def test_pad_and_masked_fill_quantize_their_value():
    gen = torch.Generator().manual_seed(6)
    c = codes_for(S, Q8A, gen)
    g = build("pad", "aten.pad.default", [(S, Q8A)], [_x(0), [1, 2]])                     # zero padding
    sim, qm, env = run_graph(g, [c])
    got = env["y"]
    assert flat(got[..., :1]) == [Q8A.zero_point[0]] * (2 * 3 * 4) and flat(got[..., 1:6]) == flat(c)
    g = build("pad", "aten.constant_pad_nd.default", [(S, Q8A)], [_x(0), [1, 0], 0.3])
    _, qm, env = run_graph(g, [c])
    assert flat(env["y"][..., :1]) == [round(Fraction(f32(0.3)) / Fraction(Q8A.scale[0])) + 131] * 24
    mask = torch.rand(S, generator=gen) > 0.5
    for value, code in ((float("-inf"), 0), (float("inf"), 255), (0.25, 131 + round(Fraction(0.25) / Fraction(Q8A.scale[0])))):
        g = build("masked_fill", "aten.masked_fill.Scalar", [(S, Q8A), (S, "bool")], [_x(0), _x(1), value])
        _, qm, env = run_graph(g, [c, mask])
        want = [code if m else v for v, m in zip(flat(c), mask.flatten().tolist())]
        assert flat(env["y"]) == want


@pytest.mark.parametrize("target,args", [
    ("aten.max_pool1d.default", [_x(0), [3], [2], [1]]),
    ("aten.adaptive_max_pool2d.default", [_x(0), [3, 2]]),
    ("aten.upsample_nearest2d.vec", [_x(0), None, [2.0, 1.5]]),
    ("aten.max_pool2d.default", [_x(0), [2, 2], [2, 2], [1, 1], [1, 1], True]),
], ids=["max_pool1d", "adaptive_max_pool2d", "nearest", "max_pool2d_ceil"])
def test_ops_that_move_codes_are_bit_exact(target, args):
    gen = torch.Generator().manual_seed(7)
    shape = (2, 3, 5) if "1d" in target else (2, 3, 5, 7)
    op = "interpolate_nearest" if "nearest" in target else "max_pool"
    g = build(op, target, [(shape, Q8A)], args)
    g.values["y"] = Value("y", g.values["y"].shape, "float32", Q8A)  # shared grid, as export writes it
    c = codes_for(shape, Q8A, gen)
    sim, qm, env = run_graph(g, [c])
    assert env["y"].dtype == torch.uint8
    assert torch.equal(dequantize(env["y"], Q8A.scale[0], Q8A.zero_point[0]), sim)


# == golden vectors: pooling, reductions, interpolation ===================================================================
def _windows(n_in, n_out, k, s, p, adaptive):
    """torch's windows, written out: ``[(start, end, pool size)]`` per output index."""
    res = []
    for o in range(n_out):
        if adaptive:
            st, en = (o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)
            res.append((st, en, en - st))
        else:
            st = o * s - p
            en = min(st + k, n_in + p)
            res.append((max(st, 0), min(en, n_in), en - st))
    return res


@pytest.mark.parametrize("target,args,q_in", [
    ("aten.avg_pool2d.default", [_x(0), [3, 3], [2, 2], [1, 1], False, True], Q16A),
    ("aten.avg_pool2d.default", [_x(0), [3, 2], [2, 2], [1, 1], True, False], Q8A),
    ("aten.avg_pool2d.default", [_x(0), [2, 2], [2, 2], [0, 0], False, True, 3], Q8),
    ("aten.adaptive_avg_pool2d.default", [_x(0), [3, 2]], Q16A),
    ("aten.avg_pool1d.default", [_x(0), [3], [1], [1], False, False], Q8A),
], ids=["pad_include", "ceil_exclude", "divisor_override", "adaptive_7to3", "1d"])
def test_avg_pool_window_sums(target, args, q_in):
    gen = torch.Generator().manual_seed(8)
    shape = (2, 3, 7) if "1d" in target else (2, 3, 7, 5)
    out_qp = qp(q_in.dtype, q_in.scale[0] * 0.61, 3)
    g = build("avg_pool", target, [(shape, q_in)], args, out_qp)
    c = codes_for(shape, q_in, gen)
    sim, qm, env = run_graph(g, [c])
    node = op_node(qm)
    m0, sh = qm.constants[node.inputs[1]], qm.constants[node.inputs[2]]
    y_shape = tuple(env["y"].shape)
    k = len(shape) - 2
    adaptive = "adaptive" in target
    ks = args[1] if not adaptive else [None] * k
    ss = args[2] if not adaptive else [None] * k
    ps = args[3] if not adaptive else [None] * k
    include = args[5] if len(args) > 5 and not adaptive else False
    override = args[6] if len(args) > 6 else None
    wins = [_windows(shape[2 + d], y_shape[2 + d], ks[d], ss[d], ps[d], adaptive) for d in range(k)]
    qin = torch.tensor(flat(env["q0"])).reshape(shape).tolist()
    z, zo = q_in.zero_point[0], out_qp.zero_point[0]
    dt = get_dtype(out_qp.dtype)
    got, want, exact = flat(env["y"]), [], []
    for b in range(2):
        for ch in range(3):
            for pos in (((i,) for i in range(y_shape[2])) if k == 1 else
                        ((i, j) for i in range(y_shape[2]) for j in range(y_shape[3]))):
                w = [wins[d][pos[d]] for d in range(k)]
                rows = qin[b][ch]
                if k == 1:
                    vals = [rows[x] for x in range(w[0][0], w[0][1])]
                else:
                    vals = [rows[x][y] for x in range(w[0][0], w[0][1]) for y in range(w[1][0], w[1][1])]
                total = sum(v - z for v in vals)
                count = math.prod(e - s_ for s_, e, _ in w)
                div = override or (math.prod(p for *_, p in w) if include else count)
                mm, nn = (int(m0[pos]), int(sh[pos])) if k == 2 else (int(m0[pos[0]]), int(sh[pos[0]]))
                assert abs(total) * mm < INT64
                want.append(min(max(rshift(total * mm, nn) + zo, dt.qmin), dt.qmax))
                exact.append(Fraction(q_in.scale[0]) * total / div)
    assert got == want
    assert_exact(got, ref_exact(exact, out_qp))
    assert_within(sim, env["y"], out_qp, 1)


@pytest.mark.parametrize("target,args", [
    ("aten.mean.dim", [_x(0), [2, 3], True]), ("aten.mean.default", [_x(0)]),
    ("aten.sum.dim_IntList", [_x(0), [1]]), ("aten.sum.dim_IntList", [_x(0), [-1], True]),
])
def test_mean_and_sum(target, args):
    gen = torch.Generator().manual_seed(9)
    q_in = Q16A
    op = "mean" if "mean" in target else "sum"
    out_qp = qp("qint16", 1.1e-4 if op == "mean" else 2.3e-3, -4)
    g = build(op, target, [(S, q_in)], args, out_qp)
    sim, qm, env = run_graph(g, [codes_for(S, q_in, gen)])
    a = op_node(qm).attrs
    dims = a["dims"]
    qin = torch.tensor(flat(env["q0"])).reshape(S)
    # plain Python sums over the reduced dims
    keep = [d for d in range(4) if d not in dims]
    groups: dict = {}
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in S]).tolist():
        key = tuple(idx[d] for d in keep)
        groups.setdefault(key, []).append(int(qin[tuple(idx)]) - q_in.zero_point[0])
    dt = get_dtype(out_qp.dtype)
    want, exact = [], []
    for key in sorted(groups):
        t = sum(groups[key])
        assert abs(t) * a["m0"] < INT64
        want.append(min(max(rshift(t * a["m0"], a["shift"]) + a["out_zp"], dt.qmin), dt.qmax))
        n = len(groups[key]) if op == "mean" else 1
        exact.append(Fraction(q_in.scale[0]) * t / n)
    got = flat(env["y"])
    assert got == want
    assert_exact(got, ref_exact(exact, out_qp))
    assert_within(sim, env["y"], out_qp, 1)


def _taps_py(n_in, n_out, align, scale):
    """torch's bilinear source index and lambda, in Python with float32 rounding (struct)."""
    if n_in == n_out:
        return [(i, i, 0.0) for i in range(n_out)]
    if align:
        ratio = _f32_py(_f32_py(n_in - 1) / _f32_py(n_out - 1)) if n_out > 1 else 0.0
    else:
        ratio = _f32_py(1.0 / scale) if scale else _f32_py(_f32_py(n_in) / _f32_py(n_out))
    out = []
    for o in range(n_out):
        src = _f32_py(ratio * o) if align else max(_f32_py(_f32_py(ratio * _f32_py(o + 0.5)) - 0.5), 0.0)
        i0 = min(math.floor(src), n_in - 1)
        lam = min(max(_f32_py(src - i0), 0.0), 1.0)
        out.append((i0, i0 + (1 if i0 < n_in - 1 else 0), lam))
    return out


@pytest.mark.parametrize("args", [
    [_x(0), None, False, [2.0, 2.0]], [_x(0), [7, 11], True, None], [_x(0), [3, 4], False, None],
], ids=["x2", "align_corners", "downscale"])
def test_bilinear_fixed_point_weights(args):
    gen = torch.Generator().manual_seed(10)
    shape = (1, 2, 5, 6)
    out_qp = qp("qint16", Q16A.scale[0] * 0.9, 2)
    g = build("interpolate_bilinear", "aten.upsample_bilinear2d.vec", [(shape, Q16A)], args, out_qp)
    sim, qm, env = run_graph(g, [codes_for(shape, Q16A, gen)])
    a = op_node(qm).attrs
    y_shape = tuple(env["y"].shape)
    one = 1 << 16
    taps = []
    for d in range(2):
        scale = args[3][d] if args[3] else None
        py = _taps_py(shape[2 + d], y_shape[2 + d], args[2], scale)
        tp = a["taps"][d]
        assert tp["i0"] == [t[0] for t in py] and tp["i1"] == [t[1] for t in py]
        assert tp["w1"] == [round(Fraction(t[2]) * one) for t in py]      # round half to even of lambda * 2^16
        assert all(w0 + w1 == one for w0, w1 in zip(tp["w0"], tp["w1"]))
        taps.append(py)
    qin = torch.tensor(flat(env["q0"])).reshape(shape).tolist()
    z = Q16A.zero_point[0]
    dt = get_dtype(out_qp.dtype)
    want, exact = [], []
    th, tw = a["taps"]
    for b in range(shape[0]):
        for c in range(shape[1]):
            for i in range(y_shape[2]):
                for j in range(y_shape[3]):
                    rows = [(th["i0"][i], th["w0"][i]), (th["i1"][i], th["w1"][i])]
                    cols = [(tw["i0"][j], tw["w0"][j]), (tw["i1"][j], tw["w1"][j])]
                    acc = sum((qin[b][c][r][k] - z) * wr * wc for r, wr in rows for k, wc in cols)
                    r_ = rshift(acc, a["drop"])
                    assert abs(r_) * a["m0"] < INT64
                    want.append(min(max(rshift(r_ * a["m0"], a["shift"]) + a["out_zp"], dt.qmin), dt.qmax))
                    exact.append(Fraction(Q16A.scale[0]) * Fraction(acc, one * one))  # exact with these weights
    got = flat(env["y"])
    assert got == want
    assert_exact(got, ref_exact(exact, out_qp))
    assert_within(sim, env["y"], out_qp, 1)


# == refusals and the activation handshake ===============================================================================
def test_overflow_is_refused_at_convert_time():
    # mean over 2^50 int16 values: no multiplier keeps sum * m0 below 2^63
    g = build("mean", "aten.mean.dim", [((1, 4), Q16)], [_x(0), [1]], qp("qint16", 1e-4))
    g.values["x0"] = Value("x0", (1, 2 ** 50), "float32")
    g.values["q0"] = Value("q0", (1, 2 ** 50), "float32", Q16)
    with pytest.raises(ConvertError, match="'op'.*2\\^"):
        convert(g, "nash-m")
    # an output scale 2^40 times finer than the input's: the multiplier alone exceeds int64
    g = build("add", "aten.add.Tensor", [(S, qp("qint16", 1.0)), (S, Q16)], [_x(0), _x(1)], qp("qint16", 2.0 ** -40))
    with pytest.raises(ConvertError, match="too far apart"):
        convert(g, "nash-m")
    # a product of two qint32 values leaves no multiplier bits
    g = build("mul", "aten.mul.Tensor", [(S, qp("qint32", 1e-6)), (S, qp("qint32", 1e-6))], [_x(0), _x(1)], Q16)
    with pytest.raises(ConvertError, match="multiplier"):
        convert(g, "nash-m")


def test_tensor_division_and_tables_keep_the_clear_error():
    g = build("div", "aten.div.Tensor", [(S, Q16), (S, Q16A)], [_x(0), _x(1)], Q16)
    with pytest.raises(ConvertError, match="SegmentLUT"):
        convert(g, "nash-m")
    g = build("softmax", "aten.softmax.int", [(S, Q16)], [_x(0), -1], Q16)
    with pytest.raises(ConvertError, match="no integer lowering"):
        convert(g, "nash-m")


def test_activation_whose_producer_did_not_apply_it_is_refused():
    g = build("max_pool", "aten.max_pool2d.default", [(S, Q16)], [_x(0), [2, 2]],
              fused=("aten.relu.default", [], Q16))
    with pytest.raises(ConvertError, match="did not apply the activation"):
        convert(g, "nash-m")


# == one-op models: integer model vs simulation ===============================================================================
def _calibrated(model, factory, setter):
    torch.manual_seed(0)
    example = _inputs(factory)
    cm = eq.prepare(model.eval(), example, qconfig_setter=(setter,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for _ in range(3):
            cm(*_inputs(factory))
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    return cm


def _agreement(model, factory, setter, bound, name):
    cm = _calibrated(model, factory, setter)
    ir = export(cm)
    qm = convert(ir, "nash-m")
    out = qm.producer()[qm.outputs[0]].inputs[0]      # the value the DeQuantStub reads
    q = qm.values[out].qparams
    diffs = []
    for _ in range(3):
        x = _inputs(factory)
        with torch.no_grad():
            sim = ir(*x)
            _, env = qm(*x, return_intermediates=True)
        diffs.append(lsb_diff(sim, env[out], q).flatten())
    d = torch.cat(diffs)
    share = float((d <= bound).double().mean())
    assert share >= 0.999, f"{name}: {100 * share:.3f}% within {bound} LSB (max {int(d.max())})"
    if bound == 0:
        assert int(d.max()) == 0


@pytest.mark.parametrize("setter", [T16, T8], ids=["int16", "int8"])
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_one_op_model_agrees_with_simulation(name, setter):
    _, model, factory = CASES[name]
    _agreement(model, factory, setter, BOUNDS[name], name)


@pytest.mark.parametrize("name", sorted(EXTRA_CASES))
def test_more_one_op_models_agree_with_simulation(name):
    model, factory, bound = EXTRA_CASES[name]
    _agreement(model, factory, T16, bound, name)


# == the residual CNN (acceptance) =================================================================================================
@pytest.mark.parametrize("setter", [T8, T16], ids=["int8", "int16"])
def test_cnn_integer_model_predicts_the_simulations_class(setter):
    from models import trained_cnn

    model, (xtr, _, xte, _) = trained_cnn()
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(setter,))
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for b in xtr[:512].split(128):
            cm(b)
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    qm = convert(export(cm, xtr[:2]), "nash-m")
    ops = {n.name: n for n in qm.nodes}
    assert ops["add"].attrs["kernel"] == "affine" and ops["add"].attrs["fused_activation"] == "relu"
    assert ops["relu"].op == "identity"
    with torch.no_grad():
        sim = torch.cat([cm(b) for b in xte.split(250)]).argmax(1)
        got = torch.cat([qm(b) for b in xte.split(250)]).argmax(1)
    agree = float((sim == got).double().mean())
    assert agree >= 0.995, f"the integer model agrees with the simulation on {100 * agree:.2f}% of the images"
