"""Import an untrusted disk image from a path on this server as a preservation master.

The image is checked (real format, no backing or data file, no foreign
extent, no encryption, size limits), converted to a read-only qcow2 under its
SHA-256 and proven to hold exactly the original's bytes. Refused images leave
nothing behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.images import disk_image_import
from portal.importer import QEMU_FORMATS, ImageError
from portal.record import agent_command


class Command(BaseCommand):
    help = "Import a disk image (raw, qcow2, VMDK, VDI, VHD, VHDX or ISO) as a master."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", type=Path, help="Path of the image on this server.")
        parser.add_argument("--format", choices=sorted(QEMU_FORMATS),
                            help="The image's format (vpc is VHD); default: from its name. "
                                 "The contents must match it.")

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["image"]
        if not source.is_file():
            raise CommandError(f"{source} is not a file")
        try:
            image = disk_image_import(source, name=source.name, claim=options["format"],
                                      agent=agent_command("import_image"))
        except ImageError as error:
            raise CommandError(f"refused {source.name}: {error}") from error
        self.stdout.write(
            f"Imported {source.name} as disk image {image.pk} ({image.get_media_display()}, "
            f"{image.virtual_size_bytes} bytes), master {image.path}, "
            f"source sha256 {image.source_sha256}, guest sha256 {image.guest_sha256}"
        )
