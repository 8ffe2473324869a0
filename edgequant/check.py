"""Checks of what each IR level guarantees, run at every stage boundary.

Takes a ``Graph``; returns nothing or raises ``IRCheckError`` naming the first offending node or
value. ``export`` and ``convert`` call ``check_graph`` on what they return, ``save`` before it
writes and ``load`` after it reads. The rules, numbered as in ``docs/ir.md``:

Both levels
  G1  the level is ``"quant"`` or ``"int"``.
  G2  every record in ``values`` is filed under its own name; graph inputs are distinct, have a
      record and are not constants.
  G3  every constant is a tensor with a record of the same shape and a dtype that matches the
      tensor (a plain name is the tensor's own dtype; a quantized name is stored in an integer
      tensor whose values lie in the type's range).
  G4  topological order: every node input is a graph input, a constant or an earlier node's
      output.
  G5  every value is defined once (graph input, constant or one node output), every defined
      value has a record and every record is defined.
  G6  graph outputs name defined values (or are literal ``None``/bool/int/float results).
  G7  dtype names are valid for the level: ``STORAGE_DTYPES`` and ``"sym"`` (a non-tensor
      value) at both levels, the quantized names (``qint8``, ...) only at level ``"int"``.
  G8  every ``QParams`` is consistent: a known quantized dtype; one scale and one zero point per
      tensor, or one per channel along a valid ``ch_axis`` (as many as that dim when static);
      every scale finite and a normal float32 number (within ``SCALE_MIN``..``SCALE_MAX``,
      so float32 quantization neither divides by 0 nor overflows); every zero point an int within the dtype's range.
  G9  node fields have their types and ``attrs`` is plain JSON data (dicts with str keys,
      lists, str, int, finite float, bool, None), so a saved graph loads unchanged.
  G10 every name that ``run`` resolves is on the allow-lists of ``edgequant.ops.names``: node
      ops, call targets (``attrs["target"]``), ``$dtype``, ``$memory_format`` and ``$device``
      names; ``args`` is a list, ``kwargs`` a dict, every ``{"$in": k}`` names one of the node's
      inputs. A dim of a shape is an int >= 0 or a symbolic size (``"s0"``, ``"2*s0"``).
Graphs read from a file (``check_graph(g, from_file=True)``; ``load`` runs it)
  F1  every node's attrs hold what its kernel reads, with the types and lengths it expects
      (multipliers and shifts, table records and their entries, conv parameters, ...); no node
      runs a Python callable; no ``meta`` key starts with ``"_"`` (in-memory objects).
  F2  sizes a run allocates from arguments (creation ops, paddings, scale factors) are bounded
      by the tensors in the file (``check_attrs.size_limit``).
Level "quant"
  Q1  a value with ``QParams`` is a float tensor (the carrier of the fake-quantized values).
Level "int"
  I1  a value has ``QParams`` exactly when its dtype is a quantized name, and that name is its
      ``QParams.dtype``.
  I2  no float constant feeds an integer op (every node except those marked
      ``attrs["float"]``, the graph's entry ``quantize`` and the float ops of the op table).
  I3  the graph's rounding rule (``meta["rounding"]``, which ``convert`` records from the
      march profile) is the one the kernels implement, ``qmath.ROUNDING`` (A6); a graph that
      names another rule would run with a rounding it was not made for.
"""
from __future__ import annotations

import math
import numbers

import torch

from .check_attrs import check_file_attrs
from .check_names import check_names
from .dtype import DTYPES
from .ir import LEVELS, Graph, Node, QParams, Value
from .ops import is_float_op, is_quantize
from .ops.names import dim_ok
from .qmath import ROUNDING


class IRCheckError(ValueError):
    """The graph breaks a guarantee of its level; the message names the node or value."""


