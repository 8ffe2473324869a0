"""The schema language of kernel attributes: what rule F1 (``check_attrs``) checks attrs against.

Takes a dict read from a file and a schema; returns nothing or raises ``BadAttr`` naming the
key. A schema maps each key (``"key?"``: one that may be absent) to a type name of ``TYPES``
(``"int"``, ``"shifts"``, ``"qdtype"``, ...), to a tuple of the strings it may be, or to a dict
``{value: schema}`` whose value picks the keys that follow (``"output": {"requant": {...}}``). The op table's rows
declare their integer nodes' schemas in these names (``OpSpec.int_attrs``, and the ``params`` of
a ``lut_record``), next to the lowerings that write the attrs; the schemas of the kernels a node
names in ``attrs["kernel"]`` (type ``"named kernel"``) and of table records are here.
"""
from __future__ import annotations

import math

from .check_names import BadAttr
from .dtype import DTYPES
from .ops.names import targets

INT64 = 1 << 63


def is_int(v, lo=-INT64, hi=INT64 - 1) -> bool:
    return type(v) is int and lo <= v <= hi


def is_ints(v, n=None, lo=-INT64, hi=INT64 - 1) -> bool:
    return type(v) is list and (n is None or len(v) == n) and all(is_int(x, lo, hi) for x in v)


def _int_or_ints(v, lo=-INT64, hi=INT64 - 1) -> bool:
    return is_int(v, lo, hi) or (is_ints(v, None, lo, hi) and len(v) > 0)


