"""The visitor's sandbox of each visit on this node: checkpoints (save, go back,
delete), the visitor's files put into a drive, and the files the visit wrote.

Owns: each running machine's `Sandbox` (sessions.machines.sandbox: the work on
the machine's disks), made at its first use, under the visit's guard
(`Keeper.require`); a failed go-back ends the visit.

Must not: change a visit's phase but for going back (RESTORING and back), or
start and end machines (the keeper does).
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from sessions.errors import SessionEndedError, gettext_noop
from sessions.machines.machine import MachineError
from sessions.machines.sandbox import (
    Checkpoint,
    MediaResult,
    Sandbox,
    SandboxError,
    SandboxMachine,
    Upload,
)
from sessions.node.keeper import Keeper
from sessions.node.visit import LIVE_PHASES, EndReason, Phase, Visit

logger = logging.getLogger(__name__)


class Sandboxes:
    """The sandboxes of the keeper's visits."""

    def __init__(self, keeper: Keeper) -> None:
        self._keeper = keeper
        # More of the visit's files for its zip, (name, path) (its prints).
        self.extra_files: Callable[..., list[tuple[str, Path]]] | None = None

    def _sandbox(self, session_id: str, *, busy_ok: bool = False) -> tuple[Visit, Sandbox]:
        """The running visit and its machine's sandbox (made at the first use)."""
        visit = self._keeper.require(session_id, Phase.RUNNING, *((Phase.RESTORING,) if busy_ok else ()))
        if self._keeper.config.sandbox is None or visit.machine is None:
            raise SandboxError(gettext_noop("This server keeps no checkpoints or visitors' files."))
        if visit.sandbox is None or visit.sandbox.machine is not cast(SandboxMachine, visit.machine):
            visit.sandbox = Sandbox(machine=cast(SandboxMachine, visit.machine),
                                    run_dir=visit.machine.run_dir, config=self._keeper.config.sandbox)
        return visit, visit.sandbox

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
