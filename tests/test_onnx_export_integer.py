"""export_onnx(..., flavour="integer"): the integer file equals our integer model on every element.

- an int8 MNIST CNN with convs (ConvInteger), a residual add (int64 affine), two table
  activations (SiLU and sigmoid, int8 direct tables via Gather), max and average pooling and a
  linear head (MatMulInteger) with a high-precision output: ONNX Runtime's CPU provider
  reproduces the output and every intermediate integer tensor bit for bit, at a batch size
  other than the traced one;
- all-MiniLM-L6-v2 with int16 activations (slow): its integer file (int64 MatMul, segmented
  int16 tables, integer softmax and layer norm) equals the integer model under
  ``onnx.reference.ReferenceEvaluator`` on two short sentences;
- both files pass ``onnx.checker`` with ``full_check``; the integer arithmetic (A6) in ONNX
  ops agrees with qmath on every tie.

References are our own integer kernels (``Graph.__call__`` at level "int"), never stored numbers.
"""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import edgequant as eq
from edgequant.export import export
from edgequant.onnx_export import export_onnx
from edgequant.onnx_export.builder import Builder
from edgequant.onnx_export.intmath import rounding_shift
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8
from edgequant.qmath import rounding_shift_right

from models import calibrate, mnist
from onnx_export_models import TableCNN, prepared_minilm, session


