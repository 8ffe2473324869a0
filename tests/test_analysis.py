"""edgequant.analysis on the trained residual CNN of tests/models.py.

The acceptance check: one conv's output range is broken on purpose (a fixed scale whose int8
grid covers a sixteenth of the values that conv really produces); ``QuantAnalysis`` must name
that conv as the most sensitive op, propose it for int16, and both raising it to int16 (the
proposed setter) and giving it back its observer must restore the accuracy of the correct
calibration. The other tests check each tool against an independent computation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.analysis import (QuantAnalysis, activation_histograms, check_qconfig, check_unfused_operations,
                                cosine, featuremap_similarity, sqnr)
from edgequant.qconfig_template import ModuleNameQconfigSetter, default_calibration_qconfig_setter
from models import accuracy, calibrate, trained_cnn


@pytest.fixture(scope="module")
def cnn():
    model, data = trained_cnn()
    xtr = data[0]

    def prep(*extra):
        c = eq.prepare(model, xtr[:2], qconfig_setter=(default_calibration_qconfig_setter, *extra))
        return calibrate(c, xtr[:256].split(64))

    return model, data, prep, prep()


@pytest.mark.parametrize("layer", ["down.0", "dw"])
def test_broken_layer_is_found_first_and_int16_or_its_observer_restores_accuracy(cnn, layer):
    model, (xtr, _, xte, yte), prep, good = cnn
    xte, yte = xte[:500], yte[:500]
    real = {h["name"]: h for h in activation_histograms(good, [xtr[:256]])}[layer]
    broken = eq.get_qconfig(observer=eq.FixedScaleObserver,
                            observer_kwargs={"scale": real["max"] / eq.qint8.qmax / 16})
    bad = prep(ModuleNameQconfigSetter({layer: broken}))
    acc_float, acc_good, acc_bad = accuracy(model, xte, yte), accuracy(good, xte, yte), accuracy(bad, xte, yte)
    assert acc_bad < acc_good - 10, "the broken range must cost accuracy for the test to mean anything"

    qa = QuantAnalysis(model, bad, xtr[:256].split(64), num_batches=1)
    table = qa.sensitivity()
    assert table.rows[0].name == layer, str(table)
    assert layer in qa.propose_int16()
    # the worst inputs: per-layer agreement collapses at the broken layer, not before it
    qa.auto_find_bad_case()
    rows = qa.compare_per_layer().rows
    first_bad = min(range(len(rows)), key=lambda i: rows[i]["sqnr"] - (rows[i - 1]["sqnr"] if i else rows[i]["sqnr"]))
    assert rows[first_bad]["name"] == layer, str(qa.layers)

    raised = prep(ModuleNameQconfigSetter({layer: broken}), qa.qconfig_setter())
    acc_raised = accuracy(raised, xte, yte)
    print(f"\n{layer}: float {acc_float:.1f}  correct int8 {acc_good:.1f}  broken {acc_bad:.1f}  "
          f"broken + proposed int16 {acc_raised:.1f}  (proposed: {qa.proposed})")
    # the proposed int16 setter restores float accuracy (within 1 point on 500 images; the correct
    # int8 calibration may land above float by chance: measured float 90.6, int8 91.2, raised 90.0)
    assert acc_raised >= min(acc_good, acc_float) - 1.0
    assert acc_good >= acc_float - 1.0          # its own observer (the correct calibration) restores it


def test_auto_find_bad_case_orders_samples_by_their_own_output_sqnr(cnn):
    model, (xtr, _, xte, _), _, good = cnn
    qa = QuantAnalysis(model, good, [xte[:40], xte[40:80]])
    cases = qa.auto_find_bad_case(num=5)
    assert len(cases) == 80
    with torch.no_grad():
        f, s = model(xte[:80]).double(), good(xte[:80]).double()
    by_hand = sorted(sqnr(f[i], s[i]) for i in range(80))
    assert [c["value"] for c in cases] == pytest.approx(by_hand)
    worst = cases[0]
    assert torch.equal(qa.bad_inputs[0][0], xte[40 * worst["batch"] + worst["index"]])


def test_featuremap_similarity_matches_the_models_outputs_and_integer_bounds(cnn):
    model, (_, _, xte, _), _, good = cnn
    x = xte[:64]
    quantized = eq.convert(eq.export(good), eq.March.NASH_M)
    fs = featuremap_similarity(model, good, x)
    head = fs.rows[-1]
    assert head["name"] == "head"
    with torch.no_grad():
        f, s, i = model(x), good(x), quantized(x)
    assert head["sqnr"] == pytest.approx(sqnr(f, s), abs=1e-3)     # float module vs prepared model
    assert head["cosine"] == pytest.approx(cosine(f, s), abs=1e-6)
    si = featuremap_similarity(good, quantized, x)
    assert si.rows[-1]["max_abs"] == pytest.approx(float((s - i).abs().max()), rel=1e-5)
    # each op is within 0-1 LSB of the simulation (ops/ docstrings); differences propagate, as in
    # tests/test_int_*.py the whole-model check allows 4 LSB
    assert all(r["max_lsb"] <= 4 + 1e-3 for r in si.rows if r["dtype"] != "qint32"), str(si)
    same = featuremap_similarity(quantized, quantized, x)
    assert all(r["sqnr"] == math.inf and r["max_lsb"] == 0 for r in same.rows)
    assert {r["name"] for r in fs.rows} == {r["name"] for r in si.rows}
    # compare_per_layer runs each stage once and gives both comparisons (repr: NaN LSBs compare equal)
    qa = QuantAnalysis(model, good, [x], quantized)
    assert repr(qa.compare_per_layer(x).rows) == repr(fs.rows)
    assert repr(qa.layers_int.rows) == repr(si.rows) and qa.layers_int.kind_a == si.kind_a == "prepared"


class _Unfused(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.side = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(self.quant(x))
        z = F.relu(y)                       # y is also read by self.side: relu cannot fuse
        return self.dequant(self.bn(z * 2) + self.side(y))   # bn after a mul: not folded


def test_check_unfused_operations_names_missed_fusions_and_none_on_the_cnn(cnn):
    model, (xtr, *_), _, _ = cnn
    assert check_unfused_operations(model, xtr[:2]) == []
    found = {r["name"]: r for r in check_unfused_operations(_Unfused().eval(), torch.randn(2, 1, 8, 8))}
    assert set(found) == {"relu", "bn"}
    assert "conv" in found["relu"]["reason"] and "side" in found["relu"]["reason"]
    assert "test_analysis.py" in found["bn"]["source"]


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1)


def test_check_qconfig_lists_every_fake_quant_and_warns_about_int8_before_softmax():
    m = _Attention().eval()
    x = torch.randn(2, 5, 8)
    ok = eq.prepare(m, x, qconfig_setter=(default_calibration_qconfig_setter,))
    n_fq = sum(isinstance(mod, eq.FakeQuantize) for mod in ok.modules())
    check = check_qconfig(ok)
    assert len(check.rows) == n_fq
    assert not any("softmax" in w for w in check.warnings)     # the template gives softmax's input int16
    int8 = eq.get_qconfig(observer=eq.MinMaxObserver)
    forced = eq.prepare(m, x, qconfig_setter=(default_calibration_qconfig_setter, ModuleNameQconfigSetter({"matmul": int8})))
    check = check_qconfig(forced)
    assert any(w.startswith("matmul:") and "softmax" in w for w in check.warnings), check.warnings
    assert {r["name"]: r["consumers"] for r in check.rows}["matmul"] == ["softmax"]


def test_activation_histograms_count_clipping_exactly(cnn):
    _, (xtr, *_), _, good = cnn
    x = xtr[:128] * 1.5                  # inputs beyond the calibrated [0, 1]: the input tensor clips
    hist = {h["name"]: h for h in activation_histograms(good, [x[:64], x[64:]], max_values=1000)}
    h = hist["quant"]
    lo, hi = h["clip"]
    scale, zp = float(good.eq_fq["quant"].scale), int(good.eq_fq["quant"].zero_point)
    assert (lo, hi) == pytest.approx((scale * (eq.qint8.qmin - zp), scale * (eq.qint8.qmax - zp)))
    assert h["clipped_share"] == pytest.approx(float(((x < lo) | (x > hi)).double().mean()))
    assert h["min"] == pytest.approx(float(x.min())) and h["max"] == pytest.approx(float(x.max()))
    assert sum(h["counts"]) == 2000      # a bounded subsample: 1000 per batch
    assert set(hist) >= {"stem.0", "dw", "add", "down.0", "down.3"}


def test_report_is_one_self_contained_file_with_every_section(cnn, tmp_path):
    model, (xtr, *_), _, good = cnn
    quantized = eq.convert(eq.export(good), eq.March.NASH_M)
    path = eq.analysis.report(tmp_path / "r.html", model, good, quantized, xtr[:128].split(64),
                              tables={"accuracy": [{"stage": "float", "top-1": 99.0}]})
    text = path.read_text()
    for section in ("accuracy", "Qconfig of every tensor", "Per-layer agreement", "Op sensitivity",
                    "Activation histograms", "Lookup tables", "proposed for int16"):
        assert section in text
    assert text.count("<img") >= 3 and text.count("data:image/png;base64,") == text.count("<img")
    assert "http://" not in text and "https://" not in text and "<script" not in text
