"""The data directory's modes: what no other user on the host may read, QEMU's uids first.

Owns: making the data directory and the directories of private things 0700
(masters and start states with the importer's work directories in the image
store, the session run directories), and the SQLite database and its journal
files 0600: the database is created empty with 0600 before SQLite first opens
it (SQLite gives its -journal, -wal and -shm files the database's own mode),
and whatever an older version left readable by others is tightened. QEMU needs
none of these paths after it drops to its own uid: it opens its disks, their
backing files and its sockets before, and is handed the rest as descriptors.

Must not: import Django (the caller reads the settings), loosen a mode, change
what another user owns or a shared sticky directory such as /tmp, or start
anything: it runs once, synchronously, when the portal's app is ready.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# The files SQLite keeps beside a database, each while it needs it.
SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")
SQLITE_ENGINE = "django.db.backends.sqlite3"


def sqlite_files(databases: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """The database files of Django's DATABASES setting that are SQLite files on disk
    (none for PostgreSQL, none for an in-memory SQLite)."""
    files = []
    for database in databases.values():
        name = str(database.get("NAME") or "")
        if database.get("ENGINE") != SQLITE_ENGINE or not name:
            continue
        if name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
            continue
        files.append(Path(name))
    return files


def data_dir_secure(*, data_dir: Path, private_dirs: Sequence[Path] = (),
                    private_files: Sequence[Path] = (), databases: Sequence[Path] = ()
                    ) -> list[Path]:
    """Make data_dir and each database private, tighten what exists; returns what was tightened.

    Missing private directories are left to whoever makes them (they make them
    0700); a missing database is created empty, 0600.
    """
    data_dir.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    for database in databases:
        database.parent.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             PRIVATE_FILE_MODE))
    companions = [database.with_name(database.name + suffix)
                  for database in databases for suffix in SQLITE_COMPANIONS]
    tightened = []
    for path in [data_dir, *private_dirs, *private_files, *databases, *companions]:
        if _tighten(path):
            tightened.append(path)
    return tightened


def _tighten(path: Path) -> bool:
    """Take away the group's and others' permissions; True when there were some."""
    try:
        status = path.stat()
    except (FileNotFoundError, PermissionError):
        # Missing, or already out of this process's sight (another user's, private).
        return False
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077:
        return False
    if status.st_uid != os.geteuid() or mode & stat.S_ISVTX:
        # Not the portal's to change: someone pointed a setting at a shared place.
        logger.warning("%s (mode %04o, uid %d) is readable by other users and is not the portal's "
                       "own to make private; move the portal's data out of it",
                       path, mode, status.st_uid)
        return False
    os.chmod(path, mode & ~0o077)
    return True
