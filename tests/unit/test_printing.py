"""Print jobs: where they end, what kind they are, and text laid out as a PDF."""
from __future__ import annotations

import io
import random
from typing import Any

import pytest
from pypdf import PdfReader

from sessions.machines.printer import JobCutter, job_kind
from sessions.machines.printout import PAPERS, pcl_text, text_pdf


def pdf_of(data: bytes, **options: object) -> PdfReader:
    document, pages = text_pdf(data, **options)  # type: ignore[arg-type]
    reader = PdfReader(io.BytesIO(document))
    assert len(reader.pages) == pages
    return reader


def test_a_job_ends_after_the_idle_pause() -> None:
    cutter = JobCutter(idle_s=2.0)
    assert cutter.feed(b"HELLO\r\n", now=10.0) == []
    assert cutter.deadline() == 12.0
    assert cutter.tick(now=11.9) is None
    job = cutter.tick(now=12.0)
    assert job is not None
    assert job.data == b"HELLO\r\n"
    assert not job.truncated
    assert cutter.deadline() is None


def test_a_form_feed_at_the_end_ends_a_job_soon_but_pages_that_follow_stay_in_it() -> None:
    cutter = JobCutter(idle_s=2.0, settle_s=0.3)
    cutter.feed(b"PAGE ONE\x0c", now=1.0)
    assert cutter.deadline() == pytest.approx(1.3)
    cutter.feed(b"PAGE TWO\x0c", now=1.1)
    job = cutter.tick(now=1.5)
    assert job is not None
    assert job.data == b"PAGE ONE\x0cPAGE TWO\x0c"


def test_ctrl_d_and_postscripts_end_cut_at_once_and_a_leading_ctrl_d_is_no_job() -> None:
    cutter = JobCutter()
    jobs = cutter.feed(b"\x04%!PS\nshowpage\n\x04%!PS\n(two) show showpage\n%%EOF\n", now=5.0)
    assert [job.data for job in jobs] == [b"%!PS\nshowpage\n", b"%!PS\n(two) show showpage\n%%EOF\n"]
    assert not cutter.pending


def test_past_the_size_limit_a_job_is_cut_and_says_so() -> None:
    cutter = JobCutter(limit_bytes=10)
    cutter.feed(b"0123456789ABCDEF", now=0.0)
    cutter.feed(b"more", now=0.5)
    job = cutter.tick(now=10.0)
    assert job is not None
    assert job.data == b"0123456789"
    assert job.truncated


@pytest.mark.parametrize(("data", "kind"), [
    (b"%!PS-Adobe-3.0\n", "postscript"),
    (b"\x04%!PS\n", "postscript"),
    (b"\x1b%-12345X@PJL ENTER LANGUAGE=POSTSCRIPT\n%!PS", "postscript"),
    (b"\x1b%-12345X@PJL ENTER LANGUAGE=PCL\n\x1bE", "pcl"),
    (b"\x1bE\x1b&l0O\x1b(s3T", "pcl"),
    # Epson's ESC E is bold: text follows it.
    (b"\x1bEBold heading\r\n", "text"),
    (b"Hello\r\n", "text"),
])
def test_a_jobs_kind_is_told_from_its_bytes(data: bytes, kind: str) -> None:
    assert job_kind(data) == kind


def test_an_unclear_job_takes_the_exhibits_printer() -> None:
    assert job_kind(b"plain", fallback="pcl") == "pcl"


def test_pcl_keeps_its_text_and_drops_commands_and_raster_data() -> None:
    job = (b"\x1b%-12345X@PJL JOB\n@PJL ENTER LANGUAGE=PCL\n\x1bE\x1b&l26A\x1b(s0p10h12v0s0b3T"
           b"Dear reader,\r\n\x1b*r1A\x1b*b3W\x00\xff\x00\x1b*rBSee you.\r\n\x0c\x1bE\x1b%-12345X")
    assert pcl_text(job) == b"Dear reader,\r\nSee you.\r\n\x0c"


def test_text_in_code_page_437_with_epson_bold_and_box_drawing() -> None:
    reader = pdf_of(b"\x1b@\x1bEBOLD\x1bF plain\r\n\xc9\xcd\xcd\xbb\r\n\xc8\xcd\xcd\xbc\r\n\x0c")
    text = reader.pages[0].extract_text()
    assert "BOLD plain" in text
    assert "╔══╗" in text
    assert "╚══╝" in text
    resources: Any = reader.pages[0]["/Resources"]
    fonts = {str(font.get_object()["/BaseFont"]) for font in resources["/Font"].values()}
    assert any("Bold" in font for font in fonts)
    assert any("Bold" not in font for font in fonts)


def test_form_feeds_make_pages_and_the_paper_is_the_one_asked() -> None:
    for paper, (width, height) in PAPERS.items():
        reader = pdf_of(b"one\r\n\x0ctwo\r\n\x0cthree\r\n", paper=paper)
        assert len(reader.pages) == 3
        box = reader.pages[0].mediabox
        assert (float(box.width), float(box.height)) == pytest.approx((width, height), abs=0.5)
        assert "three" in reader.pages[2].extract_text()


def test_long_text_flows_onto_new_pages_up_to_the_page_limit() -> None:
    _, pages = text_pdf(b"line\r\n" * 200)
    assert pages == 4  # 64 lines to an A4 page at 6 lines an inch
    _, pages = text_pdf(b"line\r\n" * 10000, max_pages=5)
    assert pages == 5


def test_condensed_text_fits_132_columns_on_the_line() -> None:
    reader = pdf_of(b"\x0f" + b"X" * 132 + b"\x12\r\n")
    assert reader.pages[0].extract_text().count("X") == 132
    assert len(reader.pages[0].extract_text().strip().splitlines()) == 1


def test_a_job_with_nothing_to_print_makes_no_pdf() -> None:
    assert text_pdf(b"\r\n\r\n") == (b"", 0)


def test_binary_garbage_is_printed_as_text_never_a_crash() -> None:
    noise = random.Random(7)
    for _ in range(4):
        data = bytes(noise.randrange(256) for _ in range(3000))
        document, pages = text_pdf(data, max_pages=20)
        assert pages == 0 or document.startswith(b"%PDF")
