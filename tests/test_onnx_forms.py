"""ONNX forms of the ops the model zoo exports (issue 20): joining and splitting (cat, stack,
chunk, split, unbind), reductions (mean over dims, max/min), resizing (nearest, bilinear with
align_corners either way, by scale factors or sizes), transposed convolution, adaptive average
pooling to a size that divides the input, scalar arithmetic, and the integer flavour's
``rescale_call``, ``interval``, ``compare2`` and ``bilinear`` kernels and transposed convolution.

Each aten translation is run alone in ONNX Runtime against torch's own op on the same tensors
(float values, and integer codes for the ops that only move, select or compare them); then small
models go through both flavours: the QDQ file at ONNX Runtime's default (``ORT_ENABLE_ALL``)
optimisation level against the simulation, the integer file against the integer model bit for bit.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper
from onnx.reference import ReferenceEvaluator

import edgequant as eq
from edgequant.ir import Node
from edgequant.onnx_export import aten
from edgequant.onnx_export.builder import Builder
from edgequant.onnx_export.custom_ops import REFERENCE_OPS
from edgequant.onnx_export.errors import OnnxExportError
from edgequant.ops.names import resolve
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

ELEM = {torch.float32: 1, torch.uint8: 2, torch.int8: 3, torch.int16: 5, torch.int32: 6, torch.int64: 7,
        torch.bool: 9}
DTYPE = {torch.float32: "float32", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16",
         torch.int32: "int32", torch.int64: "int64", torch.bool: "bool"}


def session(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = level
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _encode(a, tensors):
    if isinstance(a, torch.Tensor):
        tensors.append(a)
        return {"$in": len(tensors) - 1}
    if isinstance(a, (list, tuple)):
        return [_encode(v, tensors) for v in a]
    if isinstance(a, dict):
        return {k: _encode(v, tensors) for k, v in a.items()}
    if isinstance(a, torch.dtype):
        return {"$dtype": DTYPE[a]}
    if isinstance(a, torch.device):
        return {"$device": str(a)}
    return a


def _torch(target, args, kwargs):
    """torch's op; integer codes it has no kernel for run on a float32 carrier (exact: it moves them)."""
    try:
        want = resolve(target)(*args, **kwargs)
    except (NotImplementedError, RuntimeError):
        dt = next(a.dtype for a in args if isinstance(a, torch.Tensor))
        want = resolve(target)(*[a.float() if isinstance(a, torch.Tensor) else a for a in args], **kwargs).to(dt)
    return list(want) if isinstance(want, (list, tuple)) else [want]


def translate(target, args, kwargs=None, n_out=1):
    """``target``'s translation alone (``aten.translate``) in ONNX Runtime, and torch's op on the same
    arguments: ``(onnx outputs, torch outputs)``."""
    tensors = []
    enc_args, enc_kwargs = _encode(list(args), tensors), _encode(dict(kwargs or {}), tensors)
    names = [f"in{k}" for k in range(len(tensors))]
    want = _torch(target, args, kwargs or {})
    outs = [f"out{k}" for k in range(n_out)]
    node = Node("n", "aten", tuple(names), tuple(outs), {"target": target, "args": enc_args, "kwargs": enc_kwargs})
    b = Builder("t")
    for n in names + outs:
        b.claim(n)
    c = aten.Ctx(b, node, names, [DTYPE[t.dtype] for t in tensors], [t.dim() for t in tensors], "test",
                 [tuple(t.shape) for t in tensors], [tuple(w.shape) for w in want[:n_out]])
    aten.translate(c, outs)
    inputs = [helper.make_tensor_value_info(n, ELEM[t.dtype], list(t.shape)) for n, t in zip(names, tensors)]
    outputs = [helper.make_tensor_value_info(o, ELEM[w.dtype], None) for o, w in zip(outs, want)]
    sess = session(b.model(inputs, outputs, {}, ""))
    got = sess.run(None, {n: t.numpy() for n, t in zip(names, tensors)})
    return got, [w.numpy() for w in want[:n_out]]


def assert_same(target, args, kwargs=None, n_out=1, atol=0.0):
    got, want = translate(target, args, kwargs, n_out)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (target, g.shape, w.shape, g.dtype, w.dtype)
        if atol:
            np.testing.assert_allclose(g, w, atol=atol, rtol=0)
        else:
            np.testing.assert_array_equal(g, w)


