"""Seed 002's SmallModel in both variants, with only the imports pointed at edgequant.

Variant "single": linear3's output feeds only the DeQuantStub, so it keeps an int32
(high-precision) output. Variant "output_and_input": linear2's output is both a model output
(through a DeQuantStub) and, re-quantized by a second QuantStub, linear3's input.
"""
import torch
import torch.nn as nn
from torch.quantization import DeQuantStub

from edgequant import March, set_march
from edgequant import prepare, set_fake_quantize, FakeQuantState
from edgequant import QuantStub
from edgequant.qconfig_template import default_calibration_qconfig_setter


class SmallModel(nn.Module):
    def __init__(self, output_and_input=False):
        super().__init__()
        self.output_and_input = output_and_input
        self.linear1 = nn.Linear(256, 256)
        self.layernorm = nn.LayerNorm(256)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(256, 60)
        self.linear3 = nn.Linear(60, 60)
        self.quant = QuantStub()
        self.quant_out = QuantStub()
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.linear1(x)
        x = self.layernorm(x)
        x = self.relu(x)
        y = self.linear2(x)
        if not self.output_and_input:
            z = self.linear3(y)
            return self.dequant(z)
        y_out = self.dequant(y)
        y = self.quant_out(y_out)
        z = self.linear3(y)
        z = self.dequant(z)
        return z, y_out


def run(output_and_input=False):
    torch.manual_seed(42)
    example_input = torch.randn(2, 100, 256)
    model = SmallModel(output_and_input)
    output = model(example_input)
    set_march(March.NASH_M)
    calib_model = prepare(model.eval(), example_input, qconfig_setter=(default_calibration_qconfig_setter,))
    calib_model.eval()
    set_fake_quantize(calib_model, FakeQuantState.CALIBRATION)
    calib_model(example_input)
    calib_model.eval()
    set_fake_quantize(calib_model, FakeQuantState.VALIDATION)
    calib_out = calib_model(example_input)
    return output, calib_out, calib_model, example_input


if __name__ == "__main__":
    for variant in (False, True):
        out, calib_out, _, _ = run(variant)
        print(variant, [o.shape for o in (out if isinstance(out, tuple) else (out,))])
