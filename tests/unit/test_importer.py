"""Recognising image formats from their bytes, and the hand checks made before QEMU looks."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from portal.importer import (
    ImageRejectedError,
    ImportLimits,
    format_claimed,
    format_match,
    format_sniff,
    image_probe,
    media_for,
    qcow2_header_check,
    size_text,
    vmdk_header_check,
)
from portal.thumbnails import png_has_content


def write(path: Path, data: bytes, *, size: int | None = None) -> Path:
    path.write_bytes(data.ljust(size or len(data), b"\0"))
    return path


def qcow2_header(*, version: int = 3, backing_offset: int = 0, crypt: int = 0, incompatible: int = 0,
                 extension: bytes = b"") -> bytes:
    header = bytearray(112)
    header[0:4] = b"QFI\xfb"
    struct.pack_into(">I", header, 4, version)
    struct.pack_into(">QI", header, 8, backing_offset, 10 if backing_offset else 0)
    struct.pack_into(">I", header, 20, 16)
    struct.pack_into(">Q", header, 24, 1024 * 1024)
    struct.pack_into(">I", header, 32, crypt)
    struct.pack_into(">Q", header, 72, incompatible)
    struct.pack_into(">I", header, 100, 112)
    return bytes(header) + extension + b"\0" * 8


@pytest.mark.parametrize(("data", "offset", "size", "expected"), [
    (b"QFI\xfb\0\0\0\x03", 0, 4096, "qcow2"),
    (b"QFI\xfb\0\0\0\x01", 0, 4096, "qcow1"),
    (b"KDMV", 0, 4096, "vmdk"),
    (b"# Disk DescriptorFile\n", 0, 4096, "vmdk-descriptor"),
    (b"vhdxfile", 0, 4096, "vhdx"),
    (b"conectix", 0, 4096, "vpc"),
    (b"\x7f\x10\xda\xbe", 64, 4096, "vdi"),
    (b"QED\0", 0, 4096, "qed"),
    (b"CD001", 0x8001, 0x9000, "iso"),
    (b"\xeb\x3c\x90MSDOS5.0", 0, 737280, "raw"),
])
def test_it_recognises_formats_by_their_magic_bytes(tmp_path: Path, data: bytes, offset: int, size: int,
                                                    expected: str) -> None:
    image = write(tmp_path / "image", b"\0" * offset + data, size=size)
    assert format_sniff(image) == expected


def test_it_finds_a_fixed_vhd_by_its_footer(tmp_path: Path) -> None:
    image = write(tmp_path / "image", b"\0" * 4096 + b"conectix".ljust(512, b"\0"))
    assert format_sniff(image) == "vpc"


@pytest.mark.parametrize(("name", "claimed"), [
    ("DISK1.IMA", "raw"), ("a.vfd", "raw"), ("a.img", "raw"), ("a.qcow2", "qcow2"),
    ("a.vmdk", "vmdk"), ("a.vdi", "vdi"), ("a.vhd", "vpc"), ("a.vhdx", "vhdx"), ("a.iso", "iso"),
])
def test_it_takes_the_claimed_format_from_the_name(name: str, claimed: str) -> None:
    assert format_claimed(name) == claimed


def test_it_lets_the_curators_claim_win_over_the_name() -> None:
    assert format_claimed("disk.img", claim="qcow2") == "qcow2"


def test_it_refuses_a_name_that_claims_nothing() -> None:
    with pytest.raises(ImageRejectedError) as caught:
        format_claimed("disk.exe")
    assert caught.value.reason == "unknown_format"


@pytest.mark.parametrize(("claimed", "sniffed", "reason"), [
    ("qcow2", "raw", "format_mismatch"),
    ("raw", "qcow2", "format_mismatch"),
    ("raw", "vmdk", "format_mismatch"),
    ("vmdk", "vmdk-descriptor", "vmdk_descriptor"),
    ("raw", "iso", "format_mismatch"),
    ("vdi", "vpc", "format_mismatch"),
])
def test_it_refuses_contents_that_are_not_the_claimed_format(claimed: str, sniffed: str,
                                                            reason: str) -> None:
    with pytest.raises(ImageRejectedError) as caught:
        format_match(claimed=claimed, sniffed=sniffed)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("header", "reason"), [
    (qcow2_header(backing_offset=4096), "backing_file"),
    (qcow2_header(version=2, backing_offset=4096), "backing_file"),
    (qcow2_header(crypt=1), "encrypted"),
    (qcow2_header(crypt=2), "encrypted"),
    (qcow2_header(incompatible=1 << 2), "data_file"),
    (qcow2_header(incompatible=1 << 1), "corrupt"),
    (qcow2_header(extension=struct.pack(">II", 0x44415441, 8) + b"/etc/pas"), "data_file"),
    (b"QFI\xfb\0\0\0\x03", "corrupt"),
])
def test_it_refuses_dangerous_qcow2_headers_by_hand(tmp_path: Path, header: bytes, reason: str) -> None:
    image = write(tmp_path / "image", header)
    with pytest.raises(ImageRejectedError) as caught:
        qcow2_header_check(image)
    assert caught.value.reason == reason


def test_it_passes_a_plain_qcow2_header(tmp_path: Path) -> None:
    qcow2_header_check(write(tmp_path / "image", qcow2_header()))


def vmdk(*, capacity: int, descriptor: str) -> bytes:
    header = bytearray(512)
    header[0:4] = b"KDMV"
    struct.pack_into("<II", header, 4, 1, 3)
    struct.pack_into("<QQQQ", header, 12, capacity, 128, 1, 20)
    return bytes(header) + descriptor.encode().ljust(20 * 512, b"\0")


DESCRIPTOR = ('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="{kind}"\n'
              "{extents}\n")


@pytest.mark.parametrize(("capacity", "kind", "extents", "reason"), [
    (0, "monolithicSparse", 'RW 2048 FLAT "/etc/passwd" 0', "vmdk_extent"),
    (2048, "monolithicSparse", 'RW 2048 SPARSE "a.vmdk"\nRW 2048 FLAT "/etc/passwd" 0', "vmdk_extent"),
    (2048, "monolithicSparse", 'RW 2048 FLAT "/etc/passwd" 0', "vmdk_extent"),
    (2048, "twoGbMaxExtentSparse", 'RW 2048 SPARSE "a.vmdk"', "vmdk_extent"),
])
def test_it_refuses_a_vmdk_whose_descriptor_names_other_files(
    tmp_path: Path, capacity: int, kind: str, extents: str, reason: str
) -> None:
    image = write(tmp_path / "image", vmdk(capacity=capacity,
                                           descriptor=DESCRIPTOR.format(kind=kind, extents=extents)))
    with pytest.raises(ImageRejectedError) as caught:
        vmdk_header_check(image)
    assert caught.value.reason == reason


def test_it_passes_a_single_file_sparse_vmdk(tmp_path: Path) -> None:
    descriptor = DESCRIPTOR.format(kind="monolithicSparse", extents='RW 2048 SPARSE "a.vmdk"')
    vmdk_header_check(write(tmp_path / "image", vmdk(capacity=2048, descriptor=descriptor)))


@pytest.mark.parametrize(("source_format", "size", "media"), [
    ("raw", 1440 * 1024, "floppy"), ("raw", 720 * 1024, "floppy"), ("raw", 160 * 1024, "floppy"),
    ("raw", 2880 * 1024, "floppy"), ("qcow2", 1440 * 1024, "floppy"),
    ("raw", 1024 * 1024, "disk"), ("raw", 40 * 1024 * 1024, "disk"), ("iso", 1440 * 1024, "cdrom"),
])
def test_it_attaches_floppy_sized_disks_as_floppies(source_format: str, size: int, media: str) -> None:
    assert media_for(source_format=source_format, virtual_bytes=size) == media


@pytest.mark.parametrize(("size", "text"), [
    (2 * 1024**3, "2 GiB"), (64 * 1024**2, "64 MiB"), (1440 * 1024, "1.4 MiB"), (512 * 1024, "512 KiB"),
    (9 * 1024**3 + 1, "9 GiB"), (512, "512 bytes"),
])
def test_it_names_sizes_as_a_person_reads_them(size: int, text: str) -> None:
    assert size_text(size) == text


def png(pixels: bytes, width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + pixels[y * width * 3:(y + 1) * width * 3] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_it_tells_a_blank_screen_from_one_with_something_on_it() -> None:
    assert not png_has_content(png(b"\0" * 16 * 16 * 3, 16, 16))
    assert png_has_content(png(bytes(range(256)) * 3, 16, 16))


def test_its_refusals_do_not_show_the_hosts_paths(tmp_path: Path) -> None:
    # A qcow2 whose tables point past its end: qemu-img names the file it was given.
    upload = write(tmp_path / "upload-secret-dir.qcow2", qcow2_header()[:-8], size=4096)
    struct_l1 = bytearray(upload.read_bytes())
    struct.pack_into(">IQ", struct_l1, 36, 1, 1 << 40)  # l1_size, l1_table_offset far away
    upload.write_bytes(bytes(struct_l1))
    limits = ImportLimits(max_file_bytes=1 << 30, max_virtual_bytes=1 << 30)
    with pytest.raises(ImageRejectedError) as refused:
        image_probe(upload, qemu_format="qcow2", limits=limits)
    assert "qemu-img could not read the image" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)
    assert "upload-secret-dir" not in str(refused.value)
