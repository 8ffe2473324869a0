"""The bench's third-party PTQ peers: torchao's PT2E flow and AIMET-torch's QuantizationSimModel.

Takes a float model, an example input (a tuple of tensors), calibration batches (a list of such
tuples) and, for inputs whose size varies between batches, ONNX-style ``dynamic_axes`` (input name
-> {axis: name}) with the input names. Returns a ``Peer``: a callable run like the float model on
the held-out batches, with ``setting`` (what was used and what was needed, one line), ``ops`` (per
op kind: how many have a quantized input (torchao) or any quantizer (AIMET), of how many in the
graph) and ``scope`` ("GEMM only" when only linear/matmul inputs are quantized, "modules only" for
AIMET without ``prepare_model``, "recurrent steps float" for AIMET on a model with an LSTM/GRU/RNN,
else "every op"). A peer that cannot handle a model raises; the
tables print the first line of the error. ``onnx_qdq_ops`` counts the same for ONNX Runtime's QDQ
files (the bench runs ONNX Runtime itself: ``zoo.py``, ``workloads.py``).

The peers are installed by ``make bench`` only (``benchmarks/requirements-peers.txt``); importing
this module needs neither (``available()`` says which can be imported). Each runs in the setting
its project recommends for post-training quantization, int8 weights and activations:

- ``torchao_pt2e(..., quantizer="x86")``: ``torch.export.export`` with ``strict=True`` (non-strict only
  when strict export raises; ``setting`` says which), the exported graph's unused nodes removed,
  ``prepare_pt2e`` with ``X86InductorQuantizer`` set to ``get_default_x86_inductor_quantization_config()``
  (HistogramObserver uint8 activations, per-channel symmetric int8 weights), calibration,
  ``convert_pt2e``; run as torchao's Q/DQ graph in float (what Inductor lowers to int8 kernels).
  Measured with torch 2.13: after a non-strict export the quantizer, which matches ops by the module
  class recorded in the graph, annotates none of EfficientNet-Lite0's 49 ``F.conv2d`` calls (only the
  classifier's Linear, so the logits stay at 39.7 dB); strict export annotates all of them (15.8 dB).
  On a module returning only BertModel's ``last_hidden_state`` ``prepare_pt2e`` raises (IndexError)
  on the pooler nobody uses until ``graph.eliminate_dead_code()`` has run. On BERT it quantizes the
  Linear layers' inputs only: attention matmuls, softmax, LayerNorm and the residual adds stay float.
- ``torchao_pt2e(..., quantizer="xnnpack")``: the same flow with torchao's XNNPACKQuantizer
  (``torchao.testing.pt2e``; ExecuTorch ships the production copy) and
  ``get_symmetric_quantization_config(is_per_channel=True)``: static, HistogramObserver int8
  activations, per-channel symmetric int8 weights. On BertModel given a 0/1 padding mask its pass
  that turns add/mul scalars into float tensors makes the mask's integer position index float, and
  calibration raises; given an additive float mask (``workloads.BertByName``) it runs.
- ``aimet(..., scheme="tf_enhanced" | "tf")``: ``prepare_model`` (torch.fx), ``fold_all_batch_norms``,
  ``QuantizationSimModel`` with AIMET's default config (per-channel weights for Conv, Gemm and MatMul,
  symmetric 8-bit weights, asymmetric 8-bit activations), ``quant_scheme`` tf_enhanced (its SQNR-based
  range search) or tf (min-max), ``compute_encodings`` over the calibration batches; run as AIMET's
  simulation model. AdaRound is left out: its default is 10,000 optimisation steps per layer, far
  beyond this bench's budget. torch.fx cannot trace BertModel (``prepare_model`` raises
  ``PrepareFails``); ``aimet(..., prepare=False)`` then wraps the model's modules only (Linear,
  LayerNorm, GELU, Embedding), and its functional ops stay float. QuantizationSimModel takes only
  tensor outputs (not a ``ModelOutput``) and raises on a module class it has no quantized
  definition for (transformers' ``Conv1D``, a custom ``Permute``). AIMET imports torchvision: PyPI's
  torchvision is a CUDA build whose import fails on the CPU torch (``operator torchvision::nms does
  not exist``), so ``make bench`` installs it in a folder of its own (``TORCHVISION_DIR``) and
  ``import_aimet`` defines placeholder ``torchvision::nms`` / ``qnms`` operators and imports it again
  (none of the models uses them).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import re
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHVISION_DIR = os.path.join(ROOT, ".venv", "peers-torchvision")  # where `make bench` installs it
GEMM_KINDS = frozenset({"linear", "matmul", "bmm", "mm", "addmm", "baddbmm"})
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "torch._dynamo",
                 "torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor")


WEIGHTED = ("conv", "linear", "matmul", "bmm", "mm", "addmm", "baddbmm")  # op kinds (prefixes) that carry the GEMMs


class Peer:
    """A peer's quantized model: ``peer(*inputs)`` runs it; ``setting``, ``ops`` and ``scope`` say what it is."""

    def __init__(self, fn, setting: str, ops: dict[str, tuple[int, int]], scope: str | None = None,
                 op_level: bool = True, input_kinds: frozenset | None = None, float_calls: int = 0):
        self.fn, self.setting, self.ops, self._scope, self.op_level = fn, setting, ops, scope, op_level
        self.input_kinds = input_kinds  # op kinds with a quantized input, where known (torchao)
        self.float_calls = float_calls  # AIMET: compute ops its prepared graph calls as functions (float)

    def __call__(self, *args):
        with torch.no_grad():
            return self.fn(*args)

    @property
    def scope(self) -> str:
        """"GEMM only" (only linear/matmul inputs quantized), "every op" (the tool's full coverage), or
        what the peer set (AIMET without ``prepare_model``: "modules only")."""
        if self._scope:
            return self._scope
        done = self.input_kinds if self.input_kinds is not None else {k for k, (q, _) in self.ops.items() if q}
        return "GEMM only" if done and done <= GEMM_KINDS else "every op"

    def weighted(self) -> tuple[int, int]:
        """(conv/linear/matmul ops with a quantized input, such ops in the graph)."""
        pairs = [v for k, v in self.ops.items() if k.startswith(WEIGHTED)]
        return sum(q for q, _ in pairs), sum(n for _, n in pairs)

    def coverage(self) -> tuple[int, int]:
        """(ops with a quantized input or output, ops counted in ``ops``); (0, 0) when ``ops`` counts
        modules (AIMET: a module fused with the next one, such as an add before a ReLU, or a max-pool
        has no quantizer of its own although its tensors are quantized, so the count says nothing)."""
        if not self.op_level:   # AIMET: the ops it wraps (quantized, or fused into a neighbour) of
            total = sum(n for _, n in self.ops.values())   # those plus the functions it left float
            return (total - self.float_calls, total) if self.float_calls else (0, 0)
        return sum(q for q, _ in self.ops.values()), sum(n for _, n in self.ops.values())

    def ops_text(self) -> str:
        """``"conv2d 49/49, add 9/9; float: softmax 6"``: per op kind, those with a quantized input or
        output (of that kind in the graph), then the kinds left entirely float."""
        order = sorted(self.ops.items(), key=lambda kv: -kv[1][1])
        done = ", ".join(f"{k} {q}/{n}" for k, (q, n) in order if q) or "nothing"
        left = ", ".join(f"{k} {n}" for k, (q, n) in order if not q)
        kinds = f"; kinds with an int8 input: {', '.join(sorted(self.input_kinds))}" if self.input_kinds else ""
        if self.op_level:
            text = f"; float: {left}" if left else ""
        else:   # AIMET: modules fused into a neighbour; functions its prepared graph calls, float
            fused = ", ".join(f"{k} {n}" for k, (q, n) in order if not q and not k.endswith(" (function)"))
            calls = ", ".join(f"{k.removesuffix(' (function)')} {n}" for k, (q, n) in order if k.endswith(" (function)"))
            text = (f"; no quantizer of their own: {fused}" if fused else "") + (f"; float functions: {calls}" if calls else "")
        return done + text + kinds


