"""A print job as a PDF: text with Epson ESC/P controls, PostScript, PCL.

Owns: `text_pdf` (the job's bytes in a DOS code page on A4 or Letter paper, in
DejaVu Sans Mono, with the common ESC/P controls: bold, italic, underline,
condensed and elite pitch, double width, line spacing, form feed; graphics are
skipped), `pcl_text` (the printable text of a PCL job, its commands and
raster data dropped), `postscript_pdf` (Ghostscript from Debian, run with
-dSAFER and no file access but its own input and output, under CPU, memory,
output-size and wall-clock limits, in a process of its own that is killed on
any of them), and `Printout`: one visit's prints in a directory of their own,
converted one at a time, bounded in number and bytes.

Must not: import Django or know about visits and pages (the caller names the
directory, the limits and what to tell the visitor).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import resource
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpdf import FPDF
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from sessions.errors import SessionError, gettext_noop
from sessions.machines.printer import Job, job_kind
from sessions.machines.tool import tool_run
from sessions.tasks import task_new

logger = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = {"": "DejaVuSansMono.ttf", "B": "DejaVuSansMono-Bold.ttf",
         "I": "DejaVuSansMono-Oblique.ttf", "BI": "DejaVuSansMono-BoldOblique.ttf"}
# Paper sizes in points (1/72 in).
PAPERS = {"a4": (595.28, 841.89), "letter": (612.0, 792.0)}
# DejaVu Sans Mono's advance is 0.602 em: the font size that gives a pitch.
MONO_ADVANCE = 0.602
INCH = 72.0
ESC = 0x1B


class PrintError(SessionError):
    """A job could not be made into a PDF; its message (and params) is for the visitor."""

    code = "print_failed"


@dataclass
class _Style:
    bold: bool = False
    italic: bool = False
    underline: bool = False
    condensed: bool = False
    elite: bool = False
    wide: bool = False
    wide_line: bool = False

    @property
    def pitch(self) -> float:
        """Characters per inch."""
        cpi = 17.14 if self.condensed else 12.0 if self.elite else 10.0
        return cpi / 2 if self.wide or self.wide_line else cpi


class _Page:
    """Where the print head is, in points from the page's top left."""

    def __init__(self, pdf: FPDF, paper: str, max_pages: int) -> None:
        self.pdf = pdf
        self.width, self.height = PAPERS[paper]
        self.left = 0.125 * INCH
        self.top = 0.5 * INCH
        self.bottom = self.height - 0.5 * INCH
        self.max_pages = max_pages
        self.x = self.left
        self.y = self.top
        self.line = INCH / 6
        self.started = False
        self.full = False

    def ensure(self) -> bool:
        if self.full:
            return False
        if not self.started:
            if self.pdf.page >= self.max_pages:
                self.full = True
                return False
            self.pdf.add_page()
            self.started = True
        return True

    def newline(self, advance: float | None = None) -> None:
        self.x = self.left
        self.y += self.line if advance is None else advance
        if self.y + self.line > self.bottom + 1:
            self.form_feed()

    def form_feed(self) -> None:
        if not self.started:
            # A form feed on a blank page still feeds a sheet.
            self.ensure()
        self.started = False
        self.x, self.y = self.left, self.top


# ESC commands: how many parameter bytes each takes (those not listed take none).
_ESC_PARAMS = {ord(c): n for c, n in {
    "-": 1, "W": 1, "3": 1, "A": 1, "J": 1, "!": 1, "x": 1, "k": 1, "l": 1, "Q": 1, "N": 1,
    "S": 1, "C": 1, "t": 1, "R": 1, "U": 1, "a": 1, "p": 1, "q": 1, "r": 1, "w": 1, "+": 1,
    "$": 2, "\\": 2, "c": 2, "e": 2, "f": 2, "j": 1, "s": 1, "i": 1, "/": 1, "%": 1, "I": 1,
}.items()}
# Graphics: ESC K/L/Y/Z n1 n2 then n1 + 256 n2 columns of one byte.
_ESC_GRAPHICS = {ord(c) for c in "KLYZ"}


