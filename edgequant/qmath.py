"""All quantization arithmetic, in one place.

Takes float or integer tensors and quantization parameters; returns integer tensors, float
tensors, or integer multiplier/shift pairs. Every rounding in edgequant happens here and follows
one rule, round half to even (``torch.round``, ``numpy.round``, C++ ``std::nearbyint`` in the
default floating-point environment). The derivations, with numbered equations, are in
``docs/arithmetic.md``; the equation numbers are cited below as (A1), (A2), ...

- (A1) quantize:   ``q = clamp(round(x / s) + z, qmin, qmax)``, ``x / s`` computed in float32.
- (A2) dequantize: ``x = (q - z) * s`` in float32.
- (A3) fake quantize: (A2)(A1), gradient passed straight through where (A1) did not clamp.
- (A4) scale from range: symmetric ``s = max(|min|, |max|) / qmax``, ``z = 0``;
  asymmetric ``s = (max - min) / (qmax - qmin)``, ``z = clamp(qmin - round(min / s))``.
- (A5) ``quantize_multiplier(M) -> (m0, n)`` with ``M ~ m0 * 2^-n``, ``2^(b-1) <= m0 < 2^b``.
- (A6) ``rounding_shift_right(v, n) = round(v / 2^n)``, halves to even, exact on int64.
- (A7) ``requantize(acc, m0, n) = clamp(A6(acc * m0, n) + z, qmin, qmax)``.

The quantities that the simulation, ``convert``'s lowerings and the integer ONNX export all
derive, one function each: ``multiplier_bits`` (A5.6), ``channel_vector`` (per-channel values
shaped along an axis), ``accumulator_scale`` (``s_x * s_w``), and the bias on that grid
(``bias_steps``, ``bias_dtype``, ``quantize_bias``).

No function here has a hidden rounding default: quantize/fake-quantize use (A1) and every
integer shift uses (A6).
"""
from __future__ import annotations

import math

import torch

from .argcheck import describe, expect_int, expect_real, expect_tensor
from .dtype import DTYPES, QuantDType, get_dtype

# The one rounding rule of every quantize, shift and table interpolation (A6). A march profile
# names it (``MarchProfile.rounding``), convert records it in the integer graph
# (``meta["rounding"]``) and the checker refuses a graph that names another rule.
ROUNDING = "half_to_even"
SCALE_EPS = float(torch.finfo(torch.float32).eps)


