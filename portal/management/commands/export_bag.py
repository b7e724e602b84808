"""Write an exhibit as a BagIt 1.0 bag: its masters, metadata, thumbnail and record.

The bag gets SHA-256 and SHA-512 manifests and a bag-info.txt with the
exhibit's provenance; the export is recorded (replication) in the exhibit's record.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.bags import BagError, bag_export
from portal.models import Exhibit
from portal.record import agent_command


class Command(BaseCommand):
    help = "Export an exhibit as a BagIt bag into a new directory."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The exhibit's slug.")
        parser.add_argument("directory", type=Path, help="A new (or empty) directory for the bag.")

    def handle(self, *args: Any, **options: Any) -> None:
        exhibit = Exhibit.objects.select_related("image").filter(slug=options["slug"]).first()
        if exhibit is None:
            raise CommandError(f"there is no exhibit {options['slug']!r}")
        try:
            bag = bag_export(exhibit, options["directory"], agent=agent_command("export_bag"))
        except BagError as error:
            raise CommandError(str(error)) from error
        size, _, files = str(bag.info.get("Payload-Oxum", "?.?")).partition(".")
        self.stdout.write(f"Exported {exhibit.slug} as a BagIt bag in {bag.path} "
                          f"({files} files, {size} bytes of payload).")
