"""Checks of the attributes a node read from a file carries (rules F1 and F2 of ``check``).

Takes a ``Graph``; returns nothing or raises ``IRCheckError`` naming the node and the bad
attribute (the names themselves, rule G10, are ``check_names``'s). ``check_file_attrs`` checks
that every attribute an integer kernel reads has the type and length it expects, and that
sizes a run would allocate from arguments (creation ops, paddings, scale factors) are bounded
by the tensors actually in the graph, so a file cannot make a run allocate what it merely
claims. At level "int" (``check_grid``) the attributes must also agree with the values
they describe: output dtype and zero point, input zero points, conv geometry, pooling windows,
and requantizing multipliers small enough that ``acc * m0`` cannot overflow int64; an
``affine`` kernel's terms subtract their inputs' zero points, its sum stays below 2^63 on every
code its inputs can hold, its ``bound`` (which selects the float64 carrier) is not understated,
and its shifts are the non-negative ones convert writes.
"""
from __future__ import annotations

import math

import torch

from .dtype import DTYPES
from .ir import Graph, Node
from .qmath import F64_EXACT
from .check_names import CALLABLE_OPS as _CALLABLE_OPS, BadAttr
from .ops.names import BOUNDED_ARGS, MARKER_TARGETS, targets

INT64 = 1 << 63
MIN_ELEMENTS = 1 << 24   # a size a file may always ask for (64 MiB of float32); more needs backing tensors


_Bad = BadAttr   # what is wrong with one attribute (turned into an IRCheckError naming the node)


# -- F1: kernel attributes -----------------------------------------------------------------------------
def _int(v, lo=-INT64, hi=INT64 - 1) -> bool:
    return type(v) is int and lo <= v <= hi


def _ints(v, n=None, lo=-INT64, hi=INT64 - 1) -> bool:
    return type(v) is list and (n is None or len(v) == n) and all(_int(x, lo, hi) for x in v)


def _int_or_ints(v, lo=-INT64, hi=INT64 - 1) -> bool:
    return _int(v, lo, hi) or (_ints(v, None, lo, hi) and len(v) > 0)


