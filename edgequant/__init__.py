"""edgequant: float PyTorch model -> fake-quant simulation -> bit-exact integer model.

This module only re-exports the public API; each name lives in the module that shows its
stage of the pipeline (see README.md).
"""
from .capture import CaptureError, wrap
from .dtype import QuantDType, qint4, qint8, qint16, qint32, quint8
from .fake_quant import FakeQuantize, FakeQuantState, calibrate, set_fake_quantize
from .march import March, get_march, set_march
from .observers import (FixedScaleObserver, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        MSEObserver, PercentileObserver, shrink_range)
from .nn import DeQuantStub, FakeCast, FloatFunctional, QuantStub, SegmentLUT
from .prepare import prepare
from .qat_bn import freeze_bn
from .qconfig import QConfig, get_qconfig
from .qmath import dequantize, fake_quantize, quantize, quantize_multiplier, requantize
from .export import export
from .convert import convert
from . import run as _run  # noqa: F401  (installs the runner that Graph.__call__ uses)
from .serialize import load, save
from .visualize import visualize
from .onnx_export import export_onnx
from . import analysis, deploy, functional, ptq  # noqa: E402  (public submodules: edgequant.deploy.split, ...)
from .version import __version__

__all__ = [
    "QuantDType", "qint4", "qint8", "quint8", "qint16", "qint32",
    "March", "set_march", "get_march",
    "quantize", "dequantize", "fake_quantize", "quantize_multiplier", "requantize",
    "FakeQuantize", "FakeQuantState", "set_fake_quantize", "calibrate", "QConfig", "get_qconfig",
    "QuantStub", "DeQuantStub", "FloatFunctional", "SegmentLUT", "FakeCast", "wrap", "CaptureError",
    "prepare", "freeze_bn", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver", "MSEObserver",
    "KLObserver", "FixedScaleObserver", "shrink_range",
    "export", "convert", "save", "load", "visualize", "export_onnx",
]
