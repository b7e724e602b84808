"""One QEMU process and its QMP client.

Owns: the QEMU command line (built by the pure function `build_argv` from a
machine profile), launching the process with its QMP and VNC sockets inside the
session's run directory, watching it, and shutting it down.

Must not: import Django, know about visitors or the database, or decide when a
machine ends. (Its profile type lives below it, in `portal.profile`, which
imports nothing.) It takes paths and timeouts as arguments so it is testable alone.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import logging
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from qemu.qmp import EventListener, QMPClient, QMPError

from portal.profile import CPU_MODELS, MachineProfile
from sessions.machines.confine import ConfineError, Confinement, cgroup_remove
from sessions.machines.printer import PrinterPort
from sessions.machines.screen import (
    BDA_LENGTH,
    BDA_START,
    COLOUR_TEXT,
    DEFAULT_CODE_PAGE,
    BiosVideo,
    bios_video,
    monitor_bytes,
    screen_from,
)

logger = logging.getLogger(__name__)

QMP_SOCKET = "qmp.sock"
VNC_SOCKET = "vnc.sock"
LOG_FILE = "qemu.log"
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107

AUDIODEV_ID = "audio0"
# QEMU's debugger stub, attached for a moment to put a resumed guest's clock right.
GDB_CHARDEV = "portal-clock"
# The BIOS data area: the timer's ticks since midnight (a dword) and the count of
# midnights passed that nobody has read yet (a byte); 0x1800B0 ticks make a day.
BIOS_TICKS = 0x46C
BIOS_MIDNIGHT = 0x470
BIOS_TICKS_PER_DAY = 0x1800B0
# The blank floppy in the drive for visitors' files, made in the run directory
# (sessions/sandbox.py): a drive QEMU makes empty never lets the guest write.
FILES_DISK = "visitor-disk-0.qcow2"


def blank_disk_name(drive: str) -> str:
    """The blank placeholder floppy a disk set's drive starts with (see
    `MachineProfile.blank_drives`), in the run directory."""
    return f"blank-{drive}.qcow2"


class MachineError(Exception):
    """Base of every error this module raises."""


class MachineStartError(MachineError):
    """QEMU could not be started; carries argv, exit code and the log's tail."""

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int | None, log_tail: str):
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.log_tail = log_tail

    def __str__(self) -> str:
        return (
            f"{self.args[0]} (exit code {self.returncode}); argv: {' '.join(self.argv)}; "
            f"log: {self.log_tail.strip() or '(empty)'}"
        )


