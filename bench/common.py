"""What every benchmark shares: a throwaway portal, machine facts, tables, results."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


@contextlib.contextmanager
def portal_environment(*, exhibits: bool) -> Iterator[Path]:
    """A portal with its own data directory, migrated, with the demo and FreeDOS published."""
    root = Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp"))
    os.environ["PORTAL_DATA_DIR"] = str(root)
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
                     boot="hdd", publish=True, stdout=open(os.devnull, "w"))
        guests = Path(os.environ.get("PORTAL_GUESTS_DIR", REPO.parent / "shared" / "guests"))
        for name in ("freedos-2048", "freedos-games"):
            call_command("add_exhibit", str(guests / f"{name}.img"), slug=name, title=name,
                         boot="floppy", publish=True, stdout=open(os.devnull, "w"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def machine_facts() -> dict[str, Any]:
    from sessions.machine import kvm_usable, qemu_version

    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_mib": memory_kib // 1024,
        "kvm": kvm_usable(),
        "qemu": qemu_version("qemu-system-i386"),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


class Table:
    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns = title, columns
        self.rows: list[list[str]] = []

    def row(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def print(self) -> None:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        print(f"\n{self.title}")
        print("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"machine": machine_facts(), **results}, indent=2))
    print(f"\nresults written to {path.relative_to(REPO)}")
    return path
