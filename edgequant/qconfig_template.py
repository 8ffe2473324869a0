"""Qconfig templates ("setters"): which dtype and observer every op of a graph gets.

Takes the list of quantizable op sites of a captured graph (``OpSite`` records) and the
qconfigs assigned so far; returns the updated assignment ``{site name: QConfig}``. ``prepare``
applies the setters it is given in order, so a later setter overrides an earlier one:

    prepare(model, x, qconfig_setter=(calibration_8bit_weight_16bit_act_qconfig_setter,
                                      ModuleNameQconfigSetter({"head": int8_qconfig})))

Site names are module paths for module calls (``"layer1.0.conv1"``) and the owning module's
path plus the op for functions and operators (``"layer1.0.add"``, ``"layer1.0.add_1"``).

| template | activations | weights | observer |
|---|---|---|---|
| ``default_calibration_qconfig_setter`` | qint8; quint8 if non-negative (*) | qint8 per channel, rounded by GPTQ | MSE (acts), min-max (weights) |
| ``calibration_8bit_weight_16bit_act_qconfig_setter`` | qint16 | qint8 per channel | min-max |
| ``default_qat_qconfig_setter`` | qint8; quint8 if non-negative (*) | qint8 per channel | moving-average min-max |
| ``qat_8bit_weight_16bit_act_qconfig_setter`` | qint16 | qint8 per channel | moving-average min-max |
| ``qat_8bit_weight_16bit_fixed_act_qconfig_setter`` | qint16, scales fixed | qint8 per channel | scales from calibration |
| ``all_fp16_qconfig_setter`` | float16 | float16 | none (float16 ops: NASH_P/NASH_H) |
| ``ModuleNameQconfigSetter({name: qconfig})`` | per name (exact or prefix) | | |

Float16 per module: ``ModuleNameQconfigSetter({"head": get_qconfig(out_dtype=torch.float16)})``
after an integer template keeps ``head`` in float16 (``edgequant.float16``: the island's inputs,
weights and outputs are rounded to float16, and ``convert`` runs it in float16 on NASH_P/NASH_H).

The int8 template's calibration ends, after the empirical bias correction, with
``edgequant.ptq.gptq`` on the batches calibration kept (its ``weight_rounding="gptq"``; kept only
where the model's outputs come nearer float on them). EfficientNet-Lite0, held-out logit SQNR of
the integer model (benchmarks/accuracy.py): 22.43 dB with round-to-nearest weights, 24.37 with
the step; calibration takes about 4x as long there (31 s against 8 s). The other templates round
to nearest; ``prepare(..., weight_rounding="gptq" | "nearest")`` chooses either way.
QAT templates never run it (their weights train from the float values).

The three QAT templates say so (``setter.qat``): a model in train mode when ``prepare`` is given one
keeps each conv/linear + BatchNorm pair training, with the folded weight fake-quantized
(``edgequant.qat_bn``, ``edgequant.freeze_bn``); a model in eval mode has BN folded at prepare.

(*) An op whose output is non-negative by construction (``OpSite.nonnegative``: it ends in a
relu, relu6, or clamp/hardtanh whose lower bound is a number >= 0, fused or not) gets quint8,
scale ``max / 255`` and zero point 0: all 256 codes instead of qint8's 128 non-negative ones.
Tensors feeding layer_norm/softmax, and grid_sample's grid (the NPU's), get int16 first, as do
recurrent cell states (``OpSite.recurrent_state``: the LSTM's c and f * c, marked by capture).
Measured: EfficientNet-Lite0 logit SQNR 20.0 -> 22.5 dB (tests/test_prepare_real_models.py -k efficientnet); MNIST residual CNN 26.7 ->
26.9 dB (1,000 test images, 256 calibration images; benchmarks/accuracy.py --models cnn).

With every template, ``prepare`` also bias-corrects conv/linear weights after calibration
(``fake_quant.BiasCorrection``; ``prepare(..., bias_correction=False)`` opts out, QAT turns it
off): rounding BN-folded depthwise and zero-sum kernels shifts channel means by more than an
activation step. EfficientNet-Lite0, logit SQNR to float on held-out photo crops: 17.0 -> 20.0
dB with signed int8 activations (before quint8 ReLU outputs), 18.5 -> 25.1 dB with int16
(tests/test_prepare_real_models.py). Calibration then measures the rest of each op's mean shift
(activation rounding and clipping, and what earlier ops pass on) on the first calibration
batches against the float model and removes it too, where that brings the outputs nearer float
(``edgequant.ptq.empirical_bias``): MNIST residual CNN, held-out logit SQNR 26.9 -> 38.0 dB (int8),
35.4 -> 44.9 dB (int16).

Why MSE for int8 activations (same EfficientNet crops; MNIST residual CNN of tests/models.py;
measured with signed int8 everywhere, before quint8 ReLU outputs): MSE 20.0 / 32.1 dB, min-max
20.5 / 21.9, percentile 99.99 19.8 / 22.1, KL 0.1 / 1.5. With quint8 ReLU outputs the CNN
(1,000 test images, 256 calibration images) gives MSE 26.9 dB and min-max 28.9 dB: MSE is no
longer the best observer there. Per-tensor MSE clips the stem's ReLU6 output at 5.36, which
costs the logits more than the finer step saves; percentile on the quint8 outputs alone gives
the CNN 34.2 dB but costs EfficientNet-Lite0 1.1 dB, so the template keeps MSE and
``ptq.auto_calibrate`` (which judges by the model's output) is the remedy. On bounded
tensors (ReLU6 outputs) MSE keeps the whole range as min-max does; on long-tailed ones (residual
sums, unbounded ReLU outputs) it clips the tail that min-max would spend most levels on. KL
keeps the most probable values and clips the rare large ones, which these networks need. For
int16 the step is so fine that clipping gains nothing, so min-max (exact range, no histogram)
is used.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import torch

from .dtype import qint8, qint16, quint8
from .gemm_inputs import GEMM_OPS
from .ops import ALL_SPECS
from .observers import MinMaxObserver, MSEObserver
from .qconfig import QConfig, get_qconfig


@dataclass(frozen=True)
class OpSite:
    """One quantizable op of a captured graph, as templates see it."""

    name: str                     # module path, or owner path + "." + op for functions
    op: str                       # canonical op name ("conv2d", "add", "softmax", ...)
    module_type: str              # class name of the module called ("" for functions)
    consumers: tuple[str, ...]    # canonical op names that read this op's output
    has_weight: bool
    # True when the output is non-negative by construction: it is (or passes a fused) relu,
    # relu6, or hardtanh/clamp whose lower bound is a number >= 0. Int8 templates give it quint8.
    nonnegative: bool = False
    # True for a recurrent layer's cell state (the LSTM's c and its f * c term, marked by capture:
    # capture_rnn). Int8 templates give it int16: it accumulates over every time step.
    recurrent_state: bool = False
    # True when an op reads it at an argument its row wants int16 (``OpSpec.int16_args``: grid_sample's
    # grid), directly or through ops that keep the grid. Int8 templates give it int16.
    feeds_int16: bool = False
    # The canonical ops that compute from the output (of the fused group), looking through ops that keep
    # the grid (reshape, permute, masked_fill, max pooling ...): ``gemm_inputs.reader_ops``.
    feeds: tuple[str, ...] = ()
    # True when only the model's caller reads the output: graph outputs and DeQuantStubs, directly or
    # through ops that only move values (cat, stack, slice_scatter), and the network's tail after its
    # last matrix products (no GEMM computes from it again): ``gemm_inputs.caller_only_nodes``.
    caller_only: bool = False


QconfigSetter = Callable[[Sequence[OpSite], dict], dict]


class TemplateSetter:
    """A setter that gives every site the qconfig ``make(site)`` returns."""

    def __init__(self, name: str, make: Callable[[OpSite], QConfig], doc: str, qat: bool = False,
                 splits_gemm_inputs: bool | frozenset = False, weight_rounding: str = "nearest"):
        self.__name__ = name
        self.__doc__ = doc
        self._make = make
        self.qat = qat   # a QAT template: prepare keeps BatchNorm of a model in train mode (edgequant.qat_bn)
        # how calibration's closing step rounds conv/linear weights (``weight_rounding_of``)
        self.weight_rounding = weight_rounding
        # which tensors read by a GEMM and by other ops get a quantize point of their own on the GEMMs'
        # side (gemm_inputs.split_gemm_inputs): True for all, or the ops whose outputs are split
        self.splits_gemm_inputs = splits_gemm_inputs

    def __call__(self, sites: Sequence[OpSite], current: dict) -> dict:
        _check_setter_args(self.__name__, sites, current)
        out = dict(current)
        for site in sites:
            out[site.name] = self._make(site)
        return out

    def __repr__(self) -> str:
        return self.__name__


# Ops whose int8 input loses too much: normalisations divide by a statistic that a few outlier
# channels dominate (transformer residual streams), and softmax needs fine steps near its
# maximum. Int8 templates give the tensors feeding them int16 (measured on all-MiniLM-L6-v2:
# int8 everywhere gives sentence cosine 0.53-0.63 to float, the first layer's output LayerNorm
# alone falls to 2.7 dB SQNR).
NEEDS_INT16_INPUT = frozenset(s.name for s in ALL_SPECS if s.int16_input)   # the rows that say so


# A normalisation output that ops other than GEMMs read is the residual stream of a post-norm
# transformer (BERT: each layer norm's output is the next block's shortcut as well as the input of
# its projections). Int8 templates keep it int16, as they keep the pre-norm residual stream
# (which feeds a layer norm) int16, and give the GEMMs reading it an int8 copy (``prepare`` adds
# the quantize point: ``splits_gemm_inputs``). all-MiniLM-L6-v2 integer model, 48 held-out
# sentences (affine int8, below): int8 layer-norm outputs 0.98881, int16 with the int8 copies
# 0.99205, and 0.99507 after ``ptq.smooth_quant`` (tests/test_smooth_quant.py).
RESIDUAL_NORMS = frozenset({"layer_norm"})


def _is_gemm_input(site: OpSite) -> bool:
    """Every op computing from the site's output is a matrix product (``gemm_inputs.GEMM_OPS``)."""
    feeds = site.feeds or site.consumers
    return bool(feeds) and all(op in GEMM_OPS for op in feeds)


