"""The keeper with fake machines: no QEMU, no database, no sleeping.

The fakes implement what the keeper uses of `sessions.machines.machine.Machine`; time
limits run on a clock the test sets, and the grace period is zero or long, so
each test awaits a condition instead of waiting for time to pass.
"""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from sessions.errors import (
    SessionBusyError,
    SessionEndedError,
    ViewerLimitError,
    WatcherLimitError,
    WatcherUnknownError,
)
from sessions.machines.host import Lease, machine_lease_names, machine_lease_take
from sessions.machines.machine import MachineStartError
from sessions.node.keeper import Keeper, KeeperConfig
from sessions.node.viewers import Viewers
from sessions.node.visit import Phase, Visit

WAIT_S = 5.0  # only a broken keeper ever waits this long


class FakeMachine:
    """A machine that starts, stops and dies when the test says so."""

    def __init__(self, name: str, run_dir: Path, log: list[str], *, fail: bool = False) -> None:
        self.name, self.run_dir, self.log, self.fail = name, run_dir, log, fail
        self.last_words = ""
        self.gate = asyncio.Event()  # start() returns once this is set
        self.gate.set()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._io_error: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.stop_gate = asyncio.Event()
        self.stop_gate.set()

    @property
    def pid(self) -> int:
        return 4000 + int(self.name[1:])

    @property
    def vnc_path(self) -> Path:
        return self.run_dir / f"{self.name}.sock"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "qemu.log"

    held = False

    async def start(self, *, hold: bool = False) -> None:
        self.log.append(f"start {self.name}")
        await self.gate.wait()
        if self.fail:
            raise MachineStartError("QEMU said no", argv=["qemu"], returncode=1, log_tail="")
        self.log.append(f"running {self.name}")

    async def stop(self) -> None:
        if "stop " + self.name not in self.log:
            self.log.append(f"stop {self.name}")
        await self.stop_gate.wait()
        self.exit(0)
        # A machine deletes its own run directory once it has stopped.
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def kill_now(self) -> None:
        self.log.append(f"kill {self.name}")
        self.exit(-9)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def paused_by_io_error(self) -> dict[str, Any]:
        return await asyncio.shield(self._io_error)

    def out_of_memory(self) -> bool:
        return False

    def exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    def disk_full(self) -> None:
        self._io_error.set_result({"action": "stop", "nospace": True})


class FakeFactory:
    """Hands out machines m1, m2, ... in order, each in a run directory of its own
    under `run_root`; no start state unless `warm`."""

    def __init__(self, run_root: Path) -> None:
        self.run_root = run_root
        self.log: list[str] = []
        self.machines: list[FakeMachine] = []
        self.warm = False
        self.failing: set[str] = set()
        self.gated: set[str] = set()
        self.made = asyncio.Event()  # set, and armed anew, at every machine

    async def __call__(self, visit: Visit, *, warm: bool) -> FakeMachine | None:
        if warm and not self.warm:
            return None
        name = f"m{len(self.machines) + 1}"
        run_dir = self.run_root / name
        run_dir.mkdir(parents=True)
        machine = FakeMachine(name, run_dir, self.log, fail=name in self.failing)
        if name in self.gated:
            machine.gate.clear()
        self.machines.append(machine)
        made, self.made = self.made, asyncio.Event()
        made.set()
        return machine


