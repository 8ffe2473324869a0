"""QAT training step time against the float training step, in one process, on the same batches.

Models: the MNIST residual CNN of the tests (batch 64) and EfficientNet-Lite0 (batch 8 crops,
cross-entropy against float's own top-1, which is enough to time a step). The float step is
forward, cross-entropy, backward and an Adam step; the QAT step is the same on the model
prepared with ``default_qat_qconfig_setter`` after a few calibration batches, in
``FakeQuantState.QAT`` (moving-average observers update, straight-through fake quantization):
once prepared in eval mode (BatchNorm folded at prepare) and once in train mode (BatchNorm kept:
``edgequant.qat_bn``, batch statistics and simulated folding in every step). Steps alternate
float / QAT / QAT with BN kept; medians of ``--steps`` after one warm-up step each.

    python benchmarks/qat_speed.py [--steps 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as W  # noqa: E402

import edgequant as eq  # noqa: E402
from edgequant.qconfig_template import default_qat_qconfig_setter  # noqa: E402


def _stepper(model, x, y):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def time_steps(models, x, y, steps):
    """Median step time in ms of each of ``models``, their steps interleaved."""
    steppers = [_stepper(m, x, y) for m in models]
    for step in steppers:
        step()
    times = [[] for _ in models]
    for _ in range(steps):
        for step, out in zip(steppers, times):
            start = time.perf_counter()
            step()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def _qat_model(model, x, calib, batch):
    qat = eq.prepare(model, (x[:2],), qconfig_setter=(default_qat_qconfig_setter,))
    W.test_models.calibrate(qat, [b[0][:batch] for b in calib[:2]])
    eq.set_fake_quantize(qat, eq.FakeQuantState.QAT)
    return qat.train()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for make, batch in ((W.mnist_cnn, 64), (W.efficientnet_lite0, 8)):
        w = make()
        x = torch.cat([b[0] for b in w.calib])[:batch]
        with torch.no_grad():
            y = w.model(x).argmax(1)  # float's own top-1 as the target
        qat = _qat_model(W.copy.deepcopy(w.model).eval(), x, w.calib, batch)      # BN folded at prepare
        qat_bn = _qat_model(W.copy.deepcopy(w.model).train(), x, w.calib, batch)  # BN kept (edgequant.qat_bn)
        float_model = W.copy.deepcopy(w.model).train()
        t_float, t_qat, t_bn = time_steps([float_model, qat, qat_bn], x, y, args.steps)
        rows.append((w.name, batch, t_float, t_qat, t_bn))
        print(f"  {w.name}: float {t_float:.0f} ms, QAT {t_qat:.0f} ms, QAT with BN kept {t_bn:.0f} ms",
              file=sys.stderr, flush=True)
    print("## QAT step time\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| model | batch | float step ms | QAT step ms | QAT / float | QAT, BN kept, step ms | BN kept / float |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, tf, tq, tb in rows:
        print(f"| {name} | {batch} | {tf:.1f} | {tq:.1f} | {tq / tf:.2f} | {tb:.1f} | {tb / tf:.2f} |")
    print(f"\ncommand: python benchmarks/qat_speed.py --steps {args.steps}\n")


if __name__ == "__main__":
    main()
