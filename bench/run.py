"""`make bench`: run every benchmark in bench/ and print its tables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ["bench.first_frame", "bench.idle_cpu", "bench.import_image", "bench.soak"]


def main() -> int:
    failed = 0
    for module in BENCHMARKS:
        print(f"=== {module}", flush=True)
        failed |= subprocess.run([sys.executable, "-m", module], cwd=REPO).returncode
    return failed


if __name__ == "__main__":
    sys.exit(main())
