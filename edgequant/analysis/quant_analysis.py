"""QuantAnalysis: which inputs and which layers lose the accuracy, and what to raise to int16.

Takes the float model, the prepared and calibrated model (or a QAT model), a data set (an
iterable of batches: tensors or tuples of tensors, batch dimension first) and optionally the
converted integer model. Its steps, each usable alone (``run()`` does them all):

- ``auto_find_bad_case()``: every sample of the data set through the float model and the
  simulation (or the integer model); per sample, the SQNR (or cosine / MSE) of the outputs;
  returns the samples worst first and keeps the worst ones as ``bad_inputs``;
- ``compare_per_layer()``: ``featuremap_similarity`` float vs simulation (and simulation vs
  integer) on those worst inputs;
- ``sensitivity()``: ``edgequant.ptq.sensitivity.op_sensitivity`` (each op quantized alone);
- ``propose_int16()``: the op names to raise to int16: with the SQNR metric, the ops whose
  single-op SQNR lies ``margin_db`` or more below the median op's (the outliers), else the
  worst tenth; ``qconfig_setter()`` is the matching setter to append to the template;
- ``histograms()``: the activation histograms with each tensor's clip range.

The results stay on the object (``bad_cases``, ``layers``, ``layers_int``, ``table``,
``proposed``, ``hist``) for ``edgequant.analysis.report``.
"""
from __future__ import annotations

import math
import statistics

import torch
from torch.utils import _pytree as pytree

from ..argcheck import expect_batches, expect_choice, expect_graph, expect_int, expect_module, expect_prepared
from ..dtype import qint16
from ..ptq.sensitivity import SensitiveOpQconfigSetter, op_sensitivity
from ..ptq.sweep import float_leaves
from .compare import cosine, sqnr
from .histograms import activation_histograms
from .similarity import Similarity, stage, stage_similarity


def _as_tuple(b) -> tuple:
    return tuple(b) if isinstance(b, (tuple, list)) else (b,)


def _outputs(model, xs: tuple) -> torch.Tensor:
    with torch.no_grad():
        leaves = float_leaves(model(*xs))
    return torch.cat([t.reshape(t.shape[0], -1).double() for t in leaves], 1)


_PER_SAMPLE = {"sqnr": (sqnr, False), "cosine": (cosine, False),
               "mse": (lambda a, b: float((a - b).pow(2).mean()), True)}


