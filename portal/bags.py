"""Exhibits as BagIt 1.0 bags: exporting one, and importing one as untrusted input.

Owns: the bag's layout and metadata, writing it with the Library of Congress's
`bagit` (SHA-256 and SHA-512 manifests, `bag-info.txt` with the exhibit's
provenance), and reading one back: every file checked against its manifests
first, then every master through the same checked import as any curator's
image (`portal.images.disk_image_import`), the exhibit's fields checked like
a form's, and the bag's record kept as the start of the exhibit's record.

    <bag>/bagit.txt, bag-info.txt, manifest-sha256.txt, manifest-sha512.txt, tagmanifest-….txt
    <bag>/data/masters/<sha256>.qcow2     the exhibit's master and its extra media, as stored,
                                         with every layer under each (a derivative's chain)
    <bag>/data/metadata/exhibit.json     the exhibit: description, provenance, machine, masters
    <bag>/data/metadata/record.json      its fixity and provenance record, oldest first
    <bag>/data/thumbnail/<sha256>.png    its thumbnail, if it has one

A master's stored form is what the importer makes of its contents (a zstd-
compressed qcow2), and the importer makes the same file of it again, so an
imported master has the exported one's SHA-256: the round trip is bit-exact.
A derivative's layer names its parent by content address and is imported over
it, after it, by the same importer (which then allows exactly that backing file).

Must not: start machines, or trust anything in a bag before its manifests and
the importer have said yes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import bagit
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .images import disk_image_import
from .importer import ImageError
from .models import (
    DISK_FIELDS,
    DiskImage,
    Exhibit,
    ExhibitDisk,
    ExhibitMedia,
    PreservationEvent,
    extra_media_place,
)
from .record import SHA256, EventType, Outcome, event_record, exhibit_record, record_json

BAG_FORMAT = "portal-exhibit-bag/1"
CHECKSUMS = ["sha256", "sha512"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The exhibit's own fields a bag carries (and an import sets), beside its masters.
EXHIBIT_FIELDS: tuple[str, ...] = (
    "slug", "title", "year", "publisher", "description", "boot", "cpu", "memory_mb", "vga", "mouse",
    "sound_adlib", "sound_sb16", "accelerator", "speed", "files_in", "code_page", "keyboard",
    "printer", "paper", "provenance_source", "provenance_donor", "provenance_acquired", "provenance_notes")
# The title and description in more languages, and the language of the originals.
EXHIBIT_FIELDS += ("language", "translations")
MASTER_FIELDS = ("sha256", "original_name", "source_format", "source_sha256", "source_size_bytes",
                 "guest_sha256", "virtual_size_bytes", "media")


class BagError(Exception):
    """A bag that cannot be written or is refused; the message is a sentence for a person."""


@dataclass(frozen=True)
class Imported:
    exhibit: Exhibit
    masters: list[DiskImage]


def _master_json(image: DiskImage, role: str, parent: str | None) -> dict[str, Any]:
    return {"role": role, "file": f"masters/{image.sha256}.qcow2", "parent": parent,
            **{name: getattr(image, name) for name in MASTER_FIELDS}}


def bag_files(exhibit: Exhibit, media: list[DiskImage],
              disks: list[DiskImage] | None = None) -> list[tuple[DiskImage, str, str | None]]:
    """Every master file the bag holds, in the order an import takes them (each layer
    after the one it is built on), with its role (boot, extra, disk or layer) and parent."""
    files: list[tuple[DiskImage, str, str | None]] = []
    seen: set[str] = set()
    for top, role in [(exhibit.image, "boot"), *[(image, "extra") for image in media],
                      *[(image, "disk") for image in disks or []]]:
        layers = {row.sha256: row for row in DiskImage.objects.filter(sha256__in=top.layers())}
        chain = [layers[sha] for sha in top.layers()]
        for depth, image in enumerate(chain):
            is_top = depth == len(chain) - 1
            if image.sha256 in seen and (not is_top or role == "disk"):
                continue
            seen.add(image.sha256)
            files.append((image, role if is_top else "layer", chain[depth - 1].sha256 if depth else None))
    return files


def _exhibit_json(exhibit: Exhibit, files: list[tuple[DiskImage, str, str | None]]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: getattr(exhibit, name) for name in EXHIBIT_FIELDS}
    if isinstance(fields["provenance_acquired"], date):
        fields["provenance_acquired"] = fields["provenance_acquired"].isoformat()
    return {"format": BAG_FORMAT, "exhibit": fields,
            "masters": [_master_json(image, role, parent) for image, role, parent in files],
            # The disk set, in order: each disk names its master (role "disk") by SHA-256.
            "disks": [{"sha256": disk.image.sha256, **{name: getattr(disk, name) for name in DISK_FIELDS}}
                      for disk in ExhibitDisk.objects.filter(exhibit=exhibit).select_related("image")],
            "thumbnail": f"thumbnail/{exhibit.thumbnail}" if exhibit.thumbnail else None}


def bag_export(exhibit: Exhibit, directory: Path, *, agent: str) -> bagit.Bag:
    """Write the exhibit as a bag into `directory` (new, or empty) and record it."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BagError(f"{directory} exists and is not an empty directory; name a new one.")
    media = [medium.image for medium in ExhibitMedia.objects.filter(exhibit=exhibit)
             .select_related("image").order_by("position", "pk")]
    disks = [disk.image for disk in ExhibitDisk.objects.filter(exhibit=exhibit).select_related("image")]
    files = bag_files(exhibit, media, disks)
    masters = [image for image, _, _ in files]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        (directory / "masters").mkdir()
        (directory / "metadata").mkdir()
        for image in masters:
            target = directory / "masters" / f"{image.sha256}.qcow2"
            if not target.exists():
                shutil.copyfile(image.path, target)
        if exhibit.thumbnail:
            (directory / "thumbnail").mkdir()
            shutil.copyfile(settings.PORTAL_THUMBNAIL_DIR / exhibit.thumbnail,
                            directory / "thumbnail" / exhibit.thumbnail)
        (directory / "metadata" / "exhibit.json").write_text(
            json.dumps(_exhibit_json(exhibit, files), indent=2, ensure_ascii=False) + "\n")
        record = record_json(exhibit_record(exhibit, images=masters))
        (directory / "metadata" / "record.json").write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        bag = bagit.make_bag(os.fspath(directory), _bag_info(exhibit), checksums=CHECKSUMS)
    except OSError as error:
        shutil.rmtree(directory, ignore_errors=True)
        raise BagError(f"The bag could not be written: {error.strerror or error}.") from error
    for image in masters:
        event_record(event_type=EventType.REPLICATION, agent=agent, image=image, exhibit=exhibit,
                     algorithm=SHA256, digest=image.sha256,
                     detail=f"Copied into the BagIt bag {directory} (manifests SHA-256 and SHA-512).")
    return bag


