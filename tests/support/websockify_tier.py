"""websockify as docs/operators.md runs it: a separate proxy process with the portal's token plugin.

Started and ended by pid, never by name; its log goes to a file, never to an
unread pipe.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from deploy import teardown

REPO = Path(__file__).resolve().parent.parent.parent


def websockify_argv(port: int) -> list[str]:
    """The command line in docs/operators.md, listening on 127.0.0.1:port."""
    return [
        sys.executable, "-m", "websockify",
        "--token-plugin", "sessions.websockify_tokens.SessionTokens",
        "--token-source", "portal.settings",
        f"127.0.0.1:{port}",
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def websockify_running(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """Run the proxy tier against the portal that env describes; yields (ws://host:port, pid).
    Stopped at the end, also on a stop signal (deploy/teardown.py)."""
    port = free_port()
    with teardown.Stops() as stops:
        with teardown.deferred(), log_path.open("wb") as log:
            process = subprocess.Popen(
                websockify_argv(port), cwd=REPO, env={**env, "PYTHONPATH": os.fspath(REPO)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stops.callback(_stop, process)
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"websockify exited with code {process.returncode}: "
                                   + log_path.read_text(errors="replace")[-2000:])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("websockify did not listen in time")
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}", process.pid


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Each connection has a handler process forked from this one: end those too.
    handlers = _children(process.pid)
    teardown.process_stop(process, timeout_s=10)
    for pid in handlers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []
