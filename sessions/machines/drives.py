"""The disk box of one running machine: which disk is in each of its drives, and
changing them while the guest runs.

Owns, for one machine (a reset makes a new one): the disks a visitor may put in
(the exhibit's disk set, the disk it boots from when that drive is in the box, and
the visitor's own files disks), each disk's throwaway layer (a qcow2 over its
master, `layer_file_create`; the launcher makes the files beside the machine's
overlay), attached when the disk first goes in (opened through descriptors) and
kept attached for the machine's life, so what the guest wrote to "Disk 2" is there when Disk 2
goes back in, and a checkpoint saves every layer; and the changes themselves
(through the sandbox's one way of changing a drive's disk, `Sandbox.medium_put`),
a CD tray the guest locked refused. A
write-protected disk's layer is opened read-only: the guest's writes fail as with
the tab. `layers()` lists every disk layer of the machine in one place.

Must not: decide whether a visit may change disks (the node does), import
Django, or write to a master (every layer is made over it, read-only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessions.errors import SessionError, gettext_noop
from sessions.machines.machine import FILES_DISK, MachineError
from sessions.machines.sandbox import FatDisk, Sandbox, qemu_img

# What each drive of the box is called in the API, and the kind of disk it takes.
DRIVE_MEDIA = {"a": "floppy", "b": "floppy", "cd": "cdrom"}
BOOT_DISK = "boot"
# The visitor's own files disks: "visitor-0" is the blank floppy of the drive for
# them, "visitor-N" the N-th disk of files brought in.
VISITOR_PREFIX = "visitor-"
LAYER_PREFIX = "disk-"
# What the box calls the visitor's blank disk and the disks of their files (the web
# edge translates them).
VISITOR_LABELS = (gettext_noop("Blank disk for your files"), gettext_noop("Your files"))


class DriveError(SessionError):
    """A disk change the box refuses; the message is for the visitor."""

    code = "not_found"
    status = 404


class DriveNotFoundError(DriveError):
    def __init__(self, drive: str) -> None:
        super().__init__(gettext_noop("This machine has no drive called %(drive)s."), drive=drive[:10])


class DiskNotFoundError(DriveError):
    def __init__(self) -> None:
        super().__init__(gettext_noop("There is no such disk in this exhibit's disk box."))


class DiskDoesNotFitError(DriveError):
    code = "disk_does_not_fit"
    status = 400

    def __init__(self) -> None:
        super().__init__(gettext_noop("That disk does not fit this drive: a CD goes into the CD drive, "
                                      "a floppy into A: or B:."))


class TrayLockedError(DriveError):
    code = "tray_locked"
    status = 409
    retry_after_s = 2

    def __init__(self) -> None:
        super().__init__(gettext_noop("The program running on the machine has locked the CD drive's "
                                      "tray. Leave the program (or eject the CD from it) first."))


class DriveChangeError(DriveError):
    code = "drive_failed"
    status = 503
    retry_after_s = 2

    def __init__(self) -> None:
        super().__init__(gettext_noop("The disk could not be changed; please try again."))


@dataclass(frozen=True)
class BoxDisk:
    """One disk a visitor may put into the machine's drives."""

    # The exhibit's disk id (digits), "boot", "visitor-N", or "vN" (the Nth disk of a
    # cited earlier version's disk set).
    id: str
    label: str
    # "floppy" or "cdrom"
    media: str
    # The drive it belongs in, and whether it is in it when the machine starts.
    drive: str
    write_protected: bool = False
    at_start: bool = False
    # Its master, top layer first, each (file, format): what its layer is made over.
    master: tuple[tuple[Path, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"id": int(self.id) if self.id.isdigit() else self.id, "label": self.label,
                "media": self.media, "drive": self.drive, "write_protected": self.write_protected}


@dataclass(frozen=True)
class DiskLayer:
    """A disk's throwaway layer in the run directory: what a saved visit must carry."""

    disk: str
    drive: str | None
    path: Path
    node: str
    writable: bool


def disk_id_parse(value: object) -> str | None:
    """The box's id for a disk named in a request (a number or a string), or None for
    "empty the drive". Anything else raises DiskNotFoundError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DiskNotFoundError()
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= 40 and value.replace("-", "").isalnum():
        return value
    raise DiskNotFoundError()


@dataclass
class DiskBox:
    """The drives of one machine and the disks that go into them."""

    sandbox: Sandbox
    # The exhibit's disks (its set, and the boot disk where its drive is in the box).
    disks: list[BoxDisk]
    # The box's drives, in order ("a", "b", "cd").
    drive_names: tuple[str, ...]
    # The drive the machine boots from ("a", "cd") and the one visitors' files go into.
    boot_drive: str | None = None
    files_drive: str | None = None
    # Each disk's node once it has one, and its layer.
    nodes: dict[str, str] = field(default_factory=dict)
    layers_made: dict[str, Path] = field(default_factory=dict)
    # The drive names' QEMU drives (BlockBackend names, "floppy1", "ide1-cd0").
    devices: dict[str, str] = field(default_factory=dict)
    # Its at-start disks put in (or a saved visit's drives given back): done once.
    started: bool = False

    @property
    def machine(self) -> Any:
        return self.sandbox.machine

    # --- what is where ----------------------------------------------------------------

    def _all_disks(self) -> list[BoxDisk]:
        """The exhibit's disks and the visitor's own, in the order the box shows them."""
        visitor = [BoxDisk(id=f"{VISITOR_PREFIX}{number}", media="floppy", drive=self.files_drive or "b",
                           label=VISITOR_LABELS[min(number, 1)])
                   for number in range(self.sandbox.media_count + 1)
                   if f"{VISITOR_PREFIX}{number}" in self.nodes]
        return [*self.disks, *visitor]

    async def describe(self) -> None:
        """Learn the machine's drives and the disks in them at start (once)."""
        if self.devices:
            return
        await self.sandbox.describe()
        for name, node in self.sandbox.held.items():
            drive = drive_name(name)
            if drive is None or drive not in self.drive_names:
                continue
            self.devices[drive] = name
            if node is None:
                continue
            if drive == self.boot_drive:
                self.nodes[BOOT_DISK] = node
            elif self.sandbox.node_files.get(node, Path()).name == FILES_DISK:
                self.nodes[f"{VISITOR_PREFIX}0"] = node
        self._visitor_disks()

    def _visitor_disks(self) -> None:
        """The visitor's files disks brought in since: disks of the box too."""
        for number, node in self.sandbox.media_nodes.items():
            self.nodes[f"{VISITOR_PREFIX}{number}"] = node

    def drives(self) -> list[dict[str, Any]]:
        """Each drive of the box and the disk in it (None when empty)."""
        self._visitor_disks()
        by_node = {node: disk for disk, node in self.nodes.items()}
        result = []
        for drive in self.drive_names:
            node = self.sandbox.held.get(self.devices.get(drive, ""))
            disk = by_node.get(node) if node is not None else None
            result.append({"drive": drive, "disk": int(disk) if disk and disk.isdigit() else disk})
        return result

    def disk_list(self) -> list[BoxDisk]:
        self._visitor_disks()
        return self._all_disks()

    def layers(self) -> list[DiskLayer]:
        """Every disk of the box that has a layer on this machine, with the drive it is in
        now (None when out) and its file: the set's disks once attached, the boot disk's
        overlay where its drive is in the box, the visitor's files disks (each over a
        raw image of the same name, `.img`). What a saved visit must carry of the box; a
        set disk not listed was never put in, and its layer is as the launcher made it."""
        self._visitor_disks()
        where = {node: drive for drive, device in self.devices.items()
                 if (node := self.sandbox.held.get(device)) is not None}
        paths = dict(self.layers_made)
        for disk, node in self.nodes.items():
            if disk.startswith(VISITOR_PREFIX) and disk != f"{VISITOR_PREFIX}0":
                paths[disk] = self.sandbox.run_dir / f"{node}.qcow2"
            elif node in self.sandbox.node_files and disk not in paths:
                paths[disk] = self.sandbox.node_files[node]
        return [DiskLayer(disk=disk, drive=where.get(self.nodes[disk]), path=path, node=self.nodes[disk],
                          writable=self.nodes[disk] in self.sandbox.nodes)
                for disk, path in paths.items()]

    # --- changing disks ---------------------------------------------------------------

    async def start(self) -> None:
        """Put the disks that are in their drives at start in, and take out the blank
        placeholders of the drives that start empty (see `MachineProfile.blank_drives`)."""
        async with self.sandbox.lock:
            await self.describe()
            if self.started:
                return
            self.started = True
            at_start = {disk.drive: disk for disk in self.disks if disk.at_start and disk.id != BOOT_DISK}
            for drive in self.drive_names:
                device = self.devices.get(drive)
                if device is None:
                    continue
                disk = at_start.get(drive)
                current = self.sandbox.held.get(device)
                if disk is not None:
                    await self._load(drive, disk.id)
                elif current is not None and current not in self.nodes.values():
                    await self._load(drive, None)  # a placeholder: the drive starts empty

    async def put(self, drive: str, disk_id: str | None) -> None:
        """Put the disk into the drive (out of another drive if it is in one), or empty it."""
        async with self.sandbox.lock:
            await self.describe()
            self._visitor_disks()
            if drive not in self.drive_names or drive not in self.devices:
                raise DriveNotFoundError(drive)
            if disk_id is not None:
                disk = next((d for d in self._all_disks() if d.id == disk_id), None)
                if disk is None:
                    raise DiskNotFoundError()
                if disk.media != DRIVE_MEDIA[drive]:
                    raise DiskDoesNotFitError()
                node = self.nodes.get(disk_id)
                if node is not None:
                    for other, device in self.devices.items():
                        if other != drive and self.sandbox.held.get(device) == node:
                            await self._load(other, None)
            await self._load(drive, disk_id)

    async def _load(self, drive: str, disk_id: str | None) -> None:
        node = None if disk_id is None else await self.disk_node(disk_id)
        try:
            await self.sandbox.medium_put(self.devices[drive], node, force=DRIVE_MEDIA[drive] != "cdrom")
        except MachineError as error:
            said = str(error)
            if "not open" in said or "locked" in said:
                raise TrayLockedError() from error
            raise

    async def disk_node(self, disk_id: str) -> str:
        """The disk's node: its layer made (unless the launcher or a saved visit put it
        in the run directory) and attached at its first use. The caller holds the lock."""
        if disk_id in self.nodes:
            return self.nodes[disk_id]
        disk = next((d for d in self.disks if d.id == disk_id), None)
        if disk is None:
            raise DiskNotFoundError()
        await self._layer_make(disk)
        return self.nodes[disk_id]

    async def _layer_make(self, disk: BoxDisk) -> None:
        if not disk.master:
            raise DiskNotFoundError()
        node = f"{LAYER_PREFIX}{disk.id}"
        layer = layer_path(self.sandbox.run_dir, disk)
        try:
            if not layer.exists():  # the launcher makes them with the machine
                config = self.sandbox.config
                await layer_file_create(self.sandbox.run_dir, disk, qemu_img_binary=config.qemu_img,
                                        timeout_s=config.read_timeout_s)
            writable = disk.media == "floppy" and not disk.write_protected
            await self.machine.qcow2_add(node, layer, backing=disk.master, read_only=not writable)
        except BaseException:
            layer.unlink(missing_ok=True)
            raise
        self.nodes[disk.id] = node
        self.layers_made[disk.id] = layer
        if writable:
            self.sandbox.nodes.append(node)
            self.sandbox.disks.append(FatDisk(label=f"{disk.drive.upper()}-{node}", node=node,
                                              overlay=layer, floppy=True))

    async def layers_make_all(self) -> None:
        """A layer for every writable disk that has none yet, so a checkpoint covers
        every disk (one that never went in is saved as it was). The caller holds the lock."""
        await self.describe()
        for disk in self.disks:
            if disk.id not in self.nodes and disk.master and disk.media == "floppy" \
                    and not disk.write_protected:
                await self._layer_make(disk)


def layer_path(run_dir: Path, disk: BoxDisk) -> Path:
    """Where the disk's throwaway layer is, in the machine's run directory."""
    return run_dir / f"{LAYER_PREFIX}{disk.id}.qcow2"


async def layer_file_create(run_dir: Path, disk: BoxDisk, *, qemu_img_binary: str, timeout_s: float) -> Path:
    """The disk's throwaway layer: an empty qcow2 over its master (never written)."""
    layer = layer_path(run_dir, disk)
    top, top_format = disk.master[0]
    layer.unlink(missing_ok=True)
    try:
        await qemu_img(qemu_img_binary, "create", "-q", "-f", "qcow2", "-F", top_format,
                       "-b", os.fspath(top), os.fspath(layer), timeout_s=timeout_s)
    except BaseException:
        layer.unlink(missing_ok=True)
        raise
    return layer


def drive_name(device: str) -> str | None:
    """The box's name for one of QEMU's drives ("floppy1" is "b"), or None."""
    if device.startswith("floppy") and device[-1:] in "01":
        return "ab"[int(device[-1])]
    if "-cd" in device:
        return "cd"
    return None
