"""Capture's rewrites of the traced program: the retrace (functionalization, decompositions) and
the graph passes after it.

``capture`` traces the model with ``torch.export``, whose graph keeps the model's in-place ops
(``out += identity``, ``nn.ReLU(inplace=True)``, ``dropout_``, ``fill_``, ...) and some ops that
edgequant quantizes in another form. ``retrace_table(ep)`` says whether the exported program
must be traced again (``ep.run_decompositions(table)``, a second or two) and with what table:

- any mutating op: the retrace functionalizes the graph (every in-place op becomes its
  out-of-place form, and values that views or other names alias are rewritten, so each node
  holds one value; eval-mode ``dropout_`` vanishes);
- ``scaled_dot_product_attention``: ``_sdpa_math``, matmul, softmax and mask ops that quantize
  op by op, returned in the memory layout aten's kernel gave its output (user code such as
  nanoGPT's ``y.transpose(1, 2).contiguous().view(B, T, C)`` views it as such);
- ``conv1d``/``conv2d``/``conv3d`` with ``padding="same"``/``"valid"``: the conv with explicit padding
  (and an explicit zero pad on the right where ``"same"`` pads an odd total), as aten does.
- ``group_norm``/``instance_norm``, ``linalg_vector_norm``, ``baddbmm``, ``reshape_as``/``expand_as``,
  ``min``/``max`` of two tensors: in ops edgequant quantizes (``capture_decomp``).

An empty table still functionalizes; ops outside the table are kept. On the ``GraphModule``
then: ``drop_noops`` (eval-mode dropout, aliasing ops, casts that keep the dtype, write-backs
into inputs, empty 1-D ``cat`` inputs), ``batch_norm_as_one_node`` (the retrace's two-node
batch norm back to one node) and ``fold_made_constants`` (float or integer tensors built from
factory ops, buffers and constants alone, such as Swin's window mask or BEiT's relative position
index, become buffers; values computed from parameters stay, for QAT, until export evaluates
them: ``param_subgraphs``) and ``expand_dynamic_fills`` (a one-value fill whose
shape follows the batch, ``y.new_ones(y.shape)``, becomes a one-element buffer expanded to it).
Before the folding, ``cast_integer_operands``: float arithmetic on an integer or bool tensor gets
the cast torch's type promotion does implicitly, so the operand is quantized like any float tensor.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Callable

import torch
from torch import fx

from .capture_decomp import decomp_table
from .param_subgraphs import pure, static_tensors


def _sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
               layouts=None):
    """Attention as matmul, softmax and mask ops. ``layouts`` maps ``_sdpa_key`` of the inputs
    to the memory layout of aten's output in the first trace (``_sdpa_layouts``)."""
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    order = (layouts or {}).get(_sdpa_key(q, k, v, attn_mask))
    if enable_gqa and k.shape[-3] not in (1, q.shape[-3]):   # grouped-query attention: each kv head
        k, v = (_repeat_heads(t, q.shape[-3] // t.shape[-3]) for t in (k, v))   # serves a group of q heads
    scores = torch.matmul(q, k.transpose(-2, -1)) * s
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        causal = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    if order is None or order == list(range(out.dim())):
        return out
    # aten's kernel wrote its output in another memory layout (that of q: (B, T, H, D) for the
    # usual q.view(B, T, H, D).transpose(1, 2)), and user code may .view() it as such: return it
    # in that layout too
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return out.permute(order).contiguous().permute(inverse)


def _repeat_heads(t, n: int):
    """``t.repeat_interleave(n, dim=-3)`` as moves that quantize (unsqueeze, expand, reshape)."""
    shape = list(t.shape)
    return t.unsqueeze(-3).expand(*shape[:-2], n, *shape[-2:]).reshape(*shape[:-3], shape[-3] * n, *shape[-2:])


def _hint(d) -> int:
    return d.node.hint if isinstance(d, torch.SymInt) else int(d)


def _sdpa_key(*tensors) -> tuple:
    """The traced shapes, strides and dtypes of SDPA's inputs (``None`` for no mask)."""
    return tuple((tuple(_hint(d) for d in t.shape), tuple(_hint(d) for d in t.stride()), t.dtype)
                 if isinstance(t, torch.Tensor) else None for t in tensors)


def _sdpa_layouts(ep) -> dict:
    """``_sdpa_key`` of each SDPA call's inputs -> its output's dims from outermost to innermost
    in memory, as aten's kernel laid it out in the first trace."""
    out = {}
    for n in ep.graph.nodes:
        if n.target is torch.ops.aten.scaled_dot_product_attention.default:
            args = list(n.args) + [None] * 4
            mask = n.kwargs.get("attn_mask", args[3])
            vals = [a.meta.get("val") if isinstance(a, fx.Node) else None for a in (*args[:3], mask)]
            res = n.meta.get("val")
            if all(isinstance(t, torch.Tensor) for t in vals[:3]) and isinstance(res, torch.Tensor):
                st, sh = [_hint(d) for d in res.stride()], [_hint(d) for d in res.shape]
                out[_sdpa_key(*vals)] = sorted(range(len(st)), key=lambda d: (-st[d], -sh[d], d))
    return out


def _conv_string_padding(conv: Callable) -> Callable:
    """``conv(x, w, b, stride, padding="same"|"valid", ...)`` with explicit padding, as aten
    computes it: ``"same"`` pads ``dilation * (k - 1)`` per spatial dim, half on each side,
    the odd one on the right (an explicit zero pad before the conv)."""
    def decomposed(x, w, bias=None, stride=1, padding="valid", dilation=1, groups=1):
        n = w.dim() - 2
        stride, dil = _per_dim(stride, n), _per_dim(dilation, n)
        if padding == "valid":
            return conv(x, w, bias, stride, [0] * n, dil, groups)
        totals = [d * (int(kk) - 1) for d, kk in zip(dil, w.shape[2:])]
        extra = []
        for t in reversed(totals):   # F.pad lists the last dim first
            extra += [0, t - t // 2 * 2]
        if any(extra):
            x = torch.nn.functional.pad(x, extra)
        return conv(x, w, bias, stride, [t // 2 for t in totals], dil, groups)
    return decomposed


def _per_dim(v, n: int) -> list:
    """A conv argument (an int or a list of one or ``n``) as a list of ``n``."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * n if len(v) == 1 else v


_STRING_PADDING = {torch.ops.aten.conv1d.padding: torch.ops.aten.conv1d.default,
                   torch.ops.aten.conv2d.padding: torch.ops.aten.conv2d.default,
                   torch.ops.aten.conv3d.padding: torch.ops.aten.conv3d.default}


def retrace_table(ep) -> dict | None:
    """The decompositions to retrace ``ep`` with, or None when it needs no retrace (seconds).

    The retrace functionalizes the graph: in-place ops (``out += identity``, ``relu_``,
    ``hardtanh_``, ``dropout_``, ``fill_``, ...) become their out-of-place forms, and values
    aliased by views or other names are rewritten so each node holds one value (eval-mode
    dropout vanishes). Attention becomes matmul, softmax and mask ops so it quantizes op by op,
    and convolutions with ``padding="same"``/``"valid"`` get explicit padding."""
    table, mutates, layouts = {}, False, None
    for n in ep.graph.nodes:
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        mutates = mutates or n.target._schema.is_mutable
        if n.target is torch.ops.aten.scaled_dot_product_attention.default:
            layouts = _sdpa_layouts(ep) if layouts is None else layouts
            table[n.target] = functools.partial(_sdpa_math, layouts=layouts)
        elif n.target in _STRING_PADDING:
            table[n.target] = _conv_string_padding(_STRING_PADDING[n.target])
    table.update(decomp_table(ep))  # group/instance/vector norms, baddbmm, ... (capture_decomp)
    return table if table or mutates else None


# -- passes on the captured GraphModule ---------------------------------------------------------------
_NOOPS = {torch.ops.aten.dropout.default, torch.ops.aten.alias.default, torch.ops.aten.detach.default,
          torch.ops.aten.detach_.default, torch.ops.aten.lift_fresh_copy.default,
          # nn.Dropout2d/3d (HF MobileNetV2's segmentation head), nn.AlphaDropout, nn.FeatureAlphaDropout
          torch.ops.aten.feature_dropout.default, torch.ops.aten.alpha_dropout.default,
          torch.ops.aten.feature_alpha_dropout.default}
_CASTS = {torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout, torch.ops.aten.to.device,
          torch.ops.aten.to.other, torch.ops.aten._to_copy.default, torch.ops.aten.type_as.default}


def _same_type(node: fx.Node) -> bool:
    """A cast whose output has its input's dtype and device (``pixel_values.to(self.dtype)``)."""
    src, out = node.args[0].meta.get("val"), node.meta.get("val")
    return isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and src.dtype == out.dtype \
        and src.device == out.device


def drop_noops(gm: fx.GraphModule) -> None:
    """Remove eval-mode dropout, aliasing ops and casts that keep the dtype: they would split
    fusable op pairs apart, and a float32 -> float32 cast is no op to quantize. Also remove the
    write-backs ``torch.export`` appends when the model writes into one of its inputs in place
    (``x.sub_(mean)``): the graph computes the same outputs, leaving the caller's tensor alone;
    and the empty 1-D inputs of ``cat``, which torch skips. Views become reshapes."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not node.args:
            continue
        if node.target is torch.ops.aten.cat.default and isinstance(node.args[0], (list, tuple)):
            _skip_empty_cat_inputs(gm, node)
            continue
        if not isinstance(node.args[0], fx.Node):
            continue
        plain_clone = node.target is torch.ops.aten.clone.default and \
            node.kwargs.get("memory_format") in (None, torch.preserve_format)  # eval dropout decomposes to this
        if node.target in _NOOPS or plain_clone or (node.target in _CASTS and _same_type(node)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.target is torch.ops.aten.copy_.default and node.args[0].op == "placeholder" and not node.users:
            gm.graph.erase_node(node)
        elif node.target is torch.ops.aten.view.default:
            # with the clones and contiguous() calls gone (and fake quant or tables computing in
            # other layouts) a view may meet a tensor it cannot view: reshape is view where it can
            node.target = torch.ops.aten.reshape.default
    gm.graph.lint()
    gm.recompile()


# arithmetic where torch promotes an integer or bool tensor operand to the float result's dtype
_PROMOTING = (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor,
              torch.ops.aten.rsub.Tensor, torch.ops.aten.div.Tensor, torch.ops.aten.maximum.default,
              torch.ops.aten.minimum.default)


def cast_integer_operands(gm: fx.GraphModule) -> None:
    """Write torch's type promotion out: in float arithmetic with an integer or bool tensor operand
    (ESM's ``embeddings * attention_mask.unsqueeze(-1)`` on an int64 mask), that operand becomes an
    explicit ``_to_copy`` to the result's dtype, a float tensor that prepare quantizes like any
    other (a 0/1 mask is exact on its grid). Without it the integer model would have to multiply
    codes by an integer tensor of unknown range, which no bound computed at convert can cover."""
    for node in list(gm.graph.nodes):
        out = node.meta.get("val")
        if node.op != "call_function" or node.target not in _PROMOTING or not isinstance(out, torch.Tensor) \
                or not out.is_floating_point():
            continue
        for a in [a for a in node.args if isinstance(a, fx.Node)]:
            v = a.meta.get("val")
            if isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex():
                with gm.graph.inserting_before(node):
                    cast = gm.graph.call_function(torch.ops.aten._to_copy.default, (a,), {"dtype": out.dtype})
                cast.meta = dict(a.meta, val=v.to(out.dtype))
                node.replace_input_with(a, cast)
    gm.graph.lint()
    gm.recompile()


def _skip_empty_cat_inputs(gm: fx.GraphModule, node: fx.Node) -> None:
    """``torch.cat`` skips 1-D empty inputs (GPT-2's empty key/value cache, ``torch.tensor([])``):
    leave them out of the node, and a cat of one remaining input is that input."""
    def empty(a):
        if not isinstance(a, fx.Node):
            return False
        v = _get_attr(gm, a.target) if a.op == "get_attr" else a.meta.get("val")
        return isinstance(v, torch.Tensor) and v.dim() == 1 and isinstance(v.shape[0], int) and v.shape[0] == 0
    kept = [a for a in node.args[0] if not empty(a)]
    if len(kept) == len(node.args[0]) or not kept:
        return
    if len(kept) == 1 and isinstance(kept[0], fx.Node):
        node.replace_all_uses_with(kept[0])
        gm.graph.erase_node(node)
    else:
        node.args = (kept, *node.args[1:])


def batch_norm_as_one_node(gm: fx.GraphModule) -> None:
    """The retrace writes an eval-mode batch norm as ``_native_batch_norm_legit_no_training``
    (a tuple) and ``getitem 0``; write it back as the one ``batch_norm`` node that the first
    trace records, so a batch norm that folds into no conv is one op with one output."""
    legit = torch.ops.aten._native_batch_norm_legit_no_training.default
    for node in list(gm.graph.find_nodes(op="call_function", target=legit)):
        users = list(node.users)
        if not users or len(node.args) != 7 or any(u.target is not operator.getitem or u.args[1] != 0
                                                   for u in users):
            continue
        x, w, b, mean, var, momentum, eps = node.args
        with gm.graph.inserting_before(node):
            bn = gm.graph.call_function(torch.ops.aten.batch_norm.default,
                                        (x, w, b, mean, var, False, momentum, eps, True))
        bn.meta.update(node.meta)
        bn.meta["val"] = users[0].meta.get("val")
        for u in users:
            u.replace_all_uses_with(bn)
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


_A = torch.ops.aten
_SHAPE_ONLY = {_A.new_zeros.default: 0.0, _A.new_ones.default: 1.0, _A.new_full.default: None,
               _A.zeros_like.default: 0.0, _A.ones_like.default: 1.0, _A.full_like.default: None}


def _fill_value(node: fx.Node):
    """The value a ``_SHAPE_ONLY`` call fills its tensor with (``new_full``/``full_like``: its last argument)."""
    fill = _SHAPE_ONLY[node.target]
    return node.args[-1] if fill is None else fill


def _buffer_node(gm: fx.GraphModule, prefix: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    """Register ``value`` as the first free buffer ``{prefix}_{k}`` of ``gm``; its ``get_attr`` node before ``before``."""
    k = 0
    while hasattr(gm, f"{prefix}_{k}"):
        k += 1
    gm.register_buffer(f"{prefix}_{k}", value)
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(f"{prefix}_{k}")


def fold_made_constants(gm: fx.GraphModule) -> None:
    """Replace tensors that the forward builds from constants alone by a buffer holding their
    value, float or integer: subgraphs whose inputs are factory ops (``torch.zeros``, ``arange``,
    ``full``, ``linspace``; ``x.new_zeros(H, W)`` and ``zeros_like``, which read only their
    input's dtype and shape), buffers and lifted constant tensors (Swin's shifted-window mask,
    BEiT's relative position index built by slice assignments, a sin-cos embedding's
    ``10000 ** omega``). They depend on no input value, so they are constants, not ops to quantize.
    Only pure ops with static shapes fold; values computed from trainable parameters stay (QAT
    trains them; export evaluates them: ``param_subgraphs``), and so do buffers the forward writes."""
    params = {id(p) for p in gm.parameters()}
    known: set[fx.Node] = set()   # value known at capture
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            v = _get_attr(gm, node.target)
            if isinstance(v, torch.Tensor) and id(v) not in params and not any(
                    isinstance(u.target, torch._ops.OpOverload) and u.target._schema.is_mutable for u in node.users):
                known.add(node)
        elif pure(node) and static_tensors(node.meta.get("val")):
            shape_only = node.target in _SHAPE_ONLY   # reads its first input's dtype and shape only
            if all(a in known or (shape_only and a is node.args[0]) for a in node.all_input_nodes):
                known.add(node)
    env: dict[fx.Node, object] = {}

    def value(n: fx.Node):
        if n not in env:
            if n.op == "get_attr":
                env[n] = _get_attr(gm, n.target)
            elif n.target in _SHAPE_ONLY:
                val = n.meta["val"]
                env[n] = torch.full(tuple(val.shape), _fill_value(n), dtype=val.dtype, device=val.device)
            else:
                args, kwargs = fx.map_arg((n.args, n.kwargs), value)
                env[n] = n.target(*args, **kwargs)
        return env[n]

    folded = 0
    for node in list(gm.graph.nodes):
        if node not in known or node.op != "call_function" or not isinstance(node.meta.get("val"), torch.Tensor) \
                or all(u in known for u in node.users):
            continue
        const = _buffer_node(gm, "eq_const", value(node).detach().clone(), node)
        const.meta.update(node.meta)
        node.replace_all_uses_with(const)
        folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()


def expand_dynamic_fills(gm: fx.GraphModule) -> None:
    """A float tensor filled with one value whose shape follows a dynamic dim (``y.new_ones(y.shape)``,
    ``torch.zeros_like(x)`` with a free batch): a one-element buffer holding the value, expanded to
    the shape (``expand`` moves codes, so the fill quantizes as a constant of one value)."""
    replaced = 0
    for node in list(gm.graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or node.target not in _SHAPE_ONLY or not isinstance(val, torch.Tensor) \
                or static_tensors(val) or not val.is_floating_point():
            continue
        fill = _fill_value(node)
        if not isinstance(fill, (int, float)):
            continue
        one = torch.full([1] * val.dim(), float(fill), dtype=val.dtype)
        const = _buffer_node(gm, "eq_fill", one, node)
        const.meta["val"] = one.clone()
        with gm.graph.inserting_before(node):
            if node.target in (_A.new_zeros.default, _A.new_ones.default, _A.new_full.default):
                sizes = list(node.args[1])
            else:   # *_like: the sizes of the input, dynamic ones read at run time
                src = node.args[0]
                shape = src.meta["val"].shape
                sizes = [d if isinstance(d, int) else gm.graph.call_function(_A.sym_size.int, (src, i))
                         for i, d in enumerate(shape)]
                for i, d in enumerate(sizes):
                    if isinstance(d, fx.Node):
                        d.meta["val"] = shape[i]
            out = gm.graph.call_function(_A.expand.default, (const, sizes))
        out.meta.update(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        replaced += 1
    if replaced:
        gm.graph.lint()
        gm.recompile()


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
