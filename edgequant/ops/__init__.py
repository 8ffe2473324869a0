"""The op table: every canonical op, one family file each.

``OPS`` maps a canonical name to its ``OpSpec``; ``spec_for_target`` maps a captured graph's
call target (an aten overload, ``operator.getitem`` or an edgequant marker) to the spec. The
table is a literal concatenation of the family lists below; nothing registers by import.
"""
from __future__ import annotations

import operator

from . import elementwise, matmul_like, nonlinear, norm_softmax, pool_reduce, shape
from .spec import OpSpec, resolve, torch_op  # noqa: F401  (resolve: the allow-listed lookup)

ALL_SPECS: list[OpSpec] = [
    *matmul_like.SPECS, *elementwise.SPECS, *shape.SPECS, *pool_reduce.SPECS,
    *norm_softmax.SPECS, *nonlinear.SPECS,
]
OPS: dict[str, OpSpec] = {s.name: s for s in ALL_SPECS}

_BY_TARGET: dict[object, OpSpec] = {}
for _spec in ALL_SPECS:
    for _t in _spec.targets:
        if _t == "getitem":
            _BY_TARGET[operator.getitem] = _spec
        elif _t.startswith("aten."):
            _op = torch_op(_t)
            if _op is not None:
                _BY_TARGET[_op] = _spec


def spec_for_target(target) -> OpSpec | None:
    """The OpSpec of a graph call target, or None if edgequant does not support it."""
    return _BY_TARGET.get(target)


__all__ = ["OPS", "ALL_SPECS", "OpSpec", "spec_for_target"]
