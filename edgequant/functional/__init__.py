"""Functional helpers outside the model graph: colour-space conversion (``yuv``)."""
from .yuv import bgr2centered_yuv, centered_yuv2bgr, centered_yuv2rgb, rgb2centered_yuv, yuv_matrices

__all__ = ["rgb2centered_yuv", "bgr2centered_yuv", "centered_yuv2rgb", "centered_yuv2bgr", "yuv_matrices"]
