"""What a visitor's throwaway disk costs: overlay create and delete time, bytes written.

- Create: the session's run directory and its qcow2 overlay (`qemu-img create`)
  over the demo's warm layer, as a prepared start makes it; delete: the run
  directory with everything in it, as the broker removes it. Reference in the
  same run: `qemu-img info` on the same warm layer, the cost of starting
  qemu-img at all.
- Bytes written per session: a prepared demo visit that types a line in
  Notepad and saves it (F2), against a visit of the same length that touches
  nothing. Measured just before the session ends: the overlay's allocated
  size on the host's disk and QEMU's /proc/<pid>/io counters (write_bytes:
  what reached the block layer; wchar includes its socket output too).
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Table,
    median,
    ms,
    p95,
    portal_environment,
    ratio,
    runs,
    write_results,
)
from deploy import teardown

CREATES = runs(20, 5)
VISITS = runs(3, 1)
VISIT_TEXT = "Written by the benchmark: one line saved to this visit's disk."


async def timed(step: Any) -> float:
    began = time.perf_counter()
    await step()
    return time.perf_counter() - began


async def create_delete_times(warm: Path, qemu_img: str, run_root: Path) -> dict[str, list[float]]:
    from sessions.machines.overlay import OVERLAY_FILE, overlay_create, run_dir_create, run_dir_remove

    times: dict[str, list[float]] = {"create": [], "delete": [], "qemu-img info": []}
    for index in range(CREATES):
        name = f"bench-{index}"

        async def create(name: str = name) -> None:
            run_dir = run_dir_create(root=run_root, name=name)
            await overlay_create(base_path=warm, base_format="qcow2",
                                 overlay_path=run_dir / OVERLAY_FILE, qemu_img=qemu_img,
                                 timeout_s=30)

        async def delete(name: str = name) -> None:
            await asyncio.to_thread(run_dir_remove, run_root / name)

        async def info() -> None:
            process = await asyncio.create_subprocess_exec(
                qemu_img, "info", "-U", str(warm), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await process.wait()

        times["qemu-img info"].append(await timed(info))
        times["create"].append(await timed(create))
        times["delete"].append(await timed(delete))
    return times


def io_counters(pid: int) -> dict[str, int]:
    counters = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        name, _, value = line.partition(":")
        counters[name] = int(value)
    return counters


async def one_visit(broker: Any, *, typing: bool, hold_s: float) -> dict[str, Any]:
    from tests.integration.test_demo import KEYSYM_F2, NOTEPAD_TEXT, open_demo

    visit = await open_demo(broker)
    try:
        began = time.perf_counter()
        await visit.desktop()
        if typing:
            await visit.sees("Welcome! Type here", NOTEPAD_TEXT)
            await visit.rfb.type_text(VISIT_TEXT[:40])
            await visit.rfb.press(KEYSYM_F2)
            await visit.sees("Saved to disk.", (436, 470))
        remaining = hold_s - (time.perf_counter() - began)
        if remaining > 0:
            await asyncio.sleep(remaining)  # the untouched visit lasts as long as the typed one
        machine = broker.machine(visit.session["id"])
        overlay = machine.disk_path
        status = os.stat(overlay)
        counters = io_counters(machine.pid)
        return {"typing": typing, "seconds": time.perf_counter() - began,
                "overlay_allocated_bytes": status.st_blocks * 512, "overlay_size_bytes": status.st_size,
                "qemu_write_bytes": counters.get("write_bytes", 0),
                "qemu_wchar": counters.get("wchar", 0)}
    finally:
        await visit.close()


async def measure() -> dict[str, Any]:
    from django.conf import settings

    from portal.models import Exhibit
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare, get_broker

    exhibit = await Exhibit.objects.select_related("image").aget(slug="demo")
    start = await exhibit_prepare(exhibit, StartCondition(wait_graphics=True, still_s=1.0))
    run_root = Path(settings.PORTAL_RUN_DIR)
    times = await create_delete_times(Path(start.warm_path), settings.PORTAL_QEMU_IMG_BINARY,
                                      run_root.parent / "overlay-bench")
    broker = await get_broker()
    visits: list[dict[str, Any]] = []
    try:
        for _ in range(VISITS):
            typed = await one_visit(broker, typing=True, hold_s=0)
            visits.append(typed)
            visits.append(await one_visit(broker, typing=False, hold_s=typed["seconds"]))
    finally:
        with teardown.deferred():
            await broker.shutdown()
    return {"times_s": times, "visits": visits}


def report(results: dict[str, Any]) -> list[Table]:
    times = results["times_s"]
    reference = median(times["qemu-img info"])
    timing = Table(
        f"Overlay create and delete, {len(times['create'])} runs; reference: `qemu-img info` on the "
        "same warm layer",
        ["step", "median", "p95", "ratio"],
    )
    for step, values in times.items():
        timing.row(step, ms(median(values)), ms(p95(values)), ratio(median(values), reference))
    written = Table(
        "Bytes written per session (prepared demo, measured before the end); reference: an "
        "untouched visit of the same length",
        ["visit", "visits", "seconds", "overlay allocated KiB", "ratio", "QEMU write_bytes KiB",
         "ratio", "QEMU wchar KiB"],
    )
    groups = {kind: [v for v in results["visits"] if v["typing"] == (kind == "typed and saved")]
              for kind in ("untouched", "typed and saved")}
    base_alloc = median([v["overlay_allocated_bytes"] for v in groups["untouched"]])
    base_write = median([v["qemu_write_bytes"] for v in groups["untouched"]])
    for kind, visits in groups.items():
        allocated = median([v["overlay_allocated_bytes"] for v in visits])
        write = median([v["qemu_write_bytes"] for v in visits])
        written.row(kind, len(visits), f"{median([v['seconds'] for v in visits]):.1f}",
                    f"{allocated / 1024:.0f}", ratio(allocated, base_alloc), f"{write / 1024:.0f}",
                    ratio(write, base_write) if base_write else "-",
                    f"{median([v['qemu_wchar'] for v in visits]) / 1024:.0f}")
    timing.print()
    written.print()
    return [timing, written]


def main() -> None:
    with portal_environment(exhibits=True):
        results = asyncio.run(measure())
    tables = report(results)
    write_results("overlay_cost", results, tables=tables)


if __name__ == "__main__":
    main()