torch.manual_seed(0)
X = torch.randn(2, 6, 5, 4)
Q8 = torch.randint(-128, 128, (2, 6, 5, 4), dtype=torch.int8)
Q16 = torch.randint(-32768, 32768, (2, 6, 5, 4), dtype=torch.int16)


# -- translations alone, against torch ------------------------------------------------------------------
@pytest.mark.parametrize("x", [X, Q8, Q16], ids=["float", "int8", "int16"])
def test_joining_splitting_and_moves_equal_torch(x):
    y = x.flip(0)
    assert_same("aten.cat.default", [[x, y], 1])
    assert_same("aten.cat.default", [[x, y]], {"dim": -1})
    assert_same("aten.stack.default", [[x, y], -1])
    assert_same("aten.stack.default", [[x, y]])
    assert_same("aten.chunk.default", [x, 4, 1], n_out=3)          # 6 -> 2, 2, 2: three parts, not four
    assert_same("aten.chunk.default", [x, 2, 2], n_out=2)          # 5 -> 3, 2
    assert_same("aten.split.Tensor", [x, 4, 1], n_out=2)           # 6 -> 4, 2
    assert_same("aten.split_with_sizes.default", [x, [1, 3, 2], 1], n_out=3)
    assert_same("aten.unbind.int", [x, 2], n_out=5)
    assert_same("aten.flip.default", [x, [1, 3]])
    assert_same("aten.narrow.default", [x, 2, 1, 3])
    assert_same("aten.repeat.default", [x, [2, 1, 1, 1, 2]])
    assert_same("aten.unflatten.int", [x, 1, [2, -1]])
    assert_same("aten.squeeze.default", [x[:, :1]])
    assert_same("aten.t.default", [x[0, 0]])
    assert_same("aten.flatten.using_ints", [x, 2])                  # rank 3: not ONNX Flatten's 2-D
    assert_same("aten.constant_pad_nd.default", [x, [1, 2, 0, 1], 3])
    if not x.is_floating_point():
        assert_same("aten.floor_divide.default", [x.to(torch.int64), (y.to(torch.int64) % 7) - 3 | 1])


@pytest.mark.parametrize("x", [X, Q8, Q16], ids=["float", "int8", "int16"])
def test_selections_and_comparisons_equal_torch(x):
    y = x.flip(0)
    assert_same("aten.maximum.default", [x, y])
    assert_same("aten.minimum.default", [x, y])
    assert_same("aten.where.self", [x > y, x, y])
    assert_same("aten.where.ScalarOther", [x > y, x, 3])
    assert_same("aten.where.ScalarSelf", [x > y, 3, y])
    assert_same("aten.clamp.Tensor", [x, y[:, :, :1], y[:, :, 1:2] + 1 if x.is_floating_point() else y[:, :, 1:2]])
    assert_same("aten.clamp_min.default", [x, 2])
    assert_same("aten.clamp_max.default", [x, 2])
    assert_same("aten.ne.Scalar", [x, 0])
    assert_same("aten.ne.Tensor", [x, y])
    assert_same("aten.max.dim", [x, 1], n_out=2)
    assert_same("aten.min.dim", [x, -1, True], n_out=2)
    assert_same("aten.amax.default", [x, [1, 2]])
    assert_same("aten.amin.default", [x, [], True])
    assert_same("aten.max.default", [x])


@pytest.mark.parametrize("x", [X, Q8, Q16], ids=["float", "int8", "int16"])
@pytest.mark.parametrize("how", [{"scale_factors": [2.0, 2.0]}, {"scale_factors": [3.0, 0.5]},
                                 {"output_size": [7, 9]}, {"output_size": [3, 2]}], ids=str)
def test_nearest_resizing_equals_torch(x, how):
    args = [x, how.get("output_size"), how.get("scale_factors")]
    args1 = [x[0], how.get("output_size", [None])[:1] if "output_size" in how else None,
             how.get("scale_factors", [None])[:1] if "scale_factors" in how else None]
    assert_same("aten.upsample_nearest2d.vec", args)
    assert_same("aten.upsample_nearest1d.vec", args1)
    assert_same("aten._upsample_nearest_exact2d.vec", args)
    assert_same("aten._upsample_nearest_exact1d.vec", args1)
    args3 = [x.unsqueeze(2).expand(-1, -1, 3, -1, -1).contiguous(), [5] + how["output_size"] if "output_size" in how
             else None, [2.0] + how["scale_factors"] if "scale_factors" in how else None]
    assert_same("aten.upsample_nearest3d.vec", args3)


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("how", [{"scale_factors": [2.0, 2.0]}, {"scale_factors": [1.5, 0.5]},
                                 {"output_size": [7, 9]}, {"output_size": [3, 2]}], ids=str)