@contextlib.contextmanager
def quiet():
    """The peers' import-time and export-time warnings (to stderr) are not results."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _calibrate(model, calib) -> None:
    with torch.no_grad():
        for b in calib:
            model(*b)


# ---- torchao PT2E ----------------------------------------------------------------------------------------------
def _export(model, example, dynamic_shapes):
    """``torch.export.export``, strict first; ``(ExportedProgram, "strict" or "non-strict (strict fails: ...)")``."""
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic_shapes, strict=True), "strict export"
    except Exception as exc:  # noqa: BLE001  (non-strict is the fallback)
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
        return (torch.export.export(model, example, dynamic_shapes=dynamic_shapes, strict=False),
                f"non-strict export (strict fails: {why})")


def _dynamic_shapes(example, input_names, dynamic_axes):
    if not dynamic_axes:
        return None
    return tuple({ax: torch.export.Dim.AUTO for ax in dynamic_axes.get(name, {})} or None
                 for name, _ in zip(input_names, example))


def _op_kind(node) -> str | None:
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return name.removesuffix("_")


DQ_NAMES = ("dequantize_per_tensor", "dequantize_per_channel")
Q_NAMES = ("quantize_per_tensor", "quantize_per_channel", "choose_qparams")


# ops that move or pick data (or drop it, as dropout does in eval): a quantized input there is no extra
# quantization point, and a float one no missing point, so they are not counted
MOVES = frozenset({"view", "reshape", "flatten", "transpose", "permute", "unsqueeze", "squeeze", "chunk", "split",
                   "split_with_sizes", "unbind", "getitem", "dropout", "contiguous", "expand", "expand_as", "slice",
                   "select", "clone", "to", "t", "alias", "detach", "unflatten", "type_as", "sym_size",
                   "_assert_tensor_metadata", "_to_copy", "lift_fresh_copy"})


def _float_tensor(node) -> bool:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return isinstance(val, torch.Tensor) and val.is_floating_point() or _is_dq(node)


def _is_dq(node) -> bool:
    kind = _op_kind(node)
    return bool(kind) and kind.startswith(DQ_NAMES)


def _pt2e_ops(gm) -> tuple[dict[str, tuple[int, int]], frozenset]:
    """For each op kind of the converted graph that computes on float tensors (not ``MOVES``, not the
    Q/DQ ops, not index arithmetic): (nodes with a dequantized input or, except conv/linear/matmul, a
    quantized output, nodes). An activation fused into the op before it (conv + ReLU) has a float
    input and a quantized output.
    Also the op kinds with a dequantized input (what the quantizer made consume int8 data)."""
    seen, quantized, inputs_q = collections.Counter(), collections.Counter(), set()
    for node in gm.graph.nodes:
        kind = _op_kind(node)
        if kind is None or kind.startswith(DQ_NAMES + Q_NAMES) or kind in MOVES:
            continue
        inputs = node.all_input_nodes
        if not any(_float_tensor(a) for a in inputs):
            continue
        seen[kind] += 1
        if any(_is_dq(a) for a in inputs):
            inputs_q.add(kind)
            quantized[kind] += 1
        elif not kind.startswith(WEIGHTED):  # a GEMM counts only with int8 operands
            quantized[kind] += any((_op_kind(u) or "").startswith(Q_NAMES[:2]) for u in node.users)
    return {k: (quantized[k], n) for k, n in seen.items()}, frozenset(inputs_q)


# ---- ONNX Runtime's QDQ files ------------------------------------------------------------------------
# ONNX op types named as the torchao count names them (so ``WEIGHTED`` and ``GEMM_KINDS`` apply), and
# those that move or pick data (``MOVES``' counterparts: not counted)
ONNX_KINDS = {"Gemm": "linear", "MatMul": "matmul", "Conv": "conv", "ConvTranspose": "conv_transpose"}
ONNX_MOVES = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Expand",
                        "Slice", "Gather", "Split", "Cast", "Shape", "Size", "Constant", "ConstantOfShape",
                        "QuantizeLinear", "DequantizeLinear"})
ONNX_FLOATS = frozenset({1, 10, 11, 16})   # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def onnx_qdq_ops(path: str) -> tuple[dict[str, tuple[int, int]], frozenset]:
    """``_pt2e_ops`` for a QDQ ONNX file (ONNX Runtime's ``quantize_static``): for each op kind that
    computes on a float activation (an input that is neither an initializer nor constant-derived
    shape data), (nodes with a dequantized activation input or, except conv/linear/matmul, an output
    that a QuantizeLinear reads, nodes); and the kinds with a dequantized activation input."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = model.graph
    consts = {t.name for t in g.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    producer = {o: n for n in g.node for o in n.output}
    readers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)

    def const(name):   # an initializer, or what a Constant or a DequantizeLinear of an initializer makes
        p = producer.get(name)
        return name in consts or p is not None and (p.op_type == "Constant" or p.op_type == "DequantizeLinear"
                                                     and p.input[0] in consts)

    def dq_activation(name):
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and not const(name)

    seen, quantized, inputs_q = collections.Counter(), collections.Counter(), set()
    for n in g.node:
        if n.op_type in ONNX_MOVES:
            continue
        acts = [i for i in n.input if i and not const(i)]
        if not any(dq_activation(i) or types.get(i) in ONNX_FLOATS for i in acts):
            continue
        kind = ONNX_KINDS.get(n.op_type, n.op_type.lower())
        seen[kind] += 1
        if any(dq_activation(i) for i in acts):
            inputs_q.add(kind)
            quantized[kind] += 1
        elif not kind.startswith(WEIGHTED):
            quantized[kind] += any(r.op_type == "QuantizeLinear" for o in n.output for r in readers[o])
    return {k: (quantized[k], c) for k, c in seen.items()}, frozenset(inputs_q)


def torchao_quantizer(kind: str):
    """The recommended static PTQ quantizer of torchao 0.18 for ``kind`` ("x86" or "xnnpack")."""
    if kind == "x86":
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

        return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()), \
            "X86InductorQuantizer, default config"
    if kind == "xnnpack":
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)), \
            "XNNPACKQuantizer, per-channel, static"
    raise ValueError(f"unknown torchao quantizer {kind!r}; use 'x86' or 'xnnpack'")


