"""AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Takes a calibrated model from ``prepare`` (in VALIDATION) and calibration data; learns, for each
conv/linear weight in topological order, whether every element rounds up or down, and writes the
rounded weights into the model in place. Returns the same model.

For one layer with weight ``w``, scale ``s`` and zero point ``z`` (those of its weight
FakeQuantize), the soft-quantized weight is ``s * (clamp(floor(w / s) + z + h(V), qmin, qmax) - z)``
with the rectified sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``
(``zeta = 1.1``, ``gamma = -0.1``), ``V`` initialised so that ``h(V)`` equals the fractional part of
``w / s``. ``V`` minimises

    || op(x_q, w_soft) - op_float(x) ||^2  +  weight * sum(1 - |2 h(V) - 1| ^ beta)

where ``x_q`` is the layer's input in the model with every earlier layer already rounded (and
activations fake-quantized) and the target is the layer's output in the float model. Both come
from one run of the graph each (``edgequant.ptq.sweep.Sweep``), which stops before each layer
and goes on once it is rounded, so the cost of running the model does not grow with depth. The
regulariser is off for the first ``warm_up`` fraction of the steps; then ``beta`` anneals
linearly from ``b_range[0]`` to ``b_range[1]``. Finally ``h = [V >= 0]``, the weight parameter is
overwritten with ``s * (floor(w / s) + z + h - z)`` and the weight FakeQuantize gets a fixed
scale (a ``FixedScaleObserver`` with the scale it had), so it reproduces the written weights
exactly in every state, and bias correction sees no rounding shift for that layer. The empirical
bias correction that calibration measured (``edgequant.ptq.empirical_bias``) is cleared first and
measured again on the first batches once every layer is rounded.

``custom_config_dict`` keys (defaults): ``num_batches`` (10) batches of ``data`` used,
``num_step`` (1000) optimiser steps per layer, ``exclude_prefix`` (()) site names (a string or
a list) left as round-to-nearest, ``warm_up`` (0.2), ``weight`` (0.01), ``b_range`` ((20, 2)),
``lr`` (0.01, Adam), ``batch_size`` (32) samples per step, ``progress`` (True, tqdm).

``data`` is a list/tuple of batches (moved to the model's device once) or a DataLoader (each
batch moved as it is read). A batch is a tensor (the model's input), a tuple/list whose first
items are the model's inputs (extra items such as labels are ignored), or a dict of keyword
inputs. After the call, ``model.meta["eq_adaround"]`` holds, per site, the layer's output MSE to
the float target on the calibration data with round-to-nearest and with AdaRound weights.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..argcheck import describe, expect_batches, expect_prepared
from .empirical_bias import clear_empirical, correct_biases, kept_batches
from ..fake_quant import FakeQuantize, FakeQuantState
from ..observers import FixedScaleObserver
from ..qmath import _as_param
from .sweep import Sweep, batches_of, model_device, restore, set_states

ZETA, GAMMA = 1.1, -0.1
DEFAULTS = {"num_batches": 10, "num_step": 1000, "exclude_prefix": (), "warm_up": 0.2, "weight": 0.01,
            "b_range": (20, 2), "lr": 0.01, "batch_size": 32, "progress": True}


COUNT = (lambda v: v == int(v) and v >= 1, "an int >= 1")


def check_numbers(fn: str, cfg: dict, rules: dict) -> None:
    """Refuse a number setting of ``custom_config_dict`` that breaks its rule (``{key: (ok, what)}``),
    naming the function and the key."""
    for key, (ok, what) in rules.items():
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
            raise ValueError(f"{fn}: custom_config_dict[{key!r}] = {v!r}; it must be {what}")


def _check_config(cfg: dict) -> None:
    """Refuse settings that would train nothing or diverge, naming the key."""
    check_numbers("adaround", cfg, {
        "num_batches": COUNT, "num_step": COUNT, "batch_size": COUNT,
        "lr": (lambda v: 0 < v < float("inf"), "a finite number > 0"),
        "weight": (lambda v: 0 <= v < float("inf"), "a finite number >= 0"),
        "warm_up": (lambda v: 0 <= v < 1, "a share of the steps in [0, 1)")})


def _is_layer(node: fx.Node) -> bool:
    """A conv/linear call (its row is weighted; transposed convs are not rounded by AdaRound)."""
    spec = node.meta.get("eq_spec") if node.op == "call_function" else None
    return spec is not None and spec.weighted and not spec.transposed


def _layers(gm: fx.GraphModule):
    """``[(site name, op node, weight-fq node, FakeQuantize, weight arg index)]`` in graph order."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith("eq_fq."):
            continue
        fq = gm.get_submodule(node.target)
        if not (isinstance(fq, FakeQuantize) and fq.is_weight):
            continue
        w = node.args[0]
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            continue
        for user in node.users:
            if _is_layer(user) and user.args and user.args[0] is not node:
                idx = next(i for i, a in enumerate(user.args) if a is node)
                name = node.meta.get("eq_name", str(node.target))
                site = name[: -len(".weight")] if name.endswith(".weight") else name
                out.append((site, user, node, fq, idx))
    return out


