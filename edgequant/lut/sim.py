"""Table ops in a prepared model: the simulation runs the integer tables (prepare's hook).

Takes the GraphModule that ``insert_fake_quant`` produced; ``attach_tables`` replaces every
quantized table op (an op row with a ``table`` kind: SegmentLUT, sigmoid, tanh, exp, ..., pow by
a scalar, softmax, layer_norm, and division of two quantized tensors) by a ``call_module`` to the
``LutOp`` of its kind (``LUT_OPS``), which knows the FakeQuantize of its quantized inputs and of
its output. An elementwise table is built in its row's ``table_symmetry`` mode. What a
``LutOp`` computes, by ``FakeQuantState``:

- FLOAT, CALIBRATION: the exact float function (the observers see exact values);
- VALIDATION: the integer kernel on the quantized input codes, dequantized: bit for bit what
  the integer model computes;
- QAT: the same forward value, with the gradient of the exact function (straight through).

A table is built from the current qparams and the calibrated input range (the input
observer's range) the first time it is needed and rebuilt only when they change. ``export``
calls ``export_ir`` to write the node and its tables into the IR (``attrs["lut"]``, the format
of ``lut.params``); the integer kernels that run them are ``ops.nonlinear``'s.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import fx, nn

from ..fake_quant import FakeQuantize, FakeQuantState
from ..ir import Node
from ..march import get_profile
from ..nn.segment_lut import SegmentLUT
from ..ops import spec_of
from ..ops.nonlinear import table_kernel
from ..qmath import dequantize, quantize
from . import composite
from .table import LutTable, build_table

CONTAINER = "eq_lut"


def _qp(fq: FakeQuantize) -> tuple[str, float, int]:
    scale, zp = fq.qparams()
    if scale.numel() != 1:
        raise ValueError(f"{fq.name}: a table input or output must be quantized per tensor")
    return fq.dtype.name, float(scale.reshape(())), int(zp.reshape(()))


def _observed_range(fq: FakeQuantize) -> tuple[float, float] | None:
    obs = fq.observer
    has = getattr(obs, "has_data", None)
    if not callable(has) or not has():
        return None
    try:
        lo, hi = obs.clip_range()
    except (RuntimeError, NotImplementedError):
        return None
    lo, hi = float(lo.min()), float(hi.max())
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None


class LutOp(nn.Module):
    """Base of the table-op modules (see the module docstring). A subclass simulates one table
    kind (an op row's ``table``); ``from_node`` makes it for a graph node, or None where the
    node cannot be simulated with its tables. ``tables`` names the tables it builds, in order,
    each with the exact function it approximates (None: the op's own function), for reports."""

    kind = "table"
    tables: tuple[tuple[str, object], ...] = (("main", None),)

    def __init__(self, op: str, target, in_fqs: list[FakeQuantize], out_fq: FakeQuantize, march: str):
        super().__init__()
        self.op = op
        self.target = target
        self.march = march
        self._fqs = (tuple(in_fqs), out_fq)   # a tuple: not registered twice as submodules
        self._cache = (None, None)

    @property
    def in_fqs(self) -> tuple[FakeQuantize, ...]:
        return self._fqs[0]

    @property
    def out_fq(self) -> FakeQuantize:
        return self._fqs[1]

    def extra_repr(self) -> str:
        return f"{self.op}, state={self.out_fq.state.value}"

    def _profile(self):
        p = get_profile(self.march)
        return dict(segments=p.lut_segments, intervals=p.lut_segment_entries)

    # -- the two computations ---------------------------------------------------------------------
    def float_forward(self, *args, **kwargs):
        return self.target(*args, **kwargs)

    def quant_inputs(self, args) -> list[torch.Tensor]:
        return [args[i] for i in range(len(self.in_fqs))]

    def forward(self, *args, **kwargs):
        state = self.out_fq.state
        xs = self.quant_inputs(args)
        if state in (FakeQuantState.FLOAT, FakeQuantState.CALIBRATION) \
                or not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in xs):
            return self.float_forward(*args, **kwargs)
        params = self.int_params(args)
        qs = [quantize(x, *self._scale_zero(fq), fq.dtype) for x, fq in zip(xs, self.in_fqs)]
        yq = table_kernel(self.kind, qs, params)
        _, s_out, z_out = _qp(self.out_fq)
        y = dequantize(yq, s_out, z_out)
        if state == FakeQuantState.QAT and torch.is_grad_enabled():
            exact = self.float_forward(*args, **kwargs)
            y = exact + (y - exact).detach()
        return y

    @staticmethod
    def _scale_zero(fq):
        _, s, z = _qp(fq)
        return s, z

    def _key(self, extra=()):
        ranges = tuple(_observed_range(fq) for fq in self.in_fqs)
        return tuple(_qp(fq) for fq in (*self.in_fqs, self.out_fq)) + ranges + tuple(extra)

    def int_params(self, args=None) -> dict:
        """``{"params": json, "tables": [LutTable], "consts": {name: int tensor}}`` (cached)."""
        key = self._key(self._extra_key(args))
        if self._cache[0] != key:
            self._cache = (key, self.build(args))
        return self._cache[1]

    def _extra_key(self, args):
        return ()

    def build(self, args) -> dict:
        raise NotImplementedError

    @classmethod
    def from_node(cls, gm: fx.GraphModule, node: fx.Node, in_fq: FakeQuantize, out_fq: FakeQuantize, march: str):
        raise NotImplementedError

    def export_ir(self, exporter, node: fx.Node):
        """Write this op into the IR (``export`` calls it): ``export_lut_op``."""
        return export_lut_op(exporter, node, self)


class TableOp(LutOp):
    """An elementwise function as one table (SegmentLUT or an automatic op)."""

    def __init__(self, op, target, in_fq, out_fq, march, args=(), kwargs=None, segment_lut: SegmentLUT | None = None):
        super().__init__(op, target, [in_fq], out_fq, march)
        self.rest = tuple(args[1:])
        self.kw = dict(kwargs or {})
        self.segment_lut = segment_lut   # registered: it is part of the model

    @classmethod
    def from_node(cls, gm, node, in_fq, out_fq, march):
        spec = node.meta["eq_spec"]
        if spec.python_call:  # SegmentLUT: the user's function of x alone
            leaf = node.meta.get("eq_leaf")
            ok = isinstance(leaf, SegmentLUT) and len(node.args) == 1
            return cls(spec.name, None, in_fq, out_fq, march, node.args, segment_lut=leaf) if ok else None
        if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            return None  # a table is a function of x alone (pow by a tensor exponent is not)
        return cls(spec.name, node.target, in_fq, out_fq, march, node.args, node.kwargs)

    def float_forward(self, *args, **kwargs):
        if self.segment_lut is not None:
            return self.segment_lut.simulated_func(args[0])
        return self.target(*args, **kwargs)

    def function(self):
        """The exact function of ``x`` alone."""
        if self.segment_lut is not None:
            return self.segment_lut.simulated_func
        rest, kw, target = self.rest, self.kw, self.target
        return lambda x: target(x, *rest, **kw)

    def build(self, args) -> dict:
        return {"params": {}, "tables": [self.table()], "consts": {}}

    def table(self) -> LutTable:
        dt_in, s_in, z_in = _qp(self.in_fqs[0])
        dt_out, s_out, z_out = _qp(self.out_fq)
        seg = self.segment_lut
        rng = _observed_range(self.in_fqs[0])
        opts = dict(self._profile())
        if seg is not None:
            opts.update(symmetric_mode=seg.symmetric_mode, strategy=seg.auto_divide_strategy,
                        dividing_points=seg.dividing_points, gradients=seg.gradients,
                        inverse_func=seg.inverse_func, user_func=True,
                        name=f"SegmentLUT {getattr(self, 'site', '?')!r}",
                        input_range=seg.input_range or (None if seg.inverse_func is not None else rng))
        else:
            opts.update(symmetric_mode=spec_of(self.op).table_symmetry, strategy="curvature", input_range=rng)
        t = build_table(self.function(), dt_in, s_in, z_in, dt_out, s_out, z_out, **opts)
        return dataclasses.replace(t, calibrated_range=rng)


class SoftmaxOp(LutOp):
    kind = "softmax"
    tables = (("exp", torch.exp), ("recip", torch.reciprocal))

    def __init__(self, op, target, in_fq, out_fq, march, dim: int):
        super().__init__(op, target, [in_fq], out_fq, march)
        self.dim = dim

    @classmethod
    def from_node(cls, gm, node, in_fq, out_fq, march):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return cls(node.meta["eq_spec"].name, node.target, in_fq, out_fq, march, int(dim)) \
            if isinstance(dim, int) else None

    def build(self, args) -> dict:
        dt_in, s_in, z_in = _qp(self.in_fqs[0])
        dt_out, s_out, z_out = _qp(self.out_fq)
        params, tables = composite.softmax_params(dt_in, s_in, z_in, dt_out, s_out, z_out, self.dim,
                                                  **self._profile())
        return {"params": params, "tables": tables, "consts": {}}


class LayerNormOp(LutOp):
    kind = "layer_norm"
    tables = (("rsqrt", torch.rsqrt),)

    def __init__(self, op, target, in_fq, out_fq, march, normalized_shape, eps: float):
        super().__init__(op, target, [in_fq], out_fq, march)
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.eps = float(eps)

    @classmethod
    def from_node(cls, gm, node, in_fq, out_fq, march):
        eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
        return cls(node.meta["eq_spec"].name, node.target, in_fq, out_fq, march, node.args[1], eps)

    @staticmethod
    def _affine(args):
        """gamma and beta among the op's arguments (None without arguments: reports)."""
        w = args[2] if args is not None and len(args) > 2 else None
        b = args[3] if args is not None and len(args) > 3 else None
        return w, b

    def _extra_key(self, args):
        w, b = self._affine(args)
        return tuple((id(t), t._version) if isinstance(t, torch.Tensor) else None for t in (w, b))

    def build(self, args) -> dict:
        dt_in, s_in, z_in = _qp(self.in_fqs[0])
        dt_out, s_out, z_out = _qp(self.out_fq)
        w, b = self._affine(args)
        n = math.prod(self.normalized_shape)
        params, tables, consts = composite.layer_norm_params(dt_in, s_in, z_in, dt_out, s_out, z_out, n, self.eps,
                                                             w, b, **self._profile())
        return {"params": params, "tables": tables, "consts": consts}


class DivOp(LutOp):
    kind = "div"
    tables = (("recip", torch.reciprocal),)

    @classmethod
    def from_node(cls, gm, node, in_fq, out_fq, march):
        if node.target is not torch.ops.aten.div.Tensor or len(node.args) != 2 or node.kwargs:
            return None
        b_fq = _input_fq(gm, node.args[1])
        if b_fq is None or b_fq.ch_axis is not None:
            return None
        return cls(node.meta["eq_spec"].name, node.target, [in_fq, b_fq], out_fq, march)

    def build(self, args) -> dict:
        _, s_a, z_a = _qp(self.in_fqs[0])
        _, s_b, z_b = _qp(self.in_fqs[1])
        dt_out, s_out, z_out = _qp(self.out_fq)
        params, tables = composite.div_params(s_a, z_a, s_b, z_b, dt_out, s_out, z_out, **self._profile())
        return {"params": params, "tables": tables, "consts": {}}


# the simulation of each table kind (an op row's ``table``)
LUT_OPS: dict[str, type[LutOp]] = {c.kind: c for c in (TableOp, SoftmaxOp, LayerNormOp, DivOp)}


# -- export's hook -------------------------------------------------------------------------------
def _target_str(target) -> str:
    if target is None:
        return "segment_lut"
    return f"{target.namespace}.{target._schema.name.split('::')[1]}.{target._overloadname}"


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def export_lut_op(ex, node: fx.Node, mod: LutOp):
    """Emit ``node`` (a call of ``mod``) with its tables into the exporter ``ex``."""
    args = [_fetch(ex.gm, a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None for a in node.args]
    p = mod.int_params(args)
    extra_attrs = {}
    seg = getattr(mod, "segment_lut", None)
    if seg is not None:  # float runs of the quant-level graph still call the user's function
        ex.callables[node.target] = seg
        extra_attrs["callable_ref"] = node.target
    out = ex._emit(node, mod.op, node.args, node.kwargs, **extra_attrs)
    last = ex.nodes[-1]
    extra = [ex._const(f"{last.name}.lut{i}", t.entries) for i, t in enumerate(p["tables"])]
    extra += [ex._const(f"{last.name}.{role}", c) for role, c in p["consts"].items()]
    lut = {"kind": mod.kind, "tables": [t.attrs() for t in p["tables"]], "params": p["params"],
           "consts": list(p["consts"]), "n_quant": len(mod.in_fqs)}
    attrs = {**last.attrs, "target": _target_str(mod.target), "lut": lut}
    ex.nodes[-1] = Node(last.name, last.op, tuple(last.inputs) + tuple(extra), last.outputs, attrs, last.source)
    return out


# -- prepare's hook --------------------------------------------------------------------------------
def _fq_module(gm: fx.GraphModule, node, weight: bool = False) -> FakeQuantize | None:
    """The activation FakeQuantize ``node`` calls (a weight's, with ``weight=True``), else None."""
    if isinstance(node, fx.Node) and node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, FakeQuantize) and mod.is_weight == weight:
            return mod
    return None


def _input_fq(gm: fx.GraphModule, node) -> FakeQuantize | None:
    """The FakeQuantize whose grid ``node``'s value lies on (through shared-grid ops)."""
    while isinstance(node, fx.Node):
        fq = _fq_module(gm, node)
        if fq is not None:
            return fq
        spec = node.meta.get("eq_spec")
        if node.op == "call_function" and spec is not None and spec.rule == "source" and spec.weight_arg is not None \
                and len(node.args) > spec.weight_arg:
            return _fq_module(gm, node.args[spec.weight_arg], weight=True)   # an embedding's rows: its table's grid
        if node.op != "call_function" or spec is None or spec.rule != "shared" or not node.args:
            return None
        node = node.args[0]
    return None


def _output_fq(gm: fx.GraphModule, node: fx.Node) -> FakeQuantize | None:
    users = list(node.users)
    return _fq_module(gm, users[0]) if len(users) == 1 else None


def _make(gm: fx.GraphModule, node: fx.Node, march: str) -> LutOp | None:
    spec = node.meta.get("eq_spec")
    if spec is None or spec.table not in LUT_OPS or node.meta.get("eq_domain") != "quant" or not node.args:
        return None
    if node.op != "call_function" and not spec.python_call:
        return None
    out_fq = _output_fq(gm, node)
    in_fq = _input_fq(gm, node.args[0])
    if out_fq is None or in_fq is None or out_fq.ch_axis is not None or in_fq.ch_axis is not None:
        return None
    return LUT_OPS[spec.table].from_node(gm, node, in_fq, out_fq, march)


def attach_tables(gm: fx.GraphModule, march: str) -> None:
    """Replace the quantized table ops of ``gm`` by ``LutOp`` modules (module docstring)."""
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_module"):
            continue
        mod = _make(gm, node, march)
        if mod is None:
            continue
        if not hasattr(gm, CONTAINER):
            gm.add_module(CONTAINER, nn.ModuleDict())
        key = node.meta.get("eq_name", node.name).replace(".", "__")
        mod.site = node.meta.get("eq_path") or node.meta.get("eq_name", node.name)   # for messages
        getattr(gm, CONTAINER)[key] = mod
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(f"{CONTAINER}.{key}", node.args, node.kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        if node.op == "call_module" and node.target != new.target:
            gm.delete_submodule(node.target)   # the SegmentLUT now lives inside the LutOp
    gm.graph.lint()
    gm.recompile()

