"""What an idle machine costs the host: CPU and memory per demo machine.

Each demo machine is measured beside a reference guest started in the same
run: a boot sector that does nothing but `sti; hlt`, the cheapest idle a PC
guest can have. Both run on KVM and on TCG, first with nobody watching, then
with a viewer attached that keeps asking for screen updates as noVNC does, then
with the page's sound socket open as well (the machine is silent: QEMU sends it
nothing).
"""
from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

from bench.common import Table, portal_environment, runs, verdict, write_results
from deploy import teardown

WINDOW_S = float(runs(10, 3))
SETTLE_S = 2.0
BOOT_TIMEOUT_S = 60.0


def reference_image(directory: Path) -> Path:
    """A 1 MiB disk whose boot sector marks the screen, then halts with interrupts on."""
    sector = bytes([
        0xB8, 0x00, 0xB8,                          # mov ax, 0xB800
        0x8E, 0xC0,                                # mov es, ax
        0x26, 0xC7, 0x06, 0x00, 0x00, 0x21, 0x0F,  # mov word [es:0], 0x0F21 ('!' top left)
        0xFB,                                      # sti
        0xF4,                                      # hlt
        0xEB, 0xFD,                                # jmp back to hlt
    ])
    sector = sector.ljust(510, b"\0") + b"\x55\xaa"
    path = directory / "hlt-reference.img"
    path.write_bytes(sector.ljust(1024 * 1024, b"\0"))
    return path


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def window(pids: dict[str, int]) -> dict[str, float]:
    """Host CPU, % of one core, of each process over one window."""
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    await asyncio.sleep(WINDOW_S)  # the measurement window itself
    elapsed = time.perf_counter() - began
    return {name: (cpu_ticks(pid) - before[name]) / 100 / elapsed * 100
            for name, pid in pids.items()}


async def reference_halted(machine: Any, rfb: Any) -> None:
    """Wait until the reference guest has marked the screen: it is in its halt loop."""
    from tests.support.guest import wait_for_screen

    await wait_for_screen(machine, rfb, lambda screen: screen.startswith("!"),
                          timeout_s=BOOT_TIMEOUT_S, what="the reference guest's mark")


class Viewer:
    """An RFB client on the portal's WebSocket that keeps the screen current."""

    def __init__(self, browser: Any, session: dict[str, Any]) -> None:
        self.browser, self.session = browser, session

    async def open(self) -> Any:
        from tests.conftest import display_watch

        self.rfb = await display_watch(self.browser, self.session["vnc_path"],
                                       timeout_s=BOOT_TIMEOUT_S)
        return self.rfb

    async def close(self) -> None:
        await self.rfb.close()


async def measure(reference: Path) -> dict[str, Any]:
    from django.core.management import call_command

    from portal.models import Exhibit
    from sessions.machines.machine import kvm_usable
    from sessions.node.broker import get_broker
    from tests.conftest import visitor, ws_communicator

    await asyncio.to_thread(
        call_command, "add_exhibit", str(reference), slug="hlt-reference", title="HLT",
        boot="hdd", publish=True, stdout=io.StringIO(),
    )
    accelerators = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    broker = await get_broker()
    machines: dict[str, tuple[Any, dict[str, Any], Viewer]] = {}
    try:
        for accelerator in accelerators:
            preference = "auto" if accelerator == "kvm" else "tcg"
            for slug in ("demo", "hlt-reference"):
                await Exhibit.objects.filter(slug=slug).aupdate(accelerator=preference)
                browser = visitor()
                response = await browser.post(f"/api/exhibits/{slug}/sessions")
                session = response.json()
                viewer = Viewer(browser, session)
                rfb = await viewer.open()
                if slug == "demo":
                    await rfb.wait_for(lambda c: c.width == 640 and c.pixel(630, 300)[1] > 120,
                                       timeout_s=BOOT_TIMEOUT_S)
                else:
                    await reference_halted(broker.machine(session["id"]), rfb)
                machines[f"{slug}/{accelerator}"] = (browser, session, viewer)
        pids: dict[str, int] = {}
        for name, (_, session, _) in machines.items():
            machine = broker.machine(session["id"])
            assert machine is not None, f"{name} is not running"
            assert machine.pid is not None, f"{name} is not running"
            pids[name] = machine.pid

        for _, _, viewer in machines.values():
            await viewer.close()
        await asyncio.sleep(SETTLE_S)  # let the displays notice nobody watches
        unwatched = await window(pids)
        for _, _, viewer in machines.values():
            await viewer.open()
        watched = await window(pids)
        listeners = []
        for browser, session, _ in machines.values():
            listener = ws_communicator(browser, session["audio_path"])
            assert (await listener.connect(timeout=30))[0]
            assert (await listener.receive_output(timeout=30))["type"] == "websocket.send"
            listeners.append(listener)
        listened = await window(pids)
        for listener in listeners:
            await listener.disconnect()
        memory = {name: rss_mib(pid) for name, pid in pids.items()}
    finally:
        with teardown.deferred():
            for browser, session, viewer in machines.values():
                await viewer.close()
                await browser.delete(f"/api/sessions/{session['id']}")
            await broker.shutdown()

    table = Table(
        f"Idle host CPU and memory per machine ({WINDOW_S:g} s windows, all machines at once); "
        "reference: the sti;hlt guest on the same accelerator",
        ["guest", "accel", "CPU % unwatched", "ratio", "CPU % watched", "ratio",
         "CPU % watched + sound socket", "ratio", "RSS MiB", "ratio",
         "target: <1 % unwatched, and with sound"],
    )
    results = []
    for name in pids:
        slug, accelerator = name.split("/")
        base = f"hlt-reference/{accelerator}"

        def ratio(values: dict[str, float], name: str = name, base: str = base) -> str:
            return f"{values[name] / values[base]:.2f}" if values[base] else "-"

        table.row(slug, accelerator, f"{unwatched[name]:.2f}", ratio(unwatched),
                  f"{watched[name]:.2f}", ratio(watched), f"{listened[name]:.2f}", ratio(listened),
                  f"{memory[name]:.1f}", ratio(memory),
                  verdict(unwatched[name] < 1.0 and listened[name] < 1.0) if slug == "demo" else "")
        results.append({"guest": slug, "accelerator": accelerator,
                        "cpu_percent_unwatched": unwatched[name],
                        "cpu_percent_watched": watched[name],
                        "cpu_percent_watched_with_sound": listened[name], "rss_mib": memory[name]})
    table.print()
    return {"idle": results, "tables": [table]}


def main() -> None:
    with portal_environment(exhibits=True) as root:
        results = asyncio.run(measure(reference_image(root)))
    tables = results.pop("tables")
    write_results("idle_cpu", results, tables=tables)


if __name__ == "__main__":
    main()
