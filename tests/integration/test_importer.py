"""Importing untrusted images with real qemu-img: a hostile corpus built here, and round trips.

Every hostile image names a bait file this test made; inotify proves that
nothing (neither the portal nor any qemu-img it runs) opens the bait while the
image is refused, and the store is left exactly as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shlex
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.importer import (
    GUEST_SLICE_BYTES,
    ImageRejectedError,
    ImportLimits,
    StoredImage,
    image_import,
    master_verify,
    qemu_img_convert,
    qemu_img_run,
)
from tests.support.filesystem import small_filesystem
from tests.support.inotify import IN_ACCESS, IN_OPEN, opens_watched

MIB = 1024 * 1024
LIMITS = ImportLimits(max_file_bytes=64 * MIB, max_virtual_bytes=8 * 1024 * MIB)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def raw_disk(path: Path, size: int, *, seed: int = 4) -> Path:
    """A disk with recognisable data in some places and holes of zeros in others."""
    rng = random.Random(seed)
    data = bytearray(size)
    for start in range(0, size, 256 * 1024):
        data[start:start + 64 * 1024] = rng.randbytes(64 * 1024)[:max(0, min(64 * 1024, size - start))]
    # A boot sector that no format sniffer mistakes for anything.
    data[0:3] = b"\xeb\x3c\x90"
    path.write_bytes(bytes(data))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Case:
    path: Path
    name: str
    claim: str | None
    reason: str


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


# --- the hostile corpus ------------------------------------------------------------
# Each builder makes one hostile image in `work` that names `bait` where it can.


def backing_file(work: Path, bait: Path) -> Case:
    image = work / "backing.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-F", "raw", "-b", str(bait), str(image), "1M")
    return Case(image, "game.qcow2", None, "backing_file")


def backing_file_qcow2_chain(work: Path, bait: Path) -> Case:
    image = work / "backing2.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-F", "qcow2", "-b", str(bait), str(image), "1M")
    return Case(image, "game.qcow2", None, "backing_file")


def data_file(work: Path, bait: Path) -> Case:
    image = work / "datafile.qcow2"
    scratch = work / "scratch-data"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={scratch}", str(image), "1M")
    # Point the header extension at the bait (same length as the scratch name).
    content = image.read_bytes()
    assert len(str(bait)) <= len(str(scratch))
    offset = content.index(os.fsencode(scratch))
    patch(image, offset, os.fsencode(bait).ljust(len(os.fsencode(scratch)), b"\0"))
    scratch.unlink()
    return Case(image, "game.qcow2", None, "data_file")


def data_file_without_feature_bit(work: Path, bait: Path) -> Case:
    case = data_file(work, bait)
    patch(case.path, 72, struct.pack(">Q", 0))  # incompatible features: none
    return Case(case.path, case.name, None, "data_file")


def huge_virtual_size(work: Path, bait: Path) -> Case:
    image = work / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1T")
    return Case(image, "huge.qcow2", None, "too_large")


def truncated_qcow2(work: Path, bait: Path) -> Case:
    image = work / "truncated.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_disk(work / "t.raw", 2 * MIB)), str(image))
    os.truncate(image, 300)
    return Case(image, "truncated.qcow2", None, "corrupt")


def truncated_qcow2_data(work: Path, bait: Path) -> Case:
    image = work / "truncated2.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_disk(work / "t2.raw", 2 * MIB)), str(image))
    os.truncate(image, image.stat().st_size // 2)
    return Case(image, "truncated.qcow2", None, "corrupt")


def garbage_qcow2_header(work: Path, bait: Path) -> Case:
    image = work / "garbage.qcow2"
    image.write_bytes(b"QFI\xfb\0\0\0\x03" + random.Random(7).randbytes(4088))
    patch(image, 8, b"\0" * 12)  # no backing file, so QEMU itself judges the rest
    patch(image, 32, b"\0" * 4)  # not encrypted
    patch(image, 72, b"\0" * 8)  # no incompatible features
    return Case(image, "garbage.qcow2", None, "corrupt")


def encrypted_qcow2(work: Path, bait: Path) -> Case:
    image = work / "encrypted.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1M")
    patch(image, 32, struct.pack(">I", 1))  # crypt_method: AES
    return Case(image, "secret.qcow2", None, "encrypted")


def vmdk_descriptor_naming_bait(work: Path, bait: Path) -> Case:
    image = work / "descriptor.vmdk"
    image.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        f'createType="monolithicFlat"\nRW 2048 FLAT "{bait}" 0\n'
        'ddb.adapterType = "ide"\n')
    return Case(image, "disk.vmdk", None, "vmdk_descriptor")


def _sparse_vmdk(work: Path, name: str) -> Path:
    image = work / name
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse",
             str(raw_disk(work / f"{name}.raw", 1 * MIB)), str(image))
    return image


def _descriptor_replace(image: Path, extents: str) -> None:
    content = image.read_bytes()
    start = content.index(b"# Disk DescriptorFile")
    end = content.index(b"\0", start)
    old = content[start:end].decode()
    lines = [line for line in old.splitlines() if not line.startswith("RW ")]
    index = next(n for n, line in enumerate(lines) if line.startswith("# Extent"))
    new = "\n".join([*lines[:index + 1], extents, *lines[index + 1:]]) + "\n"
    assert len(new) <= 20 * 512
    patch(image, start, new.encode().ljust(end - start, b"\0")[:max(end - start, len(new))])


def sparse_vmdk_deferring_to_bait(work: Path, bait: Path) -> Case:
    """KDMV with capacity 0: QEMU would follow the embedded descriptor's extents (CVE-2022-47951)."""
    image = _sparse_vmdk(work, "defer.vmdk")
    patch(image, 12, struct.pack("<Q", 0))
    _descriptor_replace(image, f'RW 2048 FLAT "{bait}" 0')
    return Case(image, "disk.vmdk", None, "vmdk_extent")


