"""The saved-visit file's format on its own: written, signed, read back within bounds,
and every kind of damage refused before anything of it is trusted."""
from __future__ import annotations

import hashlib
import hmac
import json
import lzma
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from sessions.machines.visitfile import (
    HEADER,
    MAGIC,
    MANIFEST,
    SIGNATURE_BYTES,
    DiskLayer,
    Manifest,
    ReadLimits,
    Signer,
    VisitFileError,
    visit_file_chunks,
    visit_file_read,
)

MANIFEST_OF = Manifest(exhibit="dos", title="FreeDOS", master_sha256="a" * 64, start_key="key",
                       warm_sha256="b" * 64, speed="host", memory_mb=16,
                       disks=(DiskLayer(drive="floppy0", file="disk.qcow2", backing="start"),),
                       created_at="2026-12-06T15:30:00+00:00")
# A machine with a disk box: Disk 7 written and out of its drive, the visitor's own
# floppy in B:, the CD drive empty.
BOX_MANIFEST = replace(MANIFEST_OF, disks=(
    *MANIFEST_OF.disks,
    DiskLayer(disk="7", file="disk-7.qcow2", backing="disk-7", master_sha256="c" * 64),
    DiskLayer(disk="visitor-1", file="visitor-disk-1.qcow2", backing=None)),
    drives=(("floppy0", "disk.qcow2"), ("floppy1", "visitor-disk-1.qcow2"), ("ide1-cd0", None)))
LIMITS = ReadLimits(state_max_bytes=1 << 20, expanded_max_bytes=4 << 20)


def key(secret: bytes) -> Callable[[], Signer]:
    return lambda: hmac.new(secret, digestmod=hashlib.sha256)


def written(tmp_path: Path, *, secret: bytes = b"current") -> bytes:
    state = tmp_path / "state.in"
    state.write_bytes(b"machine state " * 1000)
    layer = tmp_path / "layer.in"
    layer.write_bytes(b"\0" * 300_000 + b"disk data")
    return b"".join(visit_file_chunks(MANIFEST_OF, state=state, layers=[(MANIFEST_OF.disks[0], layer)],
                                      signer=key(secret)()))


def head(name: str, size: int) -> bytes:
    return struct.pack(">H", len(name)) + name.encode() + struct.pack(">Q", size)


def forged(members: bytes, secret: bytes = b"current") -> bytes:
    body = HEADER + lzma.compress(members)
    return body + hmac.new(secret, body, hashlib.sha256).digest()


def manifest_member(data: dict[str, object] | None = None) -> bytes:
    raw = json.dumps(data if data is not None else MANIFEST_OF.as_json()).encode()
    return head(MANIFEST, len(raw)) + raw


def read(tmp_path: Path, content: bytes, *, keys: tuple[bytes, ...] = (b"current",),
         limits: ReadLimits = LIMITS) -> Manifest:
    upload = tmp_path / "upload.visit"
    upload.write_bytes(content)
    into = tmp_path / "into"
    into.mkdir(exist_ok=True)
    return visit_file_read(upload, signers=[key(secret) for secret in keys], limits_for=lambda _: limits,
                           into=into)


def test_it_reads_back_what_it_wrote(tmp_path: Path) -> None:
    content = written(tmp_path)
    assert content.startswith(HEADER)
    assert len(content) < 10_000, "zeros and repeats compress"
    assert read(tmp_path, content) == MANIFEST_OF
    assert (tmp_path / "into" / "state").read_bytes() == b"machine state " * 1000
    assert (tmp_path / "into" / "disk.qcow2").read_bytes() == b"\0" * 300_000 + b"disk data"


def test_it_takes_a_file_signed_with_a_fallback_key_and_refuses_another_portals(tmp_path: Path) -> None:
    content = written(tmp_path, secret=b"old")
    assert read(tmp_path, content, keys=(b"current", b"old")) == MANIFEST_OF
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path / "..", content, keys=(b"current",))
    assert refused.value.reason == "signature"


def test_it_carries_the_disk_boxs_layers_and_what_is_in_each_drive() -> None:
    assert Manifest.from_json(json.loads(json.dumps(BOX_MANIFEST.as_json()))) == BOX_MANIFEST


