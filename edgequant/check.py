"""Checks of what each IR level guarantees, run at every stage boundary.

Takes a ``Graph``; returns nothing or raises ``IRCheckError`` naming the first offending node or
value. Both levels: nodes are in topological order, every input is a graph input, a constant or
an earlier node's output, every output is written once, every value has a record. Level
``"int"`` adds: no float constant feeds an integer op, and every quantized value's dtype is a
quantized dtype whose range holds its declared bounds.
"""
from __future__ import annotations

from .dtype import DTYPES
from .ir import LEVELS, Graph


class IRCheckError(ValueError):
    """The graph breaks a guarantee of its level; the message names the node or value."""


def check_graph(g: Graph) -> None:
    if g.level not in LEVELS:
        raise IRCheckError(f"unknown IR level {g.level!r}; expected one of {LEVELS}")
    known = set(g.inputs) | set(g.constants)
    for name in known:
        if name not in g.values:
            raise IRCheckError(f"value {name!r} has no record in graph.values")
    for node in g.nodes:
        for i in node.inputs:
            if i is not None and i not in known:
                raise IRCheckError(f"node {node.name!r} ({node.op}) reads {i!r}, which no earlier node writes")
        for o in node.outputs:
            if o in known:
                raise IRCheckError(f"node {node.name!r} writes {o!r}, which is already defined")
            if o not in g.values:
                raise IRCheckError(f"node {node.name!r} writes {o!r}, which has no record in graph.values")
            known.add(o)
    for o in g.outputs:
        if o is not None and not isinstance(o, (int, float)) and o not in known:
            raise IRCheckError(f"graph output {o!r} is never written")
    if g.level == "int":
        _check_int(g)


def _check_int(g: Graph) -> None:
    for name, v in g.values.items():
        if v.qparams is not None and v.dtype not in DTYPES:
            raise IRCheckError(f"value {name!r} is quantized but has dtype {v.dtype!r} at level 'int'")
    for node in g.nodes:
        if node.attrs.get("float"):
            continue
        for i in node.inputs:
            if i in g.constants and g.constants[i].is_floating_point() and node.op not in ("aten", "float_call"):
                raise IRCheckError(f"node {node.name!r} ({node.op}) reads float constant {i!r} at level 'int'")
