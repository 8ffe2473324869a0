"""The graph IR: plain, checked data that ``export`` writes and ``convert`` rewrites.

Takes nothing; defines the records every later stage shares. A ``Graph`` is a list of
``Node``s in topological order over named ``Value``s (typed tensors) and named constants
(tensors). It exists at two levels:

- ``"quant"`` (written by ``export``): the float computation of the prepared model, every op
  with its canonical name and attributes, float weights as constants, and on every quantized
  value the ``QParams`` the simulation used. Running it reproduces the VALIDATION simulation.
- ``"int"`` (written by ``convert``): integer-only between the quantize and dequantize nodes;
  integer constants (int8 weights, int32 biases, multipliers and shifts); every quantized
  value's dtype is a quantized dtype name (``"qint8"``, ``"qint32"``, ...).

Calling a ``Graph`` runs it (``edgequant.run``); ``summary()`` lists its nodes. Value shapes
hold ints for static dims and strings (``"s0"``) for dims that may change between calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

IR_VERSION = 1
LEVELS = ("quant", "int")
PLAIN_DTYPES = ("float32", "int64", "int32", "bool")  # unquantized tensors (outside the quantized region, index math)


_RUNNER = None   # edgequant.run.run, set when that module loads (it sits above this one)


def set_runner(fn) -> None:
    """Install the function ``Graph.__call__`` delegates to (``edgequant.run`` does, on import)."""
    global _RUNNER
    _RUNNER = fn


@dataclass(frozen=True)
class QParams:
    """How a value is quantized: ``real = (q - zero_point) * scale`` (per tensor or along ``ch_axis``)."""

    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    ch_axis: int | None = None

    def scale_tensor(self) -> torch.Tensor:
        t = torch.tensor(self.scale, dtype=torch.float32)
        return t if self.ch_axis is not None else t.reshape(())

    def zero_point_tensor(self) -> torch.Tensor:
        t = torch.tensor(self.zero_point, dtype=torch.int64)
        return t if self.ch_axis is not None else t.reshape(())

    @staticmethod
    def from_tensors(dtype, scale: torch.Tensor, zero_point: torch.Tensor, ch_axis: int | None = None) -> "QParams":
        return QParams(str(dtype), tuple(float(s) for s in scale.flatten().tolist()),
                       tuple(int(z) for z in zero_point.flatten().tolist()),
                       ch_axis if scale.numel() > 1 or ch_axis is not None else None)


@dataclass(frozen=True)
class Value:
    """A tensor flowing between nodes."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str                       # a PLAIN_DTYPES name, or a quantized dtype name at level "int"
    qparams: QParams | None = None   # set on quantized values


@dataclass(frozen=True)
class Node:
    """One op. ``inputs`` name values or constants (``None`` for an absent optional input)."""

    name: str
    op: str
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)   # JSON-serialisable
    source: str = ""                                       # the user's source line


@dataclass
class Graph:
    """A whole model at one level (see the module docstring)."""

    level: str
    inputs: list[str]
    outputs: list[str]
    values: dict[str, Value]
    nodes: list[Node]
    constants: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)   # march, out_spec, version, ...

    # ``ir._integer_conv = True`` before ``convert(ir, March.NASH_H)`` keeps conv outputs integer
    @property
    def _integer_conv(self) -> bool:
        return bool(self.meta.get("integer_conv", False))

    @_integer_conv.setter
    def _integer_conv(self, flag: bool) -> None:
        self.meta["integer_conv"] = bool(flag)

    def producer(self) -> dict[str, Node]:
        """``{value name: the node that writes it}``."""
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """``{value or constant name: the nodes that read it}``."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i is not None:
                    out.setdefault(i, []).append(n)
        return out

    def summary(self) -> list[dict]:
        """One row per node: ``name``, ``op``, ``dtype`` and ``scale`` of its (first) output."""
        rows = []
        for n in self.nodes:
            v = self.values.get(n.outputs[0]) if n.outputs else None
            qp = v.qparams if v is not None else None
            rows.append({"name": n.name, "op": n.op, "dtype": v.dtype if v else None,
                         "scale": (qp.scale[0] if qp and len(qp.scale) == 1 else (list(qp.scale) if qp else None))})
        return rows

    def __call__(self, *inputs, **kwargs):
        if _RUNNER is None:
            raise RuntimeError("graphs run through edgequant.run; import edgequant first")
        return _RUNNER(self, *inputs, **kwargs)

    def __repr__(self) -> str:
        return (f"Graph(level={self.level!r}, {len(self.nodes)} nodes, {len(self.constants)} constants, "
                f"inputs={self.inputs}, outputs={self.outputs})")
