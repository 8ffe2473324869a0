"""Which ops are matrix products (GEMMs), who reads a tensor, and int8 copies of GEMM inputs.

Stage: ``prepare``, between fusion and the op sites. Takes a captured graph; ``split_gemm_inputs``
changes it in place and returns the names of the quantize points it added.

- ``GEMM_OPS``: the rows of the op table that multiply two quantized operands and accumulate:
  the rows run by the reduce kernel (conv1d/conv2d/conv_transpose2d, linear, matmul/bmm/mm,
  addmm) and einsum, which lowers onto matmul.
- ``reader_ops(node)``: the canonical ops that compute from ``node``'s value, looking through
  ops whose output lies on their input's grid (``rule="shared"``: reshape, permute, slicing,
  max pooling, masked_fill ...), since those move codes and never requantize. ``prepare`` stores
  it as ``OpSite.feeds``.
- ``caller_only_nodes(gm)``: the values only the model's caller reads (``OpSite.caller_only``):
  graph outputs and what reaches them through ops that move values, and the network's tail after
  its last GEMMs.
- ``split_gemm_inputs(gm, setters)``: a site's qconfig sets the dtype of its one output, so a tensor read
  by a GEMM and by something else (a transformer's layer-norm output feeds the next Q/K/V
  projections and the residual add; a CNN's stem output feeds a conv and the skip connection)
  would get one dtype for both. For each such tensor this inserts one quantize point
  (``quant_point``) on the GEMMs' side only: the GEMMs read the new point (a site of its own,
  named ``<tensor>.gemm_input``, whose only readers are GEMMs), the other readers keep the
  tensor. In the integer model the point is a ``rescale`` (one requantization, e.g. int16 to
  int8). Templates ask for it with ``splits_gemm_inputs``: True for every such tensor (the
  GEMM-int8 templates of ``edgequant.qconfig_template``), or the names of the ops whose outputs
  are split (the int8 templates: ``layer_norm``, a post-norm transformer's residual stream), so
  that GEMM inputs can be int8 while the residual stream stays int16.
"""
from __future__ import annotations

from torch import fx

from .capture import is_float_value
from .nn.stubs import dequant_point, quant_point
from .ops import ALL_SPECS
from .ops.elementwise import lower_rescale_call
from .ops.matmul_forms import lower_einsum
from .ops.matmul_kernels import k_reduce

GEMM_OPS = frozenset(s.name for s in ALL_SPECS if s.quant_level and (s.kernel is k_reduce or s.lower is lower_einsum))


def _spec(node: fx.Node):
    return node.meta.get("eq_spec")


def _passes_grid(user: fx.Node, node: fx.Node) -> bool:
    """``user`` moves ``node``'s codes unchanged: a shared-grid op reading it as its data argument."""
    spec = _spec(user)
    return spec is not None and spec.rule == "shared" and bool(user.args) and user.args[0] is node


def _readers(node: fx.Node, depth: int = 0):
    """The nodes that compute from ``node`` (through shared-grid ops), with the node they read."""
    for u in node.users:
        if _passes_grid(u, node) and depth < 32:
            yield from _readers(u, depth + 1)
        else:
            yield u, node


def _name(node: fx.Node) -> str:
    spec = _spec(node)
    if spec is not None:
        return spec.name
    return "output" if node.op == "output" else getattr(node.target, "__name__", str(node.target))


