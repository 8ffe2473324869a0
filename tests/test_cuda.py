"""CUDA paths (issue 18 part 2): prepare, calibration with every observer, QAT, export, convert and
the integer model on a CUDA device, and DDP QAT with nccl.

The ``cuda``-marked tests skip without a GPU (``torch.cuda.is_available()``), DDP without two. The
integer model on CUDA must give the CPU's codes bit for bit: its integer kernels compute exact
integers on either device (``ops/matmul_kernels``: cuDNN off, float64 where cuBLAS may use TF32,
int64 sums on the CPU). The unmarked tests run everywhere: the exactness guard refuses float32
carriers under reduced-precision settings (TF32, ``set_float32_matmul_precision``), and the
histogram's torch binning (the path CUDA tensors take) equals the compiled CPU kernel.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant import qconfig_template as qt
from edgequant.fake_quant import fake_quant_modules
from edgequant.observers import OBSERVERS, Histogram
from edgequant.ops import matmul_kernels
from models import ResidualCNN, TinyBlock as Block

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
cuda = [pytest.mark.cuda, needs_cuda]


def _observer_setter(name):
    kwargs = {"scale": 0.05} if name == "fixed_scale" else None
    return qt.TemplateSetter(f"all_{name}", lambda site: eq.get_qconfig(observer=name, observer_kwargs=kwargs),
                             f"every activation observed by {name}")


def _model(c=8):
    torch.manual_seed(0)
    m = ResidualCNN(c=c).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _batches(n=3, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 1, 28, 28, generator=g).to(device) for _ in range(n)]


# -- everywhere: the guard and the binning CUDA relies on ---------------------------------------------
@pytest.fixture
def restore_precision():
    cm, cd = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cm.allow_tf32, cd.allow_tf32, torch.get_float32_matmul_precision())
    yield
    cm.allow_tf32, cd.allow_tf32 = saved[0], saved[1]
    torch.set_float32_matmul_precision(saved[2])


def test_float32_guard_refuses_reduced_precision(restore_precision):
    cm, cd = torch.backends.cuda.matmul, torch.backends.cudnn
    cm.allow_tf32, cd.allow_tf32 = False, False
    torch.set_float32_matmul_precision("highest")
    assert matmul_kernels._float32_exact("cuda") and matmul_kernels._float32_exact("cpu")
    cd.allow_tf32 = True                                   # PyTorch's default for cuDNN convolutions
    assert not matmul_kernels._float32_exact("cuda") and matmul_kernels._float32_exact("cpu")
    cd.allow_tf32, cm.allow_tf32 = False, True
    assert not matmul_kernels._float32_exact("cuda")
    cm.allow_tf32 = False
    for mode in ("high", "medium"):                        # TF32 / bf16 products on every device
        torch.set_float32_matmul_precision(mode)
        assert not matmul_kernels._float32_exact("cuda") and not matmul_kernels._float32_exact("cpu")


def test_integer_conv_exact_under_reduced_precision(restore_precision):
    """With reduced precision on, the kernels fall back to float64: the same codes."""
    m, xs = _model(c=4), _batches(2)
    p = eq.prepare(m, xs[0], qconfig_setter=(qt.default_calibration_qconfig_setter,), march="nash-m")
    eq.calibrate(p, xs)
    g = eq.convert(eq.export(p, xs[0]), "nash-m")
    ref = g(xs[1], reference=True)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    assert torch.equal(g(xs[1]), ref)


def test_torch_binning_equals_compiled_kernel(monkeypatch):
    """The torch binning (what a CUDA tensor goes through) gives the compiled kernel's counts."""
    from edgequant.observers import histogram as hmod

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(50_000, generator=g) * 3, torch.rand(10_000, generator=g) * 1e-3, torch.zeros(1000)]
    for bins in (256, 2048):
        h_c, h_t = Histogram(bins), Histogram(bins)
        for x in xs:
            h_c.add_(x, float(x.min()), float(x.max()))
        with monkeypatch.context() as mp_:
            mp_.setattr(hmod, "_binning", None)
            for x in xs:
                h_t.add_(x, float(x.min()), float(x.max()))
        assert torch.equal(h_c.counts, h_t.counts) and h_c.window == h_t.window


# -- on a GPU ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("observer", sorted(OBSERVERS))
@pytest.mark.cuda
@needs_cuda
def test_prepare_and_calibrate_on_cuda_every_observer(observer, restore_precision):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # float32 convs: near the CPU's
    xs = _batches(3)
    scales = {}
    for dev in ("cpu", "cuda"):
        p = eq.prepare(_model().to(dev), xs[0].to(dev), qconfig_setter=(_observer_setter(observer),),
                       march="nash-m")
        eq.calibrate(p, [x.to(dev) for x in xs])
        fqs = fake_quant_modules(p)
        assert all(fq.scale.device.type == dev for _, fq in fqs)
        scales[dev] = {n: fq.qparams()[0].cpu() for n, fq in fqs}
    # the float activations differ in the last bits between CPU and CUDA kernels: min-max scales by as
    # much, a histogram observer's choice by up to a bin or two of its search
    rtol = 1e-4 if observer in ("minmax", "moving_average_minmax", "fixed_scale") else 5e-2
    for name, s in scales["cpu"].items():
        torch.testing.assert_close(scales["cuda"][name], s, rtol=rtol, atol=0)


