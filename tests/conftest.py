"""Test set-up: the tests import their helpers (models.py, seeds/) from this folder."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
