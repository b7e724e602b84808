"""Saved visits on this node: a running visit saved to the visitor's own file, and an
uploaded file read for a new visit to go on from.

Owns: the save (under the visit's guard and its sandbox's lock, bounded by a rate
limit per visit like the starts'), its manifest (the exhibit, its master's and start
state's identities, each disk of the set by its master, what is in each drive), the
file streamed as it is made and the machine's scratch files removed once it is sent; the portal's signing keys
(`salted_hmac` with `SECRET_KEY`, then each of `SECRET_KEY_FALLBACKS`, so a key can
be rotated); reading an upload into the new visit's own directory: its signature
checked before anything is decompressed, then the exhibit, its start state and
its disk set's masters compared (409), then unpacked within bounds and each disk layer checked like an
imported image.

Must not: keep anything of a visit after it ends (the file is made as it
downloads, the upload's contents live in the visit's directory), or start
machines (the keeper does, from the `SavedVisit` it is given).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import cast

from django.conf import settings
from django.utils import timezone
from django.utils.crypto import salted_hmac

from portal.images import import_limits
from portal.importer import ImageRejectedError
from portal.models import Exhibit, ExhibitDisk, StartState
from sessions.errors import (
    SaveMismatchError,
    SaveRateLimitedError,
    SaveRefusedError,
    SaveTooLargeError,
    SessionBusyError,
    gettext_noop,
)
from sessions.machines.launcher import Launcher
from sessions.machines.machine import MachineError
from sessions.machines.saving import (
    STATE_FILE,
    SavedParts,
    SavedVisit,
    SavingMachine,
    layer_check,
    machine_save,
    save_plan,
)
from sessions.machines.visitfile import (
    Manifest,
    ReadLimits,
    Signer,
    VisitFileError,
    visit_file_chunks,
    visit_file_read,
)
from sessions.node.sandboxes import Sandboxes
from sessions.node.visit import Phase
from sessions.placement.scheduler import HELD_HERE_SUFFIX, Limiter

logger = logging.getLogger(__name__)

SIGNING_SALT = "sessions.saved-visit"
# The machine state holds the guest's memory and its devices' (video memory the most).
STATE_MARGIN_BYTES = 64 * 1024 * 1024
OTHER_EXHIBIT = gettext_noop("This file is a saved visit of another exhibit, “%(title)s”: resume it "
                             "from that exhibit's page.")
UPDATED_SINCE = gettext_noop("The exhibit was updated since this visit was saved, so it cannot go on "
                             "from this file.")


def signers() -> list[Callable[[], Signer]]:
    """An HMAC-SHA256 for each of the portal's keys: the current one first."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [cast(Callable[[], Signer], partial(salted_hmac, SIGNING_SALT, b"", secret=key,
                                               algorithm="sha256")) for key in keys]


@dataclass(frozen=True)
class SaveDownload:
    filename: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class SavesConfig:
    save_max_bytes: int
    expanded_max_bytes: int
    saves_per_window: int
    qemu_img: str
    timeout_s: float