def _as_param(v, x: torch.Tensor, ch_axis: int | None, dtype=torch.float32) -> torch.Tensor:
    """``v`` as a tensor that broadcasts against ``x``: per-tensor, or along ``ch_axis``."""
    t = torch.as_tensor(v, dtype=dtype, device=x.device)
    if ch_axis is None or t.dim() == 0:
        if t.numel() != 1:
            raise ValueError(f"per-tensor quantization takes one scale/zero_point, got {t.numel()}")
        return t.reshape(())
    axis = ch_axis % x.dim()
    if t.numel() != x.shape[axis]:
        raise ValueError(
            f"per-channel parameters have {t.numel()} values but axis {ch_axis} of the tensor has {x.shape[axis]}"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _check_args(fn: str, x, scale, zero_point, ch_axis, name: str = "x") -> None:
    """A public function's arguments: a tensor, a scale (a positive finite number or a tensor), a
    zero point (an integer or a tensor), ``ch_axis`` None or an axis of ``x``. Cheap: the tensor
    parameters' values are the caller's business (the kernels pass them by the thousand)."""
    if isinstance(x, torch.Tensor) and isinstance(scale, (float, torch.Tensor)) and \
            isinstance(zero_point, (int, torch.Tensor)) and not isinstance(zero_point, bool) and \
            ch_axis is None and (not isinstance(scale, float) or (scale > 0 and math.isfinite(scale))):
        return
    expect_tensor(x, fn, name)
    expect_real(scale, fn, "scale", positive=True, tensor=True)
    if not isinstance(zero_point, torch.Tensor):
        expect_int(zero_point, fn, "zero_point")
    if ch_axis is not None:
        expect_int(ch_axis, fn, "ch_axis")
        if not -x.dim() <= ch_axis < max(x.dim(), 1):
            raise ValueError(f"{fn}: ch_axis {ch_axis} is not an axis of a {x.dim()}-d tensor")


def _carrier(dt: QuantDType) -> torch.dtype:
    """The float type in which ``round(x / s) + z``, its clamp and ``q - z`` are exact.

    float32 for types of 16 bits or fewer: integers below 2^24 are exact, and a rounded value
    of 2^24 or more is still outside ``[qmin, qmax]`` after adding any zero point below 2^23, so
    it saturates the same way. qint32 needs float64 (its bounds and zero points are not float32
    numbers: float32(2^31 - 1) is 2^31, which overflowed the int32 cast).
    """
    return torch.float32 if dt.bits <= 16 else torch.float64


def quantize(x: torch.Tensor, scale, zero_point, dtype: QuantDType | str, ch_axis: int | None = None) -> torch.Tensor:
    """(A1) Quantize ``x`` to ``dtype``; returns an integer tensor of ``dtype.storage``.

    ``x / s`` and its rounding are float32; adding ``z`` and clamping are exact.

    >>> quantize(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]), 1.0, 0, "qint8").tolist()
    [-2, -2, 0, 0, 2, 2]
    """
    _check_args("quantize", x, scale, zero_point, ch_axis)
    dt = get_dtype(dtype)
    xf = x.to(torch.float32)
    s = _as_param(scale, xf, ch_axis)
    z = _as_param(zero_point, xf, ch_axis, dtype=_carrier(dt))
    q = torch.round(xf / s).to(z.dtype) + z
    return q.clamp_(dt.qmin, dt.qmax).to(dt.storage)


def dequantize(q: torch.Tensor, scale, zero_point=0, ch_axis: int | None = None) -> torch.Tensor:
    """(A2) ``(q - zero_point) * scale`` as float32; the subtraction is exact (int64)."""
    _check_args("dequantize", q, scale, zero_point, ch_axis, name="q")
    s = _as_param(scale, q, ch_axis)
    z = _as_param(zero_point, q, ch_axis, dtype=torch.int64)
    return (q.to(torch.int64) - z).to(torch.float32) * s


def _fq_forward(x, s, z, qmin, qmax):
    """(A2)(A1) with the integer part in ``z``'s carrier type; returns ``y, x / s, q``."""
    v = x / s
    q = torch.round(v).to(z.dtype) + z
    return (q.clamp(qmin, qmax) - z).to(x.dtype) * s, v, q


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax):
        y, _, q = _fq_forward(x, s, z, qmin, qmax)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return y

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point, dtype: QuantDType | str, ch_axis: int | None = None) -> torch.Tensor:
    """(A3) ``dequantize(quantize(x))`` in float32 with a straight-through gradient.

    The gradient with respect to ``x`` is passed unchanged where (A1) did not clamp and is zero
    where it did. Equal bit for bit to ``dequantize(quantize(x, ...), ...)``.
    """
    _check_args("fake_quantize", x, scale, zero_point, ch_axis)
    dt = get_dtype(dtype)
    xf = x.to(torch.float32)
    s = _as_param(scale, xf, ch_axis)
    z = _as_param(zero_point, xf, ch_axis, dtype=_carrier(dt))
    return _FakeQuantizeSTE.apply(xf, s, z, dt.qmin, dt.qmax)


class _FakeQuantizeLSQ(torch.autograd.Function):
    """LSQ (Esser et al., 2020): the scale is learned; its gradient is the rounding error."""

    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax, grad_factor, reduce_dims):
        y, v, q = _fq_forward(x, s, z, qmin, qmax)
        below, above = q < qmin, q > qmax
        ctx.save_for_backward(v, q, below, above)
        ctx.consts = (qmin, qmax, grad_factor, reduce_dims, s.shape, z)
        return y

    @staticmethod
    def backward(ctx, grad):
        v, q, below, above = ctx.saved_tensors
        qmin, qmax, grad_factor, reduce_dims, s_shape, z = ctx.consts
        inside = ~(below | above)
        ds = torch.where(inside, (q - z) - v, torch.where(below, qmin - z, qmax - z))
        ds = grad * ds.to(grad.dtype) * grad_factor
        if reduce_dims is None:  # one scale: sum over everything
            ds = ds.sum()
        elif reduce_dims:  # per channel: sum over the other dims (none for a 1-D tensor)
            ds = ds.sum(dim=reduce_dims, keepdim=True)
        return grad * inside, ds.reshape(s_shape), None, None, None, None, None


