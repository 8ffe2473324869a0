"""Analysis: where accuracy is lost between the float model, the simulation and the integer model.

Never imported by the core stages; ``compare`` takes finished models and reports.
"""
from .compare import Comparison, compare, cosine, sqnr

__all__ = ["compare", "Comparison", "cosine", "sqnr"]
