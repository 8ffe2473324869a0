"""Calibration and QAT under torch.distributed: two CPU processes (gloo on 127.0.0.1).

One spawn runs every distributed part (process start-up dominates the cost); each rank writes
what it ended with to a file and the test process compares the ranks with each other and with
one process doing the same work alone.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import edgequant as eq
from edgequant.distributed import is_distributed, sync_observers
from edgequant.fake_quant import BiasCorrection, fake_quant_modules
from edgequant.observers import MinMaxObserver
from edgequant.qconfig import get_qconfig
from edgequant.qconfig_template import (
    TemplateSetter, calibration_8bit_weight_16bit_act_qconfig_setter as T16,
    default_calibration_qconfig_setter as T8, default_qat_qconfig_setter as Q8, qint8,
)

from models import ResidualCNN, calibrate

WORLD = 2
N_BATCH, BATCH = 4, 8       # calibration: rank r takes batches r, r + 2, ...
QAT_STEPS, QAT_BATCH = 3, 8  # QAT: rank r takes half of each combined batch
# learnable scales initialised by min-max (exact across ranks; a moving average would merge as a mean)
LSQ = TemplateSetter("lsq", lambda site: get_qconfig(observer=MinMaxObserver, out_dtype=qint8, weight_dtype=qint8,
                                                     qat=True, learnable=True), "int8, learnable activation scales")


def _model():
    torch.manual_seed(0)
    m = ResidualCNN(c=4).eval()
    with torch.no_grad():  # non-trivial BN statistics (eval mode: frozen during QAT)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _data():
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(BATCH, 1, 12, 12, generator=g) for _ in range(N_BATCH)]
    qat = [(torch.randn(QAT_BATCH, 1, 12, 12, generator=g), torch.randint(0, 10, (QAT_BATCH,), generator=g))
           for _ in range(QAT_STEPS)]
    return calib, qat


def _qparams(model):
    out = {}
    for name, fq in fake_quant_modules(model):
        s, z = fq.qparams()
        out[name] = (s.clone(), z.clone())
    for name, m in model.named_modules():
        if isinstance(m, BiasCorrection):
            out[name] = (m.input_sum.clone(), m.count.clone())
    return out


def _prepared(setter, example):
    return eq.prepare(_model(), example, qconfig_setter=(setter,))


def _qat(model, steps, opt_model=None):
    """A few SGD steps; ``steps`` is a list of (x, y)."""
    eq.set_fake_quantize(model, eq.FakeQuantState.QAT)
    opt = torch.optim.SGD((opt_model or model).parameters(), lr=0.05)
    for x, y in steps:
        opt.zero_grad()
        F.cross_entropy((opt_model or model)(x), y).backward()
        opt.step()
    return model


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        calib, qat = _data()
        mine = calib[rank::WORLD]
        res = {}
        # calibration: min-max (int16) and histogram (MSE, int8) observers, bias correction sums
        res["minmax"] = _qparams(calibrate(_prepared(T16, calib[0][:2]), mine))
        hist = calibrate(_prepared(T8, calib[0][:2]), mine)
        res["hist"] = _qparams(hist)
        # a second, explicit sync must not count anything twice
        sync_observers(hist)
        eq.set_fake_quantize(hist, eq.FakeQuantState.CALIBRATION)
        eq.set_fake_quantize(hist, eq.FakeQuantState.VALIDATION)
        res["hist_again"] = _qparams(hist)
        # calibration in two phases (synced after each): the second adds only its own batches
        two = calibrate(calibrate(_prepared(T8, calib[0][:2]), mine[:1]), mine[1:])
        res["hist_two_phases"] = _qparams(two)

        # DDP QAT with learnable scales: each rank the half of every combined batch
        lsq = calibrate(_prepared(LSQ, calib[0][:2]), mine)
        eq.set_fake_quantize(lsq, eq.FakeQuantState.QAT)
        ddp = torch.nn.parallel.DistributedDataParallel(lsq, find_unused_parameters=True)
        half = [(x[rank::WORLD], y[rank::WORLD]) for x, y in qat]
        _qat(lsq, half, opt_model=ddp)
        res["lsq"] = {k: v.clone() for k, v in lsq.state_dict().items()}

        # DDP QAT with moving-average observers: scales synced every step
        ma = calibrate(_prepared(Q8, calib[0][:2]), mine)
        eq.set_fake_quantize(ma, eq.FakeQuantState.QAT)
        ddp = torch.nn.parallel.DistributedDataParallel(ma, find_unused_parameters=True)
        _qat(ma, half, opt_model=ddp)
        eq.set_fake_quantize(ma, eq.FakeQuantState.VALIDATION)
        res["ma"] = {k: v.clone() for k, v in ma.state_dict().items()}

        # DDP QAT with BatchNorm kept (prepared in train mode): every parameter gets a gradient, so DDP
        # runs without find_unused_parameters (it raises at the next step if one got none)
        kept = calibrate(eq.prepare(_model().train(), calib[0][:2], qconfig_setter=(Q8,)), mine)
        eq.set_fake_quantize(kept, eq.FakeQuantState.QAT)
        ddp = torch.nn.parallel.DistributedDataParallel(kept)
        kept.train()
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for x, y in half:
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
        res["bn_kept"] = {k: v.detach().clone() for k, v in kept.named_parameters()}

        # checkpoint: rank 0 saves, every rank loads (weights_only) into a fresh prepared model
        path = os.path.join(out_dir, "ckpt.pt")
        if rank == 0:
            torch.save(ma.state_dict(), path)
        dist.barrier()
        fresh = _prepared(Q8, calib[0][:2])
        fresh.load_state_dict(torch.load(path, weights_only=True))
        eq.set_fake_quantize(fresh, eq.FakeQuantState.VALIDATION)
        res["loaded"] = {k: v.clone() for k, v in fresh.state_dict().items()}
        res["loaded_out"] = fresh(calib[0])
        res["ma_out"] = ma(calib[0])
        res["distributed"] = is_distributed()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]) if isinstance(a[k], tuple) else [(a[k], b[k])]:
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k


def test_ranks_end_with_bitwise_identical_qparams(ranks):
    r0, r1 = ranks
    assert r0["distributed"] and r1["distributed"]
    for key in ("minmax", "hist", "hist_again", "lsq", "ma", "loaded"):
        _same(r0[key], r1[key])


def test_minmax_calibration_equals_one_process_exactly(ranks):
    calib, _ = _data()
    ref = _qparams(calibrate(_prepared(T16, calib[0][:2]), calib))
    got = ranks[0]["minmax"]
    assert ref.keys() == got.keys()
    for k in ref:
        if ".eq_bc." in f".{k}." or k.startswith("eq_bc"):
            torch.testing.assert_close(got[k][0], ref[k][0], rtol=1e-6, atol=1e-6)  # per-batch float32 sums, regrouped
            assert torch.equal(got[k][1], ref[k][1]), k
        else:
            assert torch.equal(got[k][0], ref[k][0]) and torch.equal(got[k][1], ref[k][1]), k


def test_histogram_calibration_within_one_bin_and_never_counts_twice(ranks):
    calib, _ = _data()
    ref_model = calibrate(_prepared(T8, calib[0][:2]), calib)
    ref = _qparams(ref_model)
    got = ranks[0]["hist"]
    _same(got, ranks[0]["hist_again"])
    hist = {n: fq for n, fq in fake_quant_modules(ref_model) if hasattr(fq.observer, "histogram")}
    assert hist
    for k in ref:
        if k in hist:
            h = hist[k].observer.histogram
            # range within one bin: |s * qmax - s_ref * qmax| <= w
            dtype = hist[k].dtype
            assert (got[k][0] - ref[k][0]).abs().item() * max(abs(dtype.qmin), dtype.qmax) <= h.width, k
        elif k.startswith("eq_bc"):
            torch.testing.assert_close(got[k][0], ref[k][0], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got[k][0], ref[k][0]), k


def test_two_calibration_phases_equal_one(ranks):
    got, one = ranks[0]["hist_two_phases"], ranks[0]["hist"]
    assert got.keys() == one.keys()
    for k in one:
        if k.startswith("eq_bc"):
            torch.testing.assert_close(got[k][0], one[k][0], rtol=1e-6, atol=1e-6)
            assert torch.equal(got[k][1], one[k][1]), k  # counts: nothing counted twice
        else:  # histograms re-binned between phases: same grid, same counts up to edge effects
            torch.testing.assert_close(got[k][0], one[k][0], rtol=2e-3, atol=0)


def test_ddp_qat_learnable_scales_equal_one_process_with_the_combined_batch(ranks):
    calib, qat = _data()
    ref = _qat(calibrate(_prepared(LSQ, calib[0][:2]), calib), qat)
    sd = ref.state_dict()
    got = ranks[0]["lsq"]
    assert sd.keys() == got.keys()
    moved = 0
    init = calibrate(_prepared(LSQ, calib[0][:2]), calib).state_dict()
    for k in sd:
        if sd[k].is_floating_point():
            torch.testing.assert_close(got[k], sd[k], rtol=1e-4, atol=1e-5, msg=k)
            moved += int(not torch.equal(sd[k], init[k]))
        else:
            assert torch.equal(got[k], sd[k]), k
    assert moved > 0  # training did change weights and learned scales
    assert any(k.endswith("learned_scale") and not torch.equal(sd[k], init[k]) for k in sd)


def test_ddp_qat_with_batch_norm_kept_needs_no_find_unused_parameters(ranks):
    r0, r1 = ranks
    assert any(k.startswith("eq_bn.") and k.endswith("bn_weight") for k in r0["bn_kept"])
    _same(r0["bn_kept"], r1["bn_kept"])   # gamma, beta and weights: gradients averaged, identical on both ranks


def test_checkpoint_saved_by_rank0_loads_on_every_rank(ranks):
    for r in ranks:
        _same(r["loaded"], r["ma"])
        assert torch.equal(r["loaded_out"], r["ma_out"])
