"""Running a tool (qemu-img) for a machine: one way, with a timeout.

Owns: `tool_run`: the tool started without a shell, its input closed, what it
prints read in full, killed and waited for when it passes its timeout or the
caller is cancelled, so no process outlives the call.

Must not: decide what a failure means to a visitor (its callers do).
"""
from __future__ import annotations

import asyncio
import contextlib
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


async def tool_run(*argv: str | Path, timeout_s: float) -> ToolResult:
    """Run the tool and return what it printed. FileNotFoundError when it is not
    installed; TimeoutError past `timeout_s` (it is killed first)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return ToolResult(process.returncode, stdout.decode("utf-8", "replace"),
                      stderr.decode("utf-8", "replace"))
