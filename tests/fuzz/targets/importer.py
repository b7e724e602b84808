"""Fuzz target: the importer, from an image's bytes to a stored master or a refusal.

Each input is a whole image file. It is claimed to be the format its bytes say
(so the import gets past the format check and into the header checks and
qemu-img), imported with `portal.importer.image_import` into a store of its
own, with real qemu-img under tight limits. Findings: any exception but the
importer's own `ImageRejectedError`; a refusal without a reason or a sentence;
anything left in the store (an accepted master is checked, then removed); a
canary opened (`tests.fuzz.canary`).

The mutator changes headers, not data: most of an image is sectors nobody
parses, so it picks a header window of the format (or, sometimes, any bytes)
and rewrites a field with a value near a boundary, splices in a token that
names a canary or a VMDK descriptor word, or lets libFuzzer mutate the window.

Run: `.venv/bin/python -m tests.fuzz.targets.importer [libFuzzer options] [corpus dirs]`.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
from pathlib import Path

from tests.fuzz.canary import CANARY_DIRECTORY, CanaryWatch, canaries_watched
from tests.fuzz.harness import OracleError, fuzz_main

KIB = 1024
MIB = 1024 * KIB
# The importer's refusals (`ImageRejectedError.reason`).
REASONS = {"unknown_format", "vmdk_descriptor", "format_mismatch", "corrupt", "backing_file", "encrypted",
           "data_file", "vmdk_extent", "resource_limit", "too_large", "no_space", "empty",
           "conversion_mismatch"}
EXTENSIONS = {"raw": ".img", "iso": ".iso", "qcow2": ".qcow2", "vmdk": ".vmdk", "vdi": ".vdi",
              "vpc": ".vhd", "vhdx": ".vhdx"}
# Where each format keeps what its parsers read: (start, length); a negative start
# counts from the end (a VHD's footer).
HEADER_WINDOWS: dict[str, list[tuple[int, int]]] = {
    "qcow2": [(0, 104), (0, 512), (104, 1024)],
    "vmdk": [(0, 80), (0, 512), (512, 1024)],
    "vdi": [(0, 512), (512, 1024)],
    "vpc": [(-512, 512), (0, 512), (512, 1024)],
    "vhdx": [(0, 512), (64 * KIB, 4 * KIB), (128 * KIB, 4 * KIB), (192 * KIB, 4 * KIB),
             (256 * KIB, 4 * KIB), (2 * MIB, 4 * KIB)],
    "raw": [(0, 512)],
}
CANARY = os.fspath(CANARY_DIRECTORY / "canary")
TOKENS = [
    f"{CANARY}.raw".encode(), f"{CANARY}.qcow2".encode(), f"{CANARY}.vmdk".encode(), b"../../canary.raw",
    # VMDK descriptor words, each on a line of its own.
    b'\ncreateType="twoGbMaxExtentFlat"\n', b'\ncreateType="monolithicFlat"\n', b"\ncreateType\n",
    f'\nRW 128 FLAT "{CANARY}.raw" 0\n'.encode(), f'\nRW 128 SPARSE "{CANARY}.vmdk"\n'.encode(),
    f'\nparentFileNameHint="{CANARY}.vmdk"\n'.encode(), b"\nparentCID=fffffffe\n", b"\nddb.adapterType",
    b"\n\xff\xfe\x00=\n",
    b"# Disk DescriptorFile\n", b"KDMV", b"QFI\xfb", b"conectix", b"vhdxfile", b"\x7f\x10\xda\xbe",
]


def interesting(size: int, file_bytes: int) -> list[int]:
    top = (1 << (8 * size)) - 1
    values = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x200, 0x1000, 0x10000, top, top >> 1, (top >> 1) + 1, top - 1,
              file_bytes, file_bytes // 512, file_bytes + 512, (file_bytes // 512) + 1, file_bytes - 1]
    return [value & top for value in values]


def magic(data: bytes) -> str:
    """The format by its magic bytes, roughly: only to pick where to mutate (the import
    itself goes by `portal.importer.format_sniff`)."""
    if data.startswith(b"QFI\xfb"):
        return "qcow2"
    if data.startswith(b"KDMV"):
        return "vmdk"
    if data.startswith(b"vhdxfile"):
        return "vhdx"
    if data[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if data.startswith(b"conectix") or data[-512:].startswith(b"conectix"):
        return "vpc"
    return "raw"


def _window(data: bytes, generator: random.Random) -> tuple[int, int]:
    if generator.random() < 0.2 or not data:
        start = generator.randrange(max(1, len(data)))
        return start, min(len(data) - start, generator.choice([8, 64, 512]))
    start, length = generator.choice(HEADER_WINDOWS[magic(data)])
    if start < 0:
        start = max(0, len(data) + start)
    start = min(start, len(data))
    return start, min(length, len(data) - start)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    """Header-minded mutation (libFuzzer's custom mutator)."""
    import atheris

    generator = random.Random(seed)
    choice = generator.random()
    if choice < 0.1 or len(data) < 16:
        return bytes(atheris.Mutate(data, max_size))
    image = bytearray(data)
    start, length = _window(data, generator)
    if choice < 0.5 and length >= 8:
        size = generator.choice([2, 4, 8])
        offset = start + generator.randrange(0, max(1, length - size + 1)) // size * size
        value = generator.choice(interesting(size, len(image)))
        order = generator.choice("<>")
        image[offset:offset + size] = struct.pack(f"{order}{'HIQ'[[2, 4, 8].index(size)]}", value)
    elif choice < 0.7 and length > 0:
        token = generator.choice(TOKENS)
        offset = start + generator.randrange(length)
        image[offset:offset + len(token)] = token
    elif choice < 0.95 and length > 0:
        window = bytes(image[start:start + length])
        changed = bytes(atheris.Mutate(window, length))
        image[start:start + length] = changed[:length].ljust(length, b"\0")
    else:
        # Shorter or longer by whole sectors: offsets that point past the end.
        sectors = generator.choice([-8, -1, 1, 8])
        image = image[:max(512, len(image) + 512 * sectors)] if sectors < 0 else \
            image + bytes(512 * sectors)
    return bytes(image[:max_size])


def stale_remove() -> None:
    """The stores and inputs of harnesses that were ended (a hang, memory) without cleaning up."""
    for directory in CANARY_DIRECTORY.glob("[si][tn][op]*-*"):
        pid = directory.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for child in directory.rglob("*"):
                with contextlib.suppress(OSError):
                    child.chmod(0o700 if child.is_dir() else 0o600)
            shutil.rmtree(directory, ignore_errors=True)


class ImporterTarget:
    name = "importer"
    max_length = 4 * MIB
    # A case runs qemu-img up to six times under the limits below.
    timeout_s = 120
    rss_limit_mb = 2048

    def __init__(self) -> None:
        self._held = contextlib.ExitStack()
        self._watch: CanaryWatch | None = None
        self.store = CANARY_DIRECTORY / f"store-{os.getpid()}"
        self.inputs = CANARY_DIRECTORY / f"input-{os.getpid()}"

    def setup(self) -> None:
        from portal.importer import ImportLimits

        self._watch = self._held.enter_context(canaries_watched())
        stale_remove()
        for directory in (self.store, self.inputs):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(mode=0o700)
        self.limits = ImportLimits(max_file_bytes=8 * MIB, max_virtual_bytes=256 * MIB,
                                   free_margin_bytes=64 * MIB, probe_cpu_s=2,
                                   probe_address_space_bytes=1024 * MIB, probe_timeout_s=10,
                                   convert_cpu_s=20, convert_timeout_s=30)
        self._watch.opened()  # making the canaries opened them

    def teardown(self) -> None:
        self._held.close()
        for directory in (self.store, self.inputs):
            shutil.rmtree(directory, ignore_errors=True)

    def case(self, data: bytes) -> None:
        from portal.importer import ImageRejectedError, format_sniff, image_import

        assert self._watch is not None, "setup() first"
        written = self.inputs / "image"
        written.write_bytes(data)
        source = written.rename(self.inputs / f"image{EXTENSIONS.get(format_sniff(written), '.img')}")
        try:
            stored = image_import(source, name=source.name, store=self.store, limits=self.limits)
        except ImageRejectedError as refusal:
            if refusal.reason not in REASONS or not str(refusal).strip():
                raise OracleError(f"unclear refusal: {refusal.reason!r}: {refusal!r}") from refusal
        else:
            if stored.path.parent != self.store or not stored.path.is_file():
                raise OracleError(f"accepted master not in the store: {stored.path}")
            stored.path.chmod(0o600)
            stored.path.unlink()
        finally:
            source.unlink(missing_ok=True)
            left = sorted(path.name for path in self.store.iterdir())
            for name in left:
                path = self.store / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            opened = self._watch.opened()
        if opened:
            raise OracleError(f"host file opened: {', '.join(opened)}")
        if left:
            raise OracleError(f"left behind: {', '.join(left)}")


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["portal.importer"]):
        import portal.importer  # noqa: F401
    fuzz_main(ImporterTarget(), mutator=mutate)


if __name__ == "__main__":
    main()
