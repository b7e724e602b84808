"""How long a checked import takes: a 1.44 MB floppy and a 100 MB hard disk, raw and VMDK.

Each import copies the file into the store, sniffs and checks its header,
probes it with `qemu-img info` and `check`, converts it to qcow2, compares the
two, hashes what the guest sees and stores the master. The disks are half data
(random, so nothing compresses) and half holes, like a used hard disk.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal.importer import ImportLimits, image_import  # noqa: E402

MIB = 1024 * 1024
RUNS = 3


def disk(path: Path, size: int) -> Path:
    rng = random.Random(1)
    with path.open("wb") as handle:
        for start in range(0, size, MIB):
            block = min(MIB, size - start)
            handle.write(rng.randbytes(block // 2) + bytes(block - block // 2))
    return path


def main() -> int:
    limits = ImportLimits(max_file_bytes=8 * 1024 * MIB, max_virtual_bytes=8 * 1024 * MIB)
    root = Path(tempfile.mkdtemp(prefix="pb-import-", dir="/tmp"))
    try:
        floppy = disk(root / "floppy.ima", 1440 * 1024)
        hard = disk(root / "hard.img", 100 * MIB)
        vmdk = root / "hard.vmdk"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(hard), str(vmdk)],
                       check=True, timeout=300)
        print(f"{'image':<28} {'median s':>9} {'min s':>7}")
        for label, source in (("1.44 MB floppy (raw)", floppy), ("100 MB hard disk (raw)", hard),
                              ("100 MB hard disk (VMDK)", vmdk)):
            times = []
            for run in range(RUNS):
                store = root / f"store-{label[:3]}-{run}"
                began = time.monotonic()
                image_import(source, name=source.name, store=store, limits=limits)
                times.append(time.monotonic() - began)
                shutil.rmtree(store)
            times.sort()
            print(f"{label:<28} {times[len(times) // 2]:>9.2f} {times[0]:>7.2f}")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
