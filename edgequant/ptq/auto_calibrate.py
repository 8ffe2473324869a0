"""Auto-calibration: per tensor, the calibration strategy that keeps the model's final outputs nearest to float.

Takes a prepared model (``prepare``; calibrated or not) and calibration batches; returns the
same model in VALIDATION with every searched activation's qparams chosen, stored the ordinary
way: the tensor's FakeQuantize holds the chosen ``scale``/``zero_point`` and, as its observer,
the chosen strategy's observer with the recorded statistics (so recalibrating, ``state_dict``,
export, convert and save work unchanged).

The search:

1. One float pass records a histogram of every searched tensor (its per-tensor, not fixed,
   activation fake-quants: op outputs and quantized float inputs); every candidate's range is
   read from it (``observers.mix.strategy_observer``) instead of calibrating again per
   candidate. A model never calibrated is first calibrated the ordinary way (``calibrate``)
   on the same batches. The qparams the model holds then, its own observers' (the qconfig's),
   are the option ``"default"``, always tried, so the search can always keep them.
2. The samples are cut into ``folds`` contiguous folds (batches are cut where two folds meet
   when their inputs have a batch dim that may vary; a batch that cannot be cut stays whole, in
   the fold of its place). The error of a quantized model is ``sum ||y_q - y_float||^2`` over
   its float outputs, per fold; a fold is run to its end only while the option being tried
   can still win, so most losing options cost one fold.
3. Whole models: every tensor ``"default"``, then every tensor of each candidate strategy, each
   with its own bias correction where calibration measured an empirical one (``edgequant.ptq.
   empirical_bias``: it depends on the activations' qparams; measured on the batches
   ``calibrate`` would keep, so each is the model an ordinary calibration with that observer
   gives). The starting point is the one ``pick`` (step 4's rule) takes over ``"default"``: a
   strategy replaces the qconfig's observers only if it lowers every fold's error. A model
   prepared with ``weight_rounding="gptq"`` is searched with round-to-nearest weights (step 6).
4. The ops are visited in topological order (``sweep.op_units``) with the whole model quantized:
   earlier tensors as chosen, later ones as the starting point, biases as the starting point's.
   Each searched activation tries every option whose qparams differ from its current ones; a
   try runs only the graph from where the op first acts (``sweep.Sweep`` keeps the values before
   it). ``pick`` is the validation rule: an option replaces the current qparams only if it
   lowers the error of *every* fold (each by more than ``min_gain`` of that fold's error); of
   those the least total error wins. A change that fits some of the samples and hurts the others
   is refused, and as every change kept lowers every fold's error, the result is at least as
   close to float as the starting point on every fold, hence as every single-strategy model
   that lowers every fold's error (a model better in total but worse on one fold is refused).
5. If tensors changed and the model has empirical bias corrections, they are measured again for
   the final qparams and kept only if no fold's error grows.
6. A model prepared with ``weight_rounding="gptq"``: GPTQ fits the weights to all calibration
   samples at once, so fold errors of GPTQ models would be measured on the data they were fitted
   to (searching that way lost 0.56 dB to the best single strategy on EfficientNet-Lite0's
   held-out crops). Steps 3-5 run with the float weights rounded to nearest, and the chosen
   model's weights are then rounded by ``ptq.gptq`` as calibration's closing step does (kept only
   where the outputs on the kept batches come nearer float).

Why folds: the output error of a quantized network is a rough function of its qparams (a scale
moved by 0.1 % flips a few roundings, and the flips spread: on EfficientNet-Lite0 one tensor's
scale times 1.001 moves a 10-crop fold's error by up to 16 %), so the option with the least
error on the calibration data is often only the luckiest. With every candidate kept on that
alone the search gained 0.8 dB on EfficientNet-Lite0's calibration crops and lost 0.04 (56
held-out crops) to 0.4 dB (16) on held-out crops; asking every one of three folds to agree
keeps the changes that carry over (measured in tests/test_auto_calibrate.py and the README).

``model.meta["eq_auto_calibrate"]`` reports, per tensor, the option kept (a strategy name or
``"default"``) and every option's error, total and per fold (``None``: not run to the end, it
had already lost a fold). ``model.meta["eq_auto_calibrate_models"]`` records the whole-model
comparison: ``folds``, ``min_gain``, each single-strategy model's errors (``"models"``, with
``"default"``), the ``"start"``, the searched model's errors (``"searched"``) and, after step
5, the errors with the biases measured again (``"biases_remeasured"``); ``"weight_rounding"``:
step 6's choice (``"gptq"`` or ``"round-to-nearest"``; None for a round-to-nearest model). The
errors are those of the round-to-nearest weights the search ran with.

``candidates`` are strategy names: ``"minmax"``, ``"mse"``, ``"kl"``, ``"percentile"`` (99.99 %)
and ``"percentile<P>"``; the default tries min-max, two percentiles, MSE and KL.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx

from ..argcheck import describe, expect_batches, expect_flag, expect_int, expect_prepared, expect_real
from ..fake_quant import BiasCorrection, FakeQuantize, FakeQuantState, calibrate
from ..inputs import shape_of
from ..observers import FixedScaleObserver
from ..observers.mix import MixObserver, check_strategy, strategy_observer
from . import empirical_bias
from .sweep import Sweep, batches_of, model_device, op_units, restore, set_states

DEFAULT_CANDIDATES = ("minmax", "percentile", "percentile99.9", "mse", "kl")
DEFAULT = "default"  # the qparams the model's own observers gave (the qconfig's)


def _searchable(fq: FakeQuantize | None) -> bool:
    return (fq is not None and not fq.is_weight and not fq.fixed_scale and fq.ch_axis is None
            and not isinstance(fq.observer, FixedScaleObserver))


def _record_histograms(gm: fx.GraphModule, fqs: list[FakeQuantize], batches: list, bins: int) -> dict:
    """``{fq: MixObserver}`` holding each tensor's histogram over ``batches`` (one float pass).
    A model never calibrated (some fake-quant without qparams) is first calibrated the ordinary
    way (``calibrate``: observers, weights, bias correction) on the same batches."""
    if not all(bool(fq.calibrated) for fq in fqs):
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        settings = gm.meta.get("edgequant", {})
        rounding = settings.get("weight_rounding")
        if rounding is not None:   # the search starts from round-to-nearest weights (step 6 rounds them)
            settings["weight_rounding"] = "nearest"
        try:
            calibrate(gm, [tuple(Sweep._inputs(b, placeholders)) for b in batches])
        finally:
            if rounding is not None:
                settings["weight_rounding"] = rounding
    recorders, hooks = {}, []
    for fq in fqs:
        rec = MixObserver(bins=bins, dtype=fq.dtype, symmetric=getattr(fq.observer, "symmetric", True))
        rec.name = fq.name
        recorders[fq] = rec
        hooks.append(fq.register_forward_pre_hook(lambda m, args, rec=rec: rec(args[0]) if args[0].is_floating_point() else None))
    saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.FLOAT)
    try:
        sweep = Sweep(gm, batches)
        sweep.advance(len(sweep.nodes) - 1)
    finally:
        for h in hooks:
            h.remove()
        restore(saved)
    return recorders


def _samples(b, placeholders) -> int | None:
    """How many samples batch ``b`` holds, if it can be cut into pieces along dim 0: every input
    a tensor whose traced first dim may vary and whose first dim is the same ``n > 1``."""
    sizes = set()
    for p, x in zip(placeholders, Sweep._inputs(b, placeholders)):
        val = p.meta.get("val")
        if not isinstance(x, torch.Tensor) or not isinstance(val, torch.Tensor) or x.dim() == 0 \
                or not shape_of(val) or not isinstance(shape_of(val)[0], str):
            return None
        sizes.add(x.shape[0])
    return sizes.pop() if len(sizes) == 1 and min(sizes) > 1 else None


def _fold_pieces(gm: fx.GraphModule, batches: list, folds: int) -> tuple[list, list[list[int]]]:
    """The batches cut where the ``folds`` contiguous folds of their samples meet (a batch that
    cannot be cut counts as one sample and joins the fold of its place), and each fold's pieces."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sizes = [_samples(b, placeholders) for b in batches]
    total = sum(n or 1 for n in sizes)
    folds = max(1, min(folds, total))
    pieces, fold_of, at = [], [], 0
    for b, n in zip(batches, sizes):
        if n is None:
            pieces.append(b)
            fold_of.append(at * folds // total)
            at += 1
            continue
        inputs = Sweep._inputs(b, placeholders)
        lo = 0
        while lo < n:
            f = (at + lo) * folds // total
            hi = min(n, -(-(f + 1) * total // folds) - at)  # the first sample of fold f + 1
            pieces.append(b if (lo, hi) == (0, n) else tuple(x[lo:hi] for x in inputs))
            fold_of.append(f)
            lo = hi
        at += n
    used = sorted(set(fold_of))
    return pieces, [[i for i, f in enumerate(fold_of) if f == g] for g in used]


class _Scorer:
    """The squared output error of each fold (module docstring, step 2), fold by fold."""

    def __init__(self, sweep: Sweep, folds: list[list[int]]):
        self.sweep, self.folds = sweep, folds
        self.ref = [[t.double() for t in r] for r in sweep.outputs()]

    def fold(self, f: int) -> float:
        """The error of fold ``f`` with the fake-quant states and qparams set now."""
        idx = self.folds[f]
        out = self.sweep.outputs(idx)
        return float(sum((a - b.double()).pow(2).sum() for i, rb in zip(idx, out) for a, b in zip(self.ref[i], rb)))

    def __call__(self, go_on=None) -> torch.Tensor:
        """``[folds]`` float64 errors; after each fold, ``go_on(errors so far)`` may stop the run
        (a candidate that cannot win any more): the folds not run are NaN."""
        e = torch.full((len(self.folds),), float("nan"), dtype=torch.float64)
        for f in range(len(self.folds)):
            e[f] = self.fold(f)
            if go_on is not None and f + 1 < len(self.folds) and not go_on(e[: f + 1]):
                break
        return e


def auto_calibrate(calib_model: fx.GraphModule, data, candidates: Sequence[str] = DEFAULT_CANDIDATES,
                   num_batches: int | None = None, bins: int = 2048, progress: bool = True,
                   folds: int = 3, min_gain: float = 0.02) -> fx.GraphModule:
    """Choose every activation's calibration strategy by the model's output error (module docstring).

    Args:
        calib_model: a model from ``prepare``.
        data: batches (a list/tuple or a DataLoader): tensors, tuples of inputs, or dicts.
        candidates: strategy names to try for every tensor (the model's own qparams, ``"default"``,
            are always tried too).
        num_batches: how many batches of ``data`` to use (all if None).
        bins: histogram bins per tensor.
        progress: show a tqdm progress bar.
        folds: the samples are cut into this many contiguous folds (at most one per sample); a
            tensor's qparams change only if the change lowers the output error of every fold.
            ``folds=1`` judges by the total error alone (fits the data given most closely).
        min_gain: the least relative lowering of each fold's error a change must bring (0: any).
            The default 2 % keeps changes that are noise on calibration data out: on
            EfficientNet-Lite0 (one thread) three tensors each lowered every fold's error by
            less than that and together cost 0.13 dB on held-out crops.
    """
    expect_prepared(calib_model, "auto_calibrate", "calib_model")
    expect_batches(data, "auto_calibrate", "data")
    expect_int(num_batches, "auto_calibrate", "num_batches", lo=1, none=True)
    expect_int(bins, "auto_calibrate", "bins", lo=16)
    expect_flag(progress, "auto_calibrate", "progress")
    expect_int(folds, "auto_calibrate", "folds", lo=1)
    expect_real(min_gain, "auto_calibrate", "min_gain", nonneg=True)
    if not min_gain < 1:
        raise ValueError(f"auto_calibrate: min_gain must be < 1 (a fraction of the error), got {min_gain}")
    if not isinstance(candidates, (str, list, tuple)):
        raise TypeError(f"auto_calibrate: candidates must be a strategy name or a list/tuple of them, "
                        f"got {describe(candidates)}")
    if isinstance(candidates, str):
        candidates = (candidates,)
    candidates = tuple(dict.fromkeys(check_strategy(c) for c in candidates))
    if not candidates:
        raise ValueError("auto_calibrate: give at least one candidate strategy")
    if DEFAULT in candidates:
        raise ValueError(f"auto_calibrate: {DEFAULT!r} (the model's own qparams) is always tried; "
                         "candidates name strategies")
    from tqdm.auto import tqdm

    gm = calib_model
    units = op_units(gm)
    batches = batches_of(data, num_batches, model_device(gm))
    searched = [fq for u in units for fq in (*u.inputs, u.output) if _searchable(fq)]
    was_training = gm.training
    gm.eval()
    recorders = _record_histograms(gm, searched, batches, bins)
    searched = [fq for fq in searched if recorders[fq].has_data()]
    options = {fq: _options(fq, recorders[fq], candidates) for fq in searched}
    pieces, fold_pieces = _fold_pieces(gm, batches, folds)
    report = {}
    saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.FLOAT)
    bar = tqdm(total=len(searched), desc="auto_calibrate", disable=not progress)
    try:
        sweep = Sweep(gm, pieces)
        score = _Scorer(sweep, fold_pieces)
        set_states(gm, FakeQuantState.VALIDATION, FakeQuantState.VALIDATION)
        biases = _Biases(gm, batches)
        weights = _Weights(gm, batches)
        weights.to_nearest(biases)   # the search compares models on data their weights were not fitted to
        models, kept = {}, {}
        for name in (DEFAULT, *candidates):  # step 3: the whole-model comparison
            twin = next((k for k in models if all(_same(options[fq][k], options[fq][name]) for fq in searched)), None)
            if twin is not None:  # the same qparams everywhere: the same model
                models[name], kept[name] = models[twin], kept[twin]
                continue
            for fq in searched:
                _apply(fq, options[fq][name])
            kept[name] = biases.save() if name == DEFAULT else biases.measure()
            limit = models[DEFAULT] * (1 - min_gain) if DEFAULT in models else None
            models[name] = score(None if limit is None else lambda e, limit=limit: bool((e < limit[: len(e)]).all()))
        start = pick(models, DEFAULT, min_gain)
        for fq in searched:
            _apply(fq, options[fq][start])
        biases.load(kept[start])
        current = {fq: start for fq in searched}
        error = models[start]
        todo = set(searched)
        for u in units:  # step 4
            fqs = [fq for fq in (*u.inputs, u.output) if fq in todo]
            if not fqs:
                continue
            sweep.advance(u.start)
            for fq in fqs:
                bar.set_postfix_str(u.name)
                report[fq.name], error = _choose(fq, options[fq], current, error, score, min_gain)
                bar.update(1)
        remeasured = None
        if biases.on and any(current[fq] != start for fq in searched):  # step 5
            stale = biases.save()
            biases.measure()
            sweep = Sweep(gm, pieces)
            score.sweep = sweep
            remeasured = score()
            if bool((remeasured <= error).all()):
                error = remeasured
            else:
                biases.load(stale)
        rounding = weights.finish()   # step 6
    finally:
        bar.close()
        for m in saved:
            m.state = FakeQuantState.VALIDATION
        gm.train(was_training)
    gm.meta.setdefault("eq_auto_calibrate", {}).update(report)
    gm.meta["eq_auto_calibrate_models"] = {
        "folds": len(fold_pieces), "min_gain": float(min_gain), "start": start,
        "models": {k: _entry(v) for k, v in models.items()}, "searched": _entry(error),
        "biases_remeasured": None if remeasured is None else _entry(remeasured), "weight_rounding": rounding}
    return gm


class _Biases:
    """The empirical part of the model's bias corrections (``edgequant.ptq.empirical_bias``, where
    calibration measured one): it depends on the activations' qparams, so each whole model
    measures its own, as ``calibrate`` would have."""

    def __init__(self, gm: fx.GraphModule, batches: list):
        self.gm = gm
        # every correction is saved and loaded (a model's GPTQ step measures shifts of its own); the
        # pass runs where calibration measured some
        self.bcs = [m for m in gm.modules() if isinstance(m, BiasCorrection)
                    and isinstance(getattr(m, "empirical", None), torch.Tensor)]
        self.pass_ = empirical_bias
        self.on = any(m.empirical.numel() for m in self.bcs)
        if self.on:  # the batches calibrate keeps for the pass (empirical_bias.record_inputs)
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            self.batches = empirical_bias.kept_batches([tuple(Sweep._inputs(b, placeholders)) for b in batches])

    def save(self) -> list:
        return [bc.empirical.clone() for bc in self.bcs]

    def load(self, saved: list) -> None:
        for bc, e in zip(self.bcs, saved):
            bc.empirical = e.clone()

    def measure(self) -> list:
        """Measure them for the qparams set now; returns them (``save``)."""
        if self.on:
            self.pass_.correct_biases(self.gm, self.batches)
        return self.save()


class _Weights:
    """The conv/linear weights of a model whose calibration ends with GPTQ (``prepare``'s
    ``weight_rounding="gptq"``). GPTQ fits them to the calibration samples, all folds at once, so
    a fold's error would no longer be measured on data the model was not fitted to: the search
    runs on round-to-nearest weights (with the bias corrections measured for them), and the
    chosen model's weights are rounded by GPTQ at the end, as calibration's closing step rounds
    them (on the same kept batches; kept only where the outputs come nearer float)."""

    def __init__(self, gm: fx.GraphModule, batches: list):
        self.gm = gm
        self.on = empirical_bias.rounds_weights(gm)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.batches = empirical_bias.kept_batches([tuple(Sweep._inputs(b, placeholders)) for b in batches]) \
            if self.on else []

    def to_nearest(self, biases: _Biases) -> None:
        """The float weights back (round to nearest on their calibrated grids) and the biases
        measured for them, as calibration measures them before its GPTQ step."""
        from .adaround import restore_float_weights

        if self.on and restore_float_weights(self.gm):
            biases.measure()

    def finish(self) -> str | None:
        """Step 6: GPTQ for the chosen qparams; returns what was kept (None: not a GPTQ model)."""
        if not self.on:
            return None
        from .gptq import gptq

        gptq(self.gm, self.batches, {"progress": False})
        return self.gm.meta.get("eq_gptq_choice", {}).get("kept")


def _entry(e: torch.Tensor) -> dict:
    """``{"error": total or None (not run to the end), "fold_errors": [error or None per fold]}``."""
    folds = [None if v != v else v for v in e.tolist()]
    return {"error": None if None in folds else float(sum(folds)), "fold_errors": folds}


def _options(fq: FakeQuantize, recorder: MixObserver, candidates) -> dict:
    """``{name: (observer, qparams)}``: the model's own (``"default"``) and each candidate's."""
    out = {DEFAULT: (fq.observer, tuple(t.detach().clone() for t in fq.qparams()))}
    for name in candidates:
        obs = strategy_observer(name, recorder.histogram, recorder.dtype, recorder.symmetric)
        obs.name = fq.name
        out[name] = (obs.to(fq.scale.device), obs.calculate_qparams())
    return out


def _apply(fq: FakeQuantize, option) -> None:
    fq.observer = option[0]
    fq._set_qparams(*option[1])


def _same(a, b) -> bool:
    return all(torch.equal(x.to(y.device), y) for x, y in zip(a[1], b[1]))


def pick(errors: dict[str, torch.Tensor], current: str, min_gain: float = 0.0) -> str:
    """The validation rule: ``errors`` maps each option to its error per fold (NaN: not run to the
    end); an option replaces ``current`` only if every fold's error is below ``current``'s times
    ``1 - min_gain``. Of those, the least total error wins (the first listed on a tie);
    ``current`` stays if there is none."""
    limit = errors[current] * (1 - min_gain)
    better = [k for k, e in errors.items() if k != current and bool((e < limit).all())]  # NaN < x is False
    return min(better, key=lambda k: float(errors[k].sum())) if better else current


def _choose(fq: FakeQuantize, options: dict, current: dict, error: torch.Tensor, score: _Scorer, min_gain: float):
    """Try each option's qparams on ``fq`` against its current ones (module docstring, step 4);
    keeps the winner. Returns the report entry and the model's error after the choice."""
    now = current[fq]
    limit = error * (1 - min_gain)  # what every fold's error must go under
    errors = {}
    for name, opt in options.items():
        same = next((k for k in errors if _same(options[k], opt)), None)  # equal qparams: equal outputs
        if _same(options[now], opt):
            errors[name] = error
        elif same is not None:
            errors[name] = errors[same]
        else:
            _apply(fq, opt)
            errors[name] = score(lambda e: bool((e < limit[: len(e)]).all()))
    current[fq] = now = pick(errors, now, min_gain)
    _apply(fq, options[now])
    entries = {k: _entry(e) for k, e in errors.items()}
    return {"strategy": now, "errors": {k: v["error"] for k, v in entries.items()},
            "fold_errors": {k: v["fold_errors"] for k, v in entries.items()}}, errors[now]
