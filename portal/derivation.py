"""Derivative masters: a visit's disk made into a new master over the exhibit's own.

Owns: turning a private copy of a paused visit's overlay into an immutable,
content-addressed master with `qemu-img` alone. As a layer, its backing file
is its parent master, named by content address (`<sha256>.qcow2`, resolved in
the same store, so the file is the same bytes in any store); flattened, it is
a standalone master holding the whole disk. The parent is only read, never
copied or written.

    visit copy ──rebase (onto the parent, when it sat on a start state's warm layer)
               ──convert -c -B parent (only the copy's own clusters; or, flattened, all)
               ──guest SHA-256 (through QEMU, as the guest sees it)
               ──rebase -u -b <parent sha256>.qcow2 ──0444, renamed to <sha256>.qcow2

Must not: import Django, or write the parent (or any stored master).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .importer import (
    MEASURE_SLACK_BYTES,
    ImageError,
    ImportLimits,
    guest_sha256_read,
    qemu_img_convert,
    qemu_img_run,
    sha256_path,
    space_check,
)

COMPRESSED_QCOW2 = ["-c", "-O", "qcow2", "-o", "compat=1.1,compression_type=zstd"]


@dataclass(frozen=True)
class DerivedImage:
    path: Path
    sha256: str
    guest_sha256: str
    virtual_bytes: int
    stored_bytes: int


def master_derive(*, visit_copy: Path, parent: Path, store: Path, flatten: bool,
                  limits: ImportLimits) -> DerivedImage:
    """The new master made of `visit_copy` (a private copy of a paused visit's qcow2
    overlay, in a work directory of its own inside `store`, which is deleted here
    whatever happens). Raises ImageError with a sentence when qemu-img fails."""
    work = visit_copy.parent
    try:
        info = _info(visit_copy, limits=limits)
        virtual_bytes = int(info["virtual-size"])
        if info.get("full-backing-filename") != os.fspath(parent):
            # Over a start state's warm layer: what booting wrote goes into the copy,
            # so that the parent alone is under it.
            _run(["rebase", "-f", "qcow2", "-b", os.fspath(parent), "-F", "qcow2", os.fspath(visit_copy)],
                 limits=limits, doing="putting the visit's disk onto its master")
        output = work / "derived.qcow2"
        space_check(work, needed_bytes=virtual_bytes, limits=limits, doing="write the new master")
        backing = [] if flatten else ["-B", os.fspath(parent), "-F", "qcow2"]
        result = qemu_img_convert(["-f", "qcow2", *COMPRESSED_QCOW2, *backing, os.fspath(visit_copy),
                                   os.fspath(output)],
                                  output=output, max_written_bytes=virtual_bytes + 16 * MEASURE_SLACK_BYTES,
                                  limits=limits)
        if result.returncode != 0:
            raise ImageError(f"qemu-img could not write the new master: {result.stderr.strip()[-300:]}")
        guest = guest_sha256_read(output, virtual_bytes=virtual_bytes, work=work, limits=limits)
        if not flatten:
            # By content address, relative to the layer's own directory: the store's path
            # is not in the file, so its SHA-256 holds in any store (and in a bag).
            _run(["rebase", "-u", "-f", "qcow2", "-b", parent.name, "-F", "qcow2", os.fspath(output)],
                 limits=limits, doing="naming the master's parent")
        os.chmod(output, 0o444)
        sha256 = sha256_path(output)
        stored_bytes = output.stat().st_size
        final = store / f"{sha256}.qcow2"
        if not final.exists():
            os.replace(output, final)
        return DerivedImage(path=final, sha256=sha256, guest_sha256=guest, virtual_bytes=virtual_bytes,
                            stored_bytes=stored_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _info(path: Path, *, limits: ImportLimits) -> dict[str, Any]:
    result = _run(["info", "--output=json", "-f", "qcow2", os.fspath(path)], limits=limits,
                  doing="reading the visit's disk")
    try:
        info = json.loads(result)
    except ValueError as error:
        raise ImageError("qemu-img's description of the visit's disk is unreadable.") from error
    if not isinstance(info, dict):
        raise ImageError("qemu-img's description of the visit's disk is unreadable.")
    return info


def _run(argv: list[str], *, limits: ImportLimits, doing: str) -> str:
    result = qemu_img_run(argv, limits=limits, long=True)
    if result.returncode != 0:
        raise ImageError(f"qemu-img failed {doing}: {result.stderr.strip()[-300:]}")
    return result.stdout
