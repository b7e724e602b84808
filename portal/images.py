"""The catalogue's masters: importing images into DiskImage rows and checking their fixity.

Owns: turning an accepted image (see `portal.importer`, which does the
untrusted-input work without Django) into a DiskImage row, and recording
fixity checks (in the record, `portal.record`). Must not: start machines or
write a stored master.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .derivation import DerivedImage, master_derive
from .importer import ImageError, ImportLimits, image_import, master_verify
from .models import DISK_FIELDS, DiskImage, Exhibit, ExhibitDisk, ExhibitMedia
from .record import SHA256, EventType, Outcome, event_record
from .versions import versions_citing, versions_withdraw


def import_limits() -> ImportLimits:
    return ImportLimits(
        max_file_bytes=settings.PORTAL_IMPORT_MAX_BYTES,
        max_virtual_bytes=settings.PORTAL_IMAGE_MAX_VIRTUAL_BYTES,
        free_margin_bytes=settings.PORTAL_IMAGE_FREE_MARGIN_BYTES,
        probe_cpu_s=settings.PORTAL_QEMU_IMG_CPU_S,
        probe_address_space_bytes=settings.PORTAL_QEMU_IMG_ADDRESS_SPACE_BYTES,
        probe_timeout_s=settings.PORTAL_QEMU_IMG_TIMEOUT_S,
        convert_cpu_s=settings.PORTAL_IMAGE_CONVERT_CPU_S,
        convert_address_space_bytes=settings.PORTAL_IMAGE_CONVERT_ADDRESS_SPACE_BYTES,
        convert_timeout_s=settings.PORTAL_IMAGE_CONVERT_TIMEOUT_S,
        qemu_img=settings.PORTAL_QEMU_IMG_BINARY,
    )


def disk_image_import(source: Path | BinaryIO, *, name: str, agent: str, claim: str | None = None,
                      detail: str = "", parent: DiskImage | None = None) -> DiskImage:
    """Check an untrusted image, store it as a qcow2 master and record it (or find its twin);
    its ingestion goes into the record, by `agent`. With `parent`, the image is a layer
    over that master (a derivative's, from a bag).

    Raises `portal.importer.ImageRejectedError` with the reason when refused;
    nothing is left in the store then.
    """
    stored = image_import(source, name=name, store=Path(settings.PORTAL_IMAGE_DIR),
                          limits=import_limits(), claim=claim,
                          parent=Path(parent.path) if parent is not None else None)
    with transaction.atomic():
        image, created = DiskImage.objects.get_or_create(
            sha256=stored.sha256,
            defaults={
                "path": os.fspath(stored.path), "format": "qcow2", "size_bytes": stored.stored_bytes,
                "original_name": Path(name).name, "source_format": stored.source_format,
                "source_sha256": stored.source_sha256, "source_size_bytes": stored.source_bytes,
                "guest_sha256": stored.guest_sha256, "virtual_size_bytes": stored.virtual_bytes,
                "media": parent.media if parent is not None else stored.media,
                "fixity": DiskImage.Fixity.OK, "fixity_checked_at": timezone.now(), "parent": parent,
                "chain": "+".join([*parent.layers(), stored.sha256]) if parent is not None else "",
            },
        )
        if created:
            said = (f"{Path(name).name} ({stored.source_format}, source SHA-256 {stored.source_sha256}, "
                    f"guest SHA-256 {stored.guest_sha256}) checked and stored; the guest sees exactly "
                    "the original's bytes.")
            event_record(event_type=EventType.INGESTION, agent=agent, image=image, algorithm=SHA256,
                         digest=image.sha256, detail=" ".join(filter(None, [said, detail])))
    return image


@dataclass(frozen=True)
class Derivation:
    """What to make of a visit's disk: the new exhibit's name, and a layer or a whole disk."""

    slug: str
    title: str
    flatten: bool = False


def derivation_work_dir() -> Path:
    """A private work directory inside the image store, for a visit's copy."""
    store = Path(settings.PORTAL_IMAGE_DIR)
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".derive-", dir=store))