@pytest.mark.cuda
@needs_cuda
def test_histogram_on_cuda_equals_cpu():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(4)) * 2
    h_cpu, h_gpu = Histogram(2048), Histogram(2048).cuda()
    h_cpu.add_(x, float(x.min()), float(x.max()))
    h_gpu.add_(x.cuda(), float(x.min()), float(x.max()))
    assert torch.equal(h_gpu.counts.cpu(), h_cpu.counts)


@pytest.mark.cuda
@needs_cuda
def test_qat_step_on_cuda():
    xs = _batches(3, "cuda")
    p = eq.prepare(_model().cuda(), xs[0], qconfig_setter=(qt.default_qat_qconfig_setter,), march="nash-m")
    eq.calibrate(p, xs[:2])
    eq.set_fake_quantize(p, "qat")
    p.train()
    opt = torch.optim.SGD(p.parameters(), lr=1e-2)
    before = [q.detach().clone() for q in p.parameters()]
    for x in xs:
        loss = F.cross_entropy(p(x), torch.zeros(x.shape[0], dtype=torch.int64, device="cuda"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(q.device.type == "cuda" for q in p.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, p.parameters()))


def _converted(model, xs, setters, march, device):
    p = eq.prepare(model.to(device), xs[0].to(device), qconfig_setter=setters, march=march)
    eq.calibrate(p, [x.to(device) for x in xs])
    ir = eq.export(p, xs[0].to(device))
    return p, ir, eq.convert(ir, march)


@pytest.mark.cuda
@needs_cuda
def test_export_and_convert_a_cuda_model():
    xs = _batches(3)
    p, ir, g = _converted(_model(), xs, (qt.default_calibration_qconfig_setter,), "nash-m", "cuda")
    assert all(c.device.type == "cpu" for c in ir.constants.values())   # the IR is CPU data
    _, ir_cpu, g_cpu = _converted(_model(), xs, (qt.default_calibration_qconfig_setter,), "nash-m", "cpu")
    assert [n.op for n in ir.nodes] == [n.op for n in ir_cpu.nodes]
    assert [n.op for n in g.nodes] == [n.op for n in g_cpu.nodes]
    sim = p(xs[2].cuda()).cpu()
    # the quant level on the CPU and the integer model against the CUDA simulation (whose float convs
    # may use TF32): a few output LSB at most
    for out in (ir(xs[2]), g(xs[2]), ir(xs[2].cuda()).cpu()):
        assert (out - sim).abs().max() < 0.05 * sim.abs().max()


CASES = [
    ("cnn-nash-m", lambda: (_model(), _batches(3)), (qt.default_calibration_qconfig_setter,), "nash-m"),
    ("cnn-int16-nash-h", lambda: (_model(), _batches(3)), (qt.calibration_8bit_weight_16bit_act_qconfig_setter,),
     "nash-h"),
    ("block-nash-m", lambda: (Block().eval(), [torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(k))
                                               for k in range(3)]), (qt.default_calibration_qconfig_setter,), "nash-m"),
]


@pytest.mark.parametrize("case, make, setters, march", CASES, ids=[c[0] for c in CASES])
@pytest.mark.cuda
@needs_cuda
def test_integer_model_on_cuda_equals_cpu_bit_for_bit(case, make, setters, march, restore_precision):
    model, xs = make()
    _, _, g = _converted(model, xs, setters, march, "cpu")
    want, env_cpu = g(xs[2], return_intermediates=True)
    for tf32 in (False, True):        # PyTorch's defaults (cuDNN TF32 on), then TF32 everywhere
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        got, env = g(xs[2].cuda(), return_intermediates=True)
        assert got.device.type == "cuda"
        for name, t in env_cpu.items():   # every integer value, bit for bit
            if isinstance(t, torch.Tensor) and not t.is_floating_point():
                assert torch.equal(env[name].cpu(), t), (case, name)
        assert torch.equal(got.cpu(), want), case


# -- DDP QAT with nccl on two GPUs ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=2)
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    xs = _batches(4)
    p = eq.prepare(_model().to(dev), xs[0].to(dev), qconfig_setter=(qt.default_qat_qconfig_setter,), march="nash-m")
    eq.calibrate(p, [x.to(dev) for x in xs[rank::2]])          # statistics synced across ranks
    eq.set_fake_quantize(p, "qat")
    p.train()
    ddp = DDP(p, device_ids=[rank])
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-2)
    for x in xs:
        half = x[rank * 4:(rank + 1) * 4].to(dev)
        loss = F.cross_entropy(ddp(half), torch.zeros(half.shape[0], dtype=torch.int64, device=dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
    eq.set_fake_quantize(p, "validation")
    state = {k: v.cpu() for k, v in p.state_dict().items()}
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with nccl needs two GPUs")
def test_ddp_qat_with_nccl(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:   # parameters (DDP-averaged gradients) and every scale: the same on both ranks
        if k.endswith(("scale", "zero_point", "weight", "bias")):
            assert torch.equal(a[k], b[k]), k