def with_intermediates(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (IR values it computes)."""
    m = copy.deepcopy(model)
    m = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in m.graph.value_info}
    for n in names:
        if n in known and n not in {o.name for o in m.graph.output}:
            m.graph.output.append(known[n])
    return m


@pytest.fixture(scope="module")
def table_cnn(tmp_path_factory):
    torch.manual_seed(0)
    xtr, _, xte, _ = mnist()
    model = TableCNN().eval()     # bit-exactness needs no training: default init, real digits
    cm = eq.prepare(model, (xtr[:2],), qconfig_setter=(T8,))
    calibrate(cm, xtr[:512].split(128))
    gi = eq.convert(export(cm, (xtr[:2],)))
    path = tmp_path_factory.mktemp("onnx") / "cnn_int.onnx"
    m = export_onnx(gi, path, flavour="integer")
    return gi, m, path, xte


def test_int8_cnn_integer_file_equals_the_integer_model_in_onnxruntime(table_cnn):
    gi, m, path, xte = table_cnn
    ops = {n.op for n in gi.nodes}
    assert {"conv2d", "add", "lut", "max_pool", "avg_pool", "linear"} <= ops
    x = xte[:100]
    ref, env = gi(x, return_intermediates=True)
    quantized = [v for v, rec in gi.values.items() if rec.qparams is not None and v not in gi.constants]
    mm = with_intermediates(m, quantized)
    outs = session(mm).run(None, {"x": x.numpy()})
    got = dict(zip([o.name for o in mm.graph.output], outs))
    assert torch.equal(torch.from_numpy(got[m.graph.output[0].name]), ref)
    checked = 0
    for name in quantized:
        if name in got:
            want = env[name]
            assert got[name].dtype == want.numpy().dtype, name
            assert np.array_equal(got[name], want.numpy()), name
            checked += 1
    print(f"\nint8 CNN integer file in ONNX Runtime: output and {checked} of {len(quantized)} integer tensors "
          f"equal on {len(x)} digits")
    assert checked >= len(quantized) - 1


def test_int8_cnn_integer_file_structure(table_cnn):
    _, m, path, _ = table_cnn
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("ConvInteger") == 3 and ops.count("MatMulInteger") == 1
    assert "Gather" in ops and not any(n.domain for n in m.graph.node)
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["stem.0.weight"].data_type == onnx.TensorProto.INT8
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_rounding_shift_in_onnx_matches_qmath_on_ties():
    """(A6) in ONNX int64 ops vs qmath.rounding_shift_right: ties, negatives, per-channel shifts."""
    torch.manual_seed(0)
    shifts = np.array([0, 1, 2, 5, 31, 40, -3], dtype=np.int64).reshape(-1, 1)
    v = torch.cat([torch.arange(-40, 41), torch.randint(-(1 << 50), 1 << 50, (200,))]).repeat(7, 1)
    v[:, :8] = torch.tensor([5, 7, -5, -7, 6, 10, -(1 << 40), (1 << 40) + (1 << 39)])
    b = Builder("shift")
    y = rounding_shift(b, "v", shifts)
    b.op("Identity", [y], ["y"])
    m = b.model([helper.make_tensor_value_info("v", onnx.TensorProto.INT64, [7, None])],
                [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [7, None])], {}, "A6")
    got = session(m).run(None, {"v": v.numpy()})[0]
    want = rounding_shift_right(v, torch.from_numpy(shifts))
    assert np.array_equal(got, want.numpy())


def test_storage_types_follow_quant_dtype_storage():
    """The integer file stores each quantized type as QuantDType.storage does (qint48/qint64 in int64)."""
    from edgequant.dtype import DTYPES
    from edgequant.onnx_export.integer_types import storage_elem, storage_name, storage_np

    for name, dt in DTYPES.items():
        assert np.dtype(storage_np(name)) == np.dtype(str(dt.storage).removeprefix("torch.")), name
        assert storage_name(name) == np.dtype(storage_np(name)).name, name
        assert storage_elem(name) == helper.np_dtype_to_tensor_dtype(np.dtype(storage_np(name))), name
    assert (storage_name("qint48"), storage_name("qint64"), storage_name("qint4")) == ("int64", "int64", "int8")
    assert storage_name("float32") == "float32"


def test_int16_cnn_integer_file_uses_the_custom_conv_and_equals_the_integer_model_under_the_reference_evaluator(
        tmp_path):
    """int16 activations: ConvInteger cannot take them and float32 is not exact for these sums, so
    the convs are ``ai.edgequant.ConvAccumulate``; ONNX Runtime refuses the domain, the reference
    evaluator with ``REFERENCE_OPS`` reproduces the integer model bit for bit."""
    from onnx.reference import ReferenceEvaluator

    from edgequant.onnx_export.custom_ops import REFERENCE_OPS
    from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16

    torch.manual_seed(0)
    xtr, _, xte, _ = mnist()
    cm = eq.prepare(TableCNN(c=8).eval(), (xtr[:2],), qconfig_setter=(T16,))
    calibrate(cm, xtr[:256].split(128))
    gi = eq.convert(export(cm, (xtr[:2],)))
    m = export_onnx(gi, tmp_path / "cnn_int16.onnx", flavour="integer")
    onnx.checker.check_model(onnx.load(tmp_path / "cnn_int16.onnx"), full_check=True)
    custom = [n for n in m.graph.node if n.domain == "ai.edgequant"]
    assert len(custom) == 3 and {n.op_type for n in custom} == {"ConvAccumulate"}
    assert any(o.domain == "ai.edgequant" for o in m.opset_import)
    x = xte[:3]
    got = ReferenceEvaluator(m, new_ops=REFERENCE_OPS).run(None, {"x": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(got), gi(x))
    with pytest.raises(Exception, match="ConvAccumulate|ai.edgequant"):
        session(m)


@pytest.mark.slow
def test_minilm_int16_integer_file_equals_the_integer_model(tmp_path):
    """MiniLM (int8 weights, int16 activations): the integer file under the reference evaluator
    (two short sentences; it is slow) and in ONNX Runtime equals the integer model bit for bit."""
    import real_data as data
    from onnx.reference import ReferenceEvaluator

    from edgequant.onnx_export.custom_ops import REFERENCE_OPS
    st, cm, ex = prepared_minilm()
    gi = eq.convert(export(cm, ex))
    m = export_onnx(gi, tmp_path / "minilm_int.onnx", flavour="integer")
    ops = {n.op for n in gi.nodes}
    assert {"softmax", "layer_norm", "lut", "matmul", "linear", "embedding"} <= ops
    ids, mask = data.tokenize(st, ["A dog chased the ball.", "How many moons does Jupiter have?"])
    with torch.no_grad():
        out = gi(ids, mask)
    ref = [out.last_hidden_state, out.pooler_output] if hasattr(out, "last_hidden_state") else list(out)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    by_reference = ReferenceEvaluator(m, new_ops=REFERENCE_OPS).run(None, feeds)
    by_ort = session(m).run(None, feeds)
    for r, a, b in zip(ref, by_reference, by_ort):
        assert torch.equal(torch.from_numpy(a), r) and torch.equal(torch.from_numpy(b), r)
    print(f"\nMiniLM int16 integer file: {sum(t.numel() for t in ref)} output values equal to the integer model "
          "under the reference evaluator and ONNX Runtime")