def derivation_check(derivation: Derivation) -> None:
    """Refuse, before any work, a name the new exhibit cannot have (DerivationError)."""
    if not re.fullmatch(r"[-a-zA-Z0-9_]{1,50}", derivation.slug):
        raise DerivationError("The slug may hold letters, digits, hyphens and underscores only "
                              "(at most 50).")
    if Exhibit.objects.filter(slug=derivation.slug).exists():
        raise DerivationError(f"An exhibit with the slug {derivation.slug!r} exists already.")
    if not derivation.title.strip() or len(derivation.title) > 200:
        raise DerivationError("The title may not be empty or longer than 200 characters.")


def master_from_visit(exhibit: Exhibit, *, visit_copy: Path, flatten: bool) -> DerivedImage:
    """The qemu-img half of a derivation: no database, so it may run in any thread (it
    takes seconds to minutes, and must not hold the one the runtime's queries use).
    `visit_copy` is a private copy of the visit's overlay in a `derivation_work_dir`,
    consumed."""
    return master_derive(visit_copy=visit_copy, parent=Path(exhibit.image.path),
                         store=Path(settings.PORTAL_IMAGE_DIR), flatten=flatten, limits=import_limits())


def derived_record(exhibit: Exhibit, *, made: DerivedImage, derivation: Derivation, agent: str,
                   detail: str = "") -> Exhibit:
    """The database half: the new master's row (or its twin's), the draft exhibit on it,
    and the record's creation row."""
    derivation_check(derivation)
    parent = exhibit.image
    how = ("a whole disk (flattened)" if derivation.flatten
           else f"a layer over {parent.sha256} ({parent.original_name})")
    said = (f"Saved from a visit of {exhibit.slug} as {how}; the guest sees SHA-256 {made.guest_sha256}. "
            + detail).strip()
    with transaction.atomic():
        image, created = DiskImage.objects.get_or_create(sha256=made.sha256, defaults={
            "path": os.fspath(made.path), "format": "qcow2", "size_bytes": made.stored_bytes,
            "original_name": f"{exhibit.slug} derivative", "source_format": "qcow2",
            "guest_sha256": made.guest_sha256, "virtual_size_bytes": made.virtual_bytes,
            "media": parent.media, "fixity": DiskImage.Fixity.OK, "fixity_checked_at": timezone.now(),
            "parent": None if derivation.flatten else parent,
            "chain": "" if derivation.flatten else "+".join([*parent.layers(), made.sha256]),
        })
        derived = Exhibit.objects.create(
            **{field: getattr(exhibit, field) for field in DERIVED_FIELDS if field != "translations"},
            translations=description_translations(exhibit),
            slug=derivation.slug, title=derivation.title, image=image, published=False, parent=exhibit)
        for medium in ExhibitMedia.objects.filter(exhibit=exhibit).order_by("position", "pk"):
            ExhibitMedia.objects.create(exhibit=derived, image_id=medium.image_id, position=medium.position)
        # The whole disk set, as the curators arranged it: its masters are shared, unchanged.
        for disk in ExhibitDisk.objects.filter(exhibit=exhibit):
            ExhibitDisk.objects.create(exhibit=derived, **{name: getattr(disk, name) for name in DISK_FIELDS},
                                       image_id=disk.image_id)
        event_record(event_type=EventType.CREATION, agent=agent, image=image, exhibit=derived,
                     algorithm=SHA256, digest=image.sha256, related_sha256=parent.sha256,
                     detail=said if created else f"{said} The same master was stored already.")
    return derived


# The fields a derivative exhibit takes from the exhibit it was saved from.
DERIVED_FIELDS: tuple[str, ...] = (
    "year", "publisher", "description", "boot", "cpu", "memory_mb", "vga", "mouse", "sound_adlib",
    "sound_sb16", "accelerator", "speed", "files_in", "code_page", "keyboard", "printer", "paper",
    "provenance_source", "provenance_donor", "provenance_acquired", "provenance_notes", "thumbnail")
