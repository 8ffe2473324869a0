"""Run: execute a ``Graph`` at either level, on the CPU or on the CUDA device its inputs are on.

Takes a graph and the model's positional inputs; returns what the float model returns (a
tensor, a tuple, or the model's own output type when it could be recorded). At level
``"quant"`` every op runs in float and each quantized output is fake-quantized with its
``QParams`` (this reproduces the VALIDATION simulation). At level ``"int"`` the ops run the
integer kernels of their ``ops/`` entries; between ``quantize`` and ``dequantize`` nodes every
tensor is an integer tensor. The inputs are checked against the traced ones (count, dtype kind,
rank, fixed dims: ``edgequant.inputs``) and a ``quantize`` node refuses NaN at both levels.
Inputs on a CUDA device run the graph there: its constants are moved to that device and tensors
the kernels make from attributes are made there (``torch.device`` as the default device); the
integer kernels give the same codes as on the CPU (exact integer arithmetic; the conv/matmul sums
on exact carriers, ``ops/matmul_kernels``). Float ops of the graph (a float16 island, float
code outside the quantized region) run torch's CUDA kernels, which need not round as the CPU's do.
``return_intermediates=True`` also returns ``{value name: tensor}`` for every value computed.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils import _pytree as pytree

from .inputs import (NonFiniteInputError, binding_error, bind_inputs, check_count, check_input,
                     check_quantizable, value_label)
from .ir import Graph, Node, set_runner
from .ops import calls_python, is_dequantize, is_float_op, is_quantize, run_int_node, spec_of
from .ops.call import call_target  # noqa: F401  (tests and users call a node's op with it)
from .ops.nonlinear import run_quant
from .qmath import fake_quantize



def _flatten_inputs(g: Graph, inputs) -> list:
    check_count(list(g.inputs), len(inputs))
    return list(inputs)


def _check_input(g: Graph, name: str, x) -> torch.Tensor:
    v = g.values[name]
    on_device = isinstance(x, torch.Tensor) and x.device.type in ("cpu", "cuda")
    return check_input(name, x, v.shape, v.dtype, cpu_only=not on_device)


def _device(env: dict) -> torch.device:
    """The one device of the tensor inputs (CPU without any); inputs on two devices are refused."""
    devs = {x.device for x in env.values() if isinstance(x, torch.Tensor)}
    if len(devs) > 1:
        raise ValueError(f"the inputs are on several devices ({', '.join(sorted(map(str, devs)))}); pass them all on "
                         "one (the graph runs where its inputs are)")
    return devs.pop() if devs else torch.device("cpu")


def _unflatten(g: Graph, flat: list):
    spec = g.meta.get("_pytree_out_spec")
    if spec is None and g.meta.get("out_spec"):
        try:
            spec = pytree.treespec_loads(g.meta["out_spec"])
        except Exception:
            spec = None
    if spec is not None:
        return pytree.tree_unflatten(flat, spec)
    return flat[0] if len(flat) == 1 else tuple(flat)


def _fq(t: torch.Tensor, g: Graph, name: str) -> torch.Tensor:
    qp = g.values[name].qparams
    return fake_quantize(t, qp.scale_tensor(), qp.zero_point_tensor(), qp.dtype, qp.ch_axis)


def _run_quant_node(g: Graph, node: Node, args: list, callables: dict, fake_quant: bool = True):
    if is_quantize(node.op):
        return _fq(args[0], g, node.outputs[0]) if fake_quant else args[0]
    if is_dequantize(node.op):
        return args[0]
    if "lut" in node.attrs:  # table ops run their integer kernel (ops/nonlinear.py)
        return run_quant(g, node, args, fake_quant, callables)
    if calls_python(node.op):
        fn = callables.get(node.attrs.get("callable_ref"))
        if fn is None:
            raise RuntimeError(f"node {node.name}: its Python callable is not part of a saved graph")
        out = fn(*args)
    elif is_float_op(node.op) and spec_of(node.op).kernel is not None:
        out = spec_of(node.op).kernel(g, node, args)   # a float row's own kernel (fake_cast's round trip)
    else:
        out = call_target(node, args)
    if node.attrs.get("fq") and fake_quant:
        out = _fq(out, g, node.outputs[0])
    return out


def run(g: Graph, *inputs, return_intermediates: bool = False, fake_quant: bool = True, reference: bool = False,
        **named):
    """Execute ``g`` on ``inputs`` (see the module docstring); inputs may also be given by their
    graph input names (``quantized(x=...)``).

    ``fake_quant=False`` runs a quant-level graph in plain float (the float model, with batch
    norms folded), for per-layer comparisons. ``reference=True`` runs an int-level graph
    through the plain-int reference kernels of the op table where an op has one (int64 sums
    instead of the fast float carriers): the same codes, much slower.
    """
    if named:
        inputs, problems = bind_inputs(list(g.inputs), inputs, named)
        if problems:
            raise binding_error(list(g.inputs), problems)
    flat = _flatten_inputs(g, inputs)
    env: dict[str, object] = {}
    for name, x in zip(g.inputs, flat):
        env[name] = _check_input(g, name, x)
    callables = g.meta.get("_callables", {})
    dev = _device(env)
    with contextlib.ExitStack() as stack:
        if dev.type != "cpu":   # on CUDA: constants follow the inputs; tensors kernels make, too
            stack.enter_context(torch.device(dev))
        return _run_nodes(g, env, dev, callables, fake_quant, reference, return_intermediates)


def _run_nodes(g: Graph, env: dict, dev: torch.device, callables: dict, fake_quant: bool, reference: bool,
               return_intermediates: bool):
    quant_sim = g.level == "quant" and fake_quant  # quantize nodes refuse NaN as the integer model does
    consts = {name: c.to(dev) for name, c in g.constants.items()}
    if g.level == "quant":
        for name, c in consts.items():
            qp = g.values[name].qparams
            env[name] = _fq(c, g, name) if qp is not None and c.is_floating_point() and fake_quant else c
        step = lambda node, args: _run_quant_node(g, node, args, callables, fake_quant)  # noqa: E731
    else:
        env.update(consts)
        step = lambda node, args: run_int_node(g, node, args, callables, reference)  # noqa: E731
    with torch.no_grad():
        for node in g.nodes:
            args = [env[i] if i is not None else None for i in node.inputs]
            if quant_sim and is_quantize(node.op) and isinstance(args[0], torch.Tensor):
                check_quantizable(args[0], value_label(g.inputs, node.inputs[0]), f"quantize node {node.name!r}")
            try:
                out = step(node, args)
            except NonFiniteInputError:
                raise  # names its node already (the integer model's quantize step)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise type(exc)(f"{exc}\n  while running node {node.name!r} ({node.op}) from {node.source}") from exc
            except (LookupError, AttributeError, ArithmeticError, AssertionError) as exc:  # never raw from a kernel
                raise RuntimeError(f"{type(exc).__name__}: {exc}\n  while running node {node.name!r} ({node.op}) "
                                   f"from {node.source}") from exc
            if len(node.outputs) == 1:
                env[node.outputs[0]] = out
            else:
                for o, t in zip(node.outputs, out):
                    env[o] = t
    result = _unflatten(g, [env[o] if isinstance(o, str) else o for o in g.outputs])
    return (result, env) if return_intermediates else result


set_runner(run)   # ``Graph.__call__`` runs graphs through this module
