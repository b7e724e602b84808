"""Finding the processes a test or benchmark started, by what their command line names."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import psutil


def processes_naming(path: Path) -> list[int]:
    """Pids of processes whose command line mentions path (how the reaper finds them)."""
    needle = str(path)
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if any(needle in arg for arg in process.info["cmdline"] or ())]


def visit_machine(env: Mapping[str, str], session_id: str) -> tuple[int, Path]:
    """The pid and run directory of a live visit's machine, as its row in a served
    portal's database records them (the portal's SQLite file, or the database at
    PORTAL_DATABASE_URL). With a warm pool, the run root holds pooled machines too:
    this is how a test tells the visit's own."""
    url = env.get("PORTAL_DATABASE_URL")
    query = "SELECT pid, run_dir FROM visits_visitorsession WHERE id = %s"
    if url:
        import psycopg

        with psycopg.connect(url) as connection:
            row = connection.execute(query, (session_id,)).fetchone()
    else:
        path = env.get("PORTAL_DATABASE_PATH") or str(Path(env["PORTAL_DATA_DIR"]) / "portal.sqlite3")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            row = connection.execute(query.replace("%s", "?"), (session_id,)).fetchone()
    assert row is not None, f"no visit {session_id}"
    assert row[0] is not None, f"visit {session_id} has no machine: {row}"
    return int(row[0]), Path(row[1])
