"""The reaper: ends what no living process of this install owns any more.

Owns: finding the install's machines that no process owns (their owner died:
the portal crashed or restarted, a `prepare_exhibit` was killed), ending their
QEMU processes, recognised by the run directory on their command line (never
by process name) or by their memory cgroup under the install's own parent,
deleting stray run directories, cgroups and lease files, and marking live
rows of such sessions ended with reason `server`. Runs at start-up and every
PORTAL_REAPER_INTERVAL_S.

Must not: touch anything of a machine whose lease a living process holds
(sessions/machines/host.py), in this process or another; or look outside this
install's run root, cgroup parent and lease directory.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
from django.utils import timezone

from sessions.errors import gettext_noop
from sessions.machines.confine import MemoryCgroups, cgroup_remove
from sessions.machines.host import machine_lease_names, machine_lease_try
from sessions.machines.machine import VNC_SOCKET
from sessions.models import VisitorSession

logger = logging.getLogger(__name__)


def _qemu_pids_under(run_root: Path) -> dict[str, int]:
    """Map run-directory name → pid for every process whose argv names a run dir."""
    prefix = f"{run_root}/"
    found: dict[str, int] = {}
    for process in psutil.process_iter(["cmdline"]):
        for arg in process.info["cmdline"] or ():
            # The -vnc argument names the socket inside the session's run dir.
            position = arg.find(prefix)
            if position < 0:
                continue
            name, _, rest = arg[position + len(prefix):].partition("/")
            if name and rest.startswith(VNC_SOCKET):
                found[name] = process.pid
                break
    return found


def reap_once(*, run_root: Path, is_live: Callable[[str], bool], lease_dir: Path,
              node: str, cgroups: MemoryCgroups | None = None) -> int:
    """End orphaned machines and files; returns how many machines were cleaned.

    A machine is an orphan when nobody holds its lease in `lease_dir`: every
    owner (the broker, a prepare, a benchmark) takes it before any of the
    machine exists and lets go only once all of it is gone, and the kernel
    lets go for an owner that dies. The reaper holds the orphan's lease while
    it cleans, so nobody else can own it meanwhile. `is_live(name)` (the
    broker in this process) only saves asking. Of the database's live rows it
    looks only at `node`'s own (and rows from before nodes were recorded),
    and not at those placed on it that it has not taken in yet:
    another node's visits are that node's, or, once it is dead, the node
    sweep's (sessions.placement.nodes).
    """
    cleaned: set[str] = set()
    pids = _qemu_pids_under(run_root)
    names = set(pids)
    with contextlib.suppress(FileNotFoundError):
        names |= {entry.name for entry in run_root.iterdir() if entry.is_dir()}
    stale_rows = set(
        VisitorSession.objects.filter(state__in=VisitorSession.LIVE_STATES, node__in=[node, ""])
        # Placed on this node by another and not taken in yet (the broker does at
        # its next heartbeat, if not sooner): nothing of it exists to be an orphan.
        .exclude(state=VisitorSession.State.STARTING, run_dir="")
        .values_list("id", flat=True)
    )
    names |= stale_rows
    names |= set(machine_lease_names(lease_dir))
    cgroup_names: dict[str, list[str]] = {}
    if cgroups is not None:
        for cgroup in cgroups.names():
            cgroup_names.setdefault(cgroup.partition(".")[0], []).append(cgroup)
        names |= set(cgroup_names)
    for name in sorted(names):
        if is_live(name):
            continue
        try:
            lease = machine_lease_try(name=name, directory=lease_dir)
        except ValueError:
            logger.warning("reaper skipped %r: not a machine's name", name)
            continue
        if lease is None:
            continue  # a living process owns it
        with lease:
            if _clean(name, pid=pids.get(name), run_root=run_root, cgroups=cgroups,
                      cgroup_names=cgroup_names.get(name, []), row=name in stale_rows):
                cleaned.add(name)
    return len(cleaned)


def _clean(name: str, *, pid: int | None, run_root: Path, cgroups: MemoryCgroups | None,
           cgroup_names: list[str], row: bool) -> bool:
    """End one orphan whose lease the caller holds: process, cgroups, files, row.

    Returns whether anything of it was left (a lease file alone is not news).
    """
    found = False
    # Seen before the lease was taken: the owner may have ended it since and the
    # pid been given to someone else, so it must still name the run directory.
    if pid is not None and pid != os.getpid() and _qemu_pids_under(run_root).get(name) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        logger.warning("reaper ended orphaned QEMU pid %s (%s)", pid, name)
        found = True
    for cgroup in cgroup_names:
        assert cgroups is not None
        found = _cgroup_empty(cgroups.path_for(cgroup)) or found
    path = run_root / name
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        found = True
    if row:
        found = VisitorSession.objects.filter(
            id=name, state__in=VisitorSession.LIVE_STATES
        ).update(
            state=VisitorSession.State.ENDED,
            ended_reason=VisitorSession.EndedReason.SERVER,
            detail=gettext_noop("The server restarted and this machine was lost."),
            ended_at=timezone.now(),
            pid=None,
        ) > 0 or found
    return found


def _cgroup_empty(path: Path) -> bool:
    """Kill whatever is left in an orphaned machine's cgroup, then remove it."""
    if not path.is_dir():
        return False
    with contextlib.suppress(OSError):
        for line in (path / "cgroup.procs").read_text().split():
            if int(line) != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line), signal.SIGKILL)
    cgroup_remove(path)
    return True
