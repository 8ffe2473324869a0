"""Lookup tables: SegmentLUT and every nonlinear op of the integer model.

- ``table``: ``LutTable`` and ``build_table`` (direct 8-bit tables, segmented 16-bit tables);
- ``kernel``: ``lut_apply``, the integer kernel (int codes in, int codes out);
- ``reference``: a plain-Python twin of the kernel for tests;
- ``composite``: integer softmax, layer norm and division by a tensor;
- ``sim``: the table-op modules ``prepare`` inserts (``attach_tables``);
- ``validate``: checks of a SegmentLUT's function (elementwise, finite on its range, ``inverse_func``
  decreasing), run before its table is built;
- ``ir_ops``: export, run and convert of table ops;
- ``report``: per-table, per-segment error and the share of entries the calibrated range uses.
"""
from .kernel import lut_apply
from .report import format_report, report
from .table import LutTable, build_table

__all__ = ["LutTable", "build_table", "lut_apply", "report", "format_report"]
