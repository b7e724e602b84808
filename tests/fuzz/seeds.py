"""Every target's seeds. The importer's are small images made with qemu-img: one valid
image per accepted format and subformat, and hostile ones that name the canaries (a
backing file, an external data file, a VMDK extent). The RFB stream's are what noVNC
sends (handshakes, the messages a viewer and an owner send); the keys API's and the
media upload's are request bodies. Run to (re)make tests/fuzz/corpus/:

    .venv/bin/python -m tests.fuzz.seeds
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
            # 64 KiB clusters leave room for the feature name table, which errors quote.
            "qcow2-v3-feature-table.qcow2": ["-O", "qcow2"],
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


# --- the RFB stream ---------------------------------------------------------------------

def _encodings(*values: int) -> bytes:
    return b"\x02\x00" + struct.pack(">H", len(values)) + b"".join(struct.pack(">i", v) for v in values)


NOVNC_ENCODINGS = _encodings(1, 7, 5, 6, 16, 0, -239, -223, -224, -258, -261, -307, -308, -309, -312,
                             -313, -1063131698, -314, 0x574D5664, -258, 0x48323634)
VIEWER_OPENING = (b"RFB 003.008\n\x01\x00"
                  + b"\x00\x00\x00\x00" + bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
                  + NOVNC_ENCODINGS
                  + b"\x03\x00\x00\x00\x00\x00\x02\x80\x01\xe0"
                  # The extended clipboard's capabilities (a negative length).
                  + b"\x06\x00\x00\x00" + struct.pack(">i", -8) + b"\x01\x00\x00\x1f\x00\x00\x10\x00")
INPUT = (b"\x04\x01\x00\x00\x00\x00\x00\x61" + b"\x04\x00\x00\x00\x00\x00\x00\x61"
         + b"\x05\x01\x00\x10\x00\x20" + b"\xff\x00\x00\x01\x00\x00\x00\x61\x00\x00\x00\x1e")
RFB_SEEDS = {
    "viewer-whole": b"\x00\x00" + VIEWER_OPENING + b"\x03\x01\x00\x00\x00\x00\x02\x80\x01\xe0",
    "viewer-cut": b"\x00\x05" + VIEWER_OPENING,
    "viewer-33": b"\x00\x11" + b"RFB 003.003\n\x01" + b"\x03\x00\x00\x00\x00\x00\x02\x80\x01\xe0",
    "viewer-37-fence": (b"\x00\x03RFB 003.007\n\x01\x01" + b"\x96\x01\x00\x00\x00\x00\x02\x80\x01\xe0"
                        + b"\xf8\x00\x00\x00\x80\x00\x00\x02\x04abcd"),
    "control-input": b"\x01\x07" + VIEWER_OPENING + INPUT,
    "control-toggles": b"\x2a\x03" + VIEWER_OPENING + INPUT + INPUT,
    "refused-key": b"\x00\x00" + VIEWER_OPENING + INPUT,
    "refused-audio": b"\x01\x00" + VIEWER_OPENING + b"\xff\x01\x00\x02\x03\x02\x00\x00\xac\x44",
    "refused-encodings": b"\x00\x09" + VIEWER_OPENING + _encodings(*range(300)),
    "refused-security": b"\x00\x00RFB 003.008\n\x02" + bytes(16) + b"\x01",
    "refused-resize": b"\x00\x00" + VIEWER_OPENING + b"\xfb\x00\x02\x80\x01\xe0\x01\x00" + bytes(16),
}


# --- the keys API's bodies (the first line is the Content-Type) ----------------------------

KEYS_SEEDS = {
    "text": b'application/json\n{"text": "dir /w\\r\\n"}',
    "combo": b'application/json\n{"combo": "ctrl-alt-delete"}',
    "both": b'application/json\n{"text": "a", "combo": "escape"}',
    "unsupported": b'application/json\n{"text": "caf\\u00e9 \\u2615 \\ud800"}',
    "nested": b'application/json\n{"text": [[[[{"combo": {"text": null}}]]]]}',
    "numbers": b'application/json\n{"combo": 1e400, "x": -0.0}',
    "form": b"application/x-www-form-urlencoded\ntext=dir&combo=",
    "multipart": (b"multipart/form-data; boundary=B\n--B\r\nContent-Disposition: form-data; name=\"text\""
                  b"\r\n\r\ndir\r\n--B--\r\n"),
    "plain": b'text/plain; charset=utf-16\n\xff\xfe{\x00}\x00',
}


# --- the media upload's requests (the first line is the Content-Type) ----------------------

def _part(name: str, filename: bytes | None, body: bytes, extra: bytes = b"") -> bytes:
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return (b"--B\r\nContent-Disposition: " + disposition + b"\r\n" + extra
            + b"Content-Type: application/octet-stream\r\n\r\n" + body + b"\r\n")


MEDIA_SEEDS = {
    "one": b"multipart/form-data; boundary=B\n" + _part("files", b"readme.txt", b"hello\r\n") + b"--B--\r\n",
    "several": (b"multipart/form-data; boundary=B\n" + _part("files", b"Long File Name.document", b"1")
                + _part("files", b"long file name.doc", b"2") + _part("files", b"CON.txt", b"3")
                + _part("files", b"caf\xc3\xa9 \xe2\x98\x95.b\xc3\xa4t", b"4")
                + _part("files", b"C:\\dos\\game.exe", b"5") + _part("files", b"../../etc/passwd", b"6")
                + _part("files", b".profile", b"7") + _part("other", None, b"x") + b"--B--\r\n"),
    "encoded-name": (b"multipart/form-data; boundary=B\n"
                     + _part("files", b"x.bin", b"\x00" * 40, b"") .replace(
                         b'filename="x.bin"', b"filename*=UTF-8''%E2%82%AC%20rates.txt")
                     + b"--B--\r\n"),
    "no-name": b"multipart/form-data; boundary=B\n" + _part("files", b"", b"data") + b"--B--\r\n",
    "base64": (b"multipart/form-data; boundary=B\n"
               + _part("files", b"b.txt", b"aGVsbG8=", b"Content-Transfer-Encoding: base64\r\n")
               + b"--B--\r\n"),
    "many-dots": b"multipart/form-data; boundary=B\n" + _part("files", b". . .", b"x") + b"--B--\r\n",
}


def small_seeds_make(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


if __name__ == "__main__":
    seeds_make(CORPUS_ROOT / "importer")
    small_seeds_make(CORPUS_ROOT / "rfb", RFB_SEEDS)
    small_seeds_make(CORPUS_ROOT / "keys", KEYS_SEEDS)
    small_seeds_make(CORPUS_ROOT / "media", MEDIA_SEEDS)
    print(f"seeds in {CORPUS_ROOT}; canaries in {CANARY_DIRECTORY}")
