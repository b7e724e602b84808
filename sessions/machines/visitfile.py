"""The saved-visit file (`.visit`): what a visitor takes home to come back another day.

Owns the format, writing it as it streams and reading it back:

    header   "PORTAL-VISIT\\n" and the format version (2 bytes, big-endian): 15 bytes
    body     one xz stream (stdlib lzma) of members, each a name (2-byte length, UTF-8),
             a size (8 bytes, big-endian) and that many bytes: first "manifest.json"
             (the exhibit, its master's and start state's identities, the disk
             layers and what is in each drive),
             then "state" (QEMU's machine state), then one member per disk layer
             the manifest names
    trailer  HMAC-SHA256 (32 bytes) over the header and the body, as they are

The signature covers the compressed bytes, so a file is checked before a byte of
it is decompressed: only files this portal made are ever opened. The keys are the
caller's (`Signer`s: the portal's secret key, then its fallbacks). Decompression
is bounded: the decoder's memory, each member's size, the sum of all sizes and the
count of members, so a file that expands without end (a compression bomb, or one
whose member sizes lie) costs bounded time and disk before it is refused.

Must not: import Django, start QEMU, or trust anything of a file before its
signature is checked; nothing here decides whether a saved visit fits an exhibit
(the launcher compares the manifest with the exhibit).
"""
from __future__ import annotations

import hmac
import json
import lzma
import os
import re
import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sessions.errors import gettext_noop

MAGIC = b"PORTAL-VISIT\n"
# 2: the manifest lists the disk box's layers and what is in each drive.
VERSION = 2
HEADER = MAGIC + struct.pack(">H", VERSION)
SIGNATURE_BYTES = 32
MANIFEST = "manifest.json"
STATE = "state"
MANIFEST_MAX_BYTES = 64 * 1024
# Drives a machine may have (two floppies, four IDE places), the disks of a disk set
# (a title on a dozen floppies and some CDs) and the visitor's own floppies.
LAYERS_MAX = 64
CHUNK = 1024 * 1024
# A fast preset: the machine state is mostly code and zeros, and the file is made
# while it downloads.
PRESET = 1
# What the xz decoder may use, whatever the file asks: the writer's preset needs 2 MiB.
DECODER_MEMORY_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_SHA256S = re.compile(r"[0-9a-f]{64}(\+[0-9a-f]{64}){0,63}")
_VISITOR_DISK = re.compile(r"visitor-([1-9][0-9]{0,3})")


class Signer(Protocol):
    """An HMAC-SHA256 in progress (what `hmac.new` and Django's `salted_hmac` return)."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class VisitFileError(Exception):
    """The file is not a saved visit this portal made, or not whole; `reason` is a code
    for the log, the message a sentence for the visitor."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DiskLayer:
    """One writable disk of the saved machine, under the file name the machine's run
    directory gives it, and what it lies over (its backing, named by role):

    - a disk the machine started with in one of its drives (`drive`, QEMU's name for
      it): `disk.qcow2` over `start` (the exhibit's start state, or its master on a
      cold start), `extra-<n>.qcow2` over `extra-<n>` (the nth extra medium),
      `visitor-disk-0.qcow2` over `files` (the blank floppy for visitors' files);
    - a disk of the disk box (`disk`, the box's id for it): `disk-<id>.qcow2` over
      `disk-<id>` (that disk's master, whose layers' SHA-256 `master_sha256` names),
      or a floppy of the visitor's own files, `visitor-<n>`: `visitor-disk-<n>.qcow2`,
      whole in itself (no backing).
    """

    file: str
    backing: str | None
    drive: str | None = None
    disk: str | None = None
    master_sha256: str | None = None

    @property
    def member(self) -> str:
        return f"layer.{self.file}"

    def as_json(self) -> dict[str, Any]:
        return {"drive": self.drive, "disk": self.disk, "file": self.file, "backing": self.backing,
                "master_sha256": self.master_sha256}

    @classmethod
    def from_json(cls, data: Any) -> DiskLayer:
        def text(value: Any) -> str | None:
            return None if value is None else str(value)

        return cls(file=str(data["file"]), backing=text(data["backing"]), drive=text(data["drive"]),
                   disk=text(data["disk"]), master_sha256=text(data["master_sha256"]))

    def well_formed(self) -> bool:
        """Whether it is one of the kinds above, its names as the portal writes them."""
        if not _NAME.fullmatch(self.file) or (self.backing is not None and not _NAME.fullmatch(self.backing)):
            return False
        if self.disk is None:
            return self.drive is not None and _NAME.fullmatch(self.drive) is not None \
                and self.master_sha256 is None
        if self.drive is not None:
            return False
        if self.disk.isdigit() and len(self.disk) <= 12:
            return (self.file == f"disk-{self.disk}.qcow2" and self.backing == f"disk-{self.disk}"
                    and self.master_sha256 is not None and _SHA256S.fullmatch(self.master_sha256) is not None)
        return (_VISITOR_DISK.fullmatch(self.disk) is not None and self.backing is None
                and self.master_sha256 is None and self.file == f"visitor-disk-{self.disk[8:]}.qcow2")