def torchao_pt2e(model, example, calib, quantizer: str = "x86", input_names=(), dynamic_axes=None) -> Peer:
    """torchao PT2E PTQ (see the module docstring) of a copy of ``model``."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        q, qname = torchao_quantizer(quantizer)
        model = copy.deepcopy(model).eval()
        ep, how = _export(model, tuple(example), _dynamic_shapes(example, input_names, dynamic_axes))
        gm = ep.module()
        before = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        dead = before - len(gm.graph.nodes)
        prepared = prepare_pt2e(gm, q)
        try:
            _calibrate(prepared, calib)
        except IndexError as exc:
            if quantizer == "xnnpack" and "used as indices" in str(exc):  # say why, as measured on BertModel
                raise RuntimeError("XNNPACKQuantizer's scalar-to-tensor pass made an integer add float; "
                                   f"calibration then raises IndexError: {exc}") from exc
            raise
        converted = convert_pt2e(prepared)
    notes = [qname, how] + ([f"{dead} unused nodes removed first"] if dead else [])
    ops, input_kinds = _pt2e_ops(converted)
    return Peer(converted, "; ".join(notes), ops, input_kinds=input_kinds)


# ---- AIMET-torch -------------------------------------------------------------------------------------------------
_PLACEHOLDERS = []  # keeps the placeholder library alive


def _placeholder_torchvision_ops() -> None:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` (schemas only) unless torchvision's own
    extension has: torchvision's import registers fake kernels for them and fails when they are missing."""
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _PLACEHOLDERS.append(lib)


