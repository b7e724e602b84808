"""The fixity and provenance record: the migration that brings the old fixity
checks into it, and deletions that leave their row behind."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from portal.images import ImageInUseError, disk_image_delete, disk_image_import, exhibit_delete
from portal.models import Exhibit, PreservationEvent
from tests.conftest import FREEDOS_2048

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_migration_keeps_every_fixity_check_as_a_row_of_the_record() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("portal", "0004_curators")])
    old = executor.loader.project_state([("portal", "0004_curators")]).apps
    image = old.get_model("portal", "DiskImage").objects.create(
        sha256="a" * 64, path="/nowhere/a.qcow2", size_bytes=1, format="qcow2")
    checks = old.get_model("portal", "FixityCheck").objects
    stored = checks.create(image=image, ok=True,
                           detail="Stored; the guest sees exactly the original's bytes.")
    matched = checks.create(image=image, ok=True, detail="SHA-256 matches.")
    failed = checks.create(image=image, ok=False, detail=f"SHA-256 is {'b' * 64}, expected {'a' * 64}.")
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    checks.filter(pk=stored.pk).update(checked_at=when)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    record = list(PreservationEvent.objects.order_by("pk").values_list(
        "event_type", "outcome", "digest", "detail", "image_sha256", "algorithm"))
    assert record == [
        ("ingestion", "success", "a" * 64, stored.detail, "a" * 64, "SHA-256"),
        ("fixity check", "success", "a" * 64, matched.detail, "a" * 64, "SHA-256"),
        ("fixity check", "failure", "b" * 64, failed.detail, "a" * 64, "SHA-256"),
    ]
    assert PreservationEvent.objects.order_by("pk").first().at == when  # type: ignore[union-attr]


def test_deleting_records_it_and_a_master_in_use_is_refused_naming_its_users(portal_dirs: Path) -> None:
    image = disk_image_import(FREEDOS_2048, name=FREEDOS_2048.name, agent="command import_image")
    exhibit = Exhibit.objects.create(slug="dos", title="DOS", image=image)
    with pytest.raises(ImageInUseError, match="exhibit dos build on it or use it"):
        disk_image_delete(image, agent="staff user curator")
    exhibit_delete(exhibit, agent="staff user curator")
    disk_image_delete(image, agent="staff user curator")
    assert not Path(image.path).exists()
    record: list[tuple[Any, ...]] = list(PreservationEvent.objects.values_list(
        "event_type", "agent", "image_sha256", "exhibit_slug", "image"))
    assert record == [
        ("deletion", "staff user curator", image.sha256, "", None),
        ("deletion", "staff user curator", "", "dos", None),
        ("ingestion", "command import_image", image.sha256, "", None),
    ]


def test_the_migration_puts_extra_floppies_and_cds_into_disk_sets() -> None:
    before = [("portal", "0012_exhibit_printer")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    images = old.get_model("portal", "DiskImage").objects
    boot, floppy, cd, disk = (images.create(sha256=letter * 64, path=f"/nowhere/{letter}.qcow2", size_bytes=1,
                                            media=media)
                              for letter, media in (("a", "floppy"), ("b", "floppy"), ("c", "cdrom"),
                                                    ("d", "disk")))
    exhibits = old.get_model("portal", "Exhibit").objects
    dos = exhibits.create(slug="dos", title="DOS", image=boot, boot="floppy",
                          extra_media_kinds="floppy,cdrom,disk")
    plain = exhibits.create(slug="plain", title="Plain", image=boot, boot="floppy")
    media = old.get_model("portal", "ExhibitMedia").objects
    for position, image in enumerate((floppy, cd, disk)):
        media.create(exhibit=dos, image=image, position=position)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    from portal.models import ExhibitDisk, ExhibitMedia

    moved = Exhibit.objects.get(pk=dos.pk)
    assert [(d.image.sha256[0], d.label, d.drive, d.in_drive_at_start, d.write_protected)
            for d in ExhibitDisk.objects.filter(exhibit=moved)] \
        == [("b", "Floppy disk 1", "b", True, False), ("c", "CD-ROM", "cd", True, False)]
    # The hard disk stays an extra medium; the machine has the set's drives.
    assert [m.image.sha256[0] for m in ExhibitMedia.objects.filter(exhibit=moved)] == ["d"]
    profile = moved.machine_profile()
    assert (profile.extra_media, profile.disk_drives) == (("disk",), ("b", "cd"))
    assert Exhibit.objects.get(pk=plain.pk).machine_profile().disk_drives == ()