def _num(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


SHIFT = dict(lo=-64, hi=126)            # shifts a kernel applies (qmath gives 0 past 63)
RIGHT_SHIFT = dict(lo=0, hi=126)        # the affine kernel's (convert writes n >= 0)
_TAP = {k: "offsets" for k in ("i0", "i1", "w0", "w1")}
TYPES = {
    "int": is_int, "ints": is_ints, "int or ints": _int_or_ints, "int pair": lambda v: is_ints(v, 2),
    "optional int": lambda v: v is None or is_int(v), "optional int pair": lambda v: v is None or is_ints(v, 2),
    "optional int or ints": lambda v: v is None or _int_or_ints(v),
    "count": lambda v: is_int(v, 1), "offsets": lambda v: is_ints(v, None, 0, INT64 - 1),
    "bool": lambda v: type(v) is bool, "str": lambda v: isinstance(v, str), "list": lambda v: type(v) is list,
    "dict": lambda v: type(v) is dict, "strs": lambda v: type(v) is list and all(isinstance(c, str) for c in v),
    "number": _num, "numbers": lambda v: type(v) is list and all(_num(x) for x in v),
    "pair": lambda v: type(v) is list and len(v) == 2,
    "optional number pair": lambda v: v is None or (type(v) is list and len(v) == 2 and all(_num(x) for x in v)),
    "qdtype": lambda v: isinstance(v, str) and v in DTYPES, "axis": lambda v: v is None or is_int(v, -8, 7),
    "dim": lambda v: is_int(v, -64, 63), "dims": lambda v: is_ints(v, None, -64, 63),
    "shift": lambda v: is_int(v, **SHIFT), "shifts": lambda v: is_ints(v, None, **SHIFT),
    "right shift": lambda v: is_int(v, **RIGHT_SHIFT), "right shifts": lambda v: _int_or_ints(v, **RIGHT_SHIFT),
    "bits": lambda v: is_int(v, 0, 62), "bit list": lambda v: is_ints(v, None, 0, 62),
    "limb shift": lambda v: is_int(v, 0, 31), "input": lambda v: is_int(v, 0, 64),
    "quantized inputs": lambda v: is_int(v, 1, 2), "intervals": lambda v: is_int(v, 0, 1 << 24),
    "sizes": lambda v: is_ints(v, None, 1, 1 << 16), "paddings": lambda v: is_ints(v, None, 0, 1 << 16),
    "groups": lambda v: is_int(v, 1, 1 << 16),
    "windows": lambda v: type(v) is list and all(is_ints(s, None, 0, INT64 - 1) for s in v),
    "taps": lambda v: type(v) is list and len(v) == 2 and all(
        schema_ok(t, _TAP) and len({len(t[k]) for k in _TAP}) == 1 for t in v),
    "terms": lambda v: type(v) is list and all(schema_ok(t, _TERM) for t in v),
    "rescales": lambda v: type(v) is list and all(p is None or schema_ok(p, _AFFINE) for p in v),
    "target": lambda v: isinstance(v, str) and v in targets(),
}
_GRID = {"out_zp": "int", "lo": "int", "hi": "int", "out_dtype": "qdtype"}
_TERM = {"in": "input", "zp": "int or ints", "m0": "int or ints"}
_AFFINE = {"axis": "axis", "terms": "terms", "const": "int or ints", "shift": "right shifts", "bound": "optional int",
           **_GRID}
# the kernels a node names in attrs["kernel"] (the type "named kernel")
KERNEL_ATTRS = {
    "affine": _AFFINE,
    "product": {"zp": "int pair", "m0": "int", "shift": "shift", **_GRID},
    "rescale_call": {"target": "target", "args": "list", "kwargs": "dict", "out_dtype": "qdtype",
                     "rescale": "rescales"},
    "interval": {"lo": "int", "hi": "int", "invert": "bool"},
    "compare2": {"fn": ("gt", "ge", "lt", "le", "eq", "ne"), "zp": "int pair", "f": "int pair"},
}
_VARIANTS = {"named kernel": KERNEL_ATTRS}   # type names whose value picks a schema from a table
NAMED_KERNEL = {"kernel": "named kernel"}     # attrs are those of the kernel attrs["kernel"] names
# keys a kernel reads with .get: absent is fine, present must have the type
OPTIONAL = {"bound": "optional int", "callable_ref": "str", "kernel": "str", "x_ch_axis": "axis", "w_ch_axis": "axis",
            "fused_activation": "str", "m0_neg": "optional int or ints", "calibrated_range": "optional number pair"}
LUT = {"tables": "list", "params": "dict", "consts": "strs", "n_quant": "quantized inputs"}   # attrs["lut"]
TABLE = {"kind": ("direct", "segmented"), "mode": ("ASYM", "YSYM", "CSYM"), "in_dtype": "qdtype",   # one table
         "out_dtype": "qdtype", "in_zero": "int", "out_zero": "int", "index_offset": "int", "starts": "ints",
         "shifts": "bit list", "intervals": "intervals", "frac_bits": "bits", "slope_lo": "int pair",
         "slope_hi": "int pair", "in_scale": "number", "out_scale": "number", "in_range": "pair"}


def _variants(t) -> dict | None:
    """The sub-schemas a type picks from by the attribute's value (a dict, or a named table)."""
    return t if isinstance(t, dict) else _VARIANTS.get(t) if isinstance(t, str) else None


def _ok(v, t) -> bool:
    choices = _variants(t) if not isinstance(t, tuple) else t
    if choices is not None:
        return isinstance(v, str) and v in choices
    return TYPES[t](v)


def check_schema(d: dict, schema: dict, path: str = "attrs") -> None:
    """Every key of ``schema`` is in ``d`` with its type; a key whose type picks a variant (the
    value names it) adds that variant's keys."""
    schema = {k.rstrip("?"): t for k, t in schema.items() if not k.endswith("?") or k.rstrip("?") in d}
    for key, t in schema.items():
        if key not in d:
            raise BadAttr(f"{path} has no {key!r}")
        if not _ok(d[key], t):
            raise BadAttr(f"{path}[{key!r}] = {d[key]!r:.80} does not have the type or range its kernel reads")
    for key, t in schema.items():
        if _variants(t) is not None:
            check_schema(d, _variants(t)[d[key]], path)


def schema_ok(d, schema: dict) -> bool:
    try:
        return isinstance(d, dict) and check_schema(d, schema) is None
    except BadAttr:
        return False


def check_optional(d: dict, schema: dict, path: str = "attrs") -> None:
    """Keys a kernel reads with ``.get``: absent is fine, present must have the right type."""
    check_schema({k: v for k, v in d.items() if k in schema}, {k: schema[k] for k in schema if k in d}, path)


def named_kernel(schema: dict, a: dict) -> str | None:
    """The kernel ``attrs['kernel']`` names, where the schema takes its attrs from it."""
    return a["kernel"] if schema.get("kernel") == "named kernel" else None


def unknown_types(schema: dict) -> set[str]:
    """The type names ``schema`` uses that ``TYPES`` does not define (a row's typo)."""
    out = set()
    for t in schema.values():
        if isinstance(t, dict):
            out |= {x for sub in t.values() for x in unknown_types(sub)}
        elif isinstance(t, str) and t not in TYPES and t not in _VARIANTS:
            out.add(t)
    return out
