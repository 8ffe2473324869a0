"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) for capture: unrolled over time into ops
edgequant quantizes; and their one-step cells (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``, which
the user's code loops over: ``cell_forward``), written in the same ops.

``unrolled_rnns(model)`` is a context manager for the export of ``model`` (capture's deep copy):
while it is open, every recurrent layer's ``forward`` is ``unrolled_forward``, which computes
what the layer computes from one ``linear`` of the whole input sequence per layer and direction,
then per time step a ``linear`` of the hidden state, ``add``, a ``split`` into gates, ``sigmoid``
and ``tanh`` (``relu`` for ``nn.RNN(nonlinearity="relu")``) tables and elementwise ``mul``,
``add`` and ``sub``; ``unbind``, ``stack``, ``cat`` and ``transpose`` move the steps. It returns
what the layer returns (``out, (h_n, c_n)`` or ``out, h_n``), for ``batch_first`` either way,
several layers, both directions, ``proj_size``, unbatched input, and initial states given or not
(without them, the first step has no hidden ``linear``: a zero state contributes the layer's
hidden bias only, so no float zeros reach the integer model). The graph grows with the traced
sequence length, which is fixed at capture. A ``PackedSequence`` input raises ``CaptureError``
naming the layer: its per-step batch sizes are data. With ``batch_first=False`` dim 0 is time,
so capture fixes the batch size (it keeps only dim 0 of float inputs dynamic).

The LSTM cell state ``c`` (and the ``f * c`` term that carries it to the next step) passes the
identity marker op ``edgequant::rnn_state``; ``mark_states(gm)`` removes the markers from the
captured graph and sets ``node.meta["eq_rnn_state"]`` on the marked nodes, which ``prepare``
reports as ``OpSite.recurrent_state``: the int8 templates give those values int16, since the
cell state accumulates over every step and each step's rounding of it carries on.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.rnn import PackedSequence

from .capture_markers import CaptureError

RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
CELL_TYPES = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)   # one step, called in the user's own loop


@torch.library.custom_op("edgequant::rnn_state", mutates_args=())
def _state_op(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_state_op.register_fake
def _(x):
    return torch.empty_like(x)


@contextlib.contextmanager
def unrolled_rnns(model: nn.Module):
    """Give each recurrent layer of ``model`` the unrolled forward while the context is open."""
    patched = []
    for path, mod in model.named_modules():
        if isinstance(mod, RNN_TYPES + CELL_TYPES) and "forward" not in mod.__dict__:   # not already a leaf marker
            step = unrolled_forward if isinstance(mod, RNN_TYPES) else cell_forward
            mod.forward = functools.partial(step, mod, path)
            patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.__dict__["forward"]


def mark_states(gm: fx.GraphModule) -> None:
    """Remove the ``rnn_state`` markers, setting ``meta["eq_rnn_state"]`` on the nodes they marked."""
    found = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.edgequant.rnn_state.default:
            src = node.args[0]
            src.meta["eq_rnn_state"] = True
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            found = True
    if found:
        gm.graph.lint()
        gm.recompile()


def _params(mod: nn.Module, layer: int, reverse: bool) -> tuple:
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    get = functools.partial(getattr, mod)
    w_ih, w_hh = get("weight_ih" + sfx), get("weight_hh" + sfx)
    b_ih, b_hh = (get("bias_ih" + sfx), get("bias_hh" + sfx)) if mod.bias else (None, None)
    w_hr = get("weight_hr" + sfx) if getattr(mod, "proj_size", 0) else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _hidden_gates(h, w_hh, b_hh, n: int):
    """The hidden state's gate terms, split in ``n``; ``h is None`` (zero state): the bias's."""
    if h is None:
        return (b_hh,) if n == 1 else b_hh.chunk(n) if b_hh is not None else (None,) * n
    gh = F.linear(h, w_hh, b_hh)
    return (gh,) if n == 1 else gh.chunk(n, dim=-1)


def _plus(a, b):
    return a if b is None else a + b


def _lstm_step(gi, h, c, w_hh, b_hh, w_hr):
    if h is not None:
        gi = gi + F.linear(h, w_hh, b_hh)
    elif b_hh is not None:
        gi = gi + b_hh
    i, f, g, o = gi.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = i * g if c is None else torch.ops.edgequant.rnn_state(f * c) + i * g
    c = torch.ops.edgequant.rnn_state(c)
    h = o * torch.tanh(c)
    return (h if w_hr is None else F.linear(h, w_hr)), c


def _gru_step(gi, h, w_hh, b_hh):
    xr, xz, xn = gi.chunk(3, dim=-1)
    hr, hz, hn = _hidden_gates(h, w_hh, b_hh, 3)
    r, z = torch.sigmoid(_plus(xr, hr)), torch.sigmoid(_plus(xz, hz))
    n = torch.tanh(xn if hn is None else xn + r * hn)
    return n - z * n if h is None else n + z * (h - n)


def _rnn_step(gi, h, w_hh, b_hh, act):
    return act(_plus(gi, _hidden_gates(h, w_hh, b_hh, 1)[0]))


def unrolled_forward(mod: nn.Module, path: str, x, hx=None):
    """``mod.forward(x, hx)`` (an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) as ops over time steps."""
    name = f"{type(mod).__name__} {path!r}" if path else type(mod).__name__
    if isinstance(x, PackedSequence):
        raise CaptureError(
            f"{name} takes a packed sequence (nn.utils.rnn.pack_padded_sequence): edgequant unrolls "
            "recurrent layers over a sequence length fixed at capture, and a packed sequence's per-step "
            "batch sizes are data. Pass the padded tensor to the layer instead and pick each sequence's "
            "last valid step from its output by length (out[torch.arange(B), lengths - 1] with "
            "batch_first=True).")
    lstm = isinstance(mod, nn.LSTM)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
        hx = None if hx is None else tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
    elif mod.batch_first:
        x = x.transpose(0, 1)
    dirs = 2 if mod.bidirectional else 1
    if hx is None:
        h0 = c0 = None
    else:
        h0, c0 = (hx[0].unbind(0), hx[1].unbind(0)) if lstm else (hx.unbind(0), None)
    act = torch.relu if getattr(mod, "nonlinearity", "tanh") == "relu" else torch.tanh
    steps, h_n, c_n = x, [], []
    for layer in range(mod.num_layers):
        if layer and mod.dropout and mod.training:
            steps = F.dropout(steps, mod.dropout, True)
        outs = []
        for d in range(dirs):
            w_ih, w_hh, b_ih, b_hh, w_hr = _params(mod, layer, d == 1)
            k = layer * dirs + d
            h = None if h0 is None else h0[k]
            c = None if c0 is None else c0[k]
            ys = [None] * steps.shape[0]
            gis = F.linear(steps, w_ih, b_ih).unbind(0)
            for t in (reversed(range(len(gis))) if d else range(len(gis))):
                if lstm:
                    h, c = _lstm_step(gis[t], h, c, w_hh, b_hh, w_hr)
                elif isinstance(mod, nn.GRU):
                    h = _gru_step(gis[t], h, w_hh, b_hh)
                else:
                    h = _rnn_step(gis[t], h, w_hh, b_hh, act)
                ys[t] = h
            outs.append(torch.stack(ys, 0))
            h_n.append(h)
            c_n.append(c)
        steps = outs[0] if dirs == 1 else torch.cat(outs, -1)
    out, h_n = steps, torch.stack(h_n, 0)
    c_n = torch.stack(c_n, 0) if lstm else None
    if unbatched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
        c_n = c_n.squeeze(1) if lstm else None
    elif mod.batch_first:
        out = out.transpose(0, 1)
    return (out, (h_n, c_n)) if lstm else (out, h_n)


def cell_forward(mod: nn.Module, path: str, x, hx=None):
    """``mod.forward(x, hx)`` of an ``nn.LSTMCell``, ``nn.GRUCell`` or ``nn.RNNCell``: one step of
    the unrolled layers above (a ``linear`` of the input, the hidden ``linear``, gate tables and
    elementwise ops; the LSTM cell state marked as a recurrent state). Returns what the cell
    returns: ``(h, c)`` or ``h``, unbatched (1-D) inputs included; no state given is a zero state."""
    lstm = isinstance(mod, nn.LSTMCell)
    unbatched = x.dim() == 1
    if unbatched:
        x = x.unsqueeze(0)
        hx = None if hx is None else tuple(h.unsqueeze(0) for h in hx) if lstm else hx.unsqueeze(0)
    gi = F.linear(x, mod.weight_ih, mod.bias_ih)
    if lstm:
        h, c = (None, None) if hx is None else hx
        out = _lstm_step(gi, h, c, mod.weight_hh, mod.bias_hh, None)
    elif isinstance(mod, nn.GRUCell):
        out = _gru_step(gi, hx, mod.weight_hh, mod.bias_hh)
    else:
        act = torch.relu if mod.nonlinearity == "relu" else torch.tanh
        out = _rnn_step(gi, hx, mod.weight_hh, mod.bias_hh, act)
    if unbatched:
        out = tuple(o.squeeze(0) for o in out) if lstm else out.squeeze(0)
    return out
