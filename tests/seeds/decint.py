"""Seed 000's DecInt example, with only its imports pointed at edgequant.

It decodes 12-bit pixels through a table (SegmentLUT over an interpolated curve), normalises
each image to [-1, 1] with tensor arithmetic written as Python operators, and runs prepare ->
calibration -> validation (-> export -> convert -> visualize once those stages exist).
"""
import numpy as np
import torch
import torch.nn as nn

from edgequant import March, set_march
from edgequant import prepare, set_fake_quantize, FakeQuantState
from edgequant.nn import SegmentLUT, FloatFunctional
from edgequant.nn import QuantStub, DeQuantStub
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter


def get_dec_func():
    x = [0, 938, 1851, 2396, 3251, 4095]           # 12-bit input positions
    y = [0, 3132, 105740, 387380, 3818601, 16777215]  # decoded values
    lookup_table = np.interp(np.arange(4096), list(x), list(y)).astype(np.int32)
    to_dec = torch.from_numpy(lookup_table).to(torch.float32)

    def to_dec_func(x):
        indices = x.to(torch.int64)
        return torch.take(to_dec.to(x.device), indices)
    return to_dec_func


class DecInt(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_dec = SegmentLUT(get_dec_func(), is_centrosymmetric=True)
        self.sub = FloatFunctional()
        self.quant = QuantStub()
        self.dequant = DeQuantStub()

    def forward(self, img):
        img = self.quant(img)
        img = self.to_dec(img)
        max_vals = img.view(img.size(0), -1).max(dim=1)[0].view(-1, 1, 1, 1)
        min_vals = img.view(img.size(0), -1).min(dim=1)[0].view(-1, 1, 1, 1)
        diff = (max_vals - min_vals) + 1e-6
        img = img - min_vals
        img = torch.clamp(img / diff, 0, 1.0)
        img = img * 2
        img = self.sub.sub(img, 1)
        return self.dequant(img)


def run(input_data=None):
    """The seed's flow; returns (float output, calibrated VALIDATION output, calib model)."""
    if input_data is None:
        input_data = torch.randint(low=0, high=4096, size=(1, 1, 4, 4), dtype=torch.float32)
    model = DecInt().eval()
    with torch.no_grad():
        output = model(input_data)
    set_march(March.NASH_M)
    calib_model = prepare(model.eval(), input_data,
                          qconfig_setter=(calibration_8bit_weight_16bit_act_qconfig_setter,))
    calib_model.eval()
    set_fake_quantize(calib_model, FakeQuantState.CALIBRATION)
    calib_model(input_data)
    calib_model.eval()
    set_fake_quantize(calib_model, FakeQuantState.VALIDATION)
    calib_out = calib_model(input_data)
    return output, calib_out, calib_model


if __name__ == "__main__":
    out, calib_out, _ = run()
    print("float:", out.flatten()[:8])
    print("calib:", calib_out.flatten()[:8])
