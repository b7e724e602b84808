"""Stopping what a starter started: on SIGTERM, SIGINT or SIGHUP as at its normal end.

A starter is a process that starts services, servers or machines and owes their
stop: a benchmark (bench/), a test run's fixtures (tests/), `python -m
deploy.services`. Owns: those three signals' handlers in such a process,
installed once, and `Stops`, the stack of what one starter started, stopped in
reverse order, with its temporary directories removed.

The first stop signal raises `Stopping` in the main thread, where it is, so the
starter unwinds as on Ctrl-C: its `Stops` (and `finally` blocks) stop what it
started, the last started first. `Stopping` is a KeyboardInterrupt, so that
pytest (which then tears its fixtures down and ends the session) and asyncio
(which passes it out of a task instead of keeping it there) unwind for it too.
A stop, and a start together with the record of what it started, runs inside
`deferred()`: a signal arriving then is held until the section ends, so a stop
is never cut short and nothing is started unrecorded. Signals after the first
are ignored: the process is already stopping.

What a starter starts runs in a session of its own (a terminal's Ctrl-C reaches
the starter alone, which stops everything in order) and is stopped by its pid,
with the signal it stops on, and waited for. A server that starts processes of
its own ends them on SIGTERM (the portal's Daphne ends its machines), which is
why it is stopped, not killed: its grandchildren are out of a starter's reach.

Must not: know what was started (each starter registers its own stops), or
import Django.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopping(KeyboardInterrupt):
    """A stop signal arrived: unwind, stopping what was started on the way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal."""
        return 128 + self.signum


class _State:
    installed = False
    depth = 0  # deferred() sections the main thread is in
    received: int | None = None  # the first stop signal
    raised = False


_state = _State()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def handlers_install() -> None:
    """Handle the stop signals in this process from now on; once, from the main thread
    (where Python runs signal handlers, and where a starter's stops run)."""
    if _state.installed or not _main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    _state.installed = True


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.received is not None:
        return  # already stopping: a second Ctrl-C must not cut a stop short
    _state.received = signum
    if _state.depth == 0:
        _state.raised = True
        raise Stopping(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section no stop signal interrupts (a stop; a start and the record of what it
    started); one that arrived meanwhile raises `Stopping` once the outermost ends."""
    if not _main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        # Also when the section failed: the signal is not lost, and stopping wins.
        if _state.depth == 0 and _state.received is not None and not _state.raised:
            _state.raised = True
            raise Stopping(_state.received)


class Stops(contextlib.ExitStack):
    """What one starter started: each stop registered (`callback`, `enter_context`) as
    it starts, all run in reverse order at the end, also when a stop signal ends the
    starter early, with signals held until they have run. Entering installs the
    handlers."""

    def __enter__(self) -> Stops:
        handlers_install()
        super().__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool | None:
        with deferred():
            return super().__exit__(kind, error, traceback)

    def directory(self, prefix: str, *, parent: str = "/tmp") -> Path:
        """A new private directory (short, under /tmp: socket paths stay under the unix
        limit), removed with everything in it at the end."""
        with deferred():
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            self.callback(shutil.rmtree, path, ignore_errors=True)
        return path


def process_stop(process: subprocess.Popen[bytes], *, timeout_s: float,
                 signum: int = signal.SIGTERM) -> bool:
    """Stop a started process by its pid with the signal it stops on, and wait; safe
    to call twice. False when it had to be killed after timeout_s."""
    if process.poll() is not None:
        return True
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def command_stop(process: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    """Stop a command a starter runs in its own stead (a test run, a benchmark script):
    with the stop signal this process got, passed on (SIGTERM if none), and wait while
    it stops what it started in turn."""
    return process_stop(process, timeout_s=timeout_s, signum=_state.received or signal.SIGTERM)
