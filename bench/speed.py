"""What a busy guest costs the host at each speed: period speeds against `host`.

The busy guest is the speed guest (tests/guests/speed.asm), which never idles:
it runs the calibration loop and prints its rate. One machine at a time, on a
1 MiB hard disk holding it (so it boots under KVM too), measured over a window
once it runs: the QEMU process's CPU time as a share of one core, and the loop
rate the guest reports against its own timer, beside the named CPU's rate, and
how its timer keeps pace with the wall clock (its tick count over the window).
Reference: `host` speed in the same run (KVM where the host has it, and TCG).
"""
from __future__ import annotations

import asyncio
import io
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import QUICK, Table, portal_environment, ratio, runs, write_results
from deploy import teardown

WINDOW_S = float(runs(10, 4))
GUEST_TIMEOUT_S = 90.0


def busy_disk(directory: Path) -> Path:
    """The speed guest on a 1 MiB hard disk (its boot sector is the whole program)."""
    from tests.support.speed import speed_guest_build

    floppy = speed_guest_build(directory)
    disk = directory / "busy.img"
    disk.write_bytes(floppy.read_bytes()[:512].ljust(1024 * 1024, b"\0"))
    floppy.unlink()
    return disk


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def one_speed(broker: Any, speed: str, accelerator: str) -> dict[str, Any]:
    from portal.models import Exhibit
    from tests.conftest import display_watch, visitor
    from tests.support.guest import wait_for_screen
    from tests.support.speed import pace, results

    await Exhibit.objects.filter(slug="busy").aupdate(speed=speed, accelerator=accelerator)
    browser = visitor()
    session = (await browser.post("/api/exhibits/busy/sessions")).json()
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        machine = broker.machine(session["id"])
        # Running its loop: its first measurement is out.
        await wait_for_screen(machine, rfb, lambda text: len(results(text)) >= 1,
                              timeout_s=GUEST_TIMEOUT_S, what="the first measurement")
        before, began = cpu_seconds(machine.pid), time.perf_counter()
        keeps = await pace(machine, window_s=WINDOW_S)  # the measurement window
        share = (cpu_seconds(machine.pid) - before) / (time.perf_counter() - began)
        screen = await wait_for_screen(machine, rfb, lambda text: len(results(text)) >= 2,
                                       timeout_s=GUEST_TIMEOUT_S, what="a second measurement")
        rates = results(screen)[1:] or results(screen)
        accel = (await machine.execute("query-kvm"))["enabled"]
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")
    return {"speed": speed, "accelerator": "kvm" if accel else "tcg", "cpu_share": share, "pace": keeps,
            "loop_rate_own_timer": statistics.median(rate for _, rate in rates),
            "loop_rate_wall_clock": statistics.median(rate for rate, _ in rates)}


async def measure(root: Path) -> dict[str, Any]:
    from django.core.management import call_command

    from sessions.machines.machine import kvm_usable
    from sessions.node.broker import get_broker
    from tests.support.speed import TARGETS

    await asyncio.to_thread(call_command, "add_exhibit", str(busy_disk(root)), slug="busy", title="Busy",
                            boot="hdd", publish=True, stdout=io.StringIO())
    broker = await get_broker()
    rows: list[dict[str, Any]] = []
    try:
        hosts = [("host", "auto")] if kvm_usable() else []
        # A quick run tries one of the named speeds (the same path as the others).
        targets = list(TARGETS)[:1] if QUICK else list(TARGETS)
        for speed, accelerator in [*hosts, ("host", "tcg"), *((name, "auto") for name in targets)]:
            rows.append(await one_speed(broker, speed, accelerator))
    finally:
        with teardown.deferred():
            await broker.shutdown()
    reference = rows[0]
    table = Table(f"A busy guest's host CPU by speed ({WINDOW_S:g} s windows, one machine at a time); "
                  f"reference: host speed on {reference['accelerator'].upper()}",
                  ["speed", "accel", "CPU (share of a core)", "ratio", "loop rate (own timer)",
                   "named CPU's rate", "off by", "guest clock / wall clock", "loop rate (RTC, 5 s)"])
    for row in rows:
        target = TARGETS.get(row["speed"])
        table.row(row["speed"], row["accelerator"], f"{row['cpu_share'] * 100:.1f} %",
                  ratio(row["cpu_share"], reference["cpu_share"]), f"{row['loop_rate_own_timer']:,.0f}/s",
                  f"{target:,.0f}/s" if target else "-",
                  f"{(row['loop_rate_own_timer'] / target - 1) * 100:+.1f} %" if target else "-",
                  f"{row['pace']:.3f}", f"{row['loop_rate_wall_clock']:,.0f}/s")
    table.print()
    return {"speeds": rows, "tables": [table]}


def main() -> None:
    with portal_environment(exhibits=False) as root:
        results = asyncio.run(measure(root))
    tables = results.pop("tables")
    write_results("speed", results, tables=tables)


if __name__ == "__main__":
    main()
