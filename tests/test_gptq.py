"""GPTQ weight rounding (edgequant.ptq.gptq).

References: torch's own convolutions (the im2col columns the Hessian is built from), an exhaustive
search over every floor/ceil choice of a small layer (the best rounding there is), round-to-nearest
(RTN: the same calibrated model without GPTQ), and the float model's accuracy.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgequant as eq
from edgequant.ptq import calibration_4bit_weight_8bit_act_qconfig_setter as T4, gptq
from edgequant.ptq.adaround import _layers
from edgequant.ptq.gptq import _columns
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8

from models import accuracy, trained_cnn
from test_adaround import check_weights_stay_rounded

QUIET = {"progress": False}


@pytest.mark.parametrize("op, wshape, xshape, args", [
    ("conv2d", (6, 2, 3, 3), (3, 6, 11, 13), ([2, 1], [1, 2], [1, 2], 3)),
    ("conv2d", (8, 1, 3, 3), (2, 8, 9, 9), ([2, 2], [1, 1], [1, 1], 8)),         # depthwise
    ("conv2d", (5, 4, 1, 1), (2, 4, 7, 6), ()),                                  # 1x1, defaults
    ("conv1d", (5, 4, 3), (3, 4, 17), ([2], [1], [1], 1)),
    ("linear", (5, 7), (2, 3, 7), ()),
])
def test_columns_reproduce_the_op(op, wshape, xshape, args):
    """Each group's columns times its weight rows give torch's output, element for element."""
    torch.manual_seed(0)
    w, x = torch.randn(wshape, dtype=torch.float64), torch.randn(xshape, dtype=torch.float64)
    cols, groups = _columns({"linear": None, "conv1d": 1, "conv2d": 2}[op], (x, w, None, *args), w)
    rows = w.shape[0] // groups
    got = torch.einsum("ngd,grd->ngr", cols, w.reshape(groups, rows, -1)).reshape(cols.shape[0], -1)
    if op == "linear":
        want = F.linear(x, w).reshape(-1, w.shape[0])
    else:
        fn = F.conv2d if op == "conv2d" else F.conv1d
        y = fn(x, w, None, *args)
        want = y.flatten(2).transpose(1, 2).reshape(-1, w.shape[0])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _single_linear(n_in=6, n_out=3, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out).eval()
    xs = [torch.randn(64, n_in) @ torch.randn(n_in, n_in) for _ in range(4)]   # correlated inputs
    cm = eq.prepare(lin, (xs[0],), qconfig_setter=(T4,), bias_correction=False)
    eq.calibrate(cm, [(x,) for x in xs])
    return lin, cm, xs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_is_between_the_best_rounding_and_round_to_nearest(seed):
    """4-bit, 6 inputs: every floor/ceil choice of each row is tried on the layer's quantized inputs.
    GPTQ's weights are on the grid, no worse than RTN, and not better than the optimum (which an
    off-grid weight could be)."""
    lin, cm, xs = _single_linear(seed=seed)
    ((site, op_node, wq_node, fq, _),) = _layers(cm)
    w = lin.weight.detach().double()
    scale, zp = (t.double() for t in fq.qparams())
    s, z = scale.reshape(-1, 1), zp.reshape(-1, 1)
    qmin, qmax = fq.dtype.qmin, fq.dtype.qmax
    xq = torch.cat([cm.get_submodule(op_node.args[0].target)(x) for x in xs]).double()   # the layer's int8 input

    def err(wq):   # per row, sum of squared output errors on the calibration inputs
        return ((xq @ (wq - w).T) ** 2).sum(0)

    rtn = (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z) * s
    lo = torch.clamp(torch.floor(w / s) + z, qmin, qmax)
    best = torch.full((w.shape[0],), float("inf"), dtype=torch.float64)
    for ups in itertools.product((0, 1), repeat=w.shape[1]):
        cand = (torch.clamp(lo + torch.tensor(ups, dtype=torch.float64), qmin, qmax) - z) * s
        best = torch.minimum(best, err(cand))
    gptq(cm, [(x,) for x in xs], {**QUIET, "damp": 1e-6})
    got = cm.get_parameter(wq_node.args[0].target).detach().double()
    codes = got / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= qmin - 1e-4 and codes.max() <= qmax + 1e-4
    w32 = cm.get_parameter(wq_node.args[0].target).detach()
    assert torch.equal(fq(w32), w32)   # on the grid in float32, where the model computes
    got = (codes.round() - z) * s      # the same grid points, without float32's last bits
    e_gptq, e_rtn = err(got), err(rtn)
    print(f"\nrow errors: best {best.tolist()}\n GPTQ {e_gptq.tolist()}\n RTN {e_rtn.tolist()}")
    assert (e_gptq >= best * (1 - 1e-9)).all()   # it reaches the optimum here: equal is fine
    assert (e_gptq <= e_rtn * (1 + 1e-9)).all() and e_gptq.sum() < e_rtn.sum()
    report = cm.meta["eq_gptq"][site]   # the report's MSE is the same error, from the Hessian
    n = xq.shape[0] * w.shape[0]
    assert report["mse_gptq"] == pytest.approx(float(e_gptq.sum()) / n, rel=1e-6)
    assert report["mse_rtn"] == pytest.approx(float(e_rtn.sum()) / n, rel=1e-6)


def _calibrated(model, xtr, setter):
    """Round-to-nearest weights (RTN), the reference GPTQ is measured against."""
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(setter,), bias_correction=False, weight_rounding="nearest")
    eq.calibrate(cm, list(xtr[:256].split(64)))
    return cm


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return trained_cnn()


def test_gptq_recovers_the_4bit_accuracy_loss_and_every_layer_error(cnn):
    model, (xtr, _, xte, yte) = cnn
    rtn, g = _calibrated(model, xtr, T4), _calibrated(model, xtr, T4)
    gptq(g, list(xtr[:640].split(64)), QUIET)
    f, r, a = accuracy(model, xte, yte), accuracy(rtn, xte, yte), accuracy(g, xte, yte)
    print(f"\nfloat {f:.2f}  4-bit RTN {r:.2f}  4-bit GPTQ {a:.2f}")
    assert r <= f - 1.0          # RTN really loses accuracy here
    assert a - r >= 0.5 * (f - r)
    assert set(g.meta["eq_gptq"]) == {"stem.0", "dw", "pw", "down.0", "down.3", "head"}
    for site, v in g.meta["eq_gptq"].items():
        assert v["mse_gptq"] < v["mse_rtn"], site
    assert g.meta["eq_gptq_choice"]["kept"] == "gptq"   # nearer float on the calibration batches too


def test_gptq_weights_are_reproduced_exactly_by_the_integer_model(cnn):
    model, (xtr, _, xte, _) = cnn
    g = _calibrated(model, xtr, T8)
    gptq(g, list(xtr[:256].split(64)), QUIET)
    check_weights_stay_rounded(g, xtr[:8])
    integer = eq.convert(eq.export(g, xtr[:2]), eq.March.NASH_M)
    with torch.no_grad():
        sim, got = g(xte[:200]), integer(xte[:200])
    assert (sim.argmax(1) == got.argmax(1)).float().mean() >= 0.99


def test_config_and_arguments_are_checked(cnn):
    model, (xtr, ytr, _, _) = cnn
    cm = _calibrated(model, xtr, T8)
    before = {n: p.detach().clone() for n, p in cm.named_parameters()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr[:64], ytr[:64]), batch_size=32)
    gptq(cm, loader, {**QUIET, "num_batches": 2, "exclude_prefix": ["stem", "dw", "pw", "down"]})
    assert list(cm.meta["eq_gptq"]) == ["head"]
    assert {n for n, p in cm.named_parameters() if not torch.equal(p, before[n])} <= {"head.weight"}
    for bad, match in [({"dampening": 0.1}, "unknown config keys"), ({"damp": 0}, "damp"),
                       ({"block_size": 0}, "block_size"), ({"act_order": 1}, "act_order"), ([1], "dict")]:
        with pytest.raises((ValueError, TypeError), match=match):
            gptq(cm, [xtr[:8]], bad)
    with pytest.raises(TypeError, match="gptq"):
        gptq(model, [xtr[:8]])



def test_nan_in_the_data_is_refused_by_name_and_writes_no_weight(cnn):
    model, (xtr, _, _, _) = cnn
    cm = _calibrated(model, xtr, T8)
    before = {n: p.detach().clone() for n, p in cm.named_parameters()}
    bad = xtr[:8].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"input 'x' holds 1 NaN value"):
        gptq(cm, [bad], QUIET)
    assert all(torch.equal(p, before[n]) for n, p in cm.named_parameters())


def test_gptq_keeps_round_to_nearest_where_it_takes_the_outputs_away_from_float():
    """Random-weight mnasnet (tests/zoo), int8: GPTQ lowers every layer's error on its inputs but
    takes the model's outputs on the calibration batches further from float (squared error 1.29x
    round-to-nearest's measured, 1.1 dB), so the pass puts back every weight, grid and measured
    shift: the simulation's outputs are bit for bit those before it, and the choice and both
    errors are recorded."""
    from edgequant.ptq.sweep import float_leaves
    from zoo.models import ZOO

    entry = ZOO["mnasnet"]
    model, example = entry.build()
    calib = [entry.make_inputs(i) for i in range(1, 9)]
    cm = eq.prepare(model, example, qconfig_setter=(T8,), weight_rounding="nearest")
    eq.calibrate(cm, calib)
    with torch.no_grad():
        before = [float_leaves(cm(*b)) for b in calib[:2]]
    gptq(cm, calib, QUIET)
    choice = cm.meta["eq_gptq_choice"]
    errors = choice["errors"]
    assert choice["kept"] == "round-to-nearest" and errors["gptq"] > 1.2 * errors["round-to-nearest"], choice
    assert any(r["mse_gptq"] < r["mse_rtn"] for r in cm.meta["eq_gptq"].values() if "mse_rtn" in r)
    with torch.no_grad():
        after = [float_leaves(cm(*b)) for b in calib[:2]]
    assert all(torch.equal(a, b) for ra, rb in zip(before, after) for a, b in zip(ra, rb))
    qm = eq.convert(eq.export(cm, example), eq.March.NASH_M)   # the put-back model converts and runs
    with torch.no_grad():
        got, sim = float_leaves(qm(*calib[0]))[0], before[0][0]
    assert float(10 * torch.log10(sim.pow(2).sum() / (got - sim).pow(2).sum())) > 40



# -- GPTQ as calibration's closing step (the calibration templates' ``weight_rounding="gptq"``) ---------
def test_weight_rounding_gptq_ends_calibration_with_gptq_on_the_batches_it_kept(cnn):
    """``calibrate`` after ``prepare(..., weight_rounding="gptq")`` gives, bit for bit, the weights and
    shifts of an explicit ``gptq`` call on the same batches after a round-to-nearest calibration; the
    int8 template's default is ``"gptq"``, the int16-activation template's ``"nearest"``; the QAT
    templates leave the weights float; a wrong value is refused by name."""
    model, (xtr, _, _, _) = cnn
    batches = list(xtr[:256].split(64))
    assert eq.prepare(model, xtr[:2], qconfig_setter=(T8,)).meta["edgequant"]["weight_rounding"] == "gptq"
    t16 = eq.qconfig_template.calibration_8bit_weight_16bit_act_qconfig_setter
    assert eq.prepare(model, xtr[:2], qconfig_setter=(t16,)).meta["edgequant"]["weight_rounding"] == "nearest"
    auto = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="gptq")
    assert auto.meta["edgequant"]["weight_rounding"] == "gptq"
    eq.calibrate(auto, batches)
    rtn = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="nearest")
    eq.calibrate(rtn, batches)
    assert "eq_gptq_choice" not in rtn.meta and "eq_gptq_choice" in auto.meta
    floats = {n: p.detach().clone() for n, p in rtn.named_parameters()}
    gptq(rtn, batches, QUIET)
    assert auto.meta["eq_gptq_choice"] == rtn.meta["eq_gptq_choice"]
    assert auto.meta["eq_gptq_choice"]["kept"] == "gptq", auto.meta["eq_gptq_choice"]
    for (n, a), b in zip(auto.named_parameters(), rtn.parameters()):
        assert torch.equal(a, b), n
    changed = [n for n, p in auto.named_parameters() if not torch.equal(p, floats[n])]
    assert changed and all(n.endswith("weight") for n in changed)
    with torch.no_grad():
        assert torch.equal(auto(xtr[:64]), rtn(xtr[:64]))
    qat = eq.prepare(model, xtr[:2], qconfig_setter=(eq.qconfig_template.default_qat_qconfig_setter,))
    assert qat.meta["edgequant"]["weight_rounding"] == "nearest"
    eq.calibrate(qat, batches[:1])
    assert "eq_gptq_choice" not in qat.meta
    assert all(torch.equal(p, floats[n]) for n, p in qat.named_parameters() if n in floats)
    with pytest.raises(ValueError, match=r"prepare: weight_rounding must be one of \['gptq', 'nearest'\]"):
        eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="adaround")


def test_adaround_and_gptq_after_calibration_start_from_the_float_weights(cnn):
    """Calibration's GPTQ step (``weight_rounding="gptq"``) keeps the float weights: ``adaround`` on such a model learns what it
    learns on a round-to-nearest one, and ``gptq`` again gives the same weights."""
    from edgequant.ptq import adaround

    model, (xtr, _, _, _) = cnn
    batches = list(xtr[:256].split(64))
    auto = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="gptq")
    eq.calibrate(auto, batches)
    rounded = {n: p.detach().clone() for n, p in auto.named_parameters()}
    gptq(auto, batches, QUIET)
    assert all(torch.equal(p, rounded[n]) for n, p in auto.named_parameters())
    rtn = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="nearest")
    eq.calibrate(rtn, batches)
    cfg = {**QUIET, "num_step": 20, "num_batches": 2}
    torch.manual_seed(0)
    adaround(auto, batches, cfg)
    torch.manual_seed(0)
    adaround(rtn, batches, cfg)
    for (n, a), b in zip(auto.named_parameters(), rtn.parameters()):
        assert torch.equal(a, b), n
    assert any(not torch.equal(p, rounded[n]) for n, p in auto.named_parameters())


def test_float_state_still_computes_the_float_model_and_a_state_dict_carries_it(cnn):
    """GPTQ's weights replace the parameters, and each weight's FakeQuantize keeps the float weight:
    FLOAT computes what it computed before calibration, bit for bit, also after a state dict round trip
    into a freshly prepared model; a float weight of another shape is refused by name."""
    model, (xtr, _, xte, _) = cnn
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding="gptq")
    with torch.no_grad():
        before = cm(xte[:32])
    eq.calibrate(cm, list(xtr[:256].split(64)))
    assert cm.meta["eq_gptq_choice"]["kept"] == "gptq"
    kept = [fq for fq in cm.eq_fq.values() if fq.float_weight.numel()]
    assert kept and all(fq.is_weight for fq in kept)
    fresh = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    fresh.load_state_dict(cm.state_dict())
    for m in (cm, fresh):
        eq.set_fake_quantize(m, eq.FakeQuantState.FLOAT)
        with torch.no_grad():
            assert torch.equal(m(xte[:32]), before)
        eq.set_fake_quantize(m, eq.FakeQuantState.VALIDATION)
    with torch.no_grad():
        assert torch.equal(fresh(xte[:32]), cm(xte[:32]))
    bad = cm.state_dict()
    key = next(k for k, v in bad.items() if k.endswith(".float_weight") and v.numel())
    bad[key] = torch.zeros(3)
    hostile = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    hostile.load_state_dict(bad)
    eq.set_fake_quantize(hostile, eq.FakeQuantState.FLOAT)
    with pytest.raises(ValueError, match="its float weight has shape"):
        hostile(xte[:2])
    qat = eq.prepare(model, xtr[:2], qconfig_setter=(eq.qconfig_template.default_qat_qconfig_setter,))
    qat.load_state_dict(cm.state_dict())
    eq.set_fake_quantize(qat, eq.FakeQuantState.QAT)   # QAT trains the weights: the float copies go
    assert not any(fq.float_weight.numel() for fq in qat.eq_fq.values())


def _twins(model, xtr, batches):
    """The int8 template's model calibrated on ``batches`` with GPTQ, and with round-to-nearest weights."""
    out = []
    for rounding in ("gptq", "nearest"):
        cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding=rounding)
        out.append(eq.calibrate(cm, batches) or cm)
    return out