def sparse_vmdk_with_second_extent(work: Path, bait: Path) -> Case:
    image = _sparse_vmdk(work, "second.vmdk")
    _descriptor_replace(image, f'RW 2048 SPARSE "defer.vmdk"\nRW 2048 FLAT "{bait}" 0')
    return Case(image, "disk.vmdk", None, "vmdk_extent")


def raw_named_qcow2(work: Path, bait: Path) -> Case:
    return Case(raw_disk(work / "raw.qcow2", MIB), "disk.qcow2", None, "format_mismatch")


def qcow2_named_img(work: Path, bait: Path) -> Case:
    image = work / "disguised.img"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_disk(work / "d.raw", MIB)), str(image))
    return Case(image, "disk.img", None, "format_mismatch")


def qcow2_claimed_raw(work: Path, bait: Path) -> Case:
    """The classic: a qcow2 with a backing file, passed off as raw, would be guessed as qcow2."""
    image = work / "claimed.bin"
    qemu_img("create", "-f", "qcow2", "-u", "-F", "raw", "-b", str(bait), str(image), "1M")
    return Case(image, "disk.bin", "raw", "format_mismatch")


def vmdk_named_vdi(work: Path, bait: Path) -> Case:
    return Case(_sparse_vmdk(work, "wrong.vdi"), "disk.vdi", None, "format_mismatch")


def vhd_claimed_raw(work: Path, bait: Path) -> Case:
    image = work / "fixed.img"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
             str(raw_disk(work / "v.raw", MIB)), str(image))
    return Case(image, "disk.img", None, "format_mismatch")


def raw_not_whole_sectors(work: Path, bait: Path) -> Case:
    image = work / "odd.img"
    image.write_bytes(b"\xeb\x3c\x90" + b"\0" * 1000)
    return Case(image, "odd.img", None, "corrupt")


def empty_file(work: Path, bait: Path) -> Case:
    image = work / "empty.img"
    image.write_bytes(b"")
    return Case(image, "empty.img", None, "empty")


def unknown_extension(work: Path, bait: Path) -> Case:
    return Case(raw_disk(work / "disk.exe", MIB), "disk.exe", None, "unknown_format")


def file_over_the_limit(work: Path, bait: Path) -> Case:
    return Case(raw_disk(work / "big.img", LIMITS.max_file_bytes + MIB), "big.img", None, "too_large")


def iso_named_img(work: Path, bait: Path) -> Case:
    return Case(iso_image(work / "cd.img"), "cd.img", None, "format_mismatch")