def fake_quantize_learnable(
    x: torch.Tensor, scale: torch.Tensor, zero_point, dtype: QuantDType | str, ch_axis: int | None = None,
    grad_factor: float | None = None,
) -> torch.Tensor:
    """(A3) with a learnable ``scale`` (LSQ). The forward value equals ``fake_quantize``.

    ``grad_factor`` defaults to LSQ's ``1 / sqrt(numel_per_scale * qmax)``.
    """
    dt = get_dtype(dtype)
    xf = x.to(torch.float32)
    s = _as_param(scale, xf, ch_axis) if scale.dim() else scale.reshape(())
    z = _as_param(zero_point, xf, ch_axis, dtype=_carrier(dt))
    if ch_axis is None or s.dim() == 0:  # one scale, even if ch_axis is given
        reduce_dims = None
        per_scale = xf.numel()
    else:
        axis = ch_axis % xf.dim()
        reduce_dims = tuple(d for d in range(xf.dim()) if d != axis)
        per_scale = xf.numel() // max(1, xf.shape[axis])
    if grad_factor is None:
        grad_factor = 1.0 / math.sqrt(max(1, per_scale) * max(1, dt.qmax))
    return _FakeQuantizeLSQ.apply(xf, s, z, dt.qmin, dt.qmax, grad_factor, reduce_dims)


def scale_from_range(min_val, max_val, dtype: QuantDType | str, symmetric: bool = True, eps: float = SCALE_EPS):
    """(A4) Scale and zero point covering ``[min_val, max_val]`` (tensors: per channel).

    The range is first widened to contain 0, so zero is always exactly representable.
    Returns ``(scale float32 tensor, zero_point int64 tensor)``.
    """
    dt = get_dtype(dtype)
    lo = torch.as_tensor(min_val, dtype=torch.float32).clamp(max=0.0)
    hi = torch.as_tensor(max_val, dtype=torch.float32).clamp(min=0.0)
    if symmetric and dt.signed:
        scale = (torch.maximum(-lo, hi) / dt.qmax).clamp(min=eps)
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    if symmetric:  # unsigned symmetric: a non-negative range starting at 0
        scale = (hi / dt.qmax).clamp(min=eps)
        return scale, torch.full_like(scale, dt.qmin, dtype=torch.int64)
    scale = ((hi - lo) / (dt.qmax - dt.qmin)).clamp(min=eps)
    # the integer part in float64, exact: qint32's qmax is not a float32 number
    zp = (dt.qmin - torch.round(lo / scale).to(torch.float64)).clamp(dt.qmin, dt.qmax).to(torch.int64)
    return scale, zp


