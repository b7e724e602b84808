"""Import an exhibit from a BagIt bag, as untrusted input.

Every file must match both manifests; every master then goes through the same
checked import as any curator's image; the exhibit is made as a draft. A bag
that fails any of it is refused with a sentence and nothing of it is kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.bags import BagError, bag_import
from portal.record import agent_command


class Command(BaseCommand):
    help = "Import an exhibit (as a draft) from a BagIt bag made by export_bag."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="The bag's directory.")
        parser.add_argument("--slug", help="Import under this slug instead of the bag's.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            imported = bag_import(options["directory"], agent=agent_command("import_bag"),
                                  slug=options["slug"])
        except BagError as error:
            raise CommandError(f"refused the bag: {error}") from error
        exhibit = imported.exhibit
        self.stdout.write(f"Imported {exhibit.slug} ({exhibit.title}) as a draft with "
                          f"{len(imported.masters)} master(s); master {exhibit.image.sha256}.")
