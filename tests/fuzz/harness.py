"""What every fuzz target shares: the shape of a target, what counts as a finding,
and the glue that runs one target under atheris (libFuzzer) for a bounded time.

A target's `case(data)` feeds one input to the real parser and handles the
parser's own refusals itself; anything that escapes it is a finding: an
exception that is not a refusal, or an `OracleError` the target raises when an
oracle fails (a byte the allow-list does not name, a file left behind, a
canary opened). Hangs and memory past the bound are libFuzzer's to catch
(`-timeout`, `-rss_limit_mb`): it ends the process and leaves the input, which
the campaign (`tests.fuzz.campaign`) keeps as a finding.

Each finding's input goes to `tests/fuzz/crashes/<target>/` (once per
signature), where `tests/fuzz/test_regressions.py` replays it in the normal
suite. Must not: decide what a parser refuses (the target does), or run
without a deadline.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

FUZZ_ROOT = Path(__file__).resolve().parent
REPOSITORY = FUZZ_ROOT.parent.parent
CORPUS_ROOT = FUZZ_ROOT / "corpus"
CRASHES_ROOT = FUZZ_ROOT / "crashes"
# How often a running harness rewrites its statistics file.
STATS_INTERVAL_S = 0.5


class OracleError(Exception):
    """An oracle failed on an input: the message says which and how."""


class Target(Protocol):
    """One parser under fuzzing."""

    name: str
    # libFuzzer's bounds for one input: its length, its time, the process's memory.
    max_length: int
    timeout_s: int
    rss_limit_mb: int

    def setup(self) -> None: ...
    def case(self, data: bytes) -> None: ...
    def teardown(self) -> None: ...


def signature(error: BaseException) -> str:
    """What tells one finding from another: its kind and where in the project it arose."""
    if isinstance(error, OracleError):
        kind = re.sub(r"[^A-Za-z0-9]+", "-", str(error).split(":", 1)[0]).strip("-").lower()
        return f"finding-{kind[:60]}"
    place = "unknown"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = Path(frame.filename)
        if path.is_relative_to(REPOSITORY) and "tests" not in path.relative_to(REPOSITORY).parts[:1]:
            place = f"{path.stem}-{frame.lineno}"
            break
    else:
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            place = f"{Path(frames[-1].filename).stem}-{frames[-1].lineno}"
    return f"{type(error).__name__}-{place}"


@dataclass
class Recorder:
    """Counts cases and keeps each new finding's input, for one harness process."""

    target: str
    crash_dir: Path
    stats_path: Path | None
    seen: set[str] = field(default_factory=set)
    findings: list[dict[str, str]] = field(default_factory=list)
    cases: int = 0
    started: float = field(default_factory=time.monotonic)
    _written: float = 0.0

    def finding(self, error: BaseException, data: bytes) -> None:
        name = signature(error)
        if name in self.seen:
            return
        self.seen.add(name)
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        path = self.crash_dir / f"{name}-{hashlib.sha1(data).hexdigest()[:12]}"
        path.write_bytes(data)
        detail = "".join(traceback.format_exception_only(error)).strip()
        self.findings.append({"signature": name, "input": os.fspath(path), "detail": detail[:500]})
        print(f"FINDING {name}: {detail[:300]} (input kept in {path})", file=sys.stderr, flush=True)
        self.write(force=True)

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.stats_path is None or (not force and now - self._written < STATS_INTERVAL_S):
            return
        self._written = now
        partial = self.stats_path.with_suffix(".partial")
        partial.write_text(json.dumps({"target": self.target, "cases": self.cases,
                                       "seconds": now - self.started, "findings": self.findings}))
        partial.replace(self.stats_path)


def case_checked(target: Target, data: bytes) -> BaseException | None:
    """Run one input; the finding it makes, or None. Used by the regression tests too."""
    try:
        target.case(data)
    except Exception as error:
        return error
    return None


def functions_instrumented(owner: Any, names: list[str]) -> None:
    """Instrument some functions (or methods) of an imported module or class for
    coverage: a package instrumented whole (Django) would take minutes to start."""
    import atheris

    for name in names:
        setattr(owner, name, atheris.instrument_func(getattr(owner, name)))


def fuzz_main(target: Target, *, mutator: Callable[[bytes, int, int], bytes] | None = None) -> None:
    """Run `target` under atheris: the command line is libFuzzer's (corpus directories,
    -max_total_time, ...); FUZZ_SECONDS bounds the run, FUZZ_STATS names the statistics
    file the campaign reads, FUZZ_CRASH_DIR where findings' inputs go, FUZZ_EXECUTABLE
    what runs this target again (for -merge=1)."""
    import atheris

    seconds = float(os.environ.get("FUZZ_SECONDS", "600"))
    stats = os.environ.get("FUZZ_STATS")
    recorder = Recorder(target=target.name,
                        crash_dir=Path(os.environ.get("FUZZ_CRASH_DIR", CRASHES_ROOT / target.name)),
                        stats_path=Path(stats) if stats else None)
    deadline = time.monotonic() + seconds
    target.setup()

    def one_input(data: bytes) -> None:
        if time.monotonic() >= deadline:
            finish()
        recorder.cases += 1
        error = case_checked(target, data)
        if error is not None:
            recorder.finding(error, data)
        recorder.write()

    def finish() -> None:
        try:
            target.teardown()
        except Exception:
            traceback.print_exc()
            raise
        finally:
            recorder.write(force=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # libFuzzer's own exit would skip nothing we need, but it would keep
            # going until -max_total_time; the deadline is ours.
            os._exit(0)

    # libFuzzer starts its merge's workers by running argv[0]: an executable, not this module.
    arguments = [os.environ.get("FUZZ_EXECUTABLE", sys.argv[0]), f"-max_len={target.max_length}",
                 f"-timeout={target.timeout_s}", f"-rss_limit_mb={target.rss_limit_mb}",
                 f"-max_total_time={int(seconds) + 60}", *sys.argv[1:]]
    if mutator is not None:
        atheris.Setup(arguments, one_input, custom_mutator=mutator)
    else:
        atheris.Setup(arguments, one_input)
    atheris.Fuzz()