def text_pdf(data: bytes, *, paper: str = "a4", code_page: int = 437,
             max_pages: int = 200) -> tuple[bytes, int]:
    """A text job (ESC/P) as a PDF, and its number of pages (0: nothing printed)."""
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}")
    pdf = FPDF(unit="pt", format=PAPERS[paper])
    pdf.set_auto_page_break(False)
    pdf.set_creator("museum portal")
    printer = _TextPrinter(pdf, _Page(pdf, paper, max_pages), f"cp{code_page}")
    printer.print(data)
    # Only feeds and blank lines: no print (DOS programs eject a page to start clean).
    if pdf.page == 0 or not printer.faces:
        return b"", 0
    return bytes(pdf.output()), pdf.page


class _TextPrinter:
    """An Epson-compatible printer's head over a PDF: characters placed on a grid of
    the pitch in force, runs of one style written together."""

    def __init__(self, pdf: FPDF, page: _Page, codec: str) -> None:
        self.pdf = pdf
        self.page = page
        self.codec = codec
        self.style = _Style()
        self.run: list[str] = []
        self.run_x = page.x
        # Each face is read (and later subset) only once a run uses it.
        self.faces: set[str] = set()

    @property
    def advance(self) -> float:
        return INCH / self.style.pitch

    def print(self, data: bytes) -> None:
        index, size = 0, len(data)
        while index < size and not self.page.full:
            byte = data[index]
            index += 1
            if byte >= 0x20 and byte != 0x7F:
                self.character(byte)
                continue
            self.flush()
            if byte == ESC and index < size:
                index = _escape(data[index], data, index + 1, self.style, self.page)
            else:
                self.control(byte)
            self.run_x = self.page.x
        self.flush()

    def character(self, byte: int) -> None:
        page = self.page
        if page.x + self.advance > page.width - page.left + 0.01:
            self.flush()
            page.newline()
        if not self.run:
            self.run_x = page.x
        self.run.append(bytes([byte]).decode(self.codec, "replace"))
        page.x += self.advance

    def control(self, byte: int) -> None:
        page, style = self.page, self.style
        if byte == 0x0A:  # line feed (and carriage return: DOS sends both)
            style.wide_line = False
            page.newline()
        elif byte == 0x0D:
            page.x = page.left
        elif byte == 0x0C:
            page.form_feed()
        elif byte == 0x09:
            column = round((page.x - page.left) / self.advance)
            page.x = page.left + (column // 8 + 1) * 8 * self.advance
        elif byte == 0x08:
            page.x = max(page.left, page.x - self.advance)
        elif byte in _CONTROL_STYLES:
            name, value = _CONTROL_STYLES[byte]
            setattr(style, name, value)

    def flush(self) -> None:
        text = "".join(self.run).rstrip(" ")
        self.run.clear()
        if not text or not self.page.ensure():
            return
        style, pdf = self.style, self.pdf
        face = ("B" if style.bold else "") + ("I" if style.italic else "")
        if face not in self.faces:
            pdf.add_font("mono", face, os.fspath(FONT_DIR / FONTS[face]))
            self.faces.add(face)
        pdf.set_font("mono", face, self.advance / MONO_ADVANCE)
        baseline = self.page.y + self.page.line * 0.78
        pdf.text(self.run_x, baseline, text)
        if style.underline:
            pdf.set_line_width(0.5)
            pdf.line(self.run_x, baseline + 1.5, self.run_x + len(text) * self.advance, baseline + 1.5)


# Control characters that change the style: SO and DC4 (double width for the line),
# SI and DC2 (condensed on and off).
_CONTROL_STYLES = {0x0E: ("wide_line", True), 0x14: ("wide_line", False),
                   0x0F: ("condensed", True), 0x12: ("condensed", False)}
# ESC commands that set a style: the attribute and its value.
_ESC_STYLES = {"E": ("bold", True), "G": ("bold", True), "F": ("bold", False), "H": ("bold", False),
               "4": ("italic", True), "5": ("italic", False), "M": ("elite", True),
               "P": ("elite", False), "g": ("elite", False)}
# ESC commands that switch a style by their parameter (1 or "1": on).
_ESC_SWITCHES = {"-": "underline", "W": "wide"}
# ESC commands that set the line spacing: a fixed one, or the parameter in units of an inch.
_ESC_SPACING = {"0": (0, 8), "2": (0, 6), "3": (1, 180), "A": (1, 60)}
# ESC ! n: the bits of the master select and the styles they set.
_MASTER_BITS = (("elite", 0x01), ("condensed", 0x04), ("bold", 0x18), ("wide", 0x20),
                ("italic", 0x40), ("underline", 0x80))


def _escape(command: int, data: bytes, index: int, style: _Style, page: _Page) -> int:
    """Apply one ESC/P command; the index after its parameters."""
    def param(offset: int = 0) -> int:
        return data[index + offset] if index + offset < len(data) else 0

    letter = chr(command)
    if letter in _ESC_STYLES:
        name, value = _ESC_STYLES[letter]
        setattr(style, name, value)
    elif letter in _ESC_SWITCHES:
        setattr(style, _ESC_SWITCHES[letter], param() in (1, 0x31))
    elif letter in _ESC_SPACING:
        takes, per_inch = _ESC_SPACING[letter]
        page.line = (max(1, param()) if takes else 1) * INCH / per_inch
    elif letter == "J":
        page.y += param() * INCH / 180
    elif letter == "!":
        for name, bits in _MASTER_BITS:
            setattr(style, name, bool(param() & bits))
    elif letter == "@":
        style.__dict__.update(_Style().__dict__)
        page.line = INCH / 6
    else:
        return _escape_skip(letter, data, index, param)
    return index + _ESC_PARAMS.get(command, 0)


def _escape_skip(letter: str, data: bytes, index: int, param: Callable[[int], int]) -> int:
    """Where an ESC/P command that prints nothing here (graphics, tab stops) ends."""
    if ord(letter) in _ESC_GRAPHICS:
        return index + 2 + param(0) + 256 * param(1)
    if letter == "*":
        per_column = 3 if param(0) >= 32 else 1
        return index + 3 + (param(1) + 256 * param(2)) * per_column
    if letter == "(":
        # ESC/P2's extended commands: ESC ( c nL nH data.
        return index + 3 + param(1) + 256 * param(2)
    if letter in "DB":  # tab stops, ended by a NUL
        end = data.find(b"\x00", index)
        return len(data) if end < 0 else end + 1
    return index + _ESC_PARAMS.get(ord(letter), 0)


# PCL: ESC, a parameterised character (!-/), a group character, then values each
# ended by a letter (lower case: another follows; upper case: the last).
_PCL_COMMAND = re.compile(rb"\x1b([!-/])([`-~]?)((?:[-+]?[0-9.]*[`-~])*[-+]?[0-9.]*[@-^])")
_PCL_VALUE = re.compile(rb"([-+]?[0-9.]*)([`-~@-^])")
_PJL_LINE = re.compile(rb"@PJL[^\n]*\n?")


def pcl_text(data: bytes) -> bytes:
    """The printable text of a PCL job: its commands, PJL lines and binary data dropped."""
    out = bytearray()
    index = 0
    data = data.replace(b"\x1b%-12345X", b"")
    data = _PJL_LINE.sub(b"", data)
    while index < len(data):
        byte = data[index]
        if byte != ESC:
            if byte >= 0x20 or byte in (0x0A, 0x0D, 0x0C, 0x09):
                out.append(byte)
            index += 1
            continue
        match = _PCL_COMMAND.match(data, index)
        if match is None:
            index += 2  # a two-character command (ESC E, ESC 9, ESC =)
            continue
        index = match.end()
        for value, terminator in _PCL_VALUE.findall(match.group(3)):
            # Commands ending in W (or V for some) carry that many bytes of data.
            if terminator in (b"W", b"w") or (match.group(1) == b"&" and terminator == b"X"
                                              and match.group(2) == b"p"):
                with contextlib.suppress(ValueError):
                    index += max(0, int(float(value or b"0")))
    return bytes(out)


def _ghostscript_limits(*, cpu_s: int, memory_bytes: int, output_bytes: int) -> Callable[[], None]:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return limits


@dataclass(frozen=True)
class PrintLimits:
    """What one visit's prints and each conversion may use."""

    paper: str = "a4"
    code_page: int = 437
    fallback_kind: str = "text"
    prints_max: int = 50
    bytes_max: int = 64 * 1024 * 1024
    pages_max: int = 200
    cpu_s: int = 10
    timeout_s: float = 20.0
    memory_bytes: int = 768 * 1024 * 1024
    output_bytes: int = 32 * 1024 * 1024
    ghostscript: str = "gs"


async def postscript_pdf(source: Path, target: Path, *, limits: PrintLimits) -> int:
    """Convert a PostScript file to a PDF with Ghostscript, confined; its pages.

    PrintError (for the visitor) when the job fails, loops, passes a limit or
    tries to reach a file; the target is removed then.
    """
    argv = [
        limits.ghostscript, "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dNOPROMPT", "-dNOINTERPOLATE",
        # Nothing readable or writable but its own input and output (and its own
        # resources, which -dSAFER keeps read-only).
        "--permit-file-read=" + os.fspath(source), "--permit-file-write=" + os.fspath(target),
        "-sDEVICE=pdfwrite", f"-sPAPERSIZE={limits.paper}", f"-dLastPage={limits.pages_max}",
        "-dCompatibilityLevel=1.5", f"-sOutputFile={target}", os.fspath(source),
    ]
    # Ghostscript may write its temporary files (and, under -dSAFER, only those) in
    # TMPDIR: a directory of this job's own, removed with everything in it.
    scratch = target.with_suffix(".scratch")
    scratch.mkdir(mode=0o700, exist_ok=True)
    try:
        result = await tool_run(*argv, timeout_s=limits.timeout_s,
                                env={"PATH": "/usr/bin:/bin", "TMPDIR": os.fspath(scratch)},
                                preexec=_ghostscript_limits(cpu_s=limits.cpu_s,
                                                            memory_bytes=limits.memory_bytes,
                                                            output_bytes=limits.output_bytes),
                                output_limit=256 * 1024)
    except TimeoutError as error:
        target.unlink(missing_ok=True)
        raise PrintError(gettext_noop("The PostScript job took too long to print and was "
                                      "stopped.")) from error
    except FileNotFoundError as error:
        raise PrintError(gettext_noop("PostScript cannot be printed: Ghostscript is not installed "
                                      "on this server.")) from error
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    said = (result.stdout + result.stderr)
    pages = 0
    if result.returncode == 0 and target.exists() and target.stat().st_size > 0:
        pages = await asyncio.to_thread(_page_count, target)
    if pages == 0:
        target.unlink(missing_ok=True)
        logger.info("Ghostscript refused a job (exit %s): %s", result.returncode, said[-600:])
        # File operators refused under -dSAFER: invalidfileaccess, or deletefile's and
        # renamefile's ioerror with the system's "Permission denied".
        if "invalidfileaccess" in said or ("ioerror" in said and "Permission denied" in said):
            raise PrintError(gettext_noop("The PostScript job tried to reach files on the server, so "
                                          "it was not printed."))
        if result.returncode < 0 or "VMerror" in said or "limitcheck" in said:
            raise PrintError(gettext_noop("The PostScript job needed more time or memory than a print "
                                          "may use, so it was stopped."))
        if pages == 0 and result.returncode == 0:
            raise PrintError(gettext_noop("The PostScript job printed no pages."))
        raise PrintError(gettext_noop("The PostScript job could not be converted: it has an error."))
    return pages


def _page_count(path: Path) -> int:
    """The pages of a PDF Ghostscript wrote (0 when it is not one)."""
    try:
        return len(PdfReader(path).pages)
    except (PdfReadError, OSError, ValueError):
        return 0


@dataclass
class Print:
    id: str
    kind: str
    pages: int
    created_at: datetime.datetime
    bytes: int
    truncated: bool = False
    raw: bool = False

    def as_json(self, url_base: str) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "id": self.id, "pages": self.pages, "kind": self.kind,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "url": f"{url_base}{self.id}.pdf", "truncated": self.truncated,
            "raw_url": f"{url_base}{self.id}.raw" if self.raw else None,
        }
        return shown


