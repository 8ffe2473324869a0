"""What the prepared model and the integer model do with inputs they were not traced for.

Wrong inputs (count, type, dtype kind, rank, a dim that tracing fixed) get one error naming
the input and the traced shape, from the prepared model as from the integer model; a dim the
model's code fixes (a loop over the batch, a literal in a reshape) is recorded as fixed; an
empty batch runs everywhere; a quantize step refuses NaN and saturates +-Inf. References are
the float models themselves.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.inputs import NonFiniteInputError
from edgequant.observers import OBSERVERS
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8, \
    default_qat_qconfig_setter as Q8


class Net(nn.Module):
    """No stubs: the float input is quantized where the graph starts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return torch.softmax(self.fc(F.relu(self.conv(x)).mean((2, 3))), -1)


class LoopOverBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.cat([self.conv(x[i:i + 1]).mean((2, 3)) for i in range(x.shape[0])])


class LiteralBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).view(2, -1))


class BatchArithmetic(nn.Module):
    """``x.shape[0] * 2`` in a reshape: the batch dim stays symbolic, every sample separate."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(x.shape[0] * 2, -1).mean(1).reshape(x.shape[0], 2)


def _models(model, example, template=T8, batches=3):
    """Prepared (calibrated on ``example`` and more), quant-level and integer models."""
    torch.manual_seed(1)
    model.eval()
    gm = eq.prepare(model, example, qconfig_setter=(template,))
    eq.calibrate(gm, [example] + [torch.randn_like(example) for _ in range(batches)])
    ir = eq.export(gm)
    return gm, ir, eq.convert(ir)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return (Net().eval(), *_models(Net(), torch.randn(2, 3, 8, 8)))


def _callers(net):
    model, gm, ir, ig = net
    return {"prepared": gm, "prepared copy": copy.deepcopy(gm), "quant graph": ir, "integer graph": ig}


# -- wrong inputs ----------------------------------------------------------------------------------
BAD = {
    "spatial size": ((torch.randn(2, 3, 9, 9),), ValueError, "input 'x' has shape (2, 3, 9, 9) but the model was "
                     "traced with (s"),
    "rank": ((torch.randn(2, 3, 8, 8, 1),), ValueError, "input 'x' has shape (2, 3, 8, 8, 1)"),
    "bool": ((torch.zeros(2, 3, 8, 8, dtype=torch.bool),), TypeError, "input 'x' has dtype bool but the model was "
             "traced with float32 (float)"),
    "complex": ((torch.zeros(2, 3, 8, 8, dtype=torch.complex64),), TypeError, "input 'x' has dtype complex64"),
    "not a tensor": (([[0.0]],), TypeError, "input 'x' must be a tensor, got list"),
    "count": ((torch.randn(2, 3, 8, 8), torch.randn(2)), TypeError, "the model takes 1 input (x)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_wrong_input_gets_one_error_naming_it_everywhere(net, case):
    args, exc, text = BAD[case]
    for where, f in _callers(net).items():
        with pytest.raises(exc) as info:
            f(*args)
        msg = str(info.value)
        assert text in msg, f"{where}: {msg}"
        assert "Guard failed" not in msg and "\n" not in msg, f"{where}: {msg}"


def test_an_integer_tensor_for_a_float_input_runs_as_its_float_values(net):
    model, gm, ir, ig = net
    x = torch.randint(-3, 4, (2, 3, 8, 8), dtype=torch.int8)
    for f in _callers(net).values():
        assert torch.equal(f(x), f(x.float()))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 8), nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids))[:, 0]


def test_a_float_tensor_for_an_integer_input_is_refused():
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (2, 5))
    gm, ir, ig = _models(Tokens(), ids, batches=0)
    assert ig(ids[:, :3]).shape == gm(ids[:, :3]).shape == (2, 3)   # every dim of an integer input may vary
    for f in (gm, ir, ig):
        with pytest.raises(TypeError, match=r"input 'ids' has dtype float32 but the model was traced with int64 "
                                            r"\(integer\); pass an integer tensor \(e.g. x.long\(\)\)"):
            f(ids.float())


def test_the_prepared_model_names_missing_doubled_and_unknown_keyword_inputs(net):
    model, gm, _, _ = net
    x = torch.randn(2, 3, 8, 8)
    for f in (gm, copy.deepcopy(gm)):
        with pytest.raises(TypeError, match=r"the model takes 1 input \(x\); got no 'x'"):
            f()
        with pytest.raises(TypeError, match="got the unknown keyword 'y', no 'x'"):
            f(y=x)
        with pytest.raises(TypeError, match="got 'x' twice"):
            f(x, x=x)
        assert torch.equal(f(x=x), f(x))


def test_a_wrong_input_never_reaches_the_observers(net):
    model, gm, _, _ = net
    gm = copy.deepcopy(gm)
    eq.set_fake_quantize(gm, eq.FakeQuantState.CALIBRATION)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    with pytest.raises(ValueError, match="input 'x' has shape"):
        gm(torch.randn(2, 3, 10, 10) * 100)
    after = gm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_fresh_prepared_model_given_a_state_dict_keeps_its_checks(net):
    model, gm, _, _ = net
    fresh = eq.prepare(model, torch.randn(2, 3, 8, 8), qconfig_setter=(T8,))
    fresh.load_state_dict(gm.state_dict())
    eq.set_fake_quantize(fresh, eq.FakeQuantState.VALIDATION)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(fresh(x), gm(x))
    assert torch.equal(fresh(x=x), gm(x))   # by keyword, as the copies accept
    with pytest.raises(TypeError, match="input 'x' has dtype bool"):
        fresh(x > 0)


# -- dims that tracing fixed ---------------------------------------------------------------------
@pytest.mark.parametrize("cls, batch", [(LoopOverBatch, 2), (LoopOverBatch, 1), (LiteralBatch, 2)])
def test_a_batch_size_the_model_fixes_is_recorded_and_enforced(cls, batch):
    torch.manual_seed(0)
    model = cls().eval()
    example = torch.randn(batch, 3, 8, 8)    # a batch of one is traced as given, not doubled
    gm, ir, ig = _models(model, example)
    traced = (batch, 3, 8, 8)
    assert ir.values["x"].shape == traced and ig.values["x"].shape == traced
    x = example                       # among the calibration data: no range misses
    ref = model(x)
    for f in (gm, ir, ig):
        out = f(x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
    other = torch.randn(3, 3, 8, 8)
    for f in (gm, copy.deepcopy(gm), ir, ig):
        with pytest.raises(ValueError, match=rf"input 'x' has shape \(3, 3, 8, 8\) but the model was traced with "
                                             rf"\({batch}, 3, 8, 8\)"):
            f(other)


class SharedConv(nn.Module):
    """One conv called on two inputs: both ops read the same weight constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.cat([self.conv(x), self.conv(x.flip(-1))], 1).mean((2, 3))