# A tensor that only the model's caller reads (a graph output, a DeQuantStub, directly or through
# ops that only move values into it: a detector's heads concatenated) leaves the integer model
# there: nothing downstream computes on its int8 codes, and int16 costs one wider tensor.
# Int8 templates give it int16 (``OpSite.caller_only``; conv/linear/matmul outputs there are int32
# already: ``prepare.mark_high_precision``). It is where reductions, concatenated detection heads
# and in-place box decoding end (zoo models, held-out SQNR against float, integer model: UFLD's
# lane expectation ``sum(softmax * idx)`` 56.2 -> 58.1 dB, SSDLite's concatenated heads
# 41.9 -> 43.5, FCOS 40.6 -> 42.1; benchmarks/zoo.py). The same holds for the network's tail
# after its last matrix products, whatever it computes (a softmax expectation, a score sigmoid,
# box decoding on slices, a mask from an argmax): no GEMM reads its codes, its tensors are a
# head's, and every step of it adds its rounding to the output (UFLD 58.4 -> 68.6 dB, with its
# lane mask 56.2 -> 68.3, PETR's box decoding 29.1 -> 39.0).


def _act_dtype(site: OpSite, act_dtype):
    """int8 templates: int16 for tensors feeding ``NEEDS_INT16_INPUT`` or an ``int16_args`` argument
    (``OpSite.feeds_int16``), recurrent cell states, post-norm residual streams (``RESIDUAL_NORMS``)
    and what only the model's caller reads (``OpSite.caller_only``),
    else quint8 for non-negative outputs (all 256 codes on ``[0, max]``: one more bit than qint8's 128)."""
    if act_dtype != qint8:
        return act_dtype
    if site.recurrent_state or site.feeds_int16 or NEEDS_INT16_INPUT.intersection(site.feeds or site.consumers) \
            or (site.op in RESIDUAL_NORMS and not _is_gemm_input(site)) or site.caller_only:
        return qint16
    return quint8 if site.nonnegative else qint8