def selected_layers(gm: fx.GraphModule, exclude_prefix) -> list:
    """``_layers(gm)`` but the sites named by (or starting with) ``exclude_prefix`` (a string or a
    list); raises if a weight was never calibrated."""
    excl = (exclude_prefix,) if isinstance(exclude_prefix, str) else tuple(exclude_prefix or ())
    layers = [l for l in _layers(gm) if not any(l[0] == p or l[0].startswith(p) for p in excl)]
    for _, _, _, fq, _ in layers:
        fq.qparams()  # raises if never calibrated
    return layers


def _float_io(sweep: Sweep, layers) -> dict:
    """``{op node: [(args, kwargs, output) per batch]}`` of every layer, in one pass of ``sweep``
    (run with the states set now: FLOAT, before any weight is rounded)."""
    out = {}
    for _, op_node, *_ in layers:
        sweep.advance(max(sweep.cursor, sweep.index[op_node]))
        with torch.no_grad():
            out[op_node] = [(args, kw, op_node.target(*args, **kw).detach()) for args, kw in sweep.inputs_of(op_node)]
    return out


def _h(v):
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround(calib_model: fx.GraphModule, data, custom_config_dict: dict | None = None) -> fx.GraphModule:
    """Learn the rounding of every conv/linear weight of ``calib_model`` (module docstring)."""
    expect_prepared(calib_model, "adaround", "calib_model")
    expect_batches(data, "adaround", "data")
    if custom_config_dict is not None and not isinstance(custom_config_dict, dict):
        raise TypeError(f"adaround: custom_config_dict must be a dict such as {{'num_step': 2000}} or None, "
                        f"got {describe(custom_config_dict)}")
    cfg = dict(DEFAULTS)
    unknown = set(custom_config_dict or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"adaround: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg.update(custom_config_dict or {})
    _check_config(cfg)
    gm = calib_model
    batches = batches_of(data, int(cfg["num_batches"]), model_device(gm))  # read once, reused by every layer
    layers = selected_layers(gm, cfg["exclude_prefix"])
    report = {}
    was_training = gm.training
    gm.eval()
    clear_empirical(gm)   # measured for round-to-nearest weights; measured again at the end
    restore_float_weights(gm)   # calibration's GPTQ step: AdaRound learns from the float weights
    floats = [(fq, gm.get_parameter(wq_node.args[0].target).detach().clone()) for _, _, wq_node, fq, _ in layers]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(layers) * int(cfg["num_step"]), desc="adaround", disable=not cfg["progress"])
    try:
        saved = set_states(gm, FakeQuantState.FLOAT, FakeQuantState.FLOAT)
        try:  # the float model's inputs and outputs (and biases) of every layer, in one pass
            sweep = Sweep(gm, batches)
            layers.sort(key=lambda l: sweep.index[l[1]])
            floats = _float_io(sweep, layers)
        finally:
            restore(saved)
        # the partially rounded model, run once: the cursor stops where a layer's rounding starts
        # to matter (its weight fake-quant) and moves on only after the layer is rounded
        sweep = Sweep(gm, batches)
        for site, op_node, wq_node, fq, widx in layers:
            bar.set_postfix_str(site)
            sweep.advance(max(sweep.cursor, sweep.index[wq_node]))
            report[site] = _round_layer(gm, op_node, wq_node, fq, widx, sweep.inputs_of(op_node), cfg, bar,
                                        floats.pop(op_node))
    finally:
        bar.close()
        gm.train(was_training)
    for fq, value in floats:
        keep_float_weight(fq, value)
    correct_biases(gm, kept_batches(batches))   # the mean shifts left with the learned rounding
    gm.meta.setdefault("eq_adaround", {}).update(report)
    return gm


