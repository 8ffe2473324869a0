"""all-MiniLM-L6-v2 with every nonlinear op a table: GELU, softmax, layer norm (no stubs).

The VALIDATION simulation already runs the integer table kernels (bit for bit what the integer
model computes for those ops), so its sentence-embedding cosine to float is what the tables
cost. The integer model itself is then exported and converted; until every other op of BERT
has its integer lowering, a ``ConvertError`` on a non-table op marks the test xfail with the
missing op's message.

Run alone: ``HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s tests/test_lut_minilm.py``
"""
import pytest
import torch
import torch.nn.functional as F

import edgequant as eq
from edgequant.convert import ConvertError
from edgequant.lut.sim import LutOp
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

import real_data as data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    st = data.load_minilm()
    return st, st[0].auto_model.eval()


@pytest.mark.parametrize("setter,bound", [(T16, 0.995), (T8, 0.97)], ids=["int8w_int16a", "int8"])
def test_minilm_sentence_embeddings_with_integer_tables(minilm, setter, bound):
    st, bert = minilm
    torch.manual_seed(0)
    example = data.tokenize(st, data.CALIBRATION_SENTENCES[:4])
    with torch.no_grad():
        cm = eq.prepare(bert, example, qconfig_setter=(setter,))
        eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
        for i in range(0, len(data.CALIBRATION_SENTENCES), 8):
            cm(*data.tokenize(st, data.CALIBRATION_SENTENCES[i:i + 8]))
        eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    kinds = sorted({m.op for m in cm.modules() if isinstance(m, LutOp)})
    assert kinds == ["gelu", "layer_norm", "softmax", "tanh"]  # tanh: the pooler
    ids, mask = data.tokenize(st, data.TEST_SENTENCES)
    with torch.no_grad():
        ref = data.sentence_embeddings(bert(ids, mask).last_hidden_state, mask)
        sim = data.sentence_embeddings(cm(ids, mask)[0], mask)
    cos_sim = F.cosine_similarity(ref, sim).mean().item()
    print(f"\nMiniLM {setter}: simulation (integer tables) mean cosine {cos_sim:.5f}")
    assert cos_sim >= bound
    ir = eq.export(cm, example)
    try:
        qg = eq.convert(ir, eq.March.NASH_M)
    except ConvertError as exc:
        pytest.xfail(f"the integer model cannot be built yet: {str(exc).splitlines()[0]}")
    out = qg(ids, mask)
    hidden = out[0] if isinstance(out, (tuple, list)) else out["last_hidden_state"]
    cos_int = F.cosine_similarity(ref, data.sentence_embeddings(hidden, mask)).mean().item()
    print(f"MiniLM {setter}: integer model mean cosine {cos_int:.5f}")
    assert cos_int >= bound
