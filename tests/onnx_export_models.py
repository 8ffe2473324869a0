"""Shared by tests/test_onnx_export_qdq.py and tests/test_onnx_export_integer.py.

- ``session(model_or_path)``: an ONNX Runtime CPU session (warnings off);
- ``prepared_minilm()``: all-MiniLM-L6-v2 prepared with int16 activations, calibrated on 16
  calibration sentences, with its example inputs (the tokenizer and the float model too);
- ``TableCNN``: an int8 MNIST CNN with convs, a residual add, SiLU and sigmoid tables, max and
  average pooling and a linear head.
"""
import functools

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16

from models import calibrate


def check_onnx_file(flavour, cm, g, x, path):
    """Export ``g`` (integer flavour) or ``cm`` (QDQ) to ``path`` and run it in ONNX Runtime: the
    integer file equals the integer model bit for bit; ONNX Runtime's own QDQ arithmetic stays within
    3 output steps of the simulation."""
    eq.export_onnx(g if flavour == "integer" else cm, path, (x,), flavour=flavour)
    sess = session(path)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    want = (g(x) if flavour == "integer" else cm(x)).detach().numpy()
    if flavour == "integer":
        np.testing.assert_array_equal(y, want)
    else:
        assert np.abs(y - want).max() <= 3 * g.values[g.nodes[-1].inputs[0]].qparams.scale[0]


def session(model):
    """An ONNX Runtime CPU session for a path or an ``onnx.ModelProto``."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def prepared_minilm():
    """``(st, cm, example_inputs)``: MiniLM prepared with int16 activations and calibrated (once per
    test process: both ONNX test files read it and neither changes it)."""
    import real_data as data

    torch.manual_seed(0)
    st = data.load_minilm()
    bert = st[0].auto_model.eval()
    ex = data.tokenize(st, data.CALIBRATION_SENTENCES[:4])
    with torch.no_grad():
        cm = eq.prepare(bert, ex, qconfig_setter=(T16,))
        calibrate(cm, [data.tokenize(st, data.CALIBRATION_SENTENCES[i:i + 8]) for i in range(0, 16, 8)])
    return st, cm, ex


class TableCNN(nn.Module):
    """Conv+BN+ReLU, a conv with SiLU on a residual branch, max pooling, a strided conv with a
    sigmoid, global average pooling and a linear head."""

    def __init__(self, c=16):
        super().__init__()
        self.quant = eq.QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.SiLU()
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * c, 10)
        self.dequant = eq.DeQuantStub()

    def forward(self, x):
        x = self.stem(self.quant(x))
        x = x + self.act(self.conv(x))
        x = F.max_pool2d(x, 2)
        x = torch.sigmoid(self.down(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.dequant(self.head(x))
