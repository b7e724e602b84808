"""The machine's printer port: what the guest sends to LPT1, cut into print jobs.

Owns: the socket pair behind the machine's `isa-parallel` device (QEMU holds
one end, the portal reads the other for the machine's whole life, so the
guest never stalls on a port nobody reads), `JobCutter` (pure: where one job
ends and the next begins, and the job size limit past which bytes are
discarded), and `job_kind` (PostScript, PCL or text, told from the bytes).

Must not: convert jobs (sessions.machines.printout does), import Django, or
know about visits: whoever owns the machine sets `PrinterPort.on_job`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sessions.tasks import task_new

logger = logging.getLogger(__name__)

CTRL_D = 0x04
FORM_FEED = 0x0C
# PJL's Universal Exit Language: a PCL job's first and last bytes.
UEL = b"\x1b%-12345X"
# The lines after which a PostScript job is over.
PS_ENDS = (b"%%EOF\n", b"%%EOF\r", b"%%EOF\r\n")


def job_kind(data: bytes, *, fallback: str = "text") -> str:
    """"postscript", "pcl" or `fallback` ("text" or "pcl"), told from a job's first bytes."""
    head = data.lstrip(b"\x04\r\n\t \x00")
    if head.startswith(UEL):
        after = head[len(UEL):].lstrip()
        # A PJL job may announce PostScript as its language.
        if b"LANGUAGE=POSTSCRIPT" in after[:4096].upper() or after.startswith(b"%!"):
            return "postscript"
        return "pcl"
    if head.startswith(b"%!"):
        return "postscript"
    # PCL's reset, then one of its parameterised commands (Epson's ESC E is bold, and
    # text follows it).
    if head.startswith(b"@PJL") or re.match(rb"\x1bE\x1b[&*(%)]", head):
        return "pcl"
    return fallback


@dataclass(frozen=True)
class Job:
    """One print job as the guest sent it (at most the size limit of it)."""

    data: bytes
    # Past the size limit: the rest was discarded.
    truncated: bool
    ended_at: float


class JobCutter:
    """Where jobs end, from the bytes and the time between them. Pure: times are given.

    A job ends at once with a Ctrl-D or a PostScript `%%EOF` line; a form feed or
    PJL's exit at its end ends it once `settle_s` pass without more bytes (the
    pages of one document follow each other without a pause); anything else ends
    it once the guest has been quiet for `idle_s`. Past `limit_bytes` a job's
    further bytes are counted but discarded.
    """

    def __init__(self, *, idle_s: float = 2.0, settle_s: float = 0.3,
                 limit_bytes: int = 8 * 1024 * 1024) -> None:
        self.idle_s = idle_s
        self.settle_s = settle_s
        self.limit_bytes = limit_bytes
        self._buffer = bytearray()
        self._truncated = False
        self._last = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._buffer) or self._truncated

    def feed(self, data: bytes, *, now: float) -> list[Job]:
        """Take bytes from the port; the jobs they end."""
        jobs: list[Job] = []
        self._last = now
        start = 0
        for index, byte in enumerate(data):
            if byte == CTRL_D:
                self._take(data[start:index])
                start = index + 1
                if job := self._cut(now):
                    jobs.append(job)
        self._take(data[start:])
        ended = self._buffer.endswith(PS_ENDS) and job_kind(bytes(self._buffer[:64])) == "postscript"
        if ended and (job := self._cut(now)):
            jobs.append(job)
        return jobs

    def deadline(self) -> float | None:
        """When the job pending ends if no more bytes come (None: nothing pending)."""
        if not self.pending:
            return None
        tail = bytes(self._buffer[-len(UEL) - 2:]).rstrip(b"\r\n")
        settles = tail.endswith(bytes([FORM_FEED])) or tail.endswith(UEL)
        if settles and job_kind(bytes(self._buffer[:64])) != "postscript":
            return self._last + self.settle_s
        return self._last + self.idle_s

    def tick(self, *, now: float) -> Job | None:
        """The job pending if its deadline has passed."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._cut(now)
        return None

    def _take(self, data: bytes) -> None:
        if not self._buffer:
            # A job's leading Ctrl-Ds, blank lines and NULs are no job (Windows'
            # PostScript driver begins each job with a Ctrl-D).
            data = data.lstrip(b"\x04\x00\r\n")
        room = self.limit_bytes - len(self._buffer)
        if len(data) > room:
            self._truncated = True
            data = data[:max(0, room)]
        self._buffer += data

    def _cut(self, now: float) -> Job | None:
        data, truncated = bytes(self._buffer), self._truncated
        self._buffer = bytearray()
        self._truncated = False
        if not data.strip(b"\x00\r\n\t \x0c"):
            return None
        return Job(data=data, truncated=truncated, ended_at=now)


class PrinterPort:
    """The portal's end of the machine's parallel port: read for the machine's
    whole life, whether anyone takes its jobs or not (`on_job`, None: discarded)."""

    def __init__(self, *, idle_s: float = 2.0, limit_bytes: int = 8 * 1024 * 1024) -> None:
        self.cutter = JobCutter(idle_s=idle_s, limit_bytes=limit_bytes)
        self.on_job: Callable[[Job], None] | None = None
        self._ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ours.setblocking(False)
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start reading (QEMU has its end by now)."""
        self.theirs.close()
        if self._task is None:
            self._task = task_new(self._read(), name="printer-port")

    async def close(self) -> None:
        """Stop reading and close the portal's end; a job pending is dropped."""
        self.theirs.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ours.close()

    def _deliver(self, job: Job | None) -> None:
        if job is None:
            return
        if self.on_job is None:
            logger.debug("a print job of %d bytes with nobody to take it was discarded", len(job.data))
            return
        try:
            self.on_job(job)
        except Exception:  # a taker's bug must not stop the port being read
            logger.exception("a print job could not be handed over")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.cutter.deadline()
            try:
                if deadline is None:
                    data = await loop.sock_recv(self._ours, 65536)
                else:
                    async with asyncio.timeout_at(loop.time() + max(0.0, deadline - time.monotonic())):
                        data = await loop.sock_recv(self._ours, 65536)
            except TimeoutError:
                self._deliver(self.cutter.tick(now=time.monotonic()))
                continue
            except OSError:
                return
            if not data:
                # QEMU is gone: what it sent last is a job too.
                self._deliver(self.cutter.tick(now=float("inf")))
                return
            for job in self.cutter.feed(data, now=time.monotonic()):
                self._deliver(job)
