"""The launcher: how this node makes a machine for an exhibit.

Owns: making a machine (`Launcher.machine_new`: a run directory of its own,
named by nothing but the machine, `m-<hex>`, under its own machine lease; a
fresh overlay over the exhibit's master, or over its start state to resume
it, plus an overlay over each extra medium; its uid lease and confinement; for a
saved visit, the saved layers put in place of the fresh ones, `machine_resume`),
which the machine owns from then on and lets go of once it has stopped; the
keeper's machine factory (`MachineSource`: a machine from the warm pool when
it holds one, sessions/machines/pool.py, else a new one); the start states' keys and
which state is usable here; and preparing a start state (`exhibit_prepare`).

A machine is found the same way however it was made: its files are where its
own `run_dir` says (the visit's row records it once the machine runs), so a
pooled machine handed to a visit is found like one launched for it, and
nothing on its QEMU command line names the pool.

Must not: decide when a machine starts or ends (the keeper does), or start it:
it hands the keeper an unstarted `Machine`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings

from portal.models import DiskImage, Exhibit, ExhibitDisk, ExhibitMedia, ExhibitVersion, StartState
from portal.profile import DISK_DRIVE_MEDIA
from portal.thumbnails import thumbnail_from_screen
from sessions.errors import gettext_noop
from sessions.machines.config import MachinesConfig
from sessions.machines.confine import Confinement
from sessions.machines.drives import BOOT_DISK, BoxDisk, layer_file_create
from sessions.machines.host import HostError, UidLease, machine_lease, machine_lease_take, uid_lease_take
from sessions.machines.machine import (
    Machine,
    MachineError,
    MachineStartError,
    accelerator_resolve,
    qemu_version,
    state_key,
)
from sessions.machines.overlay import (
    OVERLAY_FILE,
    OverlayError,
    overlay_create,
    run_dir_create,
    run_dir_remove,
)
from sessions.machines.prepare import (
    PreparedState,
    PrepareError,
    StartCondition,
    start_state_discard,
    start_state_prepare,
)
from sessions.machines.sandbox import blank_disks_create
from sessions.machines.saving import STATE_FILE, SavedVisit, layers_place

if TYPE_CHECKING:
    from sessions.machines.pool import Pool

logger = logging.getLogger(__name__)

# What the disk box calls the disk a machine boots from (the web edge translates it).
BOOT_LABEL = gettext_noop("The disk it starts from")

# Every machine's run directory (and machine lease) is `m-<hex>`: named by the
# machine alone, never by a visit or the pool, since a running QEMU's command
# line names it for the machine's whole life.
MACHINE_PREFIX = "m-"


def machine_name_new() -> str:
    return f"{MACHINE_PREFIX}{secrets.token_hex(8)}"


class Launcher:
    def __init__(self, config: MachinesConfig) -> None:
        self.config = config
        self._qemu_version: str | None = None

    def qemu_version(self) -> str:
        if self._qemu_version is None:
            self._qemu_version = qemu_version(self.config.qemu_binary)
        return self._qemu_version

    def accelerator_for(self, exhibit: Exhibit) -> str:
        return accelerator_resolve(exhibit.machine_profile(), host=self.config.accelerator)

    # --- how a machine is held ---------------------------------------------------

    def uid_lease(self) -> UidLease | None:
        """A uid for one machine, leased host-wide; None where machines keep the portal's user."""
        if self.config.uid_base is None:
            return None
        try:
            return uid_lease_take(base=self.config.uid_base, count=self.config.uid_count,
                                  directory=self.config.uid_lease_dir)
        except (HostError, OSError) as error:
            raise MachineStartError(f"no uid for QEMU: {error}", argv=[], returncode=None,
                                    log_tail="") from error

    @property
    def memory_limit_method(self) -> str:
        """How a machine's memory is limited here: cgroup-v2, cgroup-v1 or rlimit-as."""
        return Confinement(memory_bytes=1, cgroups=self.config.cgroups).memory_method

    def confinement_for(self, *, memory_mb: int, run_as: tuple[int, int] | None,
                        uid_lease: UidLease | None = None) -> Confinement:
        """How a machine is held; with `uid_lease`, it runs as the leased uid and keeps the lease."""
        if uid_lease is not None:
            run_as = (uid_lease.uid, uid_lease.uid)
        return Confinement(
            run_as=run_as,
            lease_fds=(uid_lease.fd,) if uid_lease is not None else (),
            memory_bytes=(memory_mb + self.config.memory_overhead_mb) * 1024 * 1024,
            cgroups=self.config.cgroups,
        )

    # --- making a machine -----------------------------------------------------------

    async def machine_new(self, exhibit: Exhibit, *, base: Path, base_format: str,
                          incoming_state: Path | None = None) -> Machine:
        """An unstarted machine of the exhibit on fresh overlays over `base`, in a run
        directory of its own, under a machine lease and a uid lease of its own. The
        machine owns all of it: once it has stopped, its directory is deleted and
        its leases let go (`Machine.after_stop`)."""
        config = self.config
        name = machine_name_new()
        # Owned before any of it exists, so no reaper of the install takes it for an orphan.
        lease = machine_lease_take(name=name, directory=config.leases)
        uid_lease: UidLease | None = None
        run_dir: Path | None = None
        try:
            run_dir = run_dir_create(root=config.run_root, name=name)
            uid_lease = self.uid_lease()
            machine = await self._machine_make(run_dir, exhibit, base=base, base_format=base_format,
                                              incoming_state=incoming_state, uid_lease=uid_lease)
        except BaseException:
            try:
                if run_dir is not None:
                    # Shielded: cancelled again meanwhile, the leases still go below.
                    await asyncio.shield(asyncio.to_thread(run_dir_remove, run_dir))
            finally:
                for held in (uid_lease, lease):
                    if held is not None:
                        held.release()
            raise
        # In this order: nothing of the machine is left when its lease goes.
        machine.after_stop += [partial(run_dir_remove, run_dir),
                               *(held.release for held in (uid_lease, lease) if held is not None)]
        return machine

    async def machine_resume(self, exhibit: Exhibit, saved: SavedVisit) -> Machine:
        """An unstarted machine of the exhibit that goes on from a saved visit: fresh
        layers made as for any visit, then the saved ones (checked when the file came
        in) put in their place over this node's copy of the same start state, and the
        saved machine state to resume."""
        manifest = saved.manifest
        if manifest.warm_sha256 is None:
            base, base_format = Path(exhibit.image.path), exhibit.image.format
        else:
            start = await self.start_state_usable(exhibit)
            if start is None or start.warm_sha256 != manifest.warm_sha256:
                raise MachineError("the exhibit's start state changed since the visit was saved")
            base, base_format = Path(start.warm_path), "qcow2"
        machine = await self.machine_new(exhibit, base=base, base_format=base_format)
        try:
            await layers_place(machine.run_dir, saved.directory, manifest.disks,
                               qemu_img=self.config.qemu_img_binary,
                               timeout_s=self.config.qemu_img_timeout_s)
            state = machine.run_dir / STATE_FILE
            await asyncio.to_thread(os.replace, saved.directory / STATE_FILE, state)
            machine.incoming_state = state
        except BaseException:
            await machine.stop()
            raise
        return machine

    async def _machine_make(self, run_dir: Path, exhibit: Exhibit, *, base: Path, base_format: str,
                           incoming_state: Path | None = None,
                           uid_lease: UidLease | None = None) -> Machine:
        """An unstarted machine of the exhibit in `run_dir`, on a fresh overlay over
        `base` (and over each extra medium), running as `uid_lease`'s uid."""
        overlay_path = run_dir / OVERLAY_FILE
        disk_set = await disk_set_of(exhibit)
        # The disk set's layer files are made beside the boot disk's overlay, at once, so
        # a disk's first insertion only attaches its layer (see sessions.machines.drives).
        await self._disks_create(run_dir, overlay_path, disk_set, base=base, base_format=base_format)
        profile = exhibit.machine_profile()
        extra_paths = await self._extra_overlays(run_dir, exhibit, count=len(profile.extra_media))
        await blank_disks_create(run_dir, profile, qemu_img_binary=self.config.qemu_img_binary,
                                 timeout_s=self.config.qemu_img_timeout_s)
        machine = Machine(
            profile,
            extra_paths=extra_paths,
            run_dir=run_dir,
            disk_path=overlay_path,
            qemu_binary=self.config.qemu_binary,
            accelerator=self.accelerator_for(exhibit),
            start_timeout_s=self.config.start_timeout_s,
            qmp_timeout_s=self.config.qmp_timeout_s,
            stop_timeout_s=self.config.stop_timeout_s,
            incoming_state=incoming_state,
            confinement=self.confinement_for(memory_mb=profile.memory_mb, run_as=None,
                                             uid_lease=uid_lease),
            print_idle_s=self.config.print_idle_s,
            print_job_bytes=self.config.print_job_bytes,
        )
        machine.disk_set = disk_set
        return machine

    async def _disks_create(self, run_dir: Path, overlay_path: Path, disk_set: list[BoxDisk], *,
                            base: Path, base_format: str) -> None:
        """The boot disk's overlay and the disk set's layer files, made at once."""
        qemu_img, timeout_s = self.config.qemu_img_binary, self.config.qemu_img_timeout_s
        try:
            # A task group: one that fails cancels the others; all have ended when it raises.
            async with asyncio.TaskGroup() as group:
                group.create_task(overlay_create(base_path=base, base_format=base_format,
                                                 overlay_path=overlay_path, qemu_img=qemu_img,
                                                 timeout_s=timeout_s))
                for disk in disk_set:
                    if disk.master:
                        group.create_task(layer_file_create(run_dir, disk, qemu_img_binary=qemu_img,
                                                            timeout_s=timeout_s))
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, OverlayError):
                raise first from None
            raise OverlayError(gettext_noop("The server could not create this visit's disk."),
                               log_detail=f"a disk of the set in {run_dir}: {first}") from first

    async def _extra_overlays(self, run_dir: Path, exhibit: Exhibit, *, count: int) -> list[Path]:
        """A throwaway overlay over each of the exhibit's extra media, in order."""
        paths: list[Path] = []
        if count == 0:
            return paths
        media = [medium async for medium in
                 ExhibitMedia.objects.filter(exhibit_id=exhibit.pk).select_related("image")]
        if len(media) != count:
            raise OverlayError(gettext_noop(
                "The exhibit's media changed while it started; please try again."))
        for number, medium in enumerate(media):
            path = run_dir / f"extra-{number}.qcow2"
            await overlay_create(
                base_path=Path(medium.image.path), base_format=medium.image.format, overlay_path=path,
                qemu_img=self.config.qemu_img_binary, timeout_s=self.config.qemu_img_timeout_s,
            )
            paths.append(path)
        return paths

    # --- start states ------------------------------------------------------------

    def start_state_key(self, exhibit: Exhibit) -> str:
        # Every layer of a derivative's disk: a state saved over one chain is no good over another.
        return state_key(exhibit.machine_profile(), accelerator=self.accelerator_for(exhibit),
                         qemu=self.qemu_version(), master_sha256="+".join(exhibit.image.layers()))

    async def start_state_usable(self, exhibit: Exhibit) -> StartState | None:
        """The exhibit's start state if it matches this portal exactly; a state that
        does not is marked stale (curators see it in the admin) and not used."""
        if exhibit.cited_version is not None:
            return None  # an earlier configuration: the saved state is the current one's
        start = await StartState.objects.filter(exhibit=exhibit, stale=False).afirst()
        if start is None:
            return None
        expected = self.start_state_key(exhibit)
        if start.key != expected:
            reason = f"made for {start.key}; this portal needs {expected}"
            logger.warning("start state of %s is stale: %s", exhibit.slug, reason)
            await StartState.objects.filter(pk=start.pk).aupdate(stale=True, stale_reason=reason)
            return None
        return start


