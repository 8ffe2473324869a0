"""Inputs: what a model is called with, checked against what it was traced with.

Takes the traced description of each input (its name, its shape with ``int`` dims that tracing
fixed and ``str`` dims, such as ``"s0"``, that may change between calls, and its dtype name)
and the tensors of a call; returns each input (an integer tensor given for a float input
converted, see below) or raises an error that names the input, its shape or dtype and the
traced one. The prepared model (``add_call_check``: a forward pre-hook that ``prepare``
registers) and the graphs ``export`` and ``convert`` return (``run.run``) share these checks:

- the number of inputs (``TypeError``), each a tensor (``TypeError``), of the traced dtype kind:
  float, integer or bool (``TypeError``); its rank and every fixed dim (``ValueError``); an
  integer tensor given for a float input is converted to the traced float dtype (exact below
  2^24), as ``insert_yuv2rgb``'s int8 codes and uint8 frames need; a tensor on the
  ``meta`` device is refused (``ValueError``), and by the graphs (CPU kernels) one on any device
  but the CPU;
- ``shape_of`` writes a traced shape: a dim that torch.export specialised while tracing (a
  Python loop over the batch, ``x.view(2, -1)``) is an ``int``, even where the fake tensor
  still holds it as a ``SymInt``.

Non-finite values at a quantize step (a float tensor entering the quantized region: the
integer model's ``quantize`` nodes, the matching entry fake-quants of the prepared model in
VALIDATION and QAT (``guard_entry``), and the ``quantize`` nodes of the quant-level graph)
follow one policy, ``check_quantizable``:

- NaN raises ``NonFiniteInputError`` (a ``ValueError``) naming the value, how many NaN values
  it holds and where the first one is: quantizing NaN is undefined, and the integer model has
  no code for it;
- +Inf and -Inf saturate to the largest and smallest code of the value's grid, exactly as a
  finite value beyond the calibrated range does (the NPU's quantize saturates the same way);
  masks that use ``-inf`` keep working.

Calibration is stricter: observers raise for NaN and Inf (a range must be finite).
"""
from __future__ import annotations

import functools

import torch


class NonFiniteInputError(ValueError):
    """A quantize step was given NaN values; the message names the value and the first index."""


def shape_of(val) -> tuple:
    """The traced shape of a fake tensor: ints for fixed dims, the symbol's name for dynamic ones."""
    out = []
    for d in val.shape:
        if isinstance(d, torch.SymInt):
            fixed = d.node.maybe_as_int()  # specialised while tracing: a constant in a SymInt
            out.append(int(fixed) if fixed is not None else str(d))
        else:
            out.append(int(d))
    return tuple(out)


def dtype_kind(dtype) -> str:
    """``"float"``, ``"bool"``, ``"complex"`` or ``"integer"`` for a torch dtype or a dtype name."""
    name = str(dtype).replace("torch.", "")
    if name == "bool":
        return "bool"
    if "complex" in name:
        return "complex"
    return "float" if "float" in name else "integer"


_CONVERT = {"float": "float()", "integer": "long()", "bool": "bool()", "qint8": "to(torch.int8)",
            "quint8": "to(torch.uint8)", "qint16": "to(torch.int16)", "qint32": "to(torch.int32)"}
_FLOATS = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_count(names: list[str], given: int) -> None:
    """Raise ``TypeError`` unless ``given`` inputs were passed for the traced ``names``."""
    if given != len(names):
        raise TypeError(f"the model takes {len(names)} input{'s' if len(names) != 1 else ''} "
                        f"({', '.join(names)}), got {given}")