@pytest.mark.parametrize("disk", [
    # A disk of the set over anything but its own master, or under another name.
    {"drive": None, "disk": "7", "file": "disk-7.qcow2", "backing": "start", "master_sha256": "c" * 64},
    {"drive": None, "disk": "7", "file": "disk-8.qcow2", "backing": "disk-7", "master_sha256": "c" * 64},
    {"drive": None, "disk": "7", "file": "disk-7.qcow2", "backing": "/images/aa.img",
     "master_sha256": "c" * 64},
    {"drive": None, "disk": "7", "file": "disk-7.qcow2", "backing": "disk-7", "master_sha256": None},
    # The visitor's floppy is whole in itself.
    {"drive": None, "disk": "visitor-1", "file": "visitor-disk-1.qcow2", "backing": "files",
     "master_sha256": None},
    {"drive": None, "disk": "visitor-0", "file": "visitor-disk-0.qcow2", "backing": None,
     "master_sha256": None},
    {"drive": None, "disk": "boot", "file": "disk.qcow2", "backing": "start", "master_sha256": None},
])
def test_it_refuses_a_disk_box_layer_out_of_shape(disk: dict[str, object]) -> None:
    with pytest.raises(VisitFileError) as refused:
        Manifest.from_json({**BOX_MANIFEST.as_json(), "disks": [disk]})
    assert refused.value.reason == "manifest"


def test_it_refuses_a_file_of_the_first_format_as_one_it_does_not_read(tmp_path: Path) -> None:
    # Signed by this portal, but from before saves carried the disk box.
    old = MAGIC + struct.pack(">H", 1)
    body = old + lzma.compress(manifest_member({**MANIFEST_OF.as_json(), "format": 1}))
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path, body + hmac.new(b"current", body, hashlib.sha256).digest())
    assert refused.value.reason == "version"
    assert str(refused.value) == "This file is a saved visit of a format this portal does not read."


def test_it_checks_the_signature_before_it_decompresses_anything(tmp_path: Path) -> None:
    garbage = HEADER + b"not xz at all" * 10 + b"\0" * SIGNATURE_BYTES
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path, garbage)
    assert refused.value.reason == "signature"
    assert list((tmp_path / "into").iterdir()) == []


@pytest.mark.parametrize(("members", "reason"), [
    # A member that claims more than the state may hold: refused on its claim.
    (manifest_member() + head("state", 1 << 40), "expanded"),
    # Claims within bounds, but more in the stream than the members say.
    (manifest_member() + head("state", 4) + b"1234" + head("layer.disk.qcow2", 4) + b"1234" + b"more",
     "trailing"),
    # The layers in another order or under other names than the manifest's.
    (manifest_member() + head("layer.disk.qcow2", 4) + b"1234", "members"),
    # A manifest naming a path outside the visit's directory.
    (manifest_member({**MANIFEST_OF.as_json(),
                      "disks": [{"drive": "floppy0", "file": "../escape", "backing": None}]}), "manifest"),
    (manifest_member({"exhibit": "dos"}), "manifest"),
])
def test_it_refuses_a_signed_file_whose_contents_are_off(tmp_path: Path, members: bytes, reason: str) -> None:
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path, forged(members))
    assert refused.value.reason == reason
    assert not (tmp_path / "escape").exists()


def test_it_stops_a_compression_bomb_at_its_bound(tmp_path: Path) -> None:
    # Every claim within the state's bound, the sum over the expanded bound: the
    # reader stops at the bound, having written no more than it.
    limits = ReadLimits(state_max_bytes=64 << 20, expanded_max_bytes=8 << 20)
    bomb = forged(manifest_member() + head("state", 32 << 20) + b"\0" * (32 << 20))
    assert len(bomb) < 64 * 1024
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path, bomb, limits=limits)
    assert refused.value.reason == "expanded"


def test_it_refuses_a_truncated_or_recompressed_file(tmp_path: Path) -> None:
    content = written(tmp_path)
    body = content[len(HEADER):-SIGNATURE_BYTES]
    for damaged in (content[:-1], content[:len(content) // 2],
                    HEADER + lzma.compress(lzma.decompress(body), preset=9) + content[-SIGNATURE_BYTES:]):
        with pytest.raises(VisitFileError):
            read(tmp_path, damaged)
    # Cut short and signed again (a portal's own broken write): the stream ends early.
    cut = HEADER + body[: len(body) // 2]
    with pytest.raises(VisitFileError) as refused:
        read(tmp_path, cut + hmac.new(b"current", cut, hashlib.sha256).digest())
    assert refused.value.reason in {"short", "compression", "members", "manifest"}
