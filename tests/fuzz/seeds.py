"""The importer's seed images, made with qemu-img: one small valid image per accepted
format and subformat, and hostile ones that name the canaries (a backing file, an
external data file, a VMDK extent). Run once to (re)make tests/fuzz/corpus/importer/:

    .venv/bin/python -m tests.fuzz.seeds

The other targets' seeds are small text and byte files written by hand.
"""
from __future__ import annotations

import os
import random
import struct
import subprocess
import tempfile
from pathlib import Path

from tests.fuzz.canary import CANARY_DIRECTORY, canaries_make
from tests.fuzz.harness import CORPUS_ROOT

KIB = 1024


def qemu_img(*arguments: str) -> None:
    subprocess.run(["qemu-img", *arguments], check=True, capture_output=True, timeout=60)


def raw_disk(path: Path, size: int) -> Path:
    """A disk with a boot sector, two short runs of data and zeros elsewhere."""
    generator = random.Random(4)
    data = bytearray(size)
    data[0:3] = b"\xeb\x3c\x90"
    data[512:1024] = generator.randbytes(512)
    data[size // 2:size // 2 + 512] = generator.randbytes(512)
    path.write_bytes(bytes(data))
    return path


def trimmed(path: Path) -> None:
    """Cut the file after its last non-zero sector (QEMU reads zeros past the end)."""
    data = path.read_bytes()
    end = len(data.rstrip(b"\0"))
    path.write_bytes(data[:(end + 511) // 512 * 512])


def seeds_make(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    canaries = canaries_make()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        disk = raw_disk(scratch / "disk.raw", 64 * KIB)
        (directory / "raw.img").write_bytes(disk.read_bytes()[:16 * KIB])
        made = {
            "qcow2-v3.qcow2": ["-O", "qcow2", "-o", "cluster_size=512"],
            "qcow2-v2.qcow2": ["-O", "qcow2", "-o", "cluster_size=512,compat=0.10"],
            "vmdk-monolithic-sparse.vmdk": ["-O", "vmdk"],
            "vmdk-stream-optimized.vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
            "vdi-dynamic.vdi": ["-O", "vdi"],
            "vhd-dynamic.vhd": ["-O", "vpc"],
            "vhd-fixed.vhd": ["-O", "vpc", "-o", "subformat=fixed"],
            "vhdx.vhdx": ["-O", "vhdx", "-o", "block_size=1M,log_size=1M"],
        }
        # A VHD's and a VHDX's blocks are megabytes: theirs hold no data, only headers.
        blank = scratch / "blank.raw"
        blank.write_bytes(bytes(64 * KIB))
        for name, arguments in made.items():
            output = scratch / name
            source = blank if name.startswith(("vhd-dynamic", "vhdx")) else disk
            qemu_img("convert", "-f", "raw", *arguments, os.fspath(source), os.fspath(output))
            if name.startswith(("vdi", "vhdx", "vmdk-monolithic")):
                trimmed(output)
            (directory / name).write_bytes(output.read_bytes())
        # Hostile: each names a canary, absolutely or relative to the import's work directory.
        for name, backing, backing_format in (
                ("qcow2-backing-canary.qcow2", canaries["raw"], "raw"),
                ("qcow2-backing-canary-qcow2.qcow2", canaries["qcow2"], "qcow2"),
                ("qcow2-backing-relative.qcow2", Path("../../canary.raw"), "raw")):
            output = scratch / name
            qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", "-u", "-F", backing_format,
                     "-b", os.fspath(backing), os.fspath(output), "64K")
            (directory / name).write_bytes(output.read_bytes())
        data_file = scratch / "qcow2-data-file.qcow2"
        qemu_img("create", "-f", "qcow2", "-o",
                 f"cluster_size=512,data_file={canaries['raw']},data_file_raw=on", os.fspath(data_file),
                 "64K")
        (directory / data_file.name).write_bytes(data_file.read_bytes())
        (directory / "vmdk-flat-extent-canary.vmdk").write_bytes(
            vmdk_with_extent(directory / "vmdk-monolithic-sparse.vmdk",
                             f'RW 128 FLAT "{canaries["raw"]}" 0'))


def vmdk_with_extent(sparse: Path, extent: str) -> bytes:
    """A monolithicSparse VMDK whose embedded descriptor's extent line is replaced."""
    data = bytearray(sparse.read_bytes())
    descriptor_sector, descriptor_sectors = struct.unpack("<QQ", data[28:44])
    start = descriptor_sector * 512
    text = bytes(data[start:start + descriptor_sectors * 512]).split(b"\0", 1)[0].decode()
    lines = [extent if line.startswith("RW ") else line for line in text.splitlines()]
    replaced = ("\n".join(lines) + "\n").encode()
    data[start:start + descriptor_sectors * 512] = replaced.ljust(descriptor_sectors * 512, b"\0")
    return bytes(data)


if __name__ == "__main__":
    seeds_make(CORPUS_ROOT / "importer")
    print(f"seeds in {CORPUS_ROOT / 'importer'}; canaries in {CANARY_DIRECTORY}")