def _bag_info(exhibit: Exhibit) -> dict[str, str]:
    info = {
        "Source-Organization": settings.PORTAL_BAG_ORGANIZATION,
        "External-Identifier": exhibit.slug,
        "External-Description": exhibit.title + (f" ({exhibit.year})" if exhibit.year else ""),
        "Exhibit-Master-SHA256": exhibit.image.sha256,
        "Exhibit-Guest-SHA256": exhibit.image.guest_sha256,
        "Provenance-Source": exhibit.provenance_source,
        "Provenance-Donor": exhibit.provenance_donor,
        "Provenance-Acquired": exhibit.provenance_acquired.isoformat() if exhibit.provenance_acquired else "",
        "Provenance-Notes": " ".join(exhibit.provenance_notes.split()),
        "Portal-Bag-Format": BAG_FORMAT,
    }
    return {key: value for key, value in info.items() if value}


# --- import -------------------------------------------------------------------------


def bag_import(directory: Path, *, agent: str, slug: str | None = None) -> Imported:
    """Validate a bag, import its masters through the checked importer and make its
    exhibit (a draft); BagError with a sentence if anything is wrong. Nothing of a
    refused bag is kept."""
    bag = bag_validated(directory)
    data = Path(bag.path) / "data"
    described = _metadata(data)
    fields = _exhibit_fields(described.get("exhibit"), slug=slug)
    listed = described.get("masters")
    if not isinstance(listed, list) or not all(isinstance(entry, dict) for entry in listed) \
            or [entry.get("role") for entry in listed].count("boot") != 1:
        raise BagError("The bag's exhibit.json does not list one boot master.")
    imported: dict[str, DiskImage] = {}
    tops: list[DiskImage] = []
    created: list[DiskImage] = []
    try:
        for entry in listed:
            parent_sha = entry.get("parent")
            if parent_sha is not None and parent_sha not in imported:
                raise BagError("The bag's exhibit.json lists a layer before the master it is built on.")
            image, new = _master_import(data, entry, agent=agent,
                                        parent=imported[parent_sha] if parent_sha is not None else None)
            imported[image.sha256] = image
            if new:
                created.append(image)
            if entry.get("role") == "boot":
                tops.insert(0, image)
            elif entry.get("role") == "extra":
                tops.append(image)
        masters = list(imported.values())
        disks = _disks_described(described.get("disks"), imported)
        exhibit = _exhibit_make(fields, tops, data=data, described=described, agent=agent, bag=bag,
                                disks=disks)
    except BaseException:
        for image in reversed(created):  # refused: the store keeps nothing new (layers first)
            _master_forget(image, fresh=True)
        raise
    return Imported(exhibit=exhibit, masters=masters)