@dataclass(frozen=True)
class Manifest:
    exhibit: str
    title: str
    master_sha256: str
    start_key: str
    # The warm layer's SHA-256, or None when the visit started cold, over the master.
    warm_sha256: str | None
    speed: str
    memory_mb: int
    disks: tuple[DiskLayer, ...]
    created_at: str
    # Each removable drive (QEMU's name) and the file of the disk in it (a layer above,
    # or a disk the machine starts with), or None for an empty drive.
    drives: tuple[tuple[str, str | None], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"format": VERSION, "exhibit": self.exhibit, "title": self.title,
                "master_sha256": self.master_sha256,
                "start": {"key": self.start_key, "warm_sha256": self.warm_sha256},
                "speed": self.speed, "memory_mb": self.memory_mb,
                "disks": [disk.as_json() for disk in self.disks],
                "drives": [{"drive": drive, "file": file} for drive, file in self.drives],
                "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """A manifest from its JSON; anything missing or out of shape raises VisitFileError."""
        try:
            start = data["start"]
            disks = tuple(DiskLayer.from_json(disk) for disk in data["disks"])
            drives = tuple((str(drive["drive"]), None if drive["file"] is None else str(drive["file"]))
                           for drive in data["drives"])
            manifest = cls(exhibit=str(data["exhibit"]), title=str(data["title"]),
                           master_sha256=str(data["master_sha256"]), start_key=str(start["key"]),
                           warm_sha256=None if start["warm_sha256"] is None else str(start["warm_sha256"]),
                           speed=str(data["speed"]), memory_mb=int(data["memory_mb"]), disks=disks,
                           created_at=str(data["created_at"]), drives=drives)
        except (KeyError, TypeError, ValueError) as error:
            raise _damaged("manifest") from error
        names = [disk.file for disk in disks]
        devices = [drive for drive, _ in drives]
        if (len(disks) > LAYERS_MAX or len(set(names)) != len(names)
                or not all(disk.well_formed() for disk in disks)
                or len(drives) > LAYERS_MAX or len(set(devices)) != len(devices)
                or not all(_NAME.fullmatch(drive) and (file is None or _NAME.fullmatch(file))
                           for drive, file in drives)):
            raise _damaged("manifest")
        return manifest


@dataclass(frozen=True)
class ReadLimits:
    """What reading one uploaded file may cost."""

    # The machine state's largest size: the exhibit's memory and its devices'.
    state_max_bytes: int
    # Every member together, decompressed.
    expanded_max_bytes: int


def _damaged(reason: str) -> VisitFileError:
    return VisitFileError(gettext_noop("This file is damaged or was not made by this portal."), reason=reason)


def _member_head(name: str, size: int) -> bytes:
    encoded = name.encode()
    return struct.pack(">H", len(encoded)) + encoded + struct.pack(">Q", size)


def visit_file_chunks(manifest: Manifest, *, state: Path, layers: Sequence[tuple[DiskLayer, Path]],
                      signer: Signer) -> Generator[bytes]:
    """The file, in pieces as it is made (compressed as it is read), signed by `signer`:
    a generator to run in a worker thread, a piece at a time."""
    compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=PRESET)
    signer.update(HEADER)
    yield HEADER

    def out(data: bytes) -> bytes:
        signer.update(data)
        return data

    manifest_bytes = json.dumps(manifest.as_json(), sort_keys=True).encode()
    if packed := compressor.compress(_member_head(MANIFEST, len(manifest_bytes)) + manifest_bytes):
        yield out(packed)
    for name, path in [(STATE, state), *((disk.member, path) for disk, path in layers)]:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if packed := compressor.compress(_member_head(name, size)):
                yield out(packed)
            left = size
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{path.name} shrank while it was saved")
                left -= len(chunk)
                if packed := compressor.compress(chunk):
                    yield out(packed)
    yield out(compressor.flush())
    yield signer.digest()


def signature_check(path: Path, *, signers: Sequence[Callable[[], Signer]]) -> None:
    """Raise VisitFileError unless the file ends in a signature one of the keys made
    over everything before it. Reads the file once, decompresses nothing."""
    size = path.stat().st_size
    if size < len(HEADER) + SIGNATURE_BYTES:
        raise _damaged("short")
    running = [make() for make in signers]
    with path.open("rb") as handle:
        left = size - SIGNATURE_BYTES
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise _damaged("short")
            left -= len(chunk)
            for signer in running:
                signer.update(chunk)
        given = handle.read(SIGNATURE_BYTES)
    if not any(hmac.compare_digest(signer.digest(), given) for signer in running):
        raise _damaged("signature")


class _BoundedReader:
    """The decompressed body, read a bounded piece at a time; never more than
    `limit` bytes in all, never more than asked for held in memory."""

    def __init__(self, handle: BinaryIO, end: int, limit: int) -> None:
        self._handle = handle
        self._left = end - handle.tell()
        self._decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=DECODER_MEMORY_BYTES)
        self.limit = limit
        self.read_bytes = 0

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes (fewer only at the end of the stream)."""
        wanted = size
        parts: list[bytes] = []
        while wanted > 0 and not self._decoder.eof:
            if self._decoder.needs_input and self._left > 0:
                chunk = self._handle.read(min(64 * 1024, self._left))
                self._left -= len(chunk)
            else:
                chunk = b""
            if self._decoder.needs_input and not chunk:
                break
            try:
                piece = self._decoder.decompress(chunk, max_length=min(wanted, CHUNK))
            except lzma.LZMAError as error:
                raise _damaged("compression") from error
            parts.append(piece)
            wanted -= len(piece)
        data = b"".join(parts)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise VisitFileError(gettext_noop("This file unpacks to more than a saved visit can hold."),
                                 reason="expanded")
        return data

    def at_end(self) -> bool:
        """The stream ended where the signature begins, and nothing is left in it."""
        if not self._decoder.eof:
            try:
                extra = self._decoder.decompress(b"", max_length=1)
            except lzma.LZMAError:
                return False
            if extra or not self._decoder.eof:
                return False
        return self._left == 0 and not self._decoder.unused_data


def visit_file_read(path: Path, *, signers: Sequence[Callable[[], Signer]],
                    limits_for: Callable[[Manifest], ReadLimits], into: Path) -> Manifest:
    """Check the file's signature, then unpack it into the directory `into`: the
    machine state as `state`, each disk layer under its file name. Returns the
    manifest. Refused (VisitFileError) if anything is off; what was written of a
    refused file is the caller's to delete (`into` is the visit's own directory).

    `limits_for` gives the bounds once the manifest (signed, so the portal's own
    words) says which exhibit and how much memory it is about.
    """
    signature_check(path, signers=signers)
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(len(HEADER)) != HEADER:
            raise VisitFileError(
                gettext_noop("This file is a saved visit of a format this portal does not read."),
                reason="version")
        reader = _BoundedReader(handle, size - SIGNATURE_BYTES, MANIFEST_MAX_BYTES + 64)
        name, length = _member_read_head(reader)
        if name != MANIFEST or length > MANIFEST_MAX_BYTES:
            raise _damaged("manifest")
        try:
            manifest = Manifest.from_json(json.loads(reader.read(length)))
        except (ValueError, UnicodeDecodeError) as error:
            raise _damaged("manifest") from error
        limits = limits_for(manifest)
        reader.limit = limits.expanded_max_bytes
        expected = [(STATE, into / STATE, limits.state_max_bytes),
                    *((disk.member, into / disk.file, limits.expanded_max_bytes) for disk in manifest.disks)]
        for member, destination, cap in expected:
            name, length = _member_read_head(reader)
            if name != member:
                raise _damaged("members")
            if length > cap or reader.read_bytes + length > limits.expanded_max_bytes:
                raise VisitFileError(gettext_noop("This file unpacks to more than a saved visit can hold."),
                                     reason="expanded")
            _member_write(reader, destination, length)
        if not reader.at_end():
            raise _damaged("trailing")
    return manifest


def _member_read_head(reader: _BoundedReader) -> tuple[str, int]:
    raw = reader.read(2)
    if len(raw) != 2:
        raise _damaged("members")
    (name_length,) = struct.unpack(">H", raw)
    name_raw = reader.read(name_length)
    size_raw = reader.read(8)
    if len(name_raw) != name_length or len(size_raw) != 8:
        raise _damaged("members")
    try:
        name = name_raw.decode()
    except UnicodeDecodeError as error:
        raise _damaged("members") from error
    return name, struct.unpack(">Q", size_raw)[0]


def _member_write(reader: _BoundedReader, destination: Path, length: int) -> None:
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        left = length
        while left > 0:
            chunk = reader.read(min(CHUNK, left))
            if not chunk:
                raise _damaged("short")
            left -= len(chunk)
            if chunk.count(0) == len(chunk):
                # Sparse: a disk layer's unused clusters take no room on this host.
                handle.seek(len(chunk), os.SEEK_CUR)
            else:
                handle.write(chunk)
        handle.truncate()
