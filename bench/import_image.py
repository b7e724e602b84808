"""How long a checked import takes and how much disk it uses at most: a 1.44 MB
floppy and a 100 MB hard disk, raw and VMDK, and a small compressed qcow2 that
holds 512 MiB.

Each import copies the file into the store, sniffs and checks its header,
probes it with `qemu-img info` and `check`, converts it to compressed qcow2,
compares the two, hashes what the guest sees and stores the master. The disks
are half data (random, so nothing compresses) and half holes, like a used hard
disk; the compressed qcow2 is a repeating pattern. The store's allocated bytes
are polled while each import runs (peak store use).

Reference (same run): storing the same file without any check, a plain copy
and its SHA-256, which is the least any import must do.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Table, median, ratio, runs, write_results  # noqa: E402
from deploy import teardown  # noqa: E402
from portal.importer import ImportLimits, image_import  # noqa: E402

MIB = 1024 * 1024
RUNS = runs(5, 3)


def disk(path: Path, size: int) -> Path:
    rng = random.Random(1)
    with path.open("wb") as handle:
        for start in range(0, size, MIB):
            block = min(MIB, size - start)
            handle.write(rng.randbytes(block // 2) + bytes(block - block // 2))
    return path


def pattern_qcow2(path: Path, size: int) -> Path:
    """A compressed qcow2 of size bytes of a repeating pattern: a small file holding much data."""
    raw = path.with_suffix(".raw")
    block = (b"MUSEUM DOS DISK " * (MIB // 16))[:MIB]
    with raw.open("wb") as handle:
        for _ in range(size // MIB):
            handle.write(block)
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
                   check=True, timeout=300)
    raw.unlink()
    return path


def allocated(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # deleted between listing and looking
            total += path.stat().st_blocks * 512
    return total


def import_watched(source: Path, store: Path, limits: ImportLimits) -> tuple[float, int]:
    """Seconds an import took and the most the store held, polled every 5 ms meanwhile."""
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, allocated(store))

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.monotonic()
    try:
        image_import(source, name=source.name, store=store, limits=limits)
    finally:
        took = time.monotonic() - began
        done.set()
        watcher.join()
    return took, max(peak, allocated(store))


def plain_store(source: Path, store: Path) -> None:
    """The reference: copy the file into the store and hash it, checking nothing."""
    store.mkdir()
    digest = hashlib.sha256()
    with source.open("rb") as reader, (store / "copy").open("wb") as writer:
        while chunk := reader.read(MIB):
            digest.update(chunk)
            writer.write(chunk)


def main() -> int:
    limits = ImportLimits(max_file_bytes=8 * 1024 * MIB, max_virtual_bytes=8 * 1024 * MIB)
    with teardown.Stops() as stops:
        root = stops.directory("pb-import-")
        floppy = disk(root / "floppy.ima", 1440 * 1024)
        hard = disk(root / "hard.img", 100 * MIB)
        vmdk = root / "hard.vmdk"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(hard), str(vmdk)],
                       check=True, timeout=300)
        packed = pattern_qcow2(root / "packed.qcow2", 512 * MIB)
        table = Table(
            f"Checked import, {RUNS} runs; reference: a plain copy and SHA-256 of the same file",
            ["image", "file", "import median", "min", "peak store", "stored",
             "plain copy + hash median", "ratio"],
        )
        results = []
        for label, source in (("1.44 MB floppy (raw)", floppy), ("100 MB hard disk (raw)", hard),
                              ("100 MB hard disk (VMDK)", vmdk),
                              ("512 MiB pattern (compressed qcow2)", packed)):
            times, plain, peaks = [], [], []
            for run in range(RUNS):
                store = root / f"store-{label[:3]}-{run}"
                store.mkdir()
                took, peak = import_watched(source, store, limits)
                times.append(took)
                peaks.append(peak)
                stored = allocated(store)
                shutil.rmtree(store)
                began = time.monotonic()
                plain_store(source, store)
                plain.append(time.monotonic() - began)
                shutil.rmtree(store)
            table.row(label, f"{source.stat().st_size / MIB:.1f} MiB", f"{median(times):.2f} s",
                      f"{min(times):.2f} s", f"{max(peaks) / MIB:.1f} MiB", f"{stored / MIB:.1f} MiB",
                      f"{median(plain):.3f} s", ratio(median(times), median(plain)))
            results.append({"image": label, "import_s": times, "peak_store_bytes": peaks,
                            "stored_bytes": stored, "plain_copy_s": plain})
        table.print()
        write_results("import_image", {"imports": results}, tables=[table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
