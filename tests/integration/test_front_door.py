"""The front door: the gallery, what exhibit pages tell the web (JSON-LD, share tags,
sitemap, robots.txt), thumbnails taken without anyone asking, and citable versions."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import bibtexparser
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from PIL import Image

from portal.images import ImageInUseError, disk_image_delete, disk_image_import
from portal.models import DiskImage, Exhibit, ExhibitDisk, ExhibitVersion
from sessions.machines.prepare import StartCondition
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_2048, FREEDOS_GAMES, ExhibitFactory, display_watch, visitor

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "https://museum.example.org/collection"
HOSTILE = '</script><script>alert("x")</script><!-- & <b>'
JSON_LD = re.compile(r'<script type="application/ld\+json">(.*?)</script>', re.S)


@pytest.fixture
def public(settings: Any) -> str:
    settings.PORTAL_PUBLIC_URL = PUBLIC
    return PUBLIC


def _master(path: Path) -> DiskImage:
    return disk_image_import(path, name=path.name, agent="tests")


def _exhibits(count: int) -> None:
    """`count` published exhibits on one master, over three decades and platforms."""
    image = _master(FREEDOS_2048)
    platforms = ["dos", "windows3", "other"]
    for number in range(count):
        Exhibit.objects.create(slug=f"ex-{number:03d}", title=f"Exhibit {number:03d}",
                               year=1981 + number % 30, publisher=f"Maker {number % 4}", image=image,
                               platform=platforms[number % 3], published=True)
    Exhibit.objects.create(slug="draft", title="Unfinished draft", image=image, year=1990)


def _titles(page: str) -> list[str]:
    return re.findall(r'<li class="gallery-item">\s*<a href="/exhibits/[^"]+/">.*?<strong>([^<]+)</strong>',
                      page, re.S)


async def test_the_gallery_filters_sorts_and_pages_without_scripts(portal_dirs: Path) -> None:
    await sync_to_async(_exhibits)(60)
    browser = visitor()
    first = (await browser.get("/")).content.decode()
    assert "60 exhibits" in first
    assert "Unfinished draft" not in first
    assert _titles(first)[:2] == ["Exhibit 000", "Exhibit 001"]
    assert len(_titles(first)) == 24
    assert "Page 1 of 3" in first
    assert 'href="?page=2"' in first
    last = (await browser.get("/?page=3")).content.decode()
    assert len(_titles(last)) == 12
    assert "Page 3 of 3" in last
    # Decade (the 1990s: years 1990-1999), platform, text, sort, each kept in the page links.
    nineties = (await browser.get("/?decade=1990&platform=windows3&sort=year")).content.decode()
    years = [int(year) for year in re.findall(r'<span class="meta">(\d{4})', nineties)]
    assert years
    assert years == sorted(years)
    assert all(1990 <= year <= 1999 for year in years)
    assert "Windows 3.x" in nineties
    assert "MS-DOS" not in nineties
    assert '<option value="1990" selected>' in nineties
    found = (await browser.get("/?q=maker+3&sort=newest")).content.decode()
    assert "15 exhibits" in found
    assert _titles(found)[0] == "Exhibit 059"
    assert "No exhibit matches" in (await browser.get("/?q=nothing-like-it")).content.decode()
    # Nonsense is ignored, never an error.
    for query in ("?decade=abc&sort=drop&platform=amiga&page=-4", "?page=999", "?q=" + "x" * 5000):
        response = await browser.get("/" + query)
        assert response.status_code == 200


async def test_an_exhibit_page_tells_the_web_what_it_is(public: str, portal_dirs: Path,
                                                         exhibit_create: ExhibitFactory) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS <2048>")
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(
        rights=HOSTILE, description=HOSTILE, kind=Exhibit.Kind.GAME, platform="dos",
        thumbnail="a" * 64 + ".png")
    # The request's Host is not where addresses come from.
    response = await AsyncClient(HTTP_HOST="localhost").get("/exhibits/freedos/")
    page = response.content.decode()
    assert HOSTILE not in page
    assert "<script>alert" not in page
    scripts = JSON_LD.findall(page)
    assert len(scripts) == 1
    data = json.loads(scripts[0])
    assert data["@type"] == "VideoGame"
    assert data["name"] == "FreeDOS <2048>"
    assert data["datePublished"] == "1994"
    assert data["publisher"]["name"] == "Test"
    assert data["operatingSystem"] == "MS-DOS"
    assert data["copyrightNotice"] == HOSTILE
    assert data["description"] == HOSTILE
    assert data["image"] == f"{PUBLIC}/thumbnails/{'a' * 64}.png"
    assert {"@type": "PropertyValue", "propertyID": "SHA-256",
            "value": exhibit.image.sha256} in data["identifier"]
    assert data["url"] == f"{PUBLIC}/exhibits/freedos/"
    assert f'<link rel="canonical" href="{PUBLIC}/exhibits/freedos/">' in page
    assert f'<meta property="og:image" content="{PUBLIC}/thumbnails/{"a" * 64}.png">' in page
    assert '<meta name="twitter:card" content="summary_large_image">' in page
    assert "localhost" not in page.split("</head>")[0]


async def test_the_sitemap_lists_published_exhibits_and_robots_keep_out_of_visits(
        public: str, portal_dirs: Path) -> None:
    await sync_to_async(_exhibits)(3)
    sitemap = (await visitor().get("/sitemap.xml")).content.decode()
    assert re.findall(r"<loc>([^<]+)</loc>", sitemap) == [f"{PUBLIC}/exhibits/ex-{n:03d}/" for n in range(3)]
    assert "draft" not in sitemap
    robots = (await visitor().get("/robots.txt")).content.decode()
    for path in ("/sessions/", "/watch/", "/api/"):
        assert f"Disallow: {path}" in robots
    assert f"Sitemap: {PUBLIC}/sitemap.xml" in robots


async def test_a_changed_configuration_is_a_new_version_and_the_old_one_still_starts(
        public: str, broker: Any, exhibit_create: ExhibitFactory) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048")
    # The first version has a disk set: FreeDOS games in drive B:.
    await ExhibitDisk.objects.acreate(exhibit=exhibit, image=await sync_to_async(_master)(FREEDOS_GAMES),
                                      label="Games", drive="b", in_drive_at_start=True)
    browser = visitor()
    before = (await browser.get("/api/exhibits/freedos")).json()
    old = before["version"]
    assert re.fullmatch(r"[0-9a-f]{12}", old)
    assert before["platform"] == "dos"
    await ExhibitDisk.objects.filter(exhibit=exhibit).adelete()
    exhibit = await Exhibit.objects.select_related("image").aget(pk=exhibit.pk)
    exhibit.memory_mb, exhibit.speed = 32, "486dx33"
    await exhibit.asave()
    new = (await browser.get("/api/exhibits/freedos")).json()["version"]
    assert new != old
    # The cited version's page: still there, says a newer one exists and what changed.
    page = (await browser.get(f"/exhibits/freedos/v/{old}/")).content.decode()
    assert "A newer version exists" in page
    assert "the memory (16 → 32)" in page
    assert "the disk set" in page
    assert f'action="/api/exhibits/freedos/v/{old}/sessions"' in page
    assert "16 MiB" in page
    current = (await browser.get(f"/exhibits/freedos/v/{new}/")).content.decode()
    assert "its current version" in current
    # Unknown slugs and versions: the 404 page, or JSON for the API.
    for path in ("/exhibits/freedos/v/000000000000/", "/exhibits/nothing/v/abc/"):
        missing = await browser.get(path)
        assert missing.status_code == 404
        assert "There is nothing at this address" in missing.content.decode()
    refused = await browser.post("/api/exhibits/freedos/v/000000000000/sessions")
    assert refused.status_code == 404
    assert refused.json()["error"] == "not_found"
    # Starting the old version gives its own machine: 16 MiB at the host's speed.
    session = (await browser.post(f"/api/exhibits/freedos/v/{old}/sessions")).json()
    try:
        # Running once its screen reaches the visitor.
        rfb = await display_watch(browser, session["vnc_path"])
        await rfb.close()
        machine = broker.machine(session["id"])
        assert machine.profile.memory_mb == 16
        assert machine.profile.speed == "host"
        # ...with that version's disk set in its drives.
        box = (await browser.get(f"/api/sessions/{session['id']}/drives")).json()
        games = [disk for disk in box["disks"] if disk["label"] == "Games"]
        assert [disk["drive"] for disk in games] == ["b"]
        assert {"drive": "b", "disk": games[0]["id"]} in box["drives"]
        # Reset gives the same version's machine again.
        reset = await browser.post(f"/api/sessions/{session['id']}/reset")
        assert reset.status_code == 200
        again = broker.machine(session["id"])
        assert again is not machine
        assert again.profile.memory_mb == 16
    finally:
        await browser.delete(f"/api/sessions/{session['id']}")


async def test_a_cited_master_is_deleted_only_with_force_and_its_version_withdrawn(
        portal_dirs: Path, exhibit_create: ExhibitFactory) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="freedos")
    old = (await Exhibit.objects.aget(pk=exhibit.pk)).version
    exhibit.image = await sync_to_async(_master)(FREEDOS_GAMES)
    await exhibit.asave()
    first = await DiskImage.objects.aget(sha256=(await ExhibitVersion.objects.aget(version=old))
                                         .configuration["boot_master"])
    with pytest.raises(ImageInUseError, match="cited versions"):
        await sync_to_async(disk_image_delete)(first, agent="tests")
    await sync_to_async(disk_image_delete)(first, agent="tests", force=True)
    assert (await ExhibitVersion.objects.aget(version=old)).withdrawn_at is not None
    browser = visitor()
    page = (await browser.get(f"/exhibits/freedos/v/{old}/")).content.decode()
    assert "was withdrawn" in page
    assert 'id="start-form"' not in page
    refused = await browser.post(f"/api/exhibits/freedos/v/{old}/sessions")
    assert refused.status_code == 410
    assert refused.json()["error"] == "version_withdrawn"


async def test_the_citation_names_the_version_and_parses(public: str, portal_dirs: Path,
                                                         exhibit_create: ExhibitFactory) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="free-dos", title="FreeDOS {50%} & co_")
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(rights="CC0")
    data = (await visitor().get("/api/exhibits/free-dos")).json()
    version, cited = data["version"], data["citation"]
    assert data["rights"] == "CC0"
    url = f"{PUBLIC}/exhibits/free-dos/v/{version}/"
    assert version in cited["text"]
    assert url in cited["text"]
    assert "Accessed 20" in cited["text"]
    entries = bibtexparser.loads(cited["bibtex"]).entries
    assert len(entries) == 1
    assert entries[0]["version"] == version
    assert entries[0]["url"] == url
    assert entries[0]["year"] == "1994"
    assert entries[0]["title"] == r"{FreeDOS \{50\%\} \& co\_}"
    csl = json.loads(json.dumps(cited["csl"]))
    assert csl["type"] == "software"
    assert csl["version"] == version
    assert csl["URL"] == url
    assert csl["title"] == "FreeDOS {50%} & co_"
    assert csl["issued"] == {"date-parts": [[1994]]}
    assert len(csl["accessed"]["date-parts"][0]) == 3
    page = (await visitor().get("/exhibits/free-dos/")).content.decode()
    assert "Cite this exhibit" in page
    assert "@misc{free_dos_" in page


async def test_preparing_a_start_state_gives_the_exhibit_its_thumbnail(
        broker: Any, exhibit_create: ExhibitFactory, settings: Any) -> None:
    from portal.thumbnails import thumbnail_from_screen

    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, StartCondition(wait_text="A:\\>", still_s=1.0))
    exhibit = await Exhibit.objects.aget(pk=exhibit.pk)
    assert exhibit.thumbnail
    assert exhibit.thumbnail_small
    assert not exhibit.thumbnail_chosen
    store = Path(settings.PORTAL_THUMBNAIL_DIR)
    full = Image.open(store / exhibit.thumbnail)
    small = Image.open(store / exhibit.thumbnail_small)
    assert full.size[0] >= 640
    assert small.size[0] == 320
    served = await visitor().get(f"/thumbnails/{exhibit.thumbnail_small}")
    assert served["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(b"".join(served.streaming_content))).size == small.size  # type: ignore[attr-defined]
    # A screen that stays blank leaves the exhibit's picture as it was, and says why.
    blank = io.BytesIO()
    Image.new("RGB", (640, 480)).save(blank, format="PNG")
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(thumbnail="", thumbnail_small="")
    assert await sync_to_async(thumbnail_from_screen)(exhibit.pk, blank.getvalue(), why_none="blank") is None
    assert (await Exhibit.objects.aget(pk=exhibit.pk)).thumbnail_problem == "blank"



def test_an_exhibit_without_a_start_state_gets_its_picture_from_one_boot(portal_dirs: Path) -> None:
    from django.core.management import call_command

    Exhibit.objects.create(slug="games", title="Games", image=_master(FREEDOS_GAMES), accelerator="tcg",
                           published=True)
    out = io.StringIO()
    call_command("thumbnails", stdout=out)
    exhibit = Exhibit.objects.get(slug="games")
    assert exhibit.thumbnail
    assert exhibit.thumbnail_small
    assert f"games: thumbnail {exhibit.thumbnail}" in out.getvalue()
    # Run again, it leaves exhibits with a picture alone.
    again = io.StringIO()
    call_command("thumbnails", stdout=again)
    assert again.getvalue() == ""
