"""The visit's phases and its one transition function."""
from __future__ import annotations

import asyncio

import pytest

from sessions.errors import SessionError
from sessions.node.visit import FIRST_PHASES, MOVES, Phase, Visit, VisitStateError


def visit(first: Phase = Phase.QUEUED) -> Visit:
    return Visit(session_id="v1", first=first)


def test_it_begins_in_line_or_starting_only() -> None:
    assert visit().phase is Phase.QUEUED
    assert visit(Phase.STARTING).phase is Phase.STARTING
    for phase in set(Phase) - FIRST_PHASES:
        with pytest.raises(VisitStateError, match=f"cannot begin {phase.value}"):
            visit(phase)


def test_it_walks_a_whole_life_through_allowed_moves() -> None:
    life = visit()
    for phase in (Phase.STARTING, Phase.RUNNING, Phase.RESETTING, Phase.RUNNING, Phase.RESTORING,
                  Phase.RUNNING, Phase.ENDING, Phase.ENDED):
        life.move(phase)
        assert life.phase is phase


@pytest.mark.parametrize("current", list(Phase))
def test_it_refuses_every_move_the_table_does_not_allow(current: Phase) -> None:
    for wanted in set(Phase) - MOVES[current]:
        life = visit()
        life._phase = current  # a visit placed in `current`, whatever path led there
        with pytest.raises(VisitStateError) as refused:
            life.move(wanted)
        assert life.phase is current
        assert isinstance(refused.value, SessionError)
        assert str(refused.value) == f"visit v1 cannot move from {current.value} to {wanted.value}"


def test_it_lets_every_live_phase_end_and_nothing_follow_the_end() -> None:
    assert all(Phase.ENDING in MOVES[phase] for phase in MOVES if phase not in {Phase.ENDING, Phase.ENDED})
    assert MOVES[Phase.ENDED] == frozenset()
    assert MOVES[Phase.ENDING] == frozenset({Phase.ENDED})


async def test_it_wakes_whoever_waits_for_a_phase() -> None:
    life = visit(Phase.STARTING)
    waiter = asyncio.ensure_future(life.until(Phase.RUNNING, Phase.ENDED))
    await asyncio.sleep(0)
    assert not waiter.done()
    life.move(Phase.RUNNING)
    async with asyncio.timeout(1):
        assert await waiter is Phase.RUNNING
    assert await life.until(Phase.RUNNING) is Phase.RUNNING  # already there: at once


def test_it_goes_back_to_a_checkpoint_only_from_running_and_may_end_meanwhile() -> None:
    assert {phase for phase, moves in MOVES.items() if Phase.RESTORING in moves} == {Phase.RUNNING}
    assert MOVES[Phase.RESTORING] == {Phase.RUNNING, Phase.ENDING}
