"""Unfused operations: patterns that could have been fused but were not, and why.

Takes a float model and example inputs; prepares a copy (the model is not changed) and
returns one record per missed fusion, in graph order: ``name`` (the op's site name), ``op``,
``source`` (the user's source line), ``pattern`` and ``reason`` (what blocked it and what to
change). Missed fusions cost accuracy: every unfused op gets its own requantization. The
patterns are read from the op rows' roles (``folds_into_weighted``, ``weighted``,
``fuse_activation``/``activation``, ``fuse_add``/``residual_add``), as ``fuse`` reads them.

- a batch norm that stays an op of its own (not folded into a conv/linear: its input is not
  a conv/linear, or that output has other readers);
- a relu/relu6/clamp after a conv, linear, matmul or add that it was not fused into (the
  producer's output has other readers, so the pre-activation value must be quantized);
- a conv/linear feeding an add at full precision that could not be (its output has other
  readers, or the add's other input is already fused).
"""
from __future__ import annotations

from torch import fx

from ..prepare import prepare
from ..qconfig_template import default_calibration_qconfig_setter


def _spec(node):
    return node.meta.get("eq_spec") if isinstance(node, fx.Node) else None


def _producer(node):
    """The op that computed ``node``'s value (looking through an inserted fake-quant)."""
    while isinstance(node, fx.Node) and node.meta.get("eq_fq") is not None:
        node = node.args[0]
    return node


def _users(node: fx.Node) -> list[fx.Node]:
    out = []
    for u in node.users:
        if u.meta.get("eq_fq") is not None:
            out += _users(u)
        elif not str(u.target).startswith("eq_bc."):
            out.append(u)
    return out


def _readers(node: fx.Node) -> str:
    return ", ".join(sorted({u.meta.get("eq_name", u.name) for u in _users(node)}))


def check_unfused_operations(model, example_inputs) -> list[dict]:
    """Missed fusions of ``model`` (see the module docstring); an empty list when all fused."""
    gm = prepare(model, example_inputs, qconfig_setter=(default_calibration_qconfig_setter,))
    found = []

    def add(node, pattern, reason):
        found.append({"name": node.meta.get("eq_name", node.name), "op": _spec(node).name,
                      "source": node.meta.get("eq_source", ""), "pattern": pattern, "reason": reason})

    for node in gm.graph.nodes:
        spec = _spec(node)
        if spec is None or node.meta.get("eq_domain") != "quant":
            continue
        ins = [_producer(a) for a in node.args if isinstance(a, fx.Node)]
        if spec.folds_into_weighted:
            prod = ins[0] if ins else None
            pspec = _spec(prod)
            if pspec is not None and pspec.weighted:
                why = (f"{prod.meta.get('eq_name')} ({pspec.name}) is also read by {_readers(prod)}; "
                       "give the batch norm the conv's output alone")
            else:
                why = ("its input does not come from a conv/linear; it is quantized and requantized on its own: "
                       "move it right after a conv/linear or drop it")
            add(node, "conv/linear + batch_norm", "batch norm not folded: " + why)
        elif spec.activation and ins:
            prod = ins[0]
            pspec = _spec(prod)
            if pspec is not None and pspec.fuse_activation and prod.meta.get("eq_fused_into") is not node \
                    and prod.meta.get("eq_domain") == "quant":
                add(node, f"{pspec.name} + {spec.name}",
                    f"not fused into {prod.meta.get('eq_name')} ({pspec.name}), whose output is also read by "
                    f"{_readers(prod)}: the pre-activation value gets its own int8/int16 grid; apply the "
                    "activation before branching")
        elif spec.fuse_add and "eq_fused_into" not in node.meta:
            adds = [u for u in _users(node) if _spec(u) is not None and _spec(u).residual_add
                    and all(isinstance(a, fx.Node) for a in u.args[:2])]
            if adds and node.meta.get("eq_domain") == "quant":
                add(node, f"{spec.name} + add",
                    f"output feeds {adds[0].meta.get('eq_name')} but is requantized first (also read by "
                    f"{_readers(node)}, or the add's other input is already fused): the add loses the "
                    "accumulator precision")
    return found
