"""Argument checks of the public entry points: an obvious misuse gets one clear error.

Takes what a user passed to a public function, with the function's and the argument's names;
returns it unchanged, or raises a ``TypeError`` (the wrong kind of object) or ``ValueError``
(the right kind, unusable: a float model where a prepared one is needed, an unknown name)
that names the function, the argument, what it got and what to pass instead. Public functions
call these in their first lines. They check what kind of object arrived (``None``, a string,
a float model, a prepared model, an exported ``Graph``), never its contents: each stage checks
those itself.
"""
from __future__ import annotations

import os

from torch import fx, nn

from .ir import Graph

PREPARE_HINT = "edgequant.prepare(model, example_inputs, qconfig_setter=(...,))"


def describe(value) -> str:
    """What ``value`` is, in a few words (for error messages)."""
    if value is None:
        return "None"
    if isinstance(value, Graph):
        return f"an edgequant Graph (level {value.level!r})"
    if is_prepared(value):
        return "a prepared model (what edgequant.prepare returns)"
    if isinstance(value, nn.Module):
        return f"a float nn.Module ({type(value).__name__})"
    if isinstance(value, str):
        return f"a str ({value[:60]!r})"
    name = type(value).__qualname__ if type(value).__module__ == "builtins" else \
        f"{type(value).__module__}.{type(value).__qualname__}"
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def is_prepared(value) -> bool:
    """Whether ``value`` is a model that ``edgequant.prepare`` returned."""
    return isinstance(value, fx.GraphModule) and "edgequant" in getattr(value, "meta", {})


def has_fake_quant(model: nn.Module) -> bool:
    from .fake_quant import FakeQuantize

    return any(isinstance(m, FakeQuantize) for m in model.modules())


def _hint(value) -> str:
    if isinstance(value, Graph):
        return "; a Graph is already exported: call it (g(*inputs)), save it, or convert it"
    if is_prepared(value):
        return "; export it first: edgequant.export(model)"
    if isinstance(value, nn.Module):
        return f"; prepare, calibrate and export it first ({PREPARE_HINT})"
    if isinstance(value, (str, os.PathLike)):
        return "; to read a saved .eqm file use edgequant.load(path)"
    return ""


def expect_graph(value, fn: str, arg: str) -> Graph:
    """``value`` if it is an edgequant ``Graph`` (what export, convert and load return)."""
    if not isinstance(value, Graph):
        raise TypeError(f"{fn}: {arg} must be an edgequant Graph (what export, convert or load return), "
                        f"got {describe(value)}{_hint(value)}")
    return value


def expect_module(value, fn: str, arg: str) -> nn.Module:
    """``value`` if it is a torch ``nn.Module``."""
    if not isinstance(value, nn.Module):
        hint = "; a Graph runs as g(*inputs) and needs no preparing" if isinstance(value, Graph) else ""
        raise TypeError(f"{fn}: {arg} must be a torch nn.Module, got {describe(value)}{hint}")
    return value


def expect_fake_quant(value, fn: str, arg: str) -> nn.Module:
    """``value`` if it is a module with edgequant fake quantization (a prepared model, or a module
    that holds one, such as a DistributedDataParallel wrapper)."""
    expect_module(value, fn, arg)
    if not has_fake_quant(value) and not is_prepared(value):
        raise ValueError(f"{fn}: {arg} ({type(value).__name__}) has no edgequant fake-quant modules; pass the "
                         f"model that edgequant.prepare returned, not the float model ({PREPARE_HINT})")
    return value


def expect_prepared(value, fn: str, arg: str) -> fx.GraphModule:
    """``value`` if it is the very model that ``edgequant.prepare`` returned."""
    if not is_prepared(value):
        raise TypeError(f"{fn}: {arg} must be a model returned by edgequant.prepare, got {describe(value)}"
                        + (f" ({PREPARE_HINT})" if isinstance(value, nn.Module) and not isinstance(value, Graph)
                           else _hint(value)))
    return value


def expect_graph_or_prepared(value, fn: str, arg: str):
    """``value`` if it is an edgequant ``Graph`` or a model that ``edgequant.prepare`` returned."""
    if not isinstance(value, Graph) and not is_prepared(value):
        hint = f" ({PREPARE_HINT})" if isinstance(value, nn.Module) else _hint(value)
        raise TypeError(f"{fn}: {arg} must be an edgequant Graph or a model returned by edgequant.prepare, "
                        f"got {describe(value)}{hint}")
    return value


def expect_path(value, fn: str, arg: str):
    """``value`` if it is a file path (a ``str`` or ``os.PathLike``)."""
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise TypeError(f"{fn}: {arg} must be a file path (str or pathlib.Path), got {describe(value)}")
    return value


def expect_batches(value, fn: str, arg: str):
    """``value`` if it is an iterable of batches (a list, tuple, generator or DataLoader)."""
    import torch

    if value is None or isinstance(value, (str, bytes, torch.Tensor, Graph, nn.Module, dict)):
        hint = "; for one batch x pass [x], or x.split(batch_size)" if isinstance(value, torch.Tensor) else ""
        raise TypeError(f"{fn}: {arg} must be an iterable of batches (a list, generator or DataLoader of "
                        f"tensors, tuples of tensors or dicts), got {describe(value)}{hint}")
    try:
        iter(value)
    except TypeError:
        raise TypeError(f"{fn}: {arg} must be an iterable of batches (a list, generator or DataLoader), "
                        f"got {describe(value)}, which is not iterable") from None
    return value


def check_batch(batch, index: int, fn: str) -> None:
    """One calibration batch: a tensor, a tuple/list of model inputs or a dict of keyword inputs.
    Refuses what can never be a model input (None, text, numbers, numpy arrays, models, graphs)."""
    import numpy as np

    never = (type(None), str, bytes, int, float, np.ndarray, nn.Module, Graph)
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    array = next((i for i in items if isinstance(i, np.ndarray)), None)
    if isinstance(batch, never) or array is not None:
        got = describe(batch) if array is None else f"{describe(batch)} holding a numpy array"
        hint = "; convert arrays with torch.from_numpy" if array is not None or isinstance(batch, np.ndarray) else ""
        raise TypeError(f"{fn}: batch {index} must be a tensor, a tuple/list of the model's inputs or a dict of "
                        f"keyword inputs, got {got}{hint}")


__all__ = ["describe", "is_prepared", "has_fake_quant", "expect_graph", "expect_module", "expect_fake_quant",
           "expect_prepared", "expect_path", "expect_batches", "check_batch"]
