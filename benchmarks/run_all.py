"""``make bench``: every benchmark in sequence, each in its own process, with durations that fit in ~5 minutes.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only webhooks,store,sync]

Rules this script keeps: each benchmark runs as a subprocess of the same
Python (so one crashing or hanging cannot take the others with it, and each
gets a fresh interpreter and event loop), with a hard timeout; its output is
streamed as it comes, under a header; the machine is printed once at the top,
because every figure below depends on it. The exit code is 0 only when every
benchmark exited 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, default args, --quick args, timeout s)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], float]] = {
    "webhooks": ("bench_webhooks.py", ["--seconds", "5"], ["--seconds", "2"], 180.0),
    "store": ("bench_store.py", ["--events", "5000"], ["--events", "1000"], 120.0),
    # admin reads on a 200,000-row sync log, and the webhook acks meanwhile, before and now (~30 s)
    "admin_reads": ("bench_admin_reads.py", [], ["--rows", "50000", "--acks", "100"], 180.0),
    "sync": ("bench_sync.py", ["--seconds", "15", "--chaos-runs", "3", "--chaos-seconds", "5"],
             ["--seconds", "5", "--rate", "50", "--products", "100", "--chaos-runs", "1", "--chaos-seconds", "3"],
             600.0),  # each chaos seed runs twice: without the WordPress companion and with it
    # propagation with 1, 3 and 10 locations, and with one location of three down (~2 min)
    "locations": ("bench_locations.py", ["--seconds", "10", "--down-seconds", "15"],
                  ["--seconds", "5", "--products", "50", "--down-seconds", "8", "--down-products", "30"], 300.0),
    "soak": ("bench_soak.py", ["--seconds", "20"], ["--seconds", "20"], 120.0),
    "jobs": ("bench_jobs.py", [], ["--import-products", "1000", "--push-products", "100",
                                   "--reconcile-products", "2000"], 600.0),
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "RAM ?"


def header() -> str:
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, {memory()} | {platform.platform()} | "
            f"Python {platform.python_version()} ({sys.executable})")


def run_one(name: str, script: str, args: list[str], timeout: float) -> int:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n{'=' * 78}\n{name}: {' '.join([Path(cmd[1]).name, *args])}\n{'=' * 78}", flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=HERE.parent, env=env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"{name}: TIMED OUT after {timeout:.0f} s", flush=True)
        return 124
    print(f"-- {name}: exit {code} in {time.monotonic() - t0:.0f} s", flush=True)
    return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (about a minute in all)")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = p.parse_args()
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")

    print(header(), flush=True)
    results: dict[str, int] = {}
    t0 = time.monotonic()
    for name in names:
        script, full, quick, timeout = BENCHMARKS[name]
        if not (HERE / script).exists():
            print(f"\n{name}: {script} is missing, skipped", flush=True)
            results[name] = 127
            continue
        results[name] = run_one(name, script, quick if args.quick else full, timeout)
    print(f"\n{'=' * 78}\nall benchmarks: " + ", ".join(f"{n} exit {c}" for n, c in results.items())
          + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    return 0 if all(c == 0 for c in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
