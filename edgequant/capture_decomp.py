"""Ops that capture writes in terms of others edgequant quantizes: the retrace's extra
decompositions (``capture_rewrite.retrace_table``).

``decomp_table(ep)`` takes an exported program and returns ``{aten overload: decomposition}`` for
the ops below that the graph calls (empty when none):

- ``group_norm(x, G, weight, bias, eps)``: each sample normalised over a group of channels and
  all positions is a layer norm over the last dim of ``x`` viewed as ``(N, G, C/G * prod(spatial))``:
  reshape, ``layer_norm`` without affine (its lookup-table kernel: mean, variance and the 1/sqrt
  table), reshape back, then ``x * weight[c] + bias[c]`` per channel, two elementwise ops on the
  parameters (they stay nn.Parameters, so QAT trains them);
- ``instance_norm`` with the batch's statistics (``use_input_stats``, every ``InstanceNorm``
  without ``track_running_stats``): the same with ``G = C``; with running statistics
  (``track_running_stats=True`` in eval) it is a batch norm on those statistics, and becomes one;
- ``linalg_vector_norm`` of order 2 (``torch.norm``, ``F.normalize``, ConvNeXt-V2's GRN, Swin-V2's
  cosine attention): ``sqrt(sum(x * x))``; order 1: ``sum(abs(x))``; other orders are kept (and
  refused by name);
- ``baddbmm(input, b1, b2, beta, alpha)`` (BLOOM's ALiBi scores): ``bmm(b1, b2) * alpha + input * beta``;
- ``adaptive_avg_pool3d`` to one value per channel (3-D CNNs' global pool): ``mean`` over the three
  spatial dims;
- aliases torch.export keeps by their own names: ``multiply``, ``subtract``, ``divide``,
  ``true_divide``, ``concat``/``concatenate``, ``clip``, ``negative``, ``absolute``: their canonical op;
- ``log_softmax``: ``(x - max) - log(sum(exp(x - max)))`` (CTC and language-model heads);
- ``square``: ``x * x``; ``var``/``std`` (any correction): ``sum((x - mean)^2) / (N - correction)``
  and its ``sqrt``; ``cosine_similarity``: torch's formula in sums of products, a ``sqrt`` and a
  division; ``tile``/``repeat_interleave`` (a number of repeats)/``channel_shuffle``: ``repeat``,
  ``expand`` and reshapes (moves);
- ``reshape_as``/``expand_as``: ``reshape``/``expand`` to the other tensor's shape; ``min``/``max``
  of two tensors: ``minimum``/``maximum``; ``type_as(x, other)``: ``x.to(other.dtype)`` (a cast to
  the same dtype is then dropped by capture; Funnel's and PointPillars' float masks);
- ``logsumexp``: ``max + log(sum(exp(x - max)))``; ``glu``: ``a * sigmoid(b)`` of the two halves;
  ``sign`` of a float tensor: ``(x > 0) - (x < 0)`` as masks cast to its dtype;
- ``sort`` and ``topk``: a stable sort (and the first ``k``), so that tied values get the same
  indices in the simulation, the integer model and ONNX's TopK.

Each is exact in float (float32 rounding apart: the layer norm's sum order differs from aten's
group norm kernel by ~1e-7 relative).
"""
from __future__ import annotations

import torch

_A = torch.ops.aten


