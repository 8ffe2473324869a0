"""Rule G10 of ``check``: every name a graph carries is one edgequant resolves.

Takes a ``Graph``; returns nothing or raises the error its caller builds, naming the node and
the bad name. ``check_names`` runs on every graph (in memory and read from a file) and refuses
any name that ``run`` would resolve and that is not on the allow-lists of ``ops.names``: node
ops, call targets, ``$dtype``, ``$memory_format`` and ``$device`` names, and malformed call
encodings (``args`` not a list, ``{"$in": k}`` past the node's inputs).
"""
from __future__ import annotations

from .ir import Graph
from .ops import calls_python
from .ops.names import DTYPES as TORCH_DTYPES, MARKER_TARGETS, MEMORY_FORMATS, device_ok, op_names, targets

_MARKERS = {"$in", "$dtype", "$float", "$device", "$memory_format"}


class BadAttr(Exception):
    """What is wrong with one attribute (its caller turns it into an error naming the node)."""


def check_names(g: Graph, error) -> None:
    """Rule G10 for every node of ``g``; ``error(message)`` builds the exception to raise."""
    ops, tgts = op_names(), targets()
    for node in g.nodes:
        where = f"node {node.name!r} ({node.op})"
        if node.op not in ops:
            raise error(f"node {node.name!r}: op {node.op!r} is not an edgequant op (see edgequant.ops.names)")
        a = node.attrs
        callable_op = calls_python(node.op) and "lut" not in a
        if "target" in a:
            t = a["target"]
            if not isinstance(t, str):
                raise error(f"{where}: attrs['target'] is a {type(t).__name__}, not a target name")
            if not callable_op and t not in tgts and t not in MARKER_TARGETS:
                raise error(f"{where} from {node.source or '<unknown>'}: target {t!r} is not an op edgequant runs "
                            "(allow-list: edgequant.ops.names); keep that code out of the model or decorate it "
                            "with @edgequant.wrap")
        for key in ("args", "kwargs"):
            if key in a and not isinstance(a[key], list if key == "args" else dict):
                raise error(f"{where}: attrs[{key!r}] must be a {'list' if key == 'args' else 'dict'}, "
                            f"got {type(a[key]).__name__}")
        try:
            _check_encoded(a.get("args", []), len(node.inputs), "args")
            _check_encoded(a.get("kwargs", {}), len(node.inputs), "kwargs")
            for p in (a["rescale"] if isinstance(a.get("rescale"), list) else []):
                if isinstance(p, dict):
                    _check_encoded(p, 0, "rescale")
        except BadAttr as exc:
            raise error(f"{where}: {exc}") from None


def _check_encoded(x, n_inputs: int, path: str) -> None:
    if isinstance(x, list):
        for k, v in enumerate(x):
            _check_encoded(v, n_inputs, f"{path}[{k}]")
        return
    if not isinstance(x, dict):
        return
    marks = _MARKERS.intersection(x)
    if not marks:
        for k, v in x.items():
            _check_encoded(v, n_inputs, f"{path}[{k!r}]")
        return
    if len(x) != 1:
        raise BadAttr(f"{path} = {x!r:.80} mixes a marker with other keys")
    (mark, v), = x.items()
    ok = {"$in": lambda: type(v) is int and 0 <= v < n_inputs,
          "$dtype": lambda: isinstance(v, str) and v in TORCH_DTYPES,
          "$memory_format": lambda: isinstance(v, str) and v in MEMORY_FORMATS,
          "$device": lambda: device_ok(v),
          "$float": lambda: isinstance(v, str) and v.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")}[mark]
    if not ok():
        what = f"an input index below {n_inputs}" if mark == "$in" else \
            ("'nan', 'inf' or '-inf'" if mark == "$float" else "a name on the allow-list of edgequant.ops.names")
        raise BadAttr(f"{path} = {{{mark!r}: {v!r:.60}}}: {mark} must be {what}")
