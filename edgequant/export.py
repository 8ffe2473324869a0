"""Export: a prepared model -> ``Graph`` at level ``"quant"`` (float ops + every tensor's qparams).

Takes a model returned by ``prepare`` (in any state; its observers must have seen data, or the
error names the tensor that was never calibrated) and the example inputs; returns a ``Graph``
(see ``ir``) whose execution reproduces the model's VALIDATION simulation:

- every op node keeps its canonical name (``op``) and its call as data: ``attrs["target"]``
  (the aten overload), ``attrs["args"]``/``attrs["kwargs"]`` with tensor inputs written as
  ``{"$in": k}`` (the k-th entry of ``inputs``);
- a fake-quant that followed an op becomes that op's output ``QParams`` and ``attrs["fq"]``;
  one on a float value (a QuantStub, a float input of a quantized op) becomes a ``quantize``
  node; one on a weight becomes the weight constant's ``QParams``;
- DeQuantStubs become ``dequantize`` nodes; shared-grid ops (reshapes, max pooling, ...) carry
  their input's qparams; fused intermediates and high-precision outputs carry none
  (``attrs["high_precision"]`` marks the latter);
- value shapes hold ints for dims that tracing fixed (also a dim torch.export specialised,
  e.g. by a Python loop over the batch) and the symbol's name for dims that may vary;
- ``FakeCast`` modules (a user's, or a float16 op's casts: ``edgequant.float16``) become
  ``fake_cast`` nodes, a weight's cast a constant rounded to float16; float16 ops carry
  ``attrs["float16"]``;
- values computed from parameters and constants alone (``nn.MultiheadAttention``'s q/k/v weights
  split from ``in_proj_weight``, a resized position embedding) are evaluated once, with the
  parameters of export time, into constants (``param_subgraphs``);
- biases corrected during calibration are exported corrected (the integer model uses them);
- a conv/linear + BatchNorm kept for QAT (``nn.bn_fold.BatchNormFold``) is exported folded: its
  weight and bias constants are what the unit computes from the running statistics, gamma, beta
  and eps at export time, the eval-mode simulation's folded op.
"""
from __future__ import annotations

import operator

import torch
from torch import fx
from torch.utils import _pytree as pytree

from .argcheck import describe
from .check import check_graph
from .fake_quant import BiasCorrection, FakeQuantize, FakeQuantState
from .inputs import check_input, shape_of
from .ir import IR_VERSION, Graph, Node, QParams, Value
from .nn.fake_cast import FakeCast, round_float16
from .nn.stubs import dequant_point, quant_point
from .ops import spec_of
from .ops.core import fake_cast_node
from .param_subgraphs import fold
from .qmath import fake_quantize


class ExportError(RuntimeError):
    """The prepared model cannot be exported; the message names the node and what to do."""


def _shape(val) -> tuple:
    return shape_of(val)  # dims that tracing specialised are ints: the integer model refuses other sizes


def _dtype(val) -> str:
    if isinstance(val, torch.Tensor):
        return {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool"}.get(
            val.dtype, str(val.dtype).replace("torch.", ""))
    return "sym"