def caller_only_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value reaches the caller only (``OpSite.caller_only``), in one pass backwards
    and one forwards. Every op computing from the value (through shared-grid ops) is

    - the graph output, or a DeQuantStub whose value only the graph output reads;
    - an op that only moves values to a grid of its own (cat, stack, slice_scatter, copy: the op
      table's rescale calls) whose value in turn reaches the caller only; or
    - for a value that a GEMM computed or that is computed from one (the network's tail after its
      matrix products): a quantized op other than a GEMM whose value is in the tail too (softmax
      expectations, box decoding, score sigmoids, masks), or one with an integer result (an
      argmax, a comparison, a size: no int8 codes are read downstream of it)."""
    nodes = list(gm.graph.nodes)
    after: set[fx.Node] = set()   # computed by a GEMM or from one
    for node in nodes:
        if _is_gemm(node) or any(a in after for a in node.all_input_nodes):
            after.add(node)
    moves: dict[fx.Node, bool] = {}   # reaches the caller through value-moving ops only
    tail: dict[fx.Node, bool] = {}    # reaches the caller through any non-GEMM quantized ops
    for node in reversed(nodes):
        readers = [u for u, _ in _readers(node)]
        ends = [u.op == "output" or (u.target is dequant_point and all(v.op == "output" for v in u.users))
                for u in readers]
        moves[node] = bool(readers) and all(
            end or (_spec(u) is not None and _spec(u).lower is lower_rescale_call and moves.get(u, False))
            for u, end in zip(readers, ends))
        tail[node] = bool(readers) and all(
            end or u.meta.get("eq_domain") == "int"
            or (_spec(u) is not None and u.meta.get("eq_domain") == "quant" and not _is_gemm(u) and tail.get(u, False))
            for u, end in zip(readers, ends))
    return {n for n in nodes if moves[n] or (tail[n] and n in after)}


def reader_ops(node: fx.Node) -> tuple[str, ...]:
    """Canonical names of the ops that compute from ``node``'s value (module docstring), sorted."""
    return tuple(sorted({_name(u) for u, _ in _readers(node)}))


def _activation_inputs(node: fx.Node) -> list[fx.Node]:
    """A GEMM's quantized activation operands: its inputs but weight, bias and folded parameters."""
    spec = _spec(node)
    skip = {node.args[p] for p in (spec.weight_arg, spec.bias_arg, *spec.param_args)
            if p is not None and p < len(node.args)}
    return [a for a in node.all_input_nodes
            if a not in skip and a.meta.get("eq_domain") == "quant" and is_float_value(a)]


def _is_gemm(node: fx.Node) -> bool:
    spec = _spec(node)
    return spec is not None and spec.name in GEMM_OPS and node.meta.get("eq_domain") == "quant"


def _source(node: fx.Node) -> fx.Node:
    """The node whose value ``node`` carries: back through shared-grid ops."""
    while node.args and isinstance(node.args[0], fx.Node) and _passes_grid(node, node.args[0]):
        node = node.args[0]
    return node


def split_gemm_inputs(gm: fx.GraphModule, setters) -> list[str]:
    """Give the GEMMs their own quantize point where their input is also read by other ops
    (module docstring), as the setters ask: a setter (of ``setters``, one or a tuple) whose
    ``splits_gemm_inputs`` is True asks it for every such tensor, one whose ``splits_gemm_inputs``
    is a set of op names for the outputs of those ops (the int8 templates: layer norms). Returns
    the names of the points added."""
    setters = (setters,) if callable(setters) else setters
    asks = [getattr(s, "splits_gemm_inputs", False) for s in setters] if isinstance(setters, (tuple, list)) else []
    every = any(a is True for a in asks)
    ops = frozenset().union(*(a for a in asks if isinstance(a, (set, frozenset))))
    if not every and not ops:
        return []
    gemm_reads: dict[fx.Node, list[fx.Node]] = {}   # tensor -> the GEMMs reading it as an operand
    for node in gm.graph.nodes:
        if _is_gemm(node):
            for a in _activation_inputs(node):
                users = gemm_reads.setdefault(a, [])
                if node not in users:
                    users.append(node)
    taken = {n.meta.get("eq_name") for n in gm.graph.nodes}
    added = []
    for a, gemms in gemm_reads.items():
        src = _source(a)
        if not every and (_spec(src) is None or _spec(src).name not in ops):
            continue   # the setters split other ops' outputs only
        if all(_is_gemm(u) and r in _activation_inputs(u) for u, r in _readers(src)):
            continue   # only GEMMs read it: its own qconfig is the GEMMs' input dtype
        base = src.meta.get("eq_name") or a.meta.get("eq_name") or a.name
        name, k = f"{base}.gemm_input", 1
        while name in taken:
            name, k = f"{base}.gemm_input_{k}", k + 1
        taken.add(name)
        with gm.graph.inserting_after(a):
            point = gm.graph.call_function(quant_point, (a,))
        point.meta.update({"val": a.meta.get("val"), "eq_domain": "quant", "eq_name": name, "eq_spec": None,
                           "eq_path": "", "eq_source": a.meta.get("eq_source", "")})
        for g in gemms:
            g.replace_input_with(a, point)
        added.append(name)
    if added:
        gm.graph.lint()
        gm.recompile()
    return added
