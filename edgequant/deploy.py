"""Deployment helpers on converted (level ``"int"``) graphs.

Takes a ``Graph`` that ``convert`` returned; returns new graphs (the argument is not modified).

- ``insert_yuv2rgb(g, stub_name, swing, mean, std)``: a model trained on RGB (or BGR) images
  accepts centered YUV444 int8 input (what edge image pipelines deliver). An integer
  ``yuv2rgb`` node goes right after the chosen input ``quantize`` node, whose scale becomes 1
  (so the int8 YUV codes pass through it unchanged). The node computes in fixed point
  (every rounding half to even, ``qmath`` A6/A7):

    rgb_c = clamp(round_shift(sum_j C[c, j] * yuv_j + D[c], F), 0, 255)
          C = round(M_inv * 2^F), D = round(M_inv @ (128 - offset) * 2^F)  (BT.601, F = 14)
    q_c   = requantize(rgb_c * 2^K - round(mean_c * 2^K), m0_c, shift_c + K) + zero_point
          (m0_c, shift_c) = quantize_multiplier(1 / (std_c * scale))     (K = 8)

  where ``scale``/``zero_point`` are the original quantize's: ``q`` is what that quantize gave
  for the normalised RGB image. ``edgequant.functional.centered_yuv2rgb`` is its float reference.
- ``split(g, cut_points)``: segmented deployment. Each cut point names a QuantStub (a stub with
  ``scale=None`` inside the model records its input's scale during calibration/QAT); the graph
  is cut right after that node into stages, each a valid ``Graph`` that saves, visualizes and
  runs on its own. A later stage takes the integer tensors an earlier stage returns unchanged
  (its inputs are quantized values). ``run_stages`` chains them.

Every bad argument raises ``DeployError`` (a ``ValueError``) naming the argument, its value and
what is expected: an unknown stub or cut point, a cut point listed twice or out of graph order,
an unknown ``swing``, a non-finite ``mean``/``std``, ``std <= 0``, stages not made by ``split``
or given the wrong number of inputs.
"""
from __future__ import annotations

import copy

import torch

from .check import check_graph
from .functional.yuv import SWINGS, channel_values, yuv_matrices
from .ir import Graph, Node, QParams, Value
from .ops import is_quantize, spec_of
from .qmath import quantize_multiplier

YUV_FRAC_BITS = 14
MEAN_FRAC_BITS = 8
MAX_MEAN = 1 << 16         # |mean| bound: the op's int64 products stay exact
MAX_MULTIPLIER = 1 << 24   # 1 / (std * scale) bound: beyond it every output saturates anyway


class DeployError(ValueError):
    """A deployment helper cannot apply to this model; the message says why and what to pass."""


def _require_int(g) -> None:
    if not isinstance(g, Graph):
        raise DeployError(f"deployment helpers take the integer Graph that edgequant.convert returns, got "
                          f"{type(g).__name__} (a prepared/training model: export and convert it first)")
    if g.level != "int":
        raise DeployError(f"deployment helpers take a converted graph (level 'int'), got level {g.level!r}: "
                          "call edgequant.convert on it first")


def _per_channel(v, name: str, positive: bool = False) -> list[float]:
    vals = channel_values(v, name, error=DeployError)
    if positive and min(vals) <= 0:
        raise DeployError(f"{name} must be positive (the integer op multiplies by 1 / {name}), got {vals}")
    return vals