class QuantAnalysis:
    """See the module docstring."""

    def __init__(self, float_model, calib_model, data, quantized=None, metric: str = "sqnr",
                 num_batches: int | None = None):
        expect_module(float_model, "QuantAnalysis", "float_model")
        expect_prepared(calib_model, "QuantAnalysis", "calib_model")
        expect_batches(data, "QuantAnalysis", "data")
        if quantized is not None:
            expect_graph(quantized, "QuantAnalysis", "quantized")
        expect_choice(metric, "QuantAnalysis", "metric", sorted(_PER_SAMPLE))
        expect_int(num_batches, "QuantAnalysis", "num_batches", lo=1, none=True)
        if metric not in _PER_SAMPLE:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(_PER_SAMPLE)}")
        self.float_model, self.calib_model, self.quantized = float_model, calib_model, quantized
        self.metric = metric
        self.batches = []
        for b in data:
            if num_batches is not None and len(self.batches) >= num_batches:
                break
            self.batches.append(_as_tuple(b))
        n_in = len(calib_model.graph.find_nodes(op="placeholder"))
        for k, b in enumerate(self.batches):
            if len(b) != n_in:
                raise ValueError(f"QuantAnalysis: batch {k} holds {len(b)} items but the model takes {n_in} "
                                 f"input{'s' if n_in != 1 else ''}; pass the model's inputs only (for (x, label) "
                                 "pairs: (x for x, _ in loader))")
        if not self.batches:
            raise ValueError("QuantAnalysis: the data set gave no batches")
        self.bad_cases: list[dict] = []
        self.bad_inputs: tuple | None = None
        self.layers: Similarity | None = None
        self.layers_int: Similarity | None = None
        self.table = None
        self.proposed: list[str] = []
        self.hist: list[dict] = []

    # -- worst inputs --------------------------------------------------------------------------
    def auto_find_bad_case(self, num: int = 8, against: str = "simulation") -> list[dict]:
        """Every sample's output agreement with float, worst first (module docstring).

        ``against`` is ``"simulation"`` (the prepared model) or ``"integer"`` (the converted one).
        Returns ``[{"batch", "index", "value"}]``; ``bad_inputs`` holds the ``num`` worst samples.
        """
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"auto_find_bad_case: num is how many worst samples to keep, an int >= 1, got {num!r}")
        test = {"simulation": self.calib_model, "integer": self.quantized}.get(against)
        if test is None:
            raise ValueError(f"auto_find_bad_case: nothing to compare against {against!r} "
                             "(pass quantized= for 'integer'; choose 'simulation' or 'integer')")
        fn, worse_high = _PER_SAMPLE[self.metric]
        cases = []
        for bi, xs in enumerate(self.batches):
            ref, out = _outputs(self.float_model, xs), _outputs(test, xs)
            for i in range(ref.shape[0]):
                cases.append({"batch": bi, "index": i, "value": fn(ref[i], out[i])})
        cases.sort(key=lambda c: -c["value"] if worse_high else c["value"])
        self.bad_cases = cases
        worst = cases[:num]
        self.bad_inputs = tuple(torch.stack([self.batches[c["batch"]][k][c["index"]] for c in worst])
                                for k in range(len(self.batches[0])))
        return cases

    # -- per layer -----------------------------------------------------------------------------
    def compare_per_layer(self, inputs=None) -> Similarity:
        """Float vs simulation per layer on ``inputs`` (default: the worst inputs found, else
        the first batch); also simulation vs integer into ``layers_int`` when given."""
        if inputs is None:
            if self.bad_inputs is None:
                self.auto_find_bad_case()
            inputs = self.bad_inputs
        reference = stage(self.float_model, inputs)
        simulation = stage(self.calib_model, inputs)  # exported and run once for both comparisons
        self.layers = stage_similarity(reference, simulation)
        if self.quantized is not None:
            self.layers_int = stage_similarity(simulation, stage(self.quantized, inputs))
        return self.layers

    # -- sensitivity ---------------------------------------------------------------------------
    def sensitivity(self, num_batches: int | None = None, progress: bool = True):
        """Per-op sensitivity (``edgequant.ptq.sensitivity.op_sensitivity``) on the data set."""
        data = [xs if len(xs) > 1 else xs[0] for xs in self.batches]
        self.table = op_sensitivity(self.calib_model, data, metric=self.metric, num_batches=num_batches,
                                    progress=progress)
        return self.table

    def propose_int16(self, topk: int | None = None, ratio: float | None = None, margin_db: float = 6.0) -> list[str]:
        """Op names to raise to int16 (module docstring); ``topk``/``ratio`` pick a fixed number."""
        if self.table is None:
            self.sensitivity()
        rows = self.table.rows
        if topk is not None or ratio is not None:
            self.proposed = self.table.top(topk, ratio)
        elif self.metric == "sqnr":
            values = [r.value for r in rows if math.isfinite(r.value)]
            median = statistics.median(values) if values else math.inf
            self.proposed = [r.name for r in rows if r.value <= median - margin_db]
        else:
            self.proposed = self.table.top(ratio=0.1)
        return self.proposed

    def qconfig_setter(self, dtype=None):
        """A setter raising the proposed ops: ``prepare(model, x, qconfig_setter=(template, it))``."""
        if not self.proposed:
            self.propose_int16()
        return SensitiveOpQconfigSetter(self.proposed, dtype or qint16)

    # -- histograms ----------------------------------------------------------------------------
    def histograms(self, num_batches: int = 2, bins: int = 128) -> list[dict]:
        self.hist = activation_histograms(self.calib_model, self.batches[:num_batches], bins=bins)
        return self.hist

    def run(self, sensitivity_batches: int | None = None, histogram_batches: int = 2) -> "QuantAnalysis":
        """All steps in order; returns ``self``."""
        self.auto_find_bad_case()
        self.compare_per_layer()
        self.sensitivity(sensitivity_batches)
        self.propose_int16()
        self.histograms(histogram_batches)
        return self

    def __str__(self) -> str:
        lines = []
        if self.bad_cases:
            w = self.bad_cases[0]
            lines.append(f"worst sample: batch {w['batch']} index {w['index']} ({self.metric} {w['value']:.4g})")
        if self.table is not None:
            lines += ["op sensitivity (most sensitive first):", str(self.table)]
        if self.proposed:
            lines.append(f"proposed for int16: {', '.join(self.proposed)}")
        if self.layers is not None:
            lines.append(str(self.layers))
        return "\n".join(lines)
