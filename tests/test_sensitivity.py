"""Per-op sensitivity (edgequant.ptq.op_sensitivity) and the int16 setter built from it.

The table's values are checked against plain runs of the prepared model with only that op's
fake quantization switched on; the setter is checked on all-MiniLM-L6-v2, where raising the
10 % most sensitive ops to int16 must close at least half of the sentence-embedding cosine gap
between all-int8 and all-int16 (all measured here against the float model).
"""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import edgequant as eq
from edgequant.ptq import SensitivityTable, get_sensitive_op_qconfig_setter, op_sensitivity
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn


@pytest.fixture(scope="module")
def cnn():
    model, (xtr, _, xte, _) = trained_cnn()
    cm = calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(T8,)), xtr[:256].split(64))
    return model, cm, xte[:64].split(32)


def only_op_quantized(cm, site, batches):
    """The model's outputs with the fake quantization of ``site`` alone on (a plain forward), and the
    bias corrections without their empirical part (measured for the whole quantized model)."""
    mine = re.compile(re.escape(site) + r"(\.weight|\.input\d+)?$")
    fqs = {n.target: bool(mine.match(n.meta["eq_fq"])) for n in cm.graph.nodes if "eq_fq" in n.meta}
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    for target, on in fqs.items():
        cm.get_submodule(target).state = eq.FakeQuantState.VALIDATION if on else eq.FakeQuantState.FLOAT
    saved = {k: bc.empirical for k, bc in cm.eq_bc.items()}
    for bc in cm.eq_bc.values():
        bc.empirical = torch.empty(0)
    try:
        with torch.no_grad():
            return torch.cat([cm(b) for b in batches])
    finally:
        for k, bc in cm.eq_bc.items():
            bc.empirical = saved[k]
        eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)


@pytest.mark.parametrize("metric", ["sqnr", "cosine", "mse"])
def test_each_row_is_the_output_error_with_only_that_op_quantized(cnn, metric):
    _, cm, batches = cnn
    table = op_sensitivity(cm, batches, metric=metric, progress=False)
    names = [r.name for r in table.rows]
    assert sorted(names) == sorted(cm.meta["edgequant"]["sites"])
    eq.set_fake_quantize(cm, eq.FakeQuantState.FLOAT)
    with torch.no_grad():
        ref = torch.cat([cm(b) for b in batches]).double()
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    for row in table.rows:
        out = only_op_quantized(cm, row.name, batches).double()
        err = (out - ref).pow(2).sum()
        expected = {"sqnr": float(10 * torch.log10(ref.pow(2).sum() / err)),
                    "cosine": float(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)),
                    "mse": float(err / ref.numel())}[metric]
        assert math.isclose(row.value, expected, rel_tol=1e-6, abs_tol=1e-9), (row, expected)
    values = [r.value for r in table.rows]
    assert values == sorted(values, reverse=(metric == "mse"))  # most sensitive first


def test_table_round_trips_through_json_and_prints(cnn):
    _, cm, batches = cnn
    table = op_sensitivity(cm, batches[:1], progress=False)
    again = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table
    text = str(table)
    assert all(r.name in text for r in table.rows) and "SQNR" in text
    assert table.top(topk=2) == [r.name for r in table.rows[:2]]
    assert len(table.top(ratio=0.5)) == math.ceil(0.5 * len(table.rows))
    with pytest.raises(ValueError, match="exactly one"):
        table.top()


def test_setter_raises_only_the_chosen_ops(cnn):
    model, cm, batches = cnn
    table = op_sensitivity(cm, batches[:1], progress=False)
    top = table.top(topk=3)
    mixed = eq.prepare(model, batches[0][:2], qconfig_setter=(T8, get_sensitive_op_qconfig_setter(table, topk=3)))
    plain = eq.prepare(model, batches[0][:2], qconfig_setter=(T8,))
    dtypes = lambda m: {n.meta["eq_fq"]: m.get_submodule(n.target).dtype  # noqa: E731
                        for n in m.graph.nodes if "eq_fq" in n.meta and not n.meta["eq_fq"].endswith(".weight")}
    got, base = dtypes(mixed), dtypes(plain)
    assert {k for k in got if got[k] != base[k]} == {k for k in top if k in base}
    assert all(got[k] == eq.qint16 for k in top if k in got)
    with pytest.raises(ValueError, match="not ops of this model"):
        eq.prepare(model, batches[0][:2], qconfig_setter=(T8, get_sensitive_op_qconfig_setter(
            SensitivityTable("sqnr", [type(table.rows[0])("nope", "conv2d", 1.0)]), topk=1)))


@pytest.mark.slow
def test_minilm_top_tenth_int16_closes_half_the_int8_int16_gap():
    import real_data as data

    st = data.load_minilm()
    bert = st[0].auto_model.eval()
    torch.manual_seed(0)
    example = data.tokenize(st, data.CALIBRATION_SENTENCES[:4])
    calib = [data.tokenize(st, data.CALIBRATION_SENTENCES[i:i + 8]) for i in range(0, len(data.CALIBRATION_SENTENCES), 8)]
    ids, mask = data.tokenize(st, data.TEST_SENTENCES)
    with torch.no_grad():
        ref = data.sentence_embeddings(bert(ids, mask).last_hidden_state, mask)

    def calibrated(setters):
        with torch.no_grad():
            return calibrate(eq.prepare(bert, example, qconfig_setter=setters), calib)

    def cosine(cm):
        with torch.no_grad():
            return F.cosine_similarity(ref, data.sentence_embeddings(cm(ids, mask)[0], mask)).mean().item()

    int8 = calibrated((T8,))
    table = op_sensitivity(int8, calib[:2], progress=False)
    mixed = calibrated((T8, get_sensitive_op_qconfig_setter(table, ratio=0.1)))
    c8, c16, cm = cosine(int8), cosine(calibrated((T16,))), cosine(mixed)
    print(f"\nMiniLM sentence cosine to float: int8 {c8:.5f}  int16 {c16:.5f}  "
          f"int8 + top 10% ({len(table.top(ratio=0.1))} of {len(table.rows)} ops) int16 {cm:.5f}  "
          f"gap closed {(cm - c8) / (c16 - c8):.0%}")
    print("\n".join(str(table).splitlines()[:11]))
    assert c16 > c8
    assert cm - c8 >= 0.5 * (c16 - c8)
