"""prepare -> calibration -> validation on real pretrained models, unedited, against their float selves.

- all-MiniLM-L6-v2 (a Hugging Face BertModel, no stubs): integer inputs stay integer, the
  embeddings become quantized tables, and with int16 activations the sentence embeddings of
  held-out sentences keep a mean cosine >= 0.999 to float.
- EfficientNet-Lite0 (ImageNet, ReLU6): calibrated on 64 crops of some of scikit-image's
  photographs, tested on crops of the others. Logit SQNR to float >= 12 dB with int8
  activations and >= 17 dB with int16 activations; top-1 agreement with float >= 90 % / 95 %
  on the test crops float classifies with probability >= 0.3.

Run alone: ``HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s tests/test_prepare_real_models.py``
(``-s`` prints the measured numbers).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import edgequant as eq
from edgequant.fake_quant import BiasCorrection, FakeQuantize
from edgequant.nn.stubs import quant_point
from edgequant.qconfig_template import (
    calibration_8bit_weight_16bit_act_qconfig_setter as T16,
    default_calibration_qconfig_setter as T8,
)

import real_data as data
from models import calibrate

pytestmark = pytest.mark.slow


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2), in float64."""
    ref, test = ref.double(), test.double()
    return 10 * math.log10(float(ref.pow(2).sum() / (ref - test).pow(2).sum()))


def fq_of(cm, node):
    """The FakeQuantize a ``call_module`` node runs, or None."""
    if node.op != "call_module":
        return None
    mod = cm.get_submodule(node.target)
    return mod if isinstance(mod, FakeQuantize) else None


# -- all-MiniLM-L6-v2 ---------------------------------------------------------------------------------------
def _batches(sentences, size):
    return [sentences[i:i + size] for i in range(0, len(sentences), size)]


@pytest.fixture(scope="module")
def minilm():
    """The float model, and its int16-activation prepare calibrated on the calibration sentences."""
    torch.manual_seed(0)
    st = data.load_minilm()
    bert = st[0].auto_model.eval()
    with torch.no_grad():
        cm = eq.prepare(bert, data.tokenize(st, data.CALIBRATION_SENTENCES[:4]), qconfig_setter=(T16,))
        calibrate(cm, [data.tokenize(st, b) for b in _batches(data.CALIBRATION_SENTENCES, 8)])
    return st, bert, cm


def test_minilm_pooling_matches_sentence_transformers(minilm):
    st, bert, _ = minilm
    sents = data.TEST_SENTENCES[:6]
    ids, mask = data.tokenize(st, sents)
    with torch.no_grad():
        ours = data.sentence_embeddings(bert(ids, mask).last_hidden_state, mask)
    torch.testing.assert_close(ours, torch.as_tensor(st.encode(sents)), rtol=1e-5, atol=1e-5)