def test_auto_calibrate_searches_with_round_to_nearest_weights_and_ends_with_gptq(cnn):
    """auto_calibrate on a model whose calibration ends with GPTQ searches with its round-to-nearest
    weights (the same choices and fold errors as on a round-to-nearest model: GPTQ's weights are
    fitted to every fold), then rounds the chosen model's weights as calibration would: bit for bit
    an explicit ``gptq`` call on the round-to-nearest model's search result."""
    from edgequant.ptq import auto_calibrate

    model, (xtr, _, xte, _) = cnn
    batches = list(xtr[:128].split(64))
    auto, rtn = (auto_calibrate(m, batches, progress=False) for m in _twins(model, xtr, batches))
    a, b = dict(auto.meta["eq_auto_calibrate_models"]), dict(rtn.meta["eq_auto_calibrate_models"])
    assert a.pop("weight_rounding") in ("gptq", "round-to-nearest") and b.pop("weight_rounding") is None
    assert a == b
    assert auto.meta["eq_auto_calibrate"] == rtn.meta["eq_auto_calibrate"]
    gptq(rtn, batches, QUIET)
    assert auto.meta["eq_gptq_choice"] == rtn.meta["eq_gptq_choice"]
    assert auto.meta["eq_auto_calibrate_models"]["weight_rounding"] == rtn.meta["eq_gptq_choice"]["kept"]
    for (n, p), q in zip(auto.named_parameters(), rtn.parameters()):
        assert torch.equal(p, q), n
    with torch.no_grad():
        assert torch.equal(auto(xte[:64]), rtn(xte[:64]))


def test_a_float_weight_is_not_bias_corrected(cnn):
    """Weights FLOAT (each FakeQuantize returns the float copy GPTQ kept), activations quantized: the
    model computes what a round-to-nearest twin computes in the same states, bit for bit; the bias
    corrections, which belong to the rounded weights, stay out (``op_sensitivity`` runs such mixes)."""
    model, (xtr, _, xte, _) = cnn
    rounded, rtn = _twins(model, xtr, list(xtr[:256].split(64)))   # 256 images: GPTQ is kept (128: close)
    assert rounded.meta["eq_gptq_choice"]["kept"] == "gptq"
    for cm in (rounded, rtn):
        for fq in cm.eq_fq.values():
            if fq.is_weight:
                fq.state = eq.FakeQuantState.FLOAT
    with torch.no_grad():
        assert torch.equal(rounded(xte[:64]), rtn(xte[:64]))