class _Exporter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.env: dict[fx.Node, object] = {}     # fx node -> value name (str) or list of names
        self.values: dict[str, Value] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.callables: dict[str, object] = {}   # Python code kept opaque (SegmentLUT, wrapped)
        self.writer: dict[str, int] = {}          # value name -> index in self.nodes of the node writing it
        self.mask_values: list[str] = []          # values whose observer saw attention-mask values

    # -- values -------------------------------------------------------------------------------
    def _add_value(self, name: str, val, qparams: QParams | None = None) -> str:
        if isinstance(val, torch.Tensor):
            self.values[name] = Value(name, _shape(val), _dtype(val), qparams)
        else:
            self.values[name] = Value(name, (), "sym", None)
        return name

    def _set_qparams(self, name: str, qp: QParams | None) -> None:
        v = self.values[name]
        self.values[name] = Value(v.name, v.shape, v.dtype, qp)

    def _const(self, name: str, tensor: torch.Tensor, qparams: QParams | None = None) -> str:
        self.constants[name] = tensor.detach().cpu().clone().contiguous()   # the IR is CPU data (a CUDA model too)
        self.values[name] = Value(name, tuple(tensor.shape), _dtype(tensor), qparams)
        return name

    # -- args -----------------------------------------------------------------------------------
    def _encode(self, arg, inputs: list):
        if isinstance(arg, fx.Node):
            ref = self.env[arg]
            if isinstance(ref, list):
                raise ExportError(f"a multi-output node {arg.name} is used whole; index it first")
            if isinstance(ref, (int, float, bool)) or ref is None:
                return ref
            inputs.append(ref)
            return {"$in": len(inputs) - 1}
        if isinstance(arg, (list, tuple)):
            return [self._encode(a, inputs) for a in arg]
        if isinstance(arg, dict):
            return {k: self._encode(v, inputs) for k, v in arg.items()}
        if isinstance(arg, torch.dtype):
            return {"$dtype": str(arg).replace("torch.", "")}
        if isinstance(arg, torch.device):
            return {"$device": str(arg)}
        if isinstance(arg, torch.memory_format):
            return {"$memory_format": str(arg).replace("torch.", "")}
        if isinstance(arg, torch.layout):
            return None
        if isinstance(arg, float) and (arg != arg or arg in (float("inf"), float("-inf"))):
            return {"$float": str(arg)}
        return arg

    def _emit(self, fxnode: fx.Node, op: str, args, kwargs, qparams=None, **attrs) -> str | list:
        inputs: list = []
        enc_args = self._encode(list(args), inputs)
        enc_kwargs = self._encode(dict(kwargs), inputs)
        val = fxnode.meta.get("val")
        name = fxnode.meta.get("eq_name") or fxnode.name
        target = fxnode.target
        tstr = _target_name(target)
        if isinstance(val, (tuple, list)):
            outs = [self._add_value(f"{fxnode.name}.{i}", v) for i, v in enumerate(val)]
        else:
            outs = [self._add_value(fxnode.name, val, qparams)]
        self._append(Node(name, op, tuple(inputs), tuple(outs),
                          {"target": tstr, "args": enc_args, "kwargs": enc_kwargs, **attrs},
                          fxnode.meta.get("eq_source", "")))
        return outs if isinstance(val, (tuple, list)) else outs[0]

    # -- the walk ---------------------------------------------------------------------------------
    def run(self) -> Graph:
        gm = self.gm
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self._add_value(node.name, node.meta.get("val"))
                self.inputs.append(node.name)
            elif node.op == "get_attr":
                self.env[node] = self._const(node.target, _fetch(gm, node.target))
            elif node.op == "call_module":
                self._call_module(node)
            elif node.op == "call_function":
                self._call_function(node)
            elif node.op == "output":
                flat = pytree.tree_leaves(node.args[0])
                bad = [(i, a) for i, a in enumerate(flat) if not isinstance(a, fx.Node) or self.env.get(a) is None]
                if bad:
                    i, a = bad[0]
                    got = repr(a) if not isinstance(a, fx.Node) else f"the value of {a.name!r}, which is not a tensor"
                    raise ExportError(f"output {i} of the model is {got}: the IR holds tensor outputs only; make "
                                      "forward return tensors (drop None and constant outputs, or compute them "
                                      "outside the model)")
                outputs = [self.env[a] for a in flat]
        self._propagate_shared_qparams()
        out_spec = getattr(gm, "_out_spec", None)
        in_spec = getattr(gm, "_in_spec", None)
        meta = {"version": IR_VERSION, "march": gm.meta.get("edgequant", {}).get("march"),
                "out_spec": _dump_spec(out_spec), "in_spec": _dump_spec(in_spec),
                "_pytree_out_spec": out_spec, "_pytree_in_spec": in_spec, "_callables": self.callables}
        if self.mask_values:  # convert checks that a masked sum saturates (ops/elementwise.py)
            meta["mask_values"] = sorted(set(self.mask_values))
        return Graph("quant", self.inputs, outputs, self.values, self.nodes, self.constants, meta)

    def _call_module(self, node: fx.Node) -> None:
        mod = self.gm.get_submodule(node.target)
        if isinstance(mod, FakeQuantize):
            self._fake_quant(node, mod)
            if getattr(mod.observer, "mask_seen", False) and not mod.is_weight:
                self.mask_values.append(self.env[node])   # docs/observers.md "Mask values"
        elif isinstance(mod, BiasCorrection):
            self._bias_correction(node, mod)
        elif isinstance(mod, FakeCast):
            self._fake_cast(node)
        elif hasattr(mod, "export_ir"):  # table ops (edgequant.lut) write their tables as constants
            self.env[node] = mod.export_ir(self, node)
        elif node.meta.get("eq_leaf") is None:  # torch.export's shape guards
            self.env[node] = None
        elif node.meta.get("eq_spec") is not None:  # SegmentLUT
            self.callables[node.target] = mod
            self.env[node] = self._emit(node, node.meta["eq_spec"].name, node.args, {},
                                        module=node.target, callable_ref=node.target)
        else:
            self.callables[node.target] = mod
            self.env[node] = self._emit(node, "float_call", node.args, {}, module=node.target, callable_ref=node.target)

    def _fake_quant(self, node: fx.Node, fq: FakeQuantize) -> None:
        src = node.args[0]
        ref = self.env[src]
        const = src.op == "get_attr" or (fq.is_weight and isinstance(ref, str) and ref in self.constants)  # a weight (maybe BN-folded)
        if fq.is_weight and not bool(fq.calibrated) and const:
            fq.observe_weight(self.constants[ref])
        try:
            scale, zp = fq.qparams()
        except RuntimeError as exc:
            raise ExportError(f"cannot export {node.meta.get('eq_name', node.name)}: {exc}") from None
        qp = QParams.from_tensors(fq.dtype, scale.detach(), zp.detach(), fq.ch_axis)
        if const:      # a weight: the constant carries its qparams (a copy where another fake-quant gave others)
            if self.values[ref].qparams not in (None, qp):
                ref = self._const(f"{ref}.{node.name}", self.constants[ref])
            self._set_qparams(ref, qp)
            self.env[node] = ref
            return
        i = self.writer.get(ref)
        producer = self.nodes[i] if i is not None else None
        if producer is not None and src.meta.get("eq_domain") == "quant" and len(src.users) == 1 \
                and src.target is not quant_point:
            self._set_qparams(ref, qp)                 # the op's own output fake-quant
            self.nodes[i] = Node(producer.name, producer.op, producer.inputs, producer.outputs,
                                 {**producer.attrs, "fq": True}, producer.source)
            self.env[node] = ref
            return
        name = node.meta.get("eq_fq", node.name)       # a float value entering the quantized region
        out = node.name
        self._add_value(out, node.meta.get("val"), qp)
        self._append(Node(name, "quantize", (ref,), (out,), {"fq": True}, src.meta.get("eq_source", "")))
        self.env[node] = out

    def _fake_cast(self, node: fx.Node) -> None:
        """A float16 round trip (``edgequant.float16``): folded into a constant it rounds (a
        weight), else a ``fake_cast`` node."""
        ref = self.env[node.args[0]]
        if isinstance(ref, str) and ref in self.constants:
            name = f"{ref}.float16"
            if name not in self.constants:
                self._const(name, round_float16(self.constants[ref]))
            self.env[node] = name
            return
        self._add_value(node.name, node.meta.get("val"))
        name = node.meta.get("eq_name", node.name)
        self._append(fake_cast_node(name, ref, node.name, node.meta.get("eq_source", "")))
        self.env[node] = node.name

    def _append(self, n: Node) -> None:
        for o in n.outputs:
            self.writer[o] = len(self.nodes)
        self.nodes.append(n)

    def _bias_correction(self, node: fx.Node, bc: BiasCorrection) -> None:
        x, w, wq, bias = node.args
        dev = bc.count.device   # the prepared model's device (a CUDA model computes there)
        w_t = self.constants[self.env[w]].to(dev)
        wq_fq = self.gm.get_submodule(wq.target)
        with torch.no_grad():
            wq_t = _fake_weight(wq_fq, w_t)
            b_t = self.constants[self.env[bias]].to(dev) if isinstance(bias, fx.Node) else None
            saved = bc.state
            bc.state = FakeQuantState.VALIDATION
            try:
                out = bc(None, w_t, wq_t, b_t)
            finally:
                bc.state = saved
        if out is None:
            self.env[node] = None
            return
        self.env[node] = self._const(f"{node.meta.get('eq_name', node.name)}", out)

    def _call_function(self, node: fx.Node) -> None:
        t = node.target
        if t is operator.getitem:
            base = self.env[node.args[0]]
            if isinstance(base, list):
                self.env[node] = base[node.args[1]]
                return
        if t is quant_point:
            self.env[node] = self.env[node.args[0]]
            return
        if t is dequant_point:
            self.env[node] = self._emit(node, "dequantize", node.args, {})
            return
        if fold(self, node):   # computed from parameters and constants alone: a constant (param_subgraphs)
            return
        spec = node.meta.get("eq_spec")
        attrs = {}
        if node.meta.get("eq_high_precision"):
            attrs["high_precision"] = True
        if node.meta.get("eq_fused_into") is not None:
            attrs["fused_into"] = node.meta["eq_fused_into"].meta.get("eq_name", node.meta["eq_fused_into"].name)
        op = spec.name if spec is not None else "aten"
        if node.meta.get("eq_domain") == "float" and spec is not None:
            attrs["float"] = True
        if node.meta.get("eq_float16"):
            attrs["float16"] = True   # an op of a float16 island (edgequant.float16)
        self.env[node] = self._emit(node, op, node.args, node.kwargs, **attrs)

    def _propagate_shared_qparams(self) -> None:
        """Shared-grid ops (and embeddings) carry the qparams of the tensor they move."""
        for n in self.nodes:
            spec = spec_of(n.op)
            if spec is None or spec.rule not in ("shared", "source") or n.attrs.get("fq"):
                continue
            src = n.inputs[spec.weight_arg] if spec.rule == "source" else (n.inputs[0] if n.inputs else None)
            qp = self.values[src].qparams if src in self.values else None
            if qp is None or qp.ch_axis is not None:
                continue
            for o in n.outputs:
                if self.values[o].dtype == "float32":
                    self._set_qparams(o, qp)


