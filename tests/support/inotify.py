"""Which files anyone on this host opened or read, from Linux inotify (via ctypes).

Used to prove that importing a hostile image never opens the host file it
names: the test watches a bait file of its own while the import runs.
"""
from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IN_ACCESS = 0x001
IN_OPEN = 0x020
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
EVENT_HEADER = struct.Struct("iIII")


class Watch:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def events(self) -> list[int]:
        """The event masks seen so far (open or access of a watched file)."""
        return [mask for mask, _name in self.named_events()]

    def named_events(self) -> list[tuple[int, str]]:
        """The events seen so far, each with the name of the file it was about inside
        a watched directory ("" for a watched file itself)."""
        seen: list[tuple[int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
                start = offset + EVENT_HEADER.size
                name = data[start:start + length].rstrip(b"\0").decode("utf-8", "replace")
                seen.append((mask, name))
                offset = start + length


@contextmanager
def opens_watched(*paths: Path) -> Iterator[Watch]:
    """Watch paths (files, or directories and the files in them) for IN_OPEN and
    IN_ACCESS by any process while the block runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        for path in paths:
            if libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN | IN_ACCESS) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        yield Watch(fd)
    finally:
        os.close(fd)
