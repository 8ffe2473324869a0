"""Capture: a float ``nn.Module`` and example inputs -> a torch.fx ``GraphModule`` of canonical ops.

Takes the user's model (never modified: a deep copy is traced) and example inputs (a tensor or a
tuple of tensors); returns a ``GraphModule`` whose every ``call_function`` node is annotated in
``node.meta``:

- ``eq_spec``: the ``OpSpec`` of the op (``None`` for non-float plumbing such as index math),
- ``eq_path``: the module path the op was called from, ``eq_name``: a unique readable name,
- ``eq_source``: the user's source line (``file:line: code``) for error messages,
- ``val``: a fake tensor with the traced shape and dtype.

Capture uses ``torch.export`` in non-strict mode, which runs the model's Python (so Hugging Face
models trace unedited) and records aten ops with symbolic shapes; every dimension is dynamic
for integer inputs and the batch dim of float inputs, unless the model fixes them, so later
calls may use other batch sizes. A dim the model fixes (a Python loop over the batch,
``x.view(2, -1)``) is specialised by torch.export: the placeholder's ``val`` then holds a
number there (``inputs.shape_of``), and an example batch of one, otherwise traced doubled, is
traced as given. QuantStub and DeQuantStub calls become marker nodes
(``quant_point``/``dequant_point``); SegmentLUT, the ``leaf_modules`` and functions decorated
with ``wrap`` become opaque ``call_module`` nodes that run the original Python (the marker ops
that carry them through torch.export are ``capture_markers``'). A program with in-place ops is
traced again functionalized, ``scaled_dot_product_attention`` is decomposed into matmul,
softmax and mask ops so attention quantizes op by op, and convolutions with
``padding="same"`` get explicit padding (``capture_rewrite``). Eval-mode dropout, aliasing ops,
casts that keep the dtype (``pixel_values.to(self.dtype)``) and empty 1-D ``cat`` inputs are
removed, and float tensors the forward builds from constants alone (Swin's window mask) become
buffers. ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` are traced unrolled over time steps
(``capture_rnn``); the LSTM cell state is marked ``meta["eq_rnn_state"]`` for the templates.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import logging
import operator
import sys
import traceback
from typing import Callable, Sequence

import torch
from torch import fx, nn

from .capture_markers import CaptureError, call_leaf, markers, recorded, rewrite_markers
from .capture_rnn import mark_states, unrolled_rnns
from .capture_rewrite import batch_norm_as_one_node, cast_integer_operands, drop_noops, expand_dynamic_fills, \
    fold_made_constants, retrace_table
from .inputs import shape_of
from .nn.fake_cast import FakeCast
from .nn.segment_lut import SegmentLUT
from .nn.stubs import dequant_point, quant_point
from .ops import FAKE_CAST, SEGMENT_LUT, spec_for_target


# -- wrap: a function kept out of the graph (a leaf marker while exporting) ---------------------
class _Wrapped:
    """A function kept opaque by ``wrap``: traced as one float node."""

    def __init__(self, fn: Callable):
        functools.update_wrapper(self, fn)
        self.fn = fn

    def __call__(self, *args):
        if not _EXPORTING[0]:
            return self.fn(*args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        others = [(i, a) for i, a in enumerate(args) if not isinstance(a, torch.Tensor)]

        def call(*ts, _fn=self.fn, _others=others, _n=len(args)):
            it = iter(ts)
            fixed = dict(_others)
            return _fn(*[fixed[i] if i in fixed else next(it) for i in range(_n)])

        call.__name__ = getattr(self.fn, "__name__", "wrapped")
        return call_leaf(call, tensors)


_EXPORTING = [False]


def wrap(fn: Callable) -> Callable:
    """Decorator: keep ``fn`` out of the graph; it runs as Python, in float, at every stage.

    Use it for code that cannot or should not be traced (NumPy, data-dependent control flow,
    pre/post-processing). ``fn`` takes tensors (and constants) and returns one tensor.
    """
    if not callable(fn):
        raise TypeError(f"edgequant.wrap takes a function (use it as @edgequant.wrap), got {type(fn).__name__}")
    return _Wrapped(fn)


# -- source lines and names ------------------------------------------------------------------------
def _user_frame(stack_trace: str | None) -> str:
    """The innermost frame of ``stack_trace`` outside torch, as ``file:line: code``."""
    if not stack_trace:
        return "<unknown source>"
    lines = stack_trace.strip().splitlines()
    frames = []
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith("File "):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            frames.append((line, code))
    for line, code in reversed(frames):
        if "/torch/" not in line and "/edgequant/" not in line:
            parts = line.split('"')
            file = parts[1] if len(parts) > 1 else line
            lineno = line.split("line ")[-1].split(",")[0]
            return f"{file}:{lineno}: {code}"
    return frames[-1][0] if frames else "<unknown source>"


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def _frames_from_exception(exc: BaseException) -> str:
    """The user's line where tracing failed: the innermost user frame of the traceback, else
    (a failure while the traced graph was retraced, which runs no user code) the node's own
    source line, which torch.fx appends to the message after "Original traceback:"."""
    tb = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(tb):
        if "/torch/" not in fr.filename and "/edgequant/" not in fr.filename:
            return f"{fr.filename}:{fr.lineno}: {fr.line}"
    e = exc
    for _ in range(4):   # the exception and what it chains
        if e is None:
            break
        text = str(e)
        if "Original traceback:" in text:
            return _user_frame(text.split("Original traceback:", 1)[1])
        e = e.__cause__ or e.__context__
    return "<unknown source>"


# -- capture ---------------------------------------------------------------------------------------
def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _dynamic_dims(a):
    """Which dims of an input may change after capture: the batch dim of float inputs, every dim
    of integer inputs (token ids and masks change length); torch.export keeps a dim static where
    the model fixes it."""
    if not isinstance(a, torch.Tensor) or a.dim() == 0:
        return None
    auto = torch.export.Dim.AUTO
    dims = range(a.dim()) if not a.is_floating_point() else range(1)
    return {d: auto for d in dims}


_EXPORT_LOGGERS = ("torch._export", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet_export():
    """Keep torch.export's log lines and the partial graph it prints to stderr when a trace fails
    off the user's screen (``capture`` reports the failure as one ``CaptureError``); whatever
    else reaches stderr meanwhile (the model's own prints, warnings) is written out afterwards."""
    loggers = [logging.getLogger(n) for n in _EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    except BaseException as exc:
        text, e = buf.getvalue(), exc
        for _ in range(4):   # the exception and what it chains
            if e is None:
                break
            if getattr(e, "partial_fx_graph", None) is not None:
                text = text.replace(f"{e.partial_fx_graph}\n", "")   # printed once per wrapper
            e = e.__cause__ or e.__context__
        sys.stderr.write(text)
        raise
    else:
        sys.stderr.write(buf.getvalue())
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(work: nn.Module, args: tuple, shapes, leaf_modules) -> tuple:
    """``(exported program, leaf callables, stub paths)`` of one torch.export trace."""
    with markers(work, tuple(leaf_modules)), unrolled_rnns(work), _quiet_export():
        ep = torch.export.export(work, args, dynamic_shapes=shapes, strict=False)
        table = retrace_table(ep)
        if table is not None:   # retracing costs a second or two: only when needed
            ep = ep.run_decompositions(table)
    return (ep, *recorded())


def _batch_fixed(ep, doubled: list[bool]) -> bool:
    """Whether tracing fixed dim 0 of an input whose batch of one was doubled (see ``capture``)."""
    users = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in users]
    if len(vals) != len(doubled):
        return False
    return any(d and isinstance(v, torch.Tensor) and v.dim() > 0 and isinstance(shape_of(v)[0], int)
               for d, v in zip(doubled, vals))


def capture(model: nn.Module, example_inputs, leaf_modules: Sequence[type] = (),
            dynamic: bool = True) -> fx.GraphModule:
    """Trace ``model`` on ``example_inputs`` into an annotated GraphModule (see module doc)."""
    args = _as_tuple(example_inputs)
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and not torch.isfinite(a).all():
            raise ValueError(f"example input {i} contains NaN or Inf; capture needs finite example data")
        if isinstance(a, torch.Tensor) and a.numel() == 0:
            raise ValueError(f"example input {i} is empty (shape {tuple(a.shape)}); capture needs an example with at "
                             "least one sample (the prepared and integer models accept empty batches later)")
    # torch.export treats size-1 dims as static: trace a batch of one as two copies so the batch
    # dim stays dynamic (the model must treat batch elements independently, as models do)
    doubled = [isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 for a in args]
    traced = tuple(torch.cat([a, a]) if d else a for a, d in zip(args, doubled))
    work = copy.deepcopy(model).eval()
    shapes = tuple(_dynamic_dims(a) if dynamic else None for a in args)
    params = list(inspect.signature(work.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:  # forward(self, *xs)
        shapes = (shapes,)
    _EXPORTING[0] = True
    try:
        try:
            ep, leaves, stub_paths = _export(work, traced, shapes, leaf_modules)
        except Exception:
            if not any(doubled):
                raise
            ep = None
        if any(doubled) and (ep is None or _batch_fixed(ep, doubled)):
            # the model fixes the batch size (a loop over it, a literal in a reshape): the doubled
            # example traced another model; trace the example as given, its batch dim fixed
            ep, leaves, stub_paths = _export(work, args, shapes, leaf_modules)
    except CaptureError:
        raise
    except Exception as exc:  # torch.export's many error types: report where in user code
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if "DataDependent" in type(exc).__name__:  # torch.export's guard text means nothing to a user
            why = "a tensor's value decides the Python code that runs (an if or loop on a tensor, .item(), .tolist())"
        raise CaptureError(
            f"could not trace the model at {_frames_from_exception(exc)}\n  {why}\n"
            "Move code that cannot be traced (NumPy, data-dependent Python control flow, pre/post-"
            "processing) into a function decorated with edgequant.wrap, or pass its module class "
            "in leaf_modules=(...)."
        ) from exc
    finally:
        _EXPORTING[0] = False
    gm = ep.module()
    _inline_grad_regions(gm)
    gm.meta["eq_leaf_paths"] = {p for p, m in work.named_modules() if not any(True for _ in m.children())}
    for attr in ("train", "eval"):  # torch.export forbids mode switches; our graphs honour them
        gm.__dict__.pop(attr, None)
    rewrite_markers(gm, leaves, stub_paths, work)
    mark_states(gm)
    drop_noops(gm)
    batch_norm_as_one_node(gm)
    cast_integer_operands(gm)   # before folding: a cast of a constant folds with it
    fold_made_constants(gm)
    expand_dynamic_fills(gm)
    _annotate(gm)
    return gm


def _inline_grad_regions(gm: fx.GraphModule) -> None:
    """Inline the graphs of ``with torch.no_grad()`` / ``enable_grad()`` / ``set_grad_enabled``
    regions, which torch.export keeps as ``wrap_with_set_grad_enabled`` calls of a submodule:
    grad mode changes no value of the forward, and the ops inside are quantized like any other
    (in QAT, gradients then flow through a ``no_grad`` region as through the rest)."""
    hop = getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None)
    g = gm.graph
    if not any(n.op == "call_function" and n.target is hop for n in g.nodes):
        return
    while True:
        node = next((n for n in g.nodes if n.op == "call_function" and n.target is hop), None)
        if node is None:
            break
        holder = node.args[1]
        sub = getattr(gm, holder.target)
        env = dict(zip([n for n in sub.graph.nodes if n.op == "placeholder"], node.args[2:]))
        outs = ()
        with g.inserting_before(node):
            for n in sub.graph.nodes:
                if n.op == "output":
                    outs = fx.map_arg(n.args[0], env.__getitem__)
                elif n.op != "placeholder":
                    env[n] = g.node_copy(n, env.__getitem__)
                    if n.op == "get_attr":   # a nested region's submodule: give it a name in gm
                        k = 0
                        while hasattr(gm, f"{n.target}_{k}"):
                            k += 1
                        setattr(gm, f"{n.target}_{k}", getattr(sub, n.target))
                        env[n].target = f"{n.target}_{k}"
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise CaptureError(f"a grad-mode region at {_user_frame(node.meta.get('stack_trace'))} is used other "
                                   "than by its outputs; remove the `with torch.no_grad()` from the forward")
            user.replace_all_uses_with(outs[user.args[1]])
            g.erase_node(user)
        g.erase_node(node)
        if not holder.users:
            g.erase_node(holder)
    gm.delete_all_unused_submodules()
    g.lint()
    gm.recompile()


def _is_float(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.is_floating_point()
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in val)
    return False


def _annotate(gm: fx.GraphModule) -> None:
    """Attach ``eq_spec``, ``eq_path``, ``eq_name`` and ``eq_source`` to every op node."""
    used: dict[str, int] = {}
    leaf_paths = gm.meta.get("eq_leaf_paths", set())
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_module"):
            continue
        node.meta.setdefault("eq_path", _module_path(node))
        node.meta["eq_source"] = _user_frame(node.meta.get("stack_trace"))
        if node.op == "call_module":
            leaf = node.meta.get("eq_leaf")
            if leaf is None:  # torch.export's own helpers (shape guards)
                node.meta["eq_spec"] = None
                continue
            spec = SEGMENT_LUT if isinstance(leaf, SegmentLUT) else FAKE_CAST if isinstance(leaf, FakeCast) else None
            node.meta["eq_spec"] = spec
            base = node.meta["eq_path"] or getattr(leaf, "__name__", node.target)
        elif node.target in (quant_point, dequant_point):
            node.meta["eq_spec"] = None
            base = node.meta["eq_path"]
        else:
            spec = spec_for_target(node.target)
            node.meta["eq_spec"] = spec
            path = node.meta["eq_path"]
            op = spec.name if spec else str(getattr(node.target, "__name__", node.target)).split(".")[0]
            # the first quantized op of a leaf module (nn.Conv2d, nn.Linear, ...) takes its path
            primary = spec is not None and spec.rule in ("compute", "source") and path in leaf_paths \
                and path not in used and path != ""  # a model without submodules: the op's own name
            base = path if primary else (f"{path}.{op}" if path else op)
        n = used.get(base, 0)
        used[base] = n + 1
        node.meta["eq_name"] = base if n == 0 else f"{base}_{n}"


def unsupported_ops(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes that compute on float data with an op edgequant has no entry for."""
    bad = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.meta.get("eq_spec") is None \
                and node.target not in (quant_point, dequant_point, operator.getitem) and _is_float(node):
            bad.append(node)
    return bad


def is_float_value(node: fx.Node) -> bool:
    """Whether the traced value of ``node`` is (or contains) a floating-point tensor."""
    return _is_float(node)