class Saves:
    def __init__(self, sandboxes: Sandboxes, launcher: Launcher, limiter: Limiter,
                 config: Callable[[], SavesConfig]) -> None:
        self._sandboxes = sandboxes
        self._launcher = launcher
        self._limiter = limiter
        self._config = config

    # --- Save to my computer -------------------------------------------------------

    async def visit_save(self, *, session_id: str) -> SaveDownload:
        """Save the running visit; the file is made as it is sent."""
        config = self._config()
        visit, sandbox = self._sandboxes.sandbox(session_id)
        retry = self._limiter.take({f"save:{session_id}": config.saves_per_window})
        if retry is not None:
            raise SaveRateLimitedError(retry_after_s=max(1, int(retry + 0.999)))
        exhibit: Exhibit = visit.exhibit
        async with sandbox.lock:
            visit.require(Phase.RUNNING)
            machine = cast(SavingMachine, visit.machine)
            try:
                if sandbox.box is not None:
                    await sandbox.box.describe()
                await sandbox.describe()
                plan = save_plan(sandbox, machine.argv)
                parts = await machine_save(machine, plan, qemu_img=config.qemu_img,
                                           timeout_s=config.timeout_s,
                                           compact=bool(sandbox.checkpoints))
            except MachineError as error:
                logger.error("session %s: saving the visit failed: %s", session_id, error)
                raise SessionBusyError(gettext_noop("The machine could not be saved; please try again.")) \
                    from error
        logger.info("session %s saved; the guest paused %.0f ms", session_id, parts.paused_s * 1000)
        try:
            manifest = await self._manifest(exhibit, parts)
        except BaseException:
            await asyncio.to_thread(parts.remove)
            raise
        made = timezone.localtime()
        return SaveDownload(filename=f"{exhibit.slug}-{made:%Y-%m-%d-%H%M}.visit",
                            chunks=_streamed(manifest, parts))

    async def _manifest(self, exhibit: Exhibit, parts: SavedParts) -> Manifest:
        start = await StartState.objects.filter(exhibit=exhibit).afirst()
        if start is not None and parts.start_backing == Path(start.warm_path):
            warm: str | None = start.warm_sha256
        elif parts.start_backing == Path(exhibit.image.path):
            warm = None
        else:
            raise SaveMismatchError(gettext_noop("The exhibit was updated during this visit, so this machine "
                                                 "cannot be saved. Reset it to save from now on."))
        profile = exhibit.machine_profile()
        masters = await _disk_set_masters(exhibit)
        # Each disk of the set by its master's layers: a disk changed since is not resumed.
        disks = tuple(replace(disk, master_sha256=masters.get(disk.disk, "")) if disk.disk is not None
                      and disk.disk.isdigit() else disk for disk, _ in parts.layers)
        if any(disk.master_sha256 == "" for disk in disks):
            raise SaveMismatchError(gettext_noop("The exhibit was updated during this visit, so this machine "
                                                 "cannot be saved. Reset it to save from now on."))
        return Manifest(
            exhibit=exhibit.slug, title=exhibit.title, master_sha256="+".join(exhibit.image.layers()),
            start_key=await asyncio.to_thread(self._launcher.start_state_key, exhibit),
            warm_sha256=warm, speed=profile.speed, memory_mb=profile.memory_mb,
            disks=disks, created_at=timezone.now().isoformat(), drives=parts.drives)

    # --- Resume from a file ----------------------------------------------------------

    async def upload_read(self, *, exhibit: Exhibit, upload: Path, size: int, directory: Path) -> SavedVisit:
        """Read an uploaded save into `directory` (made here; the caller removes it on a
        refusal): SaveTooLargeError, SaveRefusedError or SaveMismatchError if refused."""
        config = self._config()
        if size > config.save_max_bytes:
            raise SaveTooLargeError(config.save_max_bytes)
        start = await self._launcher.start_state_usable(exhibit)
        key = await asyncio.to_thread(self._launcher.start_state_key, exhibit)
        master = "+".join(exhibit.image.layers())
        masters = await _disk_set_masters(exhibit)
        memory = exhibit.machine_profile().memory_mb * 1024 * 1024

        def limits_for(manifest: Manifest) -> ReadLimits:
            # Signed, so these are the portal's own words: is it this exhibit, as it is now?
            if manifest.exhibit != exhibit.slug:
                raise SaveMismatchError(OTHER_EXHIBIT, exhibit=manifest.exhibit, title=manifest.title)
            if (manifest.start_key != key or manifest.master_sha256 != master
                    or (manifest.warm_sha256 is not None
                        and (start is None or start.warm_sha256 != manifest.warm_sha256))
                    or any(masters.get(disk.disk) != disk.master_sha256
                           for disk in manifest.disks if disk.disk is not None and disk.disk.isdigit())):
                raise SaveMismatchError(UPDATED_SINCE)
            return ReadLimits(state_max_bytes=memory + STATE_MARGIN_BYTES,
                              expanded_max_bytes=config.expanded_max_bytes)

        def read() -> Manifest:
            # The visit's own directory, private as a machine's run directory is.
            directory.parent.mkdir(mode=0o700, exist_ok=True)
            directory.mkdir(mode=0o700)
            manifest = visit_file_read(upload, signers=signers(), limits_for=limits_for, into=directory)
            limits = import_limits()
            for disk in manifest.disks:
                layer_check(directory / disk.file, disk=disk, limits=limits)
            # The guest's clock learns from the state's time how many midnights it missed.
            made = datetime.fromisoformat(manifest.created_at).timestamp()
            os.utime(directory / STATE_FILE, (made, made))
            return manifest

        try:
            manifest = await asyncio.to_thread(read)
        except VisitFileError as error:
            logger.warning("a saved visit for %s was refused (%s)", exhibit.slug, error.reason)
            raise SaveRefusedError(str(error)) from error
        except ImageRejectedError as error:
            logger.warning("a saved visit for %s was refused: a disk layer: %s", exhibit.slug, error)
            raise SaveRefusedError(gettext_noop("This file is damaged or was not made by this portal.")) \
                from error
        except (OSError, ValueError) as error:
            logger.error("a saved visit for %s could not be read: %s", exhibit.slug, error)
            raise SaveRefusedError(gettext_noop("This file is damaged or was not made by this portal.")) \
                from error
        return SavedVisit(directory=directory, manifest=manifest)


async def _disk_set_masters(exhibit: Exhibit) -> dict[str, str]:
    """Each disk of the exhibit's set by its id: its master's layers' SHA-256, `+`-joined."""
    return {str(disk.pk): "+".join(disk.image.layers())
            async for disk in ExhibitDisk.objects.filter(exhibit_id=exhibit.pk).select_related("image")}


async def _streamed(manifest: Manifest, parts: SavedParts) -> AsyncIterator[bytes]:
    """The file's pieces, each made in a worker thread; the scratch files go once it is
    sent or abandoned."""
    pieces = visit_file_chunks(manifest, state=parts.state, layers=parts.layers, signer=signers()[0]())
    try:
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            yield piece
    finally:
        with contextlib.suppress(Exception):
            pieces.close()
        await asyncio.shield(asyncio.to_thread(parts.remove))


def saved_directory(run_root: Path, session_id: str) -> Path:
    """Where an uploaded save is unpacked: in the visit's own directory (its prints'
    too), which the reaper knows by the visit's name."""
    return Path(f"{run_root / session_id}{HELD_HERE_SUFFIX}")


def saved_remove(run_root: Path, session_id: str) -> None:
    """Remove what is left of an uploaded save, and the visit's directory if it is empty."""
    directory = saved_directory(run_root, session_id)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()
