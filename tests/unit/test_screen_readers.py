"""The node's text-screen readers without QEMU: a machine whose reads are counted,
a keeper reduced to its guard. One read per interval however many listen or ask,
none while nobody does, every listener told the same, graphics refused."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from portal.profile import MachineProfile
from sessions.display.greeting import GreetingError
from sessions.errors import GraphicsModeError, SessionEndedError
from sessions.machines.machine import Machine
from sessions.machines.screen import BDA_LENGTH, BDA_START, BiosVideo, bios_video
from sessions.node import screen as screen_module
from sessions.node.screen import ScreenReaders

INTERVAL_S = 0.05
WAIT_S = 5.0


class CountedMachine(Machine):
    """A Machine that never starts: its screen is what the test writes, and reads are counted."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(MachineProfile(), run_dir=run_dir, disk_path=run_dir / "disk", qemu_binary="qemu",
                         accelerator="tcg", start_timeout_s=1, qmp_timeout_s=1, stop_timeout_s=1)
        self.mode = 3
        self.text = "A:\\>"
        self.reads = 0

    async def screen_cells(self) -> tuple[BiosVideo, bytes]:
        self.reads += 1
        area = bytearray(BDA_LENGTH)
        area[0x449 - BDA_START] = self.mode
        area[0x44A - BDA_START] = 80
        area[0x450 - BDA_START] = len(self.text)
        area[0x484 - BDA_START] = 24
        characters = self.text.encode("cp437").ljust(80 * 25, b" ")
        return bios_video(bytes(area)), bytes(byte for c in characters for byte in (c, 7))


class Visit:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.exhibit = type("Exhibit", (), {"code_page": 437})()


class GuardOnly:
    """What the readers use of the keeper: its guard, and whether a visit lives."""

    def __init__(self) -> None:
        self.visits: dict[str, Visit] = {}

    def require(self, session_id: str, *phases: Any) -> Visit:
        if session_id not in self.visits:
            raise SessionEndedError()
        return self.visits[session_id]

    def visit(self, session_id: str) -> Visit | None:
        return self.visits.get(session_id)


@pytest.fixture
def readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ScreenReaders, CountedMachine]:
    async def no_display(vnc_path: Path, *, timeout_s: float) -> tuple[int, int]:
        raise GreetingError("no display in this test")
    monkeypatch.setattr(screen_module, "display_size", no_display)
    keeper = GuardOnly()
    machine = CountedMachine(tmp_path)
    keeper.visits["visit"] = Visit(machine)
    return ScreenReaders(keeper, interval_s=lambda: INTERVAL_S), machine  # type: ignore[arg-type]


async def test_many_asking_at_once_cost_one_read(readers: tuple[ScreenReaders, CountedMachine]) -> None:
    screens, machine = readers
    answers = await asyncio.gather(*(screens.text(session_id="visit") for _ in range(20)))
    assert machine.reads == 1
    assert {answer.lines[0] for answer in answers} == {"A:\\>"}
    assert answers[0].cursor == (4, 0)


async def test_listeners_share_one_reader_and_nothing_is_read_once_they_go(
        readers: tuple[ScreenReaders, CountedMachine]) -> None:
    screens, machine = readers
    told: list[list[dict[str, Any]]] = [[], [], []]
    arrived = asyncio.Event()

    def listener(number: int) -> Any:
        async def tell(message: dict[str, Any]) -> None:
            told[number].append(message)
            arrived.set()
        return tell

    async def until(condition: Any) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                arrived.clear()
                await arrived.wait()

    stops = [screens.listen(session_id="visit", listener=listener(number)) for number in range(3)]
    await until(lambda: all(told))
    first = told[0][0]
    assert first["mode"] == "text"
    assert first["lines"][0] == "A:\\>"
    assert first["cursor"] == [4, 0]
    # A guest that changes its screen at every read: one read an interval for all three.
    began, reads = asyncio.get_running_loop().time(), machine.reads
    for step in range(6):
        machine.text = f"A:\\>step {step}"
        await asyncio.sleep(INTERVAL_S)
    elapsed = asyncio.get_running_loop().time() - began
    assert machine.reads - reads <= elapsed / INTERVAL_S + 1
    assert told[0][-1]["lines"][0] == told[1][-1]["lines"][0] == told[2][-1]["lines"][0]
    assert told[0][-1]["changed"] == [0]
    # Graphics: the listeners are told, and the API refuses.
    machine.mode = 0x13
    await until(lambda: told[0][-1]["mode"] == "graphics")
    assert (told[0][-1]["width"], told[0][-1]["height"]) == (320, 200)
    with pytest.raises(GraphicsModeError) as refused:
        await screens.text(session_id="visit")
    assert refused.value.fields() == {"width": 320, "height": 200}
    for stop in stops:
        stop()
    await asyncio.sleep(INTERVAL_S)
    reads = machine.reads
    await asyncio.sleep(INTERVAL_S * 4)
    assert machine.reads == reads
