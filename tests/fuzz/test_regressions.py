"""Every input a fuzz campaign ever found a fault with, replayed through its target:
each must now be refused (or accepted) cleanly. New ones appear here by themselves
when `make fuzz` keeps them in tests/fuzz/crashes/<target>/.

Also the importer's findings as the curator meets them: `manage.py import_image`
and the admin's upload refuse with the importer's sentence and keep nothing.
"""
from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from portal.importer import ImageRejectedError, ImportLimits, image_import
from tests.fuzz.harness import CORPUS_ROOT, CRASHES_ROOT, Target, case_checked, signature
from tests.fuzz.targets.importer import ImporterTarget
from tests.fuzz.targets.keys import KeysTarget
from tests.fuzz.targets.media import MediaTarget
from tests.fuzz.targets.rfb import RfbTarget

MIB = 1024 * 1024
LIMITS = ImportLimits(max_file_bytes=64 * MIB, max_virtual_bytes=256 * MIB)
VMDK_DESCRIPTOR_OFFSETS = sorted((CRASHES_ROOT / "importer").glob("vmdk-stream-descriptor-offset-*.vmdk"))


def inputs(target: str) -> list[Path]:
    directory = CRASHES_ROOT / target
    return sorted(path for path in directory.iterdir() if path.is_file()) if directory.exists() else []


def replayed(target: Target, paths: list[Path]) -> Iterator[tuple[Path, BaseException | None]]:
    target.setup()
    try:
        for path in paths:
            yield path, case_checked(target, path.read_bytes())
    finally:
        target.teardown()


def findings_of(target: Target, paths: list[Path]) -> list[str]:
    return [f"{path.name}: {signature(error)}: {error}" for path, error in replayed(target, paths)
            if error is not None]


def test_it_keeps_the_importer_crashes_and_seeds() -> None:
    assert len(VMDK_DESCRIPTOR_OFFSETS) == 3
    assert sum(path.stat().st_size for path in CORPUS_ROOT.rglob("*") if path.is_file()) < 8 * MIB


def test_it_refuses_every_importer_finding_cleanly() -> None:
    assert findings_of(ImporterTarget(), inputs("importer")) == []


@pytest.mark.parametrize("image", VMDK_DESCRIPTOR_OFFSETS, ids=lambda path: path.stem)
def test_it_refuses_a_vmdk_whose_descriptor_lies_past_its_end(image: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(ImageRejectedError) as refused:
        image_import(image, name=image.name, store=store, limits=LIMITS)
    assert refused.value.reason == "corrupt"
    assert "places its descriptor at sector" in str(refused.value)
    assert "outside the file" in str(refused.value)
    assert list(store.iterdir()) == []


def test_it_refuses_a_vmdk_whose_descriptor_has_a_bare_create_type_line(tmp_path: Path) -> None:
    """Found by the importer's harness: a descriptor line "createType" without "=" raised
    IndexError in the hand check."""
    image = CRASHES_ROOT / "importer" / "IndexError-importer-306-63190c0f5888"
    store = tmp_path / "store"
    with pytest.raises(ImageRejectedError) as refused:
        image_import(image, name="game.vmdk", store=store, limits=LIMITS)
    assert refused.value.reason == "vmdk_extent"
    assert list(store.iterdir()) == []


def test_it_refuses_a_qcow2_whose_feature_names_are_not_utf8(tmp_path: Path) -> None:
    """qemu-img quotes the image's feature names in its error; bytes that are not UTF-8
    raised UnicodeDecodeError reading its output."""
    image = CRASHES_ROOT / "importer" / "UnicodeDecodeError-qcow2-feature-name-not-utf8.qcow2"
    store = tmp_path / "store"
    with pytest.raises(ImageRejectedError) as refused:
        image_import(image, name="game.qcow2", store=store, limits=LIMITS)
    assert refused.value.reason == "corrupt"
    assert "Unsupported qcow2 feature(s): \ufffd\ufffd\ufffdbad" in str(refused.value)
    assert list(store.iterdir()) == []


def test_it_refuses_a_layer_whose_backing_name_lies_past_its_end(tmp_path: Path) -> None:
    """The same unbounded seek in the qcow2 check of a layer over a master (bags)."""
    store = tmp_path / "store"
    master = image_import(CORPUS_ROOT / "importer" / "qcow2-v3.qcow2", name="master.qcow2", store=store,
                          limits=LIMITS)
    layer = tmp_path / "layer.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", master.path.name,
                    os.fspath(layer), "64K"], check=True, timeout=60)
    for offset in (1 << 63, (1 << 64) - 1, 1 << 40):
        with layer.open("r+b") as handle:
            handle.seek(8)
            handle.write(struct.pack(">Q", offset))
        with pytest.raises(ImageRejectedError) as refused:
            image_import(layer, name="layer.qcow2", store=store, limits=LIMITS, parent=master.path)
        assert refused.value.reason == "corrupt"
        assert "backing file's name outside the file" in str(refused.value)
        assert sorted(path.name for path in store.iterdir()) == [master.path.name]