# tensor storage names a Value.dtype may have at either level (torch's names, without "torch.")
STORAGE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_STORAGE = ("float32", "float64", "float16", "bfloat16")
SYM = "sym"                                     # a non-tensor value (a symbolic int from a shape)
# float32 normal numbers, with room for q * scale: smaller or larger scales lose (A1)/(A2)
SCALE_MIN = float(torch.finfo(torch.float32).tiny)
SCALE_MAX = float(torch.finfo(torch.float32).max) / 2 ** 32


def valid_dtypes(level: str) -> tuple[str, ...]:
    """The ``Value.dtype`` names allowed at ``level`` (rule G7)."""
    base = STORAGE_DTYPES + (SYM,)
    return base + tuple(DTYPES) if level == "int" else base


def check_graph(g: Graph, from_file: bool = False) -> None:
    """Raise ``IRCheckError`` if ``g`` breaks a rule of its level (see the module docstring);
    ``from_file=True`` adds the rules of graphs read from a file (F1, F2)."""
    if g.level not in LEVELS:
        raise IRCheckError(f"unknown IR level {g.level!r}; expected one of {LEVELS}")
    _check_records(g)
    for node in g.nodes:
        _check_node(node)
    _check_definitions(g)
    for v in g.values.values():
        _check_value(g.level, v)
    for name, t in g.constants.items():
        _check_constant(name, t, g.values[name])
    if g.level == "int":
        _check_int(g)
        rule = g.meta.get("rounding", ROUNDING)
        if rule != ROUNDING:
            raise IRCheckError(f"the graph says its integer kernels round {rule!r}; edgequant's round "
                               f"{ROUNDING!r} (qmath A6): convert it again for a march edgequant supports")
    check_names(g, IRCheckError)
    if from_file:
        hidden = [k for k in g.meta if not isinstance(k, str) or k.startswith("_")]
        if hidden:
            raise IRCheckError(f"meta key {hidden[0]!r} is reserved for in-memory objects and cannot come from a file")
        check_file_attrs(g, IRCheckError)


# -- G2, G4, G5, G6 ------------------------------------------------------------------------------
def _check_records(g: Graph) -> None:
    for key, v in g.values.items():
        if not isinstance(v, Value):
            raise IRCheckError(f"value {key!r}: its record is a {type(v).__name__}, not a Value")
        if v.name != key:
            raise IRCheckError(f"value {key!r}: its record is named {v.name!r}")
    if len(set(g.inputs)) != len(g.inputs):
        dup = sorted({i for i in g.inputs if g.inputs.count(i) > 1})
        raise IRCheckError(f"graph input(s) {dup} listed more than once")
    for name in g.inputs:
        if name in g.constants:
            raise IRCheckError(f"graph input {name!r} is also a constant")


def _check_definitions(g: Graph) -> None:
    defined = set(g.inputs) | set(g.constants)
    for name in defined:
        if name not in g.values:
            raise IRCheckError(f"value {name!r} has no record in graph.values")
    for node in g.nodes:
        for i in node.inputs:
            if i is not None and i not in defined:
                where = "a later node writes it (nodes out of topological order)" \
                    if any(i in n.outputs for n in g.nodes) else "nothing defines it"
                raise IRCheckError(f"node {node.name!r} ({node.op}) reads {i!r}, but {where}")
        for o in node.outputs:
            if o in defined:
                raise IRCheckError(f"node {node.name!r} ({node.op}) writes {o!r}, which is already defined")
            if o not in g.values:
                raise IRCheckError(f"node {node.name!r} ({node.op}) writes {o!r}, which has no record in graph.values")
            defined.add(o)
    for name in g.values:
        if name not in defined:
            raise IRCheckError(f"value {name!r} has a record but is neither a graph input, a constant nor a node output")
    for o in g.outputs:
        if isinstance(o, str):
            if o not in defined:
                raise IRCheckError(f"graph output {o!r} is never written")
        elif o is not None and not isinstance(o, (bool, int, float)):
            raise IRCheckError(f"graph output {o!r} is a {type(o).__name__}; outputs are value names or literals")


