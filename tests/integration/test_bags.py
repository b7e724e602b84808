"""BagIt export and import with real qemu-img: a bit-exact round trip, and bags
that are changed, hostile or malformed refused with a sentence, keeping nothing."""
from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import bagit
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from portal.images import ImageInUseError, disk_image_delete, disk_image_import, exhibit_delete
from portal.models import DiskImage, Exhibit, PreservationEvent
from tests.conftest import FREEDOS_2048, FREEDOS_2048_SHA256

pytestmark = pytest.mark.django_db(transaction=True)

# A one-pixel PNG: what a preview's thumbnail is, in small.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture
def exhibit(portal_dirs: Path) -> Exhibit:
    image = disk_image_import(FREEDOS_2048, name=FREEDOS_2048.name, agent="command import_image")
    name = f"{hashlib.sha256(PNG).hexdigest()}.png"
    settings.PORTAL_THUMBNAIL_DIR.mkdir(parents=True, exist_ok=True)
    (settings.PORTAL_THUMBNAIL_DIR / name).write_bytes(PNG)
    call_command("fixity")
    return Exhibit.objects.create(
        slug="dos", title="FreeDOS 2048", year=1994, publisher="FreeDOS", description="A game.",
        image=image, boot="floppy", accelerator="tcg", memory_mb=8, thumbnail=name, code_page=850,
        provenance_source="Museum archive, box 12", provenance_donor="A. Donor",
        provenance_acquired=date(2024, 5, 1), provenance_notes="Floppy in its sleeve.", published=True,
        translations={"de": {"title": "FreeDOS 2048 (Spiel)", "description": "Ein Spiel."},
                      "fr": {"description": "Un jeu."}})


def store(portal_dirs: Path) -> list[str]:
    return sorted(path.name for path in (portal_dirs / "images").iterdir())


def test_an_exported_and_reimported_exhibit_is_bit_exact(exhibit: Exhibit, tmp_path: Path,
                                                         portal_dirs: Path) -> None:
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    master = exhibit.image
    bag = bagit.Bag(str(bag_dir))
    assert set(bag.algorithms) == {"sha256", "sha512"}
    assert bag.is_valid()
    assert bag.info["External-Identifier"] == "dos"
    assert bag.info["Provenance-Donor"] == "A. Donor"
    assert bag.info["Provenance-Acquired"] == "2024-05-01"
    assert bag.info["Exhibit-Guest-SHA256"] == FREEDOS_2048_SHA256
    bagged = bag_dir / "data" / "masters" / f"{master.sha256}.qcow2"
    assert hashlib.sha256(bagged.read_bytes()).hexdigest() == master.sha256
    record = json.loads((bag_dir / "data" / "metadata" / "record.json").read_text())
    assert [row["event_type"] for row in record] == ["ingestion", "fixity check"]
    assert PreservationEvent.objects.filter(event_type="replication", image=master,
                                            agent="command export_bag").count() == 1

    # Gone from the portal, then back from the bag alone.
    exhibit_delete(exhibit, agent="tests")
    disk_image_delete(master, agent="tests")
    assert store(portal_dirs) == []
    call_command("import_bag", str(bag_dir))
    back = Exhibit.objects.select_related("image").get(slug="dos")
    assert back.image.sha256 == master.sha256  # the same SHA-256 for the layer
    assert back.image.guest_sha256 == FREEDOS_2048_SHA256
    assert back.image.source_sha256 == master.source_sha256
    assert back.image.original_name == "freedos-2048.img"
    assert hashlib.sha256(Path(back.image.path).read_bytes()).hexdigest() == master.sha256
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(bagged),
                              back.image.path], capture_output=True, text=True, timeout=60)
    assert compare.returncode == 0
    assert "identical" in compare.stdout
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(FREEDOS_2048),
                              back.image.path], capture_output=True, text=True, timeout=60)
    assert compare.returncode == 0, compare.stdout
    for name in ("title", "year", "publisher", "description", "boot", "accelerator", "memory_mb",
                 "code_page", "provenance_source", "provenance_donor", "provenance_acquired",
                 "provenance_notes", "thumbnail", "language", "translations"):
        assert getattr(back, name) == getattr(exhibit, name), name
    assert not back.published  # a draft until a curator publishes it
    assert (settings.PORTAL_THUMBNAIL_DIR / back.thumbnail).read_bytes() == PNG
    events = list(PreservationEvent.objects.filter(exhibit=back).order_by("at", "pk")
                  .values_list("event_type", "agent"))
    # The bag's record first (as it was), then the bag's validation here.
    assert events[:2] == [("ingestion", "command import_image"), ("fixity check", "command fixity")]
    assert events[-1] == ("validation", "command import_bag")
    assert PreservationEvent.objects.filter(event_type="ingestion", agent="command import_bag",
                                            image=back.image).exists()