def test_bilinear_resizing_equals_torch(align, how):
    assert_same("aten.upsample_bilinear2d.vec", [X, how.get("output_size"), align, how.get("scale_factors")],
                atol=2e-6)


def test_reductions_pooling_and_norms_equal_torch():
    assert_same("aten.mean.dim", [X, [2, 3]], atol=1e-6)
    assert_same("aten.mean.dim", [X, [-1], True], atol=1e-6)
    assert_same("aten.mean.default", [X], atol=1e-6)
    assert_same("aten.sum.dim_IntList", [X, [1]], atol=1e-5)
    assert_same("aten.adaptive_avg_pool2d.default", [torch.randn(2, 3, 8, 6), [4, 3]], atol=1e-6)
    assert_same("aten.adaptive_avg_pool2d.default", [X, [1, 1]], atol=1e-6)
    assert_same("aten.adaptive_avg_pool1d.default", [X[0], [2]], atol=1e-6)
    assert_same("aten.avg_pool1d.default", [X[0], [3], [2], [1]], atol=1e-6)
    w, b, m, v = torch.randn(6), torch.randn(6), torch.randn(6), torch.rand(6) + 0.5
    assert_same("aten.batch_norm.default", [X, w, b, m, v, False, 0.1, 1e-5, False], atol=1e-5)
    assert_same("aten.batch_norm.default", [X, None, None, m, v, False, 0.1, 1e-3, False], atol=1e-5)
    # windows of different sizes: one ReduceMean per window and dim
    assert_same("aten.adaptive_avg_pool2d.default", [torch.randn(2, 3, 7, 5), [6, 3]], atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_ceil_mode_equals_torch_in_both_runtimes(stride):
    """googlenet's 3x3/stride-1 ``ceil_mode`` pools: ``ceil_mode`` is written only where it adds a
    window (onnx's reference evaluator, which runs int16 integer files, adds one where torch does not)."""
    x = torch.randn(1, 2, 8, 8)
    args = [x, [3, 3], [stride, stride], [1, 1], [1, 1], True]
    assert_same("aten.max_pool2d.default", args)
    want = torch.ops.aten.max_pool2d.default(*args).numpy()
    node = Node("n", "aten", ("in0",), ("out0",), {"target": "aten.max_pool2d.default",
                                                    "args": [{"$in": 0}] + args[1:], "kwargs": {}})
    b = Builder("t")
    aten.translate(aten.Ctx(b, node, ["in0"], ["float32"], [4], "test", [(1, 2, 8, 8)], [want.shape]), ["out0"])
    m = b.model([helper.make_tensor_value_info("in0", 1, [1, 2, 8, 8])], [helper.make_tensor_value_info("out0", 1, None)],
                {}, "")
    assert [a.i for a in m.graph.node[0].attribute if a.name == "ceil_mode"] == [int(stride == 2)]
    np.testing.assert_array_equal(ReferenceEvaluator(m).run(None, {"in0": x.numpy()})[0], want)


@pytest.mark.parametrize("kw", [dict(), dict(stride=[2, 2]), dict(stride=[2, 1], padding=[1, 0], output_padding=[1, 0]),
                                dict(stride=[2, 2], groups=2, dilation=[1, 2])], ids=str)
def test_transposed_convolution_equals_torch(kw):
    g = kw.get("groups", 1)
    w, b = torch.randn(6, 4 // g, 3, 2), torch.randn(4)
    args = [X, w, b, kw.get("stride", [1, 1]), kw.get("padding", [0, 0]), kw.get("output_padding", [0, 0]), g,
            kw.get("dilation", [1, 1])]
    assert_same("aten.conv_transpose2d.input", args, atol=1e-4)


def test_scalar_arithmetic_and_float_functions_equal_torch():
    p = X.abs() + 0.1
    for target, args in [("aten.add.Scalar", [X, 1.5]), ("aten.add.Scalar", [X, 1.5, 2]), ("aten.sub.Scalar", [X, 0.5]),
                         ("aten.mul.Scalar", [X, -3.0]), ("aten.div.Scalar", [X, 4.0]), ("aten.rsub.Scalar", [X, 1.0]),
                         ("aten.rsub.Scalar", [X, 1.0, 3]), ("aten.rsub.Tensor", [X, X.flip(0)]),
                         ("aten.abs.default", [X]), ("aten.leaky_relu.default", [X, 0.2]),
                         ("aten.prelu.default", [X, torch.rand(6)]), ("aten.log_softmax.int", [X, 1]),
                         ("aten.log.default", [p]), ("aten.sqrt.default", [p]), ("aten.rsqrt.default", [p]),
                         ("aten.reciprocal.default", [p]), ("aten.silu.default", [X]), ("aten.hardswish.default", [X]),
                         ("aten.hardsigmoid.default", [X]), ("aten.erf.default", [X]),
                         ("aten.pow.Tensor_Scalar", [p, 1.5]), ("aten.softplus.default", [X]),
                         ("aten.softplus.default", [X, 2.0]), ("aten.elu.default", [X, 0.7]), ("aten.selu.default", [X]),
                         ("aten.celu.default", [X, 1.3]), ("aten.log_sigmoid.default", [X]), ("aten.mish.default", [X]),
                         ("aten.sin.default", [X]), ("aten.cos.default", [X])]:
        assert_same(target, args, atol=2e-6)
    for mode in (None, "trunc", "floor"):
        assert_same("aten.div.Tensor_mode", [X * 10, X.flip(0)], {"rounding_mode": mode}, atol=2e-5 if mode is None else 0)
        i, j = torch.randint(-50, 50, (40,)), torch.randint(1, 7, (40,)) * torch.tensor([1, -1]).repeat(20)
        assert_same("aten.div.Tensor_mode", [i, j], {"rounding_mode": mode})


def test_casts_creation_and_size_arithmetic_equal_torch():
    i = torch.randint(-5, 5, (3, 4))
    assert_same("aten.to.dtype", [X, torch.int64])
    assert_same("aten.to.dtype_layout", [i], {"dtype": torch.float32})
    assert_same("aten.to.device", [X, torch.device("cpu"), torch.float32])
    assert_same("aten.to.device", [X, torch.device("cpu"), torch.int64])
    assert_same("aten.type_as.default", [i, X])
    assert_same("aten.zeros_like.default", [X])
    assert_same("aten.ones_like.default", [i], {"dtype": torch.bool})
    assert_same("aten.full_like.default", [X, 2.5])
    assert_same("aten.new_zeros.default", [i, [2, 3]])
    assert_same("aten.new_full.default", [X, [2, 3], -1.5])
    assert_same("aten.zeros.default", [[2, 3]])
    assert_same("aten.full.default", [[2, 3], 7])
    assert_same("aten.full.default", [[2, 3], True])
    a, b = torch.tensor(12), torch.tensor(-5)
    for op in ("add", "sub", "mul", "floordiv", "mod", "eq", "ne", "lt", "le", "gt", "ge"):
        assert_same(f"_operator.{op}", [a, b])
        assert_same(f"_operator.{op}", [b, 4])
    assert_same("_operator.neg", [a])


def test_index_mask_and_rounding_arithmetic_equal_torch():
    i, m = torch.randint(-5, 5, (3, 4), dtype=torch.int32), torch.rand(3, 4) > 0.5
    assert_same("aten.cumsum.default", [i, 1])                       # int32 -> int64, as torch
    assert_same("aten.cumsum.default", [m, 0])
    assert_same("aten.cumsum.default", [X, 2], atol=1e-5)
    assert_same("aten.argmax.default", [X, 1])
    assert_same("aten.argmin.default", [X, -1, True])
    assert_same("aten.argmax.default", [X])
    assert_same("aten.argmax.default", [Q16, 1])
    for t in ("any", "all"):
        assert_same(f"aten.{t}.default", [m])
        assert_same(f"aten.{t}.dim", [m, 1])
        assert_same(f"aten.{t}.dim", [i, 0, True])
    for t in ("and", "or", "xor"):
        assert_same(f"aten.logical_{t}.default", [m, i])
    assert_same("aten.logical_not.default", [i])
    assert_same("aten.bitwise_xor.Tensor", [i, i.flip(0)])
    assert_same("aten.bitwise_xor.Tensor", [m, m.flip(0)])
    for t in ("floor", "ceil", "round", "trunc", "sign"):
        assert_same(f"aten.{t}.default", [X * 3])
        assert_same(f"aten.{t}.default", [i])
    assert_same("aten.round.default", [torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])])   # half to even
    assert_same("aten.remainder.Tensor", [i.to(torch.int64), (i.flip(0).to(torch.int64) % 4) - 2 | 1])
    assert_same("aten.remainder.Scalar", [X * 5, -3.0], atol=1e-5)
    assert_same("aten.index_select.default", [X, 1, torch.tensor([4, 0, 0, 2])])
    assert_same("aten.expand_as.default", [X[:, :1], X])
    assert_same("aten.masked_fill.Tensor", [X, X > 0, torch.tensor(-2.0)])
    assert_same("aten.masked_fill.Tensor", [Q16, Q16 > 0, torch.tensor(7, dtype=torch.int16)])
    assert_same("aten.tril.default", [X, 1])
    assert_same("aten.triu.default", [i, -1])
    assert_same("aten.isnan.default", [torch.tensor([1.0, float("nan")])])
    assert_same("aten.isinf.default", [torch.tensor([1.0, float("-inf")])])


