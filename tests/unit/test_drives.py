"""The disk box's rules without a QEMU: a fake machine that answers query-block and
the medium commands as QEMU 7.2 does, including a CD tray the guest has locked."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessions.machines.drives import (
    BoxDisk,
    DiskBox,
    DiskDoesNotFitError,
    DiskNotFoundError,
    DriveNotFoundError,
    TrayLockedError,
    disk_id_parse,
    drive_name,
)
from sessions.machines.machine import MachineError
from sessions.machines.sandbox import Sandbox, SandboxConfig

CONFIG = SandboxConfig(qemu_img="qemu-img", checkpoints_max=5, media_max_bytes=1440 * 1024,
                       media_per_visit=10, job_timeout_s=10, read_timeout_s=10)


class FakeMachine:
    """B: holds the visitor's blank floppy; the CD drive is empty; a guest may lock its tray."""

    def __init__(self) -> None:
        self.locked = False
        self.inserted = {"floppy1": "#block100", "ide1-cd0": None}
        self.added: list[str] = []
        self.kept: list[str] = []

    async def block_devices(self) -> list[dict[str, Any]]:
        files = {"#block100": "/run/m/visitor-disk-0.qcow2"}
        return [{"device": name, "qdev": f"/machine/{name}", "removable": True,
                 **({"inserted": {"node-name": node, "file": files.get(node, "json:{}"),
                                  "ro": name != "floppy1"}} if node else {})}
                for name, node in self.inserted.items()]

    async def qcow2_add(self, node: str, path: Path, **_: Any) -> None:
        self.added.append(node)

    async def node_keep(self, node: str, *, keeper: str, read_only: bool = False) -> None:
        self.kept.append(node)

    async def medium_change(self, device: str, node: str | None, *, force: bool = True) -> None:
        name = device.rsplit("/", 1)[1]
        if name == "ide1-cd0" and self.locked and not force:
            raise MachineError("QMP blockdev-open-tray failed: Device 'ide1-cd0' is locked and force was not "
                               "specified, wait for tray to open and try again")
        self.inserted[name] = node

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        raise AssertionError(command)

    async def job_run(self, command: str, arguments: dict[str, Any], *, timeout_s: float) -> None:
        raise AssertionError(command)

    async def disk_snapshot(self, node: str, name: str) -> None:
        raise AssertionError(node)

    async def disk_snapshot_delete(self, node: str, name: str) -> None:
        raise AssertionError(node)


def box_with(machine: FakeMachine, run_dir: Path) -> DiskBox:
    master = ((Path("/images/master.qcow2"), "qcow2"),)
    disks = [BoxDisk(id="1", label="Disk 1", media="floppy", drive="b", at_start=True, master=master),
             BoxDisk(id="2", label="Disk 2", media="floppy", drive="b", write_protected=True, master=master),
             BoxDisk(id="3", label="CD-ROM", media="cdrom", drive="cd", master=master)]
    sandbox = Sandbox(machine=machine, run_dir=run_dir, config=CONFIG)
    sandbox.box = DiskBox(sandbox=sandbox, disks=disks, drive_names=("b", "cd"), boot_drive="a",
                          files_drive="b")
    for disk in disks:  # as the launcher makes them
        (run_dir / f"disk-{disk.id}.qcow2").touch()
    return sandbox.box


async def test_it_changes_disks_keeps_the_visitors_blank_disk_and_refuses_misfits(tmp_path: Path) -> None:
    machine = FakeMachine()
    box = box_with(machine, tmp_path)
    await box.start()
    assert box.drives() == [{"drive": "b", "disk": 1}, {"drive": "cd", "disk": None}]
    # The visitor's blank floppy, taken out for Disk 1, stays open to go back in.
    assert machine.kept == ["#block100"]
    assert [disk.id for disk in box.disk_list()] == ["1", "2", "3", "visitor-0"]
    await box.put("b", "visitor-0")
    assert box.drives()[0] == {"drive": "b", "disk": "visitor-0"}
    await box.put("b", "2")
    # A write-protected disk's layer is not among what checkpoints save; Disk 1's is.
    assert "disk-1" in box.sandbox.nodes
    assert "disk-2" not in box.sandbox.nodes
    assert {layer.disk: (layer.drive, layer.path.name, layer.writable) for layer in box.layers()} \
        == {"1": (None, "disk-1.qcow2", True), "2": ("b", "disk-2.qcow2", False),
            "visitor-0": (None, "visitor-disk-0.qcow2", True)}
    with pytest.raises(DiskDoesNotFitError):
        await box.put("b", "3")
    with pytest.raises(DriveNotFoundError):
        await box.put("a", "1")
    with pytest.raises(DiskNotFoundError):
        await box.put("cd", "99")
    await box.put("cd", "3")
    await box.put("b", None)
    assert box.drives() == [{"drive": "b", "disk": None}, {"drive": "cd", "disk": 3}]
    # Each layer was attached once, at its disk's first insertion.
    assert machine.added == ["disk-1", "disk-2", "disk-3"]


async def test_a_cd_tray_the_guest_locked_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    machine = FakeMachine()
    box = box_with(machine, tmp_path)
    await box.start()
    await box.put("cd", "3")
    machine.locked = True
    with pytest.raises(TrayLockedError) as refused:
        await box.put("cd", None)
    assert (refused.value.status, refused.value.code) == (409, "tray_locked")
    assert box.drives()[1] == {"drive": "cd", "disk": 3}
    # A floppy drive has no tray to lock.
    await box.put("b", None)


def test_it_reads_disk_ids_and_qemus_drive_names() -> None:
    assert disk_id_parse(None) is None
    assert disk_id_parse(7) == "7"
    assert disk_id_parse("visitor-1") == "visitor-1"
    for bad in (True, -1, 1.5, "", "../x", {"id": 1}, [1], "x" * 41):
        with pytest.raises(DiskNotFoundError):
            disk_id_parse(bad)
    names = ("floppy0", "floppy1", "ide1-cd0", "ide0-hd0")
    assert [drive_name(name) for name in names] == ["a", "b", "cd", None]
