"""Served portals for the tests, made from one prepared install instead of each
preparing its own.

Making an install as `make run` does (migrate, add the demo, prepare its start state)
costs a Django start per command and a boot of the demo to its desktop: about 5 s of
CPU, for every one of the suite's many portals. The first install of a kind (its
sound cards) in a test process is made so, by the real commands, in a directory of its
own; the next ones are copies of it, as the portal would find them had it made them
there: the database's absolute paths (masters, start states) moved to the new data
directory, each warm layer's backing file set to the new master (`qemu-img rebase -u`:
the same clusters, another name) and its checksum in the database made the file's
again. Everything else is made fresh by the install itself: its secret key, leases and
run directory. Installs on PostgreSQL, with a data directory or image store of the
test's own, or with settings that touch the machine, are made by the commands.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

# What an install makes for itself, never copied.
OWN = {"secret_key", "run", "leases", "daphne.log"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _texts_replace(database: Path, pairs: list[tuple[str, str]]) -> None:
    """Every text column of every table, with each `old` replaced by its `new`."""
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')
                       if row[2].upper() in {"TEXT", "VARCHAR", ""} or "CHAR" in row[2].upper()
                       or row[2].upper() == "JSON"]
            for column in columns:
                for old, new in pairs:
                    connection.execute(f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) '
                                       f'WHERE instr("{column}", ?) > 0', (old, new, old))


def install_copy(template: Path, root: Path) -> None:
    """`template` (a prepared install's data directory) copied into `root` (empty)."""
    for entry in template.iterdir():
        if entry.name in OWN or entry.name.startswith("portal.sqlite3-"):
            continue
        target = root / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target)
    pairs = [(str(template), str(root))]
    for warm in sorted((root / "images" / "start").glob("*/warm.qcow2")):
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(warm)],
                                         check=True, capture_output=True, text=True).stdout)
        backing = str(info["backing-filename"]).replace(str(template), str(root))
        old = _sha256(warm)
        mode = warm.stat().st_mode
        warm.chmod(0o600)
        subprocess.run(["qemu-img", "rebase", "-u", "-b", backing,
                        "-F", str(info.get("backing-filename-format", "raw")), str(warm)],
                       check=True, capture_output=True)
        warm.chmod(mode & 0o7777)
        pairs.append((old, _sha256(warm)))
    _texts_replace(root / "portal.sqlite3", pairs)
