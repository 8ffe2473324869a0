"""ONNX element types and NumPy dtypes of edgequant's quantized types.

Takes a quantized dtype name (``qint8``, ``quint8``, ``qint16``, ``qint32``, ``qint48``, ...);
returns the ONNX element type, NumPy dtype and dtype name of its storage (``QuantDType.storage``:
``qint48`` is stored as int64).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..dtype import DTYPES, get_dtype

_BY_STORAGE = {"torch.int8": (TensorProto.INT8, np.int8), "torch.uint8": (TensorProto.UINT8, np.uint8),
               "torch.int16": (TensorProto.INT16, np.int16), "torch.int32": (TensorProto.INT32, np.int32),
               "torch.int64": (TensorProto.INT64, np.int64)}


def storage_elem(qdtype: str) -> int:
    return _BY_STORAGE[str(get_dtype(qdtype).storage)][0]


def storage_np(qdtype: str):
    return _BY_STORAGE[str(get_dtype(qdtype).storage)][1]


def storage_name(dtype: str) -> str:
    """The storage dtype name (``"int8"``, ..., ``"int64"``) of a quantized dtype; any other name as it is."""
    return str(DTYPES[dtype].storage).removeprefix("torch.") if dtype in DTYPES else dtype
