"""MixObserver: the member whose range gives the tensor the least quantization error.

The independent check feeds the same batches to each member observer on its own, quantizes the
real data (not the histogram) with each member's qparams through ``eq.fake_quantize`` and
measures the squared error; the Mix observer must return the qparams of the best of them.
"""
import io

import pytest
import torch

import edgequant as eq
from edgequant.observers import KLObserver, MinMaxObserver, MixObserver, MSEObserver, OBSERVERS, PercentileObserver
from edgequant.qconfig_template import TemplateSetter

from models import accuracy, calibrate, trained_cnn

MEMBERS = {"minmax": lambda **k: MinMaxObserver(**k), "percentile99.9": lambda **k: PercentileObserver(99.9, **k),
           "mse": lambda **k: MSEObserver(**k), "kl": lambda **k: KLObserver(**k)}


def streams():
    g = torch.Generator().manual_seed(0)
    n = (3, 20000)
    gauss = torch.randn(n, generator=g)
    heavy = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(6) * 20  # long tails
    spiky = torch.randn(n, generator=g).clamp(-1, 1)
    spiky[0, :3] = torch.tensor([40.0, -35.0, 38.0])                               # a few far outliers
    rare = torch.rand(n, generator=g) < 0.003                                      # KL's clip pays here
    mixture = torch.where(rare, torch.randn(n, generator=g) * 6, torch.randn(n, generator=g))
    return {"gauss": gauss, "mixture": mixture, "heavy": heavy, "spiky": spiky, "uniform": torch.rand(n, generator=g) * 6 - 1,
            "relu": torch.relu(torch.randn(n, generator=g)) ** 2}


def data_error(x, scale, zp, dtype):
    return float((eq.fake_quantize(x, scale, zp, dtype) - x).double().pow(2).sum())


@pytest.mark.parametrize("dtype,symmetric", [(eq.qint8, True), (eq.qint8, False), (eq.qint16, True)])
@pytest.mark.parametrize("members", [tuple(MEMBERS), ("kl", "percentile99.9", "minmax")], ids=["all", "no_mse"])
def test_mix_returns_the_member_with_the_least_error_on_the_data(dtype, symmetric, members):
    chosen = set()
    for name, batches in streams().items():
        mix = MixObserver(members=members, dtype=dtype, symmetric=symmetric)
        alone = {m: MEMBERS[m](dtype=dtype, symmetric=symmetric) for m in members}
        for b in batches:
            mix(b)
            for obs in alone.values():
                obs(b)
        x = batches.flatten()
        qp = {m: obs.calculate_qparams() for m, obs in alone.items()}
        err = {m: data_error(x, *qp[m], dtype) for m in members}
        s, z = mix.calculate_qparams()
        chosen.add(mix.chosen)
        assert torch.equal(s, qp[mix.chosen][0]) and torch.equal(z, qp[mix.chosen][1]), name
        best = min(err.values())
        # the histogram puts each value at its bin's center: the pick is the best on the data
        # up to that resolution (N w^2 / 12 for bins of width w), and exactly the best when the
        # others are clearly worse
        resolution = x.numel() * mix.histogram.width ** 2 / 12
        assert err[mix.chosen] <= best * 1.01 + resolution, (name, mix.chosen, err)
        runner_up = sorted(err.values())[1] if len(err) > 1 else float("inf")
        if runner_up > best * 1.05 + 2 * resolution:
            assert err[mix.chosen] == best, (name, mix.chosen, err)
    if members != tuple(MEMBERS) and dtype == eq.qint8 and symmetric:
        assert chosen == {"kl", "minmax"}  # different tensors need different strategies


def test_merge_equals_observing_both_streams_and_needs_equal_members():
    x = streams()["heavy"]
    whole, a, b = MixObserver(), MixObserver(), MixObserver()
    for t in x:
        whole(t)
    a(x[0])
    b(x[1])
    b(x[2])
    a.merge_(b)
    assert all(torch.equal(u, v) for u, v in zip(a.calculate_qparams(), whole.calculate_qparams()))
    assert a.chosen == whole.chosen
    with pytest.raises(ValueError, match="different settings"):
        a.merge_(MixObserver(members=("minmax", "mse")))
    with pytest.raises(ValueError, match="unknown calibration strategy"):
        MixObserver(members=("minmax", "median"))
    assert OBSERVERS["mix"] is MixObserver


def test_mix_in_a_qconfig_calibrates_the_cnn_and_survives_its_state_dict():
    model, (xtr, _, xte, yte) = trained_cnn()
    mix_template = TemplateSetter("mix", lambda site: eq.get_qconfig(observer=MixObserver), "Mix observer, int8")
    cm = calibrate(eq.prepare(model, xtr[:2], qconfig_setter=(mix_template,)), xtr[:256].split(64))
    mixes = {k: fq.observer for k, fq in cm.eq_fq.items() if isinstance(fq.observer, MixObserver)}
    assert mixes and all(o.chosen in o.members for o in mixes.values())
    f, q = accuracy(model, xte[:500], yte[:500]), accuracy(cm, xte[:500], yte[:500])
    print(f"\nCNN float {f:.2f}%  int8 with Mix observers {q:.2f}%  choices {sorted({o.chosen for o in mixes.values()})}")
    assert q >= f - 1.0
    buf = io.BytesIO()
    torch.save(cm.state_dict(), buf)
    again = eq.prepare(model, xtr[:2], qconfig_setter=(mix_template,))
    again.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    eq.set_fake_quantize(again, eq.FakeQuantState.VALIDATION)
    for k, fq in cm.eq_fq.items():
        assert torch.equal(fq.scale, again.eq_fq[k].scale), k
        if k in mixes:
            assert torch.equal(again.eq_fq[k].observer.calculate_qparams()[0], fq.scale), k
    with torch.no_grad():
        assert torch.equal(cm(xte[:64]), again(xte[:64]))