def test_a_weight_shared_by_two_ops_converts_once_per_op():
    torch.manual_seed(0)
    model = SharedConv().eval()
    x = torch.randn(4, 3, 8, 8)
    gm, ir, ig = _models(model, x)
    ref = model(x)
    for f in (gm, ir, ig):
        assert (f(x) - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


def test_a_batch_size_used_in_arithmetic_stays_dynamic_and_per_sample():
    torch.manual_seed(0)
    model = BatchArithmetic().eval()
    x = torch.randn(5, 3, 8, 8)
    gm, ir, ig = _models(model, x[:2])
    eq.calibrate(gm, [x])
    ir = eq.export(gm)
    ig = eq.convert(ir)
    assert isinstance(ig.values["x"].shape[0], str)
    ref = model(x)
    for f in (gm, ir, ig):
        out = f(x)
        assert out.shape == ref.shape == (5, 2)
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
        assert torch.equal(out, torch.cat([f(x[i:i + 1]) for i in range(5)]))


# -- empty batches -------------------------------------------------------------------------------
def test_an_empty_batch_runs_in_every_state_and_on_the_integer_model(net):
    model, gm, ir, ig = net
    empty = torch.randn(0, 3, 8, 8)
    want = model(empty).shape
    gm = copy.deepcopy(gm)
    for state in eq.FakeQuantState:
        eq.set_fake_quantize(gm, state)
        assert gm(empty).shape == want, state
    assert ir(empty).shape == want
    assert ig(empty).shape == want


@pytest.mark.parametrize("template", [T8, Q8], ids=["calibration", "qat"])
def test_an_empty_batch_leaves_calibration_unchanged(template):
    torch.manual_seed(0)
    model = Net().eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    with_empty = eq.calibrate(eq.prepare(model, batches[0], qconfig_setter=(template,)),
                              [batches[0], batches[0][:0], batches[1]])
    without = eq.calibrate(eq.prepare(model, batches[0], qconfig_setter=(template,)), batches)
    a, b = with_empty.state_dict(), without.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(n for n in OBSERVERS if n != "mix"))
