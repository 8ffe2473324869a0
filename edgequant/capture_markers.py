"""How QuantStubs, leaf modules and wrapped functions survive torch.export: marker ops in, nodes out.

Takes the model being captured (a deep copy, its stubs and leaf modules patched for the duration
of the trace by ``markers``) and, after the trace, the exported ``GraphModule``. During the trace
every QuantStub / DeQuantStub (ours or torch.ao's) calls the ``edgequant::stub`` op and every
leaf module (SegmentLUT, FakeCast, the ``leaf_modules`` of ``capture``) or wrapped function (``call_leaf``)
the ``edgequant::leaf`` op, keyed by position in the lists that ``recorded`` returns; torch.export
records them as opaque calls. ``rewrite_markers`` then turns stub markers into
``quant_point``/``dequant_point`` calls (``meta["eq_path"]``, ``meta["eq_stub"]``) and leaf markers
into ``call_module`` nodes that run the original Python (``meta["eq_leaf"]``). ``CaptureError``
is the error capture raises, here for a leaf that does not return one tensor.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable

import torch
from torch import fx, nn

from .nn.fake_cast import FakeCast
from .nn.segment_lut import SegmentLUT
from .nn.stubs import DeQuantStub, QuantStub, dequant_point, quant_point

try:  # torch.ao's stubs are accepted like ours (seed 002 imports them from torch.quantization)
    from torch.ao.quantization import DeQuantStub as _AoDeQuantStub, QuantStub as _AoQuantStub
except ImportError:  # pragma: no cover
    _AoQuantStub = _AoDeQuantStub = ()

QUANT_STUBS = (QuantStub, _AoQuantStub)
DEQUANT_STUBS = (DeQuantStub, _AoDeQuantStub)


class CaptureError(RuntimeError):
    """The model could not be captured; the message names the op or source line and what to do."""


# -- marker ops: how stubs and opaque calls survive torch.export --------------------------------
_LEAVES: list[Callable] = []  # callables of the capture in progress, indexed by the marker's key


@torch.library.custom_op("edgequant::stub", mutates_args=())
def _stub_op(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.clone()


@_stub_op.register_fake
def _(x, key):
    return torch.empty_like(x)


@torch.library.custom_op("edgequant::leaf", mutates_args=())
def _leaf_op(xs: list[torch.Tensor], key: int) -> torch.Tensor:
    return _LEAVES[key](*xs)


@_leaf_op.register_fake
def _(xs, key):
    # Run the real callable once on zeros of the traced shapes to learn the output shape;
    # dimensions that equal an input's dimension keep that dimension's symbol.
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def hint(d):
        return d.node.hint if isinstance(d, torch.SymInt) else int(d)

    with unset_fake_temporarily():
        real = [torch.zeros([hint(d) for d in x.shape], dtype=x.dtype) for x in xs]
        out = _LEAVES[key](*real)
    if not isinstance(out, torch.Tensor):
        raise CaptureError("a wrapped function or leaf module must return one tensor")
    ref = xs[0]
    shape = [ref.shape[i] if i < ref.dim() and hint(ref.shape[i]) == n else n for i, n in enumerate(out.shape)]
    return ref.new_empty(shape, dtype=out.dtype)


_STUB_KEYS: dict[int, str] = {}


@contextlib.contextmanager
def markers(model: nn.Module, leaf_types: tuple):
    """Make stubs and leaf modules of ``model`` call marker ops while it is exported."""
    patched = []
    _LEAVES.clear()
    _STUB_KEYS.clear()
    for path, mod in model.named_modules():
        if isinstance(mod, QUANT_STUBS) or isinstance(mod, DEQUANT_STUBS):
            key = len(_STUB_KEYS)
            _STUB_KEYS[key] = path
            mod.forward = functools.partial(torch.ops.edgequant.stub, key=key)
            patched.append(mod)
        elif isinstance(mod, (SegmentLUT, FakeCast, *leaf_types)) and path:
            key = len(_LEAVES)
            _LEAVES.append(_unpatched(mod))
            mod.forward = lambda *xs, _k=key: torch.ops.edgequant.leaf(list(xs), _k)
            patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward


def _unpatched(mod: nn.Module) -> nn.Module:
    """A shallow copy of ``mod`` whose ``forward`` is the class's, for running the leaf itself."""
    clone = copy.copy(mod)
    clone.__dict__.pop("forward", None)
    return clone


def call_leaf(fn: Callable, tensors: list) -> torch.Tensor:
    """Record ``fn`` (a wrapped function's call) and call the leaf marker op on ``tensors``."""
    key = len(_LEAVES)
    _LEAVES.append(fn)
    return torch.ops.edgequant.leaf(tensors, key)


def recorded() -> tuple[list, dict]:
    """``(leaf callables, stub paths)`` of the trace in progress, by marker key."""
    return list(_LEAVES), dict(_STUB_KEYS)


class _LeafCall(nn.Module):
    """Holds a wrapped function as a submodule so the graph can call it."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def rewrite_markers(gm: fx.GraphModule, leaves: list, stub_paths: dict, work: nn.Module) -> None:
    """Turn marker ops into ``quant_point``/``dequant_point`` calls and leaf ``call_module`` nodes."""
    modules = dict(work.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.edgequant.stub.default:
            path = stub_paths[node.args[1]]
            stub = modules[path]
            node.target = quant_point if isinstance(stub, QUANT_STUBS) else dequant_point
            node.args = (node.args[0],)
            node.meta["eq_path"] = path
            node.meta["eq_stub"] = stub
        elif node.target is torch.ops.edgequant.leaf.default:
            fn = leaves[node.args[1]]
            owner = fn if isinstance(fn, nn.Module) else None
            name = f"eq_leaf_{node.args[1]}"
            gm.add_submodule(name, owner if isinstance(owner, nn.Module) else _LeafCall(fn))
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, tuple(node.args[0]))
            new.meta.update(node.meta)
            new.meta["eq_leaf"] = owner if isinstance(owner, nn.Module) else fn
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