# -- models through both flavours -------------------------------------------------------------------------
class Forms(nn.Module):
    """Two branches at different scales joined by cat (the integer model rescales one), chunk and
    stack, maximum and where, a transposed conv, nearest and bilinear resizing, adaptive average
    pooling to 2x2, a mean over dims and python-scalar arithmetic."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.q(x)
        a, b = self.a(x), self.b(x) * 3.0
        y = torch.cat([a, b], 1)
        p, q = torch.chunk(y, 2, dim=1)
        y = torch.cat([torch.maximum(q, p), torch.where(p > 0.1, p, q)], 1)
        z = self.up(y)                                                     # 8x8 -> 16x16
        z = F.interpolate(z, scale_factor=0.5, mode="nearest")              # 8x8
        z = F.interpolate(self.c(z), size=(12, 12), mode="bilinear", align_corners=True)
        z = F.interpolate(z, scale_factor=2 / 3, mode="bilinear", align_corners=False)   # 8x8
        s = torch.stack([z, F.interpolate(F.adaptive_avg_pool2d(z, 2), size=(8, 8), mode="nearest")], 1)
        m = s.mean(dim=(3, 4))
        return self.dq(1.0 - m * 0.5), self.dq(s.flatten(2).transpose(1, 2).amax(-1))


def _prepared(model, shape, template, seed=0):
    torch.manual_seed(seed)
    model = model.eval()
    xs = [torch.randn(*shape) for _ in range(4)]
    cm = eq.prepare(model, (xs[0],), qconfig_setter=(template,))
    eq.calibrate(cm, [(x,) for x in xs])
    return cm, xs


def _run(path, x):
    """ONNX Runtime; a file using edgequant's custom domain (int16 convs) under onnx's reference
    evaluator with edgequant's implementations, as the zoo harness runs it."""
    m = onnx.load(path)
    if any(n.domain == "ai.edgequant" for n in m.graph.node):
        ref = ReferenceEvaluator(m, new_ops=REFERENCE_OPS)
        return ref.run(None, {ref.input_names[0]: x.numpy()})
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def _outputs(m, x):
    with torch.no_grad():
        y = m(x)
    return [t.numpy() for t in (y if isinstance(y, (tuple, list)) else [y])]


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_forms_model_qdq_matches_the_simulation_and_integer_file_the_integer_model(template, tmp_path):
    torch.manual_seed(0)
    cm, xs = _prepared(Forms(), (2, 3, 8, 8), template)
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    kernels = {n.attrs.get("kernel") for n in g.nodes}
    assert {"rescale_call", "interval", "bilinear"} <= kernels
    eq.export_onnx(cm, tmp_path / "q.onnx", (xs[0],), flavour="qdq")
    eq.export_onnx(g, tmp_path / "i.onnx", (xs[0],), flavour="integer")
    for x in xs[1:] + [torch.randn(2, 3, 8, 8)]:
        for got, want in zip(_run(tmp_path / "q.onnx", x), _outputs(cm, x)):
            cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
            assert cos > 0.999, cos
            assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
        for got, want in zip(_run(tmp_path / "i.onnx", x), _outputs(g, x)):
            np.testing.assert_array_equal(got, want)


