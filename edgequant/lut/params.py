"""A table op's integer parameters as the IR carries them.

Takes a node's ``attrs["lut"]`` (kind, table attributes, JSON parameters, names of extra
constants) with the tensors that follow its quantized inputs; ``unpack`` returns the
parameter dict the kernels read and ``n_extra`` how many trailing inputs are table constants.
The op table (``ops/nonlinear.py``: ``table_kernel``), the ONNX writer and the reports all read
tables through these two.
"""
from __future__ import annotations

import torch

from .table import LutTable


def unpack(lut: dict, extra: list[torch.Tensor]) -> dict:
    """The kernel parameters from a node's ``attrs["lut"]`` and its trailing constant inputs."""
    nt = len(lut["tables"])
    return {"params": lut["params"],
            "tables": [LutTable.from_attrs(a, e) for a, e in zip(lut["tables"], extra[:nt])],
            "consts": dict(zip(lut["consts"], extra[nt:]))}


def n_extra(lut: dict) -> int:
    return len(lut["tables"]) + len(lut["consts"])