# -- G7, G8, Q1, I1 --------------------------------------------------------------------------------
def _check_value(level: str, v: Value) -> None:
    if not isinstance(v.shape, tuple) or not all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                                 for d in v.shape):
        raise IRCheckError(f"value {v.name!r}: shape {v.shape!r} must be a tuple of ints and str dims")
    bad = [d for d in v.shape if not dim_ok(d)]
    if bad:
        raise IRCheckError(f"value {v.name!r}: dim {bad[0]!r:.60} of its shape is neither an int >= 0 nor a symbolic size")
    if v.dtype not in valid_dtypes(level):
        hint = " (quantized dtypes belong in QParams at level 'quant')" if v.dtype in DTYPES else ""
        raise IRCheckError(f"value {v.name!r}: dtype {v.dtype!r} is not valid at level {level!r}{hint}; "
                           f"expected one of {valid_dtypes(level)}")
    qp = v.qparams
    if qp is not None:
        _check_qparams(v, qp)
    if level == "quant" and qp is not None and v.dtype not in FLOAT_STORAGE:
        raise IRCheckError(f"value {v.name!r}: quantized ({qp.dtype}) but stored as {v.dtype!r}; "
                           "at level 'quant' a quantized value is a float tensor")
    if level == "int":
        if qp is not None and v.dtype != qp.dtype:
            raise IRCheckError(f"value {v.name!r}: quantized as {qp.dtype} but its dtype is {v.dtype!r}; "
                               "at level 'int' a quantized value's dtype is its quantized dtype")
        if qp is None and v.dtype in DTYPES:
            raise IRCheckError(f"value {v.name!r}: dtype {v.dtype!r} is quantized but the value has no QParams")


def _check_qparams(v: Value, qp: QParams) -> None:
    where = f"value {v.name!r}: QParams"
    if not isinstance(qp, QParams):
        raise IRCheckError(f"value {v.name!r}: qparams is a {type(qp).__name__}, not QParams")
    dt = DTYPES.get(qp.dtype)
    if dt is None:
        raise IRCheckError(f"{where} dtype {qp.dtype!r} is not a quantized dtype; expected one of {sorted(DTYPES)}")
    if not isinstance(qp.scale, tuple) or not isinstance(qp.zero_point, tuple):
        raise IRCheckError(f"{where} scale and zero_point must be tuples")
    if len(qp.scale) == 0 or len(qp.scale) != len(qp.zero_point):
        raise IRCheckError(f"{where} has {len(qp.scale)} scales and {len(qp.zero_point)} zero points")
    if qp.ch_axis is None:
        if len(qp.scale) != 1:
            raise IRCheckError(f"{where} is per tensor (ch_axis None) but has {len(qp.scale)} scales")
    else:
        nd = len(v.shape)
        if isinstance(qp.ch_axis, bool) or not isinstance(qp.ch_axis, int) or not -nd <= qp.ch_axis < nd:
            raise IRCheckError(f"{where} ch_axis {qp.ch_axis!r} is not an axis of shape {v.shape}")
        dim = v.shape[qp.ch_axis]
        if isinstance(dim, int) and len(qp.scale) != dim:
            raise IRCheckError(f"{where} has {len(qp.scale)} scales along axis {qp.ch_axis}, "
                               f"which has {dim} channels (shape {v.shape})")
    for i, s in enumerate(qp.scale):
        if not isinstance(s, float) or not math.isfinite(s) or s <= 0:
            raise IRCheckError(f"{where} scale[{i}] = {s!r}; scales are finite floats > 0")
        if not SCALE_MIN <= s <= SCALE_MAX:
            raise IRCheckError(f"{where} scale[{i}] = {s!r} is outside [{SCALE_MIN:.3g}, {SCALE_MAX:.3g}]: "
                               "quantization computes in float32, where it would be 0, subnormal or overflow")
    for i, z in enumerate(qp.zero_point):
        if isinstance(z, bool) or not isinstance(z, int) or not dt.qmin <= z <= dt.qmax:
            raise IRCheckError(f"{where} zero_point[{i}] = {z!r} is outside {qp.dtype}'s range "
                               f"[{dt.qmin}, {dt.qmax}]")


