"""What every benchmark shares: a throwaway portal (in this process or served by
Daphne), machine facts, tables with ratios and target verdicts, and one results writer.

Must not: measure anything itself; a benchmark script owns its measurements.
`BENCH_QUICK=1` asks every script for fewer runs and shorter windows (for
trying the scripts out; figures from a quick run are not the ones to quote).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from deploy import teardown
from tests.support.processes import processes_naming, visit_machine

REPO = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK", "") not in {"", "0"}
# Quick runs keep to a place of their own (git-ignored, with a summary of its own):
# the kept results and bench/results/SUMMARY.md are full runs' alone.
RESULTS = REPO / "bench" / "results" / "quick" if QUICK else REPO / "bench" / "results"


def runs(full: int, quick: int) -> int:
    """How many runs (or seconds, or machines) a measurement takes in this mode."""
    return quick if QUICK else full


@contextlib.contextmanager
def portal_environment(*, exhibits: bool) -> Iterator[Path]:
    """A portal with its own data directory, migrated, with the demo and FreeDOS published.
    Its machines run in this process: a benchmark shuts its broker down in a `finally`
    (inside `teardown.deferred()`), which a stop signal reaches as it unwinds."""
    with teardown.Stops() as stops:
        root = stops.directory("pb-")
        os.environ["PORTAL_DATA_DIR"] = str(root)
        # No warm pool (as in served_portal): its paused machines would be counted with
        # the benchmark's, and a "prepared" start would sometimes be a pooled one.
        os.environ.setdefault("PORTAL_POOL_SIZE", "0")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from django.core.management import call_command
        from django.test.utils import setup_test_environment

        setup_test_environment()
        call_command("migrate", "--no-input", verbosity=0)
        if exhibits:
            call_command("add_exhibit", str(REPO / "build" / "demo.img"), slug="demo", title="Demo",
                         boot="hdd", publish=True, stdout=io.StringIO())
            guests = Path(os.environ.get("PORTAL_GUESTS_DIR", REPO / "tests" / "guests"))
            for name in ("freedos-2048", "freedos-games"):
                call_command("add_exhibit", str(guests / f"{name}.img"), slug=name, title=name,
                             boot="floppy", publish=True, stdout=io.StringIO())
        yield root


def machine_facts() -> dict[str, Any]:
    from sessions.machines.machine import kvm_usable, qemu_version

    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cores": os.cpu_count(),
        "memory_mib": memory_kib // 1024,
        "kvm": kvm_usable(),
        "qemu": qemu_version("qemu-system-i386"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "quick": QUICK,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    """The 95th percentile by nearest rank (with 10 to 19 runs, that is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}"


def verdict(met: bool) -> str:
    """A target column's cell: the issue's targets are either met or MISSED, loudly."""
    return "met" if met else "MISSED"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f} µs"


class Table:
    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns = title, columns
        self.rows: list[list[str]] = []

    def row(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def print(self) -> None:
        """As a markdown table, so that it can be pasted into docs/developers.md as it is."""
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        print(f"\n{self.title}\n")
        print(line(self.columns))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            print(line(row))
        sys.stdout.flush()


    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


def write_results(name: str, results: dict[str, Any], *, tables: Sequence[Table] = ()) -> Path:
    """The one results writer: bench/results/<name>-<UTC stamp>.json (quick runs:
    bench/results/quick/) with the machine's facts."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    document = {"benchmark": name, "machine": machine_facts(),
                "tables": [table.as_json() for table in tables], **results}
    path.write_text(json.dumps(document, indent=2, default=_jsonable))
    print(f"\nresults written to {path.relative_to(REPO)}")
    return path


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return os.fspath(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def rss_kib(pid: int) -> int:
    """A process's resident memory now, in KiB (0 once it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.NoSuchProcess:
        return 0


@dataclasses.dataclass
class ServedPortal:
    url: str
    root: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def manage(self, *args: str) -> str:
        return _manage(self.env, *args)

    def machine(self, session_id: str) -> tuple[int, Path]:
        """The pid and run directory of a running visit's machine (a machine owns its
        run directory, which its visit adopts: its row records where)."""
        return visit_machine(self.env, session_id)

    def stop(self) -> None:
        """Stop Daphne as a service manager does (SIGTERM); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=env, check=True,
                          capture_output=True, cwd=REPO, text=True).stdout


@contextlib.contextmanager
def served_portal(*, prepare: bool = True, accelerator: str = "auto",
                  environment: dict[str, str] | None = None,
                  proxy_headers: bool = False, demo: bool = True,
                  demo_sound: str = "none") -> Iterator[ServedPortal]:
    """The portal as `make run` serves it (Daphne, prepared demo), in a throwaway data
    directory (proxy_headers: as a node behind nginx; demo=False: another node of a
    portal whose shared database has the demo already; demo_sound: the demo's sound
    cards, as add_exhibit --sound takes them). On the way out, also on a stop signal
    (deploy/teardown.py): Daphne stopped, and no QEMU or file of it left."""
    with teardown.Stops() as stops:
        root = stops.directory("pb-")
        stops.callback(_leftovers_kill, root)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        # No warm pool unless a benchmark asks for one (bench/first_frame.py): its paused
        # machines would be counted with the visits' (processes, CPU, leftovers).
        env = {**os.environ, "PORTAL_DATA_DIR": str(root), "PORTAL_ACCELERATOR": accelerator,
               "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1",
               "PORTAL_POOL_SIZE": "0", **(environment or {})}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        _manage(env, "migrate", "--no-input", "-v", "0")
        if demo:
            _manage(env, "add_exhibit", str(REPO / "build" / "demo.img"), "--slug", "demo",
                    "--title", "Demo", "--boot", "hdd", "--sound", demo_sound, "--publish",
                    "--visitors-may-record")
        if demo and prepare:
            _manage(env, "prepare_exhibit", "demo", "--wait-graphics", "--still", "1")
        with teardown.deferred(), (root / "daphne.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "portal.server", "-b", "127.0.0.1", "-p", str(port),
                 *(["--proxy-headers"] if proxy_headers else []), "portal.asgi:application"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches this process alone,
                # which stops what it started in order.
                start_new_session=True,
            )
            served = ServedPortal(url=f"http://127.0.0.1:{port}", root=root, env=env, process=process)
            stops.callback(served.stop)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Daphne exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(served.url + "/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Daphne did not serve in time") from None
                time.sleep(0.1)
        yield served


def _leftovers_kill(root: Path) -> None:
    """What outlived a stopped portal (a QEMU switched to another user, whose parent's
    death no longer ends it), killed and said."""
    leftovers = processes_naming(root)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    if leftovers:
        print(f"WARNING: processes outlived the served portal and were killed: {leftovers}")
