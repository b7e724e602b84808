"""`make bench`: run every benchmark in bench/ and print its tables.

Each script writes its own JSON (with the machine's facts) to bench/results/;
bench/results/SUMMARY.md is then generated from the newest of each. The density
of idle machines (bench/density.py, up to 500 of them, loading the host fully for
minutes) comes last; `make bench-density` runs it alone. `BENCH_QUICK=1 make bench`
tries every script with few runs (minutes, not the better part of an hour; CI runs
it on every submission); its figures are not the ones to quote, and go to
bench/results/quick/ with a summary of their own, leaving the kept ones alone.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy import teardown  # noqa: E402

# What a script may take to stop what it started (served portals, services) on a signal.
SCRIPT_STOP_TIMEOUT_S = 300.0
BENCHMARKS = [
    "bench.first_frame", "bench.browser_start", "bench.display_path", "bench.overlay_cost", "bench.idle_cpu",
    "bench.import_image", "bench.gallery", "bench.soak", "bench.stuck_reader", "bench.services",
    "bench.relay",
    "bench.coordination",
    "bench.sound", "bench.sandbox", "bench.disks", "bench.save", "bench.speed", "bench.tools",
    "bench.screen_text",
    "bench.keys",
    "bench.printing", "bench.recording",
    "bench.line", "bench.density",
]


def benchmark_run(module: str) -> int:
    """One script's exit code. A stop signal (deploy/teardown.py) is passed on to it, and
    it is waited for while it stops what it started; no later script runs then."""
    with teardown.Stops() as stops:
        with teardown.deferred():
            process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO)
            stops.callback(teardown.command_stop, process, timeout_s=SCRIPT_STOP_TIMEOUT_S)
        return process.wait()


def main() -> int:
    failed = []
    began = time.monotonic()
    for module in BENCHMARKS:
        print(f"\n=== {module}", flush=True)
        started = time.monotonic()
        if benchmark_run(module):
            failed.append(module)
        print(f"=== {module}: {time.monotonic() - started:.0f} s", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - began:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    subprocess.run([sys.executable, "-m", "bench.summary"], cwd=REPO, check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
