"""The guest's keyboard layout as the catalogue keeps it: set by a curator, refused
when unknown (naming the known ones), carried by derivatives and bags, and shown
to visitors on the exhibit page and in the API."""
from __future__ import annotations

import json
from pathlib import Path

import bagit
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from portal.images import disk_image_import
from portal.models import Exhibit
from tests.conftest import FREEDOS_2048
from tests.integration.test_bags import derivative_make

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def exhibit(portal_dirs: Path) -> Exhibit:
    image = disk_image_import(FREEDOS_2048, name=FREEDOS_2048.name, agent="command import_image")
    return Exhibit.objects.create(slug="dos", title="FreeDOS", image=image, boot="floppy",
                                  keyboard="de", published=True)


def test_visitors_see_the_guests_layout_on_the_page_and_in_the_api(exhibit: Exhibit) -> None:
    browser = Client()
    assert browser.get("/api/exhibits/dos").json()["machine"]["keyboard"] == "de"
    assert "Keyboard: German (QWERTZ)." in browser.get("/exhibits/dos/").content.decode()


def test_an_unknown_layout_is_refused_naming_the_known_ones(exhibit: Exhibit, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"no keyboard layout called 'klingon'.*us, uk, de, fr"):
        call_command("add_exhibit", str(FREEDOS_2048), "--slug", "other", "--title", "Other",
                     "--keyboard", "klingon")
    assert not Exhibit.objects.filter(slug="other").exists()

    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    described = bag_dir / "data" / "metadata" / "exhibit.json"
    content = json.loads(described.read_text())
    assert content["exhibit"]["keyboard"] == "de"
    content["exhibit"]["keyboard"] = "klingon"
    described.write_text(json.dumps(content))
    bagit.Bag(str(bag_dir)).save(manifests=True)
    with pytest.raises(CommandError, match=r"keyboard: There is no keyboard layout called 'klingon'"):
        call_command("import_bag", str(bag_dir), "--slug", "again")


def test_derivatives_and_bags_carry_the_layout(exhibit: Exhibit, tmp_path: Path) -> None:
    child = derivative_make(exhibit, slug="dos-plus")
    assert child.keyboard == "de"
    bag_dir = tmp_path / "bag"
    call_command("export_bag", "dos", str(bag_dir))
    call_command("import_bag", str(bag_dir), "--slug", "dos-again")
    assert Exhibit.objects.get(slug="dos-again").keyboard == "de"
