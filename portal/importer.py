"""Untrusted disk images in, read-only qcow2 preservation masters out.

Owns: recognising an image's real format from its bytes, checking it against
what its name or the curator claims, probing it with `qemu-img` as QEMU's
security documentation advises (explicit format, CPU-time and address-space
limits, a timeout), refusing anything that could make QEMU open another file
or exhaust the host, converting what is accepted to compressed qcow2 and
proving that the guest sees exactly the original's bytes, the disk space an
import takes (free space checked before every step that writes, at most a
private copy and the master at once), and re-hashing stored masters (fixity).

Must not: import Django, let `qemu-img` guess a format, let any QEMU tool touch
a file before its header was checked by hand, fill the store's disk, write out
a sparse image's holes, or leave anything behind when an image is refused. It
takes paths, limits and timeouts as arguments.

The hand checks come first because `qemu-img info` itself opens a qcow2's
external data file and a VMDK descriptor's extents (CVE-2024-32498,
CVE-2022-47951); `qemu-img info` then checks again what QEMU itself sees.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
CHUNK_BYTES = MIB
# Zero blocks this small become holes in the private copy (ext4's and XFS's block is 4 KiB).
HOLE_BYTES = 4 * KIB
ZEROS = bytes(CHUNK_BYTES)
SECTOR_BYTES = 512
# The guest's view is hashed a slice at a time; a slice is the most it costs on disk.
GUEST_SLICE_BYTES = 64 * MIB
# What a conversion may write beyond `qemu-img measure`'s answer (file-system rounding).
MEASURE_SLACK_BYTES = MIB
# How often a running conversion's output and free space are looked at.
WATCH_INTERVAL_S = 0.02
# Disks of a PC floppy's size, 160 KiB (5.25" single-sided) to 2.88 MiB (3.5" ED),
# including the common over-formatted ones (DMF 1.68 MiB, 1.72 MiB). Only these
# sizes: a 1 MiB hard disk is not a floppy.
FLOPPY_SIZES_BYTES = frozenset(size * KIB for size in (160, 180, 320, 360, 720, 1200, 1440, 1680,
                                                         1722, 1743, 2880))

# What a file name claims. The curator's explicit claim wins over the name.
EXTENSION_FORMATS = {
    ".img": "raw", ".ima": "raw", ".vfd": "raw", ".flp": "raw", ".dsk": "raw",
    ".raw": "raw", ".bin": "raw", ".hdd": "raw", ".hda": "raw",
    ".qcow2": "qcow2", ".qcow": "qcow2",
    ".vmdk": "vmdk",
    ".vdi": "vdi",
    ".vhd": "vpc", ".vpc": "vpc",
    ".vhdx": "vhdx",
    ".iso": "iso",
}
# Formats a curator may name, and the name qemu-img knows each by.
QEMU_FORMATS = {"raw": "raw", "iso": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi",
                "vpc": "vpc", "vhdx": "vhdx"}
FORMAT_NAMES = {"raw": "a raw disk image", "iso": "an ISO 9660 CD-ROM image", "qcow2": "qcow2",
                "vmdk": "VMDK", "vdi": "VDI", "vpc": "VHD", "vhdx": "VHDX"}
# Formats whose `qemu-img check` finds a corrupt image before conversion does.
CHECKABLE_FORMATS = {"qcow2", "vmdk", "vdi", "vhdx"}
QCOW2_INCOMPATIBLE_CORRUPT = 1 << 1
QCOW2_INCOMPATIBLE_DATA_FILE = 1 << 2
QCOW2_EXTENSION_DATA_FILE = 0x44415441


class ImageError(Exception):
    """Base of every error this module raises."""


class ImageRejectedError(ImageError):
    """The image was refused; `reason` is a short code, the message says why for a curator."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImportLimits:
    """How much an untrusted image may cost the host."""

    max_file_bytes: int
    max_virtual_bytes: int
    # What must stay free on the store's filesystem whatever an import writes.
    free_margin_bytes: int = 512 * MIB
    # Applied to every qemu-img run: CPU seconds and address space (OpenStack's caps by default).
    probe_cpu_s: int = 2
    probe_address_space_bytes: int = 1024 * 1024 * 1024
    probe_timeout_s: float = 30.0
    # Checking, conversion and comparison read the whole image, so they get more CPU
    # time, and more address space: under load qemu-img's I/O thread pool grows to 64
    # threads, each reserving a stack.
    convert_cpu_s: int = 600
    convert_address_space_bytes: int = 4 * 1024 * 1024 * 1024
    convert_timeout_s: float = 900.0
    qemu_img: str = "qemu-img"


