"""The visitor's sandbox of each visit on this node: checkpoints (save, go back,
delete), the visitor's files put into a drive, the files the visit wrote, and the
disk box (which disk is in each drive, changed while the machine runs).

Owns: each running machine's `Sandbox` (sessions.machines.sandbox: the work on
the machine's disks) and `DiskBox` (sessions.machines.drives), made at the first
use or as the machine starts, under the visit's guard (`Keeper.require`); a failed
go-back ends the visit; how often a visit may change disks (a burst of changes is
refused with 429); the pages' event when the drives change.

Must not: change a visit's phase but for going back (RESTORING and back), or
start and end machines (the keeper does).
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from sessions.errors import SessionEndedError, SessionError, gettext_noop
from sessions.machines.drives import BoxDisk, DiskBox, DiskLayer, DriveChangeError, DriveNotFoundError
from sessions.machines.machine import MachineError
from sessions.machines.sandbox import (
    Checkpoint,
    MediaResult,
    Sandbox,
    SandboxError,
    SandboxMachine,
    Upload,
)
from sessions.node.keeper import Keeper, KeptMachine
from sessions.node.visit import LIVE_PHASES, EndReason, Phase, Visit

logger = logging.getLogger(__name__)

# How many disk changes a visit may make in any one second: more than a person
# changing disks by hand, far fewer than a script hammering the drives.
DRIVE_CHANGES_PER_S = 10


class DriveChangesTooFastError(SessionError):
    code = "too_many_changes"
    status = 429
    retry_after_s = 1

    def __init__(self, limit: int) -> None:
        super().__init__(gettext_noop("The disks were changed %(limit)s times in a second, the most a visit "
                                      "may. Wait a moment and try again."), limit=limit)


class Sandboxes:
    """The sandboxes of the keeper's visits."""

    def __init__(self, keeper: Keeper) -> None:
        self._keeper = keeper
        # More of the visit's files for its zip, (name, path) (its prints).
        self.extra_files: Callable[..., list[tuple[str, Path]]] | None = None
        # Each visit's recent disk changes (monotonic times), for the rate limit.
        self._changes: dict[str, deque[float]] = {}
        keeper.started_hooks.append(self.machine_started)
        keeper.end_hooks.append(self._visit_ending)

    def _sandbox(self, session_id: str, *, busy_ok: bool = False) -> tuple[Visit, Sandbox]:
        """The running visit and its machine's sandbox (made at the first use)."""
        visit = self._keeper.require(session_id, Phase.RUNNING, *((Phase.RESTORING,) if busy_ok else ()))
        if self._keeper.config.sandbox is None or visit.machine is None:
            raise SandboxError(gettext_noop("This server keeps no checkpoints or visitors' files."))
        return visit, self._sandbox_of(visit)

    def _sandbox_of(self, visit: Visit) -> Sandbox:
        """The sandbox of the visit's machine (made at its first use), with its disk box
        when the exhibit has one."""
        machine = visit.machine
        config = self._keeper.config.sandbox
        assert machine is not None
        assert config is not None
        if visit.sandbox is None or visit.sandbox.machine is not cast(SandboxMachine, machine):
            visit.sandbox = Sandbox(machine=cast(SandboxMachine, machine), run_dir=machine.run_dir,
                                    config=config)
            profile = getattr(machine, "profile", None)
            drives = tuple(getattr(profile, "disk_drives", ()))
            if drives:
                files_in = str(getattr(profile, "files_in", "off"))
                visit.sandbox.box = DiskBox(
                    sandbox=visit.sandbox, disks=list(getattr(machine, "disk_set", [])), drive_names=drives,
                    boot_drive=getattr(profile, "boot_drive", None),
                    files_drive=None if files_in == "off" else files_in)
        return visit.sandbox

    # --- the disk box ---------------------------------------------------------------

    async def machine_started(self, visit: Visit, machine: KeptMachine) -> None:
        """Put the disk set's disks that start in their drives in (the placeholders out);
        a machine that goes on from a saved visit (still paused) gets that visit's
        disks back instead, each in the drive it was in, or the start fails."""
        if self._keeper.config.sandbox is None:
            return
        saved = getattr(visit, "resume", None)
        if saved is not None:
            profile = getattr(machine, "profile", None)
            files_in = str(getattr(profile, "files_in", "off"))
            await self._sandbox_of(visit).saved_restore(saved.manifest.disks, saved.manifest.drives,
                                                        files_drive="b" if files_in == "off" else files_in)
            return
        box = self._sandbox_of(visit).box
        if box is None:
            return
        try:
            await box.start()
        except (MachineError, SessionError) as error:
            # The machine runs on; the visitor can still put the disks in by hand.
            logger.error("session %s: the disks were not put in at start: %s", visit.session_id, error)

    async def _visit_ending(self, visit: Visit) -> None:
        self._changes.pop(visit.session_id, None)

    def _drives_told(self, visit: Visit) -> None:
        """Tell the pages what is in the drives now, where the machine has a disk box."""
        box = visit.sandbox.box if visit.sandbox is not None else None
        if box is not None:
            self._keeper.notify(visit.session_id, {"type": "drives", "drives": box.drives()})

    def _box(self, session_id: str, drive: str) -> tuple[Visit, DiskBox]:
        visit, sandbox = self._sandbox(session_id)
        if sandbox.box is None:
            raise DriveNotFoundError(drive)
        return visit, sandbox.box

    def drives(self, *, session_id: str) -> tuple[list[dict[str, Any]], list[BoxDisk]]:
        """Each drive of the visit's disk box with the disk in it, and the box's disks."""
        visit = self._keeper.require(session_id, *LIVE_PHASES)
        box = visit.sandbox.box if visit.sandbox is not None else None
        if box is None:
            if visit.machine is None or self._keeper.config.sandbox is None:
                return [], []
            box = self._sandbox_of(visit).box
            if box is None:
                return [], []
        return box.drives(), box.disk_list()

    async def drive_put(self, *, session_id: str, drive: str, disk: str | None) -> list[dict[str, Any]]:
        """Put a disk of the box into the drive (None: take the disk out); the pages
        watching the visit are told."""
        visit, box = self._box(session_id, drive)
        now = time.monotonic()
        recent = self._changes.setdefault(session_id, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= DRIVE_CHANGES_PER_S:
            raise DriveChangesTooFastError(DRIVE_CHANGES_PER_S)
        recent.append(now)
        try:
            await box.put(drive, disk)
        except MachineError as error:
            logger.error("session %s: changing the disk in %s failed: %s", session_id, drive, error)
            raise DriveChangeError() from error
        finally:
            # Whatever happened, the pages learn what is in the drives now.
            self._drives_told(visit)
        self._keeper.input_seen(visit)
        return box.drives()

    def disk_layers(self, *, session_id: str) -> list[DiskLayer]:
        """Every disk layer the visit's machine has made (its disk box's), with the drive
        each is in: what a saved visit carries besides the boot disk's overlay."""
        visit = self._keeper.require(session_id, *LIVE_PHASES)
        box = visit.sandbox.box if visit.sandbox is not None else None
        return box.layers() if box is not None else []

    def sandbox(self, session_id: str) -> tuple[Visit, Sandbox]:
        """The running visit and its machine's sandbox, for another part of the node
        that works on the machine's disks (a save takes its lock)."""
        return self._sandbox(session_id)

    def checkpoints(self, *, session_id: str) -> list[Checkpoint]:
        visit = self._keeper.require(session_id, *LIVE_PHASES)
        return list(visit.sandbox.checkpoints) if visit.sandbox is not None else []

    async def checkpoint_save(self, *, session_id: str, label: str = "") -> Checkpoint:
        """Save the running machine whole; the visit goes on."""
        _, sandbox = self._sandbox(session_id)
        try:
            return await sandbox.checkpoint_save(label=label)
        except MachineError as error:
            logger.error("session %s: saving a checkpoint failed: %s", session_id, error)
            raise SandboxError(gettext_noop("The checkpoint could not be saved.")) from error

    async def checkpoint_restore(self, *, session_id: str, checkpoint_id: str) -> None:
        """Bring the machine back to a checkpoint, in the same QEMU: displays stay
        connected and are sent the restored screen."""
        visit, sandbox = self._sandbox(session_id)
        sandbox.checkpoint(checkpoint_id)  # an unknown one is refused before anything moves
        visit.move(Phase.RESTORING)
        try:
            await sandbox.checkpoint_restore(checkpoint_id)
        except (MachineError, SandboxError) as error:
            if visit.phase is Phase.RESTORING:
                logger.error("session %s: going back to a checkpoint failed: %s", session_id, error)
                # The machine is neither as it was nor at the checkpoint.
                self._keeper.end_soon(visit, reason=EndReason.SERVER,
                                  detail=gettext_noop("The machine could not go back to the checkpoint."))
            raise SessionEndedError(
                gettext_noop("The machine could not go back to the checkpoint.")) from error
        except BaseException:
            if visit.phase is Phase.RESTORING:
                self._keeper.end_soon(visit, reason=EndReason.SERVER,
                                  detail=gettext_noop("The machine could not go back to the checkpoint."))
            raise
        visit.require(Phase.RESTORING)
        visit.move(Phase.RUNNING)
        # Going back is input: the visitor is there.
        self._keeper.input_seen(visit)
        self._keeper.notify(visit.session_id, {"type": "changed"})
        self._drives_told(visit)

    async def checkpoint_delete(self, *, session_id: str, checkpoint_id: str) -> None:
        _, sandbox = self._sandbox(session_id)
        try:
            await sandbox.checkpoint_delete(checkpoint_id)
        except MachineError as error:
            logger.error("session %s: deleting a checkpoint failed: %s", session_id, error)
            raise SandboxError(gettext_noop("The checkpoint could not be deleted.")) from error

    async def media_insert(self, *, session_id: str, uploads: list[Upload], drive: str) -> MediaResult:
        """Put a floppy holding the visitor's files into the drive for them."""
        visit, sandbox = self._sandbox(session_id)
        try:
            result = await sandbox.media_insert(uploads, drive_letter=drive)
        except MachineError as error:
            logger.error("session %s: inserting the visitor's disk failed: %s", session_id, error)
            raise SandboxError(
                gettext_noop("The disk with the files could not be put into the machine.")) from error
        self._keeper.input_seen(visit)
        self._drives_told(visit)
        return result

    async def files_out(self, *, session_id: str) -> BinaryIO:
        """A zip of the files the visit created or changed on the machine's FAT disks: an
        unnamed file in the run directory, gone once closed, read from its start."""
        _, sandbox = self._sandbox(session_id)
        # Handed to the caller, whose response closes it once sent.
        archive = tempfile.TemporaryFile(dir=sandbox.run_dir)  # noqa: SIM115
        try:
            await sandbox.files_out(archive)
            if self.extra_files is not None and (extra := self.extra_files(session_id=session_id)):
                await asyncio.to_thread(_zip_add, archive, extra)
        except MachineError as error:
            archive.close()
            logger.error("session %s: reading the visitor's files failed: %s", session_id, error)
            raise SandboxError(
                gettext_noop("The machine's files could not be read; please try again.")) from error
        except BaseException:
            archive.close()
            raise
        archive.seek(0)
        return archive


def _zip_add(archive: BinaryIO, files: list[tuple[str, Path]]) -> None:
    """Add files to the end of a zip, each under its name (one gone meanwhile is left out)."""
    archive.seek(0)
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, path in files:
            if path.exists():
                zipped.write(path, arcname=name)
