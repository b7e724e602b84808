"""The fuzz campaign: every target for a bounded time, one after another, and a table.

    .venv/bin/python -m tests.fuzz.campaign [--seconds 600] [--keep-corpus] [target ...]

Each target runs as its own process (`tests.fuzz.targets.<name>`) over a working
corpus seeded from tests/fuzz/corpus/<name>/ and tests/fuzz/crashes/<name>/. A
finding the harness catches itself (an exception, a failed oracle) is kept in
tests/fuzz/crashes/<name>/ and the run goes on; a hang past the target's time
bound or memory past its bound ends the process, and libFuzzer's input is kept
there too (named `timeout-…` or `oom-…`), after which the target is started
again for the rest of its time. With --keep-corpus, the inputs that reached new
code are merged into tests/fuzz/corpus/<name>/ (not the importer's: images are
large and its coverage is mostly qemu-img's, which atheris does not see).

Exits 1 when anything was found, 2 when a harness could not run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.harness import CORPUS_ROOT, CRASHES_ROOT, REPOSITORY

TARGETS = ("rfb", "keys", "media", "importer")
# What libFuzzer leaves when it ends a process on an input.
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak", "slow-unit")
# Time a harness may take beyond its fuzzing time: starting, reading the corpus.
GRACE_S = 180
# Targets whose corpus is merged back with --keep-corpus.
MERGED = {"rfb", "keys", "media"}


@dataclass
class Result:
    target: str
    seconds: float = 0.0
    cases: int = 0
    findings: list[str] = field(default_factory=list)
    failed: str = ""


def artifacts_kept(artifacts: Path, target: str, *, ended: set[str]) -> list[str]:
    """libFuzzer's inputs that ended a process, moved to the target's crashes; their
    SHA-1s go into `ended`, so that a restart does not begin with them again."""
    kept = []
    crashes = CRASHES_ROOT / target
    for path in sorted(artifacts.iterdir()):
        kind = next((kind for kind in ARTIFACT_KINDS if path.name.startswith(kind)), None)
        if kind is None:
            continue
        crashes.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        ended.add(hashlib.sha1(data).hexdigest())
        destination = crashes / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}"
        destination.write_bytes(data)
        path.unlink()
        kept.append(f"{kind}: libFuzzer ended the harness (input kept in "
                    f"{destination.relative_to(REPOSITORY)})")
    return kept


def target_run(target: str, *, seconds: float, workspace: Path, keep_corpus: bool) -> Result:
    result = Result(target)
    corpus = workspace / "corpus"
    artifacts = workspace / "artifacts"
    for directory in (corpus, artifacts):
        directory.mkdir(parents=True)
    log = workspace / "log"
    deadline = time.monotonic() + seconds
    runs = 0
    ended: set[str] = set()
    while (left := deadline - time.monotonic()) > 5 or runs == 0:
        runs += 1
        seeds = seeds_laid(target, workspace=workspace, without=ended)
        stats = workspace / f"stats-{runs}.json"
        environment = {**os.environ, "FUZZ_SECONDS": f"{max(left, 1):.0f}", "FUZZ_STATS": os.fspath(stats),
                       "FUZZ_CRASH_DIR": os.fspath(CRASHES_ROOT / target), "TMPDIR": os.fspath(workspace),
                       "PYTHONPATH": os.fspath(REPOSITORY)}
        with log.open("ab") as output:
            process = subprocess.run(
                [sys.executable, "-m", f"tests.fuzz.targets.{target}", f"-artifact_prefix={artifacts}/",
                 os.fspath(corpus), *seeds],
                cwd=REPOSITORY, env=environment, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                timeout=left + GRACE_S, check=False)
        killed = artifacts_kept(artifacts, target, ended=ended)
        result.findings += killed
        if stats.exists():
            said = json.loads(stats.read_text())
            result.cases += said["cases"]
            result.seconds += said["seconds"]
            result.findings += [f"{finding['signature']}: {finding['detail']} (input kept in "
                                f"{Path(finding['input']).relative_to(REPOSITORY)})"
                                for finding in said["findings"]]
        if not stats.exists() or (process.returncode != 0 and not killed):
            tail = log.read_bytes()[-3000:].decode("utf-8", "replace")
            result.failed = f"the harness ended with {process.returncode}:\n{tail}"
            break
    if keep_corpus and target in MERGED and not result.failed:
        corpus_merge(target, corpus=corpus, workspace=workspace)
    return result


def seeds_laid(target: str, *, workspace: Path, without: set[str]) -> list[str]:
    """The seed directories: copies of the target's corpus and crashes less the inputs
    that ended a harness in this run (a hang would end every restart at once)."""
    for digest in without:  # libFuzzer names its corpus's inputs by their SHA-1
        (workspace / "corpus" / digest).unlink(missing_ok=True)
    laid = []
    for source in (CORPUS_ROOT / target, CRASHES_ROOT / target):
        copy = workspace / f"seeds-{source.parent.name}"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        for path in sorted(source.iterdir()) if source.is_dir() else []:
            data = path.read_bytes()
            if hashlib.sha1(data).hexdigest() not in without:
                (copy / path.name).write_bytes(data)
        if any(copy.iterdir()):
            laid.append(os.fspath(copy))
    return laid


def corpus_merge(target: str, *, corpus: Path, workspace: Path) -> None:
    """Add to the repository's corpus the working corpus's inputs that reach new code."""
    kept = CORPUS_ROOT / target
    # libFuzzer's merge runs its workers by the harness's argv[0]: an executable.
    executable = workspace / "harness"
    executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.fuzz.targets.{target} "$@"\n')
    executable.chmod(0o700)
    environment = {**os.environ, "FUZZ_SECONDS": "600", "TMPDIR": os.fspath(workspace),
                   "PYTHONPATH": os.fspath(REPOSITORY), "FUZZ_EXECUTABLE": os.fspath(executable)}
    with (workspace / "merge.log").open("ab") as output:
        subprocess.run([os.fspath(executable), "-merge=1", os.fspath(kept), os.fspath(corpus)],
                       cwd=REPOSITORY, env=environment, stdin=subprocess.DEVNULL, stdout=output,
                       stderr=output, timeout=600, check=False)


def table(results: list[Result]) -> str:
    lines = [f"{'target':<10} {'seconds':>8} {'cases':>10} {'cases/s':>9} {'findings':>9}"]
    for result in results:
        rate = result.cases / result.seconds if result.seconds else 0.0
        found = "failed" if result.failed else str(len(result.findings))
        lines.append(f"{result.target:<10} {result.seconds:>8.0f} {result.cases:>10} {rate:>9.1f} "
                     f"{found:>9}")
    return "\n".join(lines)


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("targets", nargs="*", help=f"Some of {', '.join(TARGETS)} (default: all).")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "600")),
                        help="How long each target runs (default: FUZZ_SECONDS, or 600).")
    parser.add_argument("--keep-corpus", action="store_true",
                        help="Merge what grew interesting into tests/fuzz/corpus/.")
    options = parser.parse_args(arguments)
    unknown = set(options.targets) - set(TARGETS)
    if unknown:
        parser.error(f"no such target: {', '.join(sorted(unknown))}")
    results = []
    with tempfile.TemporaryDirectory(prefix="portal-fuzz-campaign-") as root:
        for target in options.targets or TARGETS:
            print(f"fuzzing {target} for {options.seconds:.0f} s", flush=True)
            result = target_run(target, seconds=options.seconds, workspace=Path(root) / target,
                                keep_corpus=options.keep_corpus)
            results.append(result)
            shutil.rmtree(Path(root) / target, ignore_errors=True)
    print(table(results))
    for result in results:
        for finding in result.findings:
            print(f"FINDING {result.target}: {finding}")
        if result.failed:
            print(f"FAILED {result.target}: {result.failed}")
    if any(result.failed for result in results):
        return 2
    return 1 if any(result.findings for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