# Signed int8 activations are affine: the zero point follows the range (quint8 ones keep zero point
# 0, their range starts at 0). Most signed tensors are far from symmetric about 0 (a GELU/SiLU
# output spans [-0.17, max], a residual sum or a projection has a channel-dependent offset), and a
# symmetric grid leaves the codes on the short side unused. The integer kernels subtract the zero
# point in the accumulator (``edgequant.qmath``), as for the GEMM-int8 templates' inputs. Held-out
# (benchmarks/accuracy.py, integer model): MNIST residual CNN logit SQNR 39.4 -> 40.6 dB,
# EfficientNet-Lite0 22.3 -> 22.4 dB, all-MiniLM-L6-v2 sentence cosine 0.97844 -> 0.98881.
def _affine_kwargs(dtype) -> dict:
    return {"symmetric": False} if dtype == qint8 else {}


def _calibration(act_dtype):
    def make(site: OpSite) -> QConfig:
        dtype = _act_dtype(site, act_dtype)
        observer = MinMaxObserver if dtype == qint16 else MSEObserver
        return get_qconfig(observer=observer, out_dtype=dtype, weight_dtype=qint8, observer_kwargs=_affine_kwargs(dtype))
    return make


def _qat(act_dtype, fix_scale=False):
    def make(site: OpSite) -> QConfig:
        dtype = _act_dtype(site, act_dtype)
        return get_qconfig(out_dtype=dtype, weight_dtype=qint8, qat=True, fix_scale=fix_scale,
                           observer_kwargs=_affine_kwargs(dtype))
    return make