# A derivative keeps the translations of the description; its title is new (untranslated).
DERIVED_FIELDS += ("language", "translations")


def description_translations(exhibit: Exhibit) -> dict[str, dict[str, str]]:
    """The exhibit's translations without their titles (a derivative has a title of its own)."""
    given = exhibit.translations if isinstance(exhibit.translations, dict) else {}
    return {code: {"description": texts["description"]} for code, texts in given.items()
            if isinstance(texts, dict) and texts.get("description")}


class DerivationError(ImageError):
    """A derivative that cannot be made as asked; the message is a sentence for a person."""


class ImageInUseError(ImageError):
    """A master that something still needs: it is not deleted."""


def disk_image_delete(image: DiskImage, *, agent: str, force: bool = False) -> None:
    """Delete a master that nothing uses: its row and its file; the record keeps a
    deletion row. Raises ImageInUseError, naming what needs it, otherwise. A master
    that a cited version of an exhibit uses (portal.versions) is deleted only with
    `force`, and those versions then say they were withdrawn."""
    users = []
    for child in image.children.all():
        slugs = ", ".join(child.exhibits.values_list("slug", flat=True)) or "none"
        users.append(f"the derivative master {child} (exhibits: {slugs})")
    users += [f"exhibit {slug}" for slug in image.exhibits.values_list("slug", flat=True)]
    users += [f"exhibit {slug} (extra medium)"
              for slug in image.extra_in.values_list("exhibit__slug", flat=True)]
    users += [f"exhibit {slug} (its disk set)"
              for slug in image.in_disk_sets.values_list("exhibit__slug", flat=True)]
    if users:
        raise ImageInUseError(f"{image} cannot be deleted: {'; '.join(users)} build on it or use it.")
    cited = versions_citing(image)
    if cited and not force:
        names = ", ".join(f"{version.exhibit.slug} v{version.version}" for version in cited)
        raise ImageInUseError(f"{image} is used by cited versions of exhibits ({names}): deleting it "
                              "withdraws them. Delete it with force to do so.")
    path = Path(image.path)
    with transaction.atomic():
        if cited:
            versions_withdraw(image, reason=f"Its master {image.sha256} was deleted by {agent}.")
        event_record(event_type=EventType.DELETION, agent=agent, image=image, algorithm=SHA256,
                     digest=image.sha256, detail=f"{image.original_name or 'The master'} and its file "
                                                 "were deleted.")
        image.delete()
    path.unlink(missing_ok=True)


def exhibit_delete(exhibit: Exhibit, *, agent: str) -> None:
    """Delete an exhibit (its masters stay); the record keeps a deletion row."""
    with transaction.atomic():
        event_record(event_type=EventType.DELETION, agent=agent, exhibit=exhibit,
                     detail=f"The exhibit {exhibit.slug} ({exhibit.title}) was deleted; its masters stay.")
        exhibit.delete()


@dataclass(frozen=True)
class FixitySummary:
    checked: int
    failed: list[DiskImage]


def fixity_check_all(*, agent: str) -> FixitySummary:
    """Re-hash every master and record each result. Never writes a master."""
    failed = []
    images = list(DiskImage.objects.order_by("pk"))
    for image in images:
        result = master_verify(Path(image.path), sha256=image.sha256)
        now = timezone.now()
        with transaction.atomic():
            event_record(event_type=EventType.FIXITY_CHECK, agent=agent, image=image, algorithm=SHA256,
                         digest=result.digest, detail=result.detail,
                         outcome=Outcome.SUCCESS if result.ok else Outcome.FAILURE)
            DiskImage.objects.filter(pk=image.pk).update(
                fixity=DiskImage.Fixity.OK if result.ok else DiskImage.Fixity.FAILED,
                fixity_checked_at=now,
            )
        if not result.ok:
            failed.append(image)
    return FixitySummary(checked=len(images), failed=failed)