@dataclass(frozen=True)
class StoredImage:
    """A master in the store and what is known about it."""

    path: Path
    sha256: str  # of the stored qcow2 file: its content address, what fixity re-checks
    source_sha256: str  # of the file as the curator brought it
    guest_sha256: str  # of the disk as the guest sees it
    source_format: str
    media: str  # "floppy", "disk" or "cdrom"
    virtual_bytes: int
    stored_bytes: int
    source_bytes: int


# --- recognising formats -------------------------------------------------------


def format_claimed(name: str, *, claim: str | None = None) -> str:
    """The format the curator claims, or the one the file's name claims."""
    if claim:
        if claim not in QEMU_FORMATS:
            raise ImageRejectedError("unknown_format", f"{claim!r} is not a supported format.")
        return claim
    suffix = Path(name).suffix.lower()
    if suffix not in EXTENSION_FORMATS:
        raise ImageRejectedError(
            "unknown_format",
            f"The name {name!r} does not say what format the image is; name the format.",
        )
    return EXTENSION_FORMATS[suffix]


def format_sniff(path: Path) -> str:
    """The format an image really is, from its magic bytes; "raw" when none matches.

    Also names formats the portal refuses ("vmdk-descriptor", "qcow1", "qed",
    ...), so that a raw image that is really one of them is refused too.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(0x8006 + 1)
        tail = b""
        if size >= SECTOR_BYTES:
            handle.seek(size - SECTOR_BYTES)
            tail = handle.read(SECTOR_BYTES)
    if head.startswith(b"QFI\xfb"):
        version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
        return "qcow2" if version in {2, 3} else "qcow1"
    if head.startswith(b"KDMV"):
        return "vmdk"
    if head.startswith((b"COWD", b"# Disk DescriptorFile")) or b"createType=" in head[:2048]:
        return "vmdk-descriptor"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or tail.startswith(b"conectix"):
        return "vpc"
    if head[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"WithoutFreeSpace") or head.startswith(b"WithouFreSpacExt"):
        return "parallels"
    if head.startswith(b"Bochs Virtual HD Image"):
        return "bochs"
    if head.startswith(b"#!/bin/sh\n#V2.0 Format"):
        return "cloop"
    if tail.startswith(b"koly"):
        return "dmg"
    if head[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"


def format_match(*, claimed: str, sniffed: str) -> None:
    """Refuse an image whose contents are not the format claimed."""
    if claimed == sniffed:
        return
    if sniffed == "vmdk-descriptor":
        raise ImageRejectedError(
            "vmdk_descriptor",
            "This is a VMDK descriptor that names its data in other files; only single-file "
            "VMDKs (monolithicSparse or streamOptimized) are accepted.",
        )
    what = FORMAT_NAMES.get(sniffed, f"a {sniffed} image")
    raise ImageRejectedError(
        "format_mismatch",
        f"The image is claimed to be {FORMAT_NAMES[claimed]} but its contents are {what}.",
    )


# --- hand checks before any QEMU tool opens the file ------------------------------


def qcow2_header_check(path: Path, *, backing: str | None = None) -> None:
    """Refuse a qcow2 whose header names a backing file, an external data file or encryption.

    With `backing` (a layer over a stored master), the header must name exactly that
    file name as its backing file, nothing else and no path.
    """
    with path.open("rb") as handle:
        header = handle.read(4096)
        backing_offset, backing_size = (struct.unpack(">QI", header[8:20]) if len(header) >= 20
                                        else (0, 0))
        named = b""
        if backing is not None and 0 < backing_size <= 1023:
            # The offset is the image's word: never seek past the file's end on it.
            if backing_offset + backing_size > os.fstat(handle.fileno()).st_size:
                raise ImageRejectedError(
                    "corrupt", "The qcow2 header places its backing file's name outside the file.")
            handle.seek(backing_offset)
            named = handle.read(backing_size)
    if len(header) < 72:  # a version 2 header's length
        raise ImageRejectedError("corrupt", "The qcow2 header is truncated.")
    version = struct.unpack(">I", header[4:8])[0]
    crypt_method = struct.unpack(">I", header[32:36])[0]
    if backing is not None and named != backing.encode():
        raise ImageRejectedError(
            "backing_file", f"The layer must name {backing} as its backing file, and only that.")
    if backing is None and (backing_offset or backing_size):
        raise ImageRejectedError(
            "backing_file",
            "The qcow2 image names a backing file; QEMU would read that file from this server "
            "(CVE-2015-1851, CVE-2015-5163).",
        )
    if crypt_method:
        raise ImageRejectedError("encrypted", "The qcow2 image is encrypted.")
    if version < 3:
        return
    if len(header) < 104:
        raise ImageRejectedError("corrupt", "The qcow2 header is truncated.")
    incompatible = struct.unpack(">Q", header[72:80])[0]
    header_length = struct.unpack(">I", header[100:104])[0]
    if incompatible & QCOW2_INCOMPATIBLE_DATA_FILE:
        raise ImageRejectedError(
            "data_file",
            "The qcow2 image keeps its data in an external file; QEMU would read that file "
            "from this server (CVE-2024-32498).",
        )
    if incompatible & QCOW2_INCOMPATIBLE_CORRUPT:
        raise ImageRejectedError("corrupt", "The qcow2 image is marked corrupt.")
    # Header extensions follow the header; a data-file name here without the
    # feature bit is still an attempt to point at a host file.
    offset = header_length
    while offset + 8 <= len(header):
        kind, length = struct.unpack(">II", header[offset:offset + 8])
        if kind == 0:
            break
        if kind == QCOW2_EXTENSION_DATA_FILE:
            raise ImageRejectedError(
                "data_file",
                "The qcow2 image names an external data file (CVE-2024-32498).",
            )
        offset += 8 + (length + 7) // 8 * 8


def vmdk_header_check(path: Path) -> None:
    """Accept only a single-file sparse VMDK whose embedded descriptor names no other file.

    QEMU follows the embedded descriptor's extents when the header's capacity
    is zero, so such a file is refused like a descriptor file (CVE-2022-47951).
    """
    with path.open("rb") as handle:
        header = handle.read(512)
        if len(header) < 77:
            raise ImageRejectedError("corrupt", "The VMDK header is truncated.")
        capacity, _grain, descriptor_sector, descriptor_sectors = struct.unpack(
            "<QQQQ", header[12:44])
        if capacity == 0:
            raise ImageRejectedError(
                "vmdk_extent",
                "The VMDK has no data of its own and defers to extents in other files "
                "(CVE-2022-47951).",
            )
        descriptor = b""
        if descriptor_sector and descriptor_sectors:
            if descriptor_sectors > 2048:
                raise ImageRejectedError("corrupt", "The VMDK's descriptor is implausibly large.")
            # The sector is the image's word: never seek past the file's end on it
            # (a huge one overflows the seek itself).
            file_sectors = os.fstat(handle.fileno()).st_size // SECTOR_BYTES
            if descriptor_sector + descriptor_sectors > file_sectors:
                raise ImageRejectedError(
                    "corrupt",
                    f"The VMDK header places its descriptor at sector {descriptor_sector}, "
                    f"outside the file (which has {file_sectors} sectors).")
            handle.seek(descriptor_sector * SECTOR_BYTES)
            descriptor = handle.read(descriptor_sectors * SECTOR_BYTES)
    text = descriptor.split(b"\0", 1)[0].decode("latin-1")
    extents = []
    for line in text.splitlines():
        line = line.strip()
        # A line without "=" has an empty value (the descriptor is the image's word).
        key, _, value = line.partition("=")
        key = key.strip().lower()
        if key == "createtype" and value.strip().strip('"') not in {
                "monolithicSparse", "streamOptimized"}:
            raise ImageRejectedError("vmdk_extent", "Only single-file VMDKs (monolithicSparse or "
                                     "streamOptimized) are accepted.")
        if key in {"parentfilenamehint"}:
            raise ImageRejectedError("backing_file", "The VMDK names a parent image in another file.")
        if line.split(" ", 1)[0] in {"RW", "RDONLY", "NOACCESS"}:
            extents.append(line)
    if len(extents) > 1:
        raise ImageRejectedError("vmdk_extent", "The VMDK's descriptor names more than one extent "
                                 "(CVE-2022-47951).")
    for extent in extents:
        parts = extent.split()
        if len(parts) >= 3 and parts[2] not in {"SPARSE"}:
            raise ImageRejectedError("vmdk_extent", f"The VMDK's extent is of type {parts[2]}, "
                                     "which reads another file (CVE-2022-47951).")


# --- qemu-img under limits --------------------------------------------------------


def _limits(*, cpu_s: int, address_space_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        # Runs in the child between fork and exec.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def qemu_img_run(argv: Sequence[str], *, limits: ImportLimits, long: bool = False
                 ) -> subprocess.CompletedProcess[str]:
    """Run qemu-img with the CPU, address-space and wall-clock limits; never a shell."""
    cpu_s = limits.convert_cpu_s if long else limits.probe_cpu_s
    timeout_s = limits.convert_timeout_s if long else limits.probe_timeout_s
    address_space = limits.convert_address_space_bytes if long else limits.probe_address_space_bytes
    try:
        return subprocess.run(
            # qemu-img quotes the image's own bytes in its messages (a qcow2's feature
            # names): they need not be UTF-8.
            [limits.qemu_img, *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=timeout_s, check=False,
            preexec_fn=_limits(cpu_s=cpu_s, address_space_bytes=address_space),
        )
    except subprocess.TimeoutExpired as error:
        raise ImageRejectedError(
            "resource_limit", f"qemu-img took longer than {timeout_s:g} s on this image.") from error
    except FileNotFoundError as error:
        raise ImageError(f"qemu-img is not installed ({limits.qemu_img} not found)") from error


_HOST_PATH = re.compile(r"'/[^']*'|(?<![\w.])/[^\s:,']+")


def _failure(result: subprocess.CompletedProcess[str], what: str) -> ImageRejectedError:
    if result.returncode < 0:
        return ImageRejectedError(
            "resource_limit",
            f"qemu-img exceeded its CPU or memory limit while {what} (signal {-result.returncode}; "
            "CVE-2015-5162).")
    message = (result.stderr.strip().splitlines() or ["no message"])[-1]
    message = message.removeprefix("qemu-img: ")
    # qemu-img names the files it was given: the portal's own paths are not the curator's business.
    message = _HOST_PATH.sub("the image", message)
    return ImageRejectedError("corrupt", f"qemu-img could not read the image while {what}: "
                                         f"{message}")


def image_probe(path: Path, *, qemu_format: str, limits: ImportLimits,
                backing: Path | None = None) -> dict[str, Any]:
    """`qemu-img info` of the image, checked: no backing (or exactly `backing`, a stored
    qcow2 master), data file, encryption or foreign extent."""
    result = qemu_img_run(["info", "-U", "--output=json", "-f", qemu_format, os.fspath(path)],
                          limits=limits)
    if result.returncode != 0:
        raise _failure(result, "probing it")
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise ImageRejectedError("corrupt", "qemu-img's description of the image is unreadable.") \
            from error
    if not isinstance(info, dict):
        raise ImageRejectedError("corrupt", "qemu-img's description of the image is unreadable.")
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {}
    if backing is not None:
        if (info.get("full-backing-filename") != os.fspath(backing)
                or info.get("backing-filename-format") != "qcow2"):
            raise ImageRejectedError("backing_file", "The layer's backing file is not its master.")
    elif info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageRejectedError("backing_file", "The image names a backing file "
                                 "(CVE-2015-1851, CVE-2015-5163).")
    if data.get("data-file"):
        raise ImageRejectedError("data_file", "The image names an external data file "
                                 "(CVE-2024-32498).")
    if info.get("encrypted") or data.get("encrypt"):
        raise ImageRejectedError("encrypted", "The image is encrypted.")
    if data.get("corrupt"):
        raise ImageRejectedError("corrupt", "The image is marked corrupt.")
    if info.get("format") != qemu_format:
        raise ImageRejectedError("format_mismatch", "qemu-img read the image as another format.")
    for extent in data.get("extents") or []:
        if os.path.basename(str(extent.get("filename", ""))) != path.name:
            raise ImageRejectedError("vmdk_extent", "The VMDK has an extent in another file "
                                     "(CVE-2022-47951).")
    virtual = info.get("virtual-size")
    if not isinstance(virtual, int) or virtual <= 0:
        raise ImageRejectedError("corrupt", "The image has no usable virtual size.")
    if virtual > limits.max_virtual_bytes:
        raise _too_large_disk(virtual, limits)
    return info


def media_for(*, source_format: str, virtual_bytes: int) -> str:
    if source_format == "iso":
        return "cdrom"
    if virtual_bytes in FLOPPY_SIZES_BYTES:
        return "floppy"
    return "disk"


# --- hashing ---------------------------------------------------------------------


def sha256_stream(reader: BinaryIO) -> tuple[str, int]:
    """SHA-256 and length of a stream."""
    digest = hashlib.sha256()
    size = 0
    while chunk := reader.read(CHUNK_BYTES):
        size += len(chunk)
        digest.update(chunk)
    return digest.hexdigest(), size


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, read through a read-only descriptor (fixity never writes)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as reader:
        return sha256_stream(reader)[0]


# --- disk space ------------------------------------------------------------------


def size_text(size: int) -> str:
    """A size as a person reads it: "2 GiB", "1.4 MiB", "512 bytes"."""
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def space_free(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on directory's filesystem."""
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize


