"""The front door through Daphne and Chromium: the demo's picture in the gallery with no
step by hand, what its page tells the web (JSON-LD, an Open Graph image that answers
with a picture), the sitemap and robots.txt, the citation, and a cited version that
starts from its own page."""
from __future__ import annotations

import io
import json
import re
import urllib.request
from typing import Any

import bibtexparser
import pytest
from PIL import Image

from tests.e2e.conftest import Portal
from tests.e2e.test_accessibility import DESKTOP, PHONE, SESSION_URL, _axe_clean

PUBLIC = "https://museum.example.org"


@pytest.fixture
def portal_settings() -> dict[str, str]:
    return {"PORTAL_PUBLIC_URL": PUBLIC}


def _get(portal: Portal, url: str) -> tuple[str, bytes]:
    """The content type and body of a public address, asked of the served portal."""
    with urllib.request.urlopen(portal.url + url.removeprefix(PUBLIC), timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def test_the_gallery_shows_the_demo_and_its_page_tells_the_web(portal: Portal, browser: Any) -> None:
    # The demo was added and prepared as `make run` does: its picture came with the start state.
    page = browser.new_context(**DESKTOP).new_page()
    page.goto(portal.url + "/?platform=&sort=newest")
    card = page.locator(".gallery-item", has_text="Portal demo")
    picture = card.locator("img")
    picture.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=picture.element_handle())
    _, png = _get(portal, picture.get_attribute("src") or "")
    assert len(Image.open(io.BytesIO(png)).getcolors(maxcolors=1 << 16) or range(1000)) > 2
    assert "1992" in card.inner_text()
    _axe_clean(page, "the gallery")
    phone = browser.new_context(**PHONE).new_page()
    phone.goto(portal.url + "/?decade=1990")
    phone.locator(".gallery-item img").wait_for()
    _axe_clean(phone, "the gallery on a phone")
    phone.context.close()

    card.get_by_role("link").click()
    page.wait_for_url(re.compile(r"/exhibits/demo/$"))
    data = json.loads(page.locator('script[type="application/ld+json"]').text_content() or "")
    assert data["@type"] == "SoftwareApplication"
    assert data["name"] == "Portal demo"
    assert data["datePublished"] == "1992"
    assert data["url"] == f"{PUBLIC}/exhibits/demo/"
    assert data["identifier"][0]["propertyID"] == "SHA-256"
    og_image = page.locator('meta[property="og:image"]').get_attribute("content") or ""
    assert og_image == data["image"]
    assert og_image.startswith(f"{PUBLIC}/thumbnails/")
    kind, body = _get(portal, og_image)
    assert kind == "image/png"
    assert Image.open(io.BytesIO(body)).size[0] >= 640

    _, sitemap = _get(portal, "/sitemap.xml")
    assert re.findall(rb"<loc>([^<]+)</loc>", sitemap) == [f"{PUBLIC}/exhibits/demo/".encode()]
    _, robots = _get(portal, "/robots.txt")
    assert b"Disallow: /sessions/" in robots
    assert b"Disallow: /api/" in robots

    # The citation, as a reader copies it.
    page.get_by_text("Cite this exhibit").click()
    _axe_clean(page, "the exhibit page, its citation open")
    entry = bibtexparser.loads(page.locator("#citation-bibtex").inner_text()).entries[0]
    version = entry["version"]
    assert json.loads(page.locator("#citation-csl").inner_text())["version"] == version
    assert entry["url"] == f"{PUBLIC}/exhibits/demo/v/{version}/"

    # The cited version's own page starts its machine.
    page.goto(f"{portal.url}/exhibits/demo/v/{version}/")
    assert "its current version" in page.locator("#version-note").inner_text()
    _axe_clean(page, "a cited version's page")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(SESSION_URL)
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
