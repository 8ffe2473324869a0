"""GPTQ weight rounding (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", after Optimal Brain Quantization, Frantar & Alistarh 2022).

Takes a calibrated model from ``prepare`` (its weight FakeQuantizes hold their per-channel
scales) and calibration data; rounds every conv1d/conv2d/linear weight (and addmm's, GPT-2's
``Conv1D``: ``x @ w`` with ``w`` stored (in, out), rounded as the linear of ``w.T``), in graph order, so that
the layer's output on the calibration inputs moves as little as possible, writes the rounded
weights into the model in place and returns the same model.

For one layer with weight rows ``w`` (an output channel each, flattened over the input
channels of its group and the kernel) and the layer's inputs ``X`` in the partially rounded
model (every earlier layer already rounded, activations fake-quantized; a conv's inputs are its
im2col patches), the pass minimises ``|| (w_q - w) X ||^2`` over ``w_q`` on the weight's grid
(the scale and zero point of its FakeQuantize, clamped to the dtype's range) with the Hessian
``H = X X^T``: it quantizes one input column at a time (the columns with the largest
``H[i, i]`` first, ``act_order``) and moves the columns not yet quantized to absorb the error,
``w[:, j] -= (w[:, i] - q[:, i]) * U[i, j] / U[i, i]`` with ``U`` the upper Cholesky factor of
``H^-1`` after ``damp * mean(diag H)`` is added to the diagonal. Grouped and depthwise
convolutions have one Hessian per group and run all groups at once. A column whose input was
always zero is rounded to nearest. A weight that several calls share (a detector's shared head)
is rounded once, for the inputs of its first call. Unlike AdaRound (``edgequant.ptq.adaround``) nothing is
trained: a layer costs one pass over its inputs and ``O(d^3 + rows * d^2)`` arithmetic, so the
whole model takes about as long as calibration.

The weight FakeQuantize then gets a fixed scale (``FixedScaleObserver``) so it reproduces the
written weights exactly, and the analytic bias correction sees no rounding shift for that layer;
the empirical bias correction (``edgequant.ptq.empirical_bias``) is cleared first and measured
again on the first batches once every layer is rounded. ``model.meta["eq_gptq"]`` holds, per
site, the layer's output mean squared error on the calibration inputs with round-to-nearest and
with GPTQ weights (from ``H``: ``trace(D H D^T) / (rows * samples)`` for the weight error ``D``).

Smaller layer errors do not always make the model's outputs nearer float: on random-weight
networks (tests/zoo, 16 calibration samples) GPTQ's weights amplified the activations' rounding
and took mnasnet's outputs from 53.3 to 50.4 dB on the calibration data itself. So the pass ends
as the empirical bias correction does: it compares the model's outputs with float on those first
batches (sum of squared errors), GPTQ's weights and biases against the round-to-nearest model it
started from, and keeps GPTQ only if it is nearer; otherwise every weight, weight grid and
measured shift is put back as it was. ``model.meta["eq_gptq_choice"]`` records ``kept``
(``"gptq"`` or ``"round-to-nearest"``) and both errors.

``prepare(..., weight_rounding="gptq")`` runs this pass as calibration's closing step, on the
batches calibration kept (``qconfig_template.weight_rounding_of``: the int8 template's default;
the other templates round to nearest). The weights it rounds keep their float values in their FakeQuantizes (``float_weight``,
``adaround.keep_float_weight``), so FLOAT still computes the float model (the reference of the
bias correction, of this pass's own check and of every analysis), and a later ``gptq`` or
``adaround`` call starts again from them.

``custom_config_dict`` keys (defaults): ``num_batches`` (10) batches of ``data`` used, ``damp``
(0.01), ``act_order`` (True), ``block_size`` (128) columns updated together, ``exclude_prefix``
(()) site names left as round-to-nearest, ``progress`` (True, tqdm). ``data`` is as for
``adaround``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from ..argcheck import describe, expect_batches, expect_prepared
from ..fake_quant import BiasCorrection, FakeQuantState
from .adaround import COUNT, _fix_scale, _owner, check_numbers, keep_float_weight, restore_float_weights, selected_layers
from .empirical_bias import AFTER_CALIBRATION, clear_empirical, correct_biases, kept_batches, rounds_weights, sq_error
from .sweep import Sweep, batches_of, model_device, restore, set_states

DEFAULTS = {"num_batches": 10, "damp": 0.01, "act_order": True, "block_size": 128, "exclude_prefix": (),
            "progress": True}
SPATIAL = (None, 1, 2)   # the weighted ops it rounds: linear (no spatial dims), conv1d, conv2d (op table rows)


def _config(custom_config_dict) -> dict:
    if custom_config_dict is not None and not isinstance(custom_config_dict, dict):
        raise TypeError(f"gptq: custom_config_dict must be a dict such as {{'damp': 0.01}} or None, "
                        f"got {describe(custom_config_dict)}")
    unknown = set(custom_config_dict or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"gptq: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **(custom_config_dict or {})}
    check_numbers("gptq", cfg, {"num_batches": COUNT, "block_size": COUNT,
                                "damp": (lambda v: 0 < v < float("inf"), "a finite number > 0")})
    for key in ("act_order", "progress"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"gptq: custom_config_dict[{key!r}] = {cfg[key]!r}; it must be True or False")
    return cfg


def _pair(v, n: int) -> tuple:
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    return v * n if len(v) == 1 else v


def _columns(dims: int | None, args: tuple, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The layer's input (a linear for ``dims`` None, else a conv with that many spatial dims) as
    ``(samples, groups, columns)`` in the order of ``weight.reshape(rows, -1)`` within each group,
    and the number of groups."""
    x = args[0]
    if dims is None:
        return x.reshape(-1, 1, x.shape[-1]), 1
    rest = list(args[3:]) + [None] * 4
    stride, padding, dilation = (_pair(v if v is not None else d, dims) for v, d in zip(rest[:3], (1, 0, 1)))
    groups = int(rest[3] if rest[3] is not None else 1)
    kernel = tuple(weight.shape[2:])
    if dims == 1:   # a conv1d is a conv2d of height 1
        x, kernel = x.unsqueeze(-2), (1, *kernel)
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)   # (N, C*k, L)
    n, ck, length = cols.shape
    return cols.reshape(n, groups, ck // groups, length).permute(0, 3, 1, 2).reshape(n * length, groups, ck // groups), groups


def _hessian(dims: int | None, quant: list, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(groups, d, d)`` sums of ``x x^T`` over the calibration inputs (float64), and the sample count."""
    h, count = None, 0
    for args, _ in quant:
        cols, groups = _columns(dims, args, weight)
        for i in range(0, cols.shape[0], 4096):
            c = cols[i:i + 4096].double()
            part = torch.einsum("ngd,nge->gde", c, c)
            h = part if h is None else h + part
        count += cols.shape[0]
    return h, count


def _round(w: torch.Tensor, h: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int,
           cfg: dict) -> torch.Tensor:
    """GPTQ for ``w`` (groups, rows, d) with Hessians ``h`` (groups, d, d) and per-row ``s``/``z``
    (groups, rows, 1); returns the dequantized rounded weights in the same layout."""
    g, rows, d = w.shape
    w, h = w.double().clone(), h.clone()
    s, z = s.double(), z.double()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0                         # a column never fed: its error changes no output
    if cfg["act_order"]:
        perm = torch.argsort(diag, dim=1, descending=True)
    else:
        perm = torch.arange(d, device=w.device).expand(g, d)
    w = torch.gather(w, 2, perm[:, None, :].expand(g, rows, d))
    h = torch.gather(torch.gather(h, 1, perm[:, :, None].expand(g, d, d)), 2, perm[:, None, :].expand(g, d, d))
    hd = torch.diagonal(h, dim1=1, dim2=2)
    hd += float(cfg["damp"]) * hd.mean(dim=1, keepdim=True)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.empty_like(w)
    bs = int(cfg["block_size"])
    for a in range(0, d, bs):
        b = min(a + bs, d)
        wb, errs = w[:, :, a:b].clone(), torch.empty(g, rows, b - a, dtype=w.dtype, device=w.device)
        ub = u[:, a:b, a:b]
        for i in range(b - a):
            col = wb[:, :, i]
            qc = (torch.clamp(torch.round(col / s[..., 0]) + z[..., 0], qmin, qmax) - z[..., 0]) * s[..., 0]
            q[:, :, a + i] = qc
            err = (col - qc) / ub[:, i, i][:, None]
            wb[:, :, i:] -= err[:, :, None] * ub[:, None, i, i:]
            errs[:, :, i] = err
        w[:, :, b:] -= errs @ u[:, a:b, b:]
    inv = torch.argsort(perm, dim=1)
    return torch.gather(q, 2, inv[:, None, :].expand(g, rows, d))


def _mse(delta: torch.Tensor, h: torch.Tensor, count: int) -> float:
    """Output mean squared error of the weight error ``delta`` (groups, rows, d) on the inputs of ``h``."""
    return float(torch.einsum("grd,gde,gre->", delta, h, delta)) / max(1, count * delta.shape[0] * delta.shape[1])


def gptq(calib_model: fx.GraphModule, data, custom_config_dict: dict | None = None) -> fx.GraphModule:
    """Round every conv1d/conv2d/linear weight of ``calib_model`` by GPTQ (module docstring)."""
    expect_prepared(calib_model, "gptq", "calib_model")
    expect_batches(data, "gptq", "data")
    cfg = _config(custom_config_dict)
    gm = calib_model
    batches = batches_of(data, int(cfg["num_batches"]), model_device(gm))
    layers = [l for l in selected_layers(gm, cfg["exclude_prefix"]) if l[1].meta["eq_spec"].spatial_dims in SPATIAL]
    report = {}
    was_training = gm.training
    gm.eval()
    kept = kept_batches(batches)
    if restore_float_weights(gm):   # rounded at calibration: start again from the float weights
        correct_biases(gm, kept)
    want, rtn_error = _outputs_and_error(gm, kept)
    before = _snapshot(gm, layers)
    clear_empirical(gm)   # measured for round-to-nearest weights; measured again at the end
    from tqdm.auto import tqdm

    rounded = set()   # parameters already rounded (a weight shared by several calls is rounded once)
    try:
        sweep = Sweep(gm, batches)
        layers.sort(key=lambda l: sweep.index[l[1]])
        for site, op_node, wq_node, fq, _ in tqdm(layers, desc="gptq", disable=not cfg["progress"]):
            sweep.advance(max(sweep.cursor, sweep.index[wq_node]))
            report[site] = _round_layer(gm, op_node, wq_node, fq, sweep.inputs_of(op_node), cfg, rounded)
        for param in rounded:   # FLOAT keeps computing the float model
            value, fqs = before["params"][param]
            for fq, _, _ in fqs:
                keep_float_weight(fq, value)
        correct_biases(gm, kept)   # the mean shifts left with the new rounding
        gptq_error = _outputs_and_error(gm, kept, want)[1]
        if gptq_error > rtn_error:
            _put_back(before)
    except BaseException:
        _put_back(before)   # an interrupted pass leaves the model as it found it
        raise
    finally:
        gm.train(was_training)
    gm.meta.setdefault("eq_gptq", {}).update(report)
    gm.meta["eq_gptq_choice"] = {"kept": "gptq" if gptq_error <= rtn_error else "round-to-nearest",
                                 "errors": {"round-to-nearest": rtn_error, "gptq": gptq_error}}
    return gm


def _outputs_and_error(gm, batches, want=None):
    """The float model's outputs on ``batches`` (``want``, computed when not given) and the sum of
    squared errors of the simulation's outputs against them."""
    if want is None:
        saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.FLOAT)
        try:
            want = Sweep(gm, batches).outputs()
        finally:
            restore(saved)
    return want, sq_error(want, Sweep(gm, batches).outputs())


def _snapshot(gm, layers) -> dict:
    """What the pass changes: the weights it rounds with their FakeQuantizes' observers, and every
    measured empirical shift."""
    params = {}
    for _, _, wq_node, fq, _ in layers:
        owner, pname = _owner(gm, wq_node.args[0].target)
        param = getattr(owner, pname)
        params.setdefault(param, (param.detach().clone(), []))[1].append((fq, fq.observer, fq.fixed_scale))
    shifts = {m: m.empirical.clone() for m in gm.modules() if isinstance(m, BiasCorrection)}
    return {"params": params, "shifts": shifts}


def _put_back(before: dict) -> None:
    with torch.no_grad():
        for param, (value, fqs) in before["params"].items():
            param.data.copy_(value)
            for fq, observer, fixed in fqs:
                fq.observer, fq.fixed_scale = observer, fixed
                fq.float_weight = torch.empty(0, device=fq.float_weight.device)
    for m, shift in before["shifts"].items():
        m.empirical = shift


def _round_layer(gm, op_node, wq_node, fq, quant, cfg, rounded: set) -> dict:
    owner, pname = _owner(gm, wq_node.args[0].target)
    param = getattr(owner, pname)
    w = param.detach().float()
    # addmm(bias, x, w) (GPT-2's Conv1D): x @ w with w (in, out), one scale per column: the rows of w.T
    transposed = op_node.meta["eq_spec"].spatial_dims is None and fq.ch_axis == 1 and w.dim() == 2
    if fq.ch_axis not in (0, None) and not transposed or fq.state == FakeQuantState.FLOAT:
        return {"skipped": "weight float or not quantized per output channel"}
    if transposed:
        w = w.t()
        quant = [((args[op_node.meta["eq_spec"].weight_arg - 1],), rest) for args, rest in quant]
    if param in rounded:   # a detector's shared head: the first call's inputs decided
        return {"skipped": "weight shared with an earlier call, rounded there"}
    h, count = _hessian(op_node.meta["eq_spec"].spatial_dims, quant, w)
    del quant
    if not count:   # only empty batches reached it: nothing to fit
        return {"skipped": "no calibration inputs reached the layer"}
    rounded.add(param)
    groups = h.shape[0]
    rows = w.shape[0] // groups
    scale, zp = fq.qparams()
    s = scale.reshape(-1).to(w.device).expand(w.shape[0])   # one per output channel (or one for all)
    z = zp.reshape(-1).to(w.device).expand(w.shape[0])
    shape = (groups, rows, -1)
    wg = w.reshape(shape).double()
    sg, zg = s.reshape(groups, rows, 1).double(), z.reshape(groups, rows, 1).double()
    qmin, qmax = fq.dtype.qmin, fq.dtype.qmax
    rtn = (torch.clamp(torch.round(wg / sg) + zg, qmin, qmax) - zg) * sg
    q = _round(wg, h, sg, zg, qmin, qmax, cfg)
    report = {"mse_rtn": _mse(rtn - wg, h, count), "mse_gptq": _mse(q - wg, h, count)}
    with torch.no_grad():
        q = q.reshape(w.shape)
        param.data.copy_((q.t() if transposed else q).to(param.dtype))
    _fix_scale(fq, scale, zp)
    return report


def _after_calibration(gm: fx.GraphModule, batches: list) -> None:
    """Calibration's closing step for a model prepared with ``weight_rounding="gptq"``."""
    if rounds_weights(gm):
        gptq(gm, batches, {"progress": False})


AFTER_CALIBRATION.append(_after_calibration)
