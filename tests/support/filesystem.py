"""Filesystems of a test's own, so the real kernel says 'No space left' or 'Read-only'.

Needs root (the suite runs as root in CI); everything mounted is unmounted again,
also on a stop signal (deploy/teardown.py).
"""
from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from deploy import teardown


@contextlib.contextmanager
def small_filesystem(*options: str, size: str = "512k") -> Iterator[Path]:
    """A tmpfs of its own: the real kernel says 'No space left' or 'Read-only'."""
    with teardown.Stops() as stops:
        mount_point = stops.directory("pf-")
        with teardown.deferred():
            subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)),
                            "tmpfs", str(mount_point)], check=True)
            stops.callback(subprocess.run, ["umount", str(mount_point)], check=True)
        yield mount_point


def fill(filesystem: Path) -> Path:
    """Use up every free byte of filesystem; returns the file that holds them."""
    filler = filesystem / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(65536))
    with filler.open("ab", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(512))
    return filler
