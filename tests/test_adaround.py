"""AdaRound (edgequant.ptq.adaround) on the trained residual CNN with 4-bit per-channel weights.

Round-to-nearest (RTN) is the same prepared model without AdaRound and without bias correction
(AdaRound replaces it: its targets already carry the float biases). Accuracy is on the held-out
MNIST images; per-layer output MSE is to the float model's layer outputs on held-out images.
"""
import pytest
import torch
from torch import fx

import edgequant as eq
from edgequant.ptq import adaround, calibration_4bit_weight_8bit_act_qconfig_setter as T4
from edgequant.ptq.adaround import _layers

from models import accuracy, trained_cnn

CFG = {"num_batches": 5, "num_step": 100, "batch_size": 8, "lr": 0.03, "progress": False}


def calibrated(model, xtr):
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T4,), bias_correction=False)
    eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x in xtr[:256].split(64):
            cm(x)
    eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)
    return cm


def layer_outputs(gm, x):
    """Output of every conv/linear of ``gm`` on ``x``, by site name."""
    nodes = {op: site for site, op, *_ in _layers(gm)}
    outs = {}

    class Rec(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n in nodes:
                outs[nodes[n]] = r.detach()
            return r

    with torch.no_grad():
        Rec(gm).run(x)
    return outs


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model, (xtr, ytr, xte, yte) = trained_cnn()
    rtn = calibrated(model, xtr)
    ada = calibrated(model, xtr)
    adaround(ada, list(xtr[:640].split(64)), CFG)
    return model, rtn, ada, (xtr, ytr, xte, yte)


def test_adaround_recovers_half_of_the_rtn_accuracy_loss(models):
    model, rtn, ada, (_, _, xte, yte) = models
    f, r, a = accuracy(model, xte, yte), accuracy(rtn, xte, yte), accuracy(ada, xte, yte)
    print(f"float {f:.2f}  4-bit RTN {r:.2f}  4-bit AdaRound {a:.2f}")
    assert r <= f - 1.0  # the deterministic training of tests/models.py: RTN really loses accuracy
    assert a - r >= 0.5 * (f - r)


def test_adaround_lowers_every_layer_output_mse(models):
    model, rtn, ada, (_, _, xte, _) = models
    x = xte[:500]
    eq.set_fake_quantize(rtn, eq.FakeQuantState.FLOAT)
    ref = layer_outputs(rtn, x)
    eq.set_fake_quantize(rtn, eq.FakeQuantState.VALIDATION)
    r, a = layer_outputs(rtn, x), layer_outputs(ada, x)
    assert set(ref) == {"stem.0", "dw", "pw", "down.0", "down.3", "head"}
    for k in ref:
        mr, ma = (r[k] - ref[k]).pow(2).mean().item(), (a[k] - ref[k]).pow(2).mean().item()
        print(f"{k}: MSE RTN {mr:.5f}  AdaRound {ma:.5f}")
        assert ma < mr, k
    for k, v in ada.meta["eq_adaround"].items():  # on the calibration data, same inputs
        assert v["mse_adaround"] < v["mse_rtn"], k


def check_weights_stay_rounded(gm, x):
    """Every conv/linear weight is on its FakeQuantize's grid, and recalibrating keeps the scale."""
    for site, op, wq_node, fq, _ in _layers(gm):
        w = gm.get_parameter(wq_node.args[0].target).detach()
        assert torch.equal(fq(w), w), site
        scale = fq.scale.clone()
        eq.set_fake_quantize(gm, eq.FakeQuantState.CALIBRATION)
        with torch.no_grad():
            gm(x)
        eq.set_fake_quantize(gm, eq.FakeQuantState.VALIDATION)
        assert torch.equal(fq.scale, scale), site  # the scale stays fixed through recalibration
        assert torch.equal(fq(w), w), site


def test_rounded_weights_are_reproduced_exactly(models):
    _, _, ada, (xtr, _, _, _) = models
    check_weights_stay_rounded(ada, xtr[:8])


def test_data_loader_and_exclude_prefix():
    model, (xtr, ytr, _, _) = trained_cnn()
    cm = calibrated(model, xtr)
    before = {n: p.detach().clone() for n, p in cm.named_parameters()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr[:64], ytr[:64]), batch_size=32)
    adaround(cm, loader, {"num_step": 2, "num_batches": 2, "progress": False,
                          "exclude_prefix": ["stem", "dw", "pw", "down"]})
    assert list(cm.meta["eq_adaround"]) == ["head"]
    changed = {n for n, p in cm.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {"head.weight"}
    with pytest.raises(ValueError, match="unknown config keys"):
        adaround(cm, [xtr[:8]], {"num_steps": 1})
