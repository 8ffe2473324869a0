"""Op-by-op runs of a prepared model, for searches that change one op at a time.

Takes a prepared model (``prepare``) and calibration batches. ``op_units(gm)`` groups the
model's fake quantization by op site (the names qconfig setters and ``prepare`` use): each
``OpUnit`` holds the op's weight, input and output ``FakeQuantize`` modules and the graph
position from which they can change anything. ``Sweep`` runs the graph once per batch up to a
cursor (``execution_order``), keeping only the values still needed after it (each value is dropped after its last
use), so that the rest of the graph can be run from the cursor as often as a search needs
without recomputing what lies before it; ``advance`` moves the cursor forward (with whatever
fake-quant states are set at that time), ``inputs_of`` gives one node's evaluated arguments
per batch, ``outputs`` runs the rest and returns the model's float outputs per batch (of all
batches or of some).
``set_states`` / ``restore`` save and set the states of every FakeQuantize and BiasCorrection;
``batches_of`` / ``model_device`` read calibration data onto the model's device.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import fx
from torch.utils import _pytree as pytree

from ..fake_quant import BiasCorrection, FakeQuantize, FakeQuantState
from ..inputs import check_count, check_input, shape_of


@dataclass
class OpUnit:
    """One quantized op: its fake quantization and where in the graph it starts acting."""

    name: str                                   # the site name (qconfig setters, prepare)
    op: str                                     # the op type ("conv2d", "add", "quantize", ...)
    start: int = 0                              # first graph index whose value depends on them
    weights: list[FakeQuantize] = field(default_factory=list)
    inputs: list[FakeQuantize] = field(default_factory=list)
    output: FakeQuantize | None = None          # None: high-precision or table-grid output
    output_index: int = -1                      # graph index of the output fake-quant node

    @property
    def fqs(self) -> list[FakeQuantize]:
        return [*self.weights, *self.inputs, *([self.output] if self.output is not None else [])]

    def set_state(self, state: FakeQuantState) -> None:
        for fq in self.fqs:
            fq.state = state


_INPUT = re.compile(r"^(.*)\.input\d+$")


def _site_of(fq_name: str, sites: set[str]) -> tuple[str, str] | None:
    """``(site, role)`` of a fake-quant name: role ``"output"``, ``"weight"`` or ``"input"``."""
    if fq_name in sites:
        return fq_name, "output"
    if fq_name.endswith(".weight") and fq_name[: -len(".weight")] in sites:
        return fq_name[: -len(".weight")], "weight"
    m = _INPUT.match(fq_name)
    if m and m.group(1) in sites:
        return m.group(1), "input"
    return None


def execution_order(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's nodes in an order that runs them correctly, with every constant node (one that
    depends on no input: parameters and their fake quantization) moved to just before its first
    user, so that an op's weight fake-quant comes right before the op, after the op's inputs."""
    nodes = list(gm.graph.nodes)
    const: dict[fx.Node, bool] = {}
    for n in nodes:
        const[n] = n.op == "get_attr" or (n.op in ("call_function", "call_method", "call_module")
                                          and all(const[a] for a in n.all_input_nodes))
    order: list[fx.Node] = []
    emitted: set[fx.Node] = set()

    def emit(n: fx.Node) -> None:
        if n not in emitted:
            for a in n.all_input_nodes:
                emit(a)
            emitted.add(n)
            order.append(n)

    for n in nodes:
        if not const[n] and n.op != "output":
            emit(n)
    for n in nodes:  # constants that no computed value uses, then the output
        emit(n)
    return order


def op_units(gm: fx.GraphModule) -> list[OpUnit]:
    """Every op site of ``gm`` that has a FakeQuantize, ordered by ``start`` (``execution_order``)."""
    meta = getattr(gm, "meta", {}).get("edgequant")
    if meta is None:
        raise ValueError("expected a model returned by edgequant.prepare (its meta has no 'edgequant' entry)")
    sites = set(meta["sites"])
    index = {n: i for i, n in enumerate(execution_order(gm))}
    ops = {n.meta["eq_name"]: ("quantize" if n.meta.get("eq_spec") is None else n.meta["eq_spec"].name)
           for n in gm.graph.nodes if n.meta.get("eq_site")}
    units: dict[str, OpUnit] = {}
    for node in index:
        if node.op != "call_module" or "eq_fq" not in node.meta:
            continue
        fq = gm.get_submodule(node.target)
        got = _site_of(node.meta["eq_fq"], sites)
        if not isinstance(fq, FakeQuantize) or got is None:
            continue
        site, role = got
        unit = units.setdefault(site, OpUnit(site, ops.get(site, "?"), start=index[node]))
        unit.start = min(unit.start, index[node])
        if role == "weight":
            unit.weights.append(fq)
        elif role == "input":
            unit.inputs.append(fq)
        else:
            unit.output, unit.output_index = fq, index[node]
            producer = node.args[0]  # a table op reads its output fake-quant's state and qparams
            if isinstance(producer, fx.Node):
                unit.start = min(unit.start, index[producer])
    return sorted(units.values(), key=lambda u: u.start)