def _import_torchvision() -> None:
    """torchvision (from ``TORCHVISION_DIR`` when the bench installed it there); when its import fails
    on a missing ``torchvision::`` operator (its compiled extension does not load), again after the
    placeholder operators are defined."""
    if os.path.isdir(TORCHVISION_DIR) and TORCHVISION_DIR not in sys.path:
        sys.path.append(TORCHVISION_DIR)
    try:
        with quiet():
            import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _placeholder_torchvision_ops()
    with quiet():
        import torchvision  # noqa: F401,F811


def import_aimet():
    """The AIMET-torch pieces used here (``_import_torchvision`` first)."""
    _import_torchvision()
    with quiet():
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.common.defs import QuantScheme
        from aimet_torch.common.utils import AimetLogger
        from aimet_torch.model_preparer import prepare_model
        from aimet_torch.quantsim import QuantizationSimModel

    AimetLogger.set_level_for_all_areas(logging.ERROR)
    return prepare_model, fold_all_batch_norms, QuantizationSimModel, QuantScheme


# AIMET's recurrent modules quantize the sequence input, the initial and final states and the
# weights, and run torch's own LSTM/GRU/RNN kernel in float in between: every step's gates,
# activations and states stay float (aimet_torch.nn.true_quant.QuantizedLSTM)
AIMET_RECURRENT = {"QuantizedLSTM", "QuantizedGRU", "QuantizedRNN", "QuantizedLSTMCell", "QuantizedGRUCell",
                   "QuantizedRNNCell"}
