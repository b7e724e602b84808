"""The visitor's sandbox in one running machine: checkpoints, files in, files out.

Owns, for one machine of a visit (a reset makes a new one):

- Checkpoints: the whole machine (memory, devices and every writable disk)
  saved as QEMU internal snapshots (QMP `snapshot-save`) inside the visit's own
  qcow2 files, the machine state in a qcow2 of its own (`checkpoints.qcow2`);
  restored in the same QEMU (`snapshot-load`), deleted (`snapshot-delete`).
  Everything lives in the run directory and goes with it; a lower layer is
  never written (internal snapshots are made in the top qcow2 only).
- Files in: a FAT floppy built with mtools from a visitor's files (names made
  DOS-safe, 8.3 and upper case), kept under a throwaway qcow2 overlay, and put
  into the exhibit's drive for visitors' files through descriptors QEMU is
  handed (QMP `add-fd`, `blockdev-add`, the tray commands).
- Files out: the files created or changed on the machine's FAT disks since
  the visit began, as a zip. Each disk is frozen for a moment by a disk-only
  internal snapshot (the guest runs on), read with `qemu-img convert` and
  mtools, and compared, file by file, with the disk the visit started from.

Must not: decide when a visit moves or ends (the keeper does), import Django,
or write anything outside the run directory and its scratch files.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import resource
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from portal.profile import MachineProfile
from sessions.errors import SessionError, gettext_noop
from sessions.machines.machine import FILES_DISK, MachineError, blank_disk_name
from sessions.machines.overlay import OverlayError
from sessions.machines.tool import tool_run
from sessions.machines.visitfile import DiskLayer

if TYPE_CHECKING:
    from sessions.machines.drives import DiskBox

logger = logging.getLogger(__name__)

CHECKPOINT_NODE = "portal-checkpoints"
CHECKPOINT_FILE = "checkpoints.qcow2"
MEDIA_PREFIX = "visitor-disk"
# A 1.44 MB floppy: what every PC drive and DOS read.
FLOPPY_KIB = 1440
FLOPPY_BYTES = FLOPPY_KIB * 1024
LABEL_MAX = 60
# Characters DOS allows in a short name besides letters and digits.
DOS_CHARACTERS = set("!#$%&'()-@^_`{}~")
DOS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CLOCK$", *(f"COM{n}" for n in range(1, 10)),
               *(f"LPT{n}" for n in range(1, 10))}
# FAT partition types in a master boot record.
FAT_PARTITIONS = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}


class SandboxError(SessionError):
    """A sandbox request could not be done; the message is for the visitor."""

    code = "sandbox_failed"
    status = 503
    retry_after_s: int | None = 5


class CheckpointLimitError(SandboxError):
    code = "checkpoint_limit"
    status = 409
    retry_after_s = None

    def __init__(self, limit: int) -> None:
        super().__init__(gettext_noop("This visit already has %(limit)s checkpoints, the most it may "
                                      "keep. Delete one first."), limit=limit)


class CheckpointNotFoundError(SandboxError):
    code = "not_found"
    status = 404
    retry_after_s = None


class MediaRefusedError(SandboxError):
    """The files cannot go in (none, too many, too big, or the exhibit does not take them)."""

    retry_after_s = None

    def __init__(self, message: str, *, code: str = "media_refused", status: int = 400,
                 **params: Any) -> None:
        super().__init__(message, **params)
        self.code = code
        self.status = status


class SandboxMachine(Protocol):
    """What the sandbox uses of a machine (`sessions.machines.machine.Machine` is one)."""

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...
    async def job_run(self, command: str, arguments: dict[str, Any], *, timeout_s: float) -> None: ...
    async def block_devices(self) -> list[dict[str, Any]]: ...
    async def disk_snapshot(self, node: str, name: str) -> None: ...
    async def disk_snapshot_delete(self, node: str, name: str) -> None: ...
    async def qcow2_add(self, node: str, path: Path, *, backing_raw: Path | None = None,
                        backing: Sequence[tuple[Path, str]] = (), read_only: bool = False) -> None: ...
    async def node_keep(self, node: str, *, keeper: str, read_only: bool = False) -> None: ...
    async def medium_change(self, device: str, node: str | None, *, force: bool = True) -> None: ...


@dataclass(frozen=True)
class SandboxConfig:
    qemu_img: str
    checkpoints_max: int
    media_max_bytes: int
    media_per_visit: int
    job_timeout_s: float
    # How long reading one disk's files may take (qemu-img and mtools).
    read_timeout_s: float


@dataclass(frozen=True)
class Checkpoint:
    id: str
    created_at: datetime
    label: str
    # The nodes it saved, and which disk each removable drive held then.
    nodes: tuple[str, ...]
    drives: tuple[tuple[str, str | None], ...]
    seconds: float

    @property
    def tag(self) -> str:
        return f"checkpoint-{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at.isoformat(), "label": self.label}


@dataclass(frozen=True)
class BroughtFile:
    name: str
    dos_name: str
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "dos_name": self.dos_name, "bytes": self.bytes}


@dataclass(frozen=True)
class MediaResult:
    drive: str
    files: tuple[BroughtFile, ...]

    def as_json(self) -> dict[str, Any]:
        return {"drive": self.drive, "files": [brought.as_json() for brought in self.files]}


@dataclass
class FatDisk:
    """A disk of the machine whose files a visitor may take home."""

    # Its name in the zip: the drive letter, or the letter and which disk of the visitor's.
    label: str
    node: str
    overlay: Path
    floppy: bool


@dataclass(frozen=True)
class Upload:
    """One file a visitor sends: the name the browser gave and where its bytes are."""

    name: str
    path: Path
    size: int


@dataclass
class Sandbox:
    """The sandbox of one running machine; the keeper holds one per machine."""

    machine: SandboxMachine
    run_dir: Path
    config: SandboxConfig
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # Every writable disk node of the machine, in order: what a checkpoint saves.
    nodes: list[str] = field(default_factory=list)
    # Removable drives (BlockBackend name → its guest device's QOM path), and the
    # node each holds now.
    drives: dict[str, str] = field(default_factory=dict)
    held: dict[str, str | None] = field(default_factory=dict)
    disks: list[FatDisk] = field(default_factory=list)
    media_count: int = 0
    # A disk taken out of its drive is kept open by a node above it, and QEMU
    # snapshots only nodes without parents: the node to snapshot for each such disk.
    roots: dict[str, str] = field(default_factory=dict)
    # The file each node the machine started with opened (from query-block).
    node_files: dict[str, Path] = field(default_factory=dict)
    # The machine's disk box, if its exhibit has one (sessions.machines.drives): a
    # checkpoint first makes a layer for each of its disks, so it covers them all.
    box: DiskBox | None = None
    # One sandbox operation on the machine at a time (they share its qcow2 files).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _described: bool = False
    # The files of the disks visits start from, by path: they never change.
    _base_files: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)

    # --- what the machine has -----------------------------------------------------

    async def describe(self) -> None:
        """Learn the machine's drives and writable disks once (from query-block)."""
        if self._described:
            return
        hard_disks = 0
        for device in await self.machine.block_devices():
            name = str(device.get("device", ""))
            inserted = device.get("inserted")
            if device.get("removable") and (name.startswith("floppy") or "-cd" in name):
                self.drives[name] = str(device.get("qdev", name))
                self.held[name] = inserted.get("node-name") if inserted else None
            if inserted:
                self.node_files[str(inserted["node-name"])] = Path(str(inserted.get("file", "")))
            if not inserted or inserted.get("ro"):
                continue
            node = str(inserted["node-name"])
            self.nodes.append(node)
            if name.startswith("floppy"):
                label, floppy = "AB"[int(name[-1])], True
            elif "-hd" in name:
                label, floppy = "CDEF"[hard_disks], False
                hard_disks += 1
            else:
                continue
            self.disks.append(FatDisk(label=label, node=node, overlay=Path(str(inserted["file"])),
                                      floppy=floppy))
        self._described = True

    def _root(self, node: str) -> str:
        return self.roots.get(node, node)

    async def node_keep(self, node: str) -> None:
        """Keep a disk the machine started with open once it leaves its drive (QEMU
        closes a -drive's node then), for checkpoints made before the change, for
        the visitor's files on it, and to put it back in later. A node the monitor
        added stays open by itself."""
        if not node.startswith("#") or node in self.roots:
            return
        keeper = f"portal-keep-{node.strip('#')}"
        await self.machine.node_keep(node, keeper=keeper, read_only=node not in self.nodes)
        self.roots[node] = keeper

    def node_file(self, node: str) -> str:
        """The name of the file in the run directory a disk node opened: the one it
        started with, or, for a node added since, its own name's (`disk-3.qcow2`)."""
        started = self.node_files.get(node)
        return started.name if started is not None else f"{node}.qcow2"

    async def medium_put(self, drive: str, node: str | None, *, force: bool = True) -> None:
        """Put the node's disk into the removable drive (QEMU's name for it), or empty
        it; the disk it held is kept open (`node_keep`). The one way a disk changes
        drives: going back to a checkpoint, the disk box, files in, a saved visit's
        resume. The caller holds the lock."""
        current = self.held.get(drive)
        if current == node:
            return
        if current is not None:
            await self.node_keep(current)
        await self.machine.medium_change(self.drives[drive], node, force=force)
        self.held[drive] = node

    async def drives_restore(self, drives: Sequence[tuple[str, str | None]]) -> None:
        """Give each drive the disk it held (a checkpoint's, a saved visit's). The
        caller holds the lock."""
        for drive, node in drives:
            await self.medium_put(drive, node)

    async def saved_restore(self, disks: Sequence[DiskLayer], drives: Sequence[tuple[str, str | None]],
                            *, files_drive: str) -> None:
        """Bring back a saved visit's disks on this machine, resumed from its state with
        the saved layers in place (`saving.layers_place`): each disk layer attached (the
        disk box's, the visitor's floppies), then each drive given the disk it had, by
        file name, or left empty. The disk box does not put its at-start disks in after
        this."""
        async with self.lock:
            if self.box is not None:
                await self.box.describe()
            await self.describe()
            by_file = {path.name: node for node, path in self.node_files.items()}
            for disk in disks:
                if disk.disk is None:
                    continue
                if disk.disk.isdigit():
                    if self.box is None:
                        raise MachineError(f"the saved visit has a disk {disk.file} this machine has not")
                    by_file[disk.file] = await self.box.disk_node(disk.disk)
                    continue
                number = int(disk.disk.rpartition("-")[2])
                node = f"{MEDIA_PREFIX}-{number}"
                # Whole in itself: what the visitor brought in, and what the guest wrote to it.
                await self.machine.qcow2_add(node, self.run_dir / disk.file)
                self.nodes.append(node)
                self.disks.append(FatDisk(label=f"{files_drive.upper()}-disk{number}", node=node,
                                          overlay=self.run_dir / disk.file, floppy=True))
                self.media_count = max(self.media_count, number)
                by_file[disk.file] = node
            wanted: list[tuple[str, str | None]] = []
            for drive, file in drives:
                if drive not in self.drives or (file is not None and file not in by_file):
                    raise MachineError(f"the saved visit puts {file} in {drive}, which this machine cannot")
                wanted.append((drive, None if file is None else by_file[file]))
            await self.drives_restore(wanted)
            if self.box is not None:
                self.box.started = True

    @property
    def media_nodes(self) -> dict[int, str]:
        """The visitor's files disks brought in, by number: their nodes."""
        return {number: f"{MEDIA_PREFIX}-{number}" for number in range(1, self.media_count + 1)}

    # --- checkpoints ----------------------------------------------------------------

    def checkpoint(self, checkpoint_id: str) -> Checkpoint:
        found = next((c for c in self.checkpoints if c.id == checkpoint_id), None)
        if found is None:
            raise CheckpointNotFoundError(gettext_noop("There is no such checkpoint."))
        return found

    async def checkpoint_save(self, *, label: str) -> Checkpoint:
        """Save the whole machine; the guest pauses while its memory is written."""
        async with self.lock:
            if len(self.checkpoints) >= self.config.checkpoints_max:
                raise CheckpointLimitError(self.config.checkpoints_max)
            await self.describe()
            if self.box is not None:
                await self.box.layers_make_all()
            await self._checkpoint_node()
            checkpoint_id = secrets.token_hex(6)
            began = time.monotonic()
            nodes = tuple(self.nodes)
            await self.machine.job_run("snapshot-save", {
                "tag": f"checkpoint-{checkpoint_id}", "vmstate": CHECKPOINT_NODE,
                "devices": [self._root(node) for node in nodes]}, timeout_s=self.config.job_timeout_s)
            checkpoint = Checkpoint(
                id=checkpoint_id, created_at=datetime.now(UTC),
                label=label.strip()[:LABEL_MAX] or f"Checkpoint {len(self.checkpoints) + 1}",
                nodes=nodes, drives=tuple(self.held.items()), seconds=time.monotonic() - began)
            self.checkpoints.append(checkpoint)
            return checkpoint

    async def _checkpoint_node(self) -> None:
        """The qcow2 that holds the checkpoints' machine states, made at the first one."""
        if CHECKPOINT_NODE in self.nodes:
            return
        path = self.run_dir / CHECKPOINT_FILE
        path.unlink(missing_ok=True)
        await qemu_img(self.config.qemu_img, "create", "-q", "-f", "qcow2", os.fspath(path), "1M",
                       timeout_s=self.config.read_timeout_s)
        await self.machine.qcow2_add(CHECKPOINT_NODE, path)
        self.nodes.append(CHECKPOINT_NODE)

    async def checkpoint_restore(self, checkpoint_id: str) -> Checkpoint:
        """Bring the machine back to exactly the checkpoint: memory, devices, disks, and
        the disk in each removable drive."""
        async with self.lock:
            checkpoint = self.checkpoint(checkpoint_id)
            await self.drives_restore(checkpoint.drives)
            await self.machine.job_run("snapshot-load", {
                "tag": checkpoint.tag, "vmstate": CHECKPOINT_NODE,
                "devices": [self._root(node) for node in checkpoint.nodes]},
                timeout_s=self.config.job_timeout_s)
            return checkpoint

    async def checkpoint_delete(self, checkpoint_id: str) -> None:
        async with self.lock:
            checkpoint = self.checkpoint(checkpoint_id)
            await self.machine.job_run("snapshot-delete", {
                "tag": checkpoint.tag, "devices": [self._root(node) for node in checkpoint.nodes]},
                timeout_s=self.config.job_timeout_s)
            self.checkpoints.remove(checkpoint)

    # --- files in -------------------------------------------------------------------

    async def media_insert(self, uploads: Sequence[Upload], *, drive_letter: str) -> MediaResult:
        """Build a floppy holding the files and put it into the drive for visitors' files
        ("a" or "b"; "off" refuses them)."""
        if drive_letter == "off":
            raise MediaRefusedError(gettext_noop("This exhibit does not take visitors' files."),
                                    code="media_off", status=409)
        if not uploads:
            raise MediaRefusedError(gettext_noop("Send one or more files in the form field \"files\"."),
                                    code="no_files")
        total = sum(upload.size for upload in uploads)
        if total > self.config.media_max_bytes:
            raise MediaRefusedError(
                gettext_noop("The files take %(total)s bytes; a floppy for them holds at most %(limit)s."),
                total=total, limit=self.config.media_max_bytes, code="media_too_large", status=413)
        names = dos_names([upload.name for upload in uploads])
        async with self.lock:
            if self.media_count >= self.config.media_per_visit:
                raise MediaRefusedError(
                    gettext_noop("This visit has brought in %(count)s disks, the most it may."),
                    count=self.media_count, code="media_limit", status=409)
            await self.describe()
            if f"floppy{'ab'.index(drive_letter)}" not in self.drives:
                # The exhibit's drive changed since this machine started.
                raise MediaRefusedError(gettext_noop("This machine has no such drive; reset it to get the "
                                                     "exhibit's new one."), code="media_off", status=409)
            number = self.media_count + 1
            image = self.run_dir / f"{MEDIA_PREFIX}-{number}.img"
            overlay = self.run_dir / f"{MEDIA_PREFIX}-{number}.qcow2"
            try:
                await asyncio.to_thread(
                    floppy_build, image,
                    [(upload.path, name) for upload, name in zip(uploads, names, strict=True)],
                    label=f"VISITOR{number}")
                await qemu_img(self.config.qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw",
                               "-b", image.name, os.fspath(overlay), timeout_s=self.config.read_timeout_s)
            except BaseException:
                image.unlink(missing_ok=True)
                overlay.unlink(missing_ok=True)
                raise
            self.media_count = number
            node = f"{MEDIA_PREFIX}-{number}"
            await self.machine.qcow2_add(node, overlay, backing_raw=image)
            self.nodes.append(node)
            drive = f"floppy{'ab'.index(drive_letter)}"
            await self.medium_put(drive, node)
            self.disks.append(FatDisk(label=f"{drive_letter.upper()}-disk{number}", node=node,
                                      overlay=overlay, floppy=True))
        return MediaResult(drive=drive_letter, files=tuple(
            BroughtFile(name=upload.name, dos_name=name, bytes=upload.size)
            for upload, name in zip(uploads, names, strict=True)))

    # --- files out ------------------------------------------------------------------

    async def files_out(self, destination: BinaryIO) -> int:
        """Write a zip of the files created or changed on the FAT disks since the visit
        began; returns how many. The guest is held only while each disk is frozen."""
        snapshot = f"files-{secrets.token_hex(4)}"
        async with self.lock:
            await self.describe()
            disks = list(self.disks)
            frozen: list[FatDisk] = []
            try:
                for disk in disks:
                    await self.machine.disk_snapshot(self._root(disk.node), snapshot)
                    frozen.append(disk)
            except BaseException:
                await self._thaw(frozen, snapshot)
                raise
        try:
            count = 0
            with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for disk in frozen:
                    count += await self._disk_files_out(disk, snapshot, archive)
            return count
        finally:
            async with self.lock:
                await self._thaw(frozen, snapshot)

    async def _thaw(self, disks: Sequence[FatDisk], snapshot: str) -> None:
        for disk in disks:
            try:
                await self.machine.disk_snapshot_delete(self._root(disk.node), snapshot)
            except Exception as error:  # the machine may be gone (a reset, an end)
                logger.info("could not drop the snapshot %s of %s: %s", snapshot, disk.node, error)

    async def _disk_files_out(self, disk: FatDisk, snapshot: str, archive: zipfile.ZipFile) -> int:
        info = json.loads(await qemu_img(self.config.qemu_img, "info", "-U", "--output=json",
                                         os.fspath(disk.overlay), timeout_s=self.config.read_timeout_s))
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        with tempfile.TemporaryDirectory(dir=self.run_dir, prefix="files-") as scratch:
            raw = Path(scratch) / "disk.raw"
            await qemu_img(self.config.qemu_img, "convert", "-U", "-f", "qcow2",
                           "-l", f"snapshot.name={snapshot}", "-O", "raw", os.fspath(disk.overlay),
                           os.fspath(raw), timeout_s=self.config.read_timeout_s)
            now = await asyncio.to_thread(fat_extract, raw, Path(scratch) / "now", floppy=disk.floppy,
                                          timeout_s=self.config.read_timeout_s)
            raw.unlink()
            before: dict[str, tuple[int, str]] = {}
            if backing:
                before = await self._base_files_of(Path(backing), str(info.get("backing-filename-format")
                                                                       or "raw"), disk.floppy)
            count = 0
            for relative, (size, digest) in sorted(now.items()):
                if before.get(relative) == (size, digest):
                    continue
                source = Path(scratch) / "now" / relative
                mtime = time.localtime(source.stat().st_mtime)
                entry = zipfile.ZipInfo(f"{disk.label}/{relative}",
                                        date_time=(max(1980, mtime.tm_year), *mtime[1:6]))
                entry.compress_type = zipfile.ZIP_DEFLATED
                with source.open("rb") as handle, archive.open(entry, "w") as out:
                    shutil.copyfileobj(handle, out)
                count += 1
            return count

    async def _base_files_of(self, base: Path, base_format: str, floppy: bool) -> dict[str, tuple[int, str]]:
        """The files of the disk the visit started from (read once per machine)."""
        key = os.fspath(base)
        if key not in self._base_files:
            with tempfile.TemporaryDirectory(dir=self.run_dir, prefix="base-") as scratch:
                raw = Path(scratch) / "disk.raw"
                await qemu_img(self.config.qemu_img, "convert", "-U", "-f", base_format, "-O", "raw",
                               key, os.fspath(raw), timeout_s=self.config.read_timeout_s)
                self._base_files[key] = await asyncio.to_thread(
                    fat_extract, raw, Path(scratch) / "files", floppy=floppy,
                    timeout_s=self.config.read_timeout_s)
        return self._base_files[key]