def space_check(directory: Path, *, needed_bytes: int, limits: ImportLimits, doing: str) -> None:
    """Refuse before a step that may write needed_bytes if the margin would not stay free."""
    free = space_free(directory)
    if needed_bytes + limits.free_margin_bytes > free:
        raise ImageRejectedError(
            "no_space",
            f"There is not enough free disk space to {doing}: it may need {size_text(needed_bytes)}, "
            f"the image store has {size_text(free)} free, and {size_text(limits.free_margin_bytes)} "
            "must stay free (PORTAL_IMAGE_FREE_MARGIN_BYTES).")


def allocated_bytes(path: Path) -> int:
    """Bytes a file really occupies on disk (holes cost nothing); 0 if it does not exist yet."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _too_large_file(limit: int) -> ImageRejectedError:
    return ImageRejectedError("too_large", f"The file is larger than the import limit of "
                                           f"{size_text(limit)} (PORTAL_IMPORT_MAX_BYTES).")


def _too_large_disk(size: int | None, limits: ImportLimits) -> ImageRejectedError:
    limit = f"{size_text(limits.max_virtual_bytes)} (PORTAL_IMAGE_MAX_VIRTUAL_BYTES)"
    if size is None:
        return ImageRejectedError("too_large", f"The disk is larger than the limit of {limit}.")
    return ImageRejectedError("too_large", f"The disk is {size_text(size)} as the guest sees it; "
                                           f"the limit is {limit}.")


def private_copy(reader: BinaryIO, destination: Path, *, max_bytes: int,
                 too_large: Callable[[], ImageRejectedError], limits: ImportLimits
                 ) -> tuple[str, int]:
    """Copy a stream to a new file, hashing it on the way; returns its SHA-256 and length.

    The copy is sparse: blocks of zeros become holes, so a sparse raw disk
    costs its data, not its size. Refuses as soon as the stream passes
    max_bytes, and before a write would leave less than the margin free.
    """
    digest = hashlib.sha256()
    size = 0
    with destination.open("xb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise too_large()
            digest.update(chunk)
            if chunk == ZEROS[:len(chunk)]:
                writer.seek(len(chunk), os.SEEK_CUR)
                continue
            space_check(destination.parent, needed_bytes=len(chunk), limits=limits,
                        doing="copy the image")
            _sparse_write(writer, chunk)
        writer.truncate(size)  # a trailing hole is still part of the disk
    return digest.hexdigest(), size


def _sparse_write(writer: BinaryIO, chunk: bytes) -> None:
    """Write chunk at the writer's position, leaving its zero blocks as holes."""
    view = memoryview(chunk)
    run_start: int | None = None  # where the current run of data blocks began
    for offset in range(0, len(chunk), HOLE_BYTES):
        zero = chunk[offset:offset + HOLE_BYTES] == ZEROS[:min(HOLE_BYTES, len(chunk) - offset)]
        if zero and run_start is not None:
            writer.write(view[run_start:offset])
            run_start = None
        if zero:
            writer.seek(min(HOLE_BYTES, len(chunk) - offset), os.SEEK_CUR)
        elif run_start is None:
            run_start = offset
    if run_start is not None:
        writer.write(view[run_start:])