def test_minilm_integer_inputs_stay_integer_and_embeddings_are_quantized_tables(minilm):
    st, _, cm = minilm
    graph = cm.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    assert [n.name for n in inputs] == ["input_ids", "attention_mask"]
    for node in inputs:
        assert node.meta["val"].dtype == torch.int64 and node.meta["eq_domain"] == "int"
        assert not any(u.target is quant_point or fq_of(cm, u) for u in node.users), node.name
    # no fake-quant anywhere reads an integer or boolean tensor (ids, masks, positions)
    for node in graph.nodes:
        if fq_of(cm, node) is not None:
            assert node.args[0].meta["val"].is_floating_point(), node.name

    embeddings = [n for n in graph.nodes if n.target is torch.ops.aten.embedding.default]
    assert len(embeddings) == 3  # word, token type, position
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    for node in embeddings:
        table, index = node.args[:2]
        assert not index.meta["val"].is_floating_point()
        fq = fq_of(cm, table)
        assert fq is not None and fq.is_weight and fq.dtype == eq.qint16, node.name
        assert table.args[0].op == "get_attr"
        # the table the lookup reads lies on the int16 grid of one per-tensor scale
        with torch.no_grad():
            q = fq(cm.get_parameter(table.args[0].target)) / fq.scale
        assert fq.scale.numel() == 1 and (q - q.round()).abs().max() < 0.01  # float32 rounding of q * scale
        assert q.min() >= eq.qint16.qmin and q.max() <= eq.qint16.qmax
        assert q.unique().numel() > min(1000, q.numel() // 2)  # a real table, not a collapsed one

    ids, mask = data.tokenize(st, data.TEST_SENTENCES[:3])
    with torch.no_grad():
        out = cm(ids, mask)
    assert out[0].shape == (3, ids.shape[1], 384)


def test_minilm_int16_sentence_embeddings_track_float(minilm):
    st, bert, cm = minilm
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    cos = []
    with torch.no_grad():
        for batch in _batches(data.TEST_SENTENCES, 12):
            ids, mask = data.tokenize(st, batch)
            ref = data.sentence_embeddings(bert(ids, mask).last_hidden_state, mask)
            sim = data.sentence_embeddings(cm(ids, mask)[0], mask)
            assert not torch.equal(ref, sim)  # the simulation really quantizes
            cos.append(F.cosine_similarity(ref, sim, dim=1))
    cos = torch.cat(cos)
    print(f"\nMiniLM int16: {len(cos)} held-out sentences ({len(data.CALIBRATION_SENTENCES)} for calibration), "
          f"sentence-embedding cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    assert len(cos) == len(data.TEST_SENTENCES)
    assert cos.mean() >= 0.999


# -- EfficientNet-Lite0 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def efficientnet():
    torch.manual_seed(0)
    model = data.load_efficientnet_lite0()
    calib, test = data.calibration_images(64), data.held_out_images(56)
    with torch.no_grad():
        ref = torch.cat([model(x) for x in test.split(28)])
    return model, calib, test, ref


@pytest.mark.parametrize("setter, min_sqnr, min_agree", [(T8, 12.0, 0.90), (T16, 17.0, 0.95)],
                         ids=["int8", "int16_act"])
def test_efficientnet_lite0_logits_track_float(efficientnet, setter, min_sqnr, min_agree):
    model, calib, test, ref = efficientnet
    with torch.no_grad():
        cm = eq.prepare(model, calib[:2], qconfig_setter=(setter,))
        # every conv and the classifier run with int8 per-channel weights
        convs = [n for n in cm.graph.nodes if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)]
        assert len(convs) == 50
        for n in convs:
            fq = fq_of(cm, n.args[1])
            assert fq is not None and fq.dtype == eq.qint8 and fq.ch_axis == 0, n.name
            assert isinstance(cm.get_submodule(n.args[2].target), BiasCorrection), n.name
        calibrate(cm, calib.split(16))
        sim = torch.cat([cm(x) for x in test.split(28)])
    confident = ref.softmax(-1).max(-1).values >= 0.3
    agree = (sim.argmax(-1) == ref.argmax(-1))[confident].float().mean().item()
    sqnr = sqnr_db(ref, sim)
    print(f"\nEfficientNet-Lite0 {setter}: {len(calib)} calibration crops of {data.CALIBRATION_PHOTOS}, "
          f"{len(test)} test crops of {data.TEST_PHOTOS}: logit SQNR {sqnr:.2f} dB, top-1 agreement "
          f"{agree:.3f} on the {int(confident.sum())} crops with float top-1 probability >= 0.3 "
          f"({(sim.argmax(-1) == ref.argmax(-1)).float().mean():.3f} on all)")
    assert int(confident.sum()) >= 30
    assert sqnr < 60  # the simulation really quantizes
    assert sqnr >= min_sqnr
    assert agree >= min_agree


def test_efficientnet_lite0_int8_gptq_gains_over_round_to_nearest(efficientnet):
    """The int8 template's calibration, which ends with GPTQ (its ``weight_rounding``): the held-out
    logits gain over round-to-nearest weights (``weight_rounding="nearest"``), in the simulation and
    in the integer model (64 calibration
    crops here, measured: 22.68 -> 23.46 dB, integer model 23.55; benchmarks/accuracy.py's 32 crops:
    22.43 -> 24.37 dB, integer model). The gain here was 1.2 dB while the empirical bias correction
    after GPTQ took the rounded weights for the float ones (its reference now keeps the float
    weights: it is the float model's mean it restores)."""
    model, calib, test, ref = efficientnet
    with torch.no_grad():
        rtn_model = eq.prepare(model, calib[:2], qconfig_setter=(T8,), weight_rounding="nearest")
        calibrate(rtn_model, calib.split(16))
        rtn = sqnr_db(ref, torch.cat([rtn_model(x) for x in test.split(28)]))
        del rtn_model
        cm = eq.prepare(model, calib[:2], qconfig_setter=(T8,))
        calibrate(cm, calib.split(16))
    assert cm.meta["eq_gptq_choice"]["kept"] == "gptq"
    integer = eq.convert(eq.export(cm, calib[:2]), eq.March.NASH_M)
    with torch.no_grad():
        sim = sqnr_db(ref, torch.cat([cm(x) for x in test.split(28)]))
        got = sqnr_db(ref, torch.cat([integer(x) for x in test.split(28)]))
    print(f"\nEfficientNet-Lite0 int8, held-out logit SQNR: round-to-nearest {rtn:.2f} dB, GPTQ {sim:.2f} dB "
          f"(integer model {got:.2f} dB)")
    assert sim >= rtn + 0.6 and got >= rtn + 0.6
    assert min(sim, got) >= 23.3


# -- the bias correction the results above rely on ----------------------------------------------------------
@pytest.mark.parametrize("op", ["conv2d", "conv1d", "linear"])
def test_bias_correction_removes_the_exact_mean_shift_of_the_weights(op):
    """VALIDATION's bias is the float bias minus the mean over the calibration data (every batch
    element and output position) of the op applied to ``w_q - w``, padding and stride included."""
    torch.manual_seed(0)
    conv_args = {"conv2d": dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3),
                 "conv1d": dict(stride=(2,), padding=(1,), dilation=(1,), groups=1), "linear": {}}[op]
    wshape, xshape = {"conv2d": ((6, 2, 3, 3), (4, 6, 11, 13)), "conv1d": ((5, 4, 3), (3, 4, 17)),
                      "linear": ((5, 7), (2, 3, 7))}[op]
    bc = BiasCorrection(op, **conv_args)
    w, b = torch.randn(wshape), torch.randn(wshape[0])
    wq = w + 0.1 * torch.randn(wshape)
    xs = [torch.rand(xshape) + 1 for _ in range(3)]
    bc.set_state(eq.FakeQuantState.CALIBRATION)
    for x in xs:
        assert bc(x, w, w, b) is b
    bc.set_state(eq.FakeQuantState.VALIDATION)
    if op == "linear":
        shift = torch.cat([(x @ (wq - w).T).reshape(-1, wshape[0]) for x in xs]).mean(0)
    else:
        fn = F.conv2d if op == "conv2d" else F.conv1d
        outs = [fn(x, wq - w, None, *(conv_args[k] for k in ("stride", "padding", "dilation", "groups"))) for x in xs]
        shift = torch.cat(outs).transpose(0, 1).reshape(wshape[0], -1).mean(1)
    torch.testing.assert_close(bc(xs[0], w, wq, b), b - shift, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bc(xs[0], w, wq, None), -shift, rtol=1e-5, atol=1e-6)
    bc.set_state(eq.FakeQuantState.QAT)  # once trained, the bias is the trained one
    bc.set_state(eq.FakeQuantState.VALIDATION)
    assert bc(xs[0], w, wq, b) is b