# --- DOS names ---------------------------------------------------------------------


def dos_names(names: Sequence[str]) -> list[str]:
    """DOS-safe 8.3 names (upper case) for the given file names, all different."""
    taken: set[str] = set()
    result = []
    for name in names:
        stem, extension = _dos_parts(name)
        candidate = f"{stem}.{extension}" if extension else stem
        number = 1
        while candidate in taken or stem in DOS_DEVICES:
            suffix = f"~{number}"
            stem = stem[:8 - len(suffix)] + suffix
            candidate = f"{stem}.{extension}" if extension else stem
            number += 1
        taken.add(candidate)
        result.append(candidate)
    return result


def _dos_parts(name: str) -> tuple[str, str]:
    # The name alone (browsers may send a path), accents taken off, only DOS's characters.
    base = re.split(r"[\\/]", name)[-1].strip(" .") if name.strip(" .") else ""
    original_stem, dot, original_extension = base.rpartition(".")
    if not dot or not original_stem:
        # No extension, or a name that is all extension (".profile"): the stem it is.
        original_stem, original_extension = original_stem + original_extension, ""

    def ascii_upper(part: str) -> str:
        return unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode().upper()

    stem, extension = ascii_upper(original_stem), ascii_upper(original_extension)

    def clean(part: str, length: int) -> str:
        return "".join(c if c.isalnum() or c in DOS_CHARACTERS else "_"
                       for c in part.replace(" ", "").replace(".", ""))[:length]

    return clean(stem, 8) or "FILE", clean(extension, 3)