HOSTILE: list[Callable[[Path, Path], Case]] = [
    backing_file, backing_file_qcow2_chain, data_file, data_file_without_feature_bit,
    huge_virtual_size, truncated_qcow2, truncated_qcow2_data, garbage_qcow2_header,
    encrypted_qcow2, vmdk_descriptor_naming_bait, sparse_vmdk_deferring_to_bait,
    sparse_vmdk_with_second_extent, raw_named_qcow2, qcow2_named_img, qcow2_claimed_raw,
    vmdk_named_vdi, vhd_claimed_raw, raw_not_whole_sectors, empty_file, unknown_extension,
    file_over_the_limit, iso_named_img,
]


@pytest.fixture
def bait(tmp_path: Path) -> Path:
    path = tmp_path / "bait" / "passwd"
    path.parent.mkdir()
    path.write_bytes(b"root:x:0:0:secret bait:/root:/bin/sh\n".ljust(1024 * 1024, b"#"))
    return path


def store_contents(store: Path) -> list[str]:
    return sorted(os.fspath(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


@pytest.mark.parametrize("build", HOSTILE, ids=[build.__name__ for build in HOSTILE])
def test_it_refuses_a_hostile_image_without_opening_what_it_names(
    tmp_path: Path, bait: Path, build: Callable[[Path, Path], Case]
) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    case = build(work, bait)
    store = tmp_path / "images"
    store.mkdir()
    (store / "existing.qcow2").write_bytes(b"an earlier master")
    before = store_contents(store)

    with opens_watched(bait) as watch:
        with pytest.raises(ImageRejectedError) as caught:
            image_import(case.path, name=case.name, claim=case.claim, store=store, limits=LIMITS)
        opened = watch.events()

    assert caught.value.reason == case.reason, str(caught.value)
    assert str(caught.value)  # a sentence for the curator
    assert not [mask for mask in opened if mask & (IN_OPEN | IN_ACCESS)], "the bait was opened"
    assert store_contents(store) == before, "the refused import left something behind"


def test_a_sparse_vmdk_whose_own_extent_line_names_the_bait_is_stored_without_opening_it(
    tmp_path: Path, bait: Path
) -> None:
    """With a non-zero capacity QEMU reads a sparse VMDK's data from the file itself and
    ignores the file name on its extent line; so may the portal, and the bait stays closed."""
    image = _sparse_vmdk(tmp_path, "named.vmdk")
    _descriptor_replace(image, f'RW 2048 SPARSE "{bait}"')
    store = tmp_path / "images"
    with opens_watched(bait) as watch:
        stored = image_import(image, name="disk.vmdk", store=store, limits=LIMITS)
        assert not watch.events(), "the bait was opened"
    assert stored.guest_sha256 == sha256_of(tmp_path / "named.vmdk.raw")


def test_the_bait_watch_sees_qemu_img_follow_a_backing_file(tmp_path: Path, bait: Path) -> None:
    """The control: without the portal's checks, qemu-img does read the named host file."""
    case = backing_file(tmp_path, bait)
    with opens_watched(bait) as watch:
        qemu_img("convert", "-f", "qcow2", "-O", "raw", str(case.path), str(tmp_path / "leak.raw"))
        assert watch.events(), "inotify saw nothing; the proof above would be worthless"
    assert (tmp_path / "leak.raw").read_bytes().startswith(b"root:x:0:0:secret bait")


def test_it_refuses_when_qemu_img_exceeds_its_limits(tmp_path: Path) -> None:
    image = raw_disk(tmp_path / "disk.img", MIB)
    starved = ImportLimits(max_file_bytes=LIMITS.max_file_bytes, max_virtual_bytes=LIMITS.max_virtual_bytes,
                           probe_address_space_bytes=16 * MIB)
    store = tmp_path / "images"
    with pytest.raises(ImageRejectedError) as caught:
        image_import(image, name="disk.img", store=store, limits=starved)
    assert caught.value.reason == "resource_limit"
    assert store_contents(store) == []


def test_it_runs_qemu_img_with_cpu_and_address_space_limits(tmp_path: Path) -> None:
    script = tmp_path / "limits.sh"
    script.write_text("#!/bin/sh\nulimit -t; ulimit -v\n")
    script.chmod(0o755)
    limits = ImportLimits(max_file_bytes=1, max_virtual_bytes=1, qemu_img=str(script))
    result = qemu_img_run([], limits=limits)
    assert result.stdout.split() == ["2", str(1024 * 1024)]  # seconds; KiB


# --- accepted formats: round trips -------------------------------------------------


def iso_image(path: Path) -> Path:
    """A minimal ISO 9660 image: system area, a primary volume descriptor, a terminator."""
    data = bytearray(64 * 2048)
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[40:72] = b"PORTAL TEST".ljust(32)
    struct.pack_into("<I", pvd, 80, 64)
    struct.pack_into(">I", pvd, 84, 64)
    struct.pack_into("<H", pvd, 128, 2048)
    struct.pack_into(">H", pvd, 130, 2048)
    data[16 * 2048:17 * 2048] = pvd
    data[17 * 2048:17 * 2048 + 7] = b"\xffCD001\x01"
    data[40 * 2048:40 * 2048 + 15] = b"hello from a CD"
    path.write_bytes(bytes(data))
    return path


def convert_to(work: Path, raw: Path, name: str, fmt: str, *options: str) -> Path:
    image = work / name
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw), str(image))
    return image


