"""Per-batch forward and calculate_qparams time of edgequant's observers against torch.ao's.

Takes ``--reps N`` and ``--shape`` (default a 16x64x56x56 activation); builds a few random
activations once, then times every observer's ``forward`` and ``calculate_qparams()`` on them,
all in one process with torch's default thread count.
Prints a markdown table of medians in milliseconds and the ratio to torch.ao's
HistogramObserver, then the command that produced it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.ao.quantization.observer import HistogramObserver as AoHistogramObserver
from torch.ao.quantization.observer import MinMaxObserver as AoMinMaxObserver

from edgequant.observers import (FixedScaleObserver, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                                 MSEObserver, PercentileObserver)

OBSERVERS = {
    "torch.ao MinMaxObserver": lambda: AoMinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    "torch.ao HistogramObserver": lambda: AoHistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    "MinMaxObserver": MinMaxObserver,
    "MovingAverageMinMaxObserver": MovingAverageMinMaxObserver,
    "FixedScaleObserver": lambda: FixedScaleObserver(scale=0.05),
    "PercentileObserver": PercentileObserver,
    "MSEObserver": MSEObserver,
    "MSEObserver (affine)": lambda: MSEObserver(symmetric=False),
    "KLObserver": KLObserver,
}
REFERENCE = "torch.ao HistogramObserver"


def make_batches(shape: list[int], count: int) -> list[torch.Tensor]:
    """Activation-like batches: mostly normal, some ReLU'd, a few outliers, ranges that drift."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        x = torch.randn(shape, generator=g) * (1.0 + 0.1 * i)
        if i % 2:
            x = x.relu()
        x.view(-1)[:: 100_003] *= 8.0
        out.append(x)
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(batches: list[torch.Tensor], reps: int) -> dict[str, tuple[float, float]]:
    """Median forward and calculate_qparams milliseconds per observer.

    Every repetition runs all observers on the same batch one after the other, so a burst of
    background load hits them alike instead of whichever happened to be measured then.
    """
    observers = {name: make() for name, make in OBSERVERS.items()}
    for obs in observers.values():  # warm-up; the first batch also sets the range
        obs(batches[0])
        obs.calculate_qparams()
    forward = {name: [] for name in observers}
    qparams = {name: [] for name in observers}
    for rep in range(reps):
        x = batches[(rep + 1) % len(batches)]
        for name, obs in observers.items():
            forward[name].append(timed(lambda: obs(x)))
        for name, obs in observers.items():
            qparams[name].append(timed(obs.calculate_qparams))
    return {name: (statistics.median(forward[name]), statistics.median(qparams[name])) for name in observers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per measurement (median)")
    parser.add_argument("--shape", type=lambda s: [int(v) for v in s.lower().split("x")], default=[16, 64, 56, 56],
                        help="activation shape, e.g. 16x64x56x56")
    args = parser.parse_args(argv)
    batches = make_batches(args.shape, 4)
    results = measure(batches, args.reps)
    ref_fwd, ref_qp = results[REFERENCE]
    shape = "x".join(map(str, args.shape))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print("## Observer cost against torch.ao's HistogramObserver\n")
    print(f"Observers on a {shape} float32 activation, {torch.get_num_threads()} threads, "
          f"median of {args.reps} (torch {torch.__version__}, load average {load})\n")
    print("| observer | forward ms | forward / ao Histogram | calculate_qparams ms | qparams / ao Histogram |")
    print("|---|---:|---:|---:|---:|")
    for name, (fwd, qp) in results.items():
        print(f"| {name} | {fwd:.2f} | {fwd / ref_fwd:.3f} | {qp:.3f} | {qp / ref_qp:.3f} |")
    print("\ncommand: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
