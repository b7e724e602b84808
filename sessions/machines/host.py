"""This install on this host (in a portal of several, this node): who it is and what it holds.

Owns: the install's identity (`PORTAL_INSTALL_ID`, or derived from the real
path of `PORTAL_DATA_DIR`), which names everything the install makes outside
its data directory; the accelerator and capacity this host gives it; machine
leases (one file per machine name in the install's lease directory, locked
with `flock` by the process that owns the machine for the machine's whole
life, so the reaper of any process of the install ends only what no living
process owns); uid leases (one locked file per uid in a host-wide directory,
handed on to the QEMU that runs as that uid, so no two machines on the host
share a uid whichever install started them); and the install's memory-cgroup
parent, `portal-<identity>`.

Must not: start or end machines, or touch the database. Settings are read when
asked, never at import: tests change them per test.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from sessions.machines.confine import MemoryCgroups, memory_cgroups_find, uid_range_valid
from sessions.machines.machine import kvm_usable

INSTALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
LEASE_SUFFIX = ".lock"
# Directory names and lease names share one alphabet: no separators, no dot files.
MACHINE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


class HostError(Exception):
    """Base of this module's errors."""


class LeaseHeldError(HostError):
    """Another process (or another lease of this one) holds the lease."""


class UidsExhaustedError(HostError):
    """Every uid of the range is leased."""


# --- identity ----------------------------------------------------------------

def install_id() -> str:
    """This install's name: PORTAL_INSTALL_ID, else 10 hex digits of the data directory's real path."""
    configured = str(getattr(settings, "PORTAL_INSTALL_ID", "") or "")
    if configured:
        if not INSTALL_ID.fullmatch(configured):
            raise ValueError(f"PORTAL_INSTALL_ID must be 1 to 40 letters, digits, '-' or '_' "
                             f"starting with a letter or digit, not {configured!r}")
        return configured
    return install_id_derive(Path(settings.PORTAL_DATA_DIR))


def install_id_derive(data_dir: Path) -> str:
    """The identity of the install whose data directory this is (when none is configured)."""
    return hashlib.sha256(os.fsencode(os.path.realpath(data_dir))).hexdigest()[:10]


def cgroup_parent_name(install: str) -> str:
    """The memory cgroup that holds one install's machines' cgroups."""
    return f"portal-{install}"


def lease_dir() -> Path:
    """Where this install's machine leases live: inside its data directory, private."""
    return Path(settings.PORTAL_DATA_DIR) / "leases"


# --- what this host gives the install ------------------------------------------

def accelerator_choose(setting: str) -> str:
    if setting == "auto":
        return "kvm" if kvm_usable() else "tcg"
    if setting not in {"kvm", "tcg"}:
        raise ValueError(f"PORTAL_ACCELERATOR must be auto, kvm or tcg, not {setting!r}")
    return setting


# What one idle visitor's machine costs, measured by bench/density.py with 100 to 500
# demo machines on a 2-core, 24 GiB host with KVM (docs/operators.md, "Capacity"):
# its proportional share of memory (PSS) with KSM off (merging is a bonus, not a
# promise), and the host CPU it uses while nobody types.
MACHINE_MEMORY_MIB = 20.0
MACHINE_IDLE_CPU_PERCENT = 0.22
# Memory kept for the host itself, the portal and page cache: a share of it, at least 1 GiB.
MEMORY_RESERVE_SHARE = 0.15
MEMORY_RESERVE_MIN_MIB = 1024
# The share of the host's CPU idle machines may take: the rest is for the machines
# visitors are using, which take far more.
IDLE_CPU_SHARE = 0.5


