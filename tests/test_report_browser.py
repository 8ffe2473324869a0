"""The HTML report rendered by a real browser (Debian's chromium, headless).

Writes the report of a small calibrated model with a lookup table (so every plot kind is
there), has chromium load it from disk, dump the DOM after rendering and take a screenshot,
and checks that the page rendered (title and sections in the DOM), every plot is an ``<img>``
the browser kept, and the screenshot is not blank: it shows the colours the plots are drawn
in. ``make test`` installs chromium when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.analysis import report
from edgequant.qconfig_template import default_calibration_qconfig_setter
from models import calibrate

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = eq.QuantStub(), eq.DeQuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.sigmoid(self.conv(self.quant(x)))          # a lookup table in the integer model
        return self.dequant(self.head(x.mean((2, 3))))


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `apt-get install -y chromium` (make test does it)")
    tmp = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = _Net().eval()
    data = [torch.randn(16, 3, 12, 12) for _ in range(4)]
    calib = calibrate(eq.prepare(model, data[0][:2], qconfig_setter=(default_calibration_qconfig_setter,)), data)
    quantized = eq.convert(eq.export(calib), eq.March.NASH_M)
    path = report(tmp / "report.html", model, calib, quantized, data,
                  tables={"accuracy": [{"stage": "float", "agreement %": 100.0}]})
    return tmp, path


def test_report_renders_with_its_plots_in_headless_chromium(page):
    tmp, path = page
    dom = _chromium(tmp, "--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<title>edgequant quantization report</title>" in html
    for section in ("Qconfig of every tensor", "Per-layer agreement", "Op sensitivity",
                    "Activation histograms and clipping ranges", "Lookup tables"):
        assert section in html, section
    imgs = re.findall(r"<img[^>]*src=\"data:image/png;base64,[A-Za-z0-9+/=]{200,}\"", html)
    # per-layer SQNR, sensitivity, one histogram sheet, one LUT sheet at least
    assert len(imgs) >= 4 and len(imgs) == html.count("<img")


def test_report_screenshot_is_not_blank_and_shows_the_plots(page):
    from matplotlib.image import imread

    tmp, path = page
    shot = tmp / "shot.png"
    res = _chromium(tmp, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", path.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = (imread(shot)[..., :3] * 255).round().astype(np.int16)
    assert img.shape[:2] == (2400, 1280)
    assert img.std() > 10                                   # not a blank page
    def share(rgb):                                          # pixels in a plot colour (matplotlib default blue,
        return float((np.abs(img - np.array(rgb)).max(-1) <= 24).mean())  # histogram bars)
    assert share((0x1f, 0x77, 0xb4)) > 1e-4                 # the per-layer SQNR line
    assert share((0x66, 0x88, 0xaa)) > 1e-3                 # histogram bars