def build_argv(
    profile: MachineProfile,
    *,
    qemu_binary: str,
    accelerator: str,
    disk_path: Path,
    run_dir: Path,
    qmp_fd: int,
    printer_fd: int,
    incoming: bool = False,
    extra_paths: Sequence[Path] = (),
    run_as: tuple[int, int] | None = None,
) -> list[str]:
    """QEMU's command line for one session. Pure: no I/O, same input, same output.

    `extra_paths` are the qcow2 overlays of the profile's `extra_media`, in
    the same order. With `incoming`, QEMU waits for a saved machine state
    instead of booting. With `run_as` (uid, gid), QEMU drops to that user once
    it has opened its devices, disks and sockets (so KVM keeps working).
    `printer_fd` is QEMU's end of a connected socket pair: LPT1's printer.
    """
    if accelerator not in {"kvm", "tcg"}:
        raise ValueError(f"unknown accelerator {accelerator!r}")
    if len(extra_paths) != len(profile.extra_media):
        raise ValueError("one path is needed for each extra medium")
    boot_kind = {"floppy": "floppy", "hdd": "disk", "cdrom": "cdrom"}[profile.boot]
    # Slots in the order a PC's BIOS expects: the boot disk is the primary master,
    # the boot CD the secondary master; further media take the free slots after.
    floppy_slots = [0, 1]
    ide_slots = {"disk": [0, 1, 3, 2], "cdrom": [2, 3, 1, 0]}
    used: set[tuple[str, int]] = set()
    drives: list[str] = []
    for kind, path in [(boot_kind, disk_path), *zip(profile.extra_media, extra_paths, strict=True)]:
        bus = "floppy" if kind == "floppy" else "ide"
        slots = floppy_slots if kind == "floppy" else ide_slots[kind]
        index = next(slot for slot in slots if (bus, slot) not in used)
        used.add((bus, index))
        # auto-read-only=off: QEMU keeps the descriptors it opened at start (before
        # it dropped privileges) instead of reopening the files by path when it
        # saves or resumes a machine.
        drive = f"file={path},format=qcow2,auto-read-only=off,if={bus},index={index}"
        if kind == "disk":
            drive += ",media=disk"
        elif kind == "cdrom":
            drive += ",media=cdrom,readonly=on"
        drives += ["-drive", drive]
    blanks = {drive: run_dir / blank_disk_name(drive) for drive in profile.blank_drives}
    if profile.files_in_slot_free:
        # The drive visitors' own files go into starts with a blank floppy: QEMU 7.2
        # gives a floppy drive made empty no write permission, so a disk put into it
        # later could never be written.
        blanks[profile.files_in] = run_dir / FILES_DISK
    for drive, blank in sorted(blanks.items()):
        drives += ["-drive", f"file={blank},format=qcow2,auto-read-only=off,"
                             f"if=floppy,index={'ab'.index(drive)}"]
    if "cd" in profile.disk_drives and profile.boot != "cdrom":
        # The disk set's CD drive starts empty: a CD is read-only, so nothing is lost.
        index = next(slot for slot in ide_slots["cdrom"] if ("ide", slot) not in used)
        drives += ["-drive", f"if=ide,index={index},media=cdrom,readonly=on"]
    speed: list[str] = []
    if profile.icount_shift is not None:
        if accelerator != "tcg":
            raise ValueError("a period speed needs software emulation (tcg)")
        # Each instruction takes 2**shift ns of guest time; sleep=on lets the guest's
        # clock catch up with real time while it idles, and align=on holds a busy
        # guest back to real time instead of letting its clock run ahead.
        speed = ["-icount", f"shift={profile.icount_shift},sleep=on,align=on"]
    boot_order = {"floppy": "a", "hdd": "c", "cdrom": "d"}[profile.boot]
    # The PC speaker and the sound cards all play into one audio backend, "none":
    # nothing is played on the host, and QEMU's VNC server hands what the guest
    # plays to a VNC client that asks for it (the portal's sound socket, see
    # sessions.display.audio). Without a VNC client listening QEMU mixes nothing for it.
    machine = (f"pc,vmport={'on' if profile.mouse == 'vmport' else 'off'},"
               f"pcspk-audiodev={AUDIODEV_ID}")
    sound = ["-audiodev", f"none,id={AUDIODEV_ID}"]
    for card in profile.sound:
        if card != "pcspk":
            sound += ["-device", f"{card},audiodev={AUDIODEV_ID}"]
    return [
        qemu_binary,
        "-nodefaults",
        "-no-user-config",
        "-machine", machine,
        "-accel", accelerator,
        *speed,
        "-cpu", CPU_MODELS[profile.cpu],
        "-m", str(profile.memory_mb),
        "-vga", profile.vga,
        "-rtc", "base=localtime",
        "-nic", "none",
        "-display", "none",
        # Shared: a reloaded page connects beside the old connection instead
        # of fighting it for the display.
        "-vnc", f"unix:{run_dir / VNC_SOCKET},share=force-shared,audiodev={AUDIODEV_ID}",
        # The portal binds the QMP socket itself and hands QEMU the listening
        # descriptor, so connecting never races QEMU's start-up.
        "-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        *drives,
        *sound,
        # LPT1 (378h, IRQ 7) prints into a socket the portal reads for the machine's
        # whole life (sessions.machines.printer): an unread port would stall the guest.
        "-chardev", f"socket,id=lpt1,fd={printer_fd},server=off",
        "-device", "isa-parallel,chardev=lpt1",
        "-boot", f"order={boot_order}",
        # elevateprivileges stays allowed: -runas needs setuid, and QEMU 7.2 dies
        # at start ("Bad system call") when both are given.
        "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
        *(["-runas", f"{run_as[0]}:{run_as[1]}"] if run_as is not None else []),
        *(["-incoming", "defer"] if incoming else []),
    ]


def state_key(profile: MachineProfile, *, accelerator: str, qemu: str, master_sha256: str) -> str:
    """What a saved machine state depends on: restoring it anywhere else is unsafe.

    The same profile, accelerator, QEMU version, master and QEMU command line
    give the same key; a change to how the portal builds the command line
    changes the key too. Sound hardware is part of it: a state saved without a
    card is never resumed on a machine with one, nor the other way round.
    """
    argv = build_argv(profile, qemu_binary="qemu", accelerator=accelerator,
                      disk_path=Path("/disk"), run_dir=Path("/run"), qmp_fd=3, printer_fd=4,
                      incoming=True,
                      extra_paths=[Path(f"/extra{n}") for n in range(len(profile.extra_media))])
    argv_digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
    return (
        f"qemu={qemu};accel={accelerator};cpu={profile.cpu};memory={profile.memory_mb};"
        f"vga={profile.vga};boot={profile.boot};mouse={profile.mouse};speed={profile.speed};"
        f"sound={'+'.join(profile.sound)};argv={argv_digest};"
        f"master={master_sha256}"
    )