async def disk_set_of(exhibit: Exhibit) -> list[BoxDisk]:
    """The disks of the exhibit's disk box: its disk set, in order, and the disk it
    boots from when that drive is in the box. Each names its master's layers."""
    profile = exhibit.machine_profile()
    disks: list[BoxDisk] = []
    if profile.boot_drive in profile.disk_drives:
        disks.append(BoxDisk(id=BOOT_DISK, label=BOOT_LABEL, drive=profile.boot_drive or "a",
                             media="floppy" if profile.boot == "floppy" else "cdrom", at_start=True))
    if exhibit.cited_version is not None:
        # A cited earlier version: the disk set that version had, by its masters.
        return disks + await _cited_disk_set(exhibit)
    async for disk in ExhibitDisk.objects.filter(exhibit_id=exhibit.pk).select_related("image"):
        disks.append(BoxDisk(id=str(disk.pk), label=disk.label, media=disk.media, drive=disk.drive,
                             write_protected=disk.write_protected, at_start=disk.in_drive_at_start,
                             master=await _layers(disk.image)))
    return disks


async def _layers(image: DiskImage | None) -> tuple[tuple[Path, str], ...]:
    """A master's files and formats, itself first, then each layer under it."""
    chain: list[tuple[Path, str]] = []
    while image is not None and len(chain) < 64:
        chain.append((Path(image.path), image.format))
        image = await DiskImage.objects.filter(pk=image.parent_id).afirst() if image.parent_id else None
    return tuple(chain)