@pytest.mark.django_db
def test_import_image_says_why_a_vmdk_is_refused(portal_dirs: Path) -> None:
    from portal.models import DiskImage

    image = VMDK_DESCRIPTOR_OFFSETS[0]
    with pytest.raises(CommandError) as refused:
        call_command("import_image", os.fspath(image))
    assert str(refused.value).startswith(f"refused {image.name}: The VMDK header places its descriptor")
    assert not DiskImage.objects.exists()
    assert list((portal_dirs / "images").iterdir()) == []


@pytest.mark.django_db
def test_the_admin_upload_says_why_a_vmdk_is_refused(portal_dirs: Path, admin_client: Any) -> None:
    from portal.models import DiskImage

    image = VMDK_DESCRIPTOR_OFFSETS[1]
    with image.open("rb") as upload:
        response = admin_client.post("/admin/portal/diskimage/upload/", {"image": upload, "format": ""},
                                     follow=True)
    assert response.status_code == 200
    said = [str(message) for message in response.context["messages"]]
    assert len(said) == 1
    assert said[0].startswith(f"Refused {image.name}: The VMDK header places its descriptor")
    assert said[0].endswith("Nothing was kept.")
    assert not DiskImage.objects.exists()
    assert list((portal_dirs / "images").iterdir()) == []


def test_it_passes_every_rfb_finding_cleanly() -> None:
    assert findings_of(RfbTarget(), inputs("rfb")) == []


@pytest.mark.django_db(transaction=True)
def test_it_answers_every_keys_finding_cleanly(portal_dirs: Path) -> None:
    assert findings_of(KeysTarget(), inputs("keys")) == []


@pytest.mark.django_db(transaction=True)
def test_it_answers_every_media_finding_cleanly(portal_dirs: Path) -> None:
    assert findings_of(MediaTarget(), inputs("media")) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "expected"), [
    ("/api/exhibits", b'{"error": "bad_request", "detail": "The request\'s Content-Type header could not '
                      b'be read."}'),
    ("/", b"The request's Content-Type header could not be read."),
])
def test_it_answers_400_to_a_content_type_django_cannot_read(portal_dirs: Path, path: str,
                                                             expected: bytes) -> None:
    """A NUL in the charset, an RFC 2231 parameter in an unknown charset: Django raises
    ValueError making the request, before any view; every URL answered 500."""
    target = KeysTarget()
    target.setup()
    try:
        target.path = path
        for content_type in (b"text/plain; charset=utf-8\0", b"text/plain; a*=x-unknown''b"):
            status, body = target.loop.run_until_complete(target.post(content_type, b"{}"))
            assert (status, body) == (400, expected)
    finally:
        target.teardown()
