"""What a QEMU process may do and use: its user and its memory.

Owns: the user a machine runs as (one uid per machine, so two machines can
neither signal nor trace each other nor open each other's files), the
per-machine memory cgroup (v2 or v1, whichever this host delegates) under a
parent cgroup named for the install, and the step that runs in the child
between fork and exec to join that cgroup and arm the parent-death signal.

Must not: import Django, choose or lease a uid, name the install, or decide
when a machine starts or ends. The caller (sessions/machines/host.py) gives the uid,
the parent's name and the byte limit; this module only applies them.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")


class ConfineError(Exception):
    """A machine's confinement could not be set up."""


@dataclass(frozen=True)
class MemoryCgroups:
    """Where per-machine memory cgroups are made, and which interface they speak."""

    parent: Path
    version: int  # 1 or 2

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    def path_for(self, name: str) -> Path:
        if not name or "/" in name or name in {".", ".."}:
            raise ConfineError(f"invalid cgroup name {name!r}")
        return self.parent / name

    def create(self, name: str, *, limit_bytes: int) -> Path:
        path = self.path_for(name)
        try:
            # Another process of the install may have removed the empty parent.
            for attempt in range(3):
                self._parent_ensure()
                try:
                    path.mkdir(exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            (path / self.limit_file).write_text(str(limit_bytes))
            if self.version == 2:
                # No swapping a visitor's machine out to make room: the limit is the limit.
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
        except OSError as error:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise ConfineError(f"could not create memory cgroup {path}: {error}") from error
        return path

    def _parent_ensure(self) -> None:
        if self.parent.is_dir():
            return
        with contextlib.suppress(FileExistsError):
            self.parent.mkdir()
        if self.version == 2:
            # Enable the memory controller for the machines' cgroups below the parent.
            (self.parent / "cgroup.subtree_control").write_text("+memory")

    def parent_remove(self) -> None:
        """Remove the parent if no machine's cgroup is left in it (else leave it)."""
        try:
            self.parent.rmdir()
        except OSError as error:
            if error.errno not in {errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY}:
                logger.warning("could not remove cgroup %s: %s", self.parent, error)

    def oom_kills(self, path: Path) -> int:
        """How many times the kernel killed a process of this machine's cgroup for
        passing its memory limit (0 where the kernel does not say)."""
        events = path / ("memory.events" if self.version == 2 else "memory.oom_control")
        with contextlib.suppress(OSError, ValueError):
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def names(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(entry.name for entry in self.parent.iterdir() if entry.is_dir())
        return []


def cgroup_remove(path: Path, *, timeout_s: float = 2.0) -> None:
    """Remove an empty cgroup; its last process may still be leaving, so retry briefly."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                logger.warning("could not remove cgroup %s: %s", path, error)
                return
        time.sleep(0.02)


def memory_cgroups_find(*, parent_name: str, proc_cgroup: Path = Path("/proc/self/cgroup"),
                        mount: Path = CGROUP_MOUNT) -> MemoryCgroups | None:
    """The portal's own memory cgroup's child `parent_name`, made if needed.

    cgroup v2 is preferred where its memory controller can be enabled below the
    portal's cgroup; otherwise cgroup v1's memory hierarchy. None when neither
    is writable (an unprivileged portal, or a container without delegation).
    """
    if not parent_name or "/" in parent_name or parent_name in {".", ".."}:
        raise ConfineError(f"invalid cgroup name {parent_name!r}")
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    v1_path = v2_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    candidates: list[tuple[Path, int]] = []
    if v2_path is not None:
        for root in (mount, mount / "unified"):
            if (root / "cgroup.controllers").exists():
                candidates.append((root / v2_path.lstrip("/"), 2))
                break
    if v1_path is not None:
        candidates.append((mount / "memory" / v1_path.lstrip("/"), 1))
    for own, version in candidates:
        found = _parent_prepare(own / parent_name, version)
        if found is not None:
            return found
    return None


def _parent_prepare(parent: Path, version: int) -> MemoryCgroups | None:
    """The parent's cgroups if this process can make them; a parent made only to
    find that out is removed again (machines' cgroups make it anew)."""
    own = parent.parent
    existed = parent.is_dir()
    try:
        if version == 2:
            if "memory" not in (own / "cgroup.controllers").read_text().split():
                return None
            parent.mkdir(exist_ok=True)
            # Enable the memory controller for the machines' cgroups below ours.
            (parent / "cgroup.subtree_control").write_text("+memory")
        else:
            parent.mkdir(exist_ok=True)
    except OSError:
        if not existed:
            with contextlib.suppress(OSError):
                parent.rmdir()
        return None
    found = MemoryCgroups(parent=parent, version=version)
    if not existed:
        found.parent_remove()
    return found


@dataclass(frozen=True)
class Confinement:
    """How one QEMU process is held: its user and its memory.

    `run_as` is (uid, gid), or None to stay the portal's own user; `lease_fds`
    are descriptors QEMU inherits and keeps for its whole life (the lease on
    its uid, so the uid stays taken while it runs, even past the portal's
    death). `memory_bytes`
    is the most memory the process may use: enforced by its own cgroup under
    `cgroups` where the host delegates one, else by an address-space limit
    (`RLIMIT_AS`) of that size plus `address_space_slack_bytes`, since QEMU
    reserves address space it never touches.
    """

    run_as: tuple[int, int] | None = None
    lease_fds: tuple[int, ...] = ()
    memory_bytes: int | None = None
    cgroups: MemoryCgroups | None = None
    address_space_slack_bytes: int = 2 * 1024**3

    @property
    def memory_method(self) -> str:
        if self.memory_bytes is None:
            return "none"
        return f"cgroup-v{self.cgroups.version}" if self.cgroups else "rlimit-as"

    def child_setup(self, cgroup: Path | None) -> Callable[[], None]:
        """The function that runs in the child between fork and exec."""
        cgroup_procs = os.fsencode(cgroup / "cgroup.procs") if cgroup else None
        address_space = None
        if self.memory_bytes is not None and cgroup is None:
            address_space = self.memory_bytes + self.address_space_slack_bytes

        def setup() -> None:
            # If the portal dies, the kernel ends its machines. The kernel clears this
            # when QEMU switches user (-runas), which is why the reaper exists too.
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
            if cgroup_procs is not None:
                # Join before exec, so every byte QEMU ever allocates is counted.
                fd = os.open(cgroup_procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            if address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

        return setup


def uid_range_valid(base: int, count: int) -> bool:
    """The dedicated range must not reach root, system users or the 32-bit end."""
    return base >= 65536 and base + count < 2**32 - 1