def changed(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def refused(bag_dir: Path, *words: str) -> str:
    with pytest.raises(CommandError) as caught:
        call_command("import_bag", str(bag_dir), "--slug", "again")
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert not Exhibit.objects.filter(slug="again").exists()
    return message


def test_a_bag_with_one_changed_byte_is_refused_and_nothing_is_kept(
    exhibit: Exhibit, tmp_path: Path, portal_dirs: Path
) -> None:
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    exhibit_delete(exhibit, agent="tests")
    disk_image_delete(exhibit.image, agent="tests")
    changed(bag_dir / "data" / "masters" / f"{exhibit.image.sha256}.qcow2", 70000)
    message = refused(bag_dir, "refused the bag", "changed since it was made", "sha256")
    assert "Traceback" not in message
    assert store(portal_dirs) == []
    assert not DiskImage.objects.exists()
    # The metadata counts as much as the masters.
    changed(bag_dir / "data" / "masters" / f"{exhibit.image.sha256}.qcow2", 70000)
    changed(bag_dir / "data" / "metadata" / "exhibit.json", 10)
    refused(bag_dir, "changed since it was made", "exhibit.json")


def test_a_bag_whose_manifests_were_redone_still_goes_through_the_checked_importer(
    exhibit: Exhibit, tmp_path: Path, portal_dirs: Path
) -> None:
    """A hostile bag: a master with a backing file (CVE-2015-1851), manifests made to match."""
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    master = bag_dir / "data" / "masters" / f"{exhibit.image.sha256}.qcow2"
    master.unlink()
    bait = tmp_path / "bait"
    bait.write_bytes(b"secret" * 1000)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", str(bait),
                    str(master), "1M"], check=True, timeout=30)
    bag = bagit.Bag(str(bag_dir))
    bag.save(manifests=True)
    assert bag.is_valid()
    exhibit_delete(exhibit, agent="tests")
    disk_image_delete(exhibit.image, agent="tests")
    refused(bag_dir, "backing file")
    assert store(portal_dirs) == []
    assert not DiskImage.objects.exists()


def test_malformed_bags_are_refused_with_a_sentence(exhibit: Exhibit, tmp_path: Path) -> None:
    refused(tmp_path / "nowhere", "is not a directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a valid BagIt bag")

    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    with pytest.raises(CommandError, match="exists and is not an empty directory"):
        call_command("export_bag", "dos", str(bag_dir))
    with pytest.raises(CommandError, match="exists already"):
        call_command("import_bag", str(bag_dir))

    link = bag_dir / "data" / "link"
    link.symlink_to("/etc/hostname")
    refused(bag_dir, "is not a plain file")
    link.unlink()

    # Manifests redone over nonsense metadata: the bag is valid, its exhibit is not.
    described = bag_dir / "data" / "metadata" / "exhibit.json"
    content: dict[str, Any] = json.loads(described.read_text())
    content["exhibit"]["memory_mb"] = "lots"
    described.write_text(json.dumps(content))
    bagit.Bag(str(bag_dir)).save(manifests=True)
    refused(bag_dir, "not one this portal takes", "memory_mb")
    content["exhibit"]["memory_mb"] = 8
    content["exhibit"]["translations"] = {"de": {"title": ["not", "text"]}}
    described.write_text(json.dumps(content))
    bagit.Bag(str(bag_dir)).save(manifests=True)
    refused(bag_dir, "translations")
    described.write_text("{not json")
    bagit.Bag(str(bag_dir)).save(manifests=True)
    refused(bag_dir, "not JSON")


