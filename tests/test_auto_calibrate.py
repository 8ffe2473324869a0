"""Auto-calibration (edgequant.ptq.auto_calibrate): the cross-validated per-tensor search.

Independent checks, on the residual CNN: every single-strategy model in the whole-model
comparison has, fold by fold, the output error of the model an ordinary calibration with that
observer gives (prepare with the int8 template, every searched activation's observer replaced,
``calibrate``); every option's reported fold error is the output error of a plain forward with
the earlier tensors as chosen, the tensor itself with that option's qparams (those of the
ordinary single-strategy calibration) and the later ones as the starting model; each choice
follows the validation rule (``pick``); the result survives state_dict, export and convert, and
it is at least as close to float as every single-strategy model on the calibration images and
on held-out test images. These run on round-to-nearest weights; with the int8 template as it is
(calibration ends with GPTQ, which the search leaves to its end), the searched model is at least
as close as every single strategy's ordinary calibration on held-out images. The validation rule on its own: a change that lowers the calibration
data's total error but raises one fold's is refused (``pick`` on given errors, and a search on a
small model built so). On EfficientNet-Lite0 (slow), the int8 template as it is: the searched
model is, on 16 held-out crops of other photographs, at least as close to float as the best single
strategy, and its search error on the 32 calibration crops is at most every whole model's.
"""
import copy
import math

import pytest
import torch

import edgequant as eq
from edgequant.observers import KLObserver, MinMaxObserver, MSEObserver, PercentileObserver
from edgequant.ptq import auto_calibrate
from edgequant.ptq.auto_calibrate import DEFAULT, pick
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn

STRATEGIES = {"minmax": (MinMaxObserver, {}), "percentile": (PercentileObserver, {}),
              "percentile99.9": (PercentileObserver, {"percentile": 99.9}), "mse": (MSEObserver, {}),
              "kl": (KLObserver, {})}


def searched(fq):
    return not fq.is_weight and not fq.fixed_scale and fq.ch_axis is None


def single(base, strategy, batches):
    """``base`` (prepared with T8) calibrated the ordinary way with ``strategy``'s observer on every
    searched activation (``DEFAULT``: T8's own observers)."""
    m = copy.deepcopy(base)
    if strategy != DEFAULT:
        cls, kwargs = STRATEGIES[strategy]
        for fq in m.eq_fq.values():
            if searched(fq):
                name, symmetric = fq.observer.name, getattr(fq.observer, "symmetric", True)
                fq.observer = cls(dtype=fq.dtype, symmetric=symmetric, **kwargs)
                fq.observer.name = name
    return calibrate(m, batches)


def sqnr(ref, test):
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum()))


def run(cm, batches):
    with torch.no_grad():
        return torch.cat([cm(b) for b in batches])


def key_of(site):
    return site.replace(".", "__")  # prepare's key of a fake-quant in model.eq_fq


# the residual CNN's op sites in topological order (tests/models.py)
CNN_ORDER = ["quant", "stem.0", "dw", "pw", "add", "down.0", "down.3", "avg_pool", "head"]
# 64 calibration images in two batches of 32, three folds of samples 0-21, 22-42, 43-63: the search
# runs the batches cut where folds meet, and the fold errors below are computed on the same pieces
FOLD_PIECES = [[(0, 22)], [(22, 32), (32, 43)], [(43, 64)]]


def _searched_and_singles(weight_rounding=None):
    model, (xtr, _, xte, _) = trained_cnn()
    batches = xtr[:64].split(32)
    base = eq.prepare(model, xtr[:2], qconfig_setter=(T8,), weight_rounding=weight_rounding)
    cm = auto_calibrate(copy.deepcopy(base), batches, progress=False)  # not calibrated before: it calibrates first
    singles = {s: single(base, s, batches) for s in (DEFAULT, *STRATEGIES)}
    return model, cm, singles, xtr[:64], xte[:256].split(128)


@pytest.fixture(scope="module")
def cnn():
    """The search's own mechanics, on round-to-nearest weights: a model whose calibration ends with
    GPTQ (the int8 template's default) is searched with them, then rounded (tests/test_gptq.py)."""
    return _searched_and_singles("nearest")


@pytest.fixture(scope="module")
def cnn_default():
    """The int8 template as it is (GPTQ ends each calibration): searched, and every single strategy."""
    return _searched_and_singles()


def fold_errors(m, ref_model, x):
    with torch.no_grad():
        return [sum(float((m(x[a:b]) - ref_model(x[a:b])).double().pow(2).sum()) for a, b in pieces)
                for pieces in FOLD_PIECES]