# -- G3 ----------------------------------------------------------------------------------------------
def _check_constant(name: str, t, v: Value) -> None:
    if not isinstance(t, torch.Tensor):
        raise IRCheckError(f"constant {name!r} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != v.shape:
        raise IRCheckError(f"constant {name!r} has shape {tuple(t.shape)} but its record says {v.shape}")
    stored = str(t.dtype).replace("torch.", "")
    dt = DTYPES.get(v.dtype)
    if dt is None:
        if stored != v.dtype:
            raise IRCheckError(f"constant {name!r} is a {stored} tensor but its record says {v.dtype!r}")
        return
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise IRCheckError(f"constant {name!r} is {v.dtype} but stored in a {stored} tensor; "
                           "quantized constants are integer tensors")
    if t.numel() and (int(t.min()) < dt.qmin or int(t.max()) > dt.qmax):
        raise IRCheckError(f"constant {name!r} holds values in [{int(t.min())}, {int(t.max())}], "
                           f"outside {v.dtype}'s range [{dt.qmin}, {dt.qmax}]")


# -- G9 ------------------------------------------------------------------------------------------------
def _check_node(node: Node) -> None:
    if not isinstance(node, Node):
        raise IRCheckError(f"graph.nodes holds a {type(node).__name__}, not a Node")
    if not isinstance(node.name, str) or not isinstance(node.op, str) or not isinstance(node.source, str):
        raise IRCheckError(f"node {node.name!r}: name, op and source must be str")
    if not isinstance(node.inputs, tuple) or not all(i is None or isinstance(i, str) for i in node.inputs):
        raise IRCheckError(f"node {node.name!r} ({node.op}): inputs must be a tuple of value names or None")
    if not isinstance(node.outputs, tuple) or not all(isinstance(o, str) for o in node.outputs):
        raise IRCheckError(f"node {node.name!r} ({node.op}): outputs must be a tuple of value names")
    if not isinstance(node.attrs, dict):
        raise IRCheckError(f"node {node.name!r} ({node.op}): attrs must be a dict")
    problem = json_problem(node.attrs, "attrs")
    if problem:
        raise IRCheckError(f"node {node.name!r} ({node.op}): {problem}")


def json_problem(obj, path: str) -> str | None:
    """Why ``obj`` is not plain JSON data that survives a JSON round trip unchanged (or None)."""
    if obj is None or isinstance(obj, (str, bool)):
        return None
    if type(obj) is int:
        return None
    if type(obj) is float:
        return None if math.isfinite(obj) else \
            f"{path} = {obj!r} is not finite; write it as {{\"$float\": \"{obj!r}\"}}"
    if type(obj) is list:
        for k, x in enumerate(obj):
            p = json_problem(x, f"{path}[{k}]")
            if p:
                return p
        return None
    if type(obj) is dict:
        for k, x in obj.items():
            if not isinstance(k, str):
                return f"{path} has the key {k!r} ({type(k).__name__}); JSON keys are str"
            p = json_problem(x, f"{path}[{k!r}]")
            if p:
                return p
        return None
    hint = "; use a list (JSON has no tuples)" if isinstance(obj, tuple) else \
        ("; convert it with int()/float()/.tolist()" if hasattr(obj, "item") or isinstance(obj, numbers.Number) else "")
    return f"{path} = {obj!r:.80} is a {type(obj).__name__}, not JSON data{hint}"


# -- I2 --------------------------------------------------------------------------------------------------
def _check_int(g: Graph) -> None:
    for node in g.nodes:
        if node.attrs.get("float") or is_quantize(node.op) or is_float_op(node.op):   # may read float constants
            continue
        for i in node.inputs:
            if i in g.constants and g.constants[i].is_floating_point():
                raise IRCheckError(f"node {node.name!r} ({node.op}) reads float constant {i!r} at level 'int'; "
                                   "integer ops take integer constants (mark a float op with attrs['float'])")
