"""Finding the processes a test or benchmark started, by what their command line names."""
from __future__ import annotations

from pathlib import Path

import psutil


def processes_naming(path: Path) -> list[int]:
    """Pids of processes whose command line mentions path (how the reaper finds them)."""
    needle = str(path)
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if any(needle in arg for arg in process.info["cmdline"] or ())]
