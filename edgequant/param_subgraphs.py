"""Values the forward computes from parameters and constants alone (no graph input reaches them).

Capture already folds what the forward builds from constants alone (``capture_rewrite.
fold_made_constants``: factory ops, buffers, lifted constants). What it leaves are values computed
from *trainable parameters*: ``nn.MultiheadAttention``'s ``in_proj_weight.chunk(3)`` (q, k and v
not the same tensor), a bias that Swin V2 clones and zeroes in part, a position embedding that
YOLOS resizes bicubically, Swin V2's continuous position bias MLP run on its coordinate table.
They must stay in the graph until export, so QAT trains the parameters through them.

- ``prepare`` asks ``parameter_only(node)`` whether a weighted op's weight (or bias) argument is
  such a value; a computed weight then gets its weight fake-quant on the computed node, for that
  op alone (a value two ops read is quantized once per op, as a shared ``get_attr`` weight is).
- ``export`` asks ``fold(exporter, node)`` for every op: an op whose tensor inputs are all
  constants of the IR is evaluated once, with the parameters' values at export time, and becomes
  a constant of the IR (a weight constant then carries its fake-quant's qparams; a bias feeds
  bias correction; any other value enters the quantized region through its ``quantize`` node).
  What the integer model runs is thus what the simulation computed from the same parameters.

Pure ops only: no in-place op, nothing random (``nondeterministic_seeded``), static shapes, and
nothing that is itself an op of the quantized region or of a float16 island.
"""
from __future__ import annotations

import operator

import torch
from torch import fx


def pure(node: fx.Node) -> bool:
    """A call whose value follows from its inputs alone: an aten op that writes nothing and draws
    no random numbers, or ``getitem`` of such a call's outputs (a wrapped function, a marker or
    any other op stays a call)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    t = node.target
    return isinstance(t, torch._ops.OpOverload) and t.namespace == "aten" and not t._schema.is_mutable \
        and torch.Tag.nondeterministic_seeded not in t.tags


def static_tensors(val) -> bool:
    """Whether ``val`` is a tensor (or a tuple/list of them) whose dims are all ints."""
    if isinstance(val, torch.Tensor):
        return all(isinstance(d, int) for d in val.shape)
    if isinstance(val, (tuple, list)) and val:
        return all(static_tensors(v) for v in val)
    return False


def parameter_only(node) -> bool:
    """Whether ``node``'s value is computed from ``get_attr`` tensors (parameters, buffers,
    constants) by pure ops with static shapes, so export can evaluate it once (module docstring).
    A kept BatchNorm unit's folded weight or bias (``qat_bn``) counts as such a value."""
    if not isinstance(node, fx.Node):
        return False
    stack, seen = [node], {node}
    while stack:                      # iterative, and stops at the first input-dependent ancestor
        n = stack.pop()
        if n.op == "get_attr" or n.meta.get("eq_bn_part") in ("weight", "bias"):
            continue
        ins = n.all_input_nodes
        if not pure(n) or not ins or not static_tensors(n.meta.get("val")):
            return False
        stack.extend(a for a in ins if a not in seen)
        seen.update(ins)
    return True


def _device(gm: fx.GraphModule) -> torch.device:
    t = next(iter([*gm.parameters(), *gm.buffers()]), None)
    return t.device if t is not None else torch.device("cpu")


def fold(exp, node: fx.Node) -> bool:
    """Evaluate ``node`` into constants of the IR when all its tensor inputs are constants
    (``exp``: export's ``_Exporter``); returns whether it did. ``exp.env[node]`` is then the
    constant's name (a list of names for an op with several outputs)."""
    if not pure(node) or node.target is operator.getitem or node.meta.get("eq_domain") == "quant" \
            or node.meta.get("eq_float16") or not node.all_input_nodes \
            or not static_tensors(node.meta.get("val")) or any(u.op == "output" for u in node.users):
        return False
    refs = [exp.env.get(a) for a in node.all_input_nodes]
    if not all(isinstance(r, str) and r in exp.constants for r in refs):
        return False
    if "_fold_device" not in exp.__dict__:
        exp._fold_device = _device(exp.gm)   # compute where the simulation did
    dev = exp._fold_device
    args, kwargs = fx.map_arg((node.args, node.kwargs), lambda a: exp.constants[exp.env[a]].to(dev))
    with torch.no_grad():
        out = node.target(*args, **kwargs)
    name = node.name
    if isinstance(out, torch.Tensor):
        exp.env[node] = exp._const(name, out)
    else:
        exp.env[node] = [exp._const(f"{name}.{i}", t) for i, t in enumerate(out)]
    return True
