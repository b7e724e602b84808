"""A FreeDOS floppy as a portal hosts it: the repository's copy with `IDLEHALT=1`
first in its CONFIG.SYS, so that the kernel halts the CPU while DOS waits for a key.

Without it FreeDOS polls the keyboard at its prompt and a machine that shows `A:\\>`
keeps a host core busy (all of one under software emulation); with it the same
machine uses next to nothing until a key comes. Curators are advised the same
(docs/curators.md, "DOS guests that wait"). The copy lives in build/guests/, made once
(atomically: test processes make it side by side) and again when the source changes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}
IDLE_HALT = b"IDLEHALT=1\r\n"


def hosted_copy(source: Path, into: Path) -> Path:
    """`source` with IDLEHALT=1 in its CONFIG.SYS, under its own name in a directory of `into`."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    made = into / f"{digest}-idlehalt" / source.name
    if made.exists():
        return made
    made.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=made.parent) as scratch:
        image = Path(scratch) / source.name
        image.write_bytes(source.read_bytes())
        config = subprocess.run(["mtype", "-i", os.fspath(image), "::CONFIG.SYS"], env=MTOOLS,
                                check=True, capture_output=True).stdout
        if not config.upper().startswith(b"IDLEHALT"):
            written = Path(scratch) / "CONFIG.SYS"
            written.write_bytes(IDLE_HALT + config)
            subprocess.run(["mcopy", "-o", "-i", os.fspath(image), os.fspath(written), "::CONFIG.SYS"],
                           env=MTOOLS, check=True, capture_output=True)
        os.replace(image, made)
    return made
