"""The catalogue's masters: importing images into DiskImage rows and checking their fixity.

Owns: turning an accepted image (see `portal.importer`, which does the
untrusted-input work without Django) into a DiskImage row, and recording
fixity checks (in the record, `portal.record`). Must not: start machines or
write a stored master.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .importer import ImageError, ImportLimits, image_import, master_verify
from .models import DiskImage, Exhibit
from .record import SHA256, EventType, Outcome, event_record


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
                      detail: str = "") -> DiskImage:
    """Check an untrusted image, store it as a qcow2 master and record it (or find its twin);
    its ingestion goes into the record, by `agent`.

    Raises `portal.importer.ImageRejectedError` with the reason when refused;
    nothing is left in the store then.
    """
    stored = image_import(source, name=name, store=Path(settings.PORTAL_IMAGE_DIR),
                          limits=import_limits(), claim=claim)
    with transaction.atomic():
        image, created = DiskImage.objects.get_or_create(
            sha256=stored.sha256,
            defaults={
                "path": os.fspath(stored.path), "format": "qcow2", "size_bytes": stored.stored_bytes,
                "original_name": Path(name).name, "source_format": stored.source_format,
                "source_sha256": stored.source_sha256, "source_size_bytes": stored.source_bytes,
                "guest_sha256": stored.guest_sha256, "virtual_size_bytes": stored.virtual_bytes,
                "media": stored.media, "fixity": DiskImage.Fixity.OK,
                "fixity_checked_at": timezone.now(),
            },
        )
        if created:
            said = (f"{Path(name).name} ({stored.source_format}, source SHA-256 {stored.source_sha256}, "
                    f"guest SHA-256 {stored.guest_sha256}) checked and stored; the guest sees exactly "
                    "the original's bytes.")
            event_record(event_type=EventType.INGESTION, agent=agent, image=image, algorithm=SHA256,
                         digest=image.sha256, detail=" ".join(filter(None, [said, detail])))
    return image


class ImageInUseError(ImageError):
    """A master that something still needs: it is not deleted."""


def disk_image_delete(image: DiskImage, *, agent: str) -> None:
    """Delete a master that nothing uses: its row and its file; the record keeps a
    deletion row. Raises ImageInUseError, naming what needs it, otherwise."""
    users = [f"exhibit {slug}" for slug in image.exhibits.values_list("slug", flat=True)]
    users += [f"exhibit {slug} (extra medium)"
              for slug in image.extra_in.values_list("exhibit__slug", flat=True)]
    if users:
        raise ImageInUseError(f"{image} cannot be deleted: {', '.join(users)} use it.")
    path = Path(image.path)
    with transaction.atomic():
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
