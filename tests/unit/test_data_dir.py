from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.files.uploadedfile import TemporaryUploadedFile

from portal.data_dir import data_dir_secure, sqlite_files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask most services run with, under which SQLite would make a 0644 database."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_it_makes_a_new_data_directory_and_database_private_with_their_journals(
    tmp_path: Path, umask_022: None
) -> None:
    data_dir = tmp_path / "var"
    database = data_dir / "portal.sqlite3"
    wal_database = data_dir / "wal.sqlite3"
    assert data_dir_secure(data_dir=data_dir, databases=[database, wal_database]) == []
    assert mode(data_dir) == 0o700
    assert mode(database) == mode(wal_database) == 0o600

    # SQLite gives the files beside a database the database's own mode.
    rollback = sqlite3.connect(database, isolation_level=None)
    wal = sqlite3.connect(wal_database, isolation_level=None)
    try:
        rollback.execute("CREATE TABLE visit (id TEXT)")
        rollback.execute("BEGIN IMMEDIATE")
        rollback.execute("INSERT INTO visit VALUES ('a session id')")
        assert mode(data_dir / "portal.sqlite3-journal") == 0o600
        rollback.execute("COMMIT")
        wal.execute("PRAGMA journal_mode=WAL")
        wal.execute("CREATE TABLE visit (id TEXT)")
        assert mode(data_dir / "wal.sqlite3-wal") == mode(data_dir / "wal.sqlite3-shm") == 0o600
    finally:
        rollback.close()
        wal.close()


def test_it_tightens_what_an_older_version_left_readable_and_loosens_nothing(tmp_path: Path) -> None:
    data_dir, images, run = tmp_path / "var", tmp_path / "var" / "images", tmp_path / "run"
    for directory in (data_dir, images, run):
        directory.mkdir()
        directory.chmod(0o755)
    database, journal, key = data_dir / "portal.sqlite3", data_dir / "portal.sqlite3-journal", \
        data_dir / "secret_key"
    for file in (database, journal, key):
        file.write_bytes(b"")
        file.chmod(0o644)
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)

    tightened = data_dir_secure(data_dir=data_dir, private_dirs=[images, run, read_only],
                                private_files=[key], databases=[database])

    assert sorted(tightened) == sorted([data_dir, images, run, key, database, journal])
    assert [mode(p) for p in (data_dir, images, run)] == [0o700] * 3
    assert [mode(p) for p in (database, journal, key)] == [0o600] * 3
    assert mode(read_only) == 0o500
    assert data_dir_secure(data_dir=data_dir, private_dirs=[images, run], private_files=[key],
                           databases=[database]) == []


def test_it_leaves_a_shared_sticky_directory_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert data_dir_secure(data_dir=tmp_path / "var", private_dirs=[shared]) == []
    assert mode(shared) == 0o1777


def test_it_finds_only_sqlite_databases_on_disk() -> None:
    assert sqlite_files({
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/portal/portal.sqlite3"},
        "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "shared_memory": {"ENGINE": "django.db.backends.sqlite3",
                          "NAME": "file:memorydb?mode=memory&cache=shared"},
        "postgres": {"ENGINE": "django.db.backends.postgresql", "NAME": "portal"},
    }) == [Path("/srv/portal/portal.sqlite3")]


def test_it_keeps_upload_temporaries_private(umask_022: None) -> None:
    """Django streams an upload to a file only its own user may read (FILE_UPLOAD_TEMP_DIR,
    by default the system's temporary directory)."""
    upload = TemporaryUploadedFile("disk.img", "application/octet-stream", 0, None)
    try:
        path = Path(upload.temporary_file_path())
        assert path.parent == Path(tempfile.gettempdir())
        assert mode(path) == 0o600
    finally:
        upload.close()
