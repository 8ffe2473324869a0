"""export_onnx(..., flavour="qdq"): the QDQ file in ONNX Runtime against our VALIDATION simulation.

- the residual CNN (tests/models.py, int8 with quint8 ReLU outputs): with ORT's QDQ fusions off
  (the file as written) logits cosine >= 0.99999 and argmax agreement >= 99.9 % on all 5,000
  MNIST digits of the subset, at a batch size other than the traced one, and the same with ORT's
  default fusions (its own integer QLinearConv);
- EfficientNet-Lite0 (int8 per-channel weights, int16 activations) on held-out photo crops and all-MiniLM-L6-v2
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
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn
from onnx_export_models import prepared_minilm, session


def agreement(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(cosine of the flattened outputs, fraction of rows with the same argmax)."""
    ref, got = ref.double(), got.double()
    cos = F.cosine_similarity(ref.flatten(), got.flatten(), dim=0).item()
    return cos, (ref.argmax(-1) == got.argmax(-1)).double().mean().item()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model, (xtr, _, xte, _) = trained_cnn()
    digits = torch.cat([xtr, xte])     # agreement of two implementations: every digit counts
    cm = eq.prepare(model, (xtr[:2],), qconfig_setter=(T8,))
    calibrate(cm, xtr[:512].split(128))
    path = tmp_path_factory.mktemp("onnx") / "cnn_qdq.onnx"
    m = export_onnx(cm, path, (xtr[:2],), flavour="qdq")
    return cm, m, path, digits


def test_cnn_qdq_matches_the_simulation_in_onnxruntime(cnn):
    cm, _, path, x = cnn
    with torch.no_grad():
        ref = torch.cat([cm(b) for b in x.split(1000)])
    got = torch.from_numpy(session(path).run(None, {"x": x.numpy()})[0])
    cos, agree = agreement(ref, got)
    # The file itself: ORT with its QDQ fusions off runs DequantizeLinear -> float op -> QuantizeLinear
    # as written (measured: cosine 1.0000000, agreement 1.0000).
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    as_written = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    cos_w, agree_w = agreement(ref, torch.from_numpy(as_written.run(None, {"x": x.numpy()})[0]))
    print(f"\nresidual CNN QDQ in ONNX Runtime vs VALIDATION on {len(x)} MNIST digits: cosine {cos:.7f}, "
          f"argmax agreement {agree:.4f}; QDQ fusions off: cosine {cos_w:.7f}, agreement {agree_w:.4f}")
    assert got.shape == ref.shape
    assert cos_w >= 0.99999 and agree_w >= 0.999
    # By default ORT fuses the quint8 (ReLU-output) convs into QLinearConv, its own integer kernel,
    # which adds the int32 bias: as the simulation puts the bias on that grid too, the fused run
    # agrees as closely (measured: cosine 1.0000000, agreement 1.0000; before the simulation
    # rounded the bias: 0.9999337, 0.9934).
    assert cos >= 0.99999 and agree >= 0.999


def test_cnn_qdq_structure(cnn):
    cm, m, path, _ = cnn
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert [o.domain or "ai.onnx" for o in m.opset_import] == ["ai.onnx"] and m.opset_import[0].version == 21
    ops = [n.op_type for n in m.graph.node]
    g = export(cm)
    n_fq = sum(1 for n in g.nodes if n.op == "quantize" or n.attrs.get("fq"))
    assert ops.count("QuantizeLinear") >= n_fq
    assert ops.count("Conv") == 5 and "Gemm" in ops
    inits = {t.name: t for t in m.graph.initializer}
    w = inits["stem.0.weight.q"]
    assert w.data_type == onnx.TensorProto.INT8
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "stem.0.weight.q")
    assert {a.name: a.i for a in dq.attribute}.get("axis") == 0
    assert onnx.numpy_helper.to_array(inits[dq.input[1]]).shape == (16,)      # one scale per output channel
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value


def test_an_op_without_translation_names_itself(cnn, tmp_path):
    cm, _, _, _ = cnn
    g = export(cm)
    node = next(n for n in g.nodes if n.op == "max_pool")
    node.attrs["target"] = "aten.fractional_max_pool2d.default"
    with pytest.raises(OnnxExportError, match=r"max_pool.*fractional_max_pool2d"):
        export_onnx(g, tmp_path / "bad.onnx", flavour="qdq")


# -- real pretrained models (slow) ------------------------------------------------------------------------
@pytest.mark.slow
def test_efficientnet_lite0_qdq_matches_the_simulation_in_onnxruntime(tmp_path):
    """int8 per-channel weights, int16 activations: logits cosine and top-1 agreement on held-out crops."""
    import real_data as data

    torch.manual_seed(0)
    model = data.load_efficientnet_lite0()
    calib, test = data.calibration_images(16), data.held_out_images(24)
    with torch.no_grad():
        cm = eq.prepare(model, calib[:2], qconfig_setter=(T16,))
        calibrate(cm, calib.split(8))
        ref = torch.cat([cm(x) for x in test.split(12)])
    m = export_onnx(cm, tmp_path / "effnet_qdq.onnx", (calib[:2],), flavour="qdq")
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 49
    s = session(tmp_path / "effnet_qdq.onnx")
    got = torch.from_numpy(np.concatenate([s.run(None, {m.graph.input[0].name: x.numpy()})[0] for x in test.split(12)]))
    cos, agree = agreement(ref, got)
    print(f"\nEfficientNet-Lite0 (int8 weights, int16 activations) QDQ in ONNX Runtime vs VALIDATION on {len(test)} "
          f"held-out crops: cosine {cos:.7f}, top-1 agreement {agree:.4f}")
    assert cos >= 0.9999 and agree >= 0.999


@pytest.mark.slow
def test_minilm_qdq_matches_the_simulation_in_onnxruntime(tmp_path):
    """int16 activations; the table ops (GELU, tanh, softmax, layer norm) run their integer
    kernels between Q and DQ: last hidden states and sentence embeddings on held-out sentences."""
    import real_data as data

    st, cm, ex = prepared_minilm()
    m = export_onnx(cm, tmp_path / "minilm_qdq.onnx", ex, flavour="qdq")
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask"]
    s = session(tmp_path / "minilm_qdq.onnx")
    ids, mask = data.tokenize(st, data.TEST_SENTENCES[:12])        # another batch size and length than traced
    with torch.no_grad():
        ref = cm(ids, mask)
    got = s.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    hidden, pooled = torch.from_numpy(got[0]), torch.from_numpy(got[1])
    cos_hidden = agreement(ref[0], hidden)[0]
    cos_pooled = agreement(ref[1], pooled)[0]
    emb = F.cosine_similarity(data.sentence_embeddings(ref[0], mask), data.sentence_embeddings(hidden, mask), dim=1)
    print(f"\nMiniLM int16 QDQ in ONNX Runtime vs VALIDATION on {len(ids)} held-out sentences: last hidden state "
          f"cosine {cos_hidden:.7f}, sentence-embedding cosine min {emb.min():.7f}, pooler cosine {cos_pooled:.7f}")
    assert cos_hidden >= 0.9999 and cos_pooled >= 0.9999 and emb.min() >= 0.9999
