"""Calibration and QAT of a prepared model under DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/qat_ddp.py            # CPU, gloo
    torchrun --nproc_per_node=2 examples/qat_ddp.py --steps 50  # longer
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=G examples/qat_ddp.py

Uses nccl and one GPU per process when CUDA is present, gloo on CPU otherwise. Each rank
calibrates its share of the batches; leaving CALIBRATION synchronises the observers
(edgequant/collectives.py), so every rank freezes bitwise identical qparams. QAT then runs
under DDP: gradients (weights, BatchNorm's gamma and beta, learnable scales) are averaged by DDP,
moving-average observers are synchronised in every forward. The model is prepared in train mode,
so each conv + BatchNorm pair stays a unit whose BN keeps learning (``edgequant.qat_bn``): every
parameter gets a gradient and DDP needs no ``find_unused_parameters``. Rank 0 saves the checkpoint, every rank loads it with
``weights_only=True``. Data: random images (no download); swap in a DistributedSampler.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import edgequant as eq  # noqa: E402
from edgequant.qconfig_template import default_qat_qconfig_setter  # noqa: E402


class Net(nn.Module):
    def __init__(self, c=8, classes=10):
        super().__init__()
        self.quant = eq.QuantStub()
        self.body = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.head = nn.Linear(2 * c, classes)
        self.dequant = eq.DeQuantStub()

    def forward(self, x):
        x = self.body(self.quant(x))
        return self.dequant(self.head(F.adaptive_avg_pool2d(x, 1).flatten(1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--out", default="qat_ddp.pt")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same float model on every rank
    model = Net()  # train mode: prepare with a QAT template keeps BatchNorm training (eval mode folds it)
    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    batches = [torch.randn(args.batch, 1, 16, 16, generator=g) for _ in range(4)]
    labels = [torch.randint(0, 10, (args.batch,), generator=g) for _ in range(args.steps)]
    images = [torch.randn(args.batch, 1, 16, 16, generator=g) for _ in range(args.steps)]

    qm = eq.prepare(model, batches[0][:2], qconfig_setter=(default_qat_qconfig_setter,)).to(device)

    # 1. calibration: every rank its batches; leaving CALIBRATION syncs the observers
    eq.set_fake_quantize(qm, eq.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x in batches:
            qm(x.to(device))
    eq.set_fake_quantize(qm, eq.FakeQuantState.QAT)  # syncs, then freezes identical qparams

    # 2. QAT under DDP (switch states before wrapping); BN kept, so every parameter gets a gradient.
    #    Each rank normalises by its own batch statistics; DDP's broadcast_buffers gives every rank
    #    rank 0's running statistics at each forward. freeze_bn for the last steps: running statistics.
    ddp = nn.parallel.DistributedDataParallel(qm, device_ids=[device.index] if cuda else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    qm.train()
    for step, (x, y) in enumerate(zip(images, labels)):
        if step == args.steps - 2:
            eq.freeze_bn(qm)
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    eq.set_fake_quantize(qm, eq.FakeQuantState.VALIDATION)

    # 3. checkpoint: rank 0 saves, every rank loads (weights_only=True)
    if rank == 0:
        torch.save(qm.state_dict(), args.out)
    dist.barrier()
    fresh = eq.prepare(model, batches[0][:2], qconfig_setter=(default_qat_qconfig_setter,)).to(device)
    fresh.load_state_dict(torch.load(args.out, weights_only=True, map_location=device))
    eq.set_fake_quantize(fresh, eq.FakeQuantState.VALIDATION)

    # every rank holds the same scales: compare a checksum of them across ranks
    scales = torch.cat([fq.qparams()[0].flatten().double() for _, fq in eq.fake_quant.fake_quant_modules(fresh)])
    mine = torch.stack([scales.sum(), (scales * torch.arange(len(scales), device=scales.device)).sum()])
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, dist.ReduceOp.MIN)
    dist.all_reduce(hi, dist.ReduceOp.MAX)
    same_ckpt = all(torch.equal(a, b) for a, b in zip(qm.state_dict().values(), fresh.state_dict().values()))
    print(f"rank {rank}/{world}: {len(scales)} scales, identical across ranks: {bool(torch.equal(lo, hi))}, "
          f"checkpoint reloads exactly: {same_ckpt}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
