"""Auto-calibration: per tensor, the calibration strategy that keeps the model's final outputs nearest to float.

Takes a prepared model (``prepare``; calibrated or not) and calibration batches; returns the
same model in VALIDATION with every searched activation's qparams chosen, stored the ordinary
way: the tensor's FakeQuantize holds the chosen ``scale``/``zero_point`` and, as its observer,
the chosen strategy's observer with the recorded statistics (so recalibrating, ``state_dict``,
export, convert and save work unchanged). ``model.meta["eq_auto_calibrate"]`` reports, per
tensor, the strategy kept and the L2 error of every candidate.

The search (SPEC section 7):

1. One pass over the data records a histogram of every searched tensor (its per-tensor, not
   fixed, activation fake-quants: op outputs and quantized float inputs). If the model was not
   calibrated yet, that pass is also its ordinary calibration (weights, bias correction).
   Every candidate's range is then read from that histogram (``observers.mix.strategy_observer``)
   instead of calibrating again per candidate.
2. The float model's final outputs are recorded.
3. The ops are visited in topological order (``sweep.op_units``). At op k, every earlier op is
   quantized with its chosen qparams, later ops are float; op k's weights are quantized and
   each of its activations tries every candidate whose qparams differ from the ones already
   tried. Each try runs only the graph from where op k first acts to the end (``sweep.Sweep``
   keeps the values before it), and scores ``sum ||y_q - y_float||^2`` over all batches and
   float outputs. The least wins (the first listed on a tie).

``candidates`` are strategy names: ``"minmax"``, ``"mse"``, ``"kl"``, ``"percentile"`` (99.99 %)
and ``"percentile<P>"``; the default tries min-max, two percentiles, MSE and KL.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx

from ..argcheck import describe, expect_batches, expect_flag, expect_int, expect_prepared
from ..fake_quant import FakeQuantize, FakeQuantState, set_fake_quantize
from ..observers import FixedScaleObserver
from ..observers.mix import MixObserver, check_strategy, strategy_observer
from .sweep import Sweep, batches_of, model_device, op_units, restore, set_states

DEFAULT_CANDIDATES = ("minmax", "percentile", "percentile99.9", "mse", "kl")


def _searchable(fq: FakeQuantize | None) -> bool:
    return (fq is not None and not fq.is_weight and not fq.fixed_scale and fq.ch_axis is None
            and not isinstance(fq.observer, FixedScaleObserver))


def _l2(ref: list[list[torch.Tensor]], out: list[list[torch.Tensor]]) -> float:
    return float(sum((a.double() - b.double()).pow(2).sum() for ra, rb in zip(ref, out) for a, b in zip(ra, rb)))


def _record_histograms(gm: fx.GraphModule, fqs: list[FakeQuantize], batches: list, bins: int) -> dict:
    """One pass over ``batches``: ``{fq: MixObserver}`` holding each tensor's histogram. Runs as
    calibration (observers, weights, bias correction) if some fake-quant was never calibrated."""
    calibrated = all(bool(fq.calibrated) for fq in fqs)
    recorders, hooks = {}, []
    for fq in fqs:
        rec = MixObserver(bins=bins, dtype=fq.dtype, symmetric=getattr(fq.observer, "symmetric", True))
        rec.name = fq.name
        recorders[fq] = rec
        hooks.append(fq.register_forward_pre_hook(lambda m, args, rec=rec: rec(args[0]) if args[0].is_floating_point() else None))
    state = FakeQuantState.FLOAT if calibrated else FakeQuantState.CALIBRATION
    saved = set_states(gm, state, state)
    try:
        sweep = Sweep(gm, batches)
        sweep.advance(len(sweep.nodes) - 1)
    finally:
        for h in hooks:
            h.remove()
        restore(saved)
    if not calibrated:
        for m in saved:
            m.state = FakeQuantState.CALIBRATION
        set_fake_quantize(gm, FakeQuantState.VALIDATION)  # freezes the ordinary calibration
    return recorders


def auto_calibrate(calib_model: fx.GraphModule, data, candidates: Sequence[str] = DEFAULT_CANDIDATES,
                   num_batches: int | None = None, bins: int = 2048, progress: bool = True) -> fx.GraphModule:
    """Choose every activation's calibration strategy by the model's output error (module docstring).

    Args:
        calib_model: a model from ``prepare``.
        data: batches (a list/tuple or a DataLoader): tensors, tuples of inputs, or dicts.
        candidates: strategy names to try for every tensor.
        num_batches: how many batches of ``data`` to use (all if None).
        bins: histogram bins per tensor.
        progress: show a tqdm progress bar.
    """
    expect_prepared(calib_model, "auto_calibrate", "calib_model")
    expect_batches(data, "auto_calibrate", "data")
    expect_int(num_batches, "auto_calibrate", "num_batches", lo=1, none=True)
    expect_int(bins, "auto_calibrate", "bins", lo=16)
    expect_flag(progress, "auto_calibrate", "progress")
    if not isinstance(candidates, (str, list, tuple)):
        raise TypeError(f"auto_calibrate: candidates must be a strategy name or a list/tuple of them, "
                        f"got {describe(candidates)}")
    if isinstance(candidates, str):
        candidates = (candidates,)
    candidates = tuple(check_strategy(c) for c in candidates)
    if not candidates:
        raise ValueError("auto_calibrate: give at least one candidate strategy")
    from tqdm.auto import tqdm

    gm = calib_model
    units = op_units(gm)
    batches = batches_of(data, num_batches, model_device(gm))
    searched = [fq for u in units for fq in (*u.inputs, u.output) if _searchable(fq)]
    was_training = gm.training
    gm.eval()
    recorders = _record_histograms(gm, searched, batches, bins)
    report = {}
    saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.VALIDATION)
    bar = tqdm(total=len(searched), desc="auto_calibrate", disable=not progress)
    try:
        sweep = Sweep(gm, batches)
        ref = sweep.outputs()
        for u in units:
            sweep.advance(u.start)
            for fq in u.weights:
                fq.state = FakeQuantState.VALIDATION
            for fq in (*u.inputs, u.output):
                if fq is None:
                    continue
                if fq in recorders and recorders[fq].has_data():
                    bar.set_postfix_str(u.name)
                    report[fq.name] = _choose(fq, recorders[fq], candidates, sweep, ref)
                    bar.update(1)
                fq.state = FakeQuantState.VALIDATION
    finally:
        bar.close()
        for m in saved:
            m.state = FakeQuantState.VALIDATION
        gm.train(was_training)
    gm.meta.setdefault("eq_auto_calibrate", {}).update(report)
    return gm


def _choose(fq: FakeQuantize, recorder: MixObserver, candidates, sweep: Sweep, ref) -> dict:
    """Try each candidate's qparams on ``fq``; keep the best (observer and qparams)."""
    distinct: list[tuple[str, object, tuple]] = []  # (name, observer, qparams), first of equal qparams
    same_as = {}
    for name in candidates:
        obs = strategy_observer(name, recorder.histogram, recorder.dtype, recorder.symmetric)
        qp = obs.calculate_qparams()
        first = next((d for d in distinct if all(torch.equal(a, b) for a, b in zip(d[2], qp))), None)
        if first is None:
            distinct.append((name, obs, qp))
        same_as[name] = name if first is None else first[0]  # equal qparams: equal outputs
    fq.state = FakeQuantState.VALIDATION
    scores = {}
    for name, _, qp in distinct:
        fq._set_qparams(*qp)
        scores[name] = _l2(ref, sweep.outputs()) if len(distinct) > 1 else 0.0
    best = min(distinct, key=lambda d: scores[d[0]])
    best[1].name = fq.name
    fq.observer = best[1].to(fq.scale.device)
    fq._set_qparams(*best[2])
    return {"strategy": best[0], "errors": {name: scores[same_as[name]] for name in candidates}}