def set_states(gm: fx.GraphModule, fq_state: FakeQuantState, bc_state: FakeQuantState) -> dict:
    """Set every FakeQuantize to ``fq_state`` and every BiasCorrection to ``bc_state`` (without
    freezing qparams); returns the previous states for ``restore``."""
    saved = {}
    for m in gm.modules():
        if isinstance(m, FakeQuantize):
            saved[m] = m.state
            m.state = FakeQuantState(fq_state)
        elif isinstance(m, BiasCorrection):
            saved[m] = m.state
            m.state = FakeQuantState(bc_state)
    return saved


def restore(saved: dict) -> None:
    for m, state in saved.items():
        m.state = state


def _to(b, device):
    if isinstance(b, torch.Tensor):
        return b.to(device)
    if isinstance(b, (list, tuple)):
        return type(b)(_to(v, device) for v in b)
    if isinstance(b, dict):
        return {k: _to(v, device) for k, v in b.items()}
    return b


def batches_of(data, num_batches: int | None, device) -> list:
    """The first ``num_batches`` (all if None) batches of a list/tuple or DataLoader, on ``device``."""
    out = []
    for b in data:
        if num_batches is not None and len(out) >= num_batches:
            break
        out.append(_to(b, device))
    if not out:
        raise ValueError("the calibration data gave no batches")
    return out


def model_device(gm: fx.GraphModule) -> torch.device:
    p = next(iter(gm.parameters()), None)
    if p is None:
        p = next(iter(gm.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def float_leaves(out) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (tensor, tuple, dict, ...), in order."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _checked(xs: list, placeholders) -> list:
    """A batch's inputs checked against the traced ones, as the prepared model checks a call
    (``edgequant.inputs``): the sweep runs the graph node by node, past the model's own hook."""
    if len(xs) < len(placeholders):
        check_count([str(p.target) for p in placeholders], len(xs))
    out = []
    for p, x in zip(placeholders, xs):
        val = p.meta.get("val")
        if isinstance(val, torch.Tensor):
            x = check_input(str(p.target), x, shape_of(val), str(val.dtype).replace("torch.", ""))
        out.append(x)
    return out


class Sweep:
    """Per-batch environments of a graph run up to ``cursor`` (see the module docstring).

    A batch is a tensor (the model's single input), a tuple/list whose first items are the
    model's inputs (extra items such as labels are ignored) or a dict of inputs by name.
    """

    def __init__(self, gm: fx.GraphModule, batches: list):
        self.gm = gm
        self.nodes = execution_order(gm)
        self.index = index = {n: i for i, n in enumerate(self.nodes)}
        self.dead_after: list[list[fx.Node]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            last = max([index[u] for u in n.users], default=i)
            self.dead_after[last].append(n)
        self.interp = fx.Interpreter(gm, garbage_collect_values=False)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.cursor = 0
        self.envs = []  # the inputs are set up front; _run skips placeholders
        for b in batches:
            env = {}
            self.interp.env = env
            self.interp.args_iter = iter(_checked(self._inputs(b, placeholders), placeholders))
            for n in placeholders:
                env[n] = self.interp.run_node(n)
            self.envs.append(env)

    @staticmethod
    def _inputs(b, placeholders) -> list:
        if isinstance(b, dict):
            missing = [p.target for p in placeholders if p.target not in b and not p.args]
            if missing:
                raise ValueError(f"a calibration batch (dict) lacks the model inputs {missing}")
            return [b[p.target] if p.target in b else p.args[0] for p in placeholders]
        if isinstance(b, (list, tuple)):
            return list(b[: len(placeholders)])
        return [b]

    @torch.no_grad()
    def _run(self, env: dict, start: int, stop: int):
        self.interp.env = env
        for i in range(start, stop):
            n = self.nodes[i]
            if n.op == "placeholder":
                continue
            value = self.interp.run_node(n)
            if n.op == "output":
                return value
            env[n] = value
            for d in self.dead_after[i]:
                env.pop(d, None)
        return None

    def advance(self, to: int) -> None:
        """Run every batch from the cursor up to (not including) graph index ``to``."""
        if to < self.cursor:
            raise ValueError(f"the sweep is at node {self.cursor}; it cannot go back to {to}")
        for env in self.envs:
            self._run(env, self.cursor, to)
        self.cursor = to

    def inputs_of(self, node: fx.Node) -> list[tuple[tuple, dict]]:
        """Per batch, the evaluated ``(args, kwargs)`` of ``node`` (at or after the cursor), from a
        copy of each batch's environment run up to it (the cursor stays)."""
        stop = self.index[node]
        if stop < self.cursor:
            raise ValueError(f"the sweep is at node {self.cursor}, past {node.name} ({stop})")
        out = []
        for env in self.envs:
            env = dict(env)
            self._run(env, self.cursor, stop)
            out.append(self.interp.fetch_args_kwargs_from_env(node))
        return out

    def outputs(self, batches: Sequence[int] | None = None) -> list[list[torch.Tensor]]:
        """Run the rest of the graph from the cursor for every batch, or for the batches of
        these indices (the cursor stays); returns each one's float output tensors (``float_leaves``)."""
        envs = self.envs if batches is None else [self.envs[i] for i in batches]
        return [float_leaves(self._run(dict(env), self.cursor, len(self.nodes))) for env in envs]
