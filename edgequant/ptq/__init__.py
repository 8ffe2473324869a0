"""Post-training quantization algorithms: ``adaround`` (learned weight rounding), ``gptq``
(weight rounding by the layer inputs' Hessian, about as fast as calibration), a 4-bit
weight calibration template to use it with, ``auto_calibrate`` (per tensor, the calibration
strategy that keeps the final outputs nearest to float), ``op_sensitivity`` (a per-op sensitivity table),
``get_sensitive_op_qconfig_setter`` (int16 for the most sensitive ops) and ``smooth_quant``
(SmoothQuant-style scale migration into the weights of the linears that read a LayerNorm).

| template | activations | weights | observer |
|---|---|---|---|
| ``calibration_4bit_weight_8bit_act_qconfig_setter`` | qint8 (int16 before layer_norm/softmax) | qint4 per channel | MSE (acts), min-max (weights) |

    cm = eq.prepare(model, x, qconfig_setter=(calibration_4bit_weight_8bit_act_qconfig_setter,))
    eq.calibrate(cm, batches)                    # CALIBRATION, then VALIDATION
    eq.ptq.adaround(cm, batches, {"num_step": 1000})   # or eq.ptq.gptq(cm, batches)
"""
from ..dtype import qint4, qint8
from ..observers import MinMaxObserver, MSEObserver
from ..qconfig import get_qconfig
from ..qconfig_template import TemplateSetter, _act_dtype, OpSite
from . import empirical_bias  # noqa: F401  (adds calibration's closing step to set_fake_quantize)
from .adaround import adaround
from .auto_calibrate import auto_calibrate
from .gptq import gptq
from .sensitivity import SensitivityTable, get_sensitive_op_qconfig_setter, op_sensitivity
from .smooth_quant import SmoothedLinear, smooth_quant


def _calibration_4bit_weight(site: OpSite):
    dtype = _act_dtype(site, qint8)
    return get_qconfig(observer=MSEObserver if dtype == qint8 else MinMaxObserver, out_dtype=dtype,
                       weight_dtype=qint4)


calibration_4bit_weight_8bit_act_qconfig_setter = TemplateSetter(
    "calibration_4bit_weight_8bit_act_qconfig_setter", _calibration_4bit_weight,
    "Post-training calibration: int8 activations (MSE observer), int4 per-channel weights "
    "(min-max); the weights are meant to be rounded by edgequant.ptq.adaround.")

__all__ = ["adaround", "auto_calibrate", "gptq", "calibration_4bit_weight_8bit_act_qconfig_setter", "op_sensitivity", "SensitivityTable",
           "get_sensitive_op_qconfig_setter", "smooth_quant", "SmoothedLinear"]
