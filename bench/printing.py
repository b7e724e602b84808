"""How soon a print job is a PDF: from the job's end to the visitor's event.

The guest's side is the machine's own printer port (`PrinterPort`: the socket
pair QEMU writes LPT1 into; here the benchmark writes QEMU's end itself, byte
for byte what DOS sends) and the visit's `Printout` with the real conversions:
fpdf2 for text, Debian's Ghostscript, confined as in service, for PostScript.
Measured from the job's end (its form feed, PostScript's `%%EOF`, or the end of
the idle pause, `PORTAL_PRINT_IDLE_S` after its last byte) to the `printed`
callback with the PDF on disk. Targets: a one-page text job within 1 s, a
one-page PostScript job within 2 s.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, runs, verdict, write_results
from sessions.machines.printer import PrinterPort
from sessions.machines.printout import Print, PrintLimits, Printout

RUNS = runs(20, 5)
IDLE_S = 2.0
TEXT_PAGE = b"".join(b"Line %02d of a letter written in Write, printed as text.\r\n" % n for n in range(60))
POSTSCRIPT_PAGE = (b"%!PS-Adobe-3.0\n%%Pages: 1\n/Times-Roman findfont 12 scalefont setfont\n"
                   + b"".join(b"72 %d moveto (Line %02d of a letter, printed in PostScript.) show\n"
                              % (760 - 12 * n, n) for n in range(55))
                   + b"showpage\n%%EOF\n")
CASES = {
    "text, ended by its form feed": (TEXT_PAGE + b"\x0c", 0.0, 1.0),
    "text, ended by the idle pause": (TEXT_PAGE, IDLE_S, 1.0),
    "PostScript, ended by %%EOF": (POSTSCRIPT_PAGE, 0.0, 2.0),
}


async def one(job: bytes, pause_s: float, directory: Path) -> float:
    port = PrinterPort(idle_s=IDLE_S)
    qemu_end = port.theirs.dup()
    port.open()
    done: asyncio.Future[Print] = asyncio.get_running_loop().create_future()
    printout = Printout(directory=directory, limits=PrintLimits(),
                        on_printed=done.set_result, on_failed=done.set_exception)
    port.on_job = printout.take
    try:
        qemu_end.sendall(job)
        ended = time.perf_counter() + pause_s
        made = await asyncio.wait_for(done, timeout=30)
        took = time.perf_counter() - ended
        assert made.pages == 1, made
        return took
    finally:
        qemu_end.close()
        await port.close()
        await printout.close()


async def measure() -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-print-") as root:
        for run in range(RUNS):
            for name, (job, pause_s, _) in CASES.items():
                times[name].append(await one(job, pause_s, Path(root) / f"{run}"))
    table = Table(f"From a one-page job's end to its PDF ({RUNS} runs each)",
                  ["job", "median", "p95", "target"])
    for name, (_, _, target_s) in CASES.items():
        table.row(name, ms(median(times[name])), ms(p95(times[name])),
                  f"≤ {target_s:g} s " + verdict(max(times[name]) <= target_s))
    table.print()
    return {"times": times, "tables": [table]}


def main() -> None:
    results = asyncio.run(measure())
    tables = results.pop("tables")
    write_results("printing", results, tables=tables)


if __name__ == "__main__":
    main()