default_calibration_qconfig_setter = TemplateSetter(
    "default_calibration_qconfig_setter", _calibration(qint8),
    "Post-training calibration: int8 activations (MSE observer), int8 per-channel weights.",
    splits_gemm_inputs=RESIDUAL_NORMS, weight_rounding="gptq")
calibration_8bit_weight_16bit_act_qconfig_setter = TemplateSetter(
    "calibration_8bit_weight_16bit_act_qconfig_setter", _calibration(qint16),
    "Post-training calibration: int16 activations (min-max), int8 per-channel weights.")
default_qat_qconfig_setter = TemplateSetter(
    "default_qat_qconfig_setter", _qat(qint8),
    "QAT: int8 activations (moving-average min-max), int8 per-channel weights.", qat=True,
    splits_gemm_inputs=RESIDUAL_NORMS)
qat_8bit_weight_16bit_act_qconfig_setter = TemplateSetter(
    "qat_8bit_weight_16bit_act_qconfig_setter", _qat(qint16),
    "QAT: int16 activations (moving-average min-max), int8 per-channel weights.", qat=True)
qat_8bit_weight_16bit_fixed_act_qconfig_setter = TemplateSetter(
    "qat_8bit_weight_16bit_fixed_act_qconfig_setter", _qat(qint16, fix_scale=True),
    "QAT: int16 activations whose scales stay as calibrated (load the calibrated state dict, "
    "or calibrate first); only the weights train.", qat=True)