def qemu_img_convert(argv: Sequence[str], *, output: Path, max_written_bytes: int,
                     limits: ImportLimits) -> subprocess.CompletedProcess[str]:
    """`qemu-img convert` under the long limits, watched: its output may not pass max_written_bytes.

    The output's allocated size and the filesystem's free space are looked at
    every WATCH_INTERVAL_S while it runs; the conversion is killed the moment
    it writes more than its bound or eats into half the free-space margin.
    """
    try:
        process = subprocess.Popen(
            [limits.qemu_img, "convert", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace",
            preexec_fn=_limits(cpu_s=limits.convert_cpu_s,
                               address_space_bytes=limits.convert_address_space_bytes),
        )
    except FileNotFoundError as error:
        raise ImageError(f"qemu-img is not installed ({limits.qemu_img} not found)") from error
    deadline = time.monotonic() + limits.convert_timeout_s
    refusal: ImageRejectedError | None = None
    try:
        while True:
            try:
                stdout, stderr = process.communicate(timeout=WATCH_INTERVAL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            refusal = _conversion_overrun(output, max_written_bytes=max_written_bytes, limits=limits)
            if refusal is None and time.monotonic() > deadline:
                refusal = ImageRejectedError("resource_limit", "qemu-img took longer than "
                                             f"{limits.convert_timeout_s:g} s on this image.")
            if refusal is not None:
                raise refusal
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    refusal = _conversion_overrun(output, max_written_bytes=max_written_bytes, limits=limits)
    if refusal is not None:
        raise refusal
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _conversion_overrun(output: Path, *, max_written_bytes: int, limits: ImportLimits
                        ) -> ImageRejectedError | None:
    written = allocated_bytes(output)
    if written > max_written_bytes:
        return ImageRejectedError(
            "too_large", f"The conversion wrote more than the {size_text(max_written_bytes)} the "
                         "image's data allows; it was stopped.")
    if space_free(output.parent) < limits.free_margin_bytes // 2:
        return ImageRejectedError(
            "no_space", "The disk filled up while the image was converted; the conversion was "
                        f"stopped before less than {size_text(limits.free_margin_bytes // 2)} "
                        "was left (PORTAL_IMAGE_FREE_MARGIN_BYTES).")
    return None


# --- import ----------------------------------------------------------------------


def image_import(source: Path | BinaryIO, *, name: str, store: Path, limits: ImportLimits,
                 claim: str | None = None, parent: Path | None = None) -> StoredImage:
    """Check an untrusted image and store it as a read-only, compressed qcow2 master.

    `source` is a path on this server or an open binary stream (an upload);
    either way it is copied once into a private work directory inside the
    store, hashed on the way, so the file cannot change under the checks and
    QEMU's tools only ever see that copy. (A hard link would not do: it is
    the same file, still writable through the curator's name.) At most the
    private copy and the master exist at once; every step that writes first
    checks the free space, and the conversion is watched. On refusal or any
    failure the work directory is removed and the store holds nothing new.

    With `parent` (a stored master), the image is a layer over it: a qcow2 whose
    header names exactly the parent's file name as its backing file, and nothing
    else. It is checked, converted and compared over the parent, and stored
    naming the parent by that name again (derivative masters, from bags).
    """
    claimed = format_claimed(name, claim=claim)
    if parent is not None and claimed != "qcow2":
        raise ImageRejectedError("format_mismatch", "A layer over a master is a qcow2 image.")
    # Private: a machine reads its master through the descriptor QEMU opened
    # before it dropped to its own uid, never by path, and no other user needs it.
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=store))
    try:
        return _import(source, claimed=claimed, work=work, store=store, limits=limits, parent=parent)
    finally:
        for child in work.iterdir():
            with contextlib.suppress(OSError):
                os.chmod(child, 0o600)
        for child in work.iterdir():
            child.unlink()
        work.rmdir()


