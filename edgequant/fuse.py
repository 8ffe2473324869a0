"""Fuse: fold batch norms into the preceding conv/linear and mark fused groups.

Takes a captured ``GraphModule`` (see ``capture``); returns it changed in place:

1. ``fold_batch_norms``: a weighted op (conv1d/2d/3d, conv_transpose1d/2d (grouped too), linear: its row's
   ``weighted``) whose only user is an eval-mode batch norm gets the norm folded into its
   weight and bias (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``,
   per output channel) and the batch-norm node disappears. The user's model is not touched: capture
   traced a copy. (For a model in train mode prepared with a QAT template, ``prepare`` first hands
   conv1d/conv2d/linear + BN pairs to ``qat_bn.keep_batch_norms``, which keeps them training.)
2. ``mark_fusions``: sets ``node.meta["eq_fused_into"]`` on every op whose output is consumed
   only by the next op of its group, so that output gets no fake-quant and stays at
   accumulator precision: an op whose row has ``fuse_activation`` (conv/linear/matmul/add)
   followed by an ``activation`` row (relu/relu6/clamp), and a ``fuse_add`` row (conv/linear)
   followed by the ``residual_add`` row (the Conv + Add (+ ReLU) pattern). Rows of
   ``edgequant.ops`` carry these roles (``node.meta["eq_spec"]``, set by capture).
"""
from __future__ import annotations

import torch
from torch import fx, nn

_BN_TARGETS = {torch.ops.aten.batch_norm.default: 5,  # index of the `training` flag
               torch.ops.aten._native_batch_norm_legit_no_training.default: None}


def _attr(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if name in owner._parameters:
        del owner._parameters[name]
    setattr(owner, name, nn.Parameter(value.detach().clone()))


def _bn_node_of(node: fx.Node):
    """The batch-norm node that is ``node``'s only user (through getitem 0), or None."""
    users = list(node.users)
    if len(users) != 1 or users[0].target not in _BN_TARGETS:
        return None, None
    bn = users[0]
    flag = _BN_TARGETS[bn.target]
    if flag is not None and bn.args[flag]:
        return None, None
    if bn.target is torch.ops.aten._native_batch_norm_legit_no_training.default:
        outs = list(bn.users)
        if len(outs) != 1 or outs[0].args[1] != 0:
            return None, None
        return bn, outs[0]
    return bn, bn


def fold_batch_norms(gm: fx.GraphModule) -> int:
    """Fold eval-mode batch norms into their producers; returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        spec = node.meta.get("eq_spec")
        if spec is None or not spec.weighted:
            continue
        bn, bn_out = _bn_node_of(node)
        if bn is None:
            continue
        w_node = node.args[spec.weight_arg]
        w = _attr(gm, w_node)
        if w is None or len(w_node.users) != 1:
            continue
        b_node = node.args[spec.bias_arg] if len(node.args) > spec.bias_arg else None
        b = _attr(gm, b_node) if b_node is not None else None
        if b_node is not None and (b is None or len(b_node.users) != 1):
            continue
        gamma, beta, mean, var = (_attr(gm, bn.args[i]) for i in range(1, 5))
        eps = bn.args[7] if bn.target is torch.ops.aten.batch_norm.default else bn.args[6]
        if mean is None or var is None:
            continue
        c = var.numel()
        gamma = gamma if gamma is not None else torch.ones(c, device=var.device)
        beta = beta if beta is not None else torch.zeros(c, device=var.device)
        factor = (gamma / torch.sqrt(var + eps)).detach()
        shape = [1] * w.dim()
        shape[spec.weight_ch_axis] = -1
        if spec.transposed and w.shape[1] != c:  # grouped transpose: (in, out/g, k...), out channel g*(out/g)+j
            groups = c // w.shape[1]
            if groups * w.shape[1] != c or w.shape[0] % groups:
                continue
            k = [1] * (w.dim() - 2)
            new_w = (w.detach().reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
                     * factor.reshape(groups, 1, w.shape[1], *k)).reshape(w.shape)
        else:
            new_w = w.detach() * factor.reshape(shape)
        new_b = ((b.detach() if b is not None else torch.zeros(c, device=var.device)) - mean) * factor + beta.detach()
        _set_param(gm, w_node.target, new_w)
        if b_node is None:
            b_target = w_node.target.rpartition(".")[0] + ".eq_folded_bias" if "." in w_node.target \
                else "eq_folded_bias_" + node.name
            _set_param(gm, b_target, new_b)
            with gm.graph.inserting_before(node):
                b_node = gm.graph.get_attr(b_target)
            args = list(node.args) + [None] * (spec.bias_arg + 1 - len(node.args))
            args[spec.bias_arg] = b_node
            node.args = tuple(args)
        else:
            _set_param(gm, b_node.target, new_b)
        bn_out.replace_all_uses_with(node)
        node.meta["eq_folded_bn"] = bn.meta.get("eq_name", bn.name)
        for n in (bn_out, bn) if bn_out is not bn else (bn,):
            gm.graph.erase_node(n)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return folded


def _single_user(node: fx.Node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def mark_fusions(gm: fx.GraphModule) -> None:
    """Mark producer -> consumer pairs whose intermediate stays unquantized (see module doc)."""
    for node in gm.graph.nodes:
        spec = node.meta.get("eq_spec")
        if spec is None or node.meta.get("eq_domain") != "quant":
            continue
        nxt = _single_user(node)
        if nxt is None or nxt.meta.get("eq_domain") != "quant":
            continue
        nspec = nxt.meta.get("eq_spec")
        if nspec is None:
            continue
        if spec.fuse_activation and nspec.activation:
            node.meta["eq_fused_into"] = nxt
        elif spec.fuse_add and nspec.residual_add and _add_of_two_tensors(nxt) \
                and "eq_fused_into" not in _other_input(nxt, node).meta:
            node.meta["eq_fused_into"] = nxt


def _add_of_two_tensors(node: fx.Node) -> bool:
    a, b = node.args[:2]
    return node.target is torch.ops.aten.add.Tensor and isinstance(a, fx.Node) and isinstance(b, fx.Node) \
        and a is not b and node.kwargs.get("alpha", 1) == 1


def _other_input(add: fx.Node, node: fx.Node) -> fx.Node:
    a, b = add.args[:2]
    return b if a is node else a


__all__ = ["fold_batch_norms", "mark_fusions"]