class Compare2(nn.Module):
    """A comparison of two quantized tensors (``compare2``) and of one with a number (``interval``)."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = self.q(x)
        a, b = self.a(x), self.b(x)
        return self.dq(torch.where(a > b, a, b * 0.5)), self.dq(torch.where(a != 0.25, b, a))


def test_tensor_comparisons_integer_file_equals_the_integer_model(tmp_path):
    cm, xs = _prepared(Compare2(), (2, 3, 6, 6), T8)
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    assert {"compare2", "interval", "rescale_call"} <= {n.attrs.get("kernel") for n in g.nodes}
    eq.export_onnx(g, tmp_path / "i.onnx", (xs[0],), flavour="integer")
    for x in xs:
        for got, want in zip(_run(tmp_path / "i.onnx", x), _outputs(g, x)):
            np.testing.assert_array_equal(got, want)


class Tokens(nn.Module):
    """Linear layers on 3-D (token) inputs, one with a fused ReLU, around reshapes and transposes:
    ONNX Runtime's fusions rejected them at its default level before the flattened input got its QDQ
    pair ("QuantizeLinear ... output_dtype INT8 does not match y_zero_point type UINT8")."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.l1, self.l2, self.l3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 32)

    def forward(self, x):
        x = self.q(x)
        k = self.l2(torch.relu(self.l1(x))).view(2, 5, 8, 8).transpose(1, 2)
        return self.dq(self.l3(k.transpose(1, 2).reshape(2, 5, 64)))


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_linear_on_tokens_runs_at_the_default_optimisation_level(template, tmp_path):
    cm, xs = _prepared(Tokens(), (2, 5, 64), template)
    eq.export_onnx(cm, tmp_path / "q.onnx", (xs[0],), flavour="qdq")
    for x in xs:
        (got,), (want,) = _run(tmp_path / "q.onnx", x), _outputs(cm, x)
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