def _disks_described(listed: object, imported: dict[str, DiskImage]) -> list[dict[str, Any]]:
    """The bag's disk set as rows to make: each disk's fields and its imported master."""
    if listed is None:
        return []
    if not isinstance(listed, list) or not all(isinstance(entry, dict) for entry in listed):
        raise BagError("The bag's exhibit.json lists its disk set wrongly.")
    disks = []
    for entry in listed:
        image = imported.get(str(entry.get("sha256")))
        label, drive = entry.get("label"), entry.get("drive")
        if image is None or not isinstance(label, str) or not 0 < len(label) <= 80 \
                or drive not in ExhibitDisk.Drive.values:
            raise BagError("A disk of the bag's disk set names no master of the bag, or no label or drive.")
        disks.append({"image": image, "label": label, "drive": drive,
                      "position": int(entry.get("position") or 0),
                      "in_drive_at_start": entry.get("in_drive_at_start") is True,
                      "write_protected": entry.get("write_protected") is True})
    return disks


def _master_forget(image: DiskImage, *, fresh: bool) -> None:
    """Take back a master a refused bag brought in (nothing else uses it), with its record."""
    if not fresh or image.exhibits.exists() or image.extra_in.exists() or image.in_disk_sets.exists() \
            or image.children.exists():
        return
    path = Path(image.path)
    PreservationEvent.objects.filter(image=image).delete()
    image.delete()
    path.unlink(missing_ok=True)


def bag_validated(directory: Path) -> bagit.Bag:
    """The bag, once every file in it matches both manifests; BagError otherwise."""
    if not directory.is_dir():
        raise BagError(f"{directory} is not a directory.")
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise BagError(f"The bag is refused: {path.relative_to(directory)} is not a plain file "
                           "or directory.")
    try:
        bag = bagit.Bag(os.fspath(directory))
        missing = [name for name in CHECKSUMS if name not in bag.algorithms]
        if missing:
            raise BagError(f"The bag is refused: it has no {' or '.join(missing).upper()} manifest.")
        bag.validate(processes=1)
    except bagit.BagValidationError as error:
        problems = "; ".join(str(detail) for detail in error.details[:3]) or str(error)
        more = f" (and {len(error.details) - 3} more)" if len(error.details) > 3 else ""
        raise BagError(f"The bag is invalid or was changed since it was made: {problems}{more}.") \
            from error
    except bagit.BagError as error:
        raise BagError(f"This is not a valid BagIt bag: {error}.") from error
    return bag


