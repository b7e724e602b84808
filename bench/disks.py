"""What changing a disk costs: the disk box's PUT /api/sessions/<id>/drives/<drive>.

On FreeDOS (freedos-games) with a disk set of floppies for B: and CDs for the CD
drive, through the API as the page calls it: each disk's first insertion (which
makes its throwaway layer: qemu-img create, then QMP's blockdev-add over
descriptors and the tray and medium commands), the same disk put in again (its
layer kept), and Eject. The reference is the creation of an overlay over the
same master in the same run (`overlay_create`, what every visit's start does).
Targets: a floppy change within 100 ms and a CD change within 200 ms at the
median, first insertions included.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, portal_environment, ratio, runs, verdict, write_results
from deploy import teardown

RUNS = runs(10, 3)
GUEST_TIMEOUT_S = 90.0
TARGETS_S = {"b": 0.100, "cd": 0.200}
# The portal refuses more than 10 changes a second from a visit; the pause between
# two changes is not timed.
PAUSE_S = 0.15


async def changes(broker: Any, disks: dict[str, list[int]]) -> dict[str, list[float]]:
    from tests.conftest import display_watch, visitor

    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos-games/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    times: dict[str, list[float]] = {}
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)

    async def put(drive: str, disk: int | None, what: str) -> None:
        await asyncio.sleep(PAUSE_S)
        began = time.perf_counter()
        response = await browser.put(f"{base}/drives/{drive}", {"disk": disk},
                                     content_type="application/json")
        times.setdefault(what, []).append(time.perf_counter() - began)
        assert response.status_code == 200, response.content

    try:
        for drive, ids in disks.items():
            for disk in ids:
                await put(drive, disk, f"{drive}_first")
            for disk in ids:
                await put(drive, disk, f"{drive}_again")
                await put(drive, None, f"{drive}_eject")
    finally:
        await rfb.close()
        await browser.delete(base)
    return times


async def overlay_reference(master: Path, directory: Path) -> list[float]:
    from sessions.machines.overlay import overlay_create

    times = []
    for number in range(RUNS):
        target = directory / f"reference-{number}.qcow2"
        began = time.perf_counter()
        await overlay_create(base_path=master, base_format="qcow2", overlay_path=target, qemu_img="qemu-img",
                             timeout_s=30)
        times.append(time.perf_counter() - began)
        target.unlink()
    return times


async def measure(root: Path) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from portal.images import disk_image_import
    from portal.models import Exhibit, ExhibitDisk
    from sessions.node.broker import get_broker
    from tests.support.disk_set import cd_make, floppy_make

    games = await Exhibit.objects.aget(slug="freedos-games")
    await Exhibit.objects.filter(pk=games.pk).aupdate(accelerator="tcg")
    floppy = await sync_to_async(disk_image_import)(
        floppy_make(root / "disk.img", label="BENCH", files={"ONE.TXT": b"one\r\n"}, serial="12345678"),
        name="disk.img", agent="bench")
    cd = await sync_to_async(disk_image_import)(cd_make(root / "disk.iso"), name="disk.iso", agent="bench")
    disks: dict[str, list[int]] = {"b": [], "cd": []}
    for number in range(RUNS):
        for drive, image in (("b", floppy), ("cd", cd)):
            made = await ExhibitDisk.objects.acreate(exhibit=games, image=image, position=len(disks[drive]),
                                                     label=f"{drive} {number}", drive=drive)
            disks[drive].append(made.pk)
    broker = await get_broker()
    try:
        times = await changes(broker, disks)
    finally:
        with teardown.deferred():
            await broker.shutdown()
    reference = await overlay_reference(Path(floppy.path), root)
    times["overlay"] = reference

    table = Table(f"Changing a disk on FreeDOS (TCG, {RUNS} disks a drive), PUT …/drives/<drive> through "
                  "the API; reference: an overlay's creation over the same master (qemu-img create)",
                  ["change", "median", "p95", "ratio to the reference", "target", "verdict"])
    for drive, name in (("b", "floppy in B:"), ("cd", "CD in the CD drive")):
        first = times[f"{drive}_first"]
        table.row(f"{name}, first insertion (its layer attached)", ms(median(first)), ms(p95(first)),
                  ratio(median(first), median(reference)), ms(TARGETS_S[drive]),
                  verdict(median(first) <= TARGETS_S[drive]))
        again = times[f"{drive}_again"]
        table.row(f"{name}, put in again", ms(median(again)), ms(p95(again)),
                  ratio(median(again), median(reference)), ms(TARGETS_S[drive]),
                  verdict(median(again) <= TARGETS_S[drive]))
        eject = times[f"{drive}_eject"]
        table.row(f"{name}, eject", ms(median(eject)), ms(p95(eject)),
                  ratio(median(eject), median(reference)), "-", "-")
    table.row("reference: overlay creation", ms(median(reference)), ms(p95(reference)), "1.00", "-", "-")
    table.print()
    return {"times": times, "tables": [table]}


def main() -> None:
    with portal_environment(exhibits=True) as root:
        results = asyncio.run(measure(root))
    tables = results.pop("tables")
    write_results("disks", results, tables=tables)


if __name__ == "__main__":
    main()
