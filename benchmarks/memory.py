"""Peak memory of calibration against the number of calibration batches, ours and the peers'.

Each point (a flow and a number of batches of EfficientNet-Lite0 crops) runs in its own Python
process: it loads the model, prepares the flow, then resets the kernel's resident-set high-water
mark (``/proc/self/clear_refs`` = 5) and calibrates. The number reported is ``VmHWM`` after
calibration minus ``VmRSS`` before it: every byte the process touched, whoever allocated it
(torch's C++ allocator, NumPy, ONNX Runtime's arenas), which ``tracemalloc`` would not see. The
processes run with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so memory that was
freed is returned and the resident set measures what is live, not the allocator's history.
Flows: edgequant's int8 template (MSE histogram observers), torch.ao FX with HistogramObserver, ONNX Runtime's MinMax, Entropy and Percentile
calibrators. Prints a markdown table, one column per number of batches.

    python benchmarks/memory.py [--batches 1,4,8] [--batch-size 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# glibc raises its mmap threshold after each free of a large block (up to 32 MiB), after which
# freed tensors stay in the heap and the resident set keeps the high-water of every batch's
# transients: a fixed threshold returns every large block on free, so RSS follows live memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
FLOWS = ["edgequant int8 template (MSE histogram)", "torch.ao FX HistogramObserver", "ONNX Runtime MinMax", "ONNX Runtime Entropy", "ONNX Runtime Percentile"]


def _mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(flow: str, n_batches: int, batch_size: int) -> dict:
    """Run one point in this process; returns the peak extra resident memory in MiB."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import calib_speed
    import workloads as W


    torch.manual_seed(0)
    w = W.efficientnet_lite0(n_calib=batch_size, n_test=2)
    images = W.real_data.calibration_images(n_batches * batch_size)
    w.calib = [(x,) for x in images.split(batch_size)]
    tmp = W.temp_dir()
    if flow.startswith("edgequant"):
        run, _ = calib_speed.edgequant_calibration(w, W.TEMPLATES["int8"])
    elif flow.startswith("torch.ao"):
        run, _ = calib_speed.torch_ao_calibration(w, "histogram")
    else:
        float_onnx = W.export_onnx(w, os.path.join(tmp.name, "float.onnx"))
        run = calib_speed.ort_calibration(w, float_onnx, flow.split()[-1], tmp.name)
    before = _mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the current resident set
    with torch.no_grad():
        run()
    peak = _mib("VmHWM")
    tmp.cleanup()
    return {"flow": flow, "batches": n_batches, "peak_extra_mib": peak - before}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--point", nargs=2, metavar=("FLOW_INDEX", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(measure(FLOWS[int(args.point[0])], int(args.point[1]), args.batch_size)))
        return
    counts = [int(v) for v in args.batches.split(",")]
    results = {}
    for i, flow in enumerate(FLOWS):
        for n in counts:
            cmd = [sys.executable, os.path.abspath(__file__), "--batch-size", str(args.batch_size), "--point", str(i), str(n)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **MALLOC_ENV))
            if proc.returncode:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120].replace("|", "/")
                results[(flow, n)] = f"failed: {tail}"
            else:
                results[(flow, n)] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_mib"]
            print(f"  {flow}, {n} batches: {results[(flow, n)]}", file=sys.stderr, flush=True)
    print(f"## Peak calibration memory, EfficientNet-Lite0, batches of {args.batch_size} crops\n")
    print("Extra resident memory (MiB) at the peak of calibration over what the process held before "
          "it (kernel high-water mark `VmHWM` after a reset, one process per cell)\n")
    print("| flow | " + " | ".join(f"{n} batches" for n in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for flow in FLOWS:
        cells = [results[(flow, n)] for n in counts]
        print(f"| {flow} | " + " | ".join(c if isinstance(c, str) else f"{c:.0f}" for c in cells) + " |")
    print(f"\ncommand: python benchmarks/memory.py --batches {args.batches} --batch-size {args.batch_size}\n")


if __name__ == "__main__":
    main()
