"""Argument checks of the public entry points: an obvious misuse gets one clear error.

Takes what a user passed to a public function, with the function's and the argument's names;
returns it unchanged, or raises a ``TypeError`` (the wrong kind of object) or ``ValueError``
(the right kind, unusable: a float model where a prepared one is needed, an unknown name)
that names the function, the argument, what it got and what to pass instead. Public functions
call these in their first lines. They check what kind of object arrived (``None``, a string,
a float model, a prepared model, an exported ``Graph``), never its contents: each stage checks
those itself (``fake_quant.expect_fake_quant``, for a model holding fake-quant modules, lives
with the modules it looks for). The scalar checks (``expect_int``, ``expect_real``, ``expect_flag``, ``expect_choice``,
``expect_tensor``) refuse what would be silently misread: a bool where a count belongs, NaN, a
string where a number belongs, a number where a flag belongs.
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
    import numpy as np
    import torch

    if value is None or isinstance(value, (str, bytes, torch.Tensor, Graph, nn.Module, dict, np.ndarray)):
        hint = "; for one batch x pass [x], or x.split(batch_size)" if isinstance(value, torch.Tensor) else \
            "; convert it with torch.from_numpy and pass [x]" if isinstance(value, np.ndarray) else ""
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


def expect_tensor(value, fn: str, arg: str):
    """``value`` if it is a ``torch.Tensor``."""
    import torch

    if not isinstance(value, torch.Tensor):
        import numpy as np

        hint = "; convert it with torch.from_numpy" if isinstance(value, np.ndarray) else ""
        raise TypeError(f"{fn}: {arg} must be a torch.Tensor, got {describe(value)}{hint}")
    return value


def _is_bool(value) -> bool:
    import numpy as np

    return isinstance(value, (bool, np.bool_))


def expect_int(value, fn: str, arg: str, *, lo: int | None = None, none: bool = False):
    """``value`` if it is an integer (not a bool) ``>= lo``; ``None`` too when ``none``."""
    import numbers

    import torch

    if value is None and none:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value)
    if not isinstance(value, numbers.Integral) or _is_bool(value):
        raise TypeError(f"{fn}: {arg} must be an int{' or None' if none else ''}, got {describe(value)}"
                        + (f" ({value!r})" if isinstance(value, (bool, float)) else ""))
    if lo is not None and value < lo:
        raise ValueError(f"{fn}: {arg} must be >= {lo}, got {value}")
    return value


def expect_real(value, fn: str, arg: str, *, positive: bool = False, nonneg: bool = False, none: bool = False,
                tensor: bool = False):
    """``value`` if it is a finite real number (``positive``: > 0, ``nonneg``: >= 0); ``None`` too
    when ``none``; a floating or integer tensor too when ``tensor`` (checked elementwise)."""
    import math
    import numbers

    import torch

    if value is None and none:
        return value
    if isinstance(value, torch.Tensor) and (tensor or value.numel() == 1) and value.dtype not in (
            torch.bool, torch.complex64, torch.complex128):
        vals = value.detach().double()
    elif isinstance(value, numbers.Real) and not _is_bool(value):
        vals = torch.tensor(float(value), dtype=torch.float64)
    else:
        kinds = "a number" + (" or a tensor" if tensor else "") + (" or None" if none else "")
        raise TypeError(f"{fn}: {arg} must be {kinds}, got {describe(value)}"
                        + (f" ({value!r})" if _is_bool(value) else ""))
    if vals.numel() and not bool(torch.isfinite(vals).all()):
        raise ValueError(f"{fn}: {arg} must be finite, got {value if vals.numel() == 1 else 'a tensor with NaN/Inf'}")
    if vals.numel() and positive and not bool((vals > 0).all()):
        raise ValueError(f"{fn}: {arg} must be > 0, got {float(vals.min())}")
    if vals.numel() and nonneg and not bool((vals >= 0).all()):
        raise ValueError(f"{fn}: {arg} must be >= 0, got {float(vals.min())}")
    return value


def expect_flag(value, fn: str, arg: str):
    """``value`` if it is a bool (``0`` and ``1`` pass too: they are what C-style code passes)."""
    import numbers

    if _is_bool(value) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return value
    raise TypeError(f"{fn}: {arg} must be True or False, got {describe(value)}"
                    + (f" ({value!r})" if isinstance(value, (int, float)) else ""))


def expect_choice(value, fn: str, arg: str, choices):
    """``value`` if it is a ``str`` among ``choices``."""
    if not isinstance(value, str) or value not in choices:
        got = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"{fn}: {arg} must be one of {', '.join(map(repr, choices))}, got {got}")
    return value


def expect_callable(value, fn: str, arg: str, *, none: bool = False):
    """``value`` if it can be called (a function, a lambda, a module); ``None`` too when ``none``."""
    if (value is None and none) or (callable(value) and not isinstance(value, Graph)):
        return value
    raise TypeError(f"{fn}: {arg} must be a function{' or None' if none else ''}, got {describe(value)}")


__all__ = ["describe", "is_prepared", "expect_graph", "expect_module", "expect_prepared", "expect_path",
           "expect_batches", "check_batch", "expect_tensor", "expect_int", "expect_real", "expect_flag",
           "expect_choice", "expect_callable"]