def _metadata(data: Path) -> dict[str, Any]:
    try:
        described = json.loads((data / "metadata" / "exhibit.json").read_text())
    except FileNotFoundError:
        raise BagError("The bag has no metadata/exhibit.json: it is not an exhibit's bag.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BagError(f"The bag's exhibit.json is not JSON: {error}.") from error
    if not isinstance(described, dict) or described.get("format") != BAG_FORMAT:
        raise BagError(f"The bag's exhibit.json is not of the form {BAG_FORMAT}.")
    return described


def _exhibit_fields(given: Any, *, slug: str | None) -> dict[str, Any]:
    """The exhibit's fields from the bag, checked as the admin's form would check them."""
    if not isinstance(given, dict):
        raise BagError("The bag's exhibit.json has no exhibit.")
    fields = {name: given.get(name) for name in EXHIBIT_FIELDS if given.get(name) is not None}
    if slug:
        fields["slug"] = slug
    acquired = fields.get("provenance_acquired")
    if isinstance(acquired, str):
        try:
            fields["provenance_acquired"] = date.fromisoformat(acquired)
        except ValueError:
            raise BagError("The bag's exhibit.json has a date acquired that is not a date.") from None
    if not translations_valid(fields.get("translations", {})):
        raise BagError("The bag's exhibit.json has translations that are not a title and a description "
                       "(each text of at most 200 and 100,000 characters) by language code.")
    if Exhibit.objects.filter(slug=fields.get("slug", "")).exists():
        raise BagError(f"An exhibit with the slug {fields.get('slug')!r} exists already; import the "
                       "bag under another slug (--slug).")
    return fields


def translations_valid(translations: Any) -> bool:
    """Whether an exhibit's translations have the form {"de": {"title": …, "description": …}}."""
    if not isinstance(translations, dict):
        return False
    for code, texts in translations.items():
        if not (isinstance(code, str) and 0 < len(code) <= 16 and isinstance(texts, dict)):
            return False
        for field, text in texts.items():
            if field not in TRANSLATION_LIMITS or not isinstance(text, str) or \
                    len(text) > TRANSLATION_LIMITS[field]:
                return False
    return True


TRANSLATION_LIMITS = {"title": 200, "description": 100_000}


def _master_import(data: Path, entry: Any, *, agent: str,
                   parent: DiskImage | None) -> tuple[DiskImage, bool]:
    if not isinstance(entry, dict) or not _SHA256.fullmatch(str(entry.get("sha256", ""))):
        raise BagError("The bag's exhibit.json names a master without its SHA-256.")
    sha256 = entry["sha256"]
    path = data / "masters" / f"{sha256}.qcow2"
    if not path.is_file():
        raise BagError(f"The bag has no file for the master {sha256}.")
    began = timezone.now()
    try:
        image = disk_image_import(path, name=str(entry.get("original_name") or path.name), claim="qcow2",
                                  agent=agent, detail="From a BagIt bag.", parent=parent)
    except ImageError as error:
        raise BagError(f"The bag's master {sha256} was refused: {error}") from error
    # Stored by this import (not a master the portal had already).
    new = image.created_at >= began
    problem = ""
    if entry.get("guest_sha256") and image.guest_sha256 != entry["guest_sha256"]:
        problem = (f"The bag's master {sha256} does not hold what its exhibit.json says: the guest "
                   f"sees SHA-256 {image.guest_sha256}, not {entry['guest_sha256']}.")
    elif image.sha256 != sha256:
        problem = (f"The bag's master {sha256} became {image.sha256} when imported: it is not a "
                   "master as this portal stores them.")
    if problem:
        _master_forget(image, fresh=new)
        raise BagError(problem)
    # What the bag knows of the original beyond the master itself.
    known = {name: entry[name] for name in ("original_name", "source_format", "source_sha256",
                                            "source_size_bytes") if entry.get(name)}
    if new and known:
        DiskImage.objects.filter(pk=image.pk).update(**known)
        image.refresh_from_db()
    return image, new


def _exhibit_make(fields: dict[str, Any], masters: list[DiskImage], *, data: Path,
                  described: dict[str, Any], agent: str, bag: bagit.Bag,
                  disks: list[dict[str, Any]]) -> Exhibit:
    thumbnail = _thumbnail_import(data, described.get("thumbnail"))
    with transaction.atomic():
        exhibit = Exhibit(**fields, image=masters[0], thumbnail=thumbnail, published=False)
        try:
            exhibit.full_clean()
        except ValidationError as error:
            problems = "; ".join(f"{name}: {' '.join(message.rstrip('.') for message in messages)}"
                                 for name, messages in error.message_dict.items())
            raise BagError(f"The bag's exhibit is not one this portal takes: {problems}.") from error
        exhibit.save()
        # Media of a bag from before disk sets: floppies and CDs join the disk set.
        extra_media_place(exhibit, masters[1:])
        for disk in disks:
            ExhibitDisk.objects.create(exhibit=exhibit, **disk)
        exhibit.refresh_from_db()
        try:
            exhibit.machine_profile()
        except ValueError as error:
            raise BagError(f"The bag's media do not fit the PC: {error}.") from error
        _record_import(exhibit, masters, data=data, agent=agent, bag=bag)
    return exhibit


def _thumbnail_import(data: Path, named: Any) -> str:
    if not named:
        return ""
    name = Path(str(named)).name
    path = data / "thumbnail" / name
    if not re.fullmatch(r"[0-9a-f]{64}\.png", name) or not path.is_file():
        raise BagError("The bag's exhibit.json names a thumbnail the bag does not hold.")
    content = path.read_bytes()
    if not content.startswith(_PNG_MAGIC):
        raise BagError("The bag's thumbnail is not a PNG picture.")
    name = f"{hashlib.sha256(content).hexdigest()}.png"
    settings.PORTAL_THUMBNAIL_DIR.mkdir(parents=True, exist_ok=True)
    target = settings.PORTAL_THUMBNAIL_DIR / name
    if not target.exists():
        with tempfile.NamedTemporaryFile(dir=settings.PORTAL_THUMBNAIL_DIR, delete=False) as handle:
            handle.write(content)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, target)
    return name