def _import(source: Path | BinaryIO, *, claimed: str, work: Path, store: Path,
            limits: ImportLimits, parent: Path | None = None) -> StoredImage:
    """The steps of an import, in order; each refuses with ImageRejectedError."""
    copy, source_sha256, source_bytes = _copy_privately(source, claimed=claimed, work=work, limits=limits)
    _headers_check(copy, claimed=claimed, source_bytes=source_bytes, parent=parent, limits=limits)
    qemu_format = QEMU_FORMATS[claimed]
    info = _probe_and_check(copy, qemu_format=qemu_format, parent=parent, limits=limits)
    converted = _convert(copy, work=work, qemu_format=qemu_format, parent=parent, limits=limits)
    # The master now holds everything the copy did, proven; the copy has done its work.
    copy.unlink()
    converted_info = image_probe(converted, qemu_format="qcow2", limits=limits, backing=parent)
    if converted_info.get("virtual-size") != info["virtual-size"]:
        raise ImageRejectedError("conversion_mismatch", "The converted master's size differs.")
    guest_sha256 = (source_sha256 if qemu_format == "raw"
                    else guest_sha256_read(converted, virtual_bytes=info["virtual-size"], work=work,
                                       limits=limits))
    final, sha256, stored_bytes = _store(converted, store=store, parent=parent, limits=limits)
    return StoredImage(
        path=final, sha256=sha256, source_sha256=source_sha256, guest_sha256=guest_sha256,
        source_format=claimed, media=media_for(source_format=claimed, virtual_bytes=info["virtual-size"]),
        virtual_bytes=info["virtual-size"], stored_bytes=stored_bytes, source_bytes=source_bytes,
    )


