from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.machines.overlay import (
    OverlayError,
    overlay_create,
    run_dir_create,
    run_dir_remove,
)
from tests.conftest import FREEDOS_2048, FREEDOS_2048_SHA256
from tests.support.guest import sha256_file


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ov-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def info(path: Path) -> dict[str, object]:
    output = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def test_it_makes_a_private_run_directory(root: Path) -> None:
    old = os.umask(0o022)
    try:
        path = run_dir_create(root=root, name="abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_it_refuses_a_run_directory_name_that_escapes(root: Path, name: str) -> None:
    with pytest.raises(OverlayError):
        run_dir_create(root=root, name=name)


async def test_it_backs_the_overlay_with_the_base_and_never_writes_the_base(root: Path) -> None:
    run_dir = run_dir_create(root=root, name="s1")
    overlay = run_dir / "disk.qcow2"
    await overlay_create(base_path=FREEDOS_2048, base_format="raw", overlay_path=overlay,
                         qemu_img="qemu-img", timeout_s=30)
    details = info(overlay)
    assert details["backing-filename"] == str(FREEDOS_2048)
    assert details["backing-filename-format"] == "raw"
    assert details["virtual-size"] == FREEDOS_2048.stat().st_size
    # A fresh overlay holds metadata only, not a copy of the disk.
    assert overlay.stat().st_size < 512 * 1024
    assert sha256_file(FREEDOS_2048) == FREEDOS_2048_SHA256
    run_dir_remove(run_dir)
    assert not run_dir.exists()


async def test_it_explains_a_missing_base_and_leaves_nothing(root: Path) -> None:
    run_dir = run_dir_create(root=root, name="s2")
    overlay = run_dir / "disk.qcow2"
    with pytest.raises(OverlayError, match="missing"):
        await overlay_create(base_path=root / "gone.img", base_format="raw",
                             overlay_path=overlay, qemu_img="qemu-img", timeout_s=30)
    assert list(run_dir.iterdir()) == []


async def test_it_reports_what_qemu_img_said_and_leaves_nothing(root: Path) -> None:
    run_dir = run_dir_create(root=root, name="s3")
    overlay = run_dir / "disk.qcow2"
    # Claiming the wrong format for the base is refused by qemu-img itself.
    with pytest.raises(OverlayError, match="could not create this visit's disk") as caught:
        await overlay_create(base_path=FREEDOS_2048, base_format="vmdk",
                             overlay_path=overlay, qemu_img="qemu-img", timeout_s=30)
    assert "/" not in str(caught.value)
    assert "vmdk" in caught.value.log_detail.lower()
    assert list(run_dir.iterdir()) == []


async def test_it_explains_a_missing_qemu_img(root: Path) -> None:
    run_dir = run_dir_create(root=root, name="s4")
    with pytest.raises(OverlayError, match="not installed"):
        await overlay_create(base_path=FREEDOS_2048, base_format="raw",
                             overlay_path=run_dir / "disk.qcow2",
                             qemu_img="/nonexistent/qemu-img", timeout_s=30)
