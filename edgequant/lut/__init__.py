"""Lookup tables: SegmentLUT and every nonlinear op of the integer model.

- ``table``: ``LutTable`` and ``build_table`` (direct 8-bit tables, segmented 16-bit tables);
- ``kernel``: ``lut_apply``, the integer kernel (int codes in, int codes out);
- ``reference``: a plain-Python twin of the kernel for tests.
"""
from .kernel import lut_apply
from .table import LutTable, build_table

__all__ = ["LutTable", "build_table", "lut_apply"]
