"""What each visit on this node printed: LPT1's jobs as PDFs, for the visit's owner.

Owns: taking each machine's print jobs once a visit has it (`machine_given`,
called by the keeper for every machine a visit gets, pooled, new or after a
reset), the visit's `Printout` (sessions.machines.printout: a directory named
for the visit in the run root, which outlives a reset and goes with the visit;
the reaper removes one left by a portal that died, as it names the visit),
the limits of the exhibit's printer and paper, the node-wide bound on
conversions at once, and the pages' events: `printed` with the print,
`print_failed` with a sentence.

Must not: start or end machines, or change a visit's phase.
"""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from sessions.errors import SessionError, gettext_noop
from sessions.machines.printer import Job
from sessions.machines.printout import Print, PrintError, PrintLimits, Printout
from sessions.node.keeper import Keeper, KeptMachine
from sessions.node.visit import LIVE_PHASES, Visit

PAPERS = ("a4", "letter")


class PrintNotFoundError(SessionError):
    """No such print of this visit."""

    code = "not_found"
    status = 404

    def __init__(self) -> None:
        super().__init__(gettext_noop("There is no such print."))


class Prints:
    """The prints of the keeper's visits."""

    def __init__(self, keeper: Keeper, *, limits: PrintLimits, conversions: int = 2) -> None:
        self._keeper = keeper
        self.limits = limits
        self._gate = asyncio.Semaphore(max(1, conversions))
        keeper.machine_hooks.append(self.machine_given)
        keeper.end_hooks.append(self.visit_ending)

    @staticmethod
    def url_base(session_id: str) -> str:
        return f"/api/sessions/{session_id}/prints/"

    def machine_given(self, visit: Visit, machine: KeptMachine) -> None:
        """The visit's machine prints for the visit from now on."""
        printer = getattr(machine, "printer", None)
        if printer is not None:
            printer.on_job = lambda job: self._take(visit, job)

    def _take(self, visit: Visit, job: Job) -> None:
        if not visit.live:
            return
        if visit.printout is None:
            visit.printout = self._printout_new(visit)
        visit.printout.take(job)

    def _printout_new(self, visit: Visit) -> Printout:
        exhibit = visit.exhibit
        paper = str(getattr(exhibit, "paper", "") or "") or self.limits.paper
        printer = str(getattr(exhibit, "printer", "") or "text")
        limits = dataclasses.replace(
            self.limits, paper=paper if paper in PAPERS else self.limits.paper,
            code_page=int(getattr(exhibit, "code_page", 437) or 437),
            fallback_kind="pcl" if printer == "pcl" else "text")
        session_id = visit.session_id
        base = self.url_base(session_id)

        def printed(made: Print) -> None:
            self._keeper.notify(session_id, {"type": "printed", "print": made.as_json(base)})

        def failed(error: PrintError) -> None:
            # The sentence and its values apart: the events socket says it in the page's language.
            self._keeper.notify(session_id, {"type": "print_failed", "detail": str(error),
                                             "message": error.message, "params": error.params})

        return Printout(directory=self._keeper.config.run_root / session_id, limits=limits,
                        on_printed=printed, on_failed=failed, gate=self._gate)

    async def visit_ending(self, visit: Visit) -> None:
        printout, visit.printout = visit.printout, None
        if printout is not None:
            await printout.close()

    def prints(self, *, session_id: str) -> list[dict[str, Any]]:
        visit = self._keeper.require(session_id, *LIVE_PHASES)
        if visit.printout is None:
            return []
        return [made.as_json(self.url_base(session_id)) for made in visit.printout.prints]

    def print_path(self, *, session_id: str, print_id: str, suffix: str) -> Path:
        visit = self._keeper.require(session_id, *LIVE_PHASES)
        path = visit.printout.path(print_id, suffix) if visit.printout is not None else None
        if path is None:
            raise PrintNotFoundError()
        return path

    def files(self, *, session_id: str) -> list[tuple[str, Path]]:
        """The visit's prints as (name in a zip, path), oldest first."""
        visit = self._keeper.visit(session_id)
        if visit is None or visit.printout is None:
            return []
        named: list[tuple[str, Path]] = []
        for number, made in enumerate(visit.printout.prints, start=1):
            stem = f"PRINTS/print-{number:02d}"
            named.append((f"{stem}.pdf", visit.printout.directory / f"{made.id}.pdf"))
            if made.raw:
                named.append((f"{stem}.{made.kind}", visit.printout.directory / f"{made.id}.raw"))
        return named
