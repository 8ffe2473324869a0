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

What an op's nodes must carry is read from its row of the op table (``spec_of(node.op)``),
declared next to the lowering that writes it: ``int_attrs`` (the schema of its attrs, in the
language of ``check_schema``), ``int_inputs`` (its inputs' roles: which may be null, which hold
the requantizing multipliers), ``int_zero_points``, ``int_per_channel``, ``spatial_dims`` and
``transposed`` (conv geometry), ``boundary``, ``float_op``, ``python_call`` and, for the rows
that run tables, ``lut_record`` (the record ``attrs["lut"]`` of their table kind).
"""
from __future__ import annotations

import math

import torch

from .check_names import BadAttr
from .check_schema import INT64, LUT, NAMED_KERNEL, OPTIONAL, TABLE, check_optional, check_schema, is_ints, \
    named_kernel, unknown_types
from .dtype import DTYPES
from .ir import Graph, Node
from .ops import ALL_SPECS, OpSpec, calls_python, is_quantize, spec_of
from .ops.names import BOUNDED_ARGS, MARKER_TARGETS
from .qmath import F64_EXACT

MIN_ELEMENTS = 1 << 24   # a size a file may always ask for (64 MiB of float32); more needs backing tensors


_Bad = BadAttr   # what is wrong with one attribute (turned into an IRCheckError naming the node)


# -- F1: kernel attributes ------------------------------------------------------------------------------
# the table record of each table kind: declared by the int-level row that runs tables of that kind
_LUT_RECORDS = {s.table: s.lut_record for s in ALL_SPECS if s.lut_record is not None}
_MULTIPLIERS = ("m0", "shift")   # input roles: the requantizing multiplier constants (A5)
_TYPOS = {s.name: unknown_types({**(s.int_attrs or {}), **(s.lut_record or {}).get("params", {})}) for s in ALL_SPECS}
if any(_TYPOS.values()):
    raise TypeError(f"op table rows name attribute types edgequant.check_schema does not define: "
                    f"{ {k: sorted(v) for k, v in _TYPOS.items() if v} }")


def _row(node: Node) -> OpSpec:
    spec = spec_of(node.op)
    if spec is None:   # check_names refuses it first
        raise _Bad(f"op {node.op!r} is not an edgequant op")
    return spec


def _int_schema(spec: OpSpec, a: dict) -> dict | None:
    """What an int-level node of ``spec`` carries: its row's schema or, for a row without one,
    the kernel ``attrs['kernel']`` names (None: a boundary, a recorded call or a table)."""
    if spec.boundary is not None:
        return None
    if spec.int_attrs is not None:
        return spec.int_attrs
    return NAMED_KERNEL if "kernel" in a else None


def _requantizes(schema: dict, a: dict) -> bool:
    """Whether it reads its multiplier inputs: always, or when ``attrs['output']`` says so."""
    return "output" not in schema or a.get("output") == "requant"


def _call(node: Node) -> None:
    a = node.attrs
    if "target" not in a or "args" not in a or "kwargs" not in a:
        raise _Bad("its recorded call (attrs 'target', 'args', 'kwargs') is missing")
    if a["target"] in MARKER_TARGETS:
        raise _Bad(f"target {a['target']!r} names no op to run")


def _check_lut(g: Graph, node: Node) -> None:
    lut = node.attrs["lut"]
    if not isinstance(lut, dict) or lut.get("kind") not in _LUT_RECORDS:
        raise _Bad("attrs['lut'] is not a table record with a known kind")
    check_schema(lut, LUT, "attrs['lut']")
    rec = _LUT_RECORDS[lut["kind"]]
    n_tables, consts = rec["n_tables"], tuple(sorted(rec["consts"]))
    if len(lut["tables"]) != n_tables or tuple(sorted(lut["consts"])) != consts or lut["n_quant"] != rec["n_quant"]:
        raise _Bad(f"a {lut['kind']} table op has {n_tables} table(s), consts {list(consts)} and "
                   f"{rec['n_quant']} quantized input(s)")
    check_schema(lut["params"], rec["params"], "attrs['lut']['params']")
    ne = n_tables + len(consts)
    if len(node.inputs) < lut["n_quant"] + ne or (g.level == "int" and len(node.inputs) != lut["n_quant"] + ne):
        raise _Bad(f"it has {len(node.inputs)} inputs; its table record needs {lut['n_quant']} quantized inputs "
                   f"and {ne} constants")
    extra = node.inputs[len(node.inputs) - ne:]
    for k, (t, name) in enumerate(zip(lut["tables"], extra)):
        path = f"attrs['lut']['tables'][{k}]"
        check_schema(t, TABLE, path)
        check_optional(t, OPTIONAL, path)
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
    a, spec = node.attrs, _row(node)
    if calls_python(node.op) and "lut" not in a:
        raise _Bad("it runs a Python callable, which a file cannot hold")
    if not node.outputs:
        raise _Bad("it writes no value")
    check_optional(a, OPTIONAL)
    if "lut" in a:
        _check_lut(g, node)
        nq = a["lut"]["n_quant"]
        if any(i is None or g.values[i].qparams is None for i in node.inputs[:nq]) \
                or g.values[node.outputs[0]].qparams is None:
            raise _Bad("a table op reads and writes quantized values")
        if g.level == "quant":
            return
    elif spec.lut_record is not None and (g.level == "int" or not spec.quant_level):
        raise _Bad("an integer table op needs attrs['lut']")
    if g.level == "quant":
        if (is_quantize(node.op) or a.get("fq")) and g.values[node.outputs[0]].qparams is None:
            raise _Bad(f"it fake-quantizes its output {node.outputs[0]!r}, which has no QParams")
        if spec.boundary is not None:
            if len(node.inputs) != 1 or node.inputs[0] is None:
                raise _Bad("it needs one input")
        else:
            _call(node)
        return
    _check_int_node(g, node, spec)


def _check_int_node(g: Graph, node: Node, spec: OpSpec) -> None:
    a = node.attrs
    floats = a.get("float") or spec.float_op
    schema = _int_schema(spec, a)
    optional = {k for k, role in enumerate(spec.int_inputs)
                if role.endswith("?") or role in _MULTIPLIERS and not _requantizes(schema or {}, a)}
    if not floats and (schema is not None or spec.boundary is not None or spec.lut_record is not None) \
            and any(i is None for k, i in enumerate(node.inputs) if k not in optional):
        raise _Bad("an integer kernel reads every input; one is null")
    if not floats and node.inputs and node.inputs[0] is None:
        raise _Bad("its first input is null; integer ops read it")
    if floats:
        _call(node)
    elif spec.boundary is not None:
        name = node.outputs[0] if is_quantize(node.op) else (node.inputs[0] if node.inputs else None)
        v = g.values.get(name) if name is not None else None
        if len(node.inputs) != 1 or node.inputs[0] is None or v is None or v.qparams is None:
            raise _Bad("it needs one input and a quantized value on its integer side")
    elif schema is not None:
        _check_kernel_attrs(node, spec, schema)
    elif spec.lut_record is None:
        _call(node)   # shared-grid ops run their recorded call on the codes


def _check_kernel_attrs(node: Node, spec: OpSpec, schema: dict) -> None:
    """An int-level node's attrs against its schema, its inputs against its row's roles."""
    a = node.attrs
    check_schema(a, schema)
    if "kernel" in a and "kernel" not in schema:   # the ONNX exporter dispatches on it: it names this kernel
        raise _Bad(f"attrs['kernel'] = {a['kernel']!r:.40}, but its op's integer kernel takes no kernel name")
    if "target" in a:
        _call(node)
    _check_per_channel(a, spec.int_per_channel)
    roles = [r for r in spec.int_inputs if r not in _MULTIPLIERS or _requantizes(schema, a)]
    if len(node.inputs) < len(roles):
        raise _Bad(f"it has {len(node.inputs)} inputs; its kernel reads {len(roles)} ({', '.join(roles)})")
    kernel = named_kernel(schema, a)
    for k, t in enumerate(a.get("terms") or [] if kernel == "affine" else []):
        check_optional(t, OPTIONAL, f"attrs['terms'][{k}]")
    for k, p in enumerate(a.get("rescale") or [] if kernel == "rescale_call" else []):
        if p is not None:
            check_optional(p, OPTIONAL, f"attrs['rescale'][{k}]")
    if kernel == "affine" and any(t["in"] >= len(node.inputs) for t in a["terms"]):
        raise _Bad("an affine term reads past the node's inputs")
    if kernel == "rescale_call" and len(a["rescale"]) != len(node.inputs):
        raise _Bad("attrs['rescale'] must have one entry per input")
    if kernel in ("product", "compare2") and len(node.inputs) < 2:
        raise _Bad("it needs two inputs")


def _check_per_channel(a: dict, keys: tuple[str, ...]) -> None:
    """Lists with one entry each per channel (or pooled dim): as many of each, one without an axis."""
    if not keys:
        return
    ns = [len(a[k]) for k in keys]
    if ns[0] == 0 or len(set(ns)) > 1 or ("ch_axis" in a and a["ch_axis"] is None and ns[0] != 1):
        raise _Bad(f"{', '.join(keys[:-1])} and {keys[-1]} must hold one value each per channel (or pooled dim) "
                   f"(got {', '.join(map(str, ns))})")


def check_grid(g: Graph, node: Node) -> None:
    """Rule F1, consistency at level "int": what a kernel reads agrees with the values it reads
    and writes (output dtype and zero point, input zero points, conv geometry, pooling windows,
    requantizing multipliers); raises ``_Bad``."""
    a, spec = node.attrs, _row(node)
    schema = _int_schema(spec, a) or {}
    out = g.values.get(node.outputs[0])
    oq = out.qparams if out is not None else None
    if oq is not None and "out_dtype" in a and not a.get("float"):
        if a["out_dtype"] != oq.dtype:
            raise _Bad(f"attrs['out_dtype'] = {a['out_dtype']!r} but its output {out.name!r} is {oq.dtype}")
        zp = a.get("out_zero_point", a.get("out_zp"))
        if type(zp) is int and len(oq.zero_point) == 1 and zp != oq.zero_point[0]:
            raise _Bad(f"its output zero point {zp} is not the one of {out.name!r} ({oq.zero_point[0]})")
    for key, k in spec.int_zero_points:
        _check_zero_point(g, key, a.get(key), node.inputs[k] if len(node.inputs) > k else None)
    if a.get("kernel") != "interval" and type(a.get("lo")) is int and type(a.get("hi")) is int and a["lo"] > a["hi"] or \
            is_ints(a.get("clamp"), 2) and a["clamp"][0] > a["clamp"][1]:
        raise _Bad("its clamp bounds are reversed (lo > hi)")
    if spec.spatial_dims is not None and node.inputs[1] in g.constants:
        _check_conv(g, node, spec)
    if "output" in schema and a["output"] == "acc" and DTYPES[a["out_dtype"]].bits < 16:
        raise _Bad(f"it writes its accumulator, which {a['out_dtype']} cannot hold")
    if schema.get("starts") == "windows":
        _check_windows(g, node, out)
    if all(r in spec.int_inputs for r in _MULTIPLIERS) and _requantizes(schema, a):
        _check_multipliers(g, *(node.inputs[spec.int_inputs.index(r)] for r in _MULTIPLIERS))
    kernel = named_kernel(schema, a)
    if kernel == "affine":
        _check_affine(g, a, node.inputs)
    for k, p in enumerate(a.get("rescale") or [] if kernel == "rescale_call" else []):
        if p is not None:
            _check_affine(g, p, node.inputs[k:k + 1], f"attrs['rescale'][{k}]")


def _check_zero_point(g: Graph, key: str, z, i) -> None:
    """``attrs[key]`` (one zero point, or one per channel) is the one of input ``i``."""
    qp = g.values[i].qparams if i is not None and i in g.values else None
    if qp is None or z is None:
        return
    zs = z if type(z) is list else [z]
    if (len(zs) == len(qp.zero_point) or len(zs) == 1) and \
            any(x != y for x, y in zip(zs * len(qp.zero_point) if len(zs) == 1 else zs, qp.zero_point)):
        raise _Bad(f"attrs[{key!r}] = {z!r:.60} is not the zero point of its input {i!r} ({list(qp.zero_point)[:8]})")


def _check_conv(g: Graph, node: Node, spec: OpSpec) -> None:
    """Conv geometry: one stride/padding/dilation per spatial dim of the weight (or one for all),
    and groups that fit the input's channels (a transposed conv's weight is (in, out/groups, k...))."""
    a, w = node.attrs, g.constants[node.inputs[1]]
    k = w.dim() - 2
    for key in ("stride", "padding", "dilation") + (("output_padding",) if spec.transposed else ()):
        if len(a[key]) not in (1, k):
            raise _Bad(f"attrs[{key!r}] = {a[key]} does not match the {k} spatial dims of its weight")
    x = g.values.get(node.inputs[0])
    cin = x.shape[1] if x is not None and len(x.shape) == k + 2 else None
    per_group = w.shape[0] if spec.transposed else w.shape[1]
    if type(cin) is int and cin != per_group * (a["groups"] if not spec.transposed else 1):
        raise _Bad(f"groups = {a['groups']} and its weight {tuple(w.shape)} do not fit {cin} input channels")


def _check_windows(g: Graph, node: Node, out) -> None:
    """Pooling windows (``starts``/``ends`` per pooled dim) lie in the input and number the output's size."""
    a, x = node.attrs, g.values.get(node.inputs[0])
    nd, k = len(x.shape), len(a["starts"])
    for i, (st, en) in enumerate(zip(a["starts"], a["ends"])):
        n = x.shape[nd - k + i] if nd >= k else None
        m = out.shape[nd - k + i] if out is not None and len(out.shape) == nd else None
        if len(st) != len(en) or type(m) is int and len(st) != m or type(n) is int and \
                any(not 0 <= s <= e <= n for s, e in zip(st, en)):
            raise _Bad(f"pooling windows of dim {nd - k + i} ({st[:4]}.., {en[:4]}..) do not fit its input "
                       f"({n}) and output ({m}) sizes")


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