def _target_name(target) -> str:
    """A stable name for a call target: ``aten.conv2d.default``, ``edgequant.nn.stubs.dequant_point``."""
    if isinstance(target, str):
        return target
    if hasattr(target, "_schema"):
        return f"{target.namespace}.{target._schema.name.split('::')[1]}.{target._overloadname}"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _fetch(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _fake_weight(fq: FakeQuantize, w: torch.Tensor) -> torch.Tensor:
    scale, zp = fq.qparams()
    return fake_quantize(w, scale, zp, fq.dtype, fq.ch_axis)


def _dump_spec(spec) -> str | None:
    if spec is None:
        return None
    try:
        return pytree.treespec_dumps(spec)
    except Exception:  # output types pytree cannot serialise: outputs come back as a tuple
        return None


def export(model: fx.GraphModule, example_inputs=None) -> Graph:
    """Turn a prepared model into the IR at level ``"quant"`` (see the module docstring).

    ``example_inputs`` is accepted for symmetry with ``prepare`` and checked against the traced
    input count; the graph itself was fixed by ``prepare``.
    """
    if not isinstance(model, fx.GraphModule) or "edgequant" not in getattr(model, "meta", {}):
        hint = "; it is exported already" if isinstance(model, Graph) else \
            " (edgequant.prepare(model, example_inputs, qconfig_setter=(...,)), then calibrate)"
        raise ExportError(f"export takes a model returned by edgequant.prepare, got {describe(model)}{hint}")
    graph = _Exporter(model).run()
    if example_inputs is not None:
        n = len(example_inputs) if isinstance(example_inputs, (tuple, list)) else 1
        if n != len(graph.inputs):
            raise ExportError(f"the model was prepared with {len(graph.inputs)} inputs, export got {n}")
        xs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        for name, x in zip(graph.inputs, xs):   # the same checks as a call: a tensor of the traced kind and shape
            v = graph.values[name]
            check_input(name, x, v.shape, v.dtype)
    check_graph(graph)
    return graph