def quantize_multiplier(real, bits: int = 31):
    """(A5) Represent a positive real multiplier as ``m0 * 2^-shift``.

    ``m0`` has exactly ``bits`` significant bits (``2^(bits-1) <= m0 < 2^bits``) and is
    ``round(mantissa * 2^bits)`` with halves to even; ``shift`` may be negative for
    multipliers of ``2^bits`` or more. ``real == 0`` gives ``(0, 0)``. Accepts a Python
    number (returns ints) or a tensor/array (returns int64 tensors, elementwise).
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 62:
        raise (ValueError if isinstance(bits, int) and not isinstance(bits, bool) else TypeError)(
            f"quantize_multiplier: bits must be an int from 1 to 62, got {bits!r} ({describe(bits)})")
    if isinstance(real, bool) or not isinstance(real, (int, float, torch.Tensor, list, tuple)) and \
            type(real).__module__ != "numpy":
        raise TypeError(f"quantize_multiplier: real must be a number, a tensor or an array, got {describe(real)}")
    if isinstance(real, (int, float)):
        if real < 0 or not math.isfinite(real):
            raise ValueError(f"quantize_multiplier needs a finite non-negative multiplier, got {real}")
        if real == 0:
            return 0, 0
        mant, exp = math.frexp(real)  # real = mant * 2^exp, 0.5 <= mant < 1
        m0 = round(mant * (1 << bits))  # Python round: halves to even
        if m0 == 1 << bits:
            m0 >>= 1
            exp += 1
        return int(m0), int(bits - exp)
    t = torch.as_tensor(real, dtype=torch.float64).flatten()
    pairs = [quantize_multiplier(float(r), bits) for r in t.tolist()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(torch.as_tensor(real).shape)
    sh = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(torch.as_tensor(real).shape)
    return m0, sh


def rounding_shift_right(v: torch.Tensor, shift) -> torch.Tensor:
    """(A6) ``round(v / 2^shift)`` on int64 with halves to even; ``shift <= 0`` shifts left.

    Exact for every int64 ``v`` (the floor shift and the remainder are computed separately).
    Shifts of 64 or more give 0: ``|v / 2^n| <= 1/2`` there, and the one tie (``-2^63 / 2^64``)
    goes to the even 0. (int64 shifts by 64 or more are not meaningful, so they never happen.)
    """
    v = v.to(torch.int64)
    n = torch.as_tensor(shift, dtype=torch.int64, device=v.device)
    if n.numel() and 1 <= int(n.min()) and int(n.max()) <= 62:
        # The common case, in five int64 passes without comparisons: with v = floor * 2^n + rem,
        # (rem + (floor & 1) + 2^(n-1) - 1) >> n is 1 exactly when rem > 2^(n-1), or rem == 2^(n-1)
        # and floor is odd (round half to even); the sum stays below 2^(n+1), so it cannot overflow.
        floor = v >> n
        up = v - (floor << n)
        up += floor & 1
        up += (torch.ones_like(n) << (n - 1)) - 1
        up >>= n
        return floor.add_(up)
    pos = n.clamp(0, 63)
    floor = v >> pos
    rem = v - (floor << pos)
    half = torch.where(pos > 0, torch.ones_like(pos) << (pos - 1).clamp(min=0), torch.zeros_like(pos))
    up = (rem > half) | ((rem == half) & (pos > 0) & ((floor & 1) == 1))
    out = floor + up.to(torch.int64)
    if bool((n > 63).any()):
        out = torch.where(n > 63, torch.zeros_like(out), out)
    if bool((n < 0).any()):
        out = torch.where(n < 0, v << (-n).clamp(min=0), out)
    return out


def multiply_by_quantized_multiplier(acc: torch.Tensor, m0, shift) -> torch.Tensor:
    """``round(acc * m0 / 2^shift)`` by (A6) on int64 (gemmlowp's name).

    Precondition (checked by ``convert`` from its accumulator bounds, not here):
    ``|acc| * m0 < 2^63``.
    """
    m = torch.as_tensor(m0, dtype=torch.int64, device=acc.device)
    return rounding_shift_right(acc.to(torch.int64) * m, shift)


def saturate(v: torch.Tensor, dtype: QuantDType | str) -> torch.Tensor:
    """Clamp to the range of ``dtype`` and cast to its storage type."""
    dt = get_dtype(dtype)
    return v.clamp(dt.qmin, dt.qmax).to(dt.storage)


F64_EXACT = 1 << 53  # float64 holds every integer below this exactly


def pow2(shift) -> torch.Tensor:
    """``2^-shift`` as float64, exactly (``ldexp``), for int or tensor shifts."""
    n = torch.as_tensor(shift, dtype=torch.int64)
    return torch.ldexp(torch.ones(n.shape, dtype=torch.float64), -n)


def round_shift_f64(v: torch.Tensor, shift) -> torch.Tensor:
    """(A6) on a float64 carrier, in place: ``round(v * 2^-shift)`` with halves to even.

    Precondition (the caller's bound): ``v`` holds integers of magnitude below 2^53, so ``v`` and
    its power-of-two scaling are exact and ``torch.round`` (half to even) gives (A6) bit for bit.
    """
    return torch.round(v.mul_(pow2(shift)), out=v)


def requantize(acc: torch.Tensor, m0, shift, dtype: QuantDType | str, zero_point=0,
               bound: int | None = None) -> torch.Tensor:
    """(A7) Scale an integer accumulator by ``m0 * 2^-shift``, add ``zero_point``, saturate.

    ``m0``, ``shift`` and ``zero_point`` are ints or tensors broadcastable against ``acc``
    (per-channel parameters must already be shaped for broadcasting). ``acc`` may be an integer
    tensor or a float carrier holding exact integers. With ``bound`` (a proven ``max |acc|``)
    and ``bound * max m0 < 2^53`` the product and the rounding run on float64, exactly and
    several times faster than int64 (the same result bit for bit).
    """
    if not isinstance(acc, torch.Tensor) or not all(isinstance(v, (int, torch.Tensor)) and not isinstance(v, bool)
                                                    for v in (m0, shift, zero_point)) or \
            not (bound is None or (isinstance(bound, int) and not isinstance(bound, bool) and bound >= 0)):
        expect_tensor(acc, "requantize", "acc")
        for arg, v in (("m0", m0), ("shift", shift), ("zero_point", zero_point)):
            if not isinstance(v, torch.Tensor):
                expect_int(v, "requantize", arg)
        expect_int(bound, "requantize", "bound", lo=0, none=True)
    dt = get_dtype(dtype)
    m = torch.as_tensor(m0, dtype=torch.int64)
    if bound is not None and m.numel() and bound * int(m.abs().max()) < F64_EXACT \
            and int(torch.as_tensor(shift).min()) >= 0:
        y = acc.to(torch.float64, copy=True).mul_(m.to(torch.float64))
        y = round_shift_f64(y, shift)
        if not (isinstance(zero_point, int) and zero_point == 0):
            y.add_(torch.as_tensor(zero_point, dtype=torch.float64))
        return y.clamp_(dt.qmin, dt.qmax).to(dt.storage)
    y = multiply_by_quantized_multiplier(acc, m0, shift)  # a fresh tensor: updated in place below
    if not (isinstance(zero_point, int) and zero_point == 0):
        y.add_(torch.as_tensor(zero_point, dtype=torch.int64, device=acc.device))
    return y.clamp_(dt.qmin, dt.qmax).to(dt.storage)


# -- derived quantities: one function each, shared by the simulation, convert and ONNX --------------
def multiplier_bits(bound: int, max_bits: int) -> int:
    """(A5.6) The bits ``b`` of the multiplier that scales a sum bounded by ``bound``:
    ``min(max_bits, 63 - bitlength(bound))``, so that ``|acc| * m0 < 2^63``. It may fall below
    what the output needs (or below 1); the caller refuses the node then."""
    return min(max_bits, 63 - int(bound).bit_length())


def channel_vector(values, ndim: int, ch_axis: int | None, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Per-channel values (a number, a list or a tensor) as a ``dtype`` tensor that broadcasts
    along ``ch_axis`` of a rank-``ndim`` tensor; a scalar when there is one value or no axis."""
    t = torch.as_tensor(values, dtype=dtype)
    if ch_axis is None or t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[ch_axis % ndim] = -1
    return t.reshape(shape)


def accumulator_scale(s_x, s_w, channels: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The scale of a conv/linear/matmul accumulator, ``s_acc = s_x * s_w``, as a 1-d tensor (one
    value per output channel): the product in ``dtype`` of the scales (numbers, lists or tensors;
    one value or one per channel). float32 is the grid the bias is quantized on and the scale the
    integer graph records; float64 is exact, for the multiplier ``s_acc / s_y`` (A5.4). With
    ``channels``, an ``s_w`` of fewer values repeats to that many (one value per tensor, or a
    grouped transposed conv's channels of one group)."""
    s_x = torch.as_tensor(s_x, dtype=dtype).reshape(-1)
    s_w = torch.as_tensor(s_w, dtype=dtype).reshape(-1)
    if channels is not None:
        s_w = s_w.repeat(channels // max(1, s_w.numel()))
    return s_x * s_w


def bias_steps(bias: torch.Tensor, acc_scale: torch.Tensor) -> float:
    """``max |bias / s_acc|`` in float32: how many accumulator steps the bias reaches."""
    return float((bias.detach().to(torch.float32) / acc_scale).abs().max())


def bias_dtype(steps: float, wide_bits: int | None = None) -> str | None:
    """The accumulator type that holds a bias of ``steps`` (``bias_steps``) on the grid ``s_acc``:
    ``qint32`` below ``2^31 - 1`` steps; else (a dead channel: weights folded to ~0 put ``s_w`` at
    its floor, next to a real bias) ``qint{wide_bits}`` below ``2^(wide_bits - 1) - 1``; else None."""
    if steps < 2 ** 31 - 1:
        return "qint32"
    if wide_bits is None or f"qint{wide_bits}" not in DTYPES or steps >= 2 ** (wide_bits - 1) - 1:
        return None
    return f"qint{wide_bits}"


def quantize_bias(bias: torch.Tensor, acc_scale: torch.Tensor, dtype: QuantDType | str = "qint32",
                  fake: bool = False) -> torch.Tensor:
    """(A1) ``bias`` on the accumulator grid ``acc_scale`` (zero point 0, one scale per output
    channel, axis 0): its integer codes in ``dtype``, or with ``fake`` their (A3) fake
    quantization (float, straight-through gradient), the bias the simulation adds."""
    zp = torch.zeros(acc_scale.numel(), dtype=torch.int64, device=acc_scale.device)
    return (fake_quantize if fake else quantize)(bias, acc_scale, zp, dtype, 0)