class Mixer(nn.Module):
    """MLP-Mixer's stem: patches by a strided conv, ``flatten(2).transpose(1, 2)`` (the integer file
    wrote ``flatten(2)`` as a 2-D ONNX Flatten), a token mean."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.stem, self.fc = nn.Conv2d(3, 16, 4, stride=4), nn.Linear(16, 10)

    def forward(self, x):
        t = self.stem(self.q(x)).flatten(2).transpose(1, 2)
        return self.dq(self.fc(t.mean(dim=1)))


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_mixer_stem_both_flavours(template, tmp_path):
    cm, xs = _prepared(Mixer(), (2, 3, 16, 16), template)
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    eq.export_onnx(cm, tmp_path / "q.onnx", (xs[0],), flavour="qdq")
    eq.export_onnx(g, tmp_path / "i.onnx", (xs[0],), flavour="integer")
    for x in xs:
        (got,), (want,) = _run(tmp_path / "q.onnx", x), _outputs(cm, x)
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
        np.testing.assert_array_equal(_run(tmp_path / "i.onnx", x)[0], _outputs(g, x)[0])


def test_transposed_conv_without_a_float32_carrier_is_refused_by_name(tmp_path):
    cm, xs = _prepared(Forms(), (2, 3, 8, 8), T8)
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    node = next(n for n in g.nodes if n.op == "conv_transpose2d")
    node.attrs["carrier"] = "float64"
    with pytest.raises(OnnxExportError, match=r"'up'.*float64 carrier"):
        eq.export_onnx(g, tmp_path / "i.onnx", flavour="integer")


class Splits(nn.Module):
    """unbind, split and split_with_sizes parts (several outputs, each gets its QDQ pair), rejoined."""

    def __init__(self):
        super().__init__()
        self.q, self.dq = eq.QuantStub(), eq.DeQuantStub()
        self.a = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(self.q(x)))
        u = torch.unbind(y, dim=1)
        s = torch.split(y, 4, dim=1)
        w = torch.split(y, [1, 2, 3], dim=2)
        return self.dq(torch.stack([u[5], u[0] + u[1]], 1)), self.dq(torch.cat([s[1], s[0]], 1)), \
            self.dq(torch.cat([w[2], w[0]], 2))


@pytest.mark.parametrize("template", [T8, T16], ids=["int8", "int16"])
def test_split_parts_both_flavours(template, tmp_path):
    cm, xs = _prepared(Splits(), (2, 3, 6, 5), template)
    g = eq.convert(eq.export(cm, (xs[0],)), "nash-e")
    eq.export_onnx(cm, tmp_path / "q.onnx", (xs[0],), flavour="qdq")
    eq.export_onnx(g, tmp_path / "i.onnx", (xs[0],), flavour="integer")
    for x in xs:
        for got, want in zip(_run(tmp_path / "q.onnx", x), _outputs(cm, x)):
            assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
        for got, want in zip(_run(tmp_path / "i.onnx", x), _outputs(g, x)):
            np.testing.assert_array_equal(got, want)