async def _cited_disk_set(exhibit: Exhibit) -> list[BoxDisk]:
    version = await ExhibitVersion.objects.filter(exhibit_id=exhibit.pk,
                                                  version=exhibit.cited_version).afirst()
    entries = version.configuration.get("disk_set", []) if version is not None else []
    disks = []
    for position, entry in enumerate(entries):
        image = await DiskImage.objects.filter(sha256=entry.get("sha256")).afirst()
        if image is None or entry.get("drive") not in DISK_DRIVE_MEDIA:
            continue
        disks.append(BoxDisk(id=f"v{position}", label=str(entry.get("label", "")),
                             media=DISK_DRIVE_MEDIA[entry["drive"]], drive=entry["drive"],
                             write_protected=bool(entry.get("write_protected")),
                             at_start=bool(entry.get("in_drive_at_start")), master=await _layers(image)))
    return disks


class ExhibitVisit(Protocol):
    """What a machine source reads of the visit it makes a machine for."""

    @property
    def exhibit(self) -> Any: ...


class MachineSource:
    """The keeper's machine factory: a machine for a visit, from the warm pool when it
    holds one resumed from the exhibit's start state, else a new one."""

    def __init__(self, launcher: Launcher, pool: Pool | None) -> None:
        self.launcher = launcher
        self.pool = pool

    async def __call__(self, visit: ExhibitVisit, *, warm: bool) -> Machine | None:
        """An unstarted machine for the visit on fresh overlays; with `warm`, one that
        resumes the exhibit's start state (None when it has no usable one): from the
        warm pool when it holds one, already resumed and paused."""
        exhibit: Exhibit = visit.exhibit
        launcher, pool = self.launcher, self.pool
        saved: SavedVisit | None = getattr(visit, "resume", None)
        if saved is not None:
            if pool is not None:
                await pool.room_make()
            return await launcher.machine_resume(exhibit, saved)
        if not warm:
            if pool is not None:
                await pool.room_make()
            return await launcher.machine_new(exhibit, base=Path(exhibit.image.path),
                                              base_format=exhibit.image.format)
        start = await launcher.start_state_usable(exhibit)
        if start is None and exhibit.cited_version is not None:
            return None  # a cited earlier configuration boots cold; the pool is the current one's
        if start is None:
            if pool is not None:
                pool.drop_exhibit(exhibit.pk, why="its start state is stale or gone")
            return None
        if pool is not None:
            pooled = pool.take(exhibit.pk, start)
            if pooled is not None:
                return pooled
            await pool.room_make()
        return await launcher.machine_new(exhibit, base=Path(start.warm_path), base_format="qcow2",
                                          incoming_state=Path(start.state_path))


