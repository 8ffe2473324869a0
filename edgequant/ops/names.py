"""The names a graph may carry, and the only way such a name becomes a torch object.

Takes nothing; defines the allow-lists that ``resolve`` (node call targets, ``targets()``), ``ops.call.decode``
(``{"$dtype": ...}``, ``{"$memory_format": ...}``, ``{"$device": ...}``) and ``check_graph``
(rule G10) read. A graph file holds names, never code: a name is looked up in these tables,
built once from the op table (every aten overload an ``OpSpec`` lists) plus ``EXTRA_TARGETS``,
the reviewed list of pure tensor and index-math ops that capture records outside the table
(shape queries, integer arithmetic, casts, creation of index tensors). Nothing here calls
``getattr`` on a string that came from a file: the strings are this module's literals.

A name missing from ``targets()`` is an op edgequant cannot run; to support one, review that it
only computes on its arguments (no file, process or global state) and add it to
``EXTRA_TARGETS``.
"""
from __future__ import annotations

import functools
import operator
import re

import torch


def torch_op(name: str):
    """The aten overload ``name`` of this torch, or None. For the literal names of the op table
    and of this module only (``targets`` builds the allow-list with it); never pass it a string
    from a file."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    packet = getattr(torch.ops.aten, parts[1], None)
    return None if packet is None else getattr(packet, parts[2], None)


_TABLE: dict[str, tuple[str, ...]] = {}   # op name -> aten targets of its row; ops/__init__ fills it


def set_table(specs) -> None:
    """Record the op table's names and targets (``edgequant.ops`` calls this once, as it
    assembles the table; this module sits below the families so that they may resolve calls)."""
    _TABLE.clear()
    _TABLE.update({s.name: tuple(s.targets) for s in specs})
    targets.cache_clear()
    op_names.cache_clear()


def resolve(target: str):
    """The torch op overload named ``target`` (``"aten.add.Tensor"``), or None if absent.

    Only names on the allow-list (``targets()``: the op table and its reviewed extras)
    resolve; any other string, e.g. one read from a file, gives None and is never looked up.
    """
    return targets().get(target) if isinstance(target, str) else None

# Ops capture records for non-float plumbing (op "aten", index math, masks, casts) and that the
# table does not list. Each only computes on its arguments. Creation ops (``BOUNDED_ARGS``) get
# their size arguments bounded by rule F2.
EXTRA_TARGETS: tuple[str, ...] = (
    # shapes and symbolic sizes
    "aten.sym_size.int", "aten.sym_numel.default", "aten.sym_stride.int", "aten.size.int", "aten.numel.default",
    # integer / boolean arithmetic and comparisons on index tensors
    "aten.add.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Tensor",
    "aten.rsub.Scalar", "aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar",
    "aten.div.Tensor_mode", "aten.div.Scalar_mode", "aten.floor_divide.default", "aten.floor_divide.Scalar",
    "aten.remainder.Tensor", "aten.remainder.Scalar", "aten.fmod.Tensor", "aten.fmod.Scalar", "aten.neg.default",
    "aten.abs.default", "aten.sign.default", "aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor",
    "aten.pow.Scalar", "aten.maximum.default", "aten.minimum.default", "aten.clamp.default",
    "aten.clamp.Tensor", "aten.clamp_min.default", "aten.clamp_max.default", "aten.floor.default",
    "aten.ceil.default", "aten.round.default", "aten.trunc.default",
    "aten.bitwise_and.Tensor", "aten.bitwise_or.Tensor", "aten.bitwise_xor.Tensor", "aten.bitwise_not.default",
    "aten.bitwise_and.Scalar", "aten.bitwise_or.Scalar", "aten.logical_and.default", "aten.logical_or.default",
    "aten.logical_not.default", "aten.logical_xor.default", "aten.__and__.Tensor", "aten.__or__.Tensor",
    "aten.eq.Scalar", "aten.eq.Tensor", "aten.ne.Scalar", "aten.ne.Tensor", "aten.lt.Scalar", "aten.lt.Tensor",
    "aten.le.Scalar", "aten.le.Tensor", "aten.gt.Scalar", "aten.gt.Tensor", "aten.ge.Scalar", "aten.ge.Tensor",
    "aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar",
    "aten.isnan.default", "aten.isinf.default", "aten.isfinite.default",
    # reductions and ordering on index tensors
    "aten.sum.default", "aten.sum.dim_IntList", "aten.cumsum.default", "aten.prod.default", "aten.prod.dim_int",
    "aten.any.default", "aten.any.dim", "aten.all.default", "aten.all.dim", "aten.argmax.default",
    "aten.argmin.default", "aten.max.default", "aten.max.dim", "aten.min.default", "aten.min.dim",
    "aten.amax.default", "aten.amin.default", "aten.sort.default", "aten.argsort.default", "aten.topk.default",
    # casts and copies
    "aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.type_as.default",
    "aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
    "aten.lift_fresh_copy.default", "aten._assert_tensor_metadata.default",
    # moving and indexing index tensors
    "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
    "aten.unflatten.int", "aten.permute.default", "aten.transpose.int", "aten.t.default", "aten.squeeze.dim",
    "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default", "aten.expand.default",
    "aten.expand_as.default", "aten.repeat.default", "aten.slice.Tensor", "aten.select.int",
    "aten.narrow.default", "aten.index.Tensor", "aten.index_select.default", "aten.gather.default",
    "aten.masked_fill.Scalar", "aten.masked_fill.Tensor", "aten.cat.default", "aten.stack.default",
    "aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default", "aten.unbind.int",
    "aten.flip.default", "aten.roll.default", "aten.tril.default", "aten.triu.default",
    "aten.embedding.default", "aten.one_hot.default",
    # creation of index tensors and masks (sizes bounded by rule F2)
    "aten.arange.default", "aten.arange.start", "aten.arange.start_step", "aten.linspace.default",
    "aten.zeros.default", "aten.ones.default", "aten.full.default", "aten.empty.memory_format",
    "aten.scalar_tensor.default", "aten.new_zeros.default", "aten.new_ones.default", "aten.new_full.default",
    "aten.new_empty.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default", "aten.empty_like.default",
)

# Float ops that capture records where a model computes in float outside its quantized region
# (a float tail after a DeQuantStub: normalisation of embeddings, box decoding, ...). The table
# lists what edgequant quantizes; these only run as themselves, in float. Each only computes on
# its arguments; those that size their output from an argument are bounded in ``BOUNDED_ARGS``.
FLOAT_TARGETS: tuple[str, ...] = (
    # pointwise math
    "aten.acos.default", "aten.acosh.default", "aten.asin.default", "aten.asinh.default", "aten.atan.default",
    "aten.atanh.default", "aten.atan2.default", "aten.cos.default", "aten.cosh.default", "aten.sin.default",
    "aten.sinh.default", "aten.tan.default", "aten.tanh.default", "aten.exp.default", "aten.exp2.default",
    "aten.expm1.default", "aten.log.default", "aten.log10.default", "aten.log1p.default", "aten.log2.default",
    "aten.sqrt.default", "aten.rsqrt.default", "aten.reciprocal.default", "aten.square.default",
    "aten.sigmoid.default", "aten.erf.default", "aten.erfc.default", "aten.erfinv.default", "aten.sgn.default",
    "aten.frac.default", "aten.lgamma.default", "aten.digamma.default", "aten.hypot.default", "aten.lerp.Scalar",
    "aten.lerp.Tensor", "aten.addcmul.default", "aten.addcdiv.default", "aten.nan_to_num.default",
    "aten.clamp_min.Tensor", "aten.clamp_max.Tensor", "aten.xlogy.Tensor", "aten.logaddexp.default",
    "aten.logit.default",
    # activations
    "aten.relu.default", "aten.relu6.default", "aten.gelu.default", "aten.silu.default", "aten.mish.default",
    "aten.softplus.default", "aten.elu.default", "aten.selu.default", "aten.celu.default",
    "aten.leaky_relu.default", "aten.hardtanh.default", "aten.hardswish.default", "aten.hardsigmoid.default",
    "aten.log_sigmoid_forward.default", "aten.softmax.int", "aten.log_softmax.int", "aten._softmax.default",
    "aten._log_softmax.default",
    # reductions and norms
    "aten.mean.default", "aten.mean.dim", "aten.std.default", "aten.std.dim", "aten.std.correction",
    "aten.var.default", "aten.var.dim", "aten.var.correction", "aten.var_mean.correction",
    "aten.std_mean.correction", "aten.logsumexp.default", "aten.cumprod.default", "aten.cummax.default",
    "aten.cummin.default", "aten.norm.Scalar", "aten.norm.ScalarOpt_dim", "aten.linalg_vector_norm.default",
    "aten.frobenius_norm.dim", "aten.layer_norm.default", "aten.group_norm.default",
    "aten.native_layer_norm.default", "aten.native_group_norm.default", "aten.batch_norm.default",
    "aten._native_batch_norm_legit_no_training.default", "aten.instance_norm.default",
    # products
    "aten.matmul.default", "aten.mm.default", "aten.bmm.default", "aten.addmm.default", "aten.baddbmm.default",
    "aten.linear.default", "aten.einsum.default", "aten.dot.default", "aten.outer.default", "aten.cdist.default",
    "aten.cosine_similarity.default", "aten.pairwise_distance.default",
    # spatial
    "aten.max_pool2d.default", "aten.avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
    "aten.upsample_nearest2d.default", "aten.upsample_bilinear2d.default", "aten.grid_sampler.default",
    "aten.grid_sampler_2d.default", "aten.constant_pad_nd.default", "aten.pad.default",
    "aten.reflection_pad2d.default", "aten.replication_pad2d.default", "aten.pixel_shuffle.default",
    # indexing and layout
    "aten.scatter.value", "aten.scatter.src", "aten.scatter_add.default", "aten.index_put.default",
    "aten.masked_select.default", "aten.nonzero.default", "aten.bucketize.Tensor", "aten.searchsorted.Tensor",
    "aten.diagonal.default",
    "aten.tile.default", "aten.repeat_interleave.self_int", "aten.repeat_interleave.self_Tensor",
    "aten.rot90.default", "aten.broadcast_to.default", "aten.tensor_split.sections",
    "aten.tensor_split.indices", "aten.meshgrid.default", "aten.meshgrid.indexing",
)

# Python's own operators on symbolic sizes (``_operator.mul`` is how capture names operator.mul).
_SYM_OPERATORS = {f"_operator.{f}": getattr(operator, f) for f in
                  ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt", "le", "gt", "ge")}

# Targets no node ever calls: markers that name what a node was (``run`` never resolves them).
MARKER_TARGETS = frozenset({"segment_lut", "edgequant.nn.stubs.dequant_point", "edgequant.nn.stubs.quant_point"})


@functools.lru_cache(maxsize=None)
def targets() -> dict[str, object]:
    """``{target name: op}``: every call target a graph may name, built once (on first use, as
    ``run`` is imported while the op table loads)."""
    table: dict[str, object] = {}
    names = [t for ts in _TABLE.values() for t in ts if t.startswith("aten.")] + list(EXTRA_TARGETS) \
        + list(FLOAT_TARGETS)
    for name in names:
        op = torch_op(name)
        if op is not None:          # an overload this torch version lacks is simply not callable
            table[name] = op
    table.update(_SYM_OPERATORS)
    return table


# Arguments that size what an op allocates, bounded by rule F2: target -> ((position, keyword,
# kind), ...); kind "size": a list of sizes (their product is bounded), "pad": ints that pad or
# spread the input (each bounded), "scale": scale factors (each bounded).
BOUNDED_ARGS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "aten.zeros.default": ((0, "size", "size"),), "aten.ones.default": ((0, "size", "size"),),
    "aten.full.default": ((0, "size", "size"),), "aten.empty.memory_format": ((0, "size", "size"),),
    "aten.new_zeros.default": ((1, "size", "size"),), "aten.new_ones.default": ((1, "size", "size"),),
    "aten.new_full.default": ((1, "size", "size"),), "aten.new_empty.default": ((1, "size", "size"),),
    "aten.repeat.default": ((1, "repeats", "size"),), "aten.expand.default": ((1, "size", "size"),),
    "aten.arange.default": ((0, "end", "pad"),), "aten.arange.start": ((0, "start", "pad"), (1, "end", "pad")),
    "aten.arange.start_step": ((0, "start", "pad"), (1, "end", "pad")),
    "aten.linspace.default": ((2, "steps", "pad"),),
    "aten.one_hot.default": ((1, "num_classes", "pad"),),
    "aten.constant_pad_nd.default": ((1, "pad", "pad"),), "aten.pad.default": ((1, "pad", "pad"),),
    "aten.conv1d.default": ((4, "padding", "pad"), (5, "dilation", "pad")),
    "aten.conv2d.default": ((4, "padding", "pad"), (5, "dilation", "pad")),
    "aten.conv3d.default": ((4, "padding", "pad"), (5, "dilation", "pad")),
    "aten.conv_transpose2d.input": ((3, "stride", "pad"), (4, "padding", "pad"), (5, "output_padding", "pad"),
                                    (7, "dilation", "pad")),
    "aten.conv_transpose1d.default": ((3, "stride", "pad"), (4, "padding", "pad"), (5, "output_padding", "pad"),
                                      (7, "dilation", "pad")),
    "aten.adaptive_avg_pool1d.default": ((1, "output_size", "pad"),),
    "aten.adaptive_avg_pool2d.default": ((1, "output_size", "pad"),),
    "aten.adaptive_max_pool2d.default": ((1, "output_size", "pad"),),
    "aten.upsample_nearest1d.vec": ((1, "output_size", "pad"), (2, "scale_factors", "scale")),
    "aten.upsample_nearest2d.vec": ((1, "output_size", "pad"), (2, "scale_factors", "scale")),
    "aten.upsample_bilinear2d.vec": ((1, "output_size", "pad"), (3, "scale_factors", "scale")),
    "aten.upsample_nearest2d.default": ((1, "output_size", "pad"),),
    "aten.upsample_nearest3d.vec": ((1, "output_size", "pad"), (2, "scale_factors", "scale")),
    "aten._upsample_nearest_exact1d.vec": ((1, "output_size", "pad"), (2, "scale_factors", "scale")),
    "aten._upsample_nearest_exact2d.vec": ((1, "output_size", "pad"), (2, "scale_factors", "scale")),
    "aten.upsample_bilinear2d.default": ((1, "output_size", "pad"),),
    "aten.reflection_pad2d.default": ((1, "padding", "pad"),), "aten.replication_pad2d.default": ((1, "padding", "pad"),),
    "aten.tile.default": ((1, "dims", "size"),), "aten.repeat_interleave.self_int": ((1, "repeats", "pad"),),
    "aten.im2col.default": ((1, "kernel_size", "pad"), (2, "dilation", "pad"), (3, "padding", "pad"),
                            (4, "stride", "pad")),
    "aten.col2im.default": ((1, "output_size", "pad"), (2, "kernel_size", "pad"), (3, "dilation", "pad"),
                            (4, "padding", "pad"), (5, "stride", "pad")),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d, "preserve_format": torch.preserve_format}
_DEVICE = re.compile(r"(cpu|cuda|mps|meta)(:\d{1,3})?")

@functools.lru_cache(maxsize=None)
def op_names() -> frozenset[str]:
    """Every ``Node.op`` a graph may have: the rows of the op table (captured ops, and the ops
    export and convert write themselves: ``ops/core.py``)."""
    return frozenset(_TABLE)


def device_ok(name) -> bool:
    """Whether ``name`` is a device string ``run`` may pass to ``torch.device``."""
    return isinstance(name, str) and _DEVICE.fullmatch(name) is not None


# a symbolic dim as torch prints it: "s0", "2*s0", "s0 + s1", "((s0 - 1)//2) + 1", "Max(1, s0)"
_DIM = re.compile(r"[A-Za-z0-9_ +\-*/%(),.]{1,200}")


def dim_ok(d) -> bool:
    """Whether ``d`` is a valid dim of a ``Value.shape``: an int >= 0 or a symbolic-size text."""
    if isinstance(d, bool):
        return False
    if isinstance(d, int):
        return d >= 0
    return isinstance(d, str) and _DIM.fullmatch(d) is not None and any(c.isalnum() for c in d)


__all__ = ["targets", "op_names", "resolve", "torch_op", "set_table", "EXTRA_TARGETS", "FLOAT_TARGETS", "MARKER_TARGETS", "BOUNDED_ARGS", "DTYPES", "MEMORY_FORMATS",
           "device_ok", "dim_ok"]