ACCEPTED = {
    "raw floppy": ("DISK1.IMA", None, "floppy"),
    "raw hard disk": ("disk.img", None, "disk"),
    "qcow2": ("disk.qcow2", ("qcow2",), "disk"),
    "vmdk monolithicSparse": ("disk.vmdk", ("vmdk", "-o", "subformat=monolithicSparse"), "disk"),
    "vmdk streamOptimized": ("disk.vmdk", ("vmdk", "-o", "subformat=streamOptimized"), "disk"),
    "vdi": ("disk.vdi", ("vdi",), "disk"),
    "vhd dynamic": ("disk.vhd", ("vpc", "-o", "force_size=on"), "disk"),
    "vhd fixed": ("disk.vhd", ("vpc", "-o", "subformat=fixed,force_size=on"), "disk"),
    "vhdx": ("disk.vhdx", ("vhdx",), "disk"),
    "iso": ("cd.iso", None, "cdrom"),
}


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_it_stores_an_accepted_image_as_a_read_only_qcow2_the_guest_sees_unchanged(
    tmp_path: Path, kind: str
) -> None:
    name, conversion, media = ACCEPTED[kind]
    if kind == "iso":
        raw = iso_image(tmp_path / "contents.raw")
    else:
        raw = raw_disk(tmp_path / "contents.raw", 1440 * 1024 if media == "floppy" else 3 * MIB)
    if conversion is None:
        source = tmp_path / name
        shutil.copyfile(raw, source)
    else:
        source = convert_to(tmp_path, raw, name, conversion[0], *conversion[1:])
    store = tmp_path / "images"

    stored: StoredImage = image_import(source, name=name, store=store, limits=LIMITS)

    assert stored.media == media
    assert stored.guest_sha256 == sha256_of(raw)
    assert stored.source_sha256 == sha256_of(source)
    assert stored.path == store / f"{stored.sha256}.qcow2"
    assert stored.path.stat().st_mode & 0o777 == 0o444
    assert store_contents(store) == [stored.path.name]
    # The guest sees exactly the original's bytes.
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(stored.path)],
                          capture_output=True, timeout=60).returncode == 0
    # Round-trip fixity: the stored master checks out, and checking does not change it.
    modified = stored.path.stat().st_mtime_ns
    assert master_verify(stored.path, sha256=stored.sha256).ok
    assert stored.path.stat().st_mtime_ns == modified


def test_it_stores_the_same_contents_once(tmp_path: Path) -> None:
    raw = raw_disk(tmp_path / "disk.img", 2 * MIB)
    vdi = convert_to(tmp_path, raw, "disk.vdi", "vdi")
    store = tmp_path / "images"
    first = image_import(raw, name="disk.img", store=store, limits=LIMITS)
    second = image_import(vdi, name="disk.vdi", store=store, limits=LIMITS)
    assert first.guest_sha256 == second.guest_sha256
    assert first.path == second.path
    assert store_contents(store) == [first.path.name]