@dataclass
class Printout:
    """One visit's prints: a directory of its own, jobs converted one at a time.

    `on_printed(print)` and `on_failed(error)` say what became of each job.
    """

    directory: Path
    limits: PrintLimits
    on_printed: Callable[[Print], None]
    on_failed: Callable[[PrintError], None]
    # Bounds the conversions the whole node runs at once.
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    prints: list[Print] = field(default_factory=list)
    _queue: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _closed: bool = False

    def take(self, job: Job) -> None:
        """A job from the port (called in the event loop): queued for conversion."""
        if self._closed:
            return
        if self._queue.qsize() >= 4:
            self.on_failed(PrintError(gettext_noop("The printer is still busy with earlier jobs; this "
                                                   "one was not printed.")))
            return
        self._queue.put_nowait(job)
        if self._task is None:
            self._task = task_new(self._work(), name="printout")

    def path(self, print_id: str, suffix: str) -> Path | None:
        for entry in self.prints:
            if entry.id == print_id and (suffix == "pdf" or entry.raw):
                return self.directory / f"{entry.id}.{suffix}"
        return None

    async def close(self) -> None:
        """Stop converting and delete every print."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
        self.prints.clear()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                async with self.gate:
                    made = await self.convert(job)
            except PrintError as error:
                self.on_failed(error)
                continue
            except Exception:
                logger.exception("a print job could not be converted")
                self.on_failed(PrintError(gettext_noop("The print job could not be converted.")))
                continue
            if made is not None:
                self.on_printed(made)

    async def convert(self, job: Job) -> Print | None:
        """The job as a print in the directory (None: it printed nothing)."""
        if len(self.prints) >= self.limits.prints_max:
            raise PrintError(gettext_noop("This visit has printed %(count)s times already; no more "
                                          "prints are kept."), count=self.limits.prints_max)
        used = sum(entry.bytes for entry in self.prints)
        if used >= self.limits.bytes_max:
            raise PrintError(gettext_noop("This visit's prints fill the space they may use; no more are "
                                          "kept."))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        kind = job_kind(job.data, fallback=self.limits.fallback_kind)
        print_id = secrets.token_hex(8)
        target = self.directory / f"{print_id}.pdf"
        raw = False
        if kind == "postscript":
            source = self.directory / f"{print_id}.ps"
            await asyncio.to_thread(source.write_bytes, job.data)
            try:
                pages = await postscript_pdf(source, target, limits=self.limits)
            finally:
                source.unlink(missing_ok=True)
        else:
            text = job.data
            if kind == "pcl":
                text = pcl_text(job.data)
                raw = True
            document, pages = await asyncio.to_thread(
                text_pdf, text, paper=self.limits.paper, code_page=self.limits.code_page,
                max_pages=self.limits.pages_max)
            if pages == 0:
                if not raw:
                    return None
                document, pages = await asyncio.to_thread(
                    text_pdf, b"(This PCL job holds no text; its raw file is offered beside it.)",
                    paper=self.limits.paper)
            await asyncio.to_thread(target.write_bytes, document)
            if raw:
                await asyncio.to_thread((self.directory / f"{print_id}.raw").write_bytes, job.data)
        size = target.stat().st_size + (len(job.data) if raw else 0)
        if used + size > self.limits.bytes_max:
            target.unlink(missing_ok=True)
            (self.directory / f"{print_id}.raw").unlink(missing_ok=True)
            raise PrintError(gettext_noop("This visit's prints fill the space they may use; no more are "
                                          "kept."))
        made = Print(id=print_id, kind=kind, pages=pages, bytes=size, truncated=job.truncated,
                     raw=raw, created_at=datetime.datetime.now(datetime.UTC).replace(microsecond=0))
        self.prints.append(made)
        return made
