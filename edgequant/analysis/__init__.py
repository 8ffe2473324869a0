"""Analysis: where accuracy is lost between the float model, the simulation and the integer model.

Never imported by the core stages; every function takes finished models and reports:

- ``compare(float, calib, quantized, x)``: the three stages side by side, per output and layer;
- ``featuremap_similarity(a, b, x)``: any two stages per layer (cosine, SQNR, max error in LSB);
- ``op_lsb(calib, quantized, x)``: each integer node against the simulation on the same inputs, in
  output LSB, with its op's bound (``OpSpec.lsb``); ``op_lsb_violations(rows)``: those over it;
- ``check_unfused_operations(model, x)``: fusions that were missed, and why;
- ``check_qconfig(prepared)``: dtype and observer of every tensor, with warnings;
- ``activation_histograms(prepared, batches)``: per-tensor histograms and clipping ranges;
- ``QuantAnalysis``: worst inputs, per-layer comparison on them, op sensitivity, int16 proposal;
- ``report(path, ...)``: all of it as one self-contained HTML file.
"""
from .compare import Comparison, compare, cosine, sqnr
from .histograms import activation_histograms
from .op_bounds import op_lsb
from .op_bounds import violations as op_lsb_violations
from .html_report import report
from .qconfig_check import QconfigCheck, check_qconfig
from .quant_analysis import QuantAnalysis
from .similarity import Similarity, featuremap_similarity
from .unfused import check_unfused_operations

__all__ = ["compare", "Comparison", "cosine", "sqnr", "featuremap_similarity", "Similarity",
           "op_lsb", "op_lsb_violations",
           "check_unfused_operations", "check_qconfig", "QconfigCheck", "activation_histograms",
           "QuantAnalysis", "report"]
