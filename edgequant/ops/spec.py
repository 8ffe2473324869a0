"""The record that describes one op: a row of the op table.

Takes nothing; defines ``OpSpec``, the row that every stage reads: the canonical name
(``conv2d``, ``add``, ...), the aten overloads that capture maps to it, how the op is quantized
in simulation (its ``rule``), its roles in fusion and calibration, how ``convert`` lowers it
(``lower``), the integer kernel that runs it (``kernel``) and its plain-int reference twin
(``reference``), its table kind (``edgequant.lut``) and its integer ONNX form. Each entry is
declared once, in its family's file, next to the functions it names; stages read these fields
and never compare op names. Ops that exist only in integer graphs (``lut``, ``rescale``,
``yuv2rgb``, ...) and the IR's own ops (``quantize``, ``dequantize``, ``aten``, ...) are rows too,
with ``targets=()``.

Quantization rules:

- ``compute``: the op's output gets its own fake-quant (observer + scale); the integer
  model requantizes into it.
- ``shared``: the output lies on the input's grid (reshapes, slicing, max pooling), so it
  reuses the input's qparams and the integer model moves integers unchanged.
- ``source``: the output is quantized from the op's weight (embedding: a quantized table).
- ``float``: the op stays float (wrapped code, leaf modules).

Agreement bound (``lsb``): the largest difference, in LSB of the op's output, between its integer
kernel and the simulation when both get the same quantized inputs, as its family's docstring states
and justifies. Left out it is 0 for shared, source and table rows (codes moved, gathered or looked
up exactly as the simulation does) and 1 for the others (one rounding, which the simulation's
float32 arithmetic may take to the other side of a tie); ``edgequant.analysis.op_lsb`` checks it
node by node on a real model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable



@dataclass(frozen=True)
class OpSpec:
    """One op (module docstring); every field but ``name`` and ``targets`` has a neutral default."""

    name: str                         # canonical lowercase op name
    targets: tuple[str, ...]          # aten overload names, e.g. "aten.conv2d.default"
    rule: str = "compute"             # compute | shared | source | float
    weight_arg: int | None = None     # position of the weight argument (a parameter)
    weight_ch_axis: int = 0           # output-channel axis of that weight
    bias_arg: int | None = None       # position of the bias argument
    fuse_activation: bool = False     # may absorb a following relu/relu6/clamp
    fuse_add: bool = False            # may feed an add at accumulator precision
    high_precision_output: bool = False  # may output int32 when it feeds only a DeQuantStub
    activation: bool = False          # relu-like: can be absorbed by a conv/linear/add
    param_args: tuple[int, ...] = ()  # parameter inputs folded into the integer op (norm affine)
    # -- roles other stages read instead of comparing names ----------------------------------------
    spatial_dims: int | None = None   # conv-like: 1 or 2 spatial dims; None for linear/matmul/others
    transposed: bool = False          # conv_transpose: weight is (in, out/groups, k...)
    folds_into_weighted: bool = False  # batch norm: folded into the conv/linear before it
    residual_add: bool = False        # add: may take a conv/linear accumulator as a term
    table: str | None = None          # table kind ("table", "softmax", "layer_norm", "div"): edgequant.lut
    table_symmetry: str | None = None  # for table kind "table": the table's symmetric mode
    boundary: str | None = None       # "quantize" / "dequantize": where a graph enters or leaves integers
    python_call: bool = False         # runs a Python callable the graph holds (never from a file)
    float_op: bool = False            # an op the IR keeps float (a recorded aten call, float code)
    # -- the stages -----------------------------------------------------------------------------
    lower: Callable | None = None     # convert: (LowerCtx, quant-level node) -> emits int-level nodes
    kernel: Callable | None = None    # run, int level: (graph, node, args) -> tensor
    reference: Callable | None = None  # plain-int reference of ``kernel`` (defaults to ``kernel``)
    onnx_int: str | None = None       # integer ONNX form (edgequant.onnx_export.integer.FORMS)
    quant_level: bool = True          # appears in quant-level graphs (False: only convert writes it)
    weight_transposed_in_product: bool = False  # linear: computes x @ weight.T (weight stored (out, in))
    bias_correction: bool = False     # prepare routes its bias through a BiasCorrection (conv1d/conv2d/linear)
    sensitive_input: bool = False     # magnifies its input's rounding (softmax, exp, division): int16 advised
    # agreement with the simulation, in LSB of the output, when the integer kernel and the simulation
    # get the same quantized inputs (the bound its family docstring states and justifies; checked per
    # node by edgequant.analysis.op_bounds). None: 0 for shared/source/table rows (codes moved,
    # gathered or looked up as the simulation does), 1 for the others (one rounding near a tie)
    lsb: float | None = None
    stub_form: bool = False           # an int-level form of a QuantStub (quantize, identity, rescale)
    # int level, read by edgequant.check_attrs (what a file's node must carry), next to the lowering that writes it
    int_attrs: dict | None = field(default=None, hash=False)  # schema of its attrs: {key: type name | {value: schema}}
    int_inputs: tuple[str, ...] = ()  # its inputs' roles ("bias?": may be null; "m0", "shift": requant multipliers)
    int_zero_points: tuple[tuple[str, int], ...] = ()  # (attr, input): attrs holding an input's zero point
    int_per_channel: tuple[str, ...] = ()  # list attrs with one entry each per channel (or pooled dim)
    lut_record: dict | None = field(default=None, hash=False)  # table kernels: the record attrs["lut"] of its kind

    int16_input: bool = False         # int8 templates give its input int16 (layer norm, softmax)
    int16_args: tuple[int, ...] = ()  # argument positions every template quantizes int16 (grid_sample's grid)
    # ONNX translations of its recorded aten calls, ``{target: fn(c, outs)}``, for ops whose call
    # ``onnx_export/aten.py`` does not translate: ``c`` is that module's ``Ctx`` (``c.b`` the ONNX
    # builder, ``c.args()`` the decoded call); used by both flavours for the ops they pass through
    onnx: dict | None = field(default=None, hash=False)

    def __post_init__(self):
        if self.lsb is None:
            exact = self.rule in ("shared", "source") or self.table is not None
            object.__setattr__(self, "lsb", 0.0 if exact else 1.0)

    @property
    def weighted(self) -> bool:
        """Conv/linear: a weight parameter, quantized per output channel, folded with batch norm."""
        return self.weight_arg is not None and self.rule == "compute"
