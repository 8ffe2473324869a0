"""The demo ``make demo`` runs: a small model taken from float to an integer-only model.

Takes nothing (scikit-learn's digits data set, bundled with scikit-learn); trains a small
convolutional classifier in float for a few seconds, prepares it with the int8 and the
int8-weight/int16-activation templates, calibrates each on 256 images, exports and converts
it to the integer model, saves it and writes an ONNX picture, and prints a table of test
accuracy and agreement with float for the simulation and the integer model.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import FakeQuantState, DeQuantStub, QuantStub, March, convert, export, load, prepare, save, set_fake_quantize, \
    visualize
from .qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter, default_calibration_qconfig_setter


class DigitsNet(nn.Module):
    """Conv + BN + ReLU6, a residual depthwise block, pooling and a linear head, for 8x8 digits."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c * 16, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        x = F.relu(x + self.dw(x))
        x = F.avg_pool2d(x, 2).flatten(1)
        return self.dequant(self.head(x))


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(model, x, y, epochs=10):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    t0 = time.time()
    xtr, ytr, xte, yte = _digits()
    model = _train(DigitsNet(), xtr, ytr)
    with torch.no_grad():
        ref = model(xte).argmax(1)
    print(f"trained DigitsNet on scikit-learn digits ({len(xtr)} train / {len(xte)} test) in {time.time() - t0:.1f} s")
    rows = [("float", 100 * (ref == yte).float().mean().item(), 100.0)]
    out_dir = os.environ.get("EDGEQUANT_DEMO_DIR") or tempfile.mkdtemp(prefix="edgequant-demo-")
    for label, tag, setter in (("int8", "int8", default_calibration_qconfig_setter),
                               ("int8 w / int16 act", "int16", calibration_8bit_weight_16bit_act_qconfig_setter)):
        calib = prepare(model, xtr[:2], qconfig_setter=(setter,))
        set_fake_quantize(calib, FakeQuantState.CALIBRATION)
        with torch.no_grad():
            for xb in xtr[:256].split(64):
                calib(xb)
        set_fake_quantize(calib, FakeQuantState.VALIDATION)
        quantized = convert(export(calib, xtr[:2]), March.NASH_M)
        path = os.path.join(out_dir, f"digits-{tag}.eqm")
        save(quantized, path)
        visualize(quantized, os.path.join(out_dir, f"digits-{tag}.onnx"))
        reloaded = load(path)
        with torch.no_grad():
            sim = calib(xte).argmax(1)
            integer = reloaded(xte).argmax(1)
        for stage, pred in (("simulation", sim), ("integer model", integer)):
            rows.append((f"{label} {stage}", 100 * (pred == yte).float().mean().item(),
                         100 * (pred == ref).float().mean().item()))
        if tag == "int8":
            summary = quantized.summary()
    print(f"\n{'model':<34}{'accuracy %':>12}{'agrees with float %':>22}")
    for label, acc, agree in rows:
        print(f"{label:<34}{acc:>12.2f}{agree:>22.2f}")
    print("\nint8 integer model (summary()):")
    for row in summary:
        scale = row["scale"]
        scale = f"{scale:.3g}" if isinstance(scale, float) else ("per channel" if scale else "-")
        print(f"  {row['name']:<12} {row['op']:<12} {str(row['dtype']):<8} scale={scale}")
    print(f"\ninteger models (.eqm) and ONNX pictures written to {out_dir}")
    print(f"\ndone in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