def test_fixity_fails_after_one_byte_of_a_master_copy_flips(tmp_path: Path) -> None:
    raw = raw_disk(tmp_path / "disk.img", 2 * MIB)
    stored = image_import(raw, name="disk.img", store=tmp_path / "images", limits=LIMITS)
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(stored.path, copy)
    assert master_verify(copy, sha256=stored.sha256).ok
    middle = copy.stat().st_size // 2
    with copy.open("r+b") as handle:
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0x01]))
    result = master_verify(copy, sha256=stored.sha256)
    assert not result.ok
    assert stored.sha256 in result.detail
    assert not master_verify(tmp_path / "gone.qcow2", sha256=stored.sha256).ok


# --- disk space: limits, free space, peak use ---------------------------------------


def random_disk(path: Path, size: int, *, data_bytes: int, seed: int = 9) -> Path:
    """A sparse raw disk of size bytes whose first data_bytes are random (nothing compresses)."""
    rng = random.Random(seed)
    with path.open("wb") as handle:
        handle.write(b"\xeb\x3c\x90" + rng.randbytes(data_bytes - 3))
        handle.truncate(size)
    return path


def pattern_disk(path: Path, size: int) -> Path:
    """A raw disk full of a repeating non-zero pattern, which compresses to almost nothing."""
    block = (b"\xeb\x3c\x90MUSEUM DOS DISK " * 60000)[:MIB]
    with path.open("wb") as handle:
        for _ in range(size // MIB):
            handle.write(block)
    return path


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def allocated_total(directory: Path) -> int:
    return sum(allocated(path) for path in directory.rglob("*") if path.is_file())


def recording_qemu_img(tmp_path: Path, store: Path) -> tuple[Path, Path]:
    """A qemu-img that notes the store's allocated bytes before and after each run.

    Between runs the importer only copies, hashes, renames and deletes, so the
    largest figure noted is the import's peak disk use, step by step.
    """
    log = tmp_path / "steps.log"
    script = tmp_path / "qemu-img-recording"
    usage = f"$(du -s -B1 {shlex.quote(str(store))} | cut -f1)"
    script.write_text(f'#!/bin/sh\necho "before $1 {usage}" >> {shlex.quote(str(log))}\n'
                      f'qemu-img "$@"\nrc=$?\n'
                      f'echo "after $1 {usage}" >> {shlex.quote(str(log))}\nexit $rc\n')
    script.chmod(0o755)
    return script, log


def steps(log: Path) -> list[tuple[str, str, int]]:
    return [(when, command, int(used)) for when, command, used in
            (line.split() for line in log.read_text().splitlines())]


def test_its_peak_disk_use_is_the_source_and_one_copy_of_the_data(tmp_path: Path) -> None:
    data = 32 * MIB
    raw = random_disk(tmp_path / "contents.raw", 64 * MIB, data_bytes=data)
    source = convert_to(tmp_path, raw, "disk.qcow2", "qcow2")
    store = tmp_path / "images"
    store.mkdir()
    script, log = recording_qemu_img(tmp_path, store)
    limits = ImportLimits(max_file_bytes=LIMITS.max_file_bytes,
                          max_virtual_bytes=LIMITS.max_virtual_bytes, qemu_img=str(script))

    stored = image_import(source, name="disk.qcow2", store=store, limits=limits)

    assert stored.guest_sha256 == sha256_of(raw)
    recorded = steps(log)
    assert any(command == "convert" for _, command, _ in recorded)
    peak = max(used for _, _, used in recorded)
    # The private copy of the source, one copy of its data, and metadata.
    assert peak <= allocated(source) + data + 2 * MIB, recorded
    assert store_contents(store) == [stored.path.name]


def test_it_keeps_the_master_of_a_compressed_qcow2_compressed(tmp_path: Path) -> None:
    raw = pattern_disk(tmp_path / "contents.raw", 48 * MIB)
    source = convert_to(tmp_path, raw, "disk.qcow2", "qcow2", "-c")
    store = tmp_path / "images"
    store.mkdir()
    script, log = recording_qemu_img(tmp_path, store)
    limits = ImportLimits(max_file_bytes=LIMITS.max_file_bytes,
                          max_virtual_bytes=LIMITS.max_virtual_bytes, qemu_img=str(script))

    stored = image_import(source, name="disk.qcow2", store=store, limits=limits)

    assert stored.guest_sha256 == sha256_of(raw)
    assert stored.stored_bytes < 4 * MIB
    # Hashing the guest's view costs a slice of it at a time, never the whole disk.
    assert max(used for _, _, used in steps(log)) <= allocated(source) + 4 * MIB + GUEST_SLICE_BYTES
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw),
                           str(stored.path)], capture_output=True, timeout=60).returncode == 0


