"""Test set-up: the tests import their helpers (models.py, seeds/) from this folder."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    """Under pytest-xdist (``make test``: two workers on two cores) each worker computes on one
    thread: two workers with torch's default of one thread per core would run four spinning
    OpenMP threads on two cores, which slows small-op graphs (a sweep through EfficientNet-Lite0
    op by op) several times over."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