def _per_channel(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``(C,)`` parameter shaped to broadcast over ``(N, C, *spatial)``."""
    return p.reshape([1, -1] + [1] * (ndim - 2))


def _normalise_groups(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    shape = x.shape
    y = x.reshape(shape[0], groups, -1)
    y = _A.layer_norm.default(y, [y.shape[-1]], None, None, eps)
    y = y.reshape(shape)
    if weight is not None:
        y = y * _per_channel(weight, x.dim())
    if bias is not None:
        y = y + _per_channel(bias, x.dim())
    return y


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    return _normalise_groups(x, num_groups, weight, bias, eps)


def _instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5, cudnn_enabled=True):
    if not use_input_stats and running_mean is not None and running_var is not None:
        return _A.batch_norm.default(x, weight, bias, running_mean, running_var, False, momentum, eps,
                                     cudnn_enabled)
    return _normalise_groups(x, x.shape[1], weight, bias, eps)


def _vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if ord == 1:
        return torch.sum(torch.abs(x), dim=dim, keepdim=keepdim)
    return torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim))


def _baddbmm(x, b1, b2, *, beta=1, alpha=1):
    prod = torch.bmm(b1, b2)
    prod = prod if alpha == 1 else prod * alpha
    return prod + (x if beta == 1 else x * beta) if beta != 0 else prod


def _reduced(x, dim) -> tuple[list[int], int]:
    """The dims a reduction over ``dim`` (None, an int or a list) covers, and how many elements."""
    dims = list(range(x.dim())) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    n = 1
    for d in dims:
        n *= x.shape[d]
    return dims, n


def _variance(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """``var`` as ``sum((x - mean)^2) / (N - correction)`` over ``dim`` (Bessel's correction by default)."""
    dims, n = _reduced(x, dim)
    c = correction if correction is not None else (0 if unbiased is False else 1)
    d = x - x.mean(dims, keepdim=True)
    return (d * d).sum(dims, keepdim=keepdim) / max(n - c, 1)


def _repeat_interleave(x, repeats, dim=None, *, output_size=None):
    if dim is None:
        x, dim = x.reshape(-1), 0
    dim = dim % x.dim()
    shape = list(x.shape)
    y = x.unsqueeze(dim + 1).expand(*shape[:dim + 1], repeats, *shape[dim + 1:])
    return y.reshape(*shape[:dim], shape[dim] * repeats, *shape[dim + 1:])


def _channel_shuffle(x, groups):
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """torch's formula: ``sum(x1 x2) / sqrt(max(sum(x1^2) sum(x2^2), eps^2))``."""
    num = (x1 * x2).sum(dim)
    den = (x1 * x1).sum(dim) * (x2 * x2).sum(dim)
    return num / torch.sqrt(torch.clamp_min(den, eps * eps))


def _log_softmax(x, dim, *rest):
    """``(x - max) - log(sum(exp(x - max)))`` along ``dim``: a max, a subtraction, the exp and log
    tables and a sum, each with an integer form (the row ``log_softmax`` had none)."""
    shifted = x - torch.amax(x, dim, keepdim=True)
    return shifted - torch.log(torch.sum(torch.exp(shifted), dim, keepdim=True))


def _logsumexp(x, dim, keepdim=False):
    """``max + log(sum(exp(x - max)))`` over ``dim`` (the max kept where ``keepdim`` is false too, then
    squeezed): as ``log_softmax``, ops with an integer form."""
    dims = [dim] if isinstance(dim, int) else list(dim)
    top = torch.amax(x, dims, keepdim=True)
    top = top.masked_fill(top.abs() == float("inf"), 0.0)   # as aten: a row of -inf gives -inf, not NaN
    out = top + torch.log(torch.sum(torch.exp(x - top), dims, keepdim=True))
    return out if keepdim else out.squeeze(dims)


def _glu(x, dim=-1):
    """``a * sigmoid(b)`` of the two halves of ``x`` along ``dim`` (gated linear units)."""
    a, b = x.chunk(2, dim)
    return a * torch.sigmoid(b)


def _sign(x):
    """``(x > 0) - (x < 0)`` in ``x``'s dtype: two comparisons, casts of their masks and a subtraction
    (a graph with a float sign has all its signs written so: an integer one is the same numbers, a
    boolean one is itself)."""
    if x.dtype == torch.bool:
        return x.clone()
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


def _sort(x, dim=-1, descending=False):
    """A stable sort: ties keep their order (the lower index first), in the simulation as in the
    integer kernel and ONNX's TopK (torch's own sort and topk order tied values as they like)."""
    return torch.sort(x, dim=dim, descending=descending, stable=True)


def _topk(x, k, dim=-1, largest=True, sorted=True):
    """The first ``k`` of the stable sort (``_sort``): equal codes give the same indices everywhere."""
    values, indices = torch.sort(x, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


_DECOMPOSED = {
    # aliases torch.export keeps under their own names (torch.multiply, torch.concat, torch.clip, ...)
    _A.multiply.Tensor: torch.mul, _A.multiply.Scalar: torch.mul, _A.subtract.Tensor: torch.sub,
    _A.subtract.Scalar: torch.sub, _A.divide.Tensor: torch.div, _A.divide.Scalar: torch.div,
    _A.true_divide.Tensor: torch.div, _A.true_divide.Scalar: torch.div, _A.concat.default: torch.cat,
    _A.concatenate.default: torch.cat, _A.clip.default: torch.clamp, _A.negative.default: torch.neg,
    _A.absolute.default: torch.abs,
    _A.square.default: lambda x: x * x,
    _A.log_softmax.int: _log_softmax, _A._log_softmax.default: _log_softmax,
    _A.var.dim: _variance, _A.var.correction: _variance,
    _A.std.dim: lambda *a, **k: torch.sqrt(_variance(*a, **k)),
    _A.std.correction: lambda *a, **k: torch.sqrt(_variance(*a, **k)),
    _A.tile.default: lambda x, dims: x.repeat([1] * (x.dim() - len(dims)) + list(dims)),
    _A.repeat_interleave.self_int: _repeat_interleave,
    _A.channel_shuffle.default: _channel_shuffle, _A.native_channel_shuffle.default: _channel_shuffle,
    _A.cosine_similarity.default: _cosine_similarity,
    _A.group_norm.default: _group_norm, _A.instance_norm.default: _instance_norm,
    _A.baddbmm.default: _baddbmm,
    _A.reshape_as.default: lambda x, other: x.reshape(other.shape),
    _A.expand_as.default: lambda x, other: x.expand(other.shape),
    _A.min.other: torch.minimum, _A.max.other: torch.maximum,
    _A.type_as.default: lambda x, other: x.to(other.dtype),
    _A.logsumexp.default: _logsumexp, _A.glu.default: _glu, _A.sort.default: _sort, _A.topk.default: _topk,
}


def _floating(n) -> bool:
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def decomp_table(ep) -> dict:
    """The decompositions of the ops ``ep`` calls (see the module doc)."""
    table = {}
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in _DECOMPOSED:
            table[n.target] = _DECOMPOSED[n.target]
        elif n.target is _A.adaptive_avg_pool3d.default and list(n.args[1]) == [1, 1, 1]:
            table[n.target] = lambda x, size: x.mean((-3, -2, -1), keepdim=True)   # 3-D CNNs' global pool
        elif n.target is _A.sign.default and _floating(n):   # only index tensors' signs: kept (their own row)
            table[n.target] = _sign
        elif n.target is _A.linalg_vector_norm.default:
            order = n.args[1] if len(n.args) > 1 else n.kwargs.get("ord", 2)
            if order in (1, 2):
                table[n.target] = _vector_norm
    return table