def _copy_privately(source: Path | BinaryIO, *, claimed: str, work: Path,
                    limits: ImportLimits) -> tuple[Path, str, int]:
    """A private, read-only copy of the source in work, within the limits: (path, SHA-256, bytes)."""
    # A raw disk's file is its disk, so the disk limit bounds the file too.
    disk_bound = claimed in {"raw", "iso"} and limits.max_virtual_bytes < limits.max_file_bytes
    max_bytes = limits.max_virtual_bytes if disk_bound else limits.max_file_bytes
    # What the source says of its size only lets it be refused early; the copy
    # enforces the limit on what it really reads.
    declared: int | None = None
    needed: int | None = None
    if isinstance(source, Path):
        status = source.stat()
        declared, needed = status.st_size, min(status.st_size, status.st_blocks * 512)
    elif isinstance(hint := getattr(source, "size", None), int):  # Django's UploadedFile
        declared = needed = hint

    def too_large(size: int | None = None) -> ImageRejectedError:
        if disk_bound:
            return _too_large_disk(size, limits)
        return _too_large_file(limits.max_file_bytes)

    if declared is not None and declared > max_bytes:
        raise too_large(declared)
    if needed is not None:
        space_check(work, needed_bytes=needed, limits=limits, doing="copy the image")
    # A neutral name: the extension is not trusted and QEMU never sees the curator's.
    copy = work / "source"
    with contextlib.ExitStack() as opened:
        reader = opened.enter_context(source.open("rb")) if isinstance(source, Path) else source
        source_sha256, source_bytes = private_copy(reader, copy, max_bytes=max_bytes,
                                                   too_large=too_large, limits=limits)
    os.chmod(copy, 0o400)
    if source_bytes == 0:
        raise ImageRejectedError("empty", "The file is empty.")
    return copy, source_sha256, source_bytes