RECURRENT_FLOAT = "recurrent steps float"


def _aimet_ops(sim_model) -> dict[str, tuple[int, int]]:
    """For each quantized module class (``QuantizedConv2d`` -> ``conv2d``): (with an input, output or
    parameter quantizer, modules)."""
    seen, quantized = collections.Counter(), collections.Counter()
    for m in sim_model.modules():
        name = type(m).__name__
        if not name.startswith("Quantized"):
            continue
        kind = name.removeprefix("Quantized").lower()
        if kind in MOVES or kind == "identity":
            continue
        seen[kind] += 1
        qs = [*getattr(m, "input_quantizers", []), *getattr(m, "output_quantizers", []),
              *getattr(m, "param_quantizers", {}).values()]
        quantized[kind] += any(q is not None for q in qs)
    return {k: (quantized[k], n) for k, n in seen.items()}


def _aimet_float_calls(sim_model) -> collections.Counter:
    """Per kind, the arithmetic ops the prepared graph calls as torch functions or tensor methods:
    QuantizationSimModel quantizes modules only, so these run on float tensors (``prepare_model``
    inlines a module it has no quantized twin for: torchvision's ``LayerNorm2d`` becomes a float
    ``F.layer_norm``). Only the kinds of ``FLOAT_COMPUTE`` count; Python operators (sizes,
    asserts), creation ops and moves do not."""
    graph = getattr(sim_model, "graph", None)
    found = collections.Counter()
    for node in getattr(graph, "nodes", ()):
        if node.op == "call_method":
            name = str(node.target)
        elif node.op == "call_function" and getattr(node.target, "__module__", "") != "_operator":
            name = getattr(node.target, "__name__", "")
        else:
            continue
        if name.lower() in FLOAT_COMPUTE:
            found[name.lower()] += 1
    return found


# the ops that compute on float tensors (the quantized ops of the other peers' counts)
FLOAT_COMPUTE = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear", "matmul", "bmm", "mm", "addmm",
    "baddbmm", "einsum", "layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm", "normalize",
    "softmax", "log_softmax", "gelu", "silu", "relu", "relu6", "hardtanh", "sigmoid", "tanh", "hardswish",
    "hardsigmoid", "mish", "elu", "leaky_relu", "softplus", "exp", "log", "sqrt", "rsqrt", "pow", "add", "sub",
    "mul", "div", "mean", "sum", "cumsum", "interpolate", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d",
    "scaled_dot_product_attention", "grid_sample", "clamp"})


class PrepareFails(RuntimeError):
    """AIMET's ``prepare_model`` (torch.fx symbolic tracing) cannot trace the model."""