def _record_import(exhibit: Exhibit, masters: list[DiskImage], *, data: Path, agent: str,
                   bag: bagit.Bag) -> None:
    """The bag's record becomes the start of the exhibit's (each row as it was, said to
    come from the bag), then the validation of the bag itself."""
    try:
        rows = json.loads((data / "metadata" / "record.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        rows = []
    named = {str(row.get("image_sha256", "")) for row in rows if isinstance(row, dict)} \
        if isinstance(rows, list) else set()
    by_sha = {image.sha256: image for image in DiskImage.objects.filter(sha256__in=named)}
    types = set(EventType.values)
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or row.get("event_type") not in types:
            continue
        try:
            at = datetime.fromisoformat(str(row.get("at")))
        except ValueError:
            continue
        if timezone.is_naive(at):
            at = timezone.make_aware(at, UTC)
        sha = str(row.get("image_sha256", ""))[:64]
        PreservationEvent.objects.create(
            event_type=row["event_type"], at=at, agent=str(row.get("agent", ""))[:200],
            outcome=Outcome.FAILURE if row.get("outcome") == Outcome.FAILURE else Outcome.SUCCESS,
            algorithm=str(row.get("algorithm", ""))[:16], digest=str(row.get("digest", ""))[:128],
            detail=f"Recorded before the bag was made: {row.get('detail', '')}",
            image=by_sha.get(sha), image_sha256=sha, exhibit=exhibit,
            exhibit_slug=exhibit.slug, related_sha256=str(row.get("related_sha256", ""))[:64])
    tag_digest = bag.entries.get("manifest-sha256.txt", {}).get("sha256", "")
    event_record(event_type=EventType.VALIDATION, agent=agent, exhibit=exhibit, algorithm=SHA256,
                 digest=tag_digest,
                 detail=f"The BagIt bag {bag.path} was valid (SHA-256 and SHA-512 manifests); "
                        f"{len(masters)} master(s) imported through the checked importer. The digest is "
                        "that of its manifest-sha256.txt.")
