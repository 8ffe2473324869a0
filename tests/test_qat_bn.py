"""QAT with BatchNorm kept (issue 18, part 1): edgequant.qat_bn, edgequant.nn.bn_fold, freeze_bn.

A model in train mode prepared with a QAT template keeps each conv/linear + BN pair as a
``BatchNormFold`` unit: batch statistics in training, running statistics in eval and after
``freeze_bn``, folded by export exactly as the eval-mode simulation folds.
"""
import copy
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.nn.bn_fold import BatchNormFold
from edgequant.qconfig_template import (
    default_calibration_qconfig_setter as T8, default_qat_qconfig_setter as Q8,
    qat_8bit_weight_16bit_act_qconfig_setter as Q16,
)

from models import accuracy, calibrate, trained_cnn


class _Small(nn.Module):
    """conv2d + BN2d + ReLU, conv1d (with bias) + BN1d + ReLU, linear + BN1d: the three kinds."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(8, momentum=None)   # cumulative average
        self.fc = nn.Linear(8, 6)
        self.bn2 = nn.BatchNorm1d(6)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.quant(x))))
        x = F.relu(self.bn1(self.conv1(x.flatten(2))))
        return self.dequant(self.bn2(self.fc(x.mean(2))))


def _small():
    torch.manual_seed(0)
    m = _Small()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.train()


def _data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 6, (n,), generator=g)


def _units(qm):
    return {k: u for k, u in qm.eq_bn.items()} if hasattr(qm, "eq_bn") else {}


def test_train_mode_qat_template_keeps_every_pair_and_computes_torch_batch_norm():
    model, (x, _) = _small(), _data()
    qm = eq.prepare(model, x[:2], qconfig_setter=(Q8,))
    assert sorted(_units(qm)) == ["conv", "conv1", "fc"]
    assert not any(n.target is torch.ops.aten.batch_norm.default for n in qm.graph.nodes)
    # FLOAT state, train mode: the float model's function with batch statistics, same running statistics
    ref = copy.deepcopy(model).train()
    qm.train()
    torch.testing.assert_close(qm(x), ref(x), rtol=1e-4, atol=1e-5)
    for key, bn in (("conv", ref.bn), ("conv1", ref.bn1), ("fc", ref.bn2)):
        u = qm.eq_bn[key]
        torch.testing.assert_close(u.running_mean, bn.running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(u.running_var, bn.running_var, rtol=1e-4, atol=1e-6)
        assert int(u.num_batches_tracked) == int(bn.num_batches_tracked) == 1
    # eval mode: running statistics, as the float model in eval mode
    qm.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(qm(x), ref(x), rtol=1e-4, atol=1e-5)


def test_eval_mode_or_calibration_template_folds_as_before():
    model, (x, _) = _small(), _data()
    assert not _units(eq.prepare(model.eval(), x[:2], qconfig_setter=(Q8,)))
    assert not _units(eq.prepare(model.train(), x[:2], qconfig_setter=(T8,)))
    assert model.training   # prepare leaves the user's model as it was


def _qat_steps(qm, steps=3, lr=0.05):
    opt = torch.optim.SGD(qm.parameters(), lr=lr)
    qm.train()
    for k in range(steps):
        x, y = _data(seed=10 + k)
        opt.zero_grad()
        F.cross_entropy(qm(x), y).backward()
        opt.step()


def test_batch_norm_parameters_get_gradients_in_qat():
    model, (x, y) = _small(), _data()
    qm = calibrate(eq.prepare(model, x[:2], qconfig_setter=(Q8,)), [x])
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    qm.train()
    F.cross_entropy(qm(x), y).backward()
    for key, u in _units(qm).items():
        for p in (u.bn_weight, u.bn_bias, u.weight):
            assert p.grad is not None and p.grad.abs().sum() > 0, key
    # frozen: gamma and beta still train (through the folded weight and bias)
    qm.zero_grad()
    eq.freeze_bn(qm)
    F.cross_entropy(qm(x), y).backward()
    for key, u in _units(qm).items():
        assert u.bn_weight.grad.abs().sum() > 0 and u.bn_bias.grad.abs().sum() > 0, key


def test_eval_simulation_and_export_equal_a_hand_folded_reference():
    model, (x, _) = _small(), _data()
    qm = calibrate(eq.prepare(model, x[:2], qconfig_setter=(Q16,)), [x])
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    _qat_steps(qm)
    eq.set_fake_quantize(qm, eq.FakeQuantState.VALIDATION)
    # the fold by hand: w * g / sqrt(v + eps), (b - m) * g / sqrt(v + eps) + beta
    u = qm.eq_bn["conv1"]
    f = u.bn_weight / torch.sqrt(u.running_var + u.eps)
    assert torch.equal(u("weight"), u.weight * f.reshape(-1, 1, 1))
    assert torch.equal(u("bias"), (u.bias - u.running_mean) * f + u.bn_bias)
    # the float model with the trained parameters, prepared in eval mode (BN folded at prepare)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for conv, bn, key in ((ref.conv, ref.bn, "conv"), (ref.conv1, ref.bn1, "conv1"), (ref.fc, ref.bn2, "fc")):
            unit = qm.eq_bn[key]
            conv.weight.copy_(unit.weight)
            if conv.bias is not None:
                conv.bias.copy_(unit.bias)
            bn.weight.copy_(unit.bn_weight), bn.bias.copy_(unit.bn_bias)
            bn.running_mean.copy_(unit.running_mean), bn.running_var.copy_(unit.running_var)
    folded = eq.prepare(ref.eval(), x[:2], qconfig_setter=(Q16,))
    folded.load_state_dict({k: v for k, v in qm.state_dict().items() if k.startswith(("eq_fq.", "eq_bc."))},
                           strict=False)
    eq.set_fake_quantize(folded, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        assert torch.equal(qm(x), folded(x))
    g_kept, g_folded = eq.export(qm, x[:2]), eq.export(folded, x[:2])
    assert g_kept.constants.keys() == g_folded.constants.keys()
    for k in g_kept.constants:
        assert torch.equal(g_kept.constants[k], g_folded.constants[k]), k
    with torch.no_grad():
        assert torch.equal(eq.convert(g_kept, eq.March.NASH_M)(x), eq.convert(g_folded, eq.March.NASH_M)(x))


def test_freeze_bn_stops_the_statistics_and_unfreeze_resumes_them():
    model, (x, _) = _small(), _data()
    qm = calibrate(eq.prepare(model, x[:2], qconfig_setter=(Q8,)), [x])
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    assert eq.freeze_bn(qm) is qm and all(bool(u.frozen) for u in _units(qm).values())
    before = {k: v.clone() for k, v in qm.state_dict().items() if "running_" in k or "num_batches" in k}
    _qat_steps(qm)
    assert all(torch.equal(qm.state_dict()[k], v) for k, v in before.items())
    eq.set_fake_quantize(qm, eq.FakeQuantState.VALIDATION)
    qm.train()   # frozen train mode computes what eval mode computes
    with torch.no_grad():
        a = qm(x)
        assert torch.equal(a, qm.eval()(x))
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    eq.freeze_bn(qm, freeze=False)
    _qat_steps(qm, steps=1)
    assert not torch.equal(qm.eq_bn["conv"].running_mean, before["eq_bn.conv.running_mean"])
    # arguments are checked like every public function's
    with pytest.raises(ValueError, match="freeze_bn"):
        eq.freeze_bn(model)
    with pytest.raises(TypeError, match="freeze_bn"):
        eq.freeze_bn(qm, freeze="yes")


# -- acceptance: the MNIST residual CNN -----------------------------------------------------------------
def test_mnist_cnn_qat_with_batch_norm_acceptance():
    """Prepared in train mode with BN kept, started from calibration: within 0.2 point of float in a
    few epochs; running statistics change until freeze_bn and not after; the integer model's
    accuracy equals the QAT simulation's within 0.1 point."""
    start = time.perf_counter()
    model, (xtr, ytr, xte, yte) = trained_cnn()
    float_acc = accuracy(model, xte, yte)
    qm = eq.prepare(copy.deepcopy(model).train(), xtr[:2], qconfig_setter=(Q8,))
    assert len(_units(qm)) == 5 and all(isinstance(u, BatchNormFold) for u in _units(qm).values())
    calibrate(qm, xtr[:256].split(64))
    calib_acc = accuracy(qm, xte, yte)
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)
    torch.manual_seed(1)
    opt = torch.optim.Adam(qm.parameters(), lr=1e-4)
    gamma0 = qm.eq_bn["stem__0"].bn_weight.detach().clone()
    changed = []
    for epoch in range(3):
        if epoch == 2:
            eq.freeze_bn(qm)
        stats = {k: v.clone() for k, v in qm.state_dict().items() if "running_" in k}
        qm.train()
        for idx in torch.randperm(2000).split(64):   # an epoch: the first 2,000 training images
            opt.zero_grad()
            F.cross_entropy(qm(xtr[idx]), ytr[idx]).backward()
            opt.step()
        changed.append(all(not torch.equal(qm.state_dict()[k], v) for k, v in stats.items()))
    assert changed == [True, True, False]
    assert not torch.equal(qm.eq_bn["stem__0"].bn_weight, gamma0)   # BN's gamma trained
    eq.set_fake_quantize(qm, eq.FakeQuantState.VALIDATION)
    qat_acc = accuracy(qm, xte, yte)
    int_model = eq.convert(eq.export(qm, xtr[:2]), eq.March.NASH_M)
    int_acc = accuracy(int_model, xte, yte)
    print(f"float {float_acc:.2f}  calibrated {calib_acc:.2f}  QAT (BN kept) {qat_acc:.2f}  integer {int_acc:.2f}  "
          f"({time.perf_counter() - start:.0f} s)")
    assert qat_acc >= float_acc - 0.2
    assert abs(int_acc - qat_acc) <= 0.1