def check_input(name: str, x, shape, dtype: str, cpu_only: bool = False) -> torch.Tensor:
    """``x`` if it is a tensor of ``dtype``'s kind whose shape matches the traced ``shape``, else
    raise. An integer tensor for a float input (uint8 camera frames, int8 YUV codes) comes back
    converted to the traced float dtype, exactly for values below 2^24: the graph was traced in
    float, and integer arithmetic on it could wrap.

    ``shape`` holds ints for fixed dims and strings for dims that may vary (see the module
    docstring); symbolic sizes of ``x`` (the prepared model traced again) are not compared.
    A tensor on the ``meta`` device (no values) is refused, and with ``cpu_only`` (the graphs
    ``export`` and ``convert`` return: their kernels run on the CPU) any non-CPU tensor.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input {name!r} must be a tensor, got {type(x).__name__}")
    if x.device.type == "meta" or cpu_only and x.device.type != "cpu":
        raise ValueError(f"input {name!r} is on device {x.device}; "
                         + ("a meta tensor has no values to quantize: pass a tensor with data (on the CPU)"
                            if x.device.type == "meta" else "the integer model runs on the CPU: pass x.cpu()"))
    want, got = dtype_kind(dtype), dtype_kind(x.dtype)
    if want == "float" and got == "integer":
        x = x.to(_FLOATS.get(str(dtype), torch.float32))
    elif want != got:
        raise TypeError(
            f"input {name!r} has dtype {str(x.dtype).replace('torch.', '')} but the model was traced with "
            f"{dtype} ({want}); pass a{'n' if want == 'integer' else ''} {want} tensor "
            f"(e.g. x.{_CONVERT.get(str(dtype), _CONVERT.get(want, 'to(...)'))})")
    fixed_ok = all(not isinstance(d, int) or isinstance(n, torch.SymInt) or d == n for d, n in zip(shape, x.shape))
    if len(shape) != x.dim() or not fixed_ok:
        raise ValueError(
            f"input {name!r} has shape {_shape_text(tuple(x.shape))} but the model was traced with "
            f"{_shape_text(shape)}: numbered dims are fixed (the model's code fixed them when traced), named "
            "dims may vary; pass an input of the traced shape, or prepare the model with an example of this "
            "shape (a model that loops over the batch or reshapes with a literal size fixes the batch size)")
    return x


def value_label(inputs, name: str) -> str:
    """``input 'x'`` for a graph input, ``value 'add_1'`` for any other value."""
    return f"input {name!r}" if name in inputs else f"value {name!r}"


def check_quantizable(x: torch.Tensor, what: str, step: str) -> None:
    """Raise ``NonFiniteInputError`` if ``x`` holds NaN (the module docstring's policy).

    ``what`` names the value (``"input 'x'"``), ``step`` the quantize step that refuses it.
    One ``isfinite`` pass when ``x`` is finite, as it nearly always is.
    """
    if not x.is_floating_point() or x.numel() == 0 or bool(torch.isfinite(x).all()):
        return
    nan = torch.isnan(x)
    count = int(nan.sum())
    if count == 0:
        return  # only +-Inf: saturates like any value beyond the range
    first = tuple(int(i) for i in nan.nonzero()[0].tolist())
    raise NonFiniteInputError(
        f"{what} holds {count} NaN value{'s' if count != 1 else ''} (first at index {first}); {step} cannot "
        "quantize NaN (it has no integer code): replace or mask the NaN values before calling the model "
        "(+-Inf saturate to the ends of the grid)")


# -- the prepared model: forward pre-hooks that ``prepare`` registers --------------------------------
def add_call_check(gm) -> None:
    """Check every call of the prepared model ``gm`` before its graph runs (``check_call``), so
    a wrong input gets an error naming it and its traced shape, not torch.export's guard text or
    a kernel's complaint. A deep copy registers the hook again (GraphModule copies drop forward
    hooks but run their deepcopy hooks)."""
    gm.register_forward_pre_hook(check_call, with_kwargs=True, prepend=True)
    type(gm).__reduce_ex__ = _refuse_pickle   # fx gives every GraphModule a class of its own
    if _readd_call_check not in getattr(gm, "_deepcopy_hooks", []):
        gm._register_deepcopy_hook(_readd_call_check)


def _readd_call_check(clone) -> None:
    clone.register_forward_pre_hook(check_call, with_kwargs=True, prepend=True)
    type(clone).__reduce_ex__ = _refuse_pickle


def _refuse_pickle(self, protocol=None):
    """A prepared model holds torch.export's closures, which pickle cannot write: say what to do
    instead of pickle's "Can't pickle local object" (``copy.deepcopy`` works)."""
    raise TypeError("a prepared model cannot be pickled (pickle, torch.save(model), multiprocessing); keep its "
                    "calibrated state with safetensors.torch.save_file(model.state_dict(), path) and load it into "
                    "a model prepared the same way, or export and convert it and write it with edgequant.save")