def accelerator_resolve(profile: MachineProfile, *, host: str) -> str:
    """The accelerator a machine of this profile gets on a host whose best is `host`.

    A period speed counts instructions, which only software emulation can.
    """
    if profile.icount_shift is not None:
        return "tcg"
    return host if profile.accelerator == "auto" else profile.accelerator


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """True when this process can open the KVM device and it answers the stable API."""
    kvm_get_api_version = 0xAE00
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, kvm_get_api_version) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def qemu_version(qemu_binary: str) -> str:
    """The version QEMU reports, such as '7.2.22'."""
    output = subprocess.run(
        [qemu_binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    match = re.search(r"version (\S+)", output)
    return match.group(1) if match else output.strip()


def log_tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Machine:
    """A running QEMU: start it, ask it things over QMP, stop it.

    `stop()` is safe to call more than once and from several tasks; the
    process is always waited for, so no zombie is left behind.
    """

    def __init__(
        self,
        profile: MachineProfile,
        *,
        run_dir: Path,
        disk_path: Path,
        qemu_binary: str,
        accelerator: str,
        start_timeout_s: float,
        qmp_timeout_s: float,
        stop_timeout_s: float,
        incoming_state: Path | None = None,
        confinement: Confinement | None = None,
        extra_paths: Sequence[Path] = (),
        print_idle_s: float = 2.0,
        print_job_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.profile = profile
        # The disks its disk box may put into its drives (sessions.machines.drives.BoxDisk),
        # given by whoever made it.
        self.disk_set: list[Any] = []
        # LPT1's printer: its jobs go to whoever sets `printer.on_job` (the visit).
        self.printer = PrinterPort(idle_s=print_idle_s, limit_bytes=print_job_bytes)
        self.confinement = confinement or Confinement()
        self.cgroup: Path | None = None
        self.extra_paths = list(extra_paths)
        self.incoming_state = incoming_state
        self.run_dir = run_dir
        self.disk_path = disk_path
        self.qemu_binary = qemu_binary
        self.accelerator = accelerator
        self.start_timeout_s = start_timeout_s
        self.qmp_timeout_s = qmp_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.argv: list[str] = []
        # Resumed from its saved state but held paused (a warm pool's machine):
        # the next `start()` puts its clock right and lets it run.
        self._held = False
        # Called once the process is gone and its cgroup removed, by `stop()` (in a
        # thread: they may delete files): what the machine's owner lets go only then
        # (the launcher's: its run directory, then its leases).
        self.after_stop: list[Callable[[], None]] = []
        # The end of QEMU's log, read once it has stopped, before its run directory goes.
        self.last_words = ""
        # The first viewer's connection to QEMU's VNC server, opened before the
        # guest runs (see `display_connection_open`); None once taken or closed.
        self._display_connection: socket.socket | None = None
        # Where the last read of the text screen found the active page's cells
        # (address, bytes), where the next one reads them at the same time as the
        # BIOS data area (`screen_cells`).
        self._screen_place = (COLOUR_TEXT, 80 * 25 * 2)

    @property
    def vnc_path(self) -> Path:
        return self.run_dir / VNC_SOCKET

    @property
    def qmp_path(self) -> Path:
        return self.run_dir / QMP_SOCKET

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    @property
    def held(self) -> bool:
        """Resumed from its saved state and paused, waiting for its visitor."""
        return self._held

    async def start(self, *, hold: bool = False) -> None:
        """Launch QEMU and connect QMP. On any failure nothing is left running.

        With `hold`, a machine that resumes a saved state stays paused once it is
        loaded (a warm pool's machine); a later `start()` lets it run.
        """
        if self._held:
            try:
                await self._run()
            except BaseException:
                await self.stop()
                raise
            return
        if self._process is not None:
            raise MachineError("machine already started")
        for path in (self.qmp_path, self.vnc_path):
            if len(os.fsencode(path)) > UNIX_PATH_MAX:
                raise MachineError(f"socket path too long for a unix socket: {path}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        state_fd: int | None = None
        try:
            if self.incoming_state is not None:
                state_fd = os.open(self.incoming_state, os.O_RDONLY | os.O_CLOEXEC)
            # A QEMU that died (or a failed resume before this start) leaves its
            # socket files; the run directory is private to this session.
            for path in (self.qmp_path, self.vnc_path):
                path.unlink(missing_ok=True)
            listener.bind(os.fspath(self.qmp_path))
            listener.listen(1)
            self._cgroup_create()
            self.argv = build_argv(
                self.profile,
                qemu_binary=self.qemu_binary,
                accelerator=self.accelerator,
                disk_path=self.disk_path,
                run_dir=self.run_dir,
                qmp_fd=listener.fileno(),
                printer_fd=self.printer.theirs.fileno(),
                incoming=state_fd is not None,
                run_as=self.confinement.run_as,
                extra_paths=self.extra_paths,
            )
            with self.log_path.open("ab") as log:
                self._process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(listener.fileno(), self.printer.theirs.fileno(),
                              *([state_fd] if state_fd is not None else []),
                              *self.confinement.lease_fds),
                    start_new_session=True,
                    preexec_fn=self.confinement.child_setup(self.cgroup),
                )
        except (OSError, ConfineError) as error:
            await self._cgroup_remove()
            if isinstance(error, ConfineError):
                raise MachineStartError(str(error), argv=self.argv, returncode=None,
                                        log_tail="") from error
            if not isinstance(error, FileNotFoundError):
                raise MachineStartError(f"could not prepare QEMU's sockets: {error}",
                                        argv=self.argv, returncode=None, log_tail="") from error
            if self._process is None and state_fd is None and self.incoming_state is not None:
                raise MachineStartError("the saved machine state is missing", argv=self.argv,
                                        returncode=None, log_tail="") from error
            raise MachineStartError(
                f"QEMU is not installed ({self.qemu_binary} not found)",
                argv=self.argv, returncode=None, log_tail="",
            ) from error
        finally:
            # QEMU holds its own copies; ours must go so a dead QEMU refuses connections.
            listener.close()
        # Read from now on (QEMU holds its end): a guest that prints never waits.
        self.printer.open()
        try:
            await self._connect_qmp()
            if state_fd is not None:
                await self._restore(state_fd, hold=hold)
        except BaseException:
            await self.stop()
            raise
        finally:
            if state_fd is not None:
                os.close(state_fd)

    def _cgroup_create(self) -> None:
        confinement = self.confinement
        if confinement.cgroups is not None and confinement.memory_bytes is not None:
            # Named after the run directory (so the reaper can tell whose it is) and
            # unique: a reset's new machine starts while the old one is still leaving.
            name = f"{self.run_dir.name}.{secrets.token_hex(4)}"
            self.cgroup = confinement.cgroups.create(name, limit_bytes=confinement.memory_bytes)

    def out_of_memory(self) -> bool:
        """Whether the kernel killed this QEMU for passing its memory limit (known
        where the limit is a cgroup, until the machine is stopped)."""
        cgroups = self.confinement.cgroups
        return cgroups is not None and self.cgroup is not None and cgroups.oom_kills(self.cgroup) > 0

    async def _cgroup_remove(self) -> None:
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            await asyncio.to_thread(cgroup_remove, cgroup)

    async def _restore(self, state_fd: int, *, hold: bool) -> None:
        """Load the saved state QEMU inherited as state_fd, then let the guest run
        (or, with `hold`, keep it paused until the next `start()`)."""
        async with asyncio.timeout(self.start_timeout_s):
            status = await self._migrate(
                "migrate-incoming", {"uri": f"fd:{state_fd}"}
            )
        if status != "completed":
            raise MachineStartError(
                f"restoring the saved machine state {status}", argv=self.argv,
                returncode=self.returncode, log_tail=log_tail(self.log_path),
            )
        await self.display_connection_open()
        if hold:
            self._held = True
            return
        await self._run()

    async def display_connection_open(self) -> None:
        """Open the first viewer's connection to QEMU's VNC server now, before anyone
        asks (`display_connection_take` hands it over).

        A new connection makes QEMU refresh its display at once, and that does two
        things for the first viewer. After a resume QEMU's console still holds its
        start-up surface (720x400, blank) until the display is next refreshed: now
        the viewer's handshake announces the guest's own size and its first update
        is the guest's picture. And QEMU sends a viewer the update it asked for only
        at its next refresh, never sooner than 30 ms after the last one: a
        connection opened when the viewer comes spends that refresh before the
        viewer has asked for anything, so its first request would wait out most of
        those 30 ms (about half of a start from the warm pool); opened here, that
        refresh is long past, and `vnc_refresh_soon` gets the update sent at once.
        QEMU keeps a connection that has not begun its handshake as long as it is
        open, and a paused guest changes nothing on screen, so a pooled machine can
        hold it for hours.
        """
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(connection, os.fspath(self.vnc_path))
        except OSError as error:
            connection.close()
            # Only the first picture is late without it.
            logger.warning("machine %s: the display was not connected early: %s", self.run_dir.name, error)
            return
        self._display_connection = connection

    def display_connection_take(self) -> socket.socket | None:
        """The connection `display_connection_open` made, for the first viewer to
        take (QEMU's greeting waits in it); None for every later one."""
        connection, self._display_connection = self._display_connection, None
        return connection

    async def _run(self) -> None:
        """Let a resumed guest run: its clock put right first (see `guest_clock_set`)."""
        self._held = False
        try:
            await self.guest_clock_set()
        except (MachineError, OSError, TimeoutError) as error:
            # A guest whose clock is behind is better than no machine.
            logger.warning("machine %s: the guest's clock was not put right: %s",
                           self.run_dir.name, error)
        await self.execute("cont")

    async def guest_clock_set(self, *, now: float | None = None) -> None:
        """Put a paused, resumed guest's own clock right: the time of day DOS keeps.

        The CMOS clock follows the host by itself (QEMU's RTC runs on the host's
        clock, even while the guest is paused or saved), but DOS reads it only at
        boot and then counts the BIOS timer's ticks (0040:006C, 18.2 a second) in
        guest time, which stood still from the moment the start state was saved.
        QEMU offers no monitor command that writes guest memory, so the portal
        attaches QEMU's own debugger stub for a moment, through a socket pair
        handed over QMP (nothing listens anywhere), writes the tick count for now
        and, for each midnight since the state was saved, the BIOS's midnight
        count (0040:0070) that DOS adds to its date, and detaches. The guest stays
        paused throughout.
        """
        if self._qmp is None:
            raise MachineError("machine is not connected")
        moment = time.time() if now is None else now
        local = time.localtime(moment)
        since_midnight = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + moment % 1
        ticks = min(BIOS_TICKS_PER_DAY - 1, int(since_midnight * BIOS_TICKS_PER_DAY / 86400))
        days = 0
        if self.incoming_state is not None:
            with contextlib.suppress(OSError):
                saved = datetime.date.fromtimestamp(self.incoming_state.stat().st_mtime)
                days = max(0, min(255, (datetime.date.fromtimestamp(moment) - saved).days))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with theirs:
                self._qmp.send_fd_scm(theirs.fileno())
                await self.execute("getfd", {"fdname": GDB_CHARDEV})
            await self.execute("chardev-add", {"id": GDB_CHARDEV, "backend": {
                "type": "socket", "data": {"addr": {"type": "fd", "data": {"str": GDB_CHARDEV}},
                                           "server": False}}})
            said = await self.execute("human-monitor-command",
                                      {"command-line": f"gdbserver chardev:{GDB_CHARDEV}"})
            if "Waiting for gdb" not in str(said):
                raise MachineError(f"QEMU's debugger stub did not attach: {str(said).strip()}")
            try:
                ours.setblocking(False)
                reader, writer = await asyncio.open_unix_connection(sock=ours)
                try:
                    async with asyncio.timeout(self.qmp_timeout_s):
                        # Physical addresses: the BIOS data area, whatever the guest's paging.
                        await gdb_packet(reader, writer, "Qqemu.PhyMemMode:1")
                        await gdb_packet(reader, writer,
                                         f"M{BIOS_TICKS:x},4:{ticks.to_bytes(4, 'little').hex()}")
                        if days:
                            await gdb_packet(reader, writer, f"M{BIOS_MIDNIGHT:x},1:{days:02x}")
                finally:
                    writer.close()
            finally:
                # Detaching by the protocol would let the guest run; this keeps it paused.
                await self.execute("human-monitor-command", {"command-line": "gdbserver none"})
        finally:
            ours.close()

    async def save_state(self, path: Path, *, timeout_s: float) -> None:
        """Pause the guest and write its whole state to path (the guest stays paused).

        The sandbox forbids QEMU to spawn helpers, so the file is handed to QEMU
        as a descriptor over the QMP socket.
        """
        if self._qmp is None:
            raise MachineError("machine is not connected")
        await self.execute("stop")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._qmp.send_fd_scm(fd)
            await self.execute("getfd", {"fdname": "state"})
        finally:
            os.close(fd)
        async with asyncio.timeout(timeout_s):
            status = await self._migrate("migrate", {"uri": "fd:state"})
        if status != "completed":
            raise MachineError(f"saving the machine state {status}: "
                               f"{log_tail(self.log_path, 500).strip() or 'QEMU said nothing'}")

    async def fd_add(self, path: Path, *, flags: int, opaque: str) -> int:
        """Hand QEMU a file the portal opened (QEMU may run as a user that cannot reach
        it); returns the descriptor set QEMU names it by, `/dev/fdset/N`."""
        if self._qmp is None:
            raise MachineError("machine is not connected")
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            self._qmp.send_fd_scm(fd)
            added = await self.execute("add-fd", {"opaque": opaque})
        finally:
            os.close(fd)
        return int(added["fdset-id"])

    async def screendump(self, path: Path, *, image_format: str = "ppm") -> None:
        """Write the guest's screen to path (PPM or PNG), created by the portal.

        QEMU may run as a user that cannot reach path, so it gets the open file
        through a descriptor set (`add-fd`) and writes to `/dev/fdset/N`.
        """
        if image_format not in {"ppm", "png"}:
            raise ValueError(f"unknown screendump format {image_format!r}")
        fdset = await self.fd_add(path, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                  opaque="screendump")
        try:
            arguments: dict[str, Any] = {"filename": f"/dev/fdset/{fdset}"}
            if image_format != "ppm":
                arguments["format"] = image_format
            await self.execute("screendump", arguments)
        finally:
            with contextlib.suppress(QMPError, MachineError):
                await self.execute("remove-fd", {"fdset-id": fdset})

    async def job_run(self, command: str, arguments: dict[str, Any], *, timeout_s: float) -> None:
        """Run a QMP job (snapshot-save, -load, -delete) to its end; raises if it failed."""
        if self._qmp is None:
            raise MachineError("machine is not connected")
        job_id = f"portal-{secrets.token_hex(4)}"
        listener = EventListener("JOB_STATUS_CHANGE")
        try:
            with self._qmp.listen(listener):
                await self.execute(command, {"job-id": job_id, **arguments})
                async with asyncio.timeout(timeout_s):
                    async for event in listener:
                        data = event["data"]
                        if isinstance(data, dict) and data.get("id") == job_id \
                                and data.get("status") == "concluded":
                            break
        except TimeoutError:
            raise MachineError(f"QMP {command} did not finish in {timeout_s:g} s") from None
        jobs = await self.execute("query-jobs")
        error = next((str(job.get("error")) for job in jobs
                      if job.get("id") == job_id and job.get("error")), None)
        with contextlib.suppress(MachineError):
            await self.execute("job-dismiss", {"id": job_id})
        if error is not None:
            raise MachineError(f"QMP {command} failed: {error}")

    async def block_devices(self) -> list[dict[str, Any]]:
        """QEMU's drives (query-block): their names, guest devices and disks."""
        return list(await self.execute("query-block"))

    async def disk_snapshot(self, node: str, name: str) -> None:
        """A disk-only internal snapshot of a qcow2 node: atomic, the guest's disk I/O
        drained for a moment and the guest running on."""
        await self.execute("blockdev-snapshot-internal-sync", {"device": node, "name": name})

    async def disk_snapshot_delete(self, node: str, name: str) -> None:
        await self.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": name})

    async def qcow2_add(self, node: str, path: Path, *, backing_raw: Path | None = None,
                        backing: Sequence[tuple[Path, str]] = (), read_only: bool = False) -> None:
        """Open a qcow2 file of the portal's as a block node (through descriptors, so
        QEMU needs no access to the run directory or the image store). Its backing,
        if any: a raw file (`backing_raw`), or a master's chain of layers, top first,
        each (file, format) (`backing`), opened read-only the same way. With
        `read_only`, the node itself is read-only: a guest writing to it is refused."""
        flags = os.O_RDONLY if read_only else os.O_RDWR
        arguments: dict[str, Any] = {
            "driver": "qcow2", "node-name": node, "read-only": read_only,
            "file": {"driver": "file", "read-only": read_only, "filename": "/dev/fdset/"
                     f"{await self.fd_add(path, flags=flags, opaque=node)}"},
        }
        chain = [(backing_raw, "raw")] if backing_raw is not None else list(backing)
        below: dict[str, Any] | None = None
        for depth, (layer, layer_format) in reversed(list(enumerate(chain))):
            fdset = await self.fd_add(layer, flags=os.O_RDONLY, opaque=f"{node}-base{depth}")
            options: dict[str, Any] = {"driver": layer_format, "read-only": True,
                                       "file": {"driver": "file", "read-only": True,
                                                "filename": f"/dev/fdset/{fdset}"}}
            if layer_format == "qcow2":
                # Its own backing is the layer below, never a file opened by its name.
                options["backing"] = below
            below = options
        if below is not None:
            arguments["backing"] = below
        await self.execute("blockdev-add", arguments)

    async def node_keep(self, node: str, *, keeper: str, read_only: bool = False) -> None:
        """Keep a drive's disk open after it leaves its drive: a node QEMU made for a
        -drive is closed when taken out, one the monitor added above it is not."""
        await self.execute("blockdev-add", {"driver": "raw", "node-name": keeper, "file": node,
                                            "read-only": read_only})

    async def medium_change(self, device: str, node: str | None, *, force: bool = True) -> None:
        """Put node's disk into the removable drive (its QOM path or id), or leave it empty.

        Without `force`, a tray the guest has locked is not opened (the guest is
        asked to eject instead) and taking the disk out fails: nothing changes.
        """
        await self.execute("blockdev-open-tray", {"id": device, "force": force})
        await self.execute("blockdev-remove-medium", {"id": device})
        if node is not None:
            await self.execute("blockdev-insert-medium", {"id": device, "node-name": node})
        await self.execute("blockdev-close-tray", {"id": device})

    async def _migrate(self, command: str, arguments: dict[str, Any]) -> str:
        """Run a migration command and wait for QEMU's MIGRATION event to say how it ended."""
        assert self._qmp is not None
        await self.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": "events", "state": True}]})
        listener = EventListener("MIGRATION")
        with self._qmp.listen(listener):
            await self.execute(command, arguments)
            async for event in listener:
                data = event["data"]
                status = str(data.get("status")) if isinstance(data, dict) else ""
                if status in {"completed", "failed", "cancelled"}:
                    return status
        return "ended without a result"

    async def _connect_qmp(self) -> None:
        assert self._process is not None
        qmp = QMPClient(f"machine-{self.run_dir.name}")
        exited = asyncio.ensure_future(self._process.wait())
        connected = asyncio.ensure_future(qmp.connect(os.fspath(self.qmp_path)))
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await asyncio.wait({exited, connected}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise MachineStartError(
                f"QEMU did not answer within {self.start_timeout_s:g} s",
                argv=self.argv, returncode=self._process.returncode,
                log_tail=log_tail(self.log_path),
            ) from None
        finally:
            for task in (exited, connected):
                if not task.done():
                    task.cancel()
            await asyncio.gather(exited, connected, return_exceptions=True)
        if connected.cancelled() or connected.exception() is not None:
            with contextlib.suppress(Exception):
                await qmp.disconnect()
            # A QEMU that refused its arguments exits at once; wait for the
            # exit code so the error says what happened.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout_s):
                    await self._process.wait()
            raise MachineStartError(
                "QEMU exited during start-up",
                argv=self.argv, returncode=self._process.returncode,
                log_tail=log_tail(self.log_path),
            )
        self._qmp = qmp

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command with the QMP timeout."""
        if self._qmp is None:
            raise MachineError("machine is not connected")
        try:
            async with asyncio.timeout(self.qmp_timeout_s):
                return await self._qmp.execute(command, arguments)
        except (QMPError, EOFError, ConnectionError) as error:
            raise MachineError(f"QMP {command} failed: {error}") from error
        except TimeoutError:
            raise MachineError(f"QMP {command} did not answer in {self.qmp_timeout_s:g} s") from None

    async def screen_cells(self) -> tuple[BiosVideo, bytes]:
        """The BIOS's video fields and the active page's character cells, read from
        guest memory over the monitor (`xp`), in one round trip where it can.

        Both reads are sent at once, the cells from where the last read found the
        active page; only when the BIOS data area says the page moved or changed
        size are they read again from there. What is read is bounded by
        `screen.bios_video`: never more than the largest text mode, never outside
        the text window.
        """
        area_read = self.execute("human-monitor-command",
                                 {"command-line": f"xp /{BDA_LENGTH // 8}gx {BDA_START:#x}"})
        guess = self._screen_place
        cells_read = self._cells_read(*guess)
        area, cells = await asyncio.gather(area_read, cells_read)
        video = bios_video(monitor_bytes(str(area)))
        place = (video.address, video.length)
        if place != guess:
            self._screen_place = place
            cells = await self._cells_read(*place)
        return video, monitor_bytes(str(cells))

    async def _cells_read(self, address: int, length: int) -> Any:
        return await self.execute("human-monitor-command",
                                  {"command-line": f"xp /{(length + 7) // 8}gx {address:#x}"})

    async def text_screen(self) -> str:
        """The guest's text screen as lines (code page 437), or "" in a graphics mode
        as the BIOS reports it."""
        video, cells = await self.screen_cells()
        screen = screen_from(video, cells, code_page=DEFAULT_CODE_PAGE, display=None)
        return "\n".join(screen.lines)

    async def paused_by_io_error(self) -> dict[str, Any]:
        """Wait until QEMU pauses the guest over a failed disk access (QMP
        BLOCK_IO_ERROR with action "stop"); returns the event's data.

        On a full host disk QEMU pauses a hard disk's guest rather than lose the
        write (`werror=enospc`), so a visitor would otherwise look at a frozen
        machine. (A floppy reports the error to the guest instead, and DOS says
        so.) Waits for ever on a machine without QMP.
        """
        if self._qmp is None:
            await asyncio.Future()
        assert self._qmp is not None
        listener = EventListener("BLOCK_IO_ERROR")
        with self._qmp.listen(listener):
            while True:
                event = await listener.get()
                data = event["data"]
                if isinstance(data, dict) and data.get("action") == "stop":
                    return dict(data)

    async def wait(self) -> int:
        """Wait until the QEMU process has exited; returns its exit code."""
        if self._process is None:
            raise MachineError("machine was never started")
        return await self._process.wait()

    async def kill_now(self) -> None:
        """End QEMU at once, for a machine whose disk is thrown away anyway (reset).

        QMP is let go first, so the kill is not reported as a broken connection.
        Its files may be replaced as soon as this returns; `stop()` still reaps it.
        """
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(QMPError, EOFError, ConnectionError, OSError):
                await qmp.disconnect()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def stop(self) -> None:
        """QMP quit, wait, kill if it lingers, wait. Idempotent."""
        if self._process is None:
            await self.printer.close()
            await self._cgroup_remove()
            await asyncio.to_thread(self._after_stop)
            return
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        # Shielded: a caller that is cancelled must not leave QEMU half-stopped.
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        process = self._process
        assert process is not None
        qmp, self._qmp = self._qmp, None
        try:
            if qmp is not None and process.returncode is None:
                with contextlib.suppress(QMPError, EOFError, ConnectionError, TimeoutError):
                    async with asyncio.timeout(self.qmp_timeout_s):
                        await qmp.execute("quit")
            elif process.returncode is None:
                # Stopped before QMP was up: QEMU also ends cleanly on SIGTERM.
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await process.wait()
            except TimeoutError:
                logger.warning("QEMU pid %s ignored quit; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        finally:
            if qmp is not None:
                # After quit the connection ends with EOFError: the normal end.
                with contextlib.suppress(QMPError, EOFError, ConnectionError, OSError):
                    await qmp.disconnect()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await self.printer.close()
            await self._cgroup_remove()
            await asyncio.to_thread(self._after_stop)

    def _after_stop(self) -> None:
        connection, self._display_connection = self._display_connection, None
        if connection is not None:
            connection.close()
        calls, self.after_stop = self.after_stop, []
        if calls:
            self.last_words = log_tail(self.log_path, 500).strip()
        for call in calls:
            try:
                call()
            except Exception:
                logger.exception("machine %s: cleaning up after its stop failed", self.run_dir.name)


async def vnc_refresh_soon(vnc_path: Path) -> None:
    """Have QEMU's VNC server refresh the display within its shortest interval.

    QEMU sends a viewer's requested update only at its next display refresh,
    whose interval grows by 50 ms after each refresh with nothing to send (and
    QEMU 7.2 lets it grow to 3 s while the guest is paused, not resetting it on
    resume). A new VNC connection sets the interval back to its shortest, 30 ms
    after the last refresh (at once, if that was longer ago: see
    `Machine.display_connection_open`): one is opened and closed at once,
    without a handshake.
    """
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_unix_connection(os.fspath(vnc_path))
        writer.close()


async def gdb_packet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: str) -> str:
    """Send one packet of the GDB remote protocol and return the answer's payload;
    anything but OK (or data, for a read) raises."""
    writer.write(f"${data}#{sum(data.encode()) & 0xFF:02x}".encode())
    await writer.drain()
    answer = await reader.readuntil(b"#")
    await reader.readexactly(2)
    writer.write(b"+")
    payload = answer[answer.index(b"$") + 1:-1].decode("ascii", "replace")
    if payload.startswith("E") or payload == "":
        raise MachineError(f"QEMU's debugger stub refused {data.split(':')[0]!r}: {payload!r}")
    return payload


def process_alive(pid: int) -> bool:
    """True while the process runs; an exited one waiting to be reaped (a zombie) is not."""
    try:
        return psutil.Process(pid).status() not in {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # there, but not ours to look at