all_fp16_qconfig_setter = TemplateSetter(
    "all_fp16_qconfig_setter", lambda site: get_qconfig(out_dtype=torch.float16),
    "Every op float16 (inputs, weights and outputs rounded to float16; no observers): a float16 model "
    "for NASH_P/NASH_H. Follow it with ModuleNameQconfigSetter to make parts of the model integer.")


class ModuleNameQconfigSetter:
    """Override the qconfig of named sites: ``{name: QConfig}``.

    A key matches the site of that exact name and every site below it (``"layer1"`` matches
    ``"layer1.0.conv1"``). ``prepare`` raises if a key matches no site. A value of ``None``
    leaves the matched sites float. Raises ``TypeError`` at construction for a key that is not a
    string or a value that is not a ``QConfig`` (or None), naming the key.
    """

    def __init__(self, qconfigs: Mapping[str, QConfig | None]):
        if not isinstance(qconfigs, Mapping):
            raise TypeError(f"ModuleNameQconfigSetter takes a dict {{module name: QConfig}}, got "
                            f"{type(qconfigs).__name__}")
        for key, qconfig in qconfigs.items():
            if not isinstance(key, str):
                raise TypeError(f"ModuleNameQconfigSetter: key {key!r} must be a module name (str), "
                                f"got {type(key).__name__}")
            if qconfig is not None and not isinstance(qconfig, QConfig):
                raise TypeError(f"ModuleNameQconfigSetter: the value for {key!r} must be a QConfig "
                                f"(edgequant.get_qconfig(...)) or None (float), got {qconfig!r} "
                                f"({type(qconfig).__name__})")
        self.qconfigs = dict(qconfigs)

    def matches(self, key: str, site: OpSite) -> bool:
        return site.name == key or site.name.startswith(key + ".")

    def __call__(self, sites: Sequence[OpSite], current: dict) -> dict:
        _check_setter_args("ModuleNameQconfigSetter", sites, current)
        out = dict(current)
        for key, qconfig in self.qconfigs.items():
            hit = [s for s in sites if self.matches(key, s)]
            if not hit:
                near = sorted(s.name for s in sites if key.split(".")[-1] in s.name)[:5]
                raise ValueError(
                    f"ModuleNameQconfigSetter: {key!r} matches no quantizable op of the model"
                    + (f"; similar names: {near}" if near else "")
                )
            for s in hit:
                out[s.name] = qconfig
        return out

    def __repr__(self) -> str:
        return f"ModuleNameQconfigSetter({sorted(self.qconfigs)})"


def _check_setter_args(name: str, sites, current) -> None:
    """A setter is called with the model's ``OpSite`` list and the qconfigs so far (a dict)."""
    if isinstance(sites, (str, bytes)) or not isinstance(sites, Sequence) \
            or not all(isinstance(x, OpSite) for x in sites):
        raise TypeError(f"{name}: sites must be a list of edgequant.qconfig_template.OpSite (prepare passes the "
                        f"model's op sites), got {type(sites).__name__}")
    if not isinstance(current, dict):
        raise TypeError(f"{name}: current must be the dict of qconfigs set so far, got {type(current).__name__}")


def apply_setters(setters, sites: Sequence[OpSite]) -> dict:
    """Run ``setters`` in order over ``sites``; returns ``{site name: QConfig or None}``."""
    _check_setter_args("apply_setters", sites, {})
    if callable(setters):
        setters = (setters,)
    if isinstance(setters, (str, bytes)) or not hasattr(setters, "__iter__"):
        raise TypeError(f"qconfig_setter must be a setter or a tuple of setters from edgequant.qconfig_template "
                        f"(e.g. (default_calibration_qconfig_setter,)), got {setters!r} ({type(setters).__name__})")
    current: dict = {}
    for setter in setters:
        if not callable(setter):
            raise TypeError(
                f"qconfig_setter entries must be setters from edgequant.qconfig_template or "
                f"ModuleNameQconfigSetter, got {setter!r} ({type(setter).__name__})"
            )
        try:
            current = setter(sites, current)
        except Exception as exc:
            if getattr(setter, "__module__", "").startswith("edgequant."):
                raise   # edgequant's own setters raise clear errors already
            raise _setter_error(setter, exc) from exc
        if not isinstance(current, dict):
            raise TypeError(f"qconfig setter {setter!r} returned {type(current).__name__}, expected a dict")
        _check_result(setter, current, sites)
    return current


