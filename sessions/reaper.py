"""The reaper: ends what no broker owns any more.

Owns: finding sessions that the database calls live but no broker in this
process runs (the portal died or restarted), ending their QEMU processes,
recognised by the run directory on their command line (never by process
name) or by their memory cgroup, deleting stray run directories and cgroups,
and marking those sessions ended with reason `server`. Runs at start-up and
every PORTAL_REAPER_INTERVAL_S.

Must not: touch a session the running broker owns (`is_live`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from django.utils import timezone

from .confine import MemoryCgroups, cgroup_remove
from .machine import VNC_SOCKET
from .models import VisitorSession

logger = logging.getLogger(__name__)


def _qemu_pids_under(run_root: Path) -> dict[str, int]:
    """Map run-directory name → pid for every process whose argv names a run dir."""
    prefix = os.fsencode(run_root) + b"/"
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            # The -vnc argument names the socket inside the session's run dir.
            position = arg.find(prefix)
            if position < 0:
                continue
            name, _, rest = arg[position + len(prefix):].partition(b"/")
            if name and rest.startswith(os.fsencode(VNC_SOCKET)):
                found[os.fsdecode(name)] = int(entry)
                break
    return found


def reap_once(*, run_root: Path, is_live: Callable[[str], bool],
              cgroups: MemoryCgroups | None = None) -> int:
    """End orphaned machines and files; returns how many sessions were cleaned.

    `is_live(name)` says whether the running broker owns a session; it is asked
    again right before each step, since the broker keeps working meanwhile (it
    owns a session before its row, run directory or machine exist, and lets go
    only after recording its end).
    """
    cleaned: set[str] = set()
    pids = _qemu_pids_under(run_root)
    names = set(pids)
    with contextlib.suppress(FileNotFoundError):
        names |= {entry.name for entry in run_root.iterdir() if entry.is_dir()}
    stale_rows = set(
        VisitorSession.objects.filter(state__in=VisitorSession.LIVE_STATES).values_list("id", flat=True)
    )
    names |= stale_rows
    cgroup_names: dict[str, list[str]] = {}
    if cgroups is not None:
        for cgroup in cgroups.names():
            cgroup_names.setdefault(cgroup.partition(".")[0], []).append(cgroup)
        names |= set(cgroup_names)
    for name in sorted(names):
        if is_live(name):
            continue
        pid = pids.get(name)
        if pid is not None and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            logger.warning("reaper ended orphaned QEMU pid %s (%s)", pid, name)
        for cgroup in cgroup_names.get(name, []):
            assert cgroups is not None
            _cgroup_empty(cgroups.path_for(cgroup))
        path = run_root / name
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        if name in stale_rows:
            VisitorSession.objects.filter(
                id=name, state__in=VisitorSession.LIVE_STATES
            ).update(
                state=VisitorSession.State.ENDED,
                ended_reason=VisitorSession.EndedReason.SERVER,
                detail="The server restarted and this machine was lost.",
                ended_at=timezone.now(),
                pid=None,
            )
        cleaned.add(name)
    return len(cleaned)


def _cgroup_empty(path: Path) -> None:
    """Kill whatever is left in an orphaned machine's cgroup, then remove it."""
    with contextlib.suppress(OSError):
        for line in (path / "cgroup.procs").read_text().split():
            if int(line) != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line), signal.SIGKILL)
    cgroup_remove(path)
