"""A visit's printout with the real conversions: Debian's Ghostscript confined, fpdf2.

Hostile PostScript of every kind is stopped with a sentence and touches nothing;
the next job prints; a visit's prints are bounded; PCL keeps its raw job; a
printer port read by the portal never lets the guest's writes stall.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from sessions.machines.printer import Job, PrinterPort
from sessions.machines.printout import Print, PrintError, PrintLimits, Printout, postscript_pdf
from tests.support.wait import eventually

LIMITS = PrintLimits(cpu_s=1, timeout_s=4, memory_bytes=512 * 1024 * 1024)
PAGE = b"%!PS\n/Helvetica findfont 20 scalefont setfont 72 700 moveto (STILL-PRINTS) show showpage\n"


def job(data: bytes) -> Job:
    return Job(data=data, truncated=False, ended_at=time.monotonic())


@pytest.mark.parametrize(("name", "body", "said"), [
    ("loop", b"{ 1 pop } loop", "more time or memory"),
    ("read", b"(/etc/passwd) (r) file 80 string readstring", "reach files"),
    ("write", b"(ESCAPE) (w) file (x) writestring", "reach files"),
    ("pipe", b"(%pipe%touch ESCAPE) (w) file", "reach files"),
    ("delete", b"(VICTIM) deletefile", "reach files"),
    ("scratch", b"(../escape) (w) file (x) writestring", "reach files"),
    ("memory", b"/a 2000000000 string def", "more time or memory"),
    ("error", b"nosuchoperator", "has an error"),
])
async def test_hostile_postscript_is_stopped_and_touches_nothing(tmp_path: Path, name: str, body: bytes,
                                                                said: str) -> None:
    # Outside the job's directory, where Ghostscript may write nothing.
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    escape = tmp_path.parent / f"{tmp_path.name}-escape"
    victim.write_text("kept")
    body = body.replace(b"VICTIM", bytes(victim)).replace(b"ESCAPE", bytes(escape))
    source, target = tmp_path / f"{name}.ps", tmp_path / f"{name}.pdf"
    source.write_bytes(b"%!PS\n" + body + b"\nshowpage\n")
    began = time.monotonic()
    try:
        with pytest.raises(PrintError, match=said):
            await postscript_pdf(source, target, limits=LIMITS)
        assert time.monotonic() - began < LIMITS.timeout_s + 1
        assert not target.exists()
        assert victim.read_text() == "kept"
        assert not escape.exists()
        assert sorted(path.name for path in tmp_path.iterdir()) == [source.name]
    finally:
        victim.unlink(missing_ok=True)
    # The next job prints.
    (tmp_path / "next.ps").write_bytes(PAGE)
    assert await postscript_pdf(tmp_path / "next.ps", tmp_path / "next.pdf", limits=LIMITS) == 1


async def test_a_visits_prints_are_bounded_and_a_pcl_job_keeps_its_own_bytes(tmp_path: Path) -> None:
    printed: list[Print] = []
    failed: list[PrintError] = []
    printout = Printout(directory=tmp_path / "visit", limits=PrintLimits(prints_max=2),
                        on_printed=printed.append, on_failed=failed.append)
    pcl = b"\x1b%-12345X@PJL ENTER LANGUAGE=PCL\n\x1bE\x1b&l0OLetter in PCL\r\n\x0c\x1bE\x1b%-12345X"
    made = await printout.convert(job(pcl))
    assert made is not None
    assert made.kind == "pcl"
    assert made.raw
    raw = printout.path(made.id, "raw")
    assert raw is not None
    assert raw.read_bytes() == pcl
    text = subprocess.run(["pdftotext", str(printout.path(made.id, "pdf")), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "Letter in PCL" in text
    assert await printout.convert(job(b"\r\n\x0c")) is None  # nothing to print
    await printout.convert(job(b"second\r\n"))
    with pytest.raises(PrintError, match="printed 2 times"):
        await printout.convert(job(b"third\r\n"))
    # The page's jobs go through the queue to the callbacks.
    printout.take(job(b"fourth\r\n"))

    async def told() -> bool:
        return bool(failed)
    await eventually(told, timeout_s=10)
    assert "printed 2 times" in str(failed[0])
    await printout.close()
    assert not (tmp_path / "visit").exists()


async def test_the_port_is_read_whether_anyone_takes_its_jobs_or_not() -> None:
    """A guest printing megabytes never waits: past the job limit bytes are discarded."""
    port = PrinterPort(idle_s=0.2, limit_bytes=64 * 1024)
    qemu_end = port.theirs.dup()
    qemu_end.setblocking(False)
    port.open()
    loop = asyncio.get_running_loop()
    jobs: list[Job] = []
    try:
        # Far more than a socket buffer holds, with nobody taking jobs yet...
        async with asyncio.timeout(10):
            await loop.sock_sendall(qemu_end, b"x" * (4 * 1024 * 1024))

        async def discarded() -> bool:
            return not port.cutter.pending
        await eventually(discarded, timeout_s=10)
        port.on_job = jobs.append
        # ... then a job someone takes: cut at the limit, and said so.
        async with asyncio.timeout(10):
            await loop.sock_sendall(qemu_end, b"y" * (256 * 1024) + b"\x04")

        async def taken() -> bool:
            return bool(jobs)
        await eventually(taken, timeout_s=10)
        assert len(jobs) == 1
        assert jobs[0].truncated
        assert jobs[0].data == b"y" * (64 * 1024)
    finally:
        qemu_end.close()
        await port.close()
    assert port.theirs.fileno() == -1  # the portal keeps no copy of QEMU's end
