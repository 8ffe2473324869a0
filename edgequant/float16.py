"""Float16 islands: what ``prepare`` does for an op whose qconfig is float16, and for FakeCast.

Takes the captured ``GraphModule`` while ``prepare.insert_fake_quant`` walks it, with the qconfigs
the setters chose; changes it in place. An op site whose qconfig is float16
(``get_qconfig(out_dtype=torch.float16)``, ``qconfig_template.all_fp16_qconfig_setter``) becomes a
float16 op (``meta["eq_float16"]``): a ``FakeCast`` (container ``eq_fc``) rounds each of its float
inputs that is not float16 already (quantized activations, float32 values, weights, biases and
other parameters) and its output. Ops that only move values (reshapes, slicing) after a float16
value stay float16 without a cast; an activation that was fused into a float16 op becomes a float16
op of its own (its output is cast too). Quantized ops that read a float16 value quantize it at their
input (``prepare._insert_input_fqs``). A user's ``FakeCast`` in the quantized region is captured
as one op (``ops`` row ``fake_cast``) whose output is float16.

The arithmetic, the same in the simulation and in the integer model (NASH_P/NASH_H): every op of
an island computes in float32 on float16 operands and rounds its result to float16
(round-to-nearest-even, ``x.half().float()``), as a float16 unit that accumulates in float32 does;
it reads its quantized inputs dequantized (A2) and rounded to float16, and a quantized op after it
quantizes the float16 value (A1). ``export`` writes every cast as a ``fake_cast`` node (a weight's
cast is folded into a rounded constant) and marks the island's ops ``attrs["float16"]``;
``convert`` keeps them as float ops (run by their recorded torch call on the float16 values held
in float32) and refuses them, naming each, on NASH_E/NASH_M. Agreement: exact (0 LSB of
float16), as both levels run the same float32 ops on the same values.
"""
from __future__ import annotations

import operator

from torch import fx, nn

from .capture import is_float_value
from .nn.fake_cast import FakeCast
from .nn.stubs import quant_point
from .ops import FAKE_CAST

FC_CONTAINER = "eq_fc"


def left_quant(node: fx.Node) -> None:
    """Mark a node that leaves the quantized domain (float or float16 by its qconfig)."""
    node.meta["eq_domain"] = "float"
    node.meta["eq_site"] = False
    node.meta["eq_left_quant"] = True


def _kind(node: fx.Node, qconfigs: dict) -> str | None:
    """``"int"``, ``"float"`` or ``"float16"`` for a site; None for a node that is no site."""
    if not node.meta.get("eq_site"):
        return None
    qc = qconfigs.get(node.meta["eq_name"])
    return "float" if qc is None else "float16" if qc.float16 else "int"


def unfuse_mixed(gm: fx.GraphModule, qconfigs: dict) -> None:
    """A fusion stays only between integer ops: a float or float16 site is fused with nothing
    (its output, or the accumulator it would have handed an integer add, is a value of its own)."""
    for node in gm.graph.nodes:
        into = node.meta.get("eq_fused_into")
        if into is None:
            continue
        kinds = {_kind(node, qconfigs), _kind(into, qconfigs)} - {None}
        if kinds - {"int"}:
            del node.meta["eq_fused_into"]


def _cast(gm: fx.GraphModule, name: str, after: fx.Node, source: str, only_user: fx.Node | None = None) -> fx.Node:
    """Insert a FakeCast after ``after`` (for ``only_user``, or for every user)."""
    if not hasattr(gm, FC_CONTAINER):
        gm.add_module(FC_CONTAINER, nn.ModuleDict())
    key = name.replace(".", "__")
    getattr(gm, FC_CONTAINER)[key] = FakeCast()
    with gm.graph.inserting_after(after):
        new = gm.graph.call_module(f"{FC_CONTAINER}.{key}", (after,))
    new.meta.update({"val": after.meta.get("val"), "eq_domain": "float", "eq_name": name, "eq_spec": FAKE_CAST,
                     "eq_fp16": True, "eq_left_quant": True, "eq_source": source,
                     "eq_path": after.meta.get("eq_path", "")})
    if only_user is not None:
        only_user.replace_input_with(after, new)
    else:
        after.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    return new


def _make_island(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    """``node`` computes in float16: cast its float inputs that are not float16 and its output."""
    left_quant(node)
    node.meta["eq_float16"] = True
    node.meta.pop("eq_high_precision", None)
    source = node.meta.get("eq_source", "")
    if node.target is not quant_point:
        k = 0
        for a in list(node.all_input_nodes):
            if a.meta.get("eq_fp16") or not (a.op == "get_attr" or is_float_value(a)):
                continue
            what = a.target.rpartition(".")[2] if a.op == "get_attr" else f"input{k}"
            k += a.op != "get_attr"
            _cast(gm, f"{name}.{what}.float16", a, source, only_user=node)
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):   # a multi-output op: cast each float output where it is taken
        for u in list(node.users):
            if u.target is operator.getitem and is_float_value(u):
                left_quant(u)
                _cast(gm, f"{name}.{u.args[1]}.float16", u, source)
    elif is_float_value(node):
        _cast(gm, f"{name}.float16", node, source)


def insert_float16_site(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    """The op site ``node`` (called ``name``), whose qconfig is float16, becomes a float16 op."""
    _make_island(gm, node, name)


def follow_float_inputs(gm: fx.GraphModule, node: fx.Node) -> None:
    """A quantized-domain op that is no site and whose quantized inputs all left the quantized
    domain (their qconfig made them float or float16) leaves it too: an op that moves values keeps
    float16 values float16; an activation fused into a float16 op becomes a float16 op."""
    if node.meta.get("eq_spec") is FAKE_CAST:   # a user's FakeCast: its output is float16
        node.meta["eq_fp16"] = node.meta["eq_left_quant"] = True
        return
    ins = node.all_input_nodes
    if node.meta.get("eq_domain") != "quant" or not any(a.meta.get("eq_left_quant") for a in ins) \
            or any(a.meta.get("eq_domain") == "quant" for a in ins):
        return
    spec = node.meta.get("eq_spec")
    floats = [a for a in ins if a.op != "get_attr" and is_float_value(a)]
    fp16 = bool(floats) and all(a.meta.get("eq_fp16") for a in floats)
    if spec is not None and spec.rule == "compute" and any(a.meta.get("eq_fp16") for a in floats):
        _make_island(gm, node, node.meta.get("eq_name", node.name))
        return
    left_quant(node)
    if fp16 and (spec is None or spec.rule == "shared"):
        node.meta["eq_fp16"] = True


def reset_casts(gm: fx.GraphModule) -> None:
    """Every FakeCast of a prepared model starts in FLOAT, as its FakeQuantizes do."""
    for m in gm.modules():
        if isinstance(m, FakeCast):
            m.set_state("float")


__all__ = ["FC_CONTAINER", "unfuse_mixed", "insert_float16_site", "follow_float_inputs", "reset_casts", "left_quant"]