def test_the_admin_exports_and_imports_bags(exhibit: Exhibit, portal_dirs: Path, settings: Any) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    settings.PORTAL_BAG_DIR = portal_dirs / "bags"
    client = Client()
    client.force_login(User.objects.create_superuser("curator", password="x"))
    page = client.post("/admin/portal/exhibit/", {"action": "export_bags", "_selected_action": [exhibit.pk]},
                       follow=True)
    assert "exported as the bag" in page.content.decode()
    (bag_dir,) = (portal_dirs / "bags").iterdir()
    assert bagit.Bag(str(bag_dir)).is_valid()
    assert PreservationEvent.objects.filter(event_type="replication", agent="staff user curator").exists()

    form = client.get("/admin/portal/exhibit/import-bag/")
    assert bag_dir.name in form.content.decode()
    answer = client.post("/admin/portal/exhibit/import-bag/", {"bag": bag_dir.name}, follow=True)
    assert "exists already" in answer.content.decode()
    assert "Nothing was kept" in answer.content.decode()
    answer = client.post("/admin/portal/exhibit/import-bag/", {"bag": "../bags"}, follow=True)
    assert "There is no such bag" in answer.content.decode()
    answer = client.post("/admin/portal/exhibit/import-bag/", {"bag": bag_dir.name, "slug": "copy"},
                         follow=True)
    assert "as a draft" in answer.content.decode()
    copy = Exhibit.objects.get(slug="copy")
    assert copy.image_id == exhibit.image_id
    assert not copy.published
    assert PreservationEvent.objects.filter(event_type="validation", exhibit=copy,
                                            agent="staff user curator").exists()


def derivative_make(exhibit: Exhibit, *, slug: str) -> Exhibit:
    """A derivative as Save as new master makes one, from a disk written by qemu-io
    instead of a guest (the guest's side is tests/integration/test_derivatives.py)."""
    from portal.images import Derivation, derivation_work_dir, derived_record, master_from_visit

    work = derivation_work_dir()
    disk = work / "visit.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", exhibit.image.path,
                    str(disk)], check=True, timeout=30)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 65536 65536", str(disk)],
                   check=True, capture_output=True, timeout=30)
    made = master_from_visit(exhibit, visit_copy=disk, flatten=False)
    return derived_record(exhibit, made=made, derivation=Derivation(slug=slug, title=slug),
                          agent="staff user curator")


def test_a_derivatives_chain_goes_into_a_bag_and_comes_back_bit_exact(
    exhibit: Exhibit, tmp_path: Path, portal_dirs: Path
) -> None:
    child = derivative_make(exhibit, slug="dos-plus")
    base, layer = exhibit.image, child.image
    assert layer.layers() == [base.sha256, layer.sha256]
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos-plus", str(bag_dir))
    described = json.loads((bag_dir / "data" / "metadata" / "exhibit.json").read_text())
    assert [(m["sha256"], m["role"], m["parent"]) for m in described["masters"]] == \
        [(base.sha256, "layer", None), (layer.sha256, "boot", base.sha256)]
    with pytest.raises(ImageInUseError, match="derivative master"):
        disk_image_delete(base, agent="tests")

    for gone in (child, exhibit):
        exhibit_delete(gone, agent="tests")
    for image in (layer, base):
        disk_image_delete(image, agent="tests")
    assert store(portal_dirs) == []
    call_command("import_bag", str(bag_dir))
    back = Exhibit.objects.select_related("image__parent").get(slug="dos-plus")
    assert back.image.sha256 == layer.sha256
    assert back.image.parent is not None
    assert back.image.parent.sha256 == base.sha256
    assert back.image.chain == layer.chain
    assert back.image.guest_sha256 == layer.guest_sha256
    for stored in (back.image, back.image.parent):
        assert stored is not None
        assert hashlib.sha256(Path(stored.path).read_bytes()).hexdigest() == stored.sha256
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                              str(bag_dir / "data" / "masters" / f"{layer.sha256}.qcow2"), back.image.path],
                             capture_output=True, text=True, timeout=60, cwd=bag_dir / "data" / "masters")
    assert compare.returncode == 0
    assert "identical" in compare.stdout


