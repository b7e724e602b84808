"""What the visitor's sandbox costs: checkpoints beside Reset, and files.zip.

Checkpoints, on the prepared FreeDOS (freedos-games, TCG): save (POST …/checkpoints),
go back (POST …/restore, and until the display shows the checkpoint's screen again),
delete; the reference is Reset in the same run (POST …/reset until the first
framebuffer update on the new display socket, as the page reconnects).

files.zip (GET …/files.zip, through the API): on a machine whose disk is a 1.44 MB
floppy full of files, and one whose disk is a 100 MB FAT16 hard disk with 60 MB of
files; the first request (which also reads the disk the visit started from) and
later ones; the reference is `qemu-img convert` of the same disk to raw, the least
any reading of it costs. How long the guest is held: the disk-only snapshot, from
QEMU's own answer time.
"""
from __future__ import annotations

import asyncio
import io
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, portal_environment, ratio, runs, write_results
from deploy import teardown

RUNS = runs(10, 2)
GUEST_TIMEOUT_S = 90.0


def floppy_full(directory: Path) -> Path:
    """A 1.44 MB FAT12 floppy holding 1.3 MB in 40 files (no boot code: the PC just waits)."""
    image = directory / "full.img"
    subprocess.run(["mformat", "-i", str(image), "-C", "-f", "1440", "::"], check=True)
    source = directory / "file.bin"
    for number in range(40):
        source.write_bytes(secrets.token_bytes(32 * 1024))
        subprocess.run(["mcopy", "-i", str(image), str(source), f"::FILE{number:03d}.BIN"], check=True)
    source.unlink()
    return image


