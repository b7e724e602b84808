"""Saving a running machine to take home, and giving a new machine a saved one's disks.

Owns, for one machine:

- What a save carries (`save_plan`): every writable disk the machine started with,
  in its drive or out of it, every layer its disk box made, each floppy of the
  visitor's own files, and the file of the disk in each removable drive.
- The save: the guest paused (QMP `stop`: QEMU drains and flushes every disk),
  each of those layers copied, the machine state written (a migration to a
  file), the guest let run again (`cont`); the pause is the copies and the state
  only. Afterwards, with the guest running: a layer holding checkpoints (internal
  snapshots) is written again without them, a floppy of the visitor's own files
  (a layer over a raw image only this machine has) is flattened into one disk,
  and every layer's backing file is renamed to its role (`start`, `extra-<n>`,
  `files`, `disk-<id>`), so the file names nothing of this host.
- The resume's disks: each saved layer checked like an imported image (exactly
  the expected backing file by name, no data file, no encryption, no foreign
  extent, the same size as the disk it replaces) before QEMU sees it, then
  rebased (`qemu-img rebase -u`, by name) onto this node's copy of its backing
  file and put in place of the fresh layer the launcher made (a visitor's floppy
  beside them). Attaching them and giving each drive its disk is the sandbox's
  (`Sandbox.saved_restore`), once the machine has loaded the state.

Must not: import Django, decide whether a saved visit fits an exhibit, or write
outside the machine's run directory and the directory it is handed.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from portal.importer import ImageRejectedError, ImportLimits, qcow2_header_check, qemu_img_run
from sessions.machines.drives import LAYER_PREFIX, VISITOR_PREFIX
from sessions.machines.machine import FILES_DISK, MachineError
from sessions.machines.overlay import OVERLAY_FILE
from sessions.machines.sandbox import FLOPPY_KIB, Sandbox
from sessions.machines.tool import tool_run
from sessions.machines.visitfile import DiskLayer, Manifest

STATE_FILE = "state"
_EXTRA = re.compile(r"extra-([0-9]+)\.qcow2")
_SET_DISK = re.compile(rf"{LAYER_PREFIX}([0-9]+)\.qcow2")


class SavingMachine(Protocol):
    """What saving uses of a machine (`sessions.machines.machine.Machine` is one)."""

    argv: list[str]
    run_dir: Path

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...
    async def save_state(self, path: Path, *, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class SavedVisit:
    """An uploaded saved visit, unpacked and checked in the visit's own directory: the
    machine state (`state`) and each disk layer under its file name."""

    directory: Path
    manifest: Manifest


@dataclass(frozen=True)
class SavePlan:
    """What a save takes of a machine: each layer (as the manifest names it, the file
    it is copied from, whether it is flattened), and what is in each drive."""

    layers: tuple[tuple[DiskLayer, Path, bool], ...]
    drives: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class SavedParts:
    """A machine's save on this host: its state and layers, ready to be packed."""

    state: Path
    layers: tuple[tuple[DiskLayer, Path], ...]
    # Where the boot disk's layer lay (the start state's warm layer, or the master).
    start_backing: Path | None
    paused_s: float
    drives: tuple[tuple[str, str | None], ...] = ()

    def remove(self) -> None:
        for path in (self.state, *(path for _, path in self.layers)):
            path.unlink(missing_ok=True)


def drive_files(argv: Sequence[str]) -> dict[str, tuple[Path, bool]]:
    """The file each of QEMU's drives started with, by the name QEMU gives the drive
    (`floppy0`, `ide0-hd0`, `ide1-cd0`…), and whether the drive is read-only, read
    from its command line. A drive that starts empty has none."""
    drives: dict[str, tuple[Path, bool]] = {}
    for flag, value in itertools.pairwise(argv):
        if flag != "-drive":
            continue
        options = dict(part.partition("=")[::2] for part in value.split(","))
        index = int(options.get("index", "0"))
        if options.get("if") == "floppy":
            name = f"floppy{index}"
        else:
            kind = "cd" if options.get("media") == "cdrom" else "hd"
            name = f"ide{index // 2}-{kind}{index % 2}"
        if "file" in options:
            drives[name] = (Path(options["file"]), options.get("readonly") == "on")
    return drives


