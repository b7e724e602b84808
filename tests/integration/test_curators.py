"""The curators' side through Django: import and fixity commands, the admin upload,
drafts, staff previews and their thumbnails."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import AsyncClient, Client

from portal.images import disk_image_import
from portal.models import DiskImage, Exhibit, ExhibitDisk, PreservationEvent
from sessions.models import VisitorSession
from tests.conftest import FREEDOS_2048, FREEDOS_2048_SHA256, ExhibitFactory, visitor
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def store_contents(portal_dirs: Path) -> list[str]:
    images = portal_dirs / "images"
    return sorted(p.name for p in images.rglob("*")) if images.exists() else []


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hostile_backing(tmp_path: Path) -> Path:
    bait = tmp_path / "bait"
    bait.write_bytes(b"secret")
    image = tmp_path / "game.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", str(bait),
                    str(image), "1M"], check=True, timeout=30)
    return image


# --- commands ------------------------------------------------------------------------


def test_import_image_stores_a_checked_qcow2_master(portal_dirs: Path) -> None:
    call_command("import_image", str(FREEDOS_2048))
    image = DiskImage.objects.get()
    assert image.format == "qcow2"
    assert image.source_format == "raw"
    assert image.media == DiskImage.Media.FLOPPY
    assert image.source_sha256 == FREEDOS_2048_SHA256
    assert image.guest_sha256 == FREEDOS_2048_SHA256
    assert image.path == str(portal_dirs / "images" / f"{image.sha256}.qcow2")
    assert Path(image.path).stat().st_mode & 0o777 == 0o444
    assert image.fixity == DiskImage.Fixity.OK
    ingestion = PreservationEvent.objects.get(image=image)
    assert (ingestion.event_type, ingestion.outcome, ingestion.agent) == \
        ("ingestion", "success", "command import_image")
    assert (ingestion.algorithm, ingestion.digest, ingestion.image_sha256) == \
        ("SHA-256", image.sha256, image.sha256)
    assert FREEDOS_2048_SHA256 in ingestion.detail


def test_import_image_refuses_a_hostile_image_and_keeps_nothing(portal_dirs: Path, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="backing file"):
        call_command("import_image", str(hostile_backing(tmp_path)))
    assert not DiskImage.objects.exists()
    assert store_contents(portal_dirs) == []


def test_import_image_refuses_a_compressed_qcow2_holding_more_than_the_limit_before_converting(
    portal_dirs: Path, settings: Any, tmp_path: Path
) -> None:
    mib = 1024 * 1024
    settings.PORTAL_IMAGE_MAX_VIRTUAL_BYTES = 64 * mib
    raw = tmp_path / "contents.raw"
    with raw.open("wb") as handle:
        for _ in range(96):
            handle.write((b"\xeb\x3c\x90MUSEUM DOS DISK " * 60000)[:mib])
    image = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                   check=True, timeout=60)
    assert image.stat().st_size < 4 * mib  # 96 MiB of data in a small file
    runs = tmp_path / "runs.log"
    recording = tmp_path / "qemu-img-recording"
    recording.write_text(f'#!/bin/sh\necho "$1" >> {runs}\nexec qemu-img "$@"\n')
    recording.chmod(0o755)
    settings.PORTAL_QEMU_IMG_BINARY = str(recording)

    with pytest.raises(CommandError) as caught:
        call_command("import_image", str(image))

    message = str(caught.value)
    assert "96 MiB" in message
    assert "64 MiB" in message
    assert "PORTAL_IMAGE_MAX_VIRTUAL_BYTES" in message
    assert "convert" not in runs.read_text().split()  # refused before anything was expanded
    assert not DiskImage.objects.exists()
    assert store_contents(portal_dirs) == []


def test_the_size_limits_default_to_what_a_dos_or_windows_3_1_disk_needs() -> None:
    from portal import settings as defaults

    assert defaults.PORTAL_IMAGE_MAX_VIRTUAL_BYTES == 2 * 1024**3
    assert defaults.PORTAL_IMPORT_MAX_BYTES == 2 * 1024**3


def test_add_exhibit_goes_through_the_checked_import(portal_dirs: Path, demo_image: Path) -> None:
    call_command("add_exhibit", str(demo_image), "--slug", "demo", "--title", "Demo", "--boot", "hdd",
                 "--sound", "sb16", "--source", "This repository", "--publish")
    exhibit = Exhibit.objects.select_related("image").get(slug="demo")
    assert exhibit.image.format == "qcow2"
    assert exhibit.image.media == DiskImage.Media.DISK
    assert exhibit.image.guest_sha256 == hashlib.sha256(demo_image.read_bytes()).hexdigest()
    assert exhibit.machine_profile().sound == ("pcspk", "sb16")
    assert exhibit.provenance_source == "This repository"
    # The same image again: the same master, the exhibit updated.
    call_command("add_exhibit", str(demo_image), "--slug", "demo", "--title", "Demo 2", "--boot", "hdd")
    assert DiskImage.objects.count() == 1
    assert Exhibit.objects.get(slug="demo").title == "Demo 2"


def test_fixity_records_every_check_and_flags_a_flipped_byte(portal_dirs: Path, tmp_path: Path) -> None:
    call_command("import_image", str(FREEDOS_2048))
    image = DiskImage.objects.get()
    master = Path(image.path)
    master_bytes, master_mtime = master.read_bytes(), master.stat().st_mtime_ns
    call_command("fixity")
    assert DiskImage.objects.get().fixity == DiskImage.Fixity.OK

    # A writable copy stands in for the master; the real one is never touched.
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(master, copy)
    with copy.open("r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0x80]))
    DiskImage.objects.filter(pk=image.pk).update(path=str(copy))
    with pytest.raises(CommandError, match="1 masters failed"):
        call_command("fixity")

    image.refresh_from_db()
    assert image.fixity == DiskImage.Fixity.FAILED
    assert image.fixity_checked_at is not None
    record = list(PreservationEvent.objects.filter(image=image).values_list(
        "event_type", "outcome", "agent", "digest"))
    found = sha256_of(copy)
    # Newest first: the failure (with the digest it found), the check, the import.
    assert record == [("fixity check", "failure", "command fixity", found),
                      ("fixity check", "success", "command fixity", image.sha256),
                      ("ingestion", "success", "command import_image", image.sha256)]
    assert master.read_bytes() == master_bytes
    assert master.stat().st_mtime_ns == master_mtime


async def test_a_visitor_gets_a_clear_error_for_an_exhibit_whose_master_failed(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="damaged")
    await DiskImage.objects.filter(pk=exhibit.image_id).aupdate(fixity=DiskImage.Fixity.FAILED)
    response = await visitor().post("/api/exhibits/damaged/sessions")
    assert response.status_code == 409
    assert response.json()["error"] == "exhibit_unavailable"
    assert "integrity check" in response.json()["detail"]
    assert not await VisitorSession.objects.aexists()


# --- drafts and previews ----------------------------------------------------------


async def staff_browser(*, staff: bool = True) -> AsyncClient:
    from django.contrib.auth.models import User

    user = await sync_to_async(User.objects.create_user)(
        username=f"curator-{staff}", password="x", is_staff=staff)
    client = AsyncClient()
    await client.aforce_login(user)
    return client


@pytest.mark.parametrize("path", ["/exhibits/draft/", "/api/exhibits/draft"])
async def test_visitors_never_see_drafts(broker: Any, exhibit_create: ExhibitFactory, path: str) -> None:
    await exhibit_create(FREEDOS_2048, slug="draft", published=False)
    assert (await visitor().get(path)).status_code == 404
    assert (await visitor().get("/api/exhibits")).json()["exhibits"] == []
    assert b"draft" not in (await visitor().get("/")).content


@pytest.mark.parametrize("who", ["anonymous", "not staff"])
async def test_only_staff_may_preview(broker: Any, exhibit_create: ExhibitFactory, who: str) -> None:
    await exhibit_create(FREEDOS_2048, slug="draft", published=False)
    client = visitor() if who == "anonymous" else await staff_browser(staff=False)
    response = await client.post("/api/exhibits/draft/preview")
    assert response.status_code == 404
    assert not await VisitorSession.objects.aexists()


async def test_a_staff_preview_of_a_draft_runs_and_takes_the_thumbnail(
    broker: Any, exhibit_create: ExhibitFactory, demo_image: Path, portal_dirs: Path, settings: Any
) -> None:
    settings.PORTAL_THUMBNAIL_DIR = portal_dirs / "thumbnails"
    await exhibit_create(demo_image, slug="demo", boot="hdd", published=False)
    curator = await staff_browser()
    response = await curator.post("/api/exhibits/demo/preview")
    assert response.status_code == 201, response.content
    session = response.json()
    try:
        async def taken() -> bool:
            return bool((await Exhibit.objects.aget(slug="demo")).thumbnail)

        await eventually(taken, timeout_s=60)
        name = (await Exhibit.objects.aget(slug="demo")).thumbnail
        picture = (portal_dirs / "thumbnails" / name).read_bytes()
        assert picture.startswith(b"\x89PNG")
        assert name == f"{hashlib.sha256(picture).hexdigest()}.png"

        await Exhibit.objects.filter(slug="demo").aupdate(published=True)
        served = await visitor().get(f"/thumbnails/{name}")
        assert served.status_code == 200
        assert served["Content-Type"] == "image/png"
        assert "immutable" in served["Cache-Control"]
        assert b"".join(served.streaming_content) == picture  # type: ignore[attr-defined]
        assert f"/thumbnails/{name}".encode() in (await visitor().get("/exhibits/demo/")).content
        # The run directory keeps nothing of the screendump.
        assert not list(Path(portal_dirs / "run" / session["id"]).glob("*.png"))
    finally:
        assert (await curator.delete(f"/api/sessions/{session['id']}")).status_code == 204
    assert (await visitor().get("/thumbnails/../secret_key")).status_code == 404


async def test_the_admins_preview_button_leads_to_the_live_page(
    broker: Any, exhibit_create: ExhibitFactory, portal_dirs: Path, settings: Any
) -> None:
    settings.PORTAL_THUMBNAIL_DIR = portal_dirs / "thumbnails"
    await exhibit_create(FREEDOS_2048, slug="draft", published=False, accelerator="tcg")
    curator = await staff_browser()
    response = await curator.post("/api/exhibits/draft/preview", {"go": "1"},
                                  headers={"accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 302
    session_id = response["Location"].strip("/").split("/")[-1]
    try:
        assert (await curator.get(response["Location"])).status_code == 200
    finally:
        await curator.delete(f"/api/sessions/{session_id}")


# --- the admin ---------------------------------------------------------------------


@pytest.fixture
def curator_client(portal_dirs: Path, settings: Any, tmp_path: Path) -> Client:
    from django.contrib.auth.models import User

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    client = Client()
    client.force_login(User.objects.create_superuser("curator", password="x"))
    return client


def test_the_admin_upload_streams_to_disk_and_imports(curator_client: Client, settings: Any,
                                                      tmp_path: Path, portal_dirs: Path) -> None:
    assert settings.FILE_UPLOAD_HANDLERS[-1].endswith("TemporaryFileUploadHandler")
    assert FREEDOS_2048.stat().st_size > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    page = curator_client.get("/admin/portal/diskimage/upload/")
    assert page.status_code == 200
    assert b"portal/upload.js" in page.content
    upload = SimpleUploadedFile("FREEDOS.IMA", FREEDOS_2048.read_bytes())
    response = curator_client.post("/admin/portal/diskimage/upload/", {"image": upload, "format": ""})
    image = DiskImage.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/portal/diskimage/{image.pk}/change/"
    assert image.guest_sha256 == FREEDOS_2048_SHA256
    assert image.media == DiskImage.Media.FLOPPY
    assert list((tmp_path / "uploads").iterdir()) == []
    listing = curator_client.get("/admin/portal/diskimage/")
    assert b"FREEDOS.IMA" in listing.content
    DiskImage.objects.update(fixity=DiskImage.Fixity.FAILED)
    assert b"FAILED" in curator_client.get("/admin/portal/diskimage/").content
    # The page's script uploads with XHR and is told where to go instead of being redirected.
    upload = SimpleUploadedFile("FREEDOS.IMA", FREEDOS_2048.read_bytes())
    response = curator_client.post("/admin/portal/diskimage/upload/", {"image": upload},
                                   headers={"x-requested-with": "XMLHttpRequest"})
    assert response.json() == {"location": f"/admin/portal/diskimage/{image.pk}/change/"}


def test_the_admin_upload_refuses_a_file_over_the_limit_and_keeps_nothing(
    curator_client: Client, settings: Any, tmp_path: Path, portal_dirs: Path
) -> None:
    settings.PORTAL_IMPORT_MAX_BYTES = 512 * 1024
    upload = SimpleUploadedFile("FREEDOS.IMA", FREEDOS_2048.read_bytes())
    response = curator_client.post("/admin/portal/diskimage/upload/", {"image": upload}, follow=True)
    assert response.status_code == 200
    assert b"larger than the limit of 512 KiB (PORTAL_IMPORT_MAX_BYTES)" in response.content
    assert not DiskImage.objects.exists()
    assert store_contents(portal_dirs) == []
    assert list((tmp_path / "uploads").iterdir()) == []


def test_the_admin_upload_shows_why_a_hostile_image_was_refused(
    curator_client: Client, tmp_path: Path, portal_dirs: Path
) -> None:
    hostile = hostile_backing(tmp_path)
    # Named and claimed as what it is, so that the backing-file check is what refuses it.
    upload = SimpleUploadedFile("game.qcow2", hostile.read_bytes())
    response = curator_client.post("/admin/portal/diskimage/upload/", {"image": upload, "format": "qcow2"})
    assert response.status_code == 200
    assert b"backing file" in response.content
    assert b"its contents are" not in response.content
    assert not DiskImage.objects.exists()
    assert store_contents(portal_dirs) == []


def test_the_exhibit_admin_groups_the_fields_and_offers_a_preview(
    curator_client: Client, portal_dirs: Path
) -> None:
    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS")
    exhibit = Exhibit.objects.get()
    page = curator_client.get(f"/admin/portal/exhibit/{exhibit.pk}/change/")
    assert page.status_code == 200
    for heading in (b"Description", b"Provenance", b"Machine profile", b"Sound", b"Publication"):
        assert heading in page.content
    assert b'action="/api/exhibits/dos/preview"' in page.content
    assert b"extra medi" in page.content.lower()
    assert b'name="sound_adlib"' in page.content
    assert b'name="sound_sb16"' in page.content


def test_add_exhibit_takes_sound_cards_besides_the_speaker(portal_dirs: Path) -> None:
    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS",
                 "--sound", "sb16,adlib")
    assert Exhibit.objects.get().machine_profile().sound == ("pcspk", "adlib", "sb16")
    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS")
    assert Exhibit.objects.get().machine_profile().sound == ("pcspk",)
    with pytest.raises(CommandError):
        call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS",
                     "--sound", "gus")


async def test_the_admin_upload_works_through_the_asgi_handler_daphne_uses(
    portal_dirs: Path, settings: Any, tmp_path: Path
) -> None:
    from django.contrib.auth.models import User

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    user = await sync_to_async(User.objects.create_superuser)("asgi-curator", password="x")
    client = AsyncClient()
    await client.aforce_login(user)
    upload = SimpleUploadedFile("FREEDOS.IMA", FREEDOS_2048.read_bytes())
    response = await client.post("/admin/portal/diskimage/upload/", {"image": upload})
    assert response.status_code == 302
    image = await DiskImage.objects.aget()
    assert image.guest_sha256 == FREEDOS_2048_SHA256
    settings.PORTAL_IMPORT_MAX_BYTES = 512 * 1024
    upload = SimpleUploadedFile("OTHER.IMA", FREEDOS_2048.read_bytes()[::-1])
    response = await client.post("/admin/portal/diskimage/upload/", {"image": upload})
    assert b"larger than the limit" in response.content
    assert await DiskImage.objects.acount() == 1
    assert list(tmp_path.iterdir()) == []


def test_the_admin_shows_the_fixity_and_provenance_record(curator_client: Client, portal_dirs: Path) -> None:
    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS")
    call_command("fixity")
    image = DiskImage.objects.get()
    page = curator_client.get(f"/admin/portal/diskimage/{image.pk}/change/")
    assert page.status_code == 200
    assert FREEDOS_2048_SHA256.encode() in page.content
    assert b"Fixity and provenance record" in page.content
    assert b"command add_exhibit" in page.content
    assert b"command fixity" in page.content
    exhibit = Exhibit.objects.get()
    page = curator_client.get(f"/admin/portal/exhibit/{exhibit.pk}/change/")
    text = page.content.decode()
    record = text[text.index('class="preservation-record"'):]
    assert record.index("fixity check") < record.index("ingestion")  # newest first
    assert image.sha256 in record
    assert "command add_exhibit" in record


async def test_the_exhibit_page_says_a_damaged_exhibit_cannot_start(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="damaged")
    assert b'id="start"' in (await visitor().get("/exhibits/damaged/")).content
    await DiskImage.objects.filter(pk=exhibit.image_id).aupdate(fixity=DiskImage.Fixity.FAILED)
    page = await visitor().get("/exhibits/damaged/")
    assert page.status_code == 200
    assert b"failed an integrity check" in page.content
    assert b'id="start"' not in page.content


async def test_extra_floppies_and_cds_join_the_disk_set_each_in_its_own_layer(
    broker: Any, portal_dirs: Path, tmp_path: Path
) -> None:
    from tests.conftest import FREEDOS_GAMES
    from tests.integration.test_importer import iso_image

    iso = iso_image(tmp_path / "extras.iso")
    await sync_to_async(call_command)(
        "add_exhibit", str(FREEDOS_GAMES), "--slug", "games", "--title", "Games", "--accelerator", "tcg",
        "--extra", str(FREEDOS_2048), "--extra", str(iso), "--publish")
    exhibit = await Exhibit.objects.select_related("image").aget(slug="games")
    profile = exhibit.machine_profile()
    assert profile.extra_media == ()
    assert profile.disk_drives == ("b", "cd")
    disks = [disk async for disk in ExhibitDisk.objects.filter(exhibit=exhibit)]
    assert [(disk.label, disk.drive, disk.in_drive_at_start) for disk in disks] \
        == [("Floppy disk 1", "b", True), ("CD-ROM", "cd", True)]
    masters = {image.path: image.sha256 async for image in DiskImage.objects.all()}
    assert len(masters) == 3

    browser = visitor()
    response = await browser.post("/api/exhibits/games/sessions")
    assert response.status_code == 201, response.content
    session_id = response.json()["id"]
    try:
        await broker.viewers.display_attach(session_id=session_id)
        broker.viewers.display_detach(session_id=session_id)
        machine = broker.machine(session_id)
        assert machine is not None
        blocks = {block["device"]: block for block in await machine.execute("query-block")}
        run_dir = machine.run_dir
        assert run_dir.parent == portal_dirs / "run"
        floppy_b, cd = blocks["floppy1"]["inserted"], blocks["ide1-cd0"]["inserted"]
        # Each disk in a layer of its own in the run directory (opened through descriptors).
        for inserted, disk in ((floppy_b, disks[0]), (cd, disks[1])):
            assert inserted["node-name"] == f"disk-{disk.pk}"
            assert (run_dir / f"disk-{disk.pk}.qcow2").is_file()
        assert cd["ro"] is True
        assert floppy_b["ro"] is False
        assert blocks["floppy0"]["inserted"]["file"] == str(run_dir / "disk.qcow2")
    finally:
        assert (await browser.delete(f"/api/sessions/{session_id}")).status_code == 204
    for path, sha256 in masters.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256


def test_a_disk_set_must_fit_its_drives(portal_dirs: Path, tmp_path: Path) -> None:
    from tests.integration.test_importer import iso_image

    iso = iso_image(tmp_path / "extras.iso")
    with pytest.raises(CommandError, match="drive B: takes a floppy disk"):
        call_command("add_exhibit", str(FREEDOS_2048), "--slug", "two", "--title", "Two",
                     "--disk", str(iso), "Setup CD", "b")
    with pytest.raises(CommandError, match="one disk can be in each drive at start"):
        call_command("add_exhibit", str(FREEDOS_2048), "--slug", "two", "--title", "Two",
                     "--disk", str(FREEDOS_2048), "Disk 1", "in", "--disk", str(FREEDOS_2048), "Disk 2", "in")
    with pytest.raises(CommandError, match="unknown word"):
        call_command("add_exhibit", str(FREEDOS_2048), "--slug", "two", "--title", "Two",
                     "--disk", str(FREEDOS_2048), "Disk 1", "c")
    # Two more floppies than A: holds: both join the set for B:, the first in it at start.
    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "one", "--title", "One",
                 "--extra", str(FREEDOS_2048), "--extra", str(FREEDOS_2048))
    disks = ExhibitDisk.objects.filter(exhibit__slug="one")
    assert [(disk.drive, disk.in_drive_at_start) for disk in disks] == [("b", True), ("b", False)]


def test_the_admin_arranges_a_disk_set_and_refuses_a_cd_for_a_floppy_drive(
    curator_client: Client, tmp_path: Path
) -> None:
    from django.forms.models import model_to_dict

    from tests.integration.test_importer import iso_image
    from tests.support.disk_set import floppy_make

    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS")
    exhibit = Exhibit.objects.get()
    two = disk_image_import(floppy_make(tmp_path / "two.img", label="DISK2", files={}, serial="22222222"),
                            name="two.img", agent="tests")
    cd = disk_image_import(iso_image(tmp_path / "setup.iso"), name="setup.iso", agent="tests")
    address = f"/admin/portal/exhibit/{exhibit.pk}/change/"
    page = curator_client.get(address).content.decode()
    assert 'name="disks-TOTAL_FORMS"' in page
    form = {name: value for name, value in model_to_dict(exhibit).items()
            if value is not None and name not in {"translations", "id", "parent", "thumbnail"}}
    form.update({"extra_media-TOTAL_FORMS": "0", "extra_media-INITIAL_FORMS": "0",
                 "disks-TOTAL_FORMS": "2", "disks-INITIAL_FORMS": "0"})
    rows = [{"position": "1", "label": "Disk 2 — Data", "image": str(two.pk), "drive": "b",
             "in_drive_at_start": "on"},
            {"position": "0", "label": "Setup CD", "image": str(cd.pk), "drive": "b"}]
    for number, row in enumerate(rows):
        form.update({f"disks-{number}-{name}": value for name, value in row.items()})
    refused = curator_client.post(address, form)
    assert refused.status_code == 200
    assert "drive B: takes a floppy disk" in refused.content.decode()
    form["disks-1-drive"] = "cd"
    saved = curator_client.post(address, form)
    assert saved.status_code == 302, saved.content.decode()[-2000:]
    exhibit.refresh_from_db()
    # In the curators' order, and the machine gets both drives.
    assert [(disk.label, disk.drive, disk.in_drive_at_start) for disk in exhibit.disks.all()] \
        == [("Setup CD", "cd", False), ("Disk 2 — Data", "b", True)]
    assert exhibit.machine_profile().disk_drives == ("b", "cd")


def test_the_exhibit_admin_offers_the_runtimes_prepare_actions(rf: Any, admin_user: Any) -> None:
    """The catalogue's exhibit admin, extended by the runtime (not replaced): its own
    action and the start-state actions are offered together."""
    from django.contrib import admin

    from portal.models import Exhibit

    request = rf.get("/admin/portal/exhibit/")
    request.user = admin_user
    offered = admin.site._registry[Exhibit].get_actions(request)
    assert {"export_bags", "prepare_desktop", "prepare_dos_prompt"} <= set(offered)


def test_the_exhibit_admin_takes_the_title_and_description_in_more_languages(
    curator_client: Client, portal_dirs: Path
) -> None:
    from django.forms.models import model_to_dict

    call_command("add_exhibit", str(FREEDOS_2048), "--slug", "dos", "--title", "DOS", "--publish",
                 "--title-in", "fr", "Le DOS")
    exhibit = Exhibit.objects.get()
    address = f"/admin/portal/exhibit/{exhibit.pk}/change/"
    page = curator_client.get(address).content.decode()
    for field in ("title_de", "description_de", "title_fr", "description_es"):
        assert f'name="{field}"' in page, field
    assert 'value="Le DOS"' in page
    # Each inline's management form (the disk set, the extra media): none of them.
    prefixes = re.findall(r'name="([\w-]+)-TOTAL_FORMS"', page)
    assert len(prefixes) == 2
    form = {name: value for name, value in model_to_dict(exhibit).items()
            if value is not None and name not in {"translations", "id", "parent", "thumbnail"}}
    form.update({"title_de": "Das DOS", "description_de": "Ein Spiel.", "title_fr": "",
                 "description_es": "Un juego."})
    for prefix in prefixes:
        form.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    saved = curator_client.post(address, form)
    assert saved.status_code == 302, saved.content.decode()[-3000:]
    exhibit.refresh_from_db()
    assert exhibit.translations == {"de": {"title": "Das DOS", "description": "Ein Spiel."},
                                    "es": {"description": "Un juego."}}
    assert (exhibit.title, exhibit.language) == ("DOS", "en")