def insert_yuv2rgb(g: Graph, stub_name: str, swing: str = "full", mean=0.0, std=1.0, bgr: bool = False) -> Graph:
    """A copy of ``g`` whose input at the ``quantize`` node ``stub_name`` takes centered YUV444.

    ``mean``/``std``: the normalisation the RGB (``bgr=True``: BGR) training images had, on the
    0..255 scale, one or three values (list or tensor). The quantize's scale becomes 1; the new
    input expects integer values in [-128, 127] (float or integer tensor), NCHW with 3 channels.
    """
    _require_int(g)
    if not isinstance(stub_name, str):
        raise DeployError(f"stub_name is the name of a quantize node (a str), got {type(stub_name).__name__}")
    if not isinstance(swing, str) or swing not in SWINGS:
        raise DeployError(f"swing must be 'full' or 'studio', got {swing!r}")
    if not isinstance(bgr, bool):
        raise DeployError(f"bgr must be True or False, got {bgr!r}")
    mean, std = _per_channel(mean, "mean"), _per_channel(std, "std", positive=True)
    node = next((n for n in g.nodes if n.name == stub_name), None)
    if node is None or not is_quantize(node.op):
        names = [n.name for n in g.nodes if is_quantize(n.op)]
        raise DeployError(f"{stub_name!r} is not a quantize node of this graph; its quantize nodes: {names}")
    out = g.values[node.outputs[0]]
    qp = out.qparams
    if qp is None or qp.ch_axis is not None or len(out.shape) < 3 or out.shape[-3] != 3:
        raise DeployError(f"{stub_name!r} must quantize a 3-channel NCHW image per tensor, got {out}")
    _, off, minv = yuv_matrices(swing)
    if bgr:
        minv = minv.flip(0)
    fb, kb = YUV_FRAC_BITS, MEAN_FRAC_BITS
    c = torch.round(minv * (1 << fb)).to(torch.int64)
    d = torch.round((minv @ (128.0 - off)) * (1 << fb)).to(torch.int64)
    if max(abs(m) for m in mean) > MAX_MEAN:
        raise DeployError(f"mean must be within +-{MAX_MEAN} (the training mean on the 0..255 scale), got {mean}")
    mult = [1.0 / (s * qp.scale[0]) for s in std]
    if max(mult) > MAX_MULTIPLIER:
        raise DeployError(f"std {std} with the stub's scale {qp.scale[0]:.6g} gives {max(mult):.3g} output codes per "
                          f"RGB level; the integer op takes at most 2^24 (std is probably on the wrong scale: "
                          "it is the training std on the 0..255 scale)")
    pairs = [quantize_multiplier(m) for m in mult]
    mk = torch.tensor([round(m * (1 << kb)) for m in mean], dtype=torch.int64)

    h = Graph(g.level, list(g.inputs), list(g.outputs), dict(g.values), [], dict(g.constants), copy.copy(g.meta))
    yuv = f"{node.outputs[0]}.yuv"
    h.values[yuv] = Value(yuv, out.shape, "qint8", QParams("qint8", (1.0,), (0,)))
    consts = {}
    for key, t in (("coef", c), ("bias", d), ("m0", torch.tensor([p[0] for p in pairs], dtype=torch.int64)),
                   ("shift", torch.tensor([p[1] for p in pairs], dtype=torch.int64)), ("mean", mk)):
        name = f"{stub_name}.yuv2rgb.{key}"
        h.constants[name] = t
        h.values[name] = Value(name, tuple(t.shape), "int64", None)
        consts[key] = name
    for n in g.nodes:
        if n is node:
            h.nodes.append(Node(n.name, n.op, n.inputs, (yuv,), dict(n.attrs), n.source))
            h.nodes.append(Node(f"{stub_name}.yuv2rgb", "yuv2rgb", (yuv, *consts.values()), n.outputs,
                                {"swing": swing, "bgr": bool(bgr), "frac_bits": fb, "mean_frac_bits": kb,
                                 "out_dtype": qp.dtype, "out_zero_point": qp.zero_point[0]},
                                f"edgequant.deploy.insert_yuv2rgb({stub_name!r})"))
        else:
            h.nodes.append(n)
    check_graph(h)
    return h


