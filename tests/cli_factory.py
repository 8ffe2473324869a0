"""A model factory for ``edgequant quantize SPEC`` in tests/test_cli.py.

``residual_cnn()`` returns what a SPEC function must: the trained residual CNN of
tests/models.py, example inputs, and calibration batches (MNIST training images, 64 a batch).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import trained_cnn  # noqa: E402


def residual_cnn():
    model, (xtr, _, _, _) = trained_cnn()
    return model, (xtr[:2],), list(xtr[:256].split(64))
