"""Add (or update) an exhibit from a raw disk image on this server.

The image is copied, never moved, into the master store under its SHA-256
(read-only, 0444), hashed as it streams. Running it again with the same slug
updates the exhibit; the same bytes are stored once.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from portal.models import DiskImage, Exhibit

CHUNK_BYTES = 1024 * 1024


def master_store(source: Path, *, store: Path) -> tuple[Path, str, int]:
    """Copy source into the store as <sha256>.raw, read-only. Returns path, digest, size."""
    store.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temporary_name = tempfile.mkstemp(dir=store, prefix=".incoming-")
    temporary = Path(temporary_name)
    try:
        with source.open("rb") as reader, os.fdopen(handle, "wb") as writer:
            while chunk := reader.read(CHUNK_BYTES):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        final = store / f"{digest.hexdigest()}.raw"
        if final.exists():
            temporary.unlink()
        else:
            os.chmod(temporary, 0o444)
            os.replace(temporary, final)
        return final, digest.hexdigest(), size
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class Command(BaseCommand):
    help = "Add or update an exhibit from a raw disk image (floppy or hard disk)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", type=Path, help="Path of a raw disk image on this server.")
        parser.add_argument("--slug", required=True)
        parser.add_argument("--title", required=True)
        parser.add_argument("--boot", choices=[c.value for c in Exhibit.Boot], default="floppy")
        parser.add_argument("--year", type=int)
        parser.add_argument("--publisher", default="")
        parser.add_argument("--description", default="")
        parser.add_argument("--memory-mb", type=int, default=16)
        parser.add_argument("--cpu", choices=[c.value for c in Exhibit.Cpu], default="486")
        parser.add_argument(
            "--accelerator", choices=[c.value for c in Exhibit.Accelerator], default="auto",
            help="auto: KVM where available; tcg: always software emulation.",
        )
        parser.add_argument("--publish", action="store_true", help="Make it visible to visitors.")

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["image"]
        if not source.is_file():
            raise CommandError(f"{source} is not a file")
        if source.stat().st_size == 0 or source.stat().st_size % 512:
            raise CommandError(f"{source} is not a raw disk image (size is not whole sectors)")
        path, digest, size = master_store(source, store=Path(settings.PORTAL_IMAGE_DIR))
        with transaction.atomic():
            image, _ = DiskImage.objects.get_or_create(
                sha256=digest,
                defaults={"path": os.fspath(path), "format": "raw", "size_bytes": size,
                          "original_name": source.name},
            )
            exhibit, created = Exhibit.objects.update_or_create(
                slug=options["slug"],
                defaults={
                    "title": options["title"],
                    "year": options["year"],
                    "publisher": options["publisher"],
                    "description": options["description"],
                    "image": image,
                    "boot": options["boot"],
                    "cpu": options["cpu"],
                    "memory_mb": options["memory_mb"],
                    "accelerator": options["accelerator"],
                    "published": options["publish"],
                },
            )
        action = "Added" if created else "Updated"
        state = "published" if exhibit.published else "draft"
        self.stdout.write(f"{action} exhibit {exhibit.slug} ({state}), master sha256 {digest}")