def _num(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


SHIFT = dict(lo=-64, hi=126)            # shifts a kernel applies (qmath gives 0 past 63)
RIGHT_SHIFT = dict(lo=0, hi=126)        # the affine kernel's (convert writes n >= 0)
_QDT = lambda v: isinstance(v, str) and v in DTYPES             # noqa: E731
_AXIS = lambda v: v is None or _int(v, -8, 7)                    # noqa: E731
_OPT_INT = lambda v: v is None or _int(v)                        # noqa: E731
_BOOL = lambda v: type(v) is bool                                # noqa: E731
_GRID = {"out_zp": _int, "lo": _int, "hi": _int, "out_dtype": _QDT}

_TERM = {"in": lambda v: _int(v, 0, 64), "zp": _int_or_ints, "m0": _int_or_ints}
_AFFINE = {"axis": _AXIS, "terms": lambda v: type(v) is list and all(_schema_ok(t, _TERM) for t in v),
           "const": _int_or_ints, "shift": lambda v: _int_or_ints(v, **RIGHT_SHIFT), "bound": _OPT_INT, **_GRID}
_ELEMENTWISE = {
    "affine": _AFFINE,
    "product": {"zp": lambda v: _ints(v, 2), "m0": _int, "shift": lambda v: _int(v, **SHIFT), **_GRID},
    "rescale_call": {"target": lambda v: v in targets(), "args": lambda v: type(v) is list,
                     "kwargs": lambda v: type(v) is dict, "out_dtype": _QDT,
                     "rescale": lambda v: type(v) is list and all(p is None or _schema_ok(p, _AFFINE) for p in v)},
    "interval": {"lo": _int, "hi": _int, "invert": _BOOL},
    "compare2": {"fn": lambda v: v in ("gt", "ge", "lt", "le", "eq", "ne"), "zp": lambda v: _ints(v, 2),
                 "f": lambda v: _ints(v, 2)},
}
_CONV = {"stride": lambda v: _ints(v, None, 1, 1 << 16), "padding": lambda v: _ints(v, None, 0, 1 << 16),
         "dilation": lambda v: _ints(v, None, 1, 1 << 16), "groups": lambda v: _int(v, 1, 1 << 16)}
_REDUCE = {"carrier": lambda v: v in ("float32", "float64", "int64", "float32_limbs", "dynamic"),
           "x_zero_point": _int_or_ints, "w_zero_point": _int_or_ints, "ch_axis": _AXIS,
           "output": lambda v: v in ("requant", "acc", "float")}
_OUTPUT = {"requant": {"out_dtype": _QDT, "out_zero_point": _int},
           "acc": {"out_dtype": _QDT}, "float": {"acc_scale": lambda v: type(v) is list and all(_num(x) for x in v)}}
_KERNELS = {
    "rescale": {"m0": _ints, "shift": lambda v: _ints(v, None, **SHIFT), "in_zero_point": _ints,
                "ch_axis": _AXIS, "out_zero_point": _int, "out_dtype": _QDT},
    "avg_pool": {"starts": lambda v: type(v) is list and all(_ints(s, None, 0, INT64 - 1) for s in v),
                 "ends": lambda v: type(v) is list and all(_ints(s, None, 0, INT64 - 1) for s in v),
                 "zp": _int, **_GRID},
    "mean": {"dims": lambda v: _ints(v, None, -64, 63), "keepdim": _BOOL, "zp": _int, "m0": _int,
             "shift": lambda v: _int(v, **SHIFT), **_GRID},
    "interpolate_bilinear": {"taps": lambda v: type(v) is list and len(v) == 2 and all(_schema_ok(
        t, {k: lambda x: _ints(x, None, 0, INT64 - 1) for k in ("i0", "i1", "w0", "w1")}) and
        len({len(t[k]) for k in ("i0", "i1", "w0", "w1")}) == 1 for t in v),
        "drop": lambda v: _int(v, 0, 126), "zp": _int, "m0": _int, "shift": lambda v: _int(v, **SHIFT), **_GRID},
    "embedding": {"output": lambda v: v in ("requant", "gather")},
    "yuv2rgb": {"frac_bits": lambda v: _int(v, 0, 62), "mean_frac_bits": lambda v: _int(v, 0, 62),
                "out_dtype": _QDT, "out_zero_point": _int},
}
_KERNELS["sum"] = _KERNELS["mean"]
_REDUCE_OPS = ("conv1d", "conv2d", "conv_transpose2d", "linear", "matmul")
_TABLE = {"kind": lambda v: v in ("direct", "segmented"), "mode": lambda v: v in ("ASYM", "YSYM", "CSYM"),
          "in_dtype": _QDT, "out_dtype": _QDT, "in_zero": _int, "out_zero": _int, "index_offset": _int,
          "starts": _ints, "shifts": lambda v: _ints(v, None, 0, 62), "intervals": lambda v: _int(v, 0, 1 << 24),
          "frac_bits": lambda v: _int(v, 0, 62), "slope_lo": lambda v: _ints(v, 2), "slope_hi": lambda v: _ints(v, 2),
          "in_scale": _num, "out_scale": _num, "in_range": lambda v: type(v) is list and len(v) == 2}
_LUT_PARAMS = {
    "table": {},
    "softmax": {"in_zero": _int, "dim": lambda v: _int(v, -64, 63), "m0": _int, "shift": lambda v: _int(v, **SHIFT),
                "out_zero": _int, "out_dtype": _QDT},
    "layer_norm": {"n": lambda v: _int(v, 1, INT64 - 1), "in_zero": _int, "eps": _int, "out_zero": _int,
                   "out_dtype": _QDT},
    "div": {"a_zero": _int, "b_zero": _int, "m0": _int, "shift": lambda v: _int(v, **SHIFT), "out_zero": _int,
            "out_dtype": _QDT},
}
_LUT_SHAPE = {"table": (1, ()), "softmax": (2, ()), "layer_norm": (1, ("b0", "g0", "gn")), "div": (1, ())}


def _schema_ok(d, schema: dict) -> bool:
    return isinstance(d, dict) and all(k in d and ok(d[k]) for k, ok in schema.items())


def _schema(d: dict, schema: dict, path: str = "attrs") -> None:
    for key, ok in schema.items():
        if key not in d:
            raise _Bad(f"{path} has no {key!r}")
        if not ok(d[key]):
            raise _Bad(f"{path}[{key!r}] = {d[key]!r:.80} does not have the type or range its kernel reads")


def _optional(d: dict, schema: dict, path: str = "attrs") -> None:
    """Keys a kernel reads with ``.get``: absent is fine, present must have the right type."""
    _schema({k: v for k, v in d.items() if k in schema}, {k: schema[k] for k in schema if k in d}, path)


_OPTIONAL = {"bound": _OPT_INT, "callable_ref": lambda v: isinstance(v, str), "kernel": lambda v: isinstance(v, str), "x_ch_axis": _AXIS, "w_ch_axis": _AXIS, "fused_activation": lambda v: isinstance(v, str),
             "m0_neg": lambda v: v is None or _int_or_ints(v), "calibrated_range": lambda v: v is None or (
                 type(v) is list and len(v) == 2 and all(_num(x) for x in v))}


def _call(node: Node) -> None:
    a = node.attrs
    if "target" not in a or "args" not in a or "kwargs" not in a:
        raise _Bad("its recorded call (attrs 'target', 'args', 'kwargs') is missing")
    if a["target"] in MARKER_TARGETS:
        raise _Bad(f"target {a['target']!r} names no op to run")


def _check_lut(g: Graph, node: Node) -> None:
    lut = node.attrs["lut"]
    if not isinstance(lut, dict) or lut.get("kind") not in _LUT_SHAPE:
        raise _Bad("attrs['lut'] is not a table record with a known kind")
    _schema(lut, {"tables": lambda v: type(v) is list, "params": lambda v: type(v) is dict,
                  "consts": lambda v: type(v) is list and all(isinstance(c, str) for c in v),
                  "n_quant": lambda v: _int(v, 1, 2)}, "attrs['lut']")
    n_tables, consts = _LUT_SHAPE[lut["kind"]]
    if len(lut["tables"]) != n_tables or tuple(sorted(lut["consts"])) != consts or lut["n_quant"] != (2 if lut["kind"] == "div" else 1):
        raise _Bad(f"a {lut['kind']} table op has {n_tables} table(s), consts {list(consts)} and "
                   f"{2 if lut['kind'] == 'div' else 1} quantized input(s)")
    _schema(lut["params"], _LUT_PARAMS[lut["kind"]], "attrs['lut']['params']")
    ne = n_tables + len(consts)
    if len(node.inputs) < lut["n_quant"] + ne or (g.level == "int" and len(node.inputs) != lut["n_quant"] + ne):
        raise _Bad(f"it has {len(node.inputs)} inputs; its table record needs {lut['n_quant']} quantized inputs "
                   f"and {ne} constants")
    extra = node.inputs[len(node.inputs) - ne:]
    for k, (t, name) in enumerate(zip(lut["tables"], extra)):
        path = f"attrs['lut']['tables'][{k}]"
        _schema(t, _TABLE, path)
        _optional(t, _OPTIONAL, path)
        e = g.constants.get(name)
        if e is None or e.dim() != 1 or e.numel() == 0 or e.is_floating_point() or e.is_complex():
            raise _Bad(f"the entries of table {k} ({name!r}) are not a constant 1-d integer tensor")
        if t["kind"] == "segmented":
            _check_segments(t, e.numel(), path)
    for name in extra[n_tables:]:
        if name not in g.constants:
            raise _Bad(f"its table constant {name!r} is not a constant")


def _check_segments(t: dict, n_entries: int, path: str) -> None:
    starts, shifts, width = t["starts"], t["shifts"], t["intervals"] + 1
    if not shifts or len(starts) != len(shifts) + 1 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise _Bad(f"{path}: starts must increase and number one more than shifts")
    for k, p in enumerate(shifts):
        last = k * width + ((starts[k + 1] - 1 - starts[k]) >> p) + 1   # the highest entry segment k reads
        if (starts[k + 1] - 1 - starts[k]) >> p >= width or last >= n_entries:
            raise _Bad(f"{path}: segment {k} reads past its entries ({n_entries} stored)")


def check_node_attrs(g: Graph, node: Node) -> None:
    """Rule F1 for one node; raises ``_Bad``."""
    a, op = node.attrs, node.op
    if op in _CALLABLE_OPS and "lut" not in a:
        raise _Bad("it runs a Python callable, which a file cannot hold")
    if not node.outputs:
        raise _Bad("it writes no value")
    _optional(a, _OPTIONAL)
    if "lut" in a:
        _check_lut(g, node)
        nq = a["lut"]["n_quant"]
        if any(i is None or g.values[i].qparams is None for i in node.inputs[:nq]) \
                or g.values[node.outputs[0]].qparams is None:
            raise _Bad("a table op reads and writes quantized values")
        if g.level == "quant":
            return
    elif op in ("lut", "lut_div") or (g.level == "int" and op in ("softmax", "layer_norm")):
        raise _Bad("an integer table op needs attrs['lut']")
    if g.level == "quant":
        if (op == "quantize" or a.get("fq")) and g.values[node.outputs[0]].qparams is None:
            raise _Bad(f"it fake-quantizes its output {node.outputs[0]!r}, which has no QParams")
        if op in ("quantize", "dequantize"):
            if len(node.inputs) != 1 or node.inputs[0] is None:
                raise _Bad("it needs one input")
        else:
            _call(node)
        return
    calls = a.get("float") or op == "aten" or op not in _KERNELS and op not in _REDUCE_OPS and "kernel" not in a \
        and op not in ("quantize", "dequantize", "rescale", "lut", "lut_div", "softmax", "layer_norm")
    if not calls and any(i is None for i in node.inputs[:2] if op in _REDUCE_OPS) \
            or not calls and op not in _REDUCE_OPS and any(i is None for i in node.inputs):
        raise _Bad("an integer kernel reads every input; one is null")
    if not (a.get("float") or op == "aten") and node.inputs and node.inputs[0] is None:
        raise _Bad("its first input is null; integer ops read it")
    if a.get("float") or op == "aten":
        _call(node)
    elif op in ("quantize", "dequantize"):
        name = node.outputs[0] if op == "quantize" else (node.inputs[0] if node.inputs else None)
        v = g.values.get(name) if name is not None else None
        if len(node.inputs) != 1 or node.inputs[0] is None or v is None or v.qparams is None:
            raise _Bad("it needs one input and a quantized value on its integer side")
    elif op == "rescale":
        _schema(a, _KERNELS["rescale"])
        n = len(a["m0"])
        if n == 0 or len(a["shift"]) != n or len(a["in_zero_point"]) != n or (a["ch_axis"] is None and n != 1):
            raise _Bad(f"m0, shift and in_zero_point must hold one value each per channel (got {n}, "
                       f"{len(a['shift'])}, {len(a['in_zero_point'])})")
    elif op not in _KERNELS and ("kernel" in a or op in ("add", "sub", "mul", "neg", "abs", "clamp", "relu", "leaky_relu", "prelu",
                                  "compare", "maximum", "minimum", "where", "batch_norm", "cat", "stack")):
        kernel = a.get("kernel")
        if kernel not in _ELEMENTWISE:
            raise _Bad(f"attrs['kernel'] = {kernel!r:.40} names no integer kernel")
        _schema(a, _ELEMENTWISE[kernel])
        _optional(a, _OPTIONAL)
        for k, t in enumerate(a.get("terms") or []):
            _optional(t, _OPTIONAL, f"attrs['terms'][{k}]")
        for k, p in enumerate(a.get("rescale") or []):
            if p is not None:
                _optional(p, _OPTIONAL, f"attrs['rescale'][{k}]")
        if kernel == "affine" and any(t["in"] >= len(node.inputs) for t in a["terms"]):
            raise _Bad("an affine term reads past the node's inputs")
        if kernel == "rescale_call" and len(a["rescale"]) != len(node.inputs):
            raise _Bad("attrs['rescale'] must have one entry per input")
        if kernel in ("product", "compare2") and len(node.inputs) < 2:
            raise _Bad("it needs two inputs")
    elif op in _REDUCE_OPS:
        _schema(a, _REDUCE)
        _optional(a, _OPTIONAL)
        _schema(a, _OUTPUT[a["output"]])
        if op.startswith("conv"):
            _schema(a, dict(_CONV, **({"output_padding": _CONV["padding"]} if op == "conv_transpose2d" else {})))
        if a["carrier"] == "dynamic":
            _schema(a, {"max_reduction": lambda v: _int(v, 1), "x_max_abs": _int, "w_max_abs": _int,
                        "x_range": lambda v: v is None or _ints(v, 2)})
        if a["carrier"] == "float32_limbs":
            _schema(a, {"limb_shift": lambda v: _int(v, 0, 31), "x_zero_point": _int})
        if "clamp" in a and not _ints(a["clamp"], 2):
            raise _Bad("attrs['clamp'] must be [lo, hi]")
        if len(node.inputs) < 2 or any(i is None for i in node.inputs[:2]):
            raise _Bad("it needs an input and a weight")
        if a["output"] == "requant" and (len(node.inputs) < 5 or node.inputs[3] is None or node.inputs[4] is None):
            raise _Bad("a requantizing node reads its m0 and shift constants (inputs 3 and 4)")
    elif op in _KERNELS:
        _schema(a, _KERNELS[op])
        if op == "embedding" and (len(node.inputs) < (4 if a["output"] == "requant" else 2)
                                  or any(i is None for i in node.inputs)):
            raise _Bad("it needs its table, the indices and, to requantize, m0 and shift")
        if op == "embedding" and a["output"] == "requant":
            _schema(a, {"in_zero_point": _int, "out_dtype": _QDT, "out_zero_point": _int})
        if op == "yuv2rgb" and len(node.inputs) != 6:
            raise _Bad("it needs the input and its five constants")
        if op == "avg_pool" and len(a["starts"]) != len(a["ends"]):
            raise _Bad("attrs 'starts' and 'ends' must have one entry per pooled dim")
    elif op not in ("identity", "lut", "lut_div", "softmax", "layer_norm"):
        _call(node)   # shared-grid ops run their recorded call on the codes
    elif op == "identity" and "target" in a:
        _call(node)


def check_grid(g: Graph, node: Node) -> None:
    """Rule F1, consistency at level "int": what a kernel reads agrees with the values it reads
    and writes (output dtype and zero point, input zero points, conv geometry, pooling windows,
    requantizing multipliers); raises ``_Bad``."""
    a = node.attrs
    out = g.values.get(node.outputs[0])
    oq = out.qparams if out is not None else None
    if oq is not None and "out_dtype" in a and not a.get("float"):
        if a["out_dtype"] != oq.dtype:
            raise _Bad(f"attrs['out_dtype'] = {a['out_dtype']!r} but its output {out.name!r} is {oq.dtype}")
        zp = a.get("out_zero_point", a.get("out_zp"))
        if type(zp) is int and len(oq.zero_point) == 1 and zp != oq.zero_point[0]:
            raise _Bad(f"its output zero point {zp} is not the one of {out.name!r} ({oq.zero_point[0]})")
    for key, k in (("x_zero_point", 0), ("w_zero_point", 1), ("zp", 0)):
        i = node.inputs[k] if len(node.inputs) > k else None
        qp = g.values[i].qparams if i is not None and i in g.values else None
        z = a.get(key)
        if qp is None or z is None or key == "zp" and node.op not in ("avg_pool", "mean", "sum"):
            continue
        zs = z if type(z) is list else [z]
        if (len(zs) == len(qp.zero_point) or len(zs) == 1) and \
                any(x != y for x, y in zip(zs * len(qp.zero_point) if len(zs) == 1 else zs, qp.zero_point)):
            raise _Bad(f"attrs[{key!r}] = {z!r:.60} is not the zero point of its input {i!r} ({list(qp.zero_point)[:8]})")
    if a.get("kernel") != "interval" and type(a.get("lo")) is int and type(a.get("hi")) is int and a["lo"] > a["hi"] or \
            _ints(a.get("clamp"), 2) and a["clamp"][0] > a["clamp"][1]:
        raise _Bad("its clamp bounds are reversed (lo > hi)")
    if node.op in _REDUCE_OPS:
        w = g.constants.get(node.inputs[1])
        if node.op.startswith("conv") and w is not None:
            k = w.dim() - 2
            for key in ("stride", "padding", "dilation") + (("output_padding",) if node.op == "conv_transpose2d" else ()):
                if len(a[key]) not in (1, k):
                    raise _Bad(f"attrs[{key!r}] = {a[key]} does not match the {k} spatial dims of its weight")
            x = g.values.get(node.inputs[0])
            cin = x.shape[1] if x is not None and len(x.shape) == k + 2 else None
            per_group = w.shape[0] if node.op == "conv_transpose2d" else w.shape[1]
            if type(cin) is int and cin != per_group * (a["groups"] if node.op != "conv_transpose2d" else 1):
                raise _Bad(f"groups = {a['groups']} and its weight {tuple(w.shape)} do not fit {cin} input channels")
        if a["output"] == "requant":
            _check_multipliers(g, node.inputs[3], node.inputs[4])
        if a["output"] == "acc" and DTYPES[a["out_dtype"]].bits < 16:
            raise _Bad(f"it writes its accumulator, which {a['out_dtype']} cannot hold")
    if node.op == "avg_pool":
        x = g.values.get(node.inputs[0])
        nd, k = len(x.shape), len(a["starts"])
        for i, (st, en) in enumerate(zip(a["starts"], a["ends"])):
            n = x.shape[nd - k + i] if nd >= k else None
            m = out.shape[nd - k + i] if out is not None and len(out.shape) == nd else None
            if len(st) != len(en) or type(m) is int and len(st) != m or type(n) is int and \
                    any(not 0 <= s <= e <= n for s, e in zip(st, en)):
                raise _Bad(f"pooling windows of dim {nd - k + i} ({st[:4]}.., {en[:4]}..) do not fit its input "
                           f"({n}) and output ({m}) sizes")
        _check_multipliers(g, node.inputs[1], node.inputs[2])
    if a.get("kernel") == "affine":
        _check_affine(g, a, node.inputs)
    for k, p in enumerate(a.get("rescale") or [] if a.get("kernel") == "rescale_call" else []):
        if p is not None:
            _check_affine(g, p, node.inputs[k:k + 1], f"attrs['rescale'][{k}]")


def _term_bound(g: Graph, name: str, zp) -> int:
    """``max |q - zp|`` over what input ``name`` can hold, as convert bounds it (``operand``)."""
    zs = zp if type(zp) is list else [zp]
    qp = g.values[name].qparams
    if qp is not None and zs != list(qp.zero_point):
        raise _Bad(f"its affine term subtracts zero point {zp!r:.60}, not the one of its input {name!r} "
                   f"({list(qp.zero_point)[:8]})")
    if name in g.constants:
        q = g.constants[name].to(torch.int64)
        if len(zs) > 1 and qp is not None and qp.ch_axis is not None and q.dim() and q.shape[qp.ch_axis % q.dim()] == len(zs):
            shape = [1] * q.dim()
            shape[qp.ch_axis % q.dim()] = -1
            return max(int((q - torch.tensor(zs).reshape(shape)).abs().max()) if q.numel() else 0, 1)
        return max([int((q - z).abs().max()) if q.numel() else 0 for z in zs] + [1])
    if qp is None:
        raise _Bad(f"its affine term reads {name!r}, which is not quantized")
    dt = DTYPES[qp.dtype]
    bound = max(max(dt.qmax - z, z - dt.qmin) for z in zs)
    prod = next((n for n in g.nodes if name in n.outputs), None)
    if prod is not None and prod.attrs.get("output") == "acc" and type(prod.attrs.get("bound")) is int:
        bound = min(bound, prod.attrs["bound"])
    return bound


def _check_affine(g: Graph, a: dict, inputs, path: str = "attrs") -> None:
    """The ``affine`` kernel's sum ``C + sum (q_i - z_i) * m_i`` stays below 2^63 for every code
    its inputs can hold (so int64 cannot wrap), below its ``bound`` when that selects the float64
    carrier (so float64 is exact). (Its shifts are >= 0 by the schema, as convert writes them.)"""
    def per_ch(v):
        return v if type(v) is list else None
    lists = [v for t in a["terms"] for v in (t["m0"], t.get("m0_neg"), t["zp"]) if per_ch(v) is not None]
    lists += [v for v in (a["const"], a["shift"]) if per_ch(v) is not None]
    nch = {len(v) for v in lists}
    if len(nch) > 1:
        raise _Bad(f"{path}: per-channel multipliers, zero points, constants and shifts have different lengths "
                   f"{sorted(nch)}")
    if any(t["in"] >= len(inputs) for t in a["terms"]):
        raise _Bad(f"{path}: an affine term reads past its inputs")
    bounds = [_term_bound(g, inputs[t["in"]], t["zp"]) for t in a["terms"]]
    at = lambda v, c: abs(v[c] if type(v) is list else v)   # noqa: E731
    worst = 0
    for c in range(nch.pop() if nch else 1):
        total = at(a["const"], c) + sum(b * max(at(t["m0"], c), at(t["m0_neg"], c) if t.get("m0_neg") is not None else 0)
                                        for b, t in zip(bounds, a["terms"]))
        worst = max(worst, total)
    if worst >= INT64:
        raise _Bad(f"{path}: its multipliers and constant reach 2^{worst.bit_length()} on the codes of its inputs, "
                   "past int64")
    if a.get("bound") is not None and a["bound"] < F64_EXACT and worst > a["bound"]:
        raise _Bad(f"{path}['bound'] = {a['bound']} is below the {worst} its multipliers reach on its inputs' codes")


def _check_multipliers(g: Graph, m0: str, shift: str) -> None:
    """Requantizing multipliers (A5): ``0 <= m0 < 2^32`` and ``0 <= shift <= 126``, so that
    ``acc * m0`` cannot overflow int64 and no shift moves bits left (out of the word)."""
    for name, lo, hi in ((m0, 0, (1 << 32) - 1), (shift, 0, 126)):
        t = g.constants.get(name)
        if t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise _Bad(f"its multiplier input {name!r} is not a constant integer tensor")
        if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
            raise _Bad(f"constant {name!r} holds values in [{int(t.min())}, {int(t.max())}], outside [{lo}, {hi}]")


# -- F2: sizes a run allocates -----------------------------------------------------------------------------
def size_limit(g: Graph) -> tuple[int, int]:
    """``(elements, dim)``: the most elements one argument-sized allocation may hold
    (``MIN_ELEMENTS``, or four times the largest constant, a tensor really in the file) and the
    largest padding or size argument (64, or the largest dim of a constant or a graph input,
    which the caller's tensors back)."""
    biggest = max((t.numel() for t in g.constants.values()), default=0)
    dims = [d for t in g.constants.values() for d in t.shape]
    dims += [d for i in g.inputs if i in g.values for d in g.values[i].shape if type(d) is int]
    return max(MIN_ELEMENTS, 4 * biggest), max([64] + dims)


def check_sizes(g: Graph, node: Node, limits: tuple[int, int]) -> None:
    """Rule F2 for one node; raises ``_Bad``."""
    a = node.attrs
    limit, dim_limit = limits
    for pos, kw, kind in BOUNDED_ARGS.get(a.get("target"), ()):
        args, kwargs = a.get("args", []), a.get("kwargs", {})
        v = args[pos] if pos < len(args) else kwargs.get(kw)
        items = v if isinstance(v, list) else [v]
        nums = [x for x in items if type(x) in (int, float)]
        if kind == "size":
            total = 1
            for x in nums:
                total *= max(1, abs(x)) if type(x) is int else 1
            if total > limit:
                raise _Bad(f"argument {kw!r} asks for {total} elements, more than the {limit} this graph's tensors allow")
        elif kind == "pad" and any(abs(x) > dim_limit for x in nums):
            raise _Bad(f"argument {kw!r} = {v!r:.60} exceeds {dim_limit}, the largest padding or size a file may ask for")
        elif kind == "scale" and any(not math.isfinite(x) or abs(x) > 256 for x in nums):
            raise _Bad(f"argument {kw!r} = {v!r:.60}: scale factors above 256 are refused")
    if g.level == "int" and node.op in ("conv1d", "conv2d", "conv_transpose2d"):
        for key in ("padding", "dilation", "output_padding", "stride"):
            if type(a.get(key)) is list and any(type(x) is int and x > dim_limit for x in a[key]):
                raise _Bad(f"attrs[{key!r}] = {a[key]!r:.60} exceeds {dim_limit}")


def check_file_attrs(g: Graph, error) -> None:
    """Rules F1 and F2 for every node of ``g`` (a graph read from a file)."""
    limits = size_limit(g)
    for node in g.nodes:
        try:
            check_node_attrs(g, node)
            if g.level == "int" and node.outputs and not (node.attrs.get("float") or node.op == "aten"):
                check_grid(g, node)
            check_sizes(g, node, limits)
        except _Bad as exc:
            raise error(f"node {node.name!r} ({node.op}): {exc}") from None
