"""Derivative exhibits with real QEMU and qemu-img: a file written in a staff preview
of FreeDOS is there in a new visit of the derivative, whose master is a layer over
the untouched base (or, flattened, a whole disk); fixity and deletion see the chain."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from portal.images import ImageInUseError, disk_image_delete
from portal.models import DiskImage, Exhibit, PreservationEvent
from sessions.models import VisitorSession
from tests.conftest import (
    FREEDOS_2048,
    FREEDOS_2048_SHA256,
    FREEDOS_GAMES,
    ExhibitFactory,
    display_watch,
    visitor,
)
from tests.integration.test_freedos import BOOT_TIMEOUT_S, Visit
from tests.support.guest import disk_file, sha256_file
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def staff(db: Any) -> AsyncClient:
    from django.contrib.auth.models import User

    user = await sync_to_async(User.objects.create_user)(username="curator", password="x",
                                                          is_staff=True, is_superuser=True)
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def visit_open(broker: Any, client: AsyncClient, path: str) -> Visit:
    response = await client.post(path)
    assert response.status_code == 201, response.content
    rfb = await display_watch(client, response.json()["vnc_path"], timeout_s=BOOT_TIMEOUT_S)
    return Visit(broker, client, response.json()["id"], rfb)


async def visit_close(visit: Visit) -> None:
    await visit.rfb.close()
    assert (await visit.browser.delete(f"/api/sessions/{visit.session_id}")).status_code == 204


async def save(client: AsyncClient, session_id: str, **fields: Any) -> Any:
    return await client.post(f"/api/sessions/{session_id}/save-master", json.dumps(fields),
                             content_type="application/json")


def backing_chain(path: str) -> list[dict[str, Any]]:
    result = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                            capture_output=True, text=True, check=True, timeout=30)
    return list(json.loads(result.stdout))


async def test_a_file_written_in_a_preview_is_in_the_derivative_over_an_untouched_base(
    broker: Any, exhibit_create: ExhibitFactory, staff: AsyncClient
) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048", accelerator="tcg",
                                   published=False)
    base = exhibit.image
    preview = await visit_open(broker, staff, "/api/exhibits/freedos/preview")
    try:
        await preview.at_prompt()
        await preview.command("echo installed > hi.txt", expect="A:\\>echo installed > hi.txt")
        await preview.command("type hi.txt", expect="A:\\>type hi.txt\ninstalled")

        # Nobody else may save it: a visitor's browser, or another staff member's.
        assert (await save(visitor(), preview.session_id)).status_code == 404
        bad = await save(staff, preview.session_id, slug="no spaces")
        assert bad.status_code == 400
        assert "letters, digits" in bad.json()["detail"]
        layered = await save(staff, preview.session_id, slug="freedos-hi", title="FreeDOS with HI.TXT")
        assert layered.status_code == 201, layered.content
        flat = await save(staff, preview.session_id, slug="freedos-flat", title="FreeDOS, flat",
                          flatten=True)
        assert flat.status_code == 201, flat.content
        taken = await save(staff, preview.session_id, slug="freedos-hi")
        assert taken.status_code == 400
        assert "exists already" in taken.json()["detail"]
        # The machine's page offers it to staff only, as a form that leads to the new exhibit.
        page = (await staff.get(f"/sessions/{preview.session_id}/")).content.decode()
        assert "Save as new master" in page
        form = await staff.post(f"/api/sessions/{preview.session_id}/save-master",
                                {"slug": "freedos-form", "title": "From the form"},
                                headers={"Accept": "text/html"})
        formed = await Exhibit.objects.aget(slug="freedos-form")
        assert form.status_code == 303
        assert form["Location"] == f"/admin/portal/exhibit/{formed.pk}/change/"
        # The preview ran on through all of it.
        await preview.command("dir hi.txt", expect="HI       TXT")
    finally:
        await visit_close(preview)

    master = layered.json()["master"]
    assert master["layers"] == [base.sha256, master["sha256"]]
    assert master["parent"] == base.sha256
    derived = await DiskImage.objects.select_related("parent").aget(sha256=master["sha256"])
    assert derived.parent_id == base.pk
    assert derived.chain == f"{base.sha256}+{derived.sha256}"
    # The base is exactly what it was, and was never copied: the layer holds what changed.
    assert sha256_file(Path(base.path)) == base.sha256
    assert base.guest_sha256 == FREEDOS_2048_SHA256
    assert sha256_file(Path(derived.path)) == derived.sha256
    assert derived.size_bytes < base.size_bytes / 2
    chain = backing_chain(derived.path)
    assert [Path(layer["filename"]).name for layer in chain] == [f"{derived.sha256}.qcow2",
                                                                  f"{base.sha256}.qcow2"]
    assert chain[0]["backing-filename"] == f"{base.sha256}.qcow2"  # by content address
    assert derived.guest_sha256 != base.guest_sha256

    flattened = await DiskImage.objects.aget(sha256=flat.json()["master"]["sha256"])
    assert flattened.parent_id is None
    assert flattened.chain == ""
    assert "backing-filename" not in backing_chain(flattened.path)[0]
    assert flattened.guest_sha256 == derived.guest_sha256

    child = await Exhibit.objects.select_related("image", "parent").aget(slug="freedos-hi")
    assert child.parent_id == exhibit.pk
    assert not child.published
    assert child.accelerator == "tcg"
    creation = await PreservationEvent.objects.aget(event_type="creation", image=derived,
                                                    exhibit_slug="freedos-hi")
    assert (creation.agent, creation.related_sha256, creation.digest, creation.exhibit_id) == \
        ("staff user curator", base.sha256, derived.sha256, child.pk)
    # Instant start goes by the whole chain.
    assert f"master={base.sha256}+{derived.sha256}" in broker.launcher.start_state_key(child)

    # A new visit of the derivative boots with the file there.
    await Exhibit.objects.filter(slug="freedos-hi").aupdate(published=True)
    again = await visit_open(broker, visitor(), "/api/exhibits/freedos-hi/sessions")
    try:
        own_page = (await again.browser.get(f"/sessions/{again.session_id}/")).content.decode()
        assert "Save as new master" not in own_page
        await again.at_prompt()
        await again.command("type hi.txt", expect="installed")
        row = await VisitorSession.objects.aget(id=again.session_id)
        content = await disk_file(again.machine, Path(row.run_dir) / "disk.qcow2", "HI.TXT")
        assert (content or b"").startswith(b"installed")
    finally:
        await visit_close(again)
    assert sha256_file(Path(base.path)) == base.sha256

    # A failed layer blocks what is built on it; a master others build on stays.
    await DiskImage.objects.filter(pk=base.pk).aupdate(fixity=DiskImage.Fixity.FAILED)
    blocked = await visitor().post("/api/exhibits/freedos-hi/sessions")
    assert blocked.status_code == 409
    assert blocked.json()["error"] == "exhibit_unavailable"
    with pytest.raises(ImageInUseError,
                       match=r"the derivative master .* \(exhibits: freedos-hi, freedos-form\)"):
        await sync_to_async(disk_image_delete)(base, agent="tests")
    assert Path(base.path).exists()


async def test_the_admin_shows_a_masters_family_and_disk_use(
    broker: Any, exhibit_create: ExhibitFactory, staff: AsyncClient
) -> None:
    exhibit = await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048", accelerator="tcg")
    preview = await visit_open(broker, staff, "/api/exhibits/freedos/preview")
    try:
        await preview.at_prompt()
        await preview.command("echo one > one.txt", expect="A:\\>echo one > one.txt")
        saved = await save(staff, preview.session_id, slug="freedos-one", title="FreeDOS one")
        assert saved.status_code == 201, saved.content
    finally:
        await visit_close(preview)
    base = exhibit.image
    derived = await DiskImage.objects.aget(sha256=saved.json()["master"]["sha256"])
    page = (await staff.get(f"/admin/portal/diskimage/{base.pk}/change/")).content.decode()
    tree = page[page.index('class="family-tree"'):]
    assert tree.index(base.sha256[:12]) < tree.index(derived.sha256[:12])
    assert "freedos-one" in tree
    assert "in 1 master(s) built on it" in page
    page = (await staff.get(f"/admin/portal/diskimage/{derived.pk}/change/")).content.decode()
    assert "shared with the 1 layer(s) under it" in page
    page = (await staff.get(f"/admin/portal/exhibit/{exhibit.pk}/change/")).content.decode()
    assert "Derived from no other exhibit; derivatives: " in page
    assert "FreeDOS one</a>" in page
    child = await Exhibit.objects.aget(slug="freedos-one")
    page = (await staff.get(f"/admin/portal/exhibit/{child.pk}/change/")).content.decode()
    record = page[page.index('class="preservation-record"'):]
    # The derivative's record holds its base's too, newest first.
    assert record.index("creation") < record.index("ingestion")
    # Deleting the base through the admin is refused, naming what is built on it.
    confirm = (await staff.get(f"/admin/portal/diskimage/{base.pk}/delete/")).content.decode()
    assert "protected" in confirm
    assert derived.sha256[:12] in confirm


async def test_a_derivative_of_a_prepared_exhibit_starts_instantly_from_its_own_state(
    broker: Any, exhibit_create: ExhibitFactory, staff: AsyncClient
) -> None:
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare

    at_prompt = StartCondition(wait_text="A:\\>", still_s=1.0)
    games = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(games, at_prompt)
    # The preview resumes the prepared state: its disk sits on the warm layer, which
    # the new master must take in (what booting wrote) to stand on the master alone.
    preview = await visit_open(broker, staff, "/api/exhibits/games/preview")
    try:
        assert "A:\\>" in await preview.machine.text_screen()
        await preview.command("echo mine > mine.txt", expect="A:\\>echo mine > mine.txt")
        # This FreeDOS keeps disk buffers (HIMEM): the file reaches the disk a moment later.
        row = await VisitorSession.objects.aget(id=preview.session_id)

        async def written() -> bool:
            return await disk_file(preview.machine, Path(row.run_dir) / "disk.qcow2", "MINE.TXT") is not None

        await eventually(written, timeout_s=30, interval_s=0.5)
        saved = await save(staff, preview.session_id, slug="games-mine", title="Games, mine")
        assert saved.status_code == 201, saved.content
    finally:
        await visit_close(preview)
    child = await Exhibit.objects.select_related("image").aget(slug="games-mine")
    assert child.image.layers() == [games.image.sha256, child.image.sha256]
    state = await exhibit_prepare(child, at_prompt)
    assert state.key == broker.launcher.start_state_key(child)
    assert f"master={games.image.sha256}+{child.image.sha256}" in state.key
    await Exhibit.objects.filter(pk=child.pk).aupdate(published=True)
    assert (await visitor().get("/api/exhibits/games-mine")).json()["instant_start"] is True

    again = await visit_open(broker, visitor(), "/api/exhibits/games-mine/sessions")
    try:
        # Resumed at the prompt, nothing booted, and the file is there.
        assert "A:\\>" in await again.machine.text_screen()
        await again.command("type mine.txt", expect="\nmine")
    finally:
        await visit_close(again)
    for image in (games.image, child.image):
        assert sha256_file(Path(image.path)) == image.sha256