# -- segmented deployment ------------------------------------------------------------------------------
def split(g: Graph, cut_points) -> list[Graph]:
    """Cut ``g`` right after each named QuantStub node; returns the stages in order.

    A stage's inputs are the values it reads that earlier stages (or the model's inputs)
    define; an earlier stage outputs every value a later stage reads. With one cut on a plain
    chain, stage 1 returns the cut's integer tensor and stage 2 takes it as its only input.
    """
    _require_int(g)
    if isinstance(cut_points, str):
        cut_points = [cut_points]
    if not isinstance(cut_points, (list, tuple)) or not all(isinstance(c, str) for c in cut_points):
        raise DeployError(f"cut_points is a node name or a list of node names, got {cut_points!r}")
    index = {n.name: i for i, n in enumerate(g.nodes)}
    cuts = []
    for c in cut_points:
        if cut_points.count(c) > 1:
            raise DeployError(f"cut point {c!r} is listed {cut_points.count(c)} times in cut_points; list each once")
        if c not in index:
            stubs = [n.name for n in g.nodes if spec_of(n.op) is not None and spec_of(n.op).stub_form]
            raise DeployError(f"cut point {c!r} is not a node of this graph (QuantStub nodes: {stubs})")
        n = g.nodes[index[c]]
        if g.values[n.outputs[0]].qparams is None:
            raise DeployError(f"cut point {c!r} ({n.op}) does not output a quantized tensor; cut at a QuantStub")
        if cuts and index[c] < cuts[-1]:
            before = g.nodes[cuts[-1]].name
            raise DeployError(f"cut_points must follow the graph order, but {c!r} comes before {before!r} in the "
                              f"graph and after it in {list(cut_points)}")
        cuts.append(index[c])
    bounds = [-1, *sorted(set(cuts)), len(g.nodes) - 1]
    if bounds[-2] == bounds[-1]:
        raise DeployError("a cut point is the last node: the last stage would be empty")
    groups = [g.nodes[a + 1:b + 1] for a, b in zip(bounds, bounds[1:])]
    order = {v: i for i, v in enumerate(g.inputs)}
    for n in g.nodes:
        for o in n.outputs:
            order.setdefault(o, len(order))
    defined_in = {o: k for k, nodes in enumerate(groups) for n in nodes for o in n.outputs}
    final = [o for o in g.outputs if isinstance(o, str)]
    needs = []
    for k, nodes in enumerate(groups):
        reads = {i for n in nodes for i in n.inputs if i is not None and i not in g.constants}
        if k == len(groups) - 1:
            reads |= set(final)
        needs.append({v for v in reads if defined_in.get(v) != k})
    stages = []
    for k, nodes in enumerate(groups):
        inputs = sorted(needs[k], key=order.__getitem__)
        later = set().union(*needs[k + 1:]) if k + 1 < len(groups) else set()
        last = k == len(groups) - 1
        outputs = list(g.outputs) if last else sorted((v for v in later if defined_in.get(v) == k),
                                                       key=order.__getitem__)
        used = {i for n in nodes for i in n.inputs if i is not None}
        constants = {c: t for c, t in g.constants.items() if c in used}
        names = set(inputs) | set(constants) | {o for n in nodes for o in n.outputs}
        values = {v: r for v, r in g.values.items() if v in names}
        meta = {m: v for m, v in g.meta.items() if last or "out_spec" not in m}
        meta.update({"stage": k, "stages": len(groups), "model_inputs": list(g.inputs)})
        s = Graph("int", inputs, outputs, values, list(nodes), constants, meta)
        check_graph(s)
        stages.append(s)
    return stages


def run_stages(stages: list[Graph], *inputs):
    """Run the stages of ``split`` one after another, as a deployment would; returns the last
    stage's result. Each stage receives, unchanged, the tensors it reads from earlier stages."""
    if not isinstance(stages, (list, tuple)) or not stages or not all(isinstance(s, Graph) for s in stages):
        raise DeployError(f"run_stages takes the non-empty list of graphs that split returns, "
                          f"got {type(stages).__name__}")
    wanted = stages[0].meta.get("model_inputs")
    if wanted is None:
        raise DeployError("run_stages takes the stages that edgequant.deploy.split returns; the first graph given "
                          "has no 'model_inputs' in its meta (run a whole graph by calling it)")
    if len(inputs) != len(wanted):
        raise DeployError(f"run_stages: the model takes {len(wanted)} input(s) {wanted}, got {len(inputs)}")
    env = dict(zip(wanted, inputs))
    result = None
    for s in stages:
        missing = [i for i in s.inputs if i not in env]
        if missing:
            raise DeployError(f"stage {s.meta.get('stage')} needs {missing}, which no earlier stage returns")
        result = s(*[env[i] for i in s.inputs])
        if s is not stages[-1]:
            outs = (result,) if len(s.outputs) == 1 else tuple(result)
            env.update(zip(s.outputs, outs))
    return result


__all__ = ["insert_yuv2rgb", "split", "run_stages", "DeployError"]
