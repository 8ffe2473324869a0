"""Per-op quantization sensitivity, and a qconfig setter that gives the most sensitive ops int16.

``op_sensitivity(calib_model, data, metric)`` takes a prepared, calibrated model and batches;
it quantizes one op at a time (its weight, inputs and output, with the calibrated qparams)
while every other op computes in float, and measures how far the model's final outputs move
from the float ones. It returns a ``SensitivityTable``: one row per op (``name`` as qconfig
setters and ``prepare`` name it, ``op`` type, ``value`` of the metric), most sensitive first.
The empirical bias corrections (``edgequant.ptq.empirical_bias``) are left out: they are measured for the
whole quantized model, and part of each compensates for the ops before it. Metrics, over the float outputs of all batches concatenated: ``"sqnr"`` (dB, lower is worse),
``"cosine"`` (lower is worse), ``"mse"`` (higher is worse). Each op's run starts where that op
first acts (``sweep.Sweep``): the float values before it are computed once for all ops.

``get_sensitive_op_qconfig_setter(table, dtype=qint16, topk=K or ratio=r)`` returns a setter
for ``prepare(..., qconfig_setter=(template, setter))`` that raises the activations of the K
most sensitive ops (or the fraction ``r`` of all ops, rounded up) to ``dtype``:

    table = op_sensitivity(calibrated_int8_model, batches)
    print(table)
    cm = prepare(model, x, qconfig_setter=(default_calibration_qconfig_setter,
                                           get_sensitive_op_qconfig_setter(table, ratio=0.1)))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import fx

from ..argcheck import describe, expect_batches, expect_choice, expect_flag, expect_int, expect_prepared, expect_real
from ..dtype import get_dtype, qint16
from ..fake_quant import BiasCorrection, FakeQuantState
from ..metrics import cosine, sqnr
from ..observers import KLObserver, MinMaxObserver, MSEObserver, PercentileObserver
from ..qconfig_template import OpSite
from .sweep import Sweep, batches_of, model_device, op_units, restore, set_states


def _flat(outputs: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.detach().flatten().double() for batch in outputs for t in batch])


def _sqnr(ref, test) -> float:
    return sqnr(_flat(ref), _flat(test))


def _cosine(ref, test) -> float:
    return cosine(_flat(ref), _flat(test))


def _mse(ref, test) -> float:
    return float((_flat(ref) - _flat(test)).pow(2).mean())


# name -> (function of (float outputs, quantized outputs), True if a larger value is worse)
METRICS = {"sqnr": (_sqnr, False), "cosine": (_cosine, False), "mse": (_mse, True)}


@dataclass(frozen=True)
class SensitivityRow:
    name: str      # the op site name (qconfig setters, prepare)
    op: str        # the op type
    value: float   # the metric with only this op quantized


@dataclass
class SensitivityTable:
    """Rows sorted most sensitive first (see the module docstring)."""

    metric: str
    rows: list[SensitivityRow]

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown sensitivity metric {self.metric!r}; choose one of {sorted(METRICS)}")
        worse_high = METRICS[self.metric][1]
        key = (lambda r: -r.value) if worse_high else (lambda r: r.value)
        self.rows = sorted(self.rows, key=lambda r: (math.isnan(r.value), key(r)))

    def top(self, topk: int | None = None, ratio: float | None = None) -> list[str]:
        """Names of the ``topk`` most sensitive ops, or of ``ceil(ratio * len(rows))`` of them."""
        if (topk is None) == (ratio is None):
            raise ValueError("give exactly one of topk (a number of ops) or ratio (a fraction of the ops)")
        expect_int(topk, "SensitivityTable.top", "topk", lo=0, none=True)
        expect_real(ratio, "SensitivityTable.top", "ratio", none=True)
        if ratio is not None:
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"ratio must be in [0, 1], got {ratio}")
            topk = math.ceil(ratio * len(self.rows))
        if topk < 0:
            raise ValueError(f"topk must be >= 0, got {topk}")
        return [r.name for r in self.rows[:topk]]

    def __str__(self) -> str:
        unit = {"sqnr": "SQNR dB", "cosine": "cosine", "mse": "MSE"}[self.metric]
        width = max([len(r.name) for r in self.rows] + [4]) + 2
        lines = [f"{'rank':>4}  {'op name':<{width}}{'type':<16}{unit:>12}"]
        for i, r in enumerate(self.rows, 1):
            lines.append(f"{i:>4}  {r.name:<{width}}{r.op[:15]:<16}{r.value:>12.6g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "rows": [{"name": r.name, "op": r.op, "value": r.value} for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTable":
        if not isinstance(d, dict) or not isinstance(d.get("rows"), list) or not isinstance(d.get("metric"), str) \
                or not all(isinstance(r, dict) and {"name", "op", "value"} <= set(r) for r in d["rows"]):
            raise ValueError(f"SensitivityTable.from_dict: d must be what to_dict() returns ({{'metric': str, "
                             f"'rows': [{{'name', 'op', 'value'}}, ...]}}), got {describe(d)}")
        return cls(d["metric"], [SensitivityRow(str(r["name"]), str(r["op"]), float(r["value"])) for r in d["rows"]])


def op_sensitivity(calib_model: fx.GraphModule, data, metric: str = "sqnr", num_batches: int | None = None,
                   progress: bool = True) -> SensitivityTable:
    """Quantize each op alone and measure the model's output error (see the module docstring).

    Args:
        calib_model: a model from ``prepare``, calibrated (its qparams are used as they are).
        data: batches (a list/tuple or a DataLoader): tensors, tuples of inputs, or dicts.
        metric: ``"sqnr"``, ``"cosine"`` or ``"mse"``.
        num_batches: how many batches of ``data`` to use (all if None).
        progress: show a tqdm progress bar.
    The model's fake-quant states are restored afterwards.
    """
    expect_prepared(calib_model, "op_sensitivity", "calib_model")
    expect_batches(data, "op_sensitivity", "data")
    expect_choice(metric, "op_sensitivity", "metric", sorted(METRICS))
    expect_int(num_batches, "op_sensitivity", "num_batches", lo=1, none=True)
    expect_flag(progress, "op_sensitivity", "progress")
    if metric not in METRICS:
        raise ValueError(f"unknown sensitivity metric {metric!r}; choose one of {sorted(METRICS)}")
    from tqdm.auto import tqdm

    gm = calib_model
    units = op_units(gm)
    batches = batches_of(data, num_batches, model_device(gm))
    measure = METRICS[metric][0]
    was_training = gm.training
    gm.eval()
    saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.VALIDATION)
    bcs = [m for m in gm.modules() if isinstance(m, BiasCorrection)]
    for bc in bcs:   # each op on its own: no shift measured for the whole quantized model
        bc.use_empirical = False
    rows = []
    try:
        for u in units:
            for fq in u.fqs:
                fq.qparams()  # raises, naming the tensor, if it was never calibrated
        sweep = Sweep(gm, batches)
        ref = sweep.outputs()
        for u in tqdm(units, desc="op sensitivity", disable=not progress):
            sweep.advance(u.start)
            u.set_state(FakeQuantState.VALIDATION)
            try:
                out = sweep.outputs()
            finally:
                u.set_state(FakeQuantState.FLOAT)
            rows.append(SensitivityRow(u.name, u.op, measure(ref, out)))
    finally:
        restore(saved)
        for bc in bcs:
            bc.use_empirical = True
        gm.train(was_training)
    return SensitivityTable(metric, rows)


def _raised(spec, dtype):
    """``spec`` with ``dtype``; histogram observers become min-max above 8 bits, as the
    calibration templates choose for int16 (clipping gains nothing at that resolution)."""
    out = spec.with_dtype(dtype)
    if dtype.bits > 8 and spec.observer in (MSEObserver, KLObserver, PercentileObserver):
        kwargs = {k: v for k, v in spec.observer_kwargs.items() if k in ("symmetric", "ignore_nonfinite")}
        out = replace(out, observer=MinMaxObserver, observer_kwargs=kwargs)
    return out


class SensitiveOpQconfigSetter:
    """Raise the activation dtype of the named ops (a qconfig setter; see the module docstring)."""

    def __init__(self, names: Sequence[str], dtype=qint16):
        self.names = list(names)
        self.dtype = get_dtype(dtype)

    def __call__(self, sites: Sequence[OpSite], current: dict) -> dict:
        known = {s.name for s in sites}
        missing = [n for n in self.names if n not in known]
        if missing:
            raise ValueError(
                f"get_sensitive_op_qconfig_setter: the ops {missing[:5]} of the sensitivity table are not "
                "ops of this model; compute the table on a model prepared from the same float model.")
        out = dict(current)
        for name in self.names:
            qc = out.get(name)
            if qc is None or qc.activation is None or qc.float16:
                continue  # float (or float16) op: nothing to raise
            if qc.activation.dtype.bits < self.dtype.bits:
                out[name] = replace(qc, activation=_raised(qc.activation, self.dtype))
        return out

    def __repr__(self) -> str:
        return f"SensitiveOpQconfigSetter({len(self.names)} ops -> {self.dtype})"


def get_sensitive_op_qconfig_setter(table: SensitivityTable, dtype=qint16, topk: int | None = None,
                                    ratio: float | None = None) -> SensitiveOpQconfigSetter:
    """A setter that raises the ``topk`` (or ``ratio`` of all) most sensitive ops to ``dtype``."""
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"get_sensitive_op_qconfig_setter: table must be the SensitivityTable that op_sensitivity "
                        f"returns (or SensitivityTable.from_dict(d)), got {type(table).__name__}")
    return SensitiveOpQconfigSetter(table.top(topk, ratio), dtype)
