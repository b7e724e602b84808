"""The catalogue's masters: importing images into DiskImage rows and checking their fixity.

Owns: turning an accepted image (see `portal.importer`, which does the
untrusted-input work without Django) into a DiskImage row, and recording
fixity checks. Must not: start machines or write a stored master.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .importer import ImportLimits, image_import, master_verify
from .models import DiskImage, FixityCheck


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


def disk_image_import(source: Path | BinaryIO, *, name: str, claim: str | None = None) -> DiskImage:
    """Check an untrusted image, store it as a qcow2 master and record it (or find its twin).

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
            FixityCheck.objects.create(image=image, ok=True,
                                       detail="Stored; the guest sees exactly the original's bytes.")
    return image


@dataclass(frozen=True)
class FixitySummary:
    checked: int
    failed: list[DiskImage]


def fixity_check_all() -> FixitySummary:
    """Re-hash every master and record each result. Never writes a master."""
    failed = []
    images = list(DiskImage.objects.order_by("pk"))
    for image in images:
        result = master_verify(Path(image.path), sha256=image.sha256)
        now = timezone.now()
        with transaction.atomic():
            FixityCheck.objects.create(image=image, ok=result.ok, detail=result.detail)
            DiskImage.objects.filter(pk=image.pk).update(
                fixity=DiskImage.Fixity.OK if result.ok else DiskImage.Fixity.FAILED,
                fixity_checked_at=now,
            )
        if not result.ok:
            failed.append(image)
    return FixitySummary(checked=len(images), failed=failed)