def _round_layer(gm, op_node, wq_node, fq, widx, quant, cfg, bar, floats):
    """Learn one layer's rounding from ``quant`` (per batch, its ``(args, kwargs)`` in the partially
    rounded model, current states) and ``floats`` (per batch, ``(args, kwargs, output)`` in float)."""
    bias_idx = next((i for i, a in enumerate(op_node.args)
                     if isinstance(a, fx.Node) and a.op == "call_module" and str(a.target).startswith("eq_bc.")), None)
    bias = floats[0][0][bias_idx] if bias_idx is not None else None
    x = torch.cat([a[0] for a, _ in quant]).detach()
    y = torch.cat([out for _, _, out in floats]).detach()
    consts, kw = list(quant[0][0]), dict(quant[0][1])
    consts[0] = None
    del quant, floats
    target = op_node.target

    def run(xb, w):
        args = list(consts)
        args[0], args[widx] = xb, w
        if bias_idx is not None:
            args[bias_idx] = bias
        return target(*args, **kw)

    param_owner, pname = _owner(gm, wq_node.args[0].target)
    param = getattr(param_owner, pname)
    w = param.detach().float()
    scale, zp = fq.qparams()
    s = _as_param(scale, w, fq.ch_axis)
    z = _as_param(zp, w, fq.ch_axis)
    qmin, qmax = fq.dtype.qmin, fq.dtype.qmax
    w_floor = torch.floor(w / s)
    rest = (w / s - w_floor).clamp(1e-4, 1 - 1e-4)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def weight_of(h):
        return (torch.clamp(w_floor + z + h, qmin, qmax) - z) * s

    def mse(wt):
        with torch.no_grad():
            return sum(float((run(x[i:i + 256], wt) - y[i:i + 256]).pow(2).sum()) for i in range(0, len(x), 256)) / y.numel()

    w_rtn = (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z) * s
    mse_rtn = mse(w_rtn)
    opt = torch.optim.Adam([v], lr=float(cfg["lr"]))
    steps, warm = int(cfg["num_step"]), float(cfg["warm_up"])
    b_start, b_end = (float(b) for b in cfg["b_range"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    bs = min(int(cfg["batch_size"]), len(x))
    for t in range(steps):
        idx = torch.randint(0, len(x), (bs,), generator=gen).to(x.device)
        h = _h(v)
        out = run(x[idx], weight_of(h))
        loss = (out - y[idx]).pow(2).sum(1).mean() if out.dim() > 1 else (out - y[idx]).pow(2).mean()
        if t >= warm * steps:
            frac = (t - warm * steps) / max(1.0, (1 - warm) * steps)
            beta = b_end + (b_start - b_end) * max(0.0, 1.0 - frac)
            loss = loss + float(cfg["weight"]) * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(1)
    with torch.no_grad():
        w_new = weight_of((v >= 0).float())
        mse_ada = mse(w_new)
        param.data.copy_(w_new.to(param.dtype))
    _fix_scale(fq, scale, zp)
    return {"mse_rtn": mse_rtn, "mse_adaround": mse_ada}


def _owner(gm, target: str):
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


# A weight whose rounding a pass chose (calibration's GPTQ step, ``gptq``, ``adaround``) keeps the
# float weight it replaced in its FakeQuantize (``float_weight``): FLOAT still computes the float
# model (the reference of every pass and analysis), and a later pass starts again from it.
def keep_float_weight(fq: FakeQuantize, value: torch.Tensor) -> None:
    """Remember ``value`` as ``fq``'s float weight unless an earlier pass already did."""
    if not fq.float_weight.numel():
        fq.float_weight = value.detach().clone()


def restore_float_weights(gm: fx.GraphModule) -> bool:
    """Write back the float weights rounding passes replaced (their weight grids stay fixed as
    calibrated); returns whether there were any."""
    found = False
    with torch.no_grad():
        for _, _, wq_node, fq, _ in _layers(gm):
            if fq.float_weight.numel():
                owner, name = _owner(gm, wq_node.args[0].target)
                getattr(owner, name).data.copy_(fq.float_weight)
                fq.float_weight = torch.empty(0, device=fq.float_weight.device)
                found = True
    return found


def _fix_scale(fq: FakeQuantize, scale, zp) -> None:
    """Keep the weight FakeQuantize's qparams as they are (re-observing the rounded weights could
    move the scale and break the exact reproduction)."""
    name = getattr(fq.observer, "name", None)
    obs = FixedScaleObserver(scale.detach().clone().cpu(), zero_point=zp.detach().clone().cpu(),
                             dtype=fq.dtype, ch_axis=fq.ch_axis if scale.dim() else None)
    if name is not None:
        obs.name = name
    fq.observer = obs.to(scale.device)
    fq.fixed_scale = True