async def exhibit_prepare(exhibit: Exhibit, condition: StartCondition) -> StartState:
    """Boot the exhibit once, freeze its start state, and record it (replacing any old one)."""
    if exhibit.machine_profile().extra_media:
        # The warm layer covers the boot disk only; what booting wrote to extra
        # media would be missing under the saved state.
        raise PrepareError("exhibits with extra media always boot cold; instant start is not "
                           "available for them yet")
    prepared = await _boot(exhibit, condition, picture_only=False)
    old = await StartState.objects.filter(exhibit=exhibit).afirst()
    start, _ = await StartState.objects.aupdate_or_create(
        exhibit=exhibit,
        defaults={
            "warm_path": os.fspath(prepared.warm_path), "warm_sha256": prepared.warm_sha256,
            "state_path": os.fspath(prepared.state_path), "state_sha256": prepared.state_sha256,
            "key": prepared.key, "method": condition.describe(),
            "prepare_seconds": prepared.seconds, "stale": False, "stale_reason": "",
        },
    )
    if old is not None and old.warm_path != start.warm_path:
        await asyncio.to_thread(start_state_discard, Path(old.warm_path))
    # The start state's screen is the exhibit's picture (unless a curator chose another).
    await asyncio.to_thread(
        thumbnail_from_screen, exhibit.pk, prepared.screen,
        why_none="The screen was blank when the start state was saved, so no thumbnail was taken; "
                 "take one from a preview.")
    return start


