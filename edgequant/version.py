"""The package's version string.

Takes nothing; ``__version__`` is what ``edgequant.__version__`` re-exports and what the ONNX
writers (``visualize``, ``onnx_export.builder``) record as the producer version. It lives in its
own module so that they read it without importing the package ``__init__`` (an import cycle).
Keep it equal to ``version`` in pyproject.toml.
"""
__version__ = "0.1.0"