def test_whole_models_are_the_ordinary_single_strategy_calibrations(cnn):
    _, cm, singles, x, _ = cnn
    record = cm.meta["eq_auto_calibrate_models"]
    assert record["folds"] == 3 and set(record["models"]) == {DEFAULT, *STRATEGIES}
    floating = copy.deepcopy(cm)  # the float reference is the prepared graph (batch norms folded)
    eq.set_fake_quantize(floating, eq.FakeQuantState.FLOAT)
    for name, entry in record["models"].items():
        expected = fold_errors(singles[name], floating, x)
        for got, want in zip(entry["fold_errors"], expected):
            assert got is None or got == pytest.approx(want, rel=1e-6), name
        if entry["error"] is None:  # stopped early: a fold was not below the default model's
            done = [e for e in entry["fold_errors"] if e is not None]
            limit = [e * (1 - record["min_gain"]) for e in record["models"][DEFAULT]["fold_errors"]]
            assert not all(a < b for a, b in zip(done, limit))
    # the start follows the validation rule from the qconfig's own observers
    as_tensors = {k: torch.tensor([math.nan if v is None else v for v in e["fold_errors"]], dtype=torch.float64)
                  for k, e in record["models"].items()}
    assert record["start"] == pick(as_tensors, DEFAULT, record["min_gain"])
    final = fold_errors(cm, floating, x)
    assert record["searched"]["fold_errors"] == pytest.approx(final, rel=1e-6)
    assert all(a <= b for a, b in zip(final, record["models"][record["start"]]["fold_errors"]))


def test_every_option_error_is_the_model_output_error_and_follows_the_rule(cnn):
    _, cm, singles, x, _ = cnn
    report, start = cm.meta["eq_auto_calibrate"], cm.meta["eq_auto_calibrate_models"]["start"]
    assert list(report) == [s for s in CNN_ORDER if s in report] and len(report) == 7
    floating = copy.deepcopy(cm)
    eq.set_fake_quantize(floating, eq.FakeQuantState.FLOAT)
    for site in report:
        m = copy.deepcopy(singles[start])  # the starting model (its qparams and bias corrections)
        for other in report:
            if CNN_ORDER.index(other) < CNN_ORDER.index(site):  # earlier tensors as chosen
                m.eq_fq[key_of(other)]._set_qparams(cm.eq_fq[key_of(other)].scale, cm.eq_fq[key_of(other)].zero_point)
        options = report[site]["fold_errors"]
        assert set(options) == {DEFAULT, *STRATEGIES}
        for option, errors in options.items():
            fq = singles[option].eq_fq[key_of(site)]
            m.eq_fq[key_of(site)]._set_qparams(fq.scale, fq.zero_point)
            expected = fold_errors(m, floating, x)
            for got, want in zip(errors, expected):
                assert got is None or got == pytest.approx(want, rel=1e-6), (site, option)
        as_tensors = {k: torch.tensor([math.nan if e is None else e for e in v], dtype=torch.float64)
                      for k, v in options.items()}
        chosen = report[site]["strategy"]
        assert chosen == pick(as_tensors, start, cm.meta["eq_auto_calibrate_models"]["min_gain"])  # each tensor is visited once, from the start's option
        if chosen != start:  # a change lowers every fold's error
            assert all(a < b for a, b in zip(options[chosen], options[start]))
        assert torch.equal(cm.eq_fq[key_of(site)].scale, singles[chosen].eq_fq[key_of(site)].scale), site


def test_result_is_ordinary_qparams(cnn):
    model, cm, singles, x, test = cnn
    for site, r in cm.meta["eq_auto_calibrate"].items():
        fq = cm.eq_fq[key_of(site)]
        assert fq.state == eq.FakeQuantState.VALIDATION
        if r["strategy"] == DEFAULT:
            assert type(fq.observer) is type(singles[DEFAULT].eq_fq[key_of(site)].observer)
        else:
            assert type(fq.observer) is STRATEGIES[r["strategy"]][0]
            assert torch.equal(fq.observer.calculate_qparams()[0], fq.scale), site  # recalibration keeps it
    again = eq.prepare(model, x[:2], qconfig_setter=(T8,))
    again.load_state_dict(cm.state_dict())
    eq.set_fake_quantize(again, eq.FakeQuantState.VALIDATION)
    t = test[0]
    assert torch.equal(run(cm, [t]), run(again, [t]))
    qg = eq.convert(eq.export(cm, t[:2]), eq.March.NASH_M)
    with torch.no_grad():
        y_int, y_sim = qg(t), cm(t)
    assert sqnr(y_sim, y_int) > 30  # the integer model follows the searched simulation


@pytest.mark.parametrize("which", ["cnn", "cnn_default"])
def test_cnn_search_is_at_least_as_close_to_float_as_every_single_strategy(which, request):
    model, cm, singles, x, test = request.getfixturevalue(which)
    pieces = [x[a:b] for fold in FOLD_PIECES for a, b in fold]  # the batches as the search ran them
    ref_calib, ref_test = run(model, pieces), run(model, test)
    scores = {s: (sqnr(ref_calib, run(m, pieces)), sqnr(ref_test, run(m, test))) for s, m in singles.items()}
    auto = sqnr(ref_calib, run(cm, pieces)), sqnr(ref_test, run(cm, test))
    print(f"\nCNN ({which}) logit SQNR (dB) on 64 calibration / 256 held-out images: auto {auto[0]:.2f} / "
          f"{auto[1]:.2f}; " + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in scores.items()))
    calibration_side(cm, auto, scores)
    assert auto[1] >= max(b for _, b in scores.values())