def layer_role(file: str) -> str | None:
    """What a layer lies over, by its file name (see `DiskLayer`)."""
    if file == OVERLAY_FILE:
        return "start"
    if file == FILES_DISK:
        return "files"
    if match := _EXTRA.fullmatch(file):
        return f"extra-{match.group(1)}"
    if match := _SET_DISK.fullmatch(file):
        return f"{LAYER_PREFIX}{match.group(1)}"
    return None


def save_plan(sandbox: Sandbox, argv: Sequence[str]) -> SavePlan:
    """What a save of the sandbox's machine carries: every writable disk it started
    with (whether in its drive now or out of it), every layer its disk box made, each
    floppy of the visitor's own files (flattened: its raw image is this machine's
    alone), and the file of the disk in each removable drive. The caller holds the
    sandbox's lock and has had it described."""
    run_dir = sandbox.run_dir
    plan: list[tuple[DiskLayer, Path, bool]] = []
    for name, (path, read_only) in drive_files(argv).items():
        role = layer_role(path.name)
        if role is not None and not read_only:
            plan.append((DiskLayer(drive=name, file=path.name, backing=role), path, False))
    if sandbox.box is not None:
        for layer in sandbox.box.layers():
            if layer.disk.isdigit():
                plan.append((DiskLayer(disk=layer.disk, file=layer.path.name,
                                       backing=layer_role(layer.path.name)), layer.path, False))
    for number, node in sandbox.media_nodes.items():
        plan.append((DiskLayer(disk=f"{VISITOR_PREFIX}{number}", file=f"{node}.qcow2", backing=None),
                     run_dir / f"{node}.qcow2", True))
    drives = tuple((device, None if node is None else sandbox.node_file(node))
                   for device, node in sandbox.held.items())
    return SavePlan(layers=tuple(plan), drives=drives)


async def machine_save(machine: SavingMachine, plan: SavePlan, *, qemu_img: str, timeout_s: float,
                       compact: bool) -> SavedParts:
    """Save the running machine's state and the plan's disk layers into its run
    directory (files named `save-<random>-…`, the caller's to remove). The guest is
    paused only while the layers are copied and its state written. With `compact`,
    the layers are written again without their checkpoints."""
    run_dir = machine.run_dir
    prefix = f"save-{secrets.token_hex(6)}-"
    copies: list[Path] = []
    state = run_dir / f"{prefix}{STATE_FILE}"
    try:
        began = time.monotonic()
        await machine.execute("stop")
        try:
            for _, source, _ in plan.layers:
                copy = run_dir / f"{prefix}{source.name}"
                copies.append(copy)
                await asyncio.to_thread(shutil.copyfile, source, copy)
            await machine.save_state(state, timeout_s=timeout_s)
        finally:
            await _cont_after_migration(machine)
        paused = time.monotonic() - began
        start_backing: Path | None = None
        layers: list[tuple[DiskLayer, Path]] = []
        for (disk, _, flatten), copy in zip(plan.layers, list(copies), strict=True):
            info = await _info(qemu_img, copy, timeout_s=timeout_s)
            backing = info.get("full-backing-filename")
            if disk.backing == "start" and backing:
                start_backing = Path(str(backing))
            if flatten or (compact and info.get("snapshots")):
                copy = await _rewrite(qemu_img, copy, info, flatten=flatten, timeout_s=timeout_s)
                copies.append(copy)
            if disk.backing is not None:
                await _qemu_img(qemu_img, "rebase", "-u", "-b", disk.backing,
                                "-F", str(info.get("backing-filename-format") or "raw"), copy,
                                timeout_s=timeout_s)
            layers.append((disk, copy))
    except BaseException:
        for path in (state, *copies):
            path.unlink(missing_ok=True)
        raise
    for path in set(copies) - {path for _, path in layers}:
        path.unlink(missing_ok=True)
    return SavedParts(state=state, layers=tuple(layers), start_backing=start_backing, paused_s=paused,
                      drives=plan.drives)


async def _cont_after_migration(machine: SavingMachine, *, within_s: float = 5.0) -> None:
    """Let the guest run again after its state was written: QEMU reports the migration
    completed a moment before it has finished with it, and refuses `cont` until then
    ("Migration is not finalized yet"), so that refusal is retried briefly."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await machine.execute("cont")
            return
        except Exception as error:
            if "not finalized" not in str(error) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def _rewrite(qemu_img: str, copy: Path, info: dict[str, Any], *, flatten: bool,
                   timeout_s: float) -> Path:
    """The layer written again: without its internal snapshots, and, with `flatten`,
    with its backing file's data in it."""
    output = copy.with_name(copy.name + ".packed")
    argv: list[str | Path] = ["convert", "-q", "-O", "qcow2"]
    if not flatten and info.get("full-backing-filename"):
        argv += ["-B", str(info["full-backing-filename"]),
                 "-F", str(info.get("backing-filename-format") or "raw")]
    await _qemu_img(qemu_img, *argv, copy, output, timeout_s=timeout_s)
    copy.unlink(missing_ok=True)
    return output


