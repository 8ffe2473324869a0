"""What a translation of a recorded aten call reads: ``Ctx`` and the decoding of its arguments.

Takes an IR node whose ``attrs`` record an aten call and the ONNX names, dtypes, ranks and shapes
of its inputs (and the shapes of its outputs); ``Ctx.args()`` returns the call's arguments with
``{"$in": k}`` replaced by the ONNX name of input ``k`` (a ``Ref``). Shared by the translations of
``aten.py``, ``aten_more.py`` and the op-table rows' own (``OpSpec.onnx``).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import Builder
from .errors import unsupported
from ..ir import Node

NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "int16": np.int16,
      "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "sym": np.int64}
ONNX_DTYPE = {"float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "bool": 9, "float64": 11}
INT64_MAX = (1 << 63) - 1
_NARROW = ("int8", "uint8", "int16")     # integer codes ONNX Runtime lacks many kernels for


class Ref(str):
    """An ONNX tensor name standing for a ``{"$in": k}`` argument."""


class Ctx:
    """What a translation needs: the builder, the node, its inputs' ONNX names, dtypes, ranks and
    (when the writer knows them) shapes, and its outputs' shapes. Shapes hold ints and strings
    (dynamic dims)."""

    def __init__(self, b: Builder, node: Node, names: list, dtypes: list, ranks: list, flavour: str,
                 shapes: list | None = None, out_shapes: list | None = None, on_grid=None):
        self.b, self.node, self.flavour = b, node, flavour
        self.names, self.dtypes, self.ranks = list(names), list(dtypes), list(ranks)
        self.shapes = None if shapes is None else list(shapes)
        self.out_shapes = out_shapes
        self._on_grid = on_grid

    def on_grid(self, moved: str, k: int) -> str:
        """``moved``, a copy of input ``k`` whose values were only moved (a reshape), put back on
        that input's quantization grid: the QDQ flavour's exact QuantizeLinear/DequantizeLinear
        pair, which keeps ONNX Runtime's QDQ transforms seeing a quantized tensor; else itself."""
        return self._on_grid(moved, k) if self._on_grid is not None else moved

    def decode(self, arg):
        if isinstance(arg, dict):
            if "$in" in arg:
                return Ref(self.names[arg["$in"]])
            if "$dtype" in arg:
                return ("dtype", arg["$dtype"])
            if "$float" in arg:
                return float(arg["$float"])
            if "$device" in arg or "$memory_format" in arg:
                return None
            return {k: self.decode(v) for k, v in arg.items()}
        if isinstance(arg, list):
            return [self.decode(a) for a in arg]
        return arg

    def args(self):
        a = self.node.attrs
        return self.decode(a.get("args", [])), self.decode(a.get("kwargs", {}))

    def dtype_of(self, name: str) -> str:
        return self.dtypes[self.names.index(name)]

    def rank_of(self, name: str) -> int:
        return self.ranks[self.names.index(name)]

    def shape_of(self, name: str) -> tuple:
        """The IR shape of input ``name`` (ints, strings for dynamic dims)."""
        if self.shapes is None:
            raise self.fail("the writer gave no input shapes")
        return tuple(self.shapes[self.names.index(name)])

    def static_dims(self, name: str, dims, what: str) -> list[int]:
        """The sizes of ``dims`` of input ``name``, refused when one is dynamic."""
        shape = self.shape_of(name)
        sizes = [shape[d] for d in dims]
        if not all(isinstance(s, int) for s in sizes):
            raise self.fail(f"{what} needs static sizes of dims {list(dims)} of shape {shape}")
        return sizes

    def fail(self, why: str = ""):
        return unsupported(self.node, self.flavour, why)

    def scalar(self, value, like: str) -> str:
        """A 0-d constant of the dtype of tensor ``like``."""
        return self.b.const(np.asarray(value, dtype=NP[self.dtype_of(like)]))

    def sizes(self, items) -> str:
        """A 1-D int64 tensor from a list of ints and symbolic sizes (0-d int64 tensors)."""
        if all(isinstance(i, int) for i in items):
            return self.b.i64(list(items))
        parts = [self.b.op("Unsqueeze", [i, self.b.i64([0])]) if isinstance(i, Ref) else self.b.i64([int(i)])
                 for i in items]
        return self.b.op("Concat", parts, axis=0)

    def emit(self, op_type: str, inputs, out, back: str | None, **attrs):
        """``op_type`` writing ``out``; cast back from ``carried``'s int32 carrier to ``back`` when given."""
        if back is None:
            return self.b.op(op_type, inputs, out, **attrs)
        return self.b.op("Cast", [self.b.op(op_type, inputs, **attrs)], out, to=ONNX_DTYPE[back])

    def carried(self, xs: list) -> tuple[list, str | None]:
        """``xs`` (tensor names or numbers) with 8/16-bit integer tensors cast to an exact int32
        carrier (ONNX Runtime has no 8/16-bit Max, Min, Where, ReduceMax, ... kernels), and the
        storage dtype to cast the result back to (None when nothing was cast)."""
        back = next((self.dtype_of(x) for x in xs if isinstance(x, Ref) and self.dtype_of(x) in _NARROW), None)
        if back is None:
            return xs, None
        out = []
        for x in xs:
            if isinstance(x, Ref) and self.dtype_of(x) in _NARROW:
                y = Ref(self.b.op("Cast", [x], to=TensorProto.INT32))
                self.names.append(y)
                self.dtypes.append("int32")
                self.ranks.append(self.rank_of(x))
                if self.shapes is not None:
                    self.shapes.append(self.shape_of(x))
                x = y
            out.append(x)
        return out, back


def arg(args, kwargs, pos, key, default=None):
    """Argument ``pos`` of a decoded call, or keyword ``key``, or ``default``."""
    if len(args) > pos:
        return args[pos]
    return kwargs.get(key, default)


def as_list(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n
