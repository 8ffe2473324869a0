"""Calibration and conversion time on EfficientNet-Lite0, against the float forward pass.

Takes ``--images`` calibration crops (batches of 16) and ``--reps``. In one process, on the same
batches: the float forward pass (torch and ONNX Runtime), edgequant calibration with each of its
activation observers (every activation gets that observer; weights per-channel min-max) and with
each template, the int8 template once more with histograms binned by torch ops instead of the
compiled kernel (what an install without a C compiler runs), torch.ao FX calibration
(HistogramObserver, MinMaxObserver) and ONNX Runtime's calibrators (MinMax, Entropy,
Percentile: ``collect_data`` + ``compute_data``). Every repetition runs all of them one
after the other, so background load hits them alike; each is warmed up once first (its ranges are
then set, as after a first calibration batch). Times are wall-clock medians; the ratio divides by
the float forward pass of the same runtime. Then conversion time: edgequant ``export`` +
``convert``, torch.ao ``convert_fx``, ONNX Runtime ``quantize_static`` (which calibrates again).

    python benchmarks/calib_speed.py [--images 32] [--reps 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as W  # noqa: E402

import edgequant as eq  # noqa: E402
from edgequant import observers as obs  # noqa: E402
from edgequant.qconfig import get_qconfig  # noqa: E402

OUR_OBSERVERS = {"MinMaxObserver": obs.MinMaxObserver, "PercentileObserver": obs.PercentileObserver,
                 "MSEObserver": obs.MSEObserver, "KLObserver": obs.KLObserver}


def every_activation(observer):
    """A qconfig setter giving every site int8 activations observed by ``observer``."""
    def setter(sites, current):
        return {s.name: get_qconfig(observer=observer, out_dtype=eq.qint8, weight_dtype=eq.qint8) for s in sites}
    return setter


def _seconds(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def edgequant_calibration(w, setter):
    with torch.no_grad():
        cm = eq.prepare(w.model, w.calib[0], qconfig_setter=(setter,))

    def run():
        eq.set_fake_quantize(cm, eq.FakeQuantState.CALIBRATION)
        for b in w.calib:
            cm(*b)
        eq.set_fake_quantize(cm, eq.FakeQuantState.VALIDATION)  # includes calculate_qparams
    return run, cm


def without_compiled_binning(run):
    """Run ``run`` with histograms binned by torch ops, as when ``_binning.c`` could not be built."""
    from edgequant.observers import histogram

    kernel, histogram._binning = histogram._binning, None
    try:
        return run()
    finally:
        histogram._binning = kernel


def torch_ao_calibration(w, observer):
    prepared = W.torch_ao_prepared(w, observer)

    def run():
        for b in w.calib:
            prepared(*b)
    return run, prepared


def ort_calibration(w, float_onnx, method, tmp):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import CalibrationDataReader, create_calibrator

    calibrator = create_calibrator(float_onnx, augmented_model_path=os.path.join(tmp, f"aug_{method}.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, method))
    reader_cls = type("Reader", (W._Reader, CalibrationDataReader), {})

    def run():
        with W.ort_quiet():  # its progress messages are not results
            calibrator.collect_data(reader_cls(w, w.calib))
            calibrator.compute_data()
        if hasattr(calibrator, "clear_collected_data"):
            calibrator.clear_collected_data()
    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    w = W.efficientnet_lite0(n_calib=args.images, n_test=2)
    with W.temp_dir() as tmp:
        float_onnx = W.export_onnx(w, os.path.join(tmp, "float.onnx"))
        session = W.ort_session(float_onnx)
        feeds = [W.ort_feeds(w, b) for b in w.calib]
        runs = {("torch", "float forward"): lambda: [w.model(*b) for b in w.calib]}
        ours = {}
        for name, observer in OUR_OBSERVERS.items():
            runs[("torch", f"edgequant {name}")], ours[name] = edgequant_calibration(w, every_activation(observer))
        for tname, setter in W.TEMPLATES.items():
            runs[("torch", f"edgequant template {tname}")], ours[tname] = edgequant_calibration(w, setter)
        run8, _ = edgequant_calibration(w, W.TEMPLATES["int8"])
        runs[("torch", "edgequant template int8, torch-ops binning (an install without a C compiler)")] = \
            lambda: without_compiled_binning(run8)
        ao = {}
        for name in ("histogram", "minmax"):
            label = f"torch.ao FX {'HistogramObserver' if name == 'histogram' else 'MinMaxObserver'}"
            runs[("torch", label)], ao[name] = torch_ao_calibration(w, name)
        runs[("onnxruntime", "float forward")] = lambda: [session.run(None, f) for f in feeds]
        for method in ("MinMax", "Entropy", "Percentile"):
            runs[("onnxruntime", f"ONNX Runtime {method} calibrator")] = ort_calibration(w, float_onnx, method, tmp)
        times = {k: [] for k in runs}
        for k, fn in runs.items():
            print(f"  warm-up {k[1]} ({k[0]}): {_seconds(fn):.1f} s", file=sys.stderr, flush=True)
        load = []
        for rep in range(args.reps):
            load.append(os.getloadavg()[0])
            for k, fn in runs.items():
                times[k].append(_seconds(fn))
            print(f"  rep {rep}: " + ", ".join(f"{k[1]} {v[-1]:.1f}" for k, v in times.items()), file=sys.stderr, flush=True)

        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"## Calibration time, EfficientNet-Lite0, {args.images} crops in batches of 16\n")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.reps} (wall clock); "
              f"1-minute load average during the runs {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores\n")
        print("| runtime | calibration | seconds | / float forward |")
        print("|---|---|---:|---:|")
        for (rt, label), t in med.items():
            print(f"| {rt} | {label} | {t:.2f} | {t / med[(rt, 'float forward')]:.2f} |")

        conv = {}
        example = w.calib[0]
        start = time.perf_counter()
        eq.convert(eq.export(ours["int8"], example), eq.March.NASH_M)
        conv["edgequant export + convert (int8 template)"] = time.perf_counter() - start
        start = time.perf_counter()
        W.torch_ao_converted(ao["histogram"])
        conv["torch.ao convert_fx"] = time.perf_counter() - start
        start = time.perf_counter()
        W.onnx_runtime_quantized(w, float_onnx, "MinMax", tmp)
        conv["ONNX Runtime quantize_static (MinMax; includes its calibration)"] = time.perf_counter() - start
    print("\n## Conversion time, EfficientNet-Lite0\n")
    print("| step | seconds |")
    print("|---|---:|")
    for k, t in conv.items():
        print(f"| {k} | {t:.2f} |")
    print(f"\ncommand: python benchmarks/calib_speed.py --images {args.images} --reps {args.reps}\n")


if __name__ == "__main__":
    main()
