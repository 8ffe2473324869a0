"""QAT with BatchNorm: keep conv/linear + BN pairs as ``BatchNormFold`` units, and ``freeze_bn``.

Takes a captured ``GraphModule`` (``prepare``'s, after ``assign_domains``) and the user's model;
returns it changed in place. ``prepare`` calls ``keeps_batch_norms`` to decide: a model in train
mode (``model.training``) prepared with a QAT template (a setter whose ``qat`` attribute is true:
``default_qat_qconfig_setter``, ``qat_8bit_weight_16bit_act_qconfig_setter``,
``qat_8bit_weight_16bit_fixed_act_qconfig_setter``) keeps its batch norms; any other model has
them folded at prepare (``fuse.fold_batch_norms``) as before.

``keep_batch_norms(gm, model)``, run where ``fold_batch_norms`` runs, takes every conv1d/conv2d/
linear (a ``weighted`` row with its weight's output channels on dim 0, not transposed; a linear
only on 2-D outputs, where BN's channels are the features) whose only user is a batch norm with
running statistics, moves the op's weight and bias and BN's parameters and statistics into a
``BatchNormFold`` (container ``eq_bn``, key the op's name), and rewires the graph: the weight and
bias arguments become ``unit("weight")`` and ``unit("bias")`` calls, and the batch-norm node
disappears (so conv + relu and conv + add fuse as with folded BN). ``insert_outputs(gm)``, run
after the fake-quants are inserted, puts ``unit("output", y)`` right after the op (before its
output fake-quant, or the fused relu/add). ``edgequant.nn.bn_fold`` has the arithmetic; export
writes the folded weight and bias the unit computes at export time.

``freeze_bn(model)`` makes every unit use (and keep) its running statistics from then on.

The flow (calibration and VALIDATION put the model in eval mode, so they see the folded op; QAT
leaves the mode to the user, who calls ``train()`` for the epochs)::

    qm = prepare(model.train(), x, qconfig_setter=(default_qat_qconfig_setter,))
    calibrate(qm, batches)                        # running statistics: the folded op
    set_fake_quantize(qm, "qat"); qm.train()      # batch statistics; running ones update; gamma, beta train
    ...; freeze_bn(qm); ...                       # the last epochs on the running statistics
    set_fake_quantize(qm, "validation")           # the folded op, as the integer model runs it
    convert(export(qm, x), march)

The unit owns the tensors, so their state-dict keys are ``eq_bn.<op>.weight``, ``.bn_weight``,
``.running_mean``, ...: a state dict of the model prepared in eval mode (folded weights) does not
load into one with BN kept (a strict load names the keys); calibrate the train-mode model itself.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from .argcheck import expect_flag
from .fake_quant import expect_fake_quant
from .fuse import _attr, _bn_node_of
from .nn.bn_fold import BatchNormFold, bn_fold_units
from .qconfig_template import qat_template

CONTAINER = "eq_bn"


def keeps_batch_norms(model: nn.Module, setters) -> bool:
    """Whether ``prepare`` keeps batch norms: ``model`` in train mode and a QAT template among ``setters``."""
    if callable(setters):
        setters = (setters,)
    if not isinstance(setters, (tuple, list)):
        return False   # apply_setters explains what qconfig_setter must be (an iterator is not consumed here)
    return bool(model.training) and qat_template(setters)


def _unit_key(name: str) -> str:
    return name.replace(".", "__")


def _bn_module(model: nn.Module, bn: fx.Node):
    try:
        mod = model.get_submodule(bn.meta.get("eq_path", ""))
    except AttributeError:
        return None
    return mod if isinstance(mod, nn.modules.batchnorm._BatchNorm) else None


def _delete_attr(gm: fx.GraphModule, target: str) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    for store in (owner._parameters, owner._buffers):
        store.pop(name, None)
    if name in owner.__dict__:
        delattr(owner, name)


def _candidate(gm: fx.GraphModule, node: fx.Node):
    """``(bn node, bn output, weight node, bias node or None)`` if ``node`` + its BN can be kept."""
    spec = node.meta.get("eq_spec")
    if spec is None or not spec.weighted or spec.transposed or spec.weight_ch_axis != 0 or spec.bias_arg is None:
        return None
    val = node.meta.get("val")
    if spec.spatial_dims is None and not (isinstance(val, torch.Tensor) and val.dim() == 2):
        return None
    bn, bn_out = _bn_node_of(node)
    if bn is None or bn.target is not torch.ops.aten.batch_norm.default or "bias" in node.kwargs:
        return None
    w_node = node.args[spec.weight_arg]
    b_node = node.args[spec.bias_arg] if len(node.args) > spec.bias_arg else None
    params = [w_node] + ([b_node] if b_node is not None else []) + [a for a in bn.args[1:5] if a is not None]
    if any(_attr(gm, p) is None or len(p.users) != 1 for p in params):
        return None
    if bn.args[3] is None or bn.args[4] is None or _attr(gm, w_node).shape[0] != _attr(gm, bn.args[4]).numel():
        return None
    return bn, bn_out, w_node, b_node


def keep_batch_norms(gm: fx.GraphModule, model: nn.Module) -> int:
    """Replace conv/linear + BN pairs by ``BatchNormFold`` units (module docstring); returns how many."""
    kept = 0
    for node in list(gm.graph.nodes):
        found = _candidate(gm, node)
        if found is None:
            continue
        bn, bn_out, w_node, b_node = found
        spec = node.meta["eq_spec"]
        name = node.meta["eq_name"]
        gamma, beta, mean, var = (_attr(gm, a) if a is not None else None for a in bn.args[1:5])
        mod = _bn_module(model, bn)
        momentum = mod.momentum if mod is not None else bn.args[6]
        nbt = getattr(mod, "num_batches_tracked", None) if mod is not None else None
        prefix = w_node.target.rpartition(".")[0]
        bias_name = b_node.target if b_node is not None else \
            (prefix + ".eq_folded_bias" if prefix else "eq_folded_bias_" + node.name)
        unit = BatchNormFold(_attr(gm, w_node), _attr(gm, b_node) if b_node is not None else None, gamma, beta,
                             mean, var, nbt, eps=bn.args[7], momentum=momentum, names=(w_node.target, bias_name))
        if not hasattr(gm, CONTAINER):
            gm.add_module(CONTAINER, nn.ModuleDict())
        key = _unit_key(name)
        getattr(gm, CONTAINER)[key] = unit
        target = f"{CONTAINER}.{key}"
        with gm.graph.inserting_before(node):
            wf = gm.graph.call_module(target, ("weight",))
            bf = gm.graph.call_module(target, ("bias",))
        wf.meta.update({"val": w_node.meta.get("val"), "eq_domain": "float", "eq_name": f"{name}.folded_weight",
                        "eq_spec": None, "eq_bn_part": "weight"})
        bf.meta.update({"val": None, "eq_domain": "float", "eq_name": f"{name}.folded_bias", "eq_spec": None,
                        "eq_bn_part": "bias"})
        args = list(node.args) + [None] * max(0, spec.bias_arg + 1 - len(node.args))
        args[spec.weight_arg], args[spec.bias_arg] = wf, bf
        node.args = tuple(args)
        bn_out.replace_all_uses_with(node)
        node.meta["eq_bn_unit"] = target
        node.meta["eq_kept_bn"] = bn.meta.get("eq_name", bn.name)
        attrs = [a for a in (w_node, b_node, *bn.args[1:5]) if isinstance(a, fx.Node)]
        owner = bn.args[3].target.rpartition(".")[0]
        for n in (bn_out, bn) if bn_out is not bn else (bn,):
            gm.graph.erase_node(n)
        for a in attrs:
            if not a.users:
                gm.graph.erase_node(a)
                _delete_attr(gm, a.target)   # the unit holds it now: one copy in the state dict
        refs = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == owner + ".num_batches_tracked"]
        if owner and not any(n.users for n in refs):   # the unit counts the batches now
            for n in refs:
                gm.graph.erase_node(n)
            _delete_attr(gm, owner + ".num_batches_tracked")
        kept += 1
    if kept:
        gm.graph.lint()
        gm.recompile()
    return kept


def insert_outputs(gm: fx.GraphModule) -> None:
    """Put ``unit("output", y)`` after every op that ``keep_batch_norms`` gave a unit."""
    for node in list(gm.graph.nodes):
        target = node.meta.get("eq_bn_unit")
        if target is None or node.op != "call_function":
            continue
        with gm.graph.inserting_after(node):
            out = gm.graph.call_module(target, ("output", node))
        out.meta.update({"val": node.meta.get("val"), "eq_domain": node.meta.get("eq_domain"), "eq_spec": None,
                         "eq_name": f"{node.meta['eq_name']}.batch_norm", "eq_bn_part": "output"})
        node.replace_all_uses_with(out, delete_user_cb=lambda u: u is not out)
    gm.graph.lint()
    gm.recompile()


def is_bn_weight(node) -> bool:
    """Whether ``node`` is a unit's folded-weight call (``prepare`` fake-quantizes it as a weight)."""
    return isinstance(node, fx.Node) and node.meta.get("eq_bn_part") == "weight"


def freeze_bn(model: nn.Module, freeze: bool = True) -> nn.Module:
    """Stop (``freeze=True``) or resume (``freeze=False``) batch-statistics training of every kept BN.

    A frozen unit uses its running statistics in train mode too (the folded op the integer model
    runs) and never updates them; gamma, beta and the weights still train. The flag is a buffer,
    so it travels with the state dict. Like torch.ao's ``freeze_bn_stats``/``update_bn_stats``
    (also methods of each ``BatchNormFold``). ``model``: a prepared model or a module holding one
    (a DistributedDataParallel wrapper); one with no kept BN is returned unchanged. Returns ``model``.
    """
    expect_fake_quant(model, "freeze_bn", "model")
    expect_flag(freeze, "freeze_bn", "freeze")
    for unit in bn_fold_units(model):
        unit.freeze_bn_stats() if freeze else unit.update_bn_stats()
    return model


__all__ = ["keeps_batch_norms", "keep_batch_norms", "insert_outputs", "is_bn_weight", "freeze_bn", "CONTAINER"]