# --- FAT disks with mtools ------------------------------------------------------------


def _mtools_environment() -> dict[str, str]:
    # Short names exactly as DOS wrote them (upper case), whatever case flags they carry;
    # no check of the boot sector's fields beyond what reading needs.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_IGNORE_SHORT_CASE": "1",
            "MTOOLSRC": "/dev/null"}


def floppy_build(image: Path, files: Sequence[tuple[Path, str]], *, label: str = "VISITOR") -> None:
    """A 1.44 MB FAT12 floppy at image holding files under their DOS names.

    Each gets a serial number of its own: DOS tells a changed disk from the same
    one by its label and serial number where the drive does not say.
    """
    environment = _mtools_environment()
    try:
        subprocess.run(["mformat", "-i", os.fspath(image), "-C", "-f", str(FLOPPY_KIB), "-v", label,
                        "-N", secrets.token_hex(4).upper(), "::"],
                       env=environment, check=True, capture_output=True, timeout=30)
        for source, dos_name in files:
            subprocess.run(["mcopy", "-i", os.fspath(image), "-o", os.fspath(source), f"::{dos_name}"],
                           env=environment, check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as error:
        said = error.stderr.decode("utf-8", "replace")
        if "full" in said.lower():
            raise MediaRefusedError(gettext_noop("The files do not fit on one 1.44 MB floppy."),
                                    code="media_too_large", status=413) from error
        raise SandboxError(gettext_noop("The floppy for the files could not be made.")) from error


async def files_disk_create(run_dir: Path, *, qemu_img_binary: str, timeout_s: float,
                            name: str = FILES_DISK) -> Path:
    """The blank floppy for the drive of visitors' files (or, named otherwise, the
    placeholder of a disk set's drive): a qcow2 over an empty FAT12 image, both in
    the run directory. Always the same bytes (label and serial number fixed), so a
    machine resumed from a start state finds the disk it saw."""
    overlay = run_dir / name
    image = overlay.with_suffix(".img")
    for path in (overlay, image):
        path.unlink(missing_ok=True)
    try:
        await asyncio.to_thread(
            subprocess.run, ["mformat", "-i", os.fspath(image), "-C", "-f", str(FLOPPY_KIB), "-v", "BLANK",
                             "-N", "19920101", "::"],
            env=_mtools_environment(), check=True, capture_output=True, timeout=timeout_s)
        await qemu_img(qemu_img_binary, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.name,
                       os.fspath(overlay), timeout_s=timeout_s)
    except (OSError, subprocess.SubprocessError, SandboxError) as error:
        raise OverlayError(gettext_noop("The server could not make this visit's floppy disk."),
                           log_detail=f"blank floppy in {run_dir}: {error}") from error
    return overlay


async def blank_disks_create(run_dir: Path, profile: MachineProfile, *, qemu_img_binary: str,
                             timeout_s: float) -> None:
    """The blank floppies a machine of the profile starts with in its empty drives."""
    if profile.files_in_slot_free:
        await files_disk_create(run_dir, qemu_img_binary=qemu_img_binary, timeout_s=timeout_s)
    for drive in profile.blank_drives:
        await files_disk_create(run_dir, qemu_img_binary=qemu_img_binary, timeout_s=timeout_s,
                                name=blank_disk_name(drive))


def fat_partitions(raw: Path) -> list[int]:
    """Byte offsets of the FAT file systems on a hard disk (primary partitions)."""
    with raw.open("rb") as handle:
        sector = handle.read(512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    if sector[0x36:0x3B] == b"FAT12" or sector[0x36:0x3B] == b"FAT16" or sector[0x52:0x57] == b"FAT32":
        return [0]  # a disk formatted whole, without a partition table
    offsets = []
    for entry in range(4):
        record = sector[0x1BE + 16 * entry:0x1BE + 16 * (entry + 1)]
        if record[4] in FAT_PARTITIONS:
            offsets.append(int.from_bytes(record[8:12], "little") * 512)
    return offsets


def fat_extract(raw: Path, target: Path, *, floppy: bool, timeout_s: float) -> dict[str, tuple[int, str]]:
    """Copy every file of the FAT disk (each FAT partition of a hard disk) into target;
    returns each file's path (from the disk's root) with its size and SHA-256.

    The file system was written by the guest, so it is listed first (`mdir`) and
    refused when it cannot be a real one (a directory that holds itself, paths
    deeper than DOS allows, more entries than fit); mtools then copies one directory
    at a time, with a time limit and no file larger than the disk.
    """
    offsets = [0] if floppy else fat_partitions(raw)
    disk_bytes = raw.stat().st_size
    deadline = time.monotonic() + timeout_s
    files: dict[str, tuple[int, str]] = {}
    for number, offset in enumerate(offsets):
        into = target / (f"p{number}" if len(offsets) > 1 else "")
        into.mkdir(parents=True, exist_ok=True)
        image = f"{raw}@@{offset}" if offset else os.fspath(raw)
        directories: dict[str, list[str]] = {}
        for listed in _fat_listing(image, deadline=deadline):
            parent, _, name = listed.rpartition("/")
            directories.setdefault(parent, []).append(name)

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (disk_bytes, disk_bytes))

        for directory, names in directories.items():
            destination = into / directory
            destination.mkdir(parents=True, exist_ok=True)
            for batch in range(0, len(names), 256):
                sources = [f"::/{directory}/{name}" if directory else f"::/{name}"
                           for name in names[batch:batch + 256]]
                result = subprocess.run(
                    ["mcopy", "-m", "-n", "-Q", "-i", image, *sources, os.fspath(destination) + "/"],
                    env=_mtools_environment(), capture_output=True, preexec_fn=limits,
                    timeout=max(1.0, deadline - time.monotonic()))
                if result.returncode != 0:
                    logger.info("some files on %s could not be read: %s", raw.name,
                                result.stderr.decode("utf-8", "replace").strip()[:200])
            for name in names:
                copied = destination / name
                if not copied.is_file() or copied.is_symlink():
                    continue
                with copied.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                files[copied.relative_to(target).as_posix()] = (copied.stat().st_size, digest)
    return files


# What a real FAT file system can hold: DOS paths are at most 64 characters (so
# directories at most 32 deep), and a 2 GiB FAT16 disk a few hundred thousand entries.
FAT_DEPTH_MAX = 32
FAT_ENTRIES_MAX = 500_000


def _fat_listing(image: str, *, deadline: float) -> list[str]:
    """Every file's path on a FAT file system (no directories), read from `mdir -/ -b`
    as it prints and stopped as soon as it cannot be a real file system."""
    damaged = SandboxError(gettext_noop("The machine's disk could not be read: its file system is damaged."))
    process = subprocess.Popen(["mdir", "-/", "-b", "-a", "-i", image, "::"], env=_mtools_environment(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), process.kill)
    timer.start()
    seen: set[str] = set()
    files: list[str] = []
    try:
        for raw_line in process.stdout:
            line = raw_line.decode("utf-8", "replace").rstrip("\n")
            if not line.startswith("::/"):
                continue
            path = line[3:]
            if path in seen or path.count("/") > FAT_DEPTH_MAX or len(seen) >= FAT_ENTRIES_MAX:
                raise damaged
            seen.add(path)
            if path and not path.endswith("/"):
                files.append(path)
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
    if time.monotonic() > deadline:
        raise damaged
    return files


async def qemu_img(binary: str, *arguments: str, timeout_s: float) -> str:
    """Run qemu-img; returns what it printed. Raises SandboxError when it fails."""
    result = await tool_run(binary, *arguments, timeout_s=timeout_s)
    if result.returncode != 0:
        logger.error("qemu-img %s failed: %s", arguments[0], result.said)
        raise SandboxError(gettext_noop("The machine's disks could not be read; please try again."))
    return result.stdout