def aimet_prepared(model):
    """``prepare_model`` on a copy of ``model``; ``PrepareFails`` (with the first line of torch.fx's
    error) when it cannot trace it."""
    prepare_model = import_aimet()[0]
    try:
        with quiet():
            return prepare_model(copy.deepcopy(model).eval())
    except Exception as exc:  # noqa: BLE001
        raise PrepareFails(f"prepare_model fails (torch.fx: {type(exc).__name__}: {exc}".splitlines()[0] + ")") from exc


def aimet_ready(model, example, prepare: bool = True) -> tuple[torch.nn.Module, str, str | None]:
    """``(model, what was done, scope)`` ready for QuantizationSimModel: a copy of ``model`` through
    ``prepare_model`` and ``fold_all_batch_norms`` (``PrepareFails`` when torch.fx cannot trace it), or
    with ``prepare=False`` the copy as it is (scope "modules only": QuantizationSimModel then wraps the
    model's modules, and the functional ops (``+``, ``torch.matmul``, ``F.softmax``, ...) stay float)."""
    _, fold_all_batch_norms, _, _ = import_aimet()
    if not prepare:
        return copy.deepcopy(model).eval(), "without prepare_model", "modules only"
    prepared = aimet_prepared(model)
    with quiet():
        folded = fold_all_batch_norms(prepared, None, tuple(example))
    return prepared, f"prepare_model, {len(folded)} BatchNorms folded", None


def aimet_sim(ready: tuple, example, calib, scheme: str = "tf_enhanced") -> Peer:
    """QuantizationSimModel (8-bit weights and activations, AIMET's default config) on ``aimet_ready``'s
    model with ``scheme`` ("tf_enhanced" or "tf", i.e. min-max), encodings computed over ``calib``."""
    model, how, scope = ready
    _, _, QuantizationSimModel, QuantScheme = import_aimet()
    qs = {"tf_enhanced": QuantScheme.post_training_tf_enhanced, "tf": QuantScheme.post_training_tf}[scheme]
    with quiet():
        try:
            sim = QuantizationSimModel(model, tuple(example), quant_scheme=qs, default_param_bw=8, default_output_bw=8)
        except Exception as exc:  # noqa: BLE001
            missing = re.findall(r"<class '([\w.]+)'>", str(exc)) if "not registered" in str(exc) else []
            if missing:  # its message lists the classes over several lines, with a code example
                names = ", ".join(dict.fromkeys(m.rsplit(".", 1)[-1] for m in missing))
                raise RuntimeError(f"QuantizationSimModel: no quantized module definition for {names}") from exc
            raise
        sim.compute_encodings(lambda m: _calibrate(m, calib))
    setting = f"QuantizationSimModel, default config (per-channel weights), {scheme}, {how}"
    if scope is None and any(type(m).__name__ in AIMET_RECURRENT for m in sim.model.modules()):
        scope = RECURRENT_FLOAT
    ops, floats = _aimet_ops(sim.model), _aimet_float_calls(sim.model)
    for kind, n in floats.items():
        ops[f"{kind} (function)"] = (0, n)
    return Peer(sim.model.eval(), setting, ops, scope, op_level=False, float_calls=sum(floats.values()))


def aimet(model, example, calib, scheme: str = "tf_enhanced", prepare: bool = True) -> Peer:
    """AIMET-torch QuantizationSimModel PTQ (see the module docstring) of a copy of ``model``."""
    return aimet_sim(aimet_ready(model, example, prepare), example, calib, scheme)


def available() -> dict[str, str | None]:
    """``{"torchao": None or why it cannot be imported, "aimet": ...}``; imports them (once) when they can be."""
    out = {}
    for name, load in (("torchao", lambda: torchao_quantizer("x86")), ("aimet", import_aimet)):
        try:
            with quiet():
                load()
            out[name] = None
        except Exception as exc:  # noqa: BLE001
            out[name] = f"not installed ({type(exc).__name__}: {exc}; `make bench` installs the peers)".splitlines()[0]
    return out
