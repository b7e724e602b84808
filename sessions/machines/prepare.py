"""Preparing an exhibit's start state: boot it once, freeze it, resume it for every visitor.

Owns: booting an exhibit on a fresh overlay over its master, waiting until it
reaches its start state (the screen stays still, a time passes, or a short
script of waiting for text and pressing keys), saving the machine state, and
freezing the overlay (what booting wrote) as the read-only warm layer.

Must not: touch the master, or leave anything behind when preparing fails.
Its caller owns the machine (holds its lease, sessions/machines/host.py) meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from portal.importer import sha256_path as sha256_file
from portal.profile import MachineProfile
from sessions.machines.confine import Confinement
from sessions.machines.machine import Machine, MachineError, state_key
from sessions.machines.overlay import OverlayError, overlay_create, run_dir_create, run_dir_remove
from sessions.machines.sandbox import blank_disks_create

WARM_FILE = "warm.qcow2"
STATE_FILE = "machine.state"
SCREEN_FILE = "start-screen.png"
# The screen is looked at this often while waiting for it to settle.
LOOK_INTERVAL_S = 0.25
# A screen where less than this share of bytes changed counts as still, so a
# ticking clock does not keep a desktop from settling.
STILL_TOLERANCE = 0.01
TEXT_MODE_SIZE = (720, 400)


class PrepareError(Exception):
    """The start state could not be prepared; nothing was kept."""


@dataclass(frozen=True)
class StartCondition:
    """When a booting exhibit has reached its start state."""

    still_s: float = 2.0
    after_s: float | None = None
    wait_text: str | None = None
    keys: Sequence[str] = ()
    wait_graphics: bool = False
    timeout_s: float = 120.0

    def describe(self) -> str:
        parts = []
        if self.wait_graphics:
            parts.append("graphics mode")
        if self.wait_text:
            parts.append(f"text {self.wait_text!r}")
        if self.keys:
            parts.append("keys " + ",".join(self.keys))
        parts.append(f"after {self.after_s:g} s" if self.after_s is not None
                     else f"still for {self.still_s:g} s")
        return ", then ".join(parts)


@dataclass(frozen=True)
class PreparedState:
    warm_path: Path
    warm_sha256: str
    state_path: Path
    state_sha256: str
    key: str
    seconds: float
    # The screen at the start state (PNG), which becomes the exhibit's thumbnail; None
    # when QEMU could not give it.
    screen: bytes | None = None


async def _screen(machine: Machine, path: Path) -> tuple[tuple[int, int], bytes]:
    await machine.screendump(path)
    data = await asyncio.to_thread(path.read_bytes)
    header = data.split(b"\n", 3)
    width, height = (int(v) for v in header[1].split())
    return (width, height), header[3]


def _graphical(size: tuple[int, int], picture: bytes) -> bool:
    """A graphics mode with a desktop drawn: not the BIOS's text mode, and not the
    mostly black screen (with QEMU's "not initialised" notice) before any mode is set."""
    return size != TEXT_MODE_SIZE and picture.count(0) < 0.9 * len(picture)


def _changed_share(before: bytes, after: bytes) -> float:
    if len(before) != len(after):
        return 1.0
    step = 97  # sample the picture: exactness is not needed to tell still from moving
    samples = range(0, len(after), step)
    return sum(1 for i in samples if before[i] != after[i]) / max(1, len(samples))


async def _reach(machine: Machine, condition: StartCondition, scratch: Path) -> None:
    started = time.monotonic()
    # QEMU has no event for "the screen shows X": looking again is the only way.
    if condition.wait_graphics:
        while not _graphical(*await _screen(machine, scratch)):  # noqa: ASYNC110
            await asyncio.sleep(LOOK_INTERVAL_S)  # the guest has not drawn its desktop yet
    if condition.wait_text:
        while condition.wait_text not in await machine.text_screen():  # noqa: ASYNC110
            await asyncio.sleep(LOOK_INTERVAL_S)  # the guest has not printed it yet
    if condition.keys:
        for key in condition.keys:
            await machine.execute("send-key", {"keys": [{"type": "qcode", "data": key}]})
    if condition.after_s is not None:
        await asyncio.sleep(max(0.0, condition.after_s - (time.monotonic() - started)))
        return
    await screen_settle(machine, scratch, still_s=condition.still_s)


async def screen_png(machine: Machine, path: Path) -> bytes | None:
    """The machine's screen as a PNG (through a file in its run directory), or None."""
    try:
        await machine.screendump(path, image_format="png")
        return await asyncio.to_thread(path.read_bytes)
    except (MachineError, OSError):
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def screen_settle(machine: Machine, scratch: Path, *, still_s: float) -> None:
    """Return once the machine's screen has stayed still for still_s (a ticking clock or
    a blinking cursor, under STILL_TOLERANCE of it, counts as still). `scratch` is a
    file in the machine's run directory for its screendumps."""
    size, picture = await _screen(machine, scratch)
    still_since = time.monotonic()
    while time.monotonic() - still_since < still_s:
        await asyncio.sleep(LOOK_INTERVAL_S)  # watching the screen settle
        new_size, new_picture = await _screen(machine, scratch)
        if new_size != size or _changed_share(picture, new_picture) > STILL_TOLERANCE:
            still_since = time.monotonic()
        size, picture = new_size, new_picture


async def start_state_prepare(
    *,
    profile: MachineProfile,
    master_path: Path,
    master_format: str,
    master_sha256: str,
    store: Path,
    run_root: Path,
    qemu_binary: str,
    qemu_img: str,
    qemu_version: str,
    accelerator: str,
    condition: StartCondition,
    timeouts: tuple[float, float, float],
    confinement: Confinement | None = None,
    name: str | None = None,
    picture_only: bool = False,
) -> PreparedState:
    """Boot, reach the condition, save; returns the frozen files in store (with
    `picture_only`, only the screen there: nothing is saved or kept).

    The machine works in run_root/name (default `prepare-<random>`); whoever
    calls holds that name's machine lease (sessions/host.py) for the whole call.
    """
    start_timeout_s, qmp_timeout_s, stop_timeout_s = timeouts
    began = time.monotonic()
    try:
        work = run_dir_create(root=run_root, name=name or f"prepare-{secrets.token_hex(8)}")
    except OverlayError as error:
        raise PrepareError(f"the exhibit could not be booted: {error.log_detail}") from error
    try:
        warm = work / WARM_FILE
        await overlay_create(base_path=master_path, base_format=master_format,
                             overlay_path=warm, qemu_img=qemu_img, timeout_s=start_timeout_s)
        # The same blank floppies every visitor's machine gets (sessions/sandbox.py).
        await blank_disks_create(work, profile, qemu_img_binary=qemu_img, timeout_s=start_timeout_s)
        machine = Machine(
            profile, run_dir=work, disk_path=warm, qemu_binary=qemu_binary,
            accelerator=accelerator, start_timeout_s=start_timeout_s,
            qmp_timeout_s=qmp_timeout_s, stop_timeout_s=stop_timeout_s,
            confinement=confinement,
        )
        await machine.start()
        try:
            try:
                async with asyncio.timeout(condition.timeout_s):
                    await _reach(machine, condition, work / "screen.ppm")
            except TimeoutError:
                last = (await machine.text_screen()).strip().splitlines()[-1:] or ["(graphics)"]
                raise PrepareError(
                    f"the exhibit did not reach its start state ({condition.describe()}) within "
                    f"{condition.timeout_s:g} s; last text line: {last[0]!r}"
                ) from None
            screen = await screen_png(machine, work / SCREEN_FILE)
            if picture_only:
                # Only the screen was wanted (a thumbnail of an exhibit that boots cold).
                return PreparedState(warm_path=Path(), warm_sha256="", state_path=Path(),
                                     state_sha256="", key="", seconds=time.monotonic() - began,
                                     screen=screen)
            await machine.save_state(work / STATE_FILE, timeout_s=start_timeout_s)
        finally:
            await machine.stop()
        prepared = await asyncio.to_thread(
            _freeze, work, store,
            state_key(profile, accelerator=accelerator, qemu=qemu_version,
                      master_sha256=master_sha256),
            time.monotonic() - began,
        )
        return dataclasses.replace(prepared, screen=screen)
    except (OverlayError, MachineError) as error:
        raise PrepareError(f"the exhibit could not be booted: {error}") from error
    finally:
        await asyncio.to_thread(run_dir_remove, work)


def _freeze(work: Path, store: Path, key: str, seconds: float) -> PreparedState:
    """Move both files into the store, read-only, named by their contents."""
    warm_sha256 = sha256_file(work / WARM_FILE)
    state_sha256 = sha256_file(work / STATE_FILE)
    target = store / f"{warm_sha256[:16]}-{state_sha256[:16]}"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (WARM_FILE, STATE_FILE):
        destination = target / name
        with contextlib.suppress(FileNotFoundError):
            destination.chmod(0o644)
        shutil.move(work / name, destination)
        destination.chmod(0o444)
        paths.append(destination)
    return PreparedState(warm_path=paths[0], warm_sha256=warm_sha256, state_path=paths[1],
                         state_sha256=state_sha256, key=key, seconds=seconds)


def start_state_discard(warm_path: Path) -> None:
    """Delete a replaced start state's files. Machines already running keep
    their open files; new ones use the new state."""
    directory = warm_path.parent
    for child in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            child.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
