"""Lookup tables: SegmentLUT and every nonlinear op of the integer model.

- ``table``: ``LutTable`` and ``build_table`` (direct 8-bit tables, segmented 16-bit tables);
- ``fit``: the node values of a segmented table (the piecewise-linear curve nearest to ``f``);
- ``kernel``: ``lut_apply``, the integer kernel (int codes in, int codes out);
- ``reference``: a plain-Python twin of the kernel for tests;
- ``composite``: integer softmax, layer norm and division by a tensor;
- ``sim``: the table-op modules ``prepare`` inserts (``attach_tables``) and their export into
  the IR (``export_lut_op``);
- ``params``: the IR format of a table op's parameters (``attrs["lut"]`` and its constants);
- ``validate``: checks of a SegmentLUT's function (elementwise, finite on its range, ``inverse_func``
  decreasing), run before its table is built;
- ``quality``: ``report`` and ``format_report``, per-table, per-segment error and the share of
  entries the calibrated range uses (``edgequant.lut.report(model)``).

Layers: the tables and their kernels sit below the op table (``edgequant.ops`` imports them);
``sim`` and ``quality`` read the op table and sit above it. This package therefore imports only
the lower layer when it loads; ``report`` and ``format_report`` load on first use (PEP 562
``__getattr__`` below), after every layer has.

The table ops' rows, their lowering to integer nodes and their integer kernels are in
``edgequant.ops.nonlinear`` (softmax and layer norm rows in ``ops.norm_softmax``).
"""
from .kernel import lut_apply
from .table import LutTable, build_table



def __getattr__(name: str):
    """``edgequant.lut.report`` / ``format_report``: loaded from ``quality`` on first use (the
    module docstring says why)."""
    if name in ("report", "format_report"):
        from . import quality

        return getattr(quality, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LutTable", "build_table", "lut_apply", "report", "format_report"]
