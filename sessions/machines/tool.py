"""Running a tool (qemu-img, Ghostscript) for a machine: one way, with a timeout.

Owns: `tool_run`: the tool started without a shell, its input closed, what it
prints read in full (or its last `output_limit` bytes), optionally under limits
set between fork and exec and with an environment of the caller's, killed and
waited for when it passes its timeout or the caller is cancelled, so no process
outlives the call.

Must not: decide what a failure means to a visitor (its callers do).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def said(self) -> str:
        """What it said about a failure, or its exit code."""
        return self.stderr.strip() or f"exit code {self.returncode}"


async def tool_run(*argv: str | Path, timeout_s: float, preexec: Callable[[], None] | None = None,
                   env: Mapping[str, str] | None = None, output_limit: int | None = None) -> ToolResult:
    """Run the tool and return what it printed. FileNotFoundError when it is not
    installed; TimeoutError past `timeout_s` (it is killed first). `preexec` runs in
    the child before exec (its limits); with `output_limit` only the last that many
    bytes of each stream are kept, however much the tool prints."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=preexec, env=env,
        start_new_session=preexec is not None)
    try:
        async with asyncio.timeout(timeout_s):
            if output_limit is None:
                stdout, stderr = await process.communicate()
            else:
                assert process.stdout is not None
                assert process.stderr is not None
                stdout, stderr = await asyncio.gather(_tail(process.stdout, output_limit),
                                                      _tail(process.stderr, output_limit))
                await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return ToolResult(process.returncode, stdout.decode("utf-8", "replace"),
                      stderr.decode("utf-8", "replace"))


async def _tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > 2 * limit:
            del kept[:-limit]
    return bytes(kept[-limit:])