def test_an_observer_ignores_an_empty_tensor(name):
    obs = OBSERVERS[name](dtype="qint8", **({"scale": 0.1} if name == "fixed_scale" else {}))
    obs(torch.randn(64))
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    obs(torch.randn(0))
    after = obs.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- NaN and Inf at the quantize step ----------------------------------------------------------------
def _with_nan():
    x = torch.randn(2, 3, 8, 8)
    for idx in [(0, 0, 4, 7), (0, 2, 1, 1), (1, 1, 0, 0)]:
        x[idx] = float("nan")
    return x


def test_nan_is_refused_by_the_integer_model_and_its_simulation(net):
    model, gm, ir, ig = net
    x = _with_nan()
    gm = copy.deepcopy(gm)
    said = r"input 'x' holds 3 NaN values \(first at index \(0, 0, 4, 7\)\); .*quantize"
    for f in (ig, ir, gm):                                 # integer, quant level, VALIDATION
        with pytest.raises(NonFiniteInputError, match=said):
            f(x)
    eq.set_fake_quantize(gm, eq.FakeQuantState.QAT)
    with pytest.raises(NonFiniteInputError, match="input 'x' holds 3 NaN"):
        gm(x)
    eq.set_fake_quantize(gm, eq.FakeQuantState.CALIBRATION)
    with pytest.raises(ValueError, match="3 NaN"):
        gm(x)
    eq.set_fake_quantize(gm, eq.FakeQuantState.FLOAT)     # the float model: NaN flows through
    assert torch.isnan(gm(x)).any() and torch.isnan(model(x)).any()


class LogThenQuantize(nn.Module):
    """A float op before the QuantStub: the quantize node reads value 'log', not the input."""

    def __init__(self):
        super().__init__()
        self.q, self.dq, self.fc = eq.QuantStub(), eq.DeQuantStub(), nn.Linear(4, 3)

    def forward(self, x):
        return self.dq(self.fc(self.q(torch.log(x))))


def test_nan_made_inside_the_model_is_refused_naming_the_value():
    model = LogThenQuantize().eval()
    torch.manual_seed(0)
    gm = eq.prepare(model, torch.rand(2, 4) + 0.1, qconfig_setter=(T8,))
    eq.calibrate(gm, [torch.rand(8, 4) + 0.1])
    ig = eq.convert(eq.export(gm))
    x = torch.rand(2, 4) + 0.1
    x[1, 2] = -1.0                                          # log(-1) is NaN
    assert torch.isnan(model(x)).any()
    for f in (gm, ig):
        with pytest.raises(NonFiniteInputError, match=r"value 'log' holds 1 NaN value \(first at index \(1, 2\)\)"):
            f(x)


def test_inf_saturates_to_the_end_of_the_grid_in_both(net):
    model, gm, ir, ig = net
    x = torch.randn(2, 3, 8, 8)
    x_inf, x_big = x.clone(), x.clone()
    x_inf[0, 0, 4, 7], x_inf[1, 2, 0, 0] = float("inf"), float("-inf")
    x_big[0, 0, 4, 7], x_big[1, 2, 0, 0] = 1e30, -1e30     # far beyond the calibrated range
    for f in (gm, ir, ig):
        assert torch.equal(f(x_inf), f(x_big))
        assert torch.isfinite(f(x_inf)).all()
    _, env = ig(x_inf, return_intermediates=True)
    q = env[ig.nodes[0].outputs[0]]
    assert ig.nodes[0].op == "quantize"
    assert q[0, 0, 4, 7] == 127 and q[1, 2, 0, 0] == -128