async def _info(qemu_img: str, path: Path, *, timeout_s: float) -> dict[str, Any]:
    said = await _qemu_img(qemu_img, "info", "-U", "--output=json", "-f", "qcow2", path,
                           timeout_s=timeout_s)
    return dict(json.loads(said))


async def _qemu_img(qemu_img: str, *argv: str | Path, timeout_s: float) -> str:
    result = await tool_run(qemu_img, *argv, timeout_s=timeout_s)
    if result.returncode != 0:
        raise MachineError(f"qemu-img {argv[0]} failed: {result.said}")
    return result.stdout


# --- resuming -----------------------------------------------------------------------


def layer_check(path: Path, *, disk: DiskLayer, limits: ImportLimits) -> int:
    """Check one uploaded layer as an imported image is checked, by hand before any
    tool opens it and then with `qemu-img info` under the import's limits: a qcow2
    naming exactly its role as its backing file (or none), no external data file,
    not encrypted, not corrupt. Returns its virtual size; ImageRejectedError if refused."""
    if disk.backing != layer_role(disk.file) and disk.backing is not None:
        raise ImageRejectedError("backing_file", "The layer lies over another disk than its drive's.")
    qcow2_header_check(path, backing=disk.backing)
    result = qemu_img_run(["info", "-U", "--output=json", "-f", "qcow2", os.fspath(path)], limits=limits)
    if result.returncode != 0:
        raise ImageRejectedError("corrupt", "qemu-img could not read a disk layer.")
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise ImageRejectedError("corrupt", "qemu-img could not read a disk layer.") from error
    data = (info.get("format-specific") or {}).get("data") or {}
    if info.get("format") != "qcow2" or data.get("data-file") or info.get("encrypted") \
            or data.get("encrypt") or data.get("corrupt"):
        raise ImageRejectedError("data_file", "A disk layer is not a plain qcow2 of its own.")
    if (info.get("backing-filename") or None) != disk.backing:
        raise ImageRejectedError("backing_file", "A disk layer names another backing file.")
    virtual = info.get("virtual-size")
    if not isinstance(virtual, int) or not 0 < virtual <= limits.max_virtual_bytes:
        raise ImageRejectedError("corrupt", "A disk layer has no usable size.")
    return virtual


async def layers_place(run_dir: Path, saved: Path, disks: Sequence[DiskLayer], *,
                       qemu_img: str, timeout_s: float) -> None:
    """Put each checked layer from `saved` in place of the fresh one of the same name
    the launcher made in `run_dir`, rebased onto that one's backing file (this node's
    copy of the same start state, extra medium, disk of the set or blank floppy); a
    floppy of the visitor's own files, which no machine starts with, beside them."""
    for disk in disks:
        fresh = run_dir / disk.file
        layer = saved / disk.file
        layer_info = await _info(qemu_img, layer, timeout_s=timeout_s)
        if disk.disk is not None and disk.disk.startswith(VISITOR_PREFIX):
            if fresh.exists() or layer_info.get("virtual-size") != FLOPPY_KIB * 1024:
                raise MachineError(f"the saved disk {disk.file} is not a floppy of the visitor's")
            os.replace(layer, fresh)
            continue
        if not fresh.is_file():
            raise MachineError(f"the saved visit has a disk {disk.file} this machine has not")
        fresh_info = await _info(qemu_img, fresh, timeout_s=timeout_s)
        if fresh_info.get("virtual-size") != layer_info.get("virtual-size"):
            raise MachineError(f"the saved disk {disk.file} is not the size of this machine's")
        if disk.backing is not None:
            await _qemu_img(qemu_img, "rebase", "-u", "-b", str(fresh_info["backing-filename"]),
                            "-F", str(fresh_info.get("backing-filename-format") or "raw"), layer,
                            timeout_s=timeout_s)
        os.replace(layer, fresh)