WEIGHT_ROUNDINGS = ("gptq", "nearest")


def _as_tuple(setters) -> tuple:
    """``setters`` as ``prepare`` takes them (one setter, a tuple or a list) as a tuple."""
    return tuple(setters) if isinstance(setters, (tuple, list)) else (setters,)


def qat_template(setters) -> bool:
    """Whether a QAT template (``setter.qat``) is among ``setters`` (one setter or a tuple)."""
    return any(getattr(s, "qat", False) is True for s in _as_tuple(setters))


def weight_rounding_of(setters, override: str | None = None) -> str:
    """How calibration's closing step rounds the conv/linear weights of a model prepared with
    ``setters`` (``prepare(..., weight_rounding=override)``): ``override`` when given; else
    ``"nearest"`` when a QAT template is among them (its weights train from their float values),
    ``"gptq"`` when one of them says so (``TemplateSetter(..., weight_rounding="gptq")``, as
    ``default_calibration_qconfig_setter`` does: ``edgequant.ptq.gptq`` on the batches calibration
    kept, kept only where it brings the outputs nearer float), and ``"nearest"`` otherwise."""
    if override is not None:
        if override not in WEIGHT_ROUNDINGS:
            raise ValueError(f"prepare: weight_rounding must be one of {list(WEIGHT_ROUNDINGS)} or None (the "
                             f"template's), got {override!r}")
        return override
    if qat_template(setters):
        return "nearest"
    return "gptq" if any(getattr(s, "weight_rounding", None) == "gptq" for s in _as_tuple(setters)) else "nearest"


class QconfigSetterError(ValueError):
    """A user's qconfig setter raised an exception whose type cannot carry a new message."""


def _setter_error(setter, exc: Exception) -> Exception:
    """``exc`` (same type when it takes a message) prefixed with the setter's name, its file:line
    where it raised, and the op site it was configuring (a local ``OpSite`` of its frames)."""
    code = getattr(setter, "__code__", None) or getattr(getattr(type(setter), "__call__", None), "__code__", None)
    name = getattr(setter, "__qualname__", None) or type(setter).__qualname__
    where, site, tb = (f"{code.co_filename}:{code.co_firstlineno}" if code else "?"), None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if code is not None and frame.f_code.co_filename == code.co_filename:
            where = f"{frame.f_code.co_filename}:{tb.tb_lineno}"
        site = next((v for v in frame.f_locals.values() if isinstance(v, OpSite)), site)
        tb = tb.tb_next
    at = f" while configuring op site {site.name!r} ({site.op})" if site is not None else ""
    msg = f"qconfig setter {name} ({where}) raised {type(exc).__name__}{at}: {exc}"
    try:
        new = type(exc)(msg)
    except Exception:
        new = None
    return new if type(new) is type(exc) and str(new) == msg else QconfigSetterError(msg)


def _check_result(setter, result: dict, sites: Sequence[OpSite]) -> None:
    """A setter's dict maps site names to a ``QConfig`` or ``None``; anything else is refused
    naming the setter and the key (an unknown name would silently configure nothing)."""
    names = {s.name for s in sites}
    for key, qc in result.items():
        if key not in names:
            raise ValueError(f"qconfig setter {setter!r} returned the name {key!r}, which is no op site of the model; "
                             f"sites: {sorted(names)[:20]}{' ...' if len(names) > 20 else ''}")
        if qc is not None and not isinstance(qc, QConfig):
            raise TypeError(f"qconfig setter {setter!r} returned {type(qc).__name__} for {key!r}; expected a QConfig "
                            "(edgequant.get_qconfig(...)) or None (keep the op float)")