_MISSING = object()


def bind_inputs(names: list[str], args: tuple, kwargs: dict, optional=frozenset()) -> tuple[list, list[str]]:
    """The call's inputs in the order of ``names`` (positional ``args``, then ``kwargs`` by name;
    an absent input is ``_MISSING``) and what is wrong with the call: an input given twice, an
    unknown keyword, an input missing that is not ``optional``. Too many positional inputs raise."""
    if len(args) > len(names):
        check_count(names, len(args))
    problems = [f"{k!r} twice" if k in names[:len(args)] else f"the unknown keyword {k!r}"
                for k in kwargs if k not in names[len(args):]]
    inputs = list(args) + [kwargs.get(n, _MISSING) for n in names[len(args):]]
    problems += [f"no {n!r}" for n, x in zip(names, inputs) if x is _MISSING and n not in optional]
    return inputs, problems


def binding_error(names: list[str], problems: list[str]) -> TypeError:
    """The error for a call whose inputs ``bind_inputs`` found wrong."""
    return TypeError(f"the model takes {len(names)} input{'s' if len(names) != 1 else ''} ({', '.join(names)}); "
                     "got " + ", ".join(problems))


def check_call(gm, args: tuple, kwargs: dict):
    """The forward pre-hook: the call's inputs against the graph's placeholders. Inputs given
    by keyword are passed on by position when every input is given (torch.export's own check
    would refuse keywords for a model traced with positional examples), an integer tensor for a
    float input as a float tensor (``check_input``)."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    names = [str(p.target) for p in placeholders]
    inputs, problems = bind_inputs(names, args, kwargs, optional={str(p.target) for p in placeholders if p.args})
    for i, (p, x) in enumerate(zip(placeholders, inputs)):   # p.args: the forward's default
        val = p.meta.get("val")
        if x is not _MISSING and isinstance(val, torch.Tensor):
            inputs[i] = check_input(names[i], x, shape_of(val), str(val.dtype).replace("torch.", ""))
    if problems:
        raise binding_error(names, problems)
    if all(x is not _MISSING for x in inputs) and (kwargs or any(a is not b for a, b in zip(args, inputs))):
        return tuple(inputs), {}  # keywords by position, integer tensors for float inputs converted
    return None


def guard_entry(gm, fq_node, src) -> None:
    """Make the fake-quant that ``fq_node`` calls refuse NaN in ``src`` (an fx node) as the
    integer model's ``quantize`` node does: a forward pre-hook, active in VALIDATION and QAT
    (CALIBRATION's observers refuse NaN and Inf themselves)."""
    inputs = [str(p.target) for p in gm.graph.find_nodes(op="placeholder")]
    fq = gm.get_submodule(str(fq_node.target))
    fq.register_forward_pre_hook(functools.partial(_refuse_nan, value_label(inputs, src.name)))


def _refuse_nan(what: str, fq, args: tuple) -> None:
    state = getattr(fq.state, "value", fq.state)
    if state in ("validation", "qat") and isinstance(args[0], torch.Tensor):
        check_quantizable(args[0], what, f"the fake-quant {fq.name!r} ({state})")