def _headers_check(copy: Path, *, claimed: str, source_bytes: int, parent: Path | None,
                   limits: ImportLimits) -> None:
    """The contents are what was claimed, and their headers name nothing outside (before
    any QEMU tool opens the file); a layer is pointed at its master."""
    format_match(claimed=claimed, sniffed=format_sniff(copy))
    if claimed == "qcow2":
        qcow2_header_check(copy, backing=parent.name if parent is not None else None)
        if parent is not None:
            # The name alone, checked above; now the stored master by its whole path.
            os.chmod(copy, 0o600)
            pointed = qemu_img_run(["rebase", "-u", "-f", "qcow2", "-b", os.fspath(parent), "-F", "qcow2",
                                    os.fspath(copy)], limits=limits)
            if pointed.returncode != 0:
                raise _failure(pointed, "putting it onto its master")
            os.chmod(copy, 0o400)
    elif claimed == "vmdk":
        vmdk_header_check(copy)
    elif claimed in {"raw", "iso"} and source_bytes % SECTOR_BYTES:
        raise ImageRejectedError("corrupt", "A raw disk image is whole 512-byte sectors; "
                                 "this one is not.")


def _probe_and_check(copy: Path, *, qemu_format: str, parent: Path | None,
                     limits: ImportLimits) -> dict[str, Any]:
    """qemu-img's description of the copy (a layer's size matching its master's), after
    `qemu-img check` where the format has one."""
    info = image_probe(copy, qemu_format=qemu_format, limits=limits, backing=parent)
    if parent is not None:
        under = image_probe(parent, qemu_format="qcow2", limits=limits)
        if under.get("virtual-size") != info.get("virtual-size"):
            raise ImageRejectedError("corrupt", "The layer's disk is not the size of its master's.")
    if qemu_format in CHECKABLE_FORMATS:
        checked = qemu_img_run(["check", "-U", "-f", qemu_format, os.fspath(copy)],
                               limits=limits, long=True)
        if checked.returncode not in {0, 3}:  # 3: leaked clusters only, no damage to data
            raise _failure(checked, "checking it")
    return info


def _convert(copy: Path, *, work: Path, qemu_format: str, parent: Path | None,
             limits: ImportLimits) -> Path:
    """The copy as a compressed qcow2 master (over its parent), proven to hold exactly
    the copy's contents."""
    # The master is compressed: a compressed source is not expanded, and a DOS
    # disk's files shrink. zstd, because zlib takes four to seven times as long
    # both ways; QEMU reads it since 5.1 when built with zstd, as Debian's is.
    # `measure` bounds the master from above (it ignores -c).
    bound = _measure(copy, qemu_format=qemu_format, limits=limits)
    space_check(work, needed_bytes=bound, limits=limits, doing="convert the image")
    converted = work / "master.qcow2"
    over = ["-B", os.fspath(parent), "-F", "qcow2"] if parent is not None else []
    result = qemu_img_convert(["-c", "-f", qemu_format, "-O", "qcow2",
                               "-o", "compat=1.1,compression_type=zstd", *over,
                               os.fspath(copy), os.fspath(converted)],
                              output=converted, max_written_bytes=bound, limits=limits)
    if result.returncode != 0:
        raise _failure(result, "converting it")
    compared = qemu_img_run(["compare", "-f", qemu_format, "-F", "qcow2", os.fspath(copy),
                             os.fspath(converted)], limits=limits, long=True)
    if compared.returncode != 0:
        raise ImageRejectedError("conversion_mismatch", "The converted master does not hold "
                                 "exactly the original's contents.")
    return converted


