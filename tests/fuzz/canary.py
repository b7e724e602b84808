"""Canary files: host files that no image may make the importer (or any qemu-img it
runs) open. The importer's seeds name them, by absolute path and relative to the
import's work directory, and a harness watches them with inotify while it runs.

Must not: hold anything but canaries and the stores of the harnesses that watch
them (so that a relative name in an image can reach a canary).
"""
from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.inotify import IN_ACCESS, IN_OPEN, Watch, opens_watched

# Fixed, so that the seeds in the repository can name it.
CANARY_DIRECTORY = Path("/tmp/portal-fuzz-canaries")
CANARY_PREFIX = "canary"


def canaries_make() -> dict[str, Path]:
    """The canaries (made once, read-only): a raw disk, a qcow2 and a VMDK."""
    CANARY_DIRECTORY.mkdir(mode=0o755, exist_ok=True)
    paths = {kind: CANARY_DIRECTORY / f"{CANARY_PREFIX}.{kind}" for kind in ("raw", "qcow2", "vmdk")}
    if not paths["raw"].exists():
        partial = paths["raw"].with_suffix(".partial")
        partial.write_bytes(random.Random(7).randbytes(64 * 1024))
        partial.chmod(0o444)
        partial.replace(paths["raw"])
    for kind in ("qcow2", "vmdk"):
        if not paths[kind].exists():
            partial = paths[kind].with_suffix(".partial")
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", kind, os.fspath(paths["raw"]),
                            os.fspath(partial)], check=True, capture_output=True, timeout=60)
            partial.chmod(0o444)
            partial.replace(paths[kind])
    return paths


class CanaryWatch:
    """Which canaries were opened or read since the last look."""

    def __init__(self, watch: Watch) -> None:
        self._watch = watch

    def opened(self) -> list[str]:
        return sorted({name for mask, name in self._watch.named_events()
                       if name.startswith(CANARY_PREFIX) and mask & (IN_OPEN | IN_ACCESS)})


@contextmanager
def canaries_watched() -> Iterator[CanaryWatch]:
    canaries_make()
    with opens_watched(CANARY_DIRECTORY) as watch:
        yield CanaryWatch(watch)