def test_a_layer_that_names_another_backing_file_is_refused(
    exhibit: Exhibit, tmp_path: Path, portal_dirs: Path
) -> None:
    child = derivative_make(exhibit, slug="dos-plus")
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos-plus", str(bag_dir))
    exhibit_delete(child, agent="tests")
    disk_image_delete(child.image, agent="tests")
    before = store(portal_dirs)
    layer = bag_dir / "data" / "masters" / f"{child.image.sha256}.qcow2"
    layer.chmod(0o644)
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
                    str(layer)], check=True, timeout=30)
    bagit.Bag(str(bag_dir)).save(manifests=True)
    refused(bag_dir, "must name", f"{exhibit.image.sha256}.qcow2 as its backing file")
    assert store(portal_dirs) == before


def test_a_disk_set_goes_into_a_bag_and_into_a_derivative_whole(exhibit: Exhibit, tmp_path: Path) -> None:
    from portal.derivation import DerivedImage
    from portal.images import Derivation, derived_record
    from portal.models import ExhibitDisk
    from tests.support.disk_set import cd_make, floppy_make

    made = {
        "one": floppy_make(tmp_path / "one.img", label="DISK1", files={"ONE.TXT": b"1"}, serial="11111111"),
        "two": floppy_make(tmp_path / "two.img", label="DISK2", files={"TWO.TXT": b"2"}, serial="22222222"),
        "cd": cd_make(tmp_path / "cd.iso"),
    }
    for position, (key, label, drive, at_start, protected) in enumerate([
            ("one", "Disk 1 — Setup", "b", True, False), ("two", "Disk 2 — Data", "b", False, True),
            ("cd", "CD-ROM", "cd", False, False)]):
        ExhibitDisk.objects.create(exhibit=exhibit, position=position, label=label, drive=drive,
                                   in_drive_at_start=at_start, write_protected=protected,
                                   image=disk_image_import(made[key], name=made[key].name, agent="tests"))

    def disk_set(slug: str) -> list[tuple[Any, ...]]:
        return [(disk.position, disk.label, disk.drive, disk.in_drive_at_start, disk.write_protected,
                 disk.image.sha256) for disk in ExhibitDisk.objects.filter(exhibit__slug=slug)]

    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    listed = json.loads((bag_dir / "data" / "metadata" / "exhibit.json").read_text())
    assert [entry["role"] for entry in listed["masters"]].count("disk") == 3
    call_command("import_bag", str(bag_dir), "--slug", "again")
    assert disk_set("again") == disk_set("dos")
    assert Exhibit.objects.get(slug="again").machine_profile().disk_drives == ("b", "cd")

    # A derivative of the exhibit keeps the same set on the same masters.
    derived = derived_record(exhibit, made=DerivedImage(
        path=Path(exhibit.image.path), sha256=exhibit.image.sha256, stored_bytes=exhibit.image.size_bytes,
        guest_sha256=exhibit.image.guest_sha256, virtual_bytes=exhibit.image.virtual_size_bytes or 0),
        derivation=Derivation(slug="derived", title="Derived", flatten=True), agent="tests")
    assert disk_set(derived.slug) == disk_set("dos")