def disk_100mb(directory: Path) -> Path:
    """A 100 MB hard disk: one FAT16 partition holding 60 MB in 600 files of 100 KiB."""
    image = directory / "disk100.img"
    with image.open("wb") as handle:
        handle.truncate(100 * 1000 * 1000 // 512 * 512)
    sectors = 100 * 1000 * 1000 // 512 - 2048
    # One primary FAT16 partition (type 6) from sector 2048, in the master boot record.
    entry = bytes([0, 0xFE, 0xFF, 0xFF, 0x06, 0xFE, 0xFF, 0xFF]) + (2048).to_bytes(4, "little") \
        + sectors.to_bytes(4, "little")
    with image.open("r+b") as handle:
        handle.seek(0x1BE)
        handle.write(entry)
        handle.seek(510)
        handle.write(b"\x55\xaa")
    target = f"{image}@@{2048 * 512}"
    subprocess.run(["mformat", "-i", target, "-T", str(sectors), "-h", "16",
                    "-s", "63", "-H", "2048", "::"], check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    source = directory / "file.bin"
    subprocess.run(["mmd", "-i", target, "::DATA"], check=True)
    for number in range(600):
        source.write_bytes(secrets.token_bytes(100 * 1024))
        subprocess.run(["mcopy", "-i", target, str(source), f"::DATA/F{number:04d}.BIN"], check=True)
    source.unlink()
    return image


async def checkpoints_beside_reset(broker: Any) -> dict[str, list[float]]:
    from tests.conftest import display_watch, visitor
    from tests.support.guest import wait_for_text

    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos-games/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    times: dict[str, list[float]] = {"save": [], "restore": [], "restore_screen": [], "delete": [],
                                     "reset": []}
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        machine = broker.machine(session["id"])
        await wait_for_text(machine, rfb, "A:\\>", timeout_s=GUEST_TIMEOUT_S)
        for number in range(RUNS):
            await rfb.type_text(f"echo {number}\n")
            await wait_for_text(machine, rfb, f"A:\\>echo {number}\n{number}\n", timeout_s=30)
            await asyncio.sleep(0.3)
            saved_screen = bytes(rfb.framebuffer)
            began = time.perf_counter()
            response = await browser.post(f"{base}/checkpoints")
            times["save"].append(time.perf_counter() - began)
            assert response.status_code == 201, response.content
            checkpoint = response.json()["id"]
            await rfb.type_text("cls\n")
            await rfb.wait_for(lambda client, then=saved_screen: bytes(client.framebuffer) != then,
                               timeout_s=30)
            began = time.perf_counter()
            response = await browser.post(f"{base}/checkpoints/{checkpoint}/restore")
            times["restore"].append(time.perf_counter() - began)
            assert response.status_code == 200, response.content
            # The display stays connected: until it shows the checkpoint's screen (the text
            # cursor may blink, so most of the screen is what counts).
            await rfb.wait_for(
                lambda client, then=saved_screen: same_screen(bytes(client.framebuffer), then), timeout_s=30)
            times["restore_screen"].append(time.perf_counter() - began)
            began = time.perf_counter()
            response = await browser.delete(f"{base}/checkpoints/{checkpoint}")
            times["delete"].append(time.perf_counter() - began)
            assert response.status_code == 204
        for _ in range(RUNS):
            await rfb.close()
            began = time.perf_counter()
            response = await browser.post(f"{base}/reset")
            assert response.status_code == 200, response.content
            rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
            times["reset"].append(time.perf_counter() - began)
    finally:
        await rfb.close()
        await browser.delete(base)
    return times


def same_screen(now: bytes, then: bytes) -> bool:
    """All but a text cursor's worth of bytes alike."""
    if len(now) != len(then):
        return False
    step = 4 * 7
    differing = sum(1 for i in range(0, len(now), step) if now[i:i + 4] != then[i:i + 4])
    return differing <= 64


async def files_zip_times(broker: Any, slug: str) -> dict[str, Any]:
    from sessions.models import VisitorSession
    from tests.conftest import display_watch, visitor

    browser = visitor()
    session = (await browser.post(f"/api/exhibits/{slug}/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    result: dict[str, Any] = {"requests": [], "held": [], "convert": []}
    try:
        machine = broker.machine(session["id"])
        original = machine.disk_snapshot

        async def timed_snapshot(node: str, name: str) -> None:
            began = time.perf_counter()
            await original(node, name)
            result["held"].append(time.perf_counter() - began)

        setattr(machine, "disk_snapshot", timed_snapshot)  # noqa: B010 (timed in place)
        for _ in range(RUNS + 1):
            began = time.perf_counter()
            response = await browser.get(f"{base}/files.zip")
            body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
            result["requests"].append(time.perf_counter() - began)
            assert response.status_code == 200
            assert body.startswith(b"PK")
        row = await VisitorSession.objects.aget(id=session["id"])
        overlay = Path(row.run_dir) / "disk.qcow2"
        for _ in range(RUNS):
            target = Path(row.run_dir) / "reference.raw"
            began = time.perf_counter()
            await asyncio.to_thread(subprocess.run, ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                                                     str(overlay), str(target)], check=True)
            result["convert"].append(time.perf_counter() - began)
            target.unlink()
    finally:
        await rfb.close()
        await browser.delete(base)
    return result


async def measure(root: Path) -> dict[str, Any]:
    from django.core.management import call_command

    from portal.models import Exhibit
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare, get_broker

    games = await Exhibit.objects.select_related("image").aget(slug="freedos-games")
    await Exhibit.objects.filter(pk=games.pk).aupdate(accelerator="tcg")
    games = await Exhibit.objects.select_related("image").aget(pk=games.pk)
    await exhibit_prepare(games, StartCondition(wait_text="A:\\>", still_s=1.0))
    floppy = await asyncio.to_thread(floppy_full, root)
    disk = await asyncio.to_thread(disk_100mb, root)
    for slug, image, boot in (("floppy-full", floppy, "floppy"), ("disk-100mb", disk, "hdd")):
        await asyncio.to_thread(call_command, "add_exhibit", str(image), slug=slug, title=slug, boot=boot,
                                accelerator="tcg", publish=True, stdout=io.StringIO())
    broker = await get_broker()
    try:
        checkpoints = await checkpoints_beside_reset(broker)
        files = {slug: await files_zip_times(broker, slug) for slug in ("floppy-full", "disk-100mb")}
    finally:
        with teardown.deferred():
            await broker.shutdown()

    reset = median(checkpoints["reset"])
    table = Table(f"Checkpoints on the prepared FreeDOS (TCG, {RUNS} runs); reference: Reset "
                  "(POST to the first update on the new display)",
                  ["action", "median", "p95", "ratio to Reset"])
    for name, label in (("save", "save (POST …/checkpoints)"), ("restore", "go back (POST …/restore)"),
                        ("restore_screen", "go back, until the display shows that screen"),
                        ("delete", "delete"), ("reset", "Reset (reference)")):
        table.row(label, ms(median(checkpoints[name])), ms(p95(checkpoints[name])),
                  ratio(median(checkpoints[name]), reset))
    table.print()
    zips = Table(f"files.zip ({RUNS} runs after the first); reference: qemu-img convert of the same "
                 "disk to raw", ["disk", "first request", "later (median)", "p95", "guest held (median)",
                                 "reference", "ratio"])
    for slug, label in (("floppy-full", "1.44 MB floppy, 1.3 MB in 40 files"),
                        ("disk-100mb", "100 MB FAT16 disk, 60 MB in 600 files")):
        data = files[slug]
        later = data["requests"][1:]
        zips.row(label, ms(data["requests"][0]), ms(median(later)), ms(p95(later)), ms(median(data["held"])),
                 ms(median(data["convert"])), ratio(median(later), median(data["convert"])))
    zips.print()
    return {"checkpoints": checkpoints, "files_zip": files, "tables": [table, zips]}


def main() -> None:
    with portal_environment(exhibits=True) as root:
        results = asyncio.run(measure(root))
    tables = results.pop("tables")
    write_results("sandbox", results, tables=tables)


if __name__ == "__main__":
    main()