class FakeRecorder:
    """Keeps what the keeper reports, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended: dict[str, tuple[str, str]] = {}
        self.leases_held_when_recorded: list[bool] = []

    async def visit_starting(self, visit: Visit) -> None:
        self.steps.append(("starting", visit.session_id))

    async def visit_running(self, visit: Visit) -> None:
        self.steps.append(("running", visit.session_id))

    async def visit_replaced(self, visit: Visit) -> None:
        self.steps.append(("replaced", visit.session_id))

    async def visit_ended(self, visit: Visit, *, reason: str, detail: str) -> None:
        self.steps.append(("ended", visit.session_id))
        self.ended[visit.session_id] = (reason, detail)
        self.leases_held_when_recorded.append(visit.lease is not None and visit.lease.held)

    def visit_gone(self, visit: Visit) -> None:
        self.steps.append(("gone", visit.session_id))

    def notify(self, session_id: str, event: dict[str, Any]) -> None:
        self.events.append((session_id, event))


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A keeper with its fakes, and a few helpers the tests share."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.root = root
        self.factory = FakeFactory(root / "run")
        self.recorder = FakeRecorder()
        self.clock = Clock()
        settings: dict[str, Any] = {"run_root": root / "run", "grace_s": 60.0, "display_wait_s": WAIT_S,
                                    "session_max_s": 600.0, "idle_s": 120.0, "warning_s": 30.0,
                                    "displays_per_session": 4}
        settings.update(config)
        self.keeper = Keeper(KeeperConfig(**settings), machine_factory=self.factory,
                             recorder=self.recorder, clock=self.clock)
        self.viewers = Viewers(self.keeper)
        self.count = 0

    def lease(self, name: str) -> Lease:
        return machine_lease_take(name=name, directory=self.root / "leases")

    def open(self, *, queued: bool = False) -> Visit:
        self.count += 1
        name = f"v{self.count}"
        visit = self.keeper.visit_open(session_id=name, exhibit=None, queued=queued, lease=self.lease(name))
        self.keeper.visit_begin(visit)
        return visit

    async def running(self) -> Visit:
        visit = self.open()
        await until(visit, Phase.RUNNING)
        return visit


async def until(visit: Visit, *phases: Phase) -> None:
    async with asyncio.timeout(WAIT_S):
        await visit.until(*phases)


async def made(node: Node, count: int) -> FakeMachine:
    """The count-th machine, once the keeper has asked for it."""
    async with asyncio.timeout(WAIT_S):
        while len(node.factory.machines) < count:
            await node.factory.made.wait()
    return node.factory.machines[count - 1]


async def soon(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(tmp_path)
    yield made
    await soon(made.keeper.end_all(reason="server", detail="The test ended."))
    assert machine_lease_names(tmp_path / "leases") == []


# --- starting and the end ------------------------------------------------------


async def test_it_starts_a_visit_on_its_machine_and_records_it_running(node: Node) -> None:
    visit = await node.running()
    assert node.factory.log == ["start m1", "running m1"]
    assert node.recorder.steps == [("running", "v1")]
    assert visit.started == node.clock.now
    assert visit.expires == node.clock.now + 600
    assert node.keeper.machine("v1") is node.factory.machines[0]
    assert node.keeper.running_count == 1
    assert visit.run_dir == node.root / "run" / "m1"
    assert visit.run_dir.is_dir()


async def test_it_ends_a_visit_once_stopped_recorded_and_only_then_lets_its_lease_go(node: Node) -> None:
    visit = await node.running()
    await soon(node.keeper.end(session_id="v1", reason="visitor", detail="Bye."))
    assert visit.phase is Phase.ENDED
    assert not node.keeper.is_live("v1")
    assert node.factory.log[-1] == "stop m1"
    assert node.recorder.ended == {"v1": ("visitor", "Bye.")}
    assert node.recorder.steps[-2:] == [("ended", "v1"), ("gone", "v1")]
    assert node.recorder.leases_held_when_recorded == [True]
    assert visit.lease is not None
    assert not visit.lease.held
    assert visit.run_dir is not None
    assert not visit.run_dir.exists()
    assert ("v1", {"type": "changed"}) in node.recorder.events


async def test_it_ends_a_visit_whose_machine_exits_by_itself_as_crashed(node: Node) -> None:
    visit = await node.running()
    node.factory.machines[0].exit(1)
    await until(visit, Phase.ENDED)
    assert node.recorder.ended["v1"] == ("crashed", "The machine stopped unexpectedly.")


async def test_it_ends_a_visit_whose_disk_fills_up_with_reason_server(node: Node) -> None:
    visit = await node.running()
    node.factory.machines[0].disk_full()
    await until(visit, Phase.ENDED)
    assert node.recorder.ended["v1"][0] == "server"
    assert "out of disk space" in node.recorder.ended["v1"][1]


async def test_it_boots_cold_when_resuming_fails_and_ends_as_crashed_when_that_fails_too(
    node: Node,
) -> None:
    node.factory.warm = True
    node.factory.failing = {"m1"}
    await node.running()
    assert node.factory.log == ["start m1", "start m2", "running m2"]
    node.factory.failing = {"m3", "m4"}
    failed = node.open()
    await until(failed, Phase.ENDED)
    assert node.recorder.ended["v2"] == (
        "crashed", "The machine could not start. The error has been logged; please try again later.")


async def test_it_stops_a_machine_whose_visit_ends_while_it_starts(node: Node) -> None:
    node.factory.gated = {"m1"}
    visit = node.open()
    await made(node, 1)
    ending = asyncio.ensure_future(node.keeper.end(session_id="v1", reason="visitor"))
    await until(visit, Phase.ENDED)
    await ending
    assert node.factory.log == ["start m1", "stop m1"]
    assert ("running", "v1") not in node.recorder.steps


# --- the waiting line and the grace period --------------------------------------


async def test_it_keeps_a_place_in_line_only_while_someone_watches(tmp_path: Path) -> None:
    node = Node(tmp_path, grace_s=0.0)
    waiting = node.open(queued=True)
    assert node.viewers.watch_attach(session_id="v1")  # the page opened its events socket
    assert waiting.grace_task is None
    await soon(asyncio.sleep(0))
    assert waiting.phase is Phase.QUEUED
    assert node.factory.log == []
    node.viewers.watch_detach(session_id="v1")  # and closed it
    await until(waiting, Phase.ENDED)
    assert node.recorder.ended["v1"] == ("visitor", "The page was closed for more than 0 s.")
    assert node.factory.log == []  # it never had a machine


async def test_it_starts_a_promoted_visit_and_records_that_it_left_the_line(node: Node) -> None:
    waiting = node.open(queued=True)
    with pytest.raises(SessionBusyError, match="still waiting"):
        await node.viewers.display_attach(session_id="v1")
    assert node.keeper.promote("v1")
    await until(waiting, Phase.RUNNING)
    assert node.recorder.steps == [("starting", "v1"), ("running", "v1")]
    assert waiting.grace_task is not None  # nobody watches its machine yet
    assert not node.keeper.promote("v1")  # no longer waiting


async def test_it_ends_a_running_visit_after_the_grace_period_without_a_viewer(tmp_path: Path) -> None:
    node = Node(tmp_path, grace_s=0.0)
    visit = await node.running()
    await until(visit, Phase.ENDED)
    assert node.recorder.ended["v1"][0] == "visitor"
    assert node.factory.log[-1] == "stop m1"


async def test_a_viewer_coming_back_within_the_grace_period_cancels_it(node: Node) -> None:
    visit = await node.running()
    path = await soon(node.viewers.display_attach(session_id="v1"))
    assert path == node.factory.machines[0].vnc_path
    assert visit.grace_task is None
    node.viewers.display_detach(session_id="v1")
    grace = visit.grace_task
    assert grace is not None
    assert node.viewers.watch_attach(session_id="v1")
    with pytest.raises(asyncio.CancelledError):
        await soon(grace)
    assert visit.grace_task is None
    assert visit.phase is Phase.RUNNING


# --- limits and time -------------------------------------------------------------


async def test_it_limits_the_displays_of_one_visit(tmp_path: Path) -> None:
    node = Node(tmp_path, displays_per_session=2)
    await node.running()
    for _ in range(2):
        await soon(node.viewers.display_attach(session_id="v1"))
    with pytest.raises(ViewerLimitError, match="2 places"):
        await node.viewers.display_attach(session_id="v1")
    node.viewers.display_detach(session_id="v1")
    await soon(node.viewers.display_attach(session_id="v1"))
    assert node.keeper.visit("v1").displays == 2  # type: ignore[union-attr]
    await soon(node.keeper.end_all(reason="server", detail=""))


async def test_it_counts_sound_sockets_apart_from_displays_and_as_watching(tmp_path: Path) -> None:
    node = Node(tmp_path, displays_per_session=1)
    visit = await node.running()
    path = await soon(node.viewers.sound_attach(session_id="v1"))
    assert path == node.factory.machines[0].vnc_path
    with pytest.raises(ViewerLimitError):
        await node.viewers.sound_attach(session_id="v1")
    await soon(node.viewers.display_attach(session_id="v1"))
    assert (visit.listeners, visit.displays, visit.viewers) == (1, 1, 2)
    node.viewers.display_detach(session_id="v1")
    assert visit.grace_task is None  # the listener still counts as someone there
    node.viewers.sound_detach(session_id="v1")
    assert visit.listeners == 0
    assert visit.grace_task is not None
    await soon(node.keeper.end_all(reason="server", detail=""))


async def test_it_warns_before_the_idle_limit_clears_on_input_and_ends_at_the_time_limit(
    node: Node,
) -> None:
    visit = await node.running()
    node.clock.now += 95  # idle limit 120 s, warned 30 s ahead
    node.keeper.clock_tick()
    assert node.recorder.events[-1] == ("v1", {"type": "warning", "reason": "idle", "seconds_left": 25})
    node.keeper.session_input(session_id="v1")
    assert node.recorder.events[-1] == ("v1", {"type": "warning_cleared", "reason": "idle"})
    for _ in range(5):  # active all along, up to the 600 s time limit
        node.clock.now += 100
        node.keeper.session_input(session_id="v1")
        node.keeper.clock_tick()
    assert node.recorder.events[-1] == ("v1", {"type": "warning", "reason": "timeout", "seconds_left": 5})
    node.clock.now += 5
    node.keeper.clock_tick()
    await until(visit, Phase.ENDED)
    assert node.recorder.ended["v1"] == ("timeout", "The visit reached its time limit of 10 minutes.")


# --- reset -------------------------------------------------------------------------


async def test_reset_kills_the_old_machine_before_the_new_one_starts(node: Node) -> None:
    visit = await node.running()
    node.clock.now += 50
    await soon(node.keeper.reset(session_id="v1"))
    log = node.factory.log
    assert log[:3] == ["start m1", "running m1", "kill m1"]  # killed before m2 even starts
    assert sorted(log[3:]) == ["running m2", "start m2", "stop m1"]  # m1 is reaped meanwhile
    assert visit.generation == 1
    assert node.keeper.generation("v1") == 1
    assert node.keeper.machine("v1") is node.factory.machines[1]
    assert visit.phase is Phase.RUNNING
    assert visit.last_input == node.clock.now
    assert visit.expires == 500.0 + 600  # a reset does not renew the time limit
    assert node.recorder.steps[-1] == ("replaced", "v1")


async def test_a_display_attached_during_a_reset_gets_the_new_machine(node: Node) -> None:
    visit = await node.running()
    node.factory.gated = {"m2"}
    resetting = asyncio.ensure_future(node.keeper.reset(session_id="v1"))
    await until(visit, Phase.RESETTING)
    assert node.keeper.machine("v1") is None
    with pytest.raises(SessionBusyError):
        await node.keeper.reset(session_id="v1")  # one reset at a time
    display = asyncio.ensure_future(node.viewers.display_attach(session_id="v1"))
    await made(node, 2)
    assert not display.done()
    (await made(node, 2)).gate.set()
    assert await soon(display) == node.factory.machines[1].vnc_path
    await soon(resetting)
    assert node.keeper.generation("v1") == 1


async def test_it_refuses_to_reset_a_visit_that_is_ending_or_still_starting(node: Node) -> None:
    node.factory.gated = {"m1"}
    starting = node.open()
    first = await made(node, 1)
    with pytest.raises(SessionBusyError, match="still starting"):
        await node.keeper.reset(session_id="v1")
    first.gate.set()
    await until(starting, Phase.RUNNING)
    node.factory.machines[0].stop_gate.clear()
    ending = asyncio.ensure_future(node.keeper.end(session_id="v1", reason="visitor"))
    await until(starting, Phase.ENDING)
    with pytest.raises(SessionEndedError):
        await node.keeper.reset(session_id="v1")
    node.factory.machines[0].stop_gate.set()
    await soon(ending)
    with pytest.raises(SessionEndedError):
        await node.keeper.reset(session_id="v1")


async def test_a_reset_whose_new_machine_fails_ends_the_visit(node: Node) -> None:
    visit = await node.running()
    node.factory.failing = {"m2"}
    with pytest.raises(SessionEndedError, match="could not start"):
        await soon(node.keeper.reset(session_id="v1"))
    await until(visit, Phase.ENDED)
    assert node.recorder.ended["v1"][0] == "crashed"


# --- watch links' watchers -----------------------------------------------------


async def test_a_watcher_is_let_in_but_never_holds_off_the_grace_period(node: Node) -> None:
    visit = await node.running()
    closed: list[str] = []
    path = await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="w1",
                                                 revoke=lambda: closed.append("w1")))
    assert path == node.factory.machines[0].vnc_path
    assert visit.viewers == 0
    assert visit.grace_task is not None
    assert node.viewers.watcher_count("v1") == 1
    assert node.recorder.events[-1] == ("v1", {"type": "watchers", "count": 1, "watchers": ["w1"],
                                               "control": None})


async def test_watchers_are_capped_and_revoke_closes_every_one(tmp_path: Path) -> None:
    node = Node(tmp_path, watchers_per_session=2)
    try:
        await node.running()
        closed: list[str] = []
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="first",
                                              revoke=lambda: closed.append("first")))
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="second",
                                              revoke=lambda: closed.append("second")))
        with pytest.raises(WatcherLimitError, match="2 people"):
            await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="third", revoke=lambda: None))
        node.viewers.watcher_detach(session_id="v1", watcher_id="first")
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="first",
                                              revoke=lambda: closed.append("first")))
        assert node.viewers.watchers_revoke(session_id="v1") == 2
        assert sorted(closed) == ["first", "second"]
        assert node.viewers.watcher_count("v1") == 0
        assert node.recorder.events[-1] == ("v1", {"type": "watchers", "count": 0, "watchers": [],
                                                   "control": None})
    finally:
        await soon(node.keeper.end_all(reason="server", detail="The test ended."))


async def test_one_watcher_at_a_time_gets_the_keyboard_and_mouse_until_taken_back(node: Node) -> None:
    await node.running()
    for name in ("one", "two"):
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id=name, revoke=lambda: None))
    with pytest.raises(WatcherUnknownError):
        node.viewers.control_give(session_id="v1", watcher_id="three")
    with pytest.raises(WatcherUnknownError):  # a name is one socket's
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="one", revoke=lambda: None))
    node.viewers.control_give(session_id="v1", watcher_id="one")
    assert node.viewers.in_control("v1", "one")
    assert not node.viewers.in_control("v1", "two")
    node.viewers.control_give(session_id="v1", watcher_id="two")
    assert node.viewers.watchers("v1") == (["one", "two"], "two")
    node.viewers.control_take(session_id="v1")
    assert node.viewers.watchers("v1") == (["one", "two"], None)
    # A watcher who leaves takes nothing with them.
    node.viewers.control_give(session_id="v1", watcher_id="one")
    node.viewers.watcher_detach(session_id="v1", watcher_id="one")
    assert node.viewers.watchers("v1") == (["two"], None)


async def test_a_watcher_of_an_ended_or_waiting_visit_is_refused(node: Node) -> None:
    with pytest.raises(SessionEndedError):
        await soon(node.viewers.watcher_attach(session_id="nobody", watcher_id="w", revoke=lambda: None))
    node.open(queued=True)
    with pytest.raises(SessionBusyError):
        await soon(node.viewers.watcher_attach(session_id="v1", watcher_id="w", revoke=lambda: None))
