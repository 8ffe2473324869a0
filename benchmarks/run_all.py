"""Run every benchmark, print its tables, and write them all to ``benchmarks/results.md``.

Takes no arguments (``--quick`` shortens the repetitions). Each benchmark runs in its own
Python process, one after the other (within each, edgequant and the peers share the process
and the data); their tables are printed as they come and collected, under a header giving the
machine, the versions, the date, the load and the command, into ``benchmarks/results.md``.

    HF_HUB_OFFLINE=1 python benchmarks/run_all.py      # what `make bench` runs
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BENCHMARKS = [  # (script, full arguments, --quick arguments)
    ("accuracy.py", [], []),
    ("calib_speed.py", ["--images", "32", "--reps", "3"], ["--images", "16", "--reps", "1"]),
    ("memory.py", ["--batches", "1,4,8", "--batch-size", "2"], ["--batches", "1,4", "--batch-size", "2"]),
    ("integer_speed.py", ["--reps", "5", "--batch", "16"], ["--reps", "2", "--batch", "8"]),
    ("qat_speed.py", ["--steps", "8"], ["--steps", "2"]),
    ("observers.py", ["--reps", "5"], ["--reps", "2"]),
    ("zoo.py", [], ["--quick"]),
]


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "?")
    mem = next((int(line.split()[1]) / 2**20 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0.0)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "onnx", "onnxruntime", "numpy"))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "edgequant", "benchmarks",
                            ":(exclude)benchmarks/results.md"],  # the file being written is not a change to the code
                           capture_output=True, text=True).stdout.strip()
    return [f"- machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}",
            f"- versions: Python {platform.python_version()}, {versions}, edgequant at {commit}"
            + (" (with uncommitted changes)" if dirty else ""),
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = ap.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start, load_start = time.time(), os.getloadavg()[0]
    sections = []
    for script, full, quick in BENCHMARKS:
        cmd = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full)]
        print(f"\n### running {script} {' '.join(cmd[2:])}", flush=True)
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        out = "".join(lines).strip()
        if proc.wait():
            out += f"\n\n**{script} failed (exit code {proc.returncode}); see its error output above.**"
        sections.append(out + f"\n\n({script}: {time.time() - t0:.0f} s)")
    total = time.time() - start
    header = ["# Benchmark results", "", *machine(),
              f"- command: `make bench` (`HF_HUB_OFFLINE=1 python benchmarks/run_all.py{' --quick' if args.quick else ''}`)",
              f"- total time {total / 60:.1f} min; 1-minute load average {load_start:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores, shared with other jobs)", ""]
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    print(f"\nall benchmarks: {total / 60:.1f} min; tables written to benchmarks/results.md")


if __name__ == "__main__":
    main()
