"""Throwaway qcow2 overlays over a read-only base, in per-session run directories.

Owns: creating a session's 0700 run directory, creating the qcow2 overlay whose
backing file is the exhibit's master, and removing both without a trace.

Must not: import Django, write to a base image, or let qemu-img guess a
format: the base's format is always given explicitly.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from sessions.errors import gettext_noop
from sessions.machines.tool import tool_run

OVERLAY_FILE = "disk.qcow2"


# What a visitor is told when their run directory cannot be made, by the reason.
_NO_ROOM = gettext_noop("The server could not make room for this visit.")
_ROOM_REFUSED = {
    errno.ENOSPC: gettext_noop("The server could not make room for this visit (its disk is full)."),
    errno.EROFS: gettext_noop("The server could not make room for this visit (its disk is read-only)."),
    errno.EACCES: gettext_noop("The server could not make room for this visit (it may not write there)."),
}


class OverlayError(Exception):
    """An overlay or run directory could not be made.

    The message is for a visitor and names no host path; `log_detail` says
    what happened, for the operator's log.
    """

    def __init__(self, message: str, *, log_detail: str = "") -> None:
        super().__init__(message)
        self.log_detail = log_detail or message


def run_dir_create(*, root: Path, name: str) -> Path:
    """Make the session's private run directory (mode 0700) under root."""
    if not name or "/" in name or name in {".", ".."}:
        raise OverlayError(f"invalid run directory name {name!r}")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = root / name
        path.mkdir(mode=0o700)
        # mkdir's mode is masked by the umask; the directory must be private.
        os.chmod(path, 0o700)
    except OSError as error:
        raise OverlayError(_ROOM_REFUSED.get(error.errno or 0, _NO_ROOM),
                           log_detail=f"run directory under {root}: {error}") from error
    return path


def run_dir_remove(path: Path) -> None:
    """Delete a run directory and everything in it; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        # Something inside was not removable; try once more and report it.
        shutil.rmtree(path)


async def overlay_create(
    *,
    base_path: Path,
    base_format: str,
    overlay_path: Path,
    qemu_img: str,
    timeout_s: float,
) -> None:
    """Create overlay_path as a qcow2 whose backing file is base_path.

    The base is only read (qemu-img opens it to learn its size). On failure no
    partial overlay is left behind.
    """
    if not base_path.is_absolute():
        raise OverlayError(gettext_noop("The exhibit's disk image is misconfigured."),
                           log_detail=f"base image path must be absolute: {base_path}")
    if not base_path.is_file():
        raise OverlayError(gettext_noop("The exhibit's disk image is missing."),
                           log_detail=f"base image missing: {base_path}")
    if not os.access(base_path, os.R_OK):
        raise OverlayError(gettext_noop("The exhibit's disk image cannot be read."),
                           log_detail=f"base image unreadable: {base_path}")
    argv = [
        qemu_img, "create", "-q", "-f", "qcow2",
        "-F", base_format, "-b", os.fspath(base_path),
        os.fspath(overlay_path),
    ]
    try:
        result = await tool_run(*argv, timeout_s=timeout_s)
    except FileNotFoundError as error:
        raise OverlayError(gettext_noop("The disk tool is not installed on this server."),
                           log_detail=f"{qemu_img} not found") from error
    except BaseException:
        overlay_path.unlink(missing_ok=True)
        raise
    if result.returncode != 0:
        overlay_path.unlink(missing_ok=True)
        said = result.said
        raise OverlayError(gettext_noop("The server could not create this visit's disk (its disk is full).")
                           if "No space left" in said else
                           gettext_noop("The server could not create this visit's disk."),
                           log_detail=f"qemu-img create {overlay_path}: {said}")