def _store(converted: Path, *, store: Path, parent: Path | None,
           limits: ImportLimits) -> tuple[Path, str, int]:
    """The master into the store under its SHA-256, read-only: (path, SHA-256, bytes)."""
    if parent is not None:
        # By its content address, as every layer names its master (portal.derivation).
        named = qemu_img_run(["rebase", "-u", "-f", "qcow2", "-b", parent.name, "-F", "qcow2",
                              os.fspath(converted)], limits=limits)
        if named.returncode != 0:
            raise _failure(named, "naming its master")
    os.chmod(converted, 0o444)
    sha256 = sha256_path(converted)
    final = store / f"{sha256}.qcow2"
    stored_bytes = converted.stat().st_size
    if final.exists():
        converted.unlink()
    else:
        os.replace(converted, final)
    return final, sha256, stored_bytes


def _measure(copy: Path, *, qemu_format: str, limits: ImportLimits) -> int:
    """Bytes an uncompressed qcow2 of the image needs: its allocated data and metadata."""
    result = qemu_img_run(["measure", "--output=json", "-f", qemu_format, "-O", "qcow2",
                           os.fspath(copy)], limits=limits)
    if result.returncode != 0:
        raise _failure(result, "measuring it")
    try:
        required = json.loads(result.stdout)["required"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ImageRejectedError("corrupt", "qemu-img's measure of the image is unreadable.") \
            from error
    if not isinstance(required, int) or required < 0:
        raise ImageRejectedError("corrupt", "qemu-img's measure of the image is unreadable.")
    return required + MEASURE_SLACK_BYTES


def guest_sha256_read(master: Path, *, virtual_bytes: int, work: Path, limits: ImportLimits) -> str:
    """SHA-256 of what the guest sees, read through QEMU a slice at a time.

    Each slice of the master is converted to a sparse raw file, hashed and
    deleted, so this costs at most one slice of disk space whatever the
    disk's size, and it reads what QEMU itself presents rather than trusting
    our own reading of a container format.
    """
    digest = hashlib.sha256()
    piece = work / "guest.raw"
    # In QEMU's option syntax a comma is written twice.
    master_option = os.fspath(master).replace(",", ",,")
    for offset in range(0, virtual_bytes, GUEST_SLICE_BYTES):
        length = min(GUEST_SLICE_BYTES, virtual_bytes - offset)
        space_check(work, needed_bytes=length, limits=limits, doing="read the converted master")
        result = qemu_img_convert(
            ["--image-opts", f"driver=raw,offset={offset},size={length},file.driver=qcow2,"
             f"file.file.driver=file,file.file.filename={master_option}",
             "-O", "raw", os.fspath(piece)],
            output=piece, max_written_bytes=length + MEASURE_SLACK_BYTES, limits=limits)
        if result.returncode != 0:
            raise _failure(result, "reading the converted master")
        try:
            with piece.open("rb") as reader:
                while chunk := reader.read(CHUNK_BYTES):
                    digest.update(chunk)
        finally:
            piece.unlink()
    return digest.hexdigest()


# --- fixity ----------------------------------------------------------------------


@dataclass(frozen=True)
class FixityResult:
    ok: bool
    detail: str
    # The SHA-256 found now (empty when the file could not be read).
    digest: str = ""


def master_verify(path: Path, *, sha256: str) -> FixityResult:
    """Re-hash a stored master and compare; opens it read-only and never writes it."""
    try:
        actual = sha256_path(path)
    except FileNotFoundError:
        return FixityResult(ok=False, detail="The master file is missing.")
    except OSError as error:
        return FixityResult(ok=False, detail=f"The master file cannot be read: {error.strerror}.")
    if actual != sha256:
        return FixityResult(ok=False, detail=f"SHA-256 is {actual}, expected {sha256}.", digest=actual)
    return FixityResult(ok=True, detail="SHA-256 matches.", digest=actual)
