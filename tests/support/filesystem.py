"""Filesystems of a test's own, so the real kernel says 'No space left' or 'Read-only'.

Needs root (the suite runs as root in CI); everything mounted is unmounted again.
"""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_filesystem(*options: str, size: str = "512k") -> Iterator[Path]:
    """A tmpfs of its own: the real kernel says 'No space left' or 'Read-only'."""
    mount_point = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs",
                    str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


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
