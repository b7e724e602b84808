"""The reaper: ends what no broker owns any more.

Owns: finding sessions that the database calls live but no broker in this
process runs (the portal died or restarted), ending their QEMU processes,
recognised by the run directory on their command line (never by process
name), deleting stray run directories, and marking those sessions ended with
reason `server`.

Must not: touch a session the running broker owns (`live_ids`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from django.utils import timezone

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


def reap_once(*, run_root: Path, live_ids: set[str]) -> int:
    """End orphaned machines and files; returns how many sessions were cleaned."""
    cleaned = 0
    pids = _qemu_pids_under(run_root)
    stale = VisitorSession.objects.filter(state__in=VisitorSession.LIVE_STATES).exclude(
        id__in=live_ids
    )
    names = set(pids)
    with contextlib.suppress(FileNotFoundError):
        names |= {entry.name for entry in run_root.iterdir() if entry.is_dir()}
    for session in stale:
        names.add(session.id)
    for name in names - live_ids:
        pid = pids.get(name)
        if pid is not None and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            logger.warning("reaper ended orphaned QEMU pid %s (%s)", pid, name)
        path = run_root / name
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        cleaned += 1
    ended = stale.update(
        state=VisitorSession.State.ENDED,
        ended_reason=VisitorSession.EndedReason.SERVER,
        detail="The server restarted and this machine was lost.",
        ended_at=timezone.now(),
        pid=None,
    )
    return max(cleaned, ended)