def calibration_side(cm, auto, scores):
    """On the calibration data: round-to-nearest models are compared as they are; a model whose
    calibration ends with GPTQ was searched with round-to-nearest weights (GPTQ then fits each model
    to these very samples), and the search's error is at most each whole model's it compared."""
    if cm.meta["eq_auto_calibrate_models"]["weight_rounding"] is None:
        assert auto[0] >= max(a for a, _ in scores.values())
        return
    record = cm.meta["eq_auto_calibrate_models"]
    assert all(record["searched"]["error"] <= e["error"] for e in record["models"].values() if e["error"] is not None)


def test_the_rule_refuses_a_change_that_helps_the_total_but_hurts_a_fold():
    f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    errors = {"default": f(10, 10, 10), "minmax": f(4, 4, 11), "mse": f(9, 9.9, 9.99), "kl": f(1, math.nan, math.nan)}
    assert pick(errors, "default") == "mse"       # minmax: total 19 < 30, but fold 3 grows; kl: lost a fold
    assert pick(errors, "default", min_gain=0.05) == "default"  # mse's third fold gains only 0.1 %
    assert pick({**errors, "mse": f(11, 11, 11)}, "default") == "default"
    assert pick({"default": f(10, 10), "a": f(5, 5), "b": f(5, 5)}, "default") == "a"  # the first on a tie
    assert pick({"default": f(30), "minmax": f(19)}, "default") == "minmax"  # one fold: the total decides


class _Outlier(torch.nn.Module):
    def forward(self, a, d, c):
        return a * 2 + d, c * 2


def test_a_change_that_fits_the_calibration_data_but_hurts_a_fold_is_refused():
    # ``add`` = 2a + d: a uniform in [0, 1], d zero but for one outlier (8) in the last fold, so
    # min-max spreads add's grid over [0, 10] for one value. The percentile clips it: every
    # other value gets a 5x finer grid, which lowers the total error but raises the last fold's.
    # (c: heavy tails everywhere, so that the all-percentile model loses and "default" starts.)
    g = torch.Generator().manual_seed(0)
    a, d, c = torch.rand(30, 10000, generator=g), torch.zeros(30, 10000), torch.randn(30, 10000, generator=g) ** 3
    d[-1, 0] = 8.0
    minmax = lambda sites, current: {s.name: eq.get_qconfig(observer=MinMaxObserver) for s in sites}  # noqa: E731
    chosen = {}
    for folds in (1, 3):
        cm = eq.prepare(_Outlier(), (a[:2], d[:2], c[:2]), qconfig_setter=(minmax,))
        auto_calibrate(cm, [(a, d, c)], candidates=("percentile",), folds=folds, min_gain=0.0, progress=False)
        assert cm.meta["eq_auto_calibrate_models"]["start"] == DEFAULT
        chosen[folds] = cm.meta["eq_auto_calibrate"]["add"]
    assert chosen[1]["strategy"] == "percentile"  # one fold: the total error decides
    assert chosen[1]["errors"]["percentile"] < chosen[1]["errors"][DEFAULT]
    three = chosen[3]["fold_errors"]
    assert chosen[3]["strategy"] == DEFAULT
    assert three["percentile"][0] < three[DEFAULT][0] and three["percentile"][1] < three[DEFAULT][1]
    assert three["percentile"][2] > three[DEFAULT][2]


@pytest.mark.slow
def test_efficientnet_lite0_search_is_at_least_as_close_to_float_as_the_best_single_strategy():
    import real_data as data

    model = data.load_efficientnet_lite0()
    calib, test = data.calibration_images(32), data.held_out_images(16).split(8)
    # batches of 8: a 32-crop batch's activations (up to 150 MB) cost more in page faults than in
    # arithmetic here. The search cuts them where its three folds meet (crops 0-10, 11-21, 22-31);
    # the calibration crops are scored on the same pieces
    batches, pieces = list(calib.split(8)), calib.split([8, 3, 5, 6, 2, 8])
    with torch.no_grad():
        ref_calib, ref_test = run(model, pieces), run(model, test)
    base = eq.prepare(model, calib[:1], qconfig_setter=(T8,))
    singles = {s: single(base, s, batches) for s in (DEFAULT, *STRATEGIES)}
    searched_model = auto_calibrate(copy.deepcopy(base), batches, progress=False)
    score = lambda m: (sqnr(ref_calib, run(m, pieces)), sqnr(ref_test, run(m, test)))  # noqa: E731
    scores = {s: score(m) for s, m in singles.items()}
    auto = score(searched_model)
    record = searched_model.meta["eq_auto_calibrate_models"]
    changed = sum(r["strategy"] != record["start"] for r in searched_model.meta["eq_auto_calibrate"].values())
    print(f"\nEfficientNet-Lite0 logit SQNR (dB) on the {len(calib)} calibration crops / {len(ref_test)} held-out crops: "
          f"auto {auto[0]:.2f} / {auto[1]:.2f} (start {record['start']}, {changed} tensors changed); "
          + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in scores.items()))
    calibration_side(searched_model, auto, scores)
    assert auto[1] >= max(b for _, b in scores.values())