def _bound_size(kw: str, v, nums: list, limits: tuple[int, int]) -> None:
    total = 1
    for x in nums:
        total *= max(1, abs(x)) if type(x) is int else 1
    if total > limits[0]:
        raise _Bad(f"argument {kw!r} asks for {total} elements, more than the {limits[0]} this graph's tensors allow")


def _bound_padding(kw: str, v, nums: list, limits: tuple[int, int]) -> None:
    if any(abs(x) > limits[1] for x in nums):
        raise _Bad(f"argument {kw!r} = {v!r:.60} exceeds {limits[1]}, the largest padding or size a file may ask for")


def _bound_scale(kw: str, v, nums: list, limits: tuple[int, int]) -> None:
    if any(not math.isfinite(x) or abs(x) > 256 for x in nums):
        raise _Bad(f"argument {kw!r} = {v!r:.60}: scale factors above 256 are refused")


# how each kind of bounded argument (ops.names.BOUNDED_ARGS) is bounded
_ARG_BOUNDS = {"size": _bound_size, "pad": _bound_padding, "scale": _bound_scale}


def check_sizes(g: Graph, node: Node, limits: tuple[int, int]) -> None:
    """Rule F2 for one node; raises ``_Bad``."""
    a = node.attrs
    for pos, kw, kind in BOUNDED_ARGS.get(a.get("target"), ()):
        args, kwargs = a.get("args", []), a.get("kwargs", {})
        v = args[pos] if pos < len(args) else kwargs.get(kw)
        items = v if isinstance(v, list) else [v]
        _ARG_BOUNDS[kind](kw, v, [x for x in items if type(x) in (int, float)], limits)
    spec = spec_of(node.op)
    if g.level == "int" and spec is not None and spec.spatial_dims is not None:
        for key in ("padding", "dilation", "output_padding", "stride"):
            if type(a.get(key)) is list and any(type(x) is int and x > limits[1] for x in a[key]):
                raise _Bad(f"attrs[{key!r}] = {a[key]!r:.60} exceeds {limits[1]}")


def check_file_attrs(g: Graph, error) -> None:
    """Rules F1 and F2 for every node of ``g`` (a graph read from a file)."""
    limits = size_limit(g)
    for node in g.nodes:
        try:
            check_node_attrs(g, node)
            if g.level == "int" and node.outputs and not (node.attrs.get("float") or _row(node).float_op):
                check_grid(g, node)
            check_sizes(g, node, limits)
        except _Bad as exc:
            raise error(f"node {node.name!r} ({node.op}): {exc}") from None
