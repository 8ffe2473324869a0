"""Quantized data types.

Takes nothing; defines the integer types a quantized tensor can have (``qint4``, ``qint8``,
``quint8``, ``qint16``, ``qint32``, and the wide accumulator types ``qint48``/``qint64``) as
small frozen records: bit width, signedness, the representable range ``[qmin, qmax]`` and the
torch dtype that stores the values. Every other module refers to these records, never to raw
bit widths.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantDType:
    """An integer type of ``bits`` bits, signed (two's complement) or unsigned."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage(self) -> torch.dtype:
        """The smallest torch integer dtype that holds every value of this type."""
        if not self.signed:
            return torch.uint8 if self.bits <= 8 else torch.int32
        return {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[max(8, 1 << (self.bits - 1).bit_length())]

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


qint4 = QuantDType("qint4", 4, True)
qint8 = QuantDType("qint8", 8, True)
quint8 = QuantDType("quint8", 8, False)
qint16 = QuantDType("qint16", 16, True)
qint32 = QuantDType("qint32", 32, True)
# Wide accumulators (a march's ``wide_acc_bits``): only the raw accumulator output of a conv-like
# node whose worst-case bound exceeds int32 has one of these; no activation or weight does.
qint48 = QuantDType("qint48", 48, True)
qint64 = QuantDType("qint64", 64, True)

DTYPES: dict[str, QuantDType] = {d.name: d for d in (qint4, qint8, quint8, qint16, qint32, qint48, qint64)}


def get_dtype(dtype: QuantDType | str) -> QuantDType:
    """Return the ``QuantDType`` named by ``dtype`` (a record or its name, e.g. ``"qint8"``)."""
    if isinstance(dtype, QuantDType):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown quantized dtype {dtype!r}; expected one of {sorted(DTYPES)}") from None