@pytest.mark.parametrize("given", ["path", "stream"])
def test_it_refuses_a_sparse_raw_over_the_limit_without_writing_its_holes(
    tmp_path: Path, given: str
) -> None:
    source = random_disk(tmp_path / "big.img", 256 * MIB, data_bytes=MIB)
    limits = ImportLimits(max_file_bytes=2048 * MIB, max_virtual_bytes=64 * MIB,
                          free_margin_bytes=MIB)
    # Too small for the disk's holes: writing them out would fill it.
    with small_filesystem(size="16m") as filesystem:
        store = filesystem / "images"
        with contextlib.ExitStack() as opened:
            given_source = source if given == "path" else opened.enter_context(source.open("rb"))
            with pytest.raises(ImageRejectedError) as caught:
                image_import(given_source, name="big.img", store=store, limits=limits)
        assert store_contents(store) == []
    assert caught.value.reason == "too_large"
    assert "64 MiB" in str(caught.value)
    assert "PORTAL_IMAGE_MAX_VIRTUAL_BYTES" in str(caught.value)


def test_it_copies_a_sparse_raw_without_writing_its_holes(tmp_path: Path) -> None:
    source = random_disk(tmp_path / "disk.img", 48 * MIB, data_bytes=MIB)
    with small_filesystem(size="16m") as filesystem:
        store = filesystem / "images"
        with source.open("rb") as stream:
            stored = image_import(stream, name="disk.img", store=store,
                                  limits=ImportLimits(max_file_bytes=64 * MIB,
                                                      max_virtual_bytes=64 * MIB,
                                                      free_margin_bytes=MIB))
        assert store_contents(store) == [stored.path.name]
        assert allocated(stored.path) < 4 * MIB
    assert stored.guest_sha256 == sha256_of(source)
    assert stored.virtual_bytes == 48 * MIB


@pytest.mark.parametrize("step", ["copy from a path", "copy from a stream", "conversion"])
def test_it_refuses_an_import_that_would_not_fit_and_leaves_nothing(tmp_path: Path, step: str) -> None:
    data = 48 * MIB if step.startswith("copy") else 24 * MIB
    raw = random_disk(tmp_path / "contents.raw", 64 * MIB, data_bytes=data)
    source = convert_to(tmp_path, raw, "disk.vdi", "vdi")
    limits = ImportLimits(max_file_bytes=LIMITS.max_file_bytes,
                          max_virtual_bytes=LIMITS.max_virtual_bytes, free_margin_bytes=MIB)
    with small_filesystem(size="40m") as filesystem:
        store = filesystem / "images"
        with contextlib.ExitStack() as opened:
            given_source = (opened.enter_context(source.open("rb")) if step == "copy from a stream"
                            else source)
            with pytest.raises(ImageRejectedError) as caught:
                image_import(given_source, name="disk.vdi", store=store, limits=limits)
        assert store_contents(store) == []
        assert allocated_total(filesystem) == 0
    assert caught.value.reason == "no_space", str(caught.value)
    assert "not enough free disk space" in str(caught.value)
    assert "PORTAL_IMAGE_FREE_MARGIN_BYTES" in str(caught.value)


def test_it_stops_a_conversion_whose_output_passes_its_bound(tmp_path: Path) -> None:
    raw = random_disk(tmp_path / "contents.raw", 32 * MIB, data_bytes=32 * MIB)
    output = tmp_path / "out.qcow2"
    with pytest.raises(ImageRejectedError) as caught:
        qemu_img_convert(["-f", "raw", "-O", "qcow2", str(raw), str(output)], output=output,
                         max_written_bytes=4 * MIB, limits=LIMITS)
    assert caught.value.reason == "too_large"
    assert "4 MiB" in str(caught.value)