async def exhibit_picture(exhibit: Exhibit, condition: StartCondition) -> str | None:
    """Boot the exhibit once to take its thumbnail (for one that has no start state):
    the screen once it reaches the condition. Nothing else is kept. Returns the
    thumbnail's name, or None (the exhibit then says why)."""
    try:
        prepared = await _boot(exhibit, condition, picture_only=True)
    except PrepareError as error:
        await Exhibit.objects.filter(pk=exhibit.pk).aupdate(
            thumbnail_problem=f"No thumbnail could be taken: {error}")
        return None
    return await asyncio.to_thread(
        thumbnail_from_screen, exhibit.pk, prepared.screen,
        why_none="The screen stayed blank, so no thumbnail was taken; take one from a preview.")


async def _boot(exhibit: Exhibit, condition: StartCondition, *, picture_only: bool) -> PreparedState:
    """Boot the exhibit on a throwaway overlay until it reaches the condition, and
    save its start state (or, with `picture_only`, only look at its screen)."""
    profile = exhibit.machine_profile()
    if picture_only:
        # The boot disk alone: enough for its picture.
        profile = dataclasses.replace(profile, extra_media=())
    config = MachinesConfig.from_settings()
    launcher = Launcher(config)
    qemu = await asyncio.to_thread(launcher.qemu_version)
    # In the run root like a visitor's machine, and owned the same way: a reaper of
    # the install (a serving portal's) leaves it alone while this process lives,
    # and ends what is left of it if this process dies.
    name = f"prepare-{secrets.token_hex(8)}"
    try:
        with machine_lease(name=name, directory=config.leases):
            uid_lease = launcher.uid_lease()
            try:
                prepared = await start_state_prepare(
                    name=name,
                    profile=profile,
                    master_path=Path(exhibit.image.path),
                    master_format=exhibit.image.format,
                    master_sha256="+".join(exhibit.image.layers()),
                    store=Path(settings.PORTAL_IMAGE_DIR) / "start",
                    run_root=config.run_root,
                    qemu_binary=config.qemu_binary,
                    qemu_img=config.qemu_img_binary,
                    qemu_version=qemu,
                    accelerator=launcher.accelerator_for(exhibit),
                    condition=condition,
                    picture_only=picture_only,
                    timeouts=(config.start_timeout_s, config.qmp_timeout_s, config.stop_timeout_s),
                    confinement=launcher.confinement_for(memory_mb=exhibit.memory_mb, run_as=None,
                                                         uid_lease=uid_lease),
                )
            finally:
                if uid_lease is not None:
                    uid_lease.release()
    except MachineError as error:
        raise PrepareError(f"the exhibit could not be booted: {error}") from error
    finally:
        if config.cgroups is not None:
            await asyncio.to_thread(config.cgroups.parent_remove)
    return prepared
