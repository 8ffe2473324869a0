"""Prepare: a float model -> a new model with fake quantization on every quantized tensor.

Takes the user's ``nn.Module`` (left untouched), example inputs and qconfig setters; returns a
``torch.fx.GraphModule`` that computes the same function in float until
``set_fake_quantize`` switches it to calibration, validation or QAT. The stages:

    gm = capture(model, example_inputs)      # canonical ops, shapes, source lines
    assign_domains(gm)                       # which values are quantized, float or integer
    fold_batch_norms(gm); mark_fusions(gm)   # BN folded; conv+relu, conv+add(+relu) grouped
                                             # (QAT in train mode: BN kept first, qat_bn)
    mark_high_precision(gm)                  # conv/linear feeding only a DeQuantStub: int32 out
    qconfigs = apply_setters(setters, sites) # template -> QConfig per op site
    insert_fake_quant(gm, qconfigs)          # FakeQuantize on outputs, weights, float inputs;
                                             # BiasCorrection on conv/linear biases

An op site (``OpSite``) tells the templates the op, its consumers, whether it has a weight and
whether its output is non-negative by construction (``_nonnegative``: its group ends in a relu,
relu6, or clamp/hardtanh whose lower bound is a number >= 0; int8 templates make it quint8).

The quantized region starts at QuantStubs and ends at DeQuantStubs. A model without any stub
(e.g. a Hugging Face transformer) is quantized whole: float inputs are quantized where the
graph starts, integer inputs (token ids, masks) stay integer, embeddings become quantized
tables, and outputs are dequantized.

Every conv1d/conv2d/linear (a row with ``bias_correction``) with a quantized weight gets its
bias argument from a ``BiasCorrection`` module (container ``eq_bc``) called as
``bc(x, w, w_q, bias)``: the float bias until calibrated, then in VALIDATION the bias minus the
mean output shift that rounding the weights causes (``fake_quant`` explains it); export must
take the bias from there.

A model in train mode prepared with a QAT template (``setter.qat``) keeps each conv/linear +
BatchNorm pair training instead of folding it (``edgequant.qat_bn``: batch statistics, simulated
folding, ``freeze_bn``); export folds it with the statistics of that time.

The returned model checks the inputs of every call against the traced ones before its graph
runs (count, dtype kind, rank, fixed dims; ``edgequant.inputs``, the integer model's checks),
and the fake-quants where float tensors enter the quantized region refuse NaN in VALIDATION
and QAT, as the integer model's ``quantize`` nodes do.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import fx, nn

from .argcheck import describe, expect_flag, expect_module, is_prepared
from .capture import CaptureError, capture, is_float_value, unsupported_ops
from .dtype import qint16
from .fake_quant import BiasCorrection, FakeQuantize, FakeQuantState
from .float16 import follow_float_inputs, insert_float16_site, left_quant, reset_casts, unfuse_mixed
from .gemm_inputs import caller_only_nodes, reader_ops, split_gemm_inputs
from .fuse import fold_batch_norms, mark_fusions
from .inputs import add_call_check, guard_entry
from .lut.sim import attach_tables
from .march import get_march, March
from .nn.stubs import QuantStub, dequant_point, quant_point
from .observers import FixedScaleObserver, MinMaxObserver
from .ops.elementwise import activation_range
from .qconfig import FakeQuantSpec, QConfig
from .param_subgraphs import parameter_only
from .qat_bn import insert_outputs as _insert_bn_outputs, is_bn_weight, keep_batch_norms, keeps_batch_norms
from .qconfig_template import OpSite, apply_setters, qat_template, weight_rounding_of
from .saved_qparams import FQ_CONTAINER, tolerate_observer_changes



def prepare(model: nn.Module, example_inputs, qconfig_setter=(), leaf_modules: Sequence[type] = (),
            march: March | str | None = None, bias_correction: bool = True,
            weight_rounding: str | None = None) -> fx.GraphModule:
    """Return a new, fake-quantizable copy of ``model`` (see the module docstring).

    Args:
        model: the float model; it is not modified.
        example_inputs: a tensor or a tuple of tensors the model is traced with.
        qconfig_setter: a setter or a tuple of setters from ``edgequant.qconfig_template``
            (later ones override earlier ones).
        leaf_modules: module classes kept opaque and float (like ``wrap`` for functions).
        march: the target (default: ``set_march``'s).
        bias_correction: correct conv/linear biases for the mean shift of weight rounding,
            measured during calibration (see the module docstring).
        weight_rounding: ``"gptq"`` (calibration ends with ``ptq.gptq`` on the batches it kept) or
            ``"nearest"``; default None: the template's (``qconfig_template.weight_rounding_of``).
    """
    expect_module(model, "prepare", "model")
    expect_flag(bias_correction, "prepare", "bias_correction")
    if is_prepared(model):
        raise TypeError("prepare: model is already prepared (what edgequant.prepare returns); pass the float model, "
                        "or calibrate/export this one")
    if isinstance(qconfig_setter, (torch.Tensor, nn.Module)) or type(qconfig_setter).__module__ == "numpy":
        raise TypeError(f"prepare: qconfig_setter must be a template from edgequant.qconfig_template or a tuple "
                        f"of them, got {describe(qconfig_setter)}")
    if not qconfig_setter:
        raise ValueError("prepare needs qconfig_setter=(a template from edgequant.qconfig_template, ...)")
    rounding = weight_rounding_of(qconfig_setter, weight_rounding)
    march = March(march) if march is not None else get_march()
    _check_float32(model, example_inputs)
    gm = capture(model, example_inputs, leaf_modules)
    _add_implicit_stubs(gm)
    assign_domains(gm)
    _check_supported(gm)
    if keeps_batch_norms(model, qconfig_setter):   # QAT in train mode: BN keeps training (qat_bn)
        keep_batch_norms(gm, model)
    fold_batch_norms(gm)
    mark_fusions(gm)
    mark_high_precision(gm)
    split_gemm_inputs(gm, qconfig_setter)    # GEMM-int8 templates: GEMMs read their own int8 copy
    sites = op_sites(gm)
    qconfigs = apply_setters(qconfig_setter, sites)
    insert_fake_quant(gm, qconfigs, bias_correction=bias_correction)
    _insert_bn_outputs(gm)
    attach_tables(gm, march.value)           # table ops simulate their integer tables
    gm.meta["edgequant"] = {"march": march.value, "sites": [s.name for s in sites],
                            "input_meta": _input_meta(example_inputs), "weight_rounding": rounding,
                            "qat": qat_template(qconfig_setter)}
    gm._register_load_state_dict_pre_hook(tolerate_observer_changes, with_module=True)
    add_call_check(gm)
    return _on_model_device(gm, model)


def _on_model_device(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """The fake-quants, observers and casts prepare made join a CUDA model's device."""
    t = next(iter([*model.parameters(), *model.buffers()]), None)
    return gm.to(t.device) if t is not None and t.device.type != "cpu" else gm


def _check_float32(model: nn.Module, example_inputs) -> None:
    """edgequant simulates and converts float32 arithmetic: a float64/float16/bfloat16 weight or
    example input is refused here (convert would later find its values unquantized)."""
    from torch.utils._pytree import tree_leaves

    for what, t in [(f"parameter {n!r}", p) for n, p in model.named_parameters()] + \
            [(f"example input {k}", x) for k, x in enumerate(tree_leaves(example_inputs))]:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float32:
            raise TypeError(f"prepare: {what} is {str(t.dtype).replace('torch.', '')}; edgequant quantizes float32 "
                            "models: call model.float() and pass float32 example inputs (x.float())")


def _input_meta(example_inputs):
    xs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return [(tuple(x.shape), str(x.dtype)) if isinstance(x, torch.Tensor) else None for x in xs]


# -- domains -----------------------------------------------------------------------------------------
def _has_stubs(gm: fx.GraphModule) -> bool:
    return any(n.target in (quant_point, dequant_point) for n in gm.graph.nodes)


def _add_implicit_stubs(gm: fx.GraphModule) -> None:
    """Without any stub, quantize every float graph input where it enters the graph."""
    if _has_stubs(gm):
        gm.meta["eq_auto_stubs"] = False
        return
    gm.meta["eq_auto_stubs"] = True
    for node in list(gm.graph.nodes):
        if node.op == "placeholder" and is_float_value(node) and node.users:
            with gm.graph.inserting_after(node):
                q = gm.graph.call_function(quant_point, (node,))
            node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
            q.meta.update({"val": node.meta.get("val"), "eq_path": "", "eq_name": f"input_{node.name}",
                           "eq_spec": None, "eq_source": f"graph input {node.name}"})
    gm.graph.lint()


def assign_domains(gm: fx.GraphModule) -> None:
    """Set ``meta["eq_domain"]`` to ``quant``, ``float`` or ``int`` for every node."""
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            dom = "float" if is_float_value(node) or node.op == "get_attr" else "int"
        elif node.op == "output":
            continue
        elif node.target is quant_point:
            dom = "quant"
        elif node.target is dequant_point:
            dom = "float"
        elif node.op == "call_module":
            spec = node.meta.get("eq_spec")
            quant_in = any(a.meta.get("eq_domain") == "quant" for a in node.all_input_nodes)
            dom = "quant" if spec is not None and spec.rule != "float" and quant_in else "float"   # FakeCast: float
        else:
            spec = node.meta.get("eq_spec")
            quant_in = any(a.meta.get("eq_domain") == "quant" for a in node.all_input_nodes)
            if not is_float_value(node):
                dom = "int"
            elif spec is not None and spec.rule == "source":
                dom = "quant"
            elif quant_in:
                dom = "quant"
            else:
                dom = "float"
        node.meta["eq_domain"] = dom


def _check_supported(gm: fx.GraphModule) -> None:
    from torch.utils._pytree import tree_leaves

    cplx = [n for n in gm.graph.nodes if n.op != "output" and any(
        isinstance(v, torch.Tensor) and v.is_complex() for v in tree_leaves(n.meta.get("val")))]
    if cplx:  # no quantized type, IR dtype or integer kernel holds a complex number, whatever the op
        lines = [f"  {n.meta.get('eq_name', n.name)} ({n.target}) at {n.meta.get('eq_source')}" for n in cplx[:5]]
        raise CaptureError("edgequant cannot quantize complex-valued tensors (torch.fft, view_as_complex, ...):\n"
                           + "\n".join(lines) + "\nWrap the code that makes and uses them with @edgequant.wrap "
                           "(it then stays float; it must return real tensors), or compute it outside the model.")
    bad = [n for n in unsupported_ops(gm) if any(a.meta.get("eq_domain") == "quant" for a in n.all_input_nodes)]
    if bad:
        lines = [f"  {n.meta.get('eq_name', n.name)} ({n.target}) at {n.meta.get('eq_source')}" for n in bad[:10]]
        raise CaptureError(
            "edgequant cannot quantize these ops:\n" + "\n".join(lines)
            + "\nWrap the code that calls them with @edgequant.wrap (it then stays float), or put a "
              "DeQuantStub before and a QuantStub after it."
        )


def mark_high_precision(gm: fx.GraphModule) -> None:
    """A conv/linear/matmul whose users are all DeQuantStubs (or, without stubs, graph outputs)
    keeps an int32 output: ``meta["eq_high_precision"] = True`` and no output fake-quant."""
    auto = gm.meta.get("eq_auto_stubs", False)
    for node in gm.graph.nodes:
        spec = node.meta.get("eq_spec")
        if spec is None or not spec.high_precision_output or node.meta.get("eq_domain") != "quant":
            continue
        if "eq_fused_into" in node.meta or not node.users:
            continue
        ends = all(u.target is dequant_point or (auto and u.op == "output") for u in node.users)
        if ends:
            node.meta["eq_high_precision"] = True


# -- sites and qconfigs ---------------------------------------------------------------------------------
def _is_site(node: fx.Node) -> bool:
    if node.meta.get("eq_domain") != "quant":
        return False
    if node.target is quant_point:
        return True
    spec = node.meta.get("eq_spec")
    if spec is None:
        return False
    if spec.rule == "source" or spec.weight_arg is not None:
        return True
    return spec.rule == "compute" and not _absorbed(node)


def _absorbed(node: fx.Node) -> bool:
    """An activation fused into its producer is not a site of its own."""
    return any(a.meta.get("eq_fused_into") is node and a.meta["eq_spec"].fuse_activation
               and node.meta["eq_spec"].activation for a in node.all_input_nodes)


def op_sites(gm: fx.GraphModule) -> list[OpSite]:
    sites, caller_only = [], caller_only_nodes(gm)
    for node in gm.graph.nodes:
        if not _is_site(node):
            continue
        spec = node.meta.get("eq_spec")
        stub = node.meta.get("eq_stub")
        sites.append(OpSite(
            name=node.meta["eq_name"],
            op="quantize" if node.target is quant_point else spec.name,
            module_type=type(stub).__name__ if stub is not None else "",
            consumers=tuple(sorted({(u.meta.get("eq_spec").name if u.meta.get("eq_spec") else str(u.target))
                                    for u in node.users})),
            has_weight=spec is not None and spec.weight_arg is not None,
            nonnegative=_nonnegative(node),
            recurrent_state=bool(node.meta.get("eq_rnn_state")),
            feeds_int16=_feeds_int16(_output_node(node)), feeds=reader_ops(_output_node(node)),
            caller_only=_output_node(node) in caller_only,
        ))
        node.meta["eq_site"] = True
    return sites


def _int16_arg(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` reads ``node`` at an argument its row wants int16 (``OpSpec.int16_args``)."""
    spec = user.meta.get("eq_spec")
    return spec is not None and any(p < len(user.args) and user.args[p] is node for p in spec.int16_args)


def _feeds_int16(node: fx.Node, depth: int = 0) -> bool:
    """``OpSite.feeds_int16``: a user reads ``node`` at an ``int16_args`` argument, directly or
    through ops that keep the grid (a permute of the offsets that make a grid_sample's grid)."""
    for u in node.users:
        spec = u.meta.get("eq_spec")
        if _int16_arg(u, node) or (spec is not None and spec.rule == "shared" and depth < 8
                                   and u.args and u.args[0] is node and _feeds_int16(u, depth + 1)):
            return True
    return False


def _fx_arg(node: fx.Node, pos: int, name: str, default=None):
    """The argument of an fx call at position ``pos``, else keyword ``name``, else ``default``."""
    return node.args[pos] if pos < len(node.args) else node.kwargs.get(name, default)


def _nonnegative(node: fx.Node) -> bool:
    """True if ``node``'s group output (``_output_node``) is a relu/relu6/hardtanh/clamp whose
    lower bound is a number >= 0, so the output is non-negative by construction."""
    out = _output_node(node)
    spec = out.meta.get("eq_spec")
    if spec is None or not spec.activation or out.op != "call_function":
        return False
    bounds = activation_range(str(out.target), lambda i, name, default: _fx_arg(out, i, name, default))
    lo = bounds[0] if bounds is not None else None
    return isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo >= 0


# -- fake-quant insertion ------------------------------------------------------------------------------
def _container(gm: fx.GraphModule) -> nn.ModuleDict:
    if not hasattr(gm, FQ_CONTAINER):
        gm.add_module(FQ_CONTAINER, nn.ModuleDict())
    return getattr(gm, FQ_CONTAINER)


def _key(name: str) -> str:
    return name.replace(".", "__")


def _add_fq(gm: fx.GraphModule, name: str, fq: FakeQuantize, after: fx.Node, replace_uses=True,
            only_user: fx.Node | None = None) -> fx.Node:
    key = _key(name)
    _container(gm)[key] = fq
    with gm.graph.inserting_after(after):
        new = gm.graph.call_module(f"{FQ_CONTAINER}.{key}", (after,))
    new.meta.update({"val": after.meta.get("val"), "eq_domain": "quant", "eq_fq": name,
                     "eq_name": name, "eq_spec": None})
    if only_user is not None:
        only_user.replace_input_with(after, new)
    elif replace_uses:
        after.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    return new


def _stub_spec(node: fx.Node, spec: FakeQuantSpec) -> FakeQuantSpec:
    stub = node.meta.get("eq_stub")
    scale = getattr(stub, "scale", None) if isinstance(stub, QuantStub) else None
    if scale is None:
        return spec
    return FakeQuantSpec(spec.dtype, FixedScaleObserver,
                         {"scale": float(scale), "zero_point": int(getattr(stub, "zero_point", 0))})


def _output_node(node: fx.Node) -> fx.Node:
    """The node whose output carries ``node``'s group result (the fused activation, if any)."""
    while "eq_fused_into" in node.meta and node.meta["eq_spec"].fuse_activation \
            and node.meta["eq_fused_into"].meta["eq_spec"].activation:
        node = node.meta["eq_fused_into"]
    return node


def insert_fake_quant(gm: fx.GraphModule, qconfigs: dict, bias_correction: bool = True) -> None:
    """Insert FakeQuantize modules as the qconfigs say (see the module docstring); a float16
    qconfig makes its op a float16 op instead (``edgequant.float16``)."""
    unfuse_mixed(gm, qconfigs)
    for node in list(gm.graph.nodes):
        if not node.meta.get("eq_site"):
            follow_float_inputs(gm, node)   # ops after float/float16 ones leave the quantized domain too
            continue
        name = node.meta["eq_name"]
        qc: QConfig | None = qconfigs.get(name)
        if qc is None:
            left_quant(node)
            continue
        if qc.float16:
            insert_float16_site(gm, node, name)
            continue
        spec = node.meta.get("eq_spec")
        if spec is not None and spec.weight_arg is not None and qc.weight is not None:
            wq = _insert_weight_fq(gm, node, spec, qc, name)
            if bias_correction and wq is not None:
                _insert_bias_correction(gm, node, spec, wq, name)
        if qc.activation is None:
            left_quant(node)
            continue
        out = _output_node(node) if node.meta.get("eq_fused_into") is not None else node
        if node.meta.get("eq_high_precision") or "eq_fused_into" in out.meta:
            pass
        elif spec is not None and spec.rule == "source":
            pass  # the output lies on the table's grid (weight fake-quant above)
        else:
            act = _stub_spec(node, qc.activation) if node.target is quant_point else qc.activation
            fq_node = _add_fq(gm, name, act.build(name), out)
            if node.target is quant_point and isinstance(node.args[0], fx.Node):
                guard_entry(gm, fq_node, node.args[0])
        _insert_input_fqs(gm, node, qc, name)
    _bind_bias_grids(gm)
    reset_casts(gm)
    gm.graph.lint()
    gm.recompile()


def _input_fake_quant(gm: fx.GraphModule, x) -> FakeQuantize | None:
    """The FakeQuantize whose grid ``x`` lies on: ``x`` itself, or through ops that keep the grid."""
    while isinstance(x, fx.Node):
        if x.op == "call_module" and str(x.target).startswith(FQ_CONTAINER + "."):
            return gm.get_submodule(str(x.target))
        spec = x.meta.get("eq_spec")
        if spec is None or spec.rule != "shared" or not x.args:
            return None
        x = x.args[0]
    return None


def _bind_bias_grids(gm: fx.GraphModule) -> None:
    """Tell each BiasCorrection the FakeQuantizes of its op's input and weight, so VALIDATION
    rounds the bias to the accumulator grid ``s_x * s_w`` as the integer model does."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith("eq_bc."):
            continue
        x, _, wq = node.args[:3]
        x_fq = _input_fake_quant(gm, x)
        if x_fq is not None and isinstance(wq, fx.Node) and wq.op == "call_module":
            gm.get_submodule(str(node.target)).bind_grid(x_fq, gm.get_submodule(str(wq.target)))


def _insert_weight_fq(gm, node, spec, qc: QConfig, name: str) -> fx.Node | None:
    w = node.args[spec.weight_arg]
    if not (is_bn_weight(w) or parameter_only(w)):   # a parameter, or computed from parameters alone
        return None
    if spec.rule == "source":  # embedding: the table is quantized per tensor with the activation dtype
        wspec = FakeQuantSpec(qc.activation.dtype if qc.activation else qc.weight.dtype, MinMaxObserver)
        fq = wspec.build(f"{name}.weight")
    else:
        fq = qc.weight.build(f"{name}.weight", ch_axis=spec.weight_ch_axis)
    fq.is_weight = True
    return _add_fq(gm, f"{name}.weight", fq, w, only_user=node)


_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _insert_bias_correction(gm, node, spec, wq: fx.Node, name: str) -> None:
    """Route the bias of a ``bias_correction`` row (conv1d/conv2d/linear) through a ``BiasCorrection``
    (module docstring)."""
    if not spec.bias_correction or not node.args or not isinstance(node.args[0], fx.Node):
        return
    w = wq.args[0]
    args = list(node.args) + [None] * max(0, spec.bias_arg + 1 - len(node.args))
    if "bias" in node.kwargs or isinstance(args[spec.bias_arg], fx.Node) and not parameter_only(args[spec.bias_arg]):
        return  # a bias computed from the inputs is no constant to correct (convert refuses it)
    conv = {}
    nspatial = spec.spatial_dims  # None: linear
    if nspatial is not None:
        val = w.meta.get("val")
        if val is not None and val.dim() != nspatial + 2:
            return
        for i, key in enumerate(("stride", "padding", "dilation", "groups"), start=3):
            v = _fx_arg(node, i, key, _CONV_DEFAULTS[key])
            if key == "groups":
                conv[key] = int(v)
                continue
            if isinstance(v, str) or not all(isinstance(e, int) for e in (v if isinstance(v, (list, tuple)) else [v])):
                return  # padding="same" or symbolic values: no correction
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            conv[key] = v * nspatial if len(v) == 1 else v
    key = _key(f"{name}.bias_correction")
    if not hasattr(gm, "eq_bc"):
        gm.add_module("eq_bc", nn.ModuleDict())
    gm.eq_bc[key] = BiasCorrection(spec.name, **conv)
    bias = args[spec.bias_arg]
    with gm.graph.inserting_before(node):
        bc = gm.graph.call_module(f"eq_bc.{key}", (node.args[0], w, wq, bias))
    bc.meta.update({"val": bias.meta.get("val") if isinstance(bias, fx.Node) else None, "eq_domain": "float",
                    "eq_name": f"{name}.bias_correction", "eq_spec": None})
    args[spec.bias_arg] = bc
    node.args = tuple(args)


def _insert_input_fqs(gm, node, qc: QConfig, name: str) -> None:
    """Quantize float inputs of a quantized op (e.g. an additive mask computed from integers)."""
    spec = node.meta.get("eq_spec")
    if spec is None or spec.rule == "source" or node.target is quant_point:
        return
    positions = [p for p in (spec.weight_arg, spec.bias_arg, *spec.param_args) if p is not None]
    skip = {node.args[p] for p in positions if p < len(node.args)}
    for i, a in enumerate(node.all_input_nodes):
        if a in skip or a.meta.get("eq_domain") != "float" or not is_float_value(a):
            continue
        iname = f"{name}.input{i}"
        act = qc.activation
        if _int16_arg(node, a) and act.dtype.bits < 16:   # grid_sample's grid: int16 whatever the op's output
            act = FakeQuantSpec(qint16, act.observer if issubclass(act.observer, MinMaxObserver) else MinMaxObserver)
        guard_entry(gm, _add_fq(gm, iname, act.build(iname), a, only_user=node), a)