def capacity_limits(*, memory_per_machine_mib: float, idle_cpu_percent: float,
                    memory_mib: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """How many machines this host carries by its memory (less a reserve) and by its
    CPU (idle machines within `IDLE_CPU_SHARE` of it), given what one costs. Idle
    machines measured at no CPU at all (a short window) leave the CPU no bound:
    `sys.maxsize`."""
    if memory_mib is None:
        memory_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    cores = cores or os.cpu_count() or 1
    reserve = max(MEMORY_RESERVE_MIN_MIB, memory_mib * MEMORY_RESERVE_SHARE)
    by_memory = int(max(0.0, memory_mib - reserve) // memory_per_machine_mib)
    by_cpu = (int(cores * 100 * IDLE_CPU_SHARE // idle_cpu_percent) if idle_cpu_percent > 0
              else sys.maxsize)
    return max(1, by_memory), max(1, by_cpu)


def capacity_default() -> int:
    """Machines this host can carry, from what a machine was measured to cost: its
    memory past a reserve, and its idle CPU within half the host's cores."""
    by_memory, by_cpu = capacity_limits(memory_per_machine_mib=MACHINE_MEMORY_MIB,
                                        idle_cpu_percent=MACHINE_IDLE_CPU_PERCENT)
    return min(by_memory, by_cpu)


def runas_choose(setting: str, uid_base: int, count: int) -> int | None:
    """The base of the uid range machines run in: only a root portal can switch users."""
    if setting not in {"auto", "on", "off"}:
        raise ValueError(f"PORTAL_QEMU_RUNAS must be auto, on or off, not {setting!r}")
    if setting == "off" or (setting == "auto" and os.geteuid() != 0):
        return None
    if os.geteuid() != 0:
        raise ValueError("PORTAL_QEMU_RUNAS=on needs the portal to run as root")
    if count < 1 or not uid_range_valid(uid_base, count + 1):
        raise ValueError(f"PORTAL_QEMU_UID_BASE {uid_base} with PORTAL_QEMU_UID_COUNT {count} "
                         "reaches outside the dedicated uid range")
    return uid_base


_memory_cgroups: dict[str, MemoryCgroups | None] = {}


def memory_cgroups(install: str) -> MemoryCgroups | None:
    """The install's memory cgroups for machines, looked up once per process."""
    if install not in _memory_cgroups:
        _memory_cgroups[install] = memory_cgroups_find(parent_name=cgroup_parent_name(install))
    return _memory_cgroups[install]


# --- leases --------------------------------------------------------------------

@dataclass(eq=False)
class Lease:
    """A lock file held with `flock`. The kernel lets go when every descriptor of
    it is closed: by `release()`, or by the death of its holders."""

    path: Path
    fd: int

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(LEASE_SUFFIX)

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        """Remove the file and let go; safe to call twice.

        Only the holder removes the file, while it holds it: whoever opened the
        file meanwhile finds, once it has the lock, that the path no longer
        leads to it, and tries again (see `lease_try`).
        """
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_try(path: Path) -> Lease | None:
    """Take the lease on path unless someone holds it (None then).

    Locks conflict between separate opens even inside one process, so a
    reaper asking in the process that owns a machine is refused too.
    """
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in {errno.EWOULDBLOCK, errno.EAGAIN}:
                return None
            raise
        try:
            opened, current = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
                return Lease(path=path, fd=fd)
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed the file: lock the new one


def _lease_directory(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != 0o700:
        os.chmod(directory, 0o700)
    return directory


def machine_lease_path(*, name: str, directory: Path | None = None) -> Path:
    if not MACHINE_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"invalid machine name {name!r}")
    return (directory or lease_dir()) / f"{name}{LEASE_SUFFIX}"


def machine_lease_try(*, name: str, directory: Path | None = None) -> Lease | None:
    """The machine's lease if no living process holds it (the reaper's question)."""
    path = machine_lease_path(name=name, directory=directory)
    _lease_directory(path.parent)
    return lease_try(path)


def machine_lease_take(*, name: str, directory: Path | None = None) -> Lease:
    """Own the machine called name (a run directory's name) before any of it exists.

    Hold it until every trace of the machine (process, run directory, cgroup,
    live row) is gone, then `release()` it.
    """
    lease = machine_lease_try(name=name, directory=directory)
    if lease is None:
        raise LeaseHeldError(f"machine {name} is already owned")
    return lease


@contextlib.contextmanager
def machine_lease(*, name: str, directory: Path | None = None) -> Iterator[Lease]:
    """`with machine_lease(name=...)`: own a machine started outside the broker."""
    lease = machine_lease_take(name=name, directory=directory)
    try:
        yield lease
    finally:
        lease.release()


def machine_lease_names(directory: Path | None = None) -> list[str]:
    """Names with a lease file: held ones, and ones a dead owner left."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(entry.name.removesuffix(LEASE_SUFFIX)
                      for entry in (directory or lease_dir()).iterdir()
                      if entry.name.endswith(LEASE_SUFFIX))
    return []


@dataclass(eq=False)
class UidLease(Lease):
    @property
    def uid(self) -> int:
        return int(self.name)


def uid_lease_take(*, base: int, count: int, directory: Path | None = None) -> UidLease:
    """Lease the first free uid of base+1 .. base+count, host-wide.

    Give `fd` to the QEMU that runs as it (`Confinement.lease_fds`): then the
    uid stays taken as long as that QEMU lives, even if the portal does not.
    """
    folder = _lease_directory(directory or Path(settings.PORTAL_UID_LEASE_DIR))
    for uid in range(base + 1, base + count + 1):
        lease = lease_try(folder / f"{uid}{LEASE_SUFFIX}")
        if lease is not None:
            return UidLease(path=lease.path, fd=lease.fd)
    raise UidsExhaustedError(f"all {count} uids from {base + 1} are in use on this host")


def uid_leases_tidy(directory: Path | None = None) -> None:
    """Remove the files of uid leases nobody holds (their QEMU died with no owner to
    let go): taking a free lease and releasing it removes its file."""
    folder = directory or Path(settings.PORTAL_UID_LEASE_DIR)
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name.endswith(LEASE_SUFFIX) and entry.name[:-len(LEASE_SUFFIX)].isdigit():
                lease = lease_try(entry)
                if lease is not None:
                    lease.release()