__all__ = [
    "OpSite", "ModuleNameQconfigSetter", "QconfigSetterError", "apply_setters", "weight_rounding_of", "WEIGHT_ROUNDINGS", "qat_template",
    "default_calibration_qconfig_setter", "calibration_8bit_weight_16bit_act_qconfig_setter",
    "default_qat_qconfig_setter", "qat_8bit_weight_16bit_act_qconfig_setter",
    "qat_8bit_weight_16bit_fixed_act_qconfig_setter", "all_fp16_qconfig_setter", "qint8", "qint16",
]


# -- GEMM-int8 templates -------------------------------------------------------------------------------
# int8 where a matrix product reads the tensor, int16 everywhere else: the operating point of tools
# that quantize only the Linear/conv layers, with the rest of the graph still integer. A site gets
# the int8 template's qconfig (``_calibration(qint8)`` / ``_qat(qint8)``: its observer, quint8 for
# non-negative outputs) when every op that computes from its output is a GEMM
# (``gemm_inputs.GEMM_OPS``: conv1d/2d, conv_transpose2d, linear, matmul/bmm/mm, addmm, einsum;
# looking through reshapes, permutes and other grid-keeping ops, ``OpSite.feeds``), and the int16
# template's qconfig (min-max) otherwise; weights are int8 per channel in both. So a GEMM's output
# is int16 unless another GEMM reads it (Q/K/V projections feeding the attention products, softmax
# feeding the context product). A tensor read by a GEMM and by other ops (a layer-norm output that
# feeds the next projections and the residual add, a stem conv feeding a conv and a skip
# connection) stays int16, and ``prepare`` gives the GEMMs an int8 copy of it: the templates say
# ``splits_gemm_inputs``, and ``gemm_inputs.split_gemm_inputs`` adds one quantize point (site
# ``<tensor>.gemm_input``, a ``rescale`` in the integer model) between the tensor and its GEMMs.
# Quantizing the shared tensor itself to int8 instead puts the int8 error into the residual stream:
# on all-MiniLM-L6-v2 int8 layer-norm outputs alone take the int16 model's sentence cosine from 0.99967
# to 0.988. Signed int8 GEMM inputs are affine, as in the int8 templates (torchao's activations are
# uint8 affine too). MiniLM integer model, 48 held-out sentences: symmetric 0.98704, affine 0.99409
# (torchao's Linear-only int8: 0.99386), affine after ``ptq.smooth_quant`` 0.99653
# (tests/test_gemm_int8.py, tests/test_smooth_quant.py).
def _gemm_int8(int8_make, int16_make):
    def make(site: OpSite) -> QConfig:
        return int8_make(site) if _is_gemm_input(site) else int16_make(site)
    return make


gemm_int8_calibration_qconfig_setter = TemplateSetter(
    "gemm_int8_calibration_qconfig_setter", _gemm_int8(_calibration(qint8), _calibration(qint16)),
    "Post-training calibration: the inputs of conv/linear/matmul-like ops int8 (the int8 template's "
    "observer, affine), every other activation int16 (min-max), int8 per-channel weights.", splits_gemm_inputs=True)
gemm_int8_qat_qconfig_setter = TemplateSetter(
    "gemm_int8_qat_qconfig_setter", _gemm_int8(_qat(qint8), _qat(qint16)),
    "QAT: the inputs of conv/linear/matmul-like ops int8 (affine), every other activation int16 "
    "(moving-average min-max), int8 per-channel weights.", qat=True, splits_gemm_inputs=True)

__all__ += ["gemm_int8_calibration_qconfig_setter", "gemm_int8_qat_qconfig_setter"]
