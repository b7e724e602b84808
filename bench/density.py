"""Density: how many idle visitors' machines this host carries, and what each costs.

N idle demo machines (resumed from the prepared start state through the
broker, as visitors get them; nobody watching) are started in steps up to the
largest N, and at each step every QEMU's RSS and PSS (/proc/<pid>/smaps_rollup),
its host CPU over a window (/proc/<pid>/stat), and the host's available memory
are measured. Reference, in the same run: one machine alone (N = 1).

At the largest N the memory is measured again with kernel same-page merging
(KSM) on, once merging has settled, where the kernel lets this process switch
it; KSM's settings are put back as they were. Everything started is stopped
and deleted, and the script checks that no QEMU and no run directory is left.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK,
    Table,
    median,
    portal_environment,
    processes_naming,
    ratio,
    runs,
    verdict,
    write_results,
)

STEPS = [1, 5] if QUICK else [1, 10, 50, 100]
WINDOW_S = runs(10, 3)
SETTLE_S = runs(5, 2)
BATCH = 4  # machines resumed at once
RSS_TARGET_MIB = 48.0
CPU_TARGET_PERCENT = 1.0
KSM = Path("/sys/kernel/mm/ksm")
KSM_SETTLE_TIMEOUT_S = runs(90, 30)

# Before Django reads its settings: nobody watches these machines, and they
# must outlive the grace period; the host's default capacity may be below N.
os.environ.setdefault("PORTAL_GRACE_S", "3600")
os.environ.setdefault("PORTAL_MAX_SESSIONS", str(max(STEPS) + 10))


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        name, _, rest = line.partition(":")
        if name in {"Rss", "Pss"}:
            values[name.lower()] = int(rest.split()[0])
    return values


def available_mib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ksmd_pid() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if open(f"/proc/{entry}/comm").read().strip() == "ksmd":
                    return int(entry)
    return None


async def window(pids: list[int], extra: int | None = None) -> tuple[list[float], float]:
    """% of one core per process over one window, and the extra process's %."""
    tick = os.sysconf("SC_CLK_TCK")
    before = {pid: cpu_ticks(pid) for pid in pids}
    extra_before = cpu_ticks(extra) if extra else 0
    began = time.perf_counter()
    await asyncio.sleep(WINDOW_S)  # the measurement window itself
    elapsed = time.perf_counter() - began
    percent = [(cpu_ticks(pid) - before[pid]) / tick / elapsed * 100 for pid in pids]
    extra_percent = (cpu_ticks(extra) - extra_before) / tick / elapsed * 100 if extra else 0.0
    return percent, extra_percent


async def snapshot(pids: list[int], baseline_available_mib: float, *, ksmd: int | None = None
                   ) -> dict[str, Any]:
    cpu, ksmd_cpu = await window(pids, ksmd)
    memory = [memory_kib(pid) for pid in pids]
    return {
        "machines": len(pids),
        "cpu_percent": cpu,
        "rss_mib": [m["rss"] / 1024 for m in memory],
        "pss_mib": [m["pss"] / 1024 for m in memory],
        "host_used_mib": baseline_available_mib - available_mib(),
        "ksmd_cpu_percent": ksmd_cpu,
        "ksm_pages_sharing": _ksm_read("pages_sharing"),
    }


def _ksm_read(name: str) -> int | None:
    try:
        return int((KSM / name).read_text())
    except (OSError, ValueError):
        return None


def ksm_switchable() -> str | None:
    """None if this process may switch KSM, else why not."""
    run = KSM / "run"
    if not run.exists():
        return "this kernel has no KSM (/sys/kernel/mm/ksm/run is missing)"
    try:
        value = run.read_text()
        run.write_text(value.strip())
    except OSError as error:
        return f"/sys/kernel/mm/ksm/run is not writable here ({error.strerror})"
    return None


async def ksm_merged(pids: list[int], baseline: float, ksmd: int | None) -> dict[str, Any]:
    """Switch KSM on until merging settles, measure, and put its settings back."""
    saved = {name: (KSM / name).read_text().strip() for name in ("run", "pages_to_scan")}
    try:
        # Scan fast, so that merging settles within the benchmark's time.
        (KSM / "pages_to_scan").write_text("4000")
        (KSM / "run").write_text("1")
        scans = _ksm_read("full_scans") or 0
        deadline = time.monotonic() + KSM_SETTLE_TIMEOUT_S
        last = -1
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            sharing = _ksm_read("pages_sharing") or 0
            if (_ksm_read("full_scans") or 0) >= scans + 2 and sharing == last:
                break
            last = sharing
        return await snapshot(pids, baseline, ksmd=ksmd)
    finally:
        # Unmerge first when it was off, so the host is left as it was.
        if saved["run"] == "0":
            with contextlib.suppress(OSError):
                (KSM / "run").write_text("2")
        for name, value in saved.items():
            with contextlib.suppress(OSError):
                (KSM / name).write_text(value)


async def measure(run_root: Path) -> dict[str, Any]:
    from portal.models import Exhibit
    from sessions.broker import CapacityError, exhibit_prepare, get_broker
    from sessions.prepare import StartCondition

    exhibit = await Exhibit.objects.select_related("image").aget(slug="demo")
    await exhibit_prepare(exhibit, StartCondition(wait_graphics=True, still_s=1.0))
    broker = await get_broker()
    baseline = available_mib()
    session_ids: list[str] = []
    steps: list[dict[str, Any]] = []
    ksm: dict[str, Any] = {}
    capacity_note = ""
    try:
        for target in STEPS:
            while len(session_ids) < target:
                batch: list[str] = []
                for _ in range(min(BATCH, target - len(session_ids))):
                    try:
                        session = await broker.session_create(
                            exhibit=exhibit, owner=f"bench-{len(session_ids) + len(batch)}")
                    except CapacityError:
                        capacity_note = f"the broker's capacity stopped it at {len(session_ids)}"
                        break
                    batch.append(session.id)
                if not batch:
                    break
                await _running(broker, batch)
                session_ids += batch
            if capacity_note and len(session_ids) < target:
                break
            await asyncio.sleep(SETTLE_S)
            pids = [_pid(broker, session_id) for session_id in session_ids]
            steps.append(await snapshot(pids, baseline))
            print(f"  {len(pids)} machines measured", flush=True)
        reason = ksm_switchable()
        if reason is None and session_ids:
            pids = [_pid(broker, session_id) for session_id in session_ids]
            ksm = {"on": await ksm_merged(pids, baseline, ksmd_pid())}
        else:
            ksm = {"not_available": reason}
    finally:
        await broker.shutdown()
    leftovers = processes_naming(run_root)
    left_dirs = sorted(p.name for p in run_root.iterdir()) if run_root.exists() else []
    assert not leftovers, f"QEMU processes left running: {leftovers}"
    assert not left_dirs, f"run directories left behind: {left_dirs}"
    return {"steps": steps, "ksm": ksm, "capacity_note": capacity_note,
            "accelerator": broker.accelerator_for(exhibit)}


async def _running(broker: Any, session_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(broker.machine(session_id) for session_id in session_ids):
        if time.monotonic() > deadline:
            raise RuntimeError("machines did not start in time")
        await asyncio.sleep(0.05)


def _pid(broker: Any, session_id: str) -> int:
    machine = broker.machine(session_id)
    assert machine is not None, f"{session_id} is not running"
    assert machine.pid is not None, f"{session_id} is not running"
    return int(machine.pid)


def report(results: dict[str, Any]) -> list[Table]:
    steps = results["steps"]
    reference = steps[0]
    ref_rss, ref_cpu = median(reference["rss_mib"]), median(reference["cpu_percent"])
    table = Table(
        f"Density: N idle prepared demo machines ({results['accelerator']}, nobody watching), "
        f"{WINDOW_S} s CPU windows, KSM as the host had it; reference: N = 1",
        ["N", "RSS MiB/machine (median)", "ratio", "PSS MiB/machine", "host memory used MiB/machine",
         "CPU %/machine (mean)", "ratio", "total RSS MiB", "total CPU % of a core",
         f"target: >= 100 machines, <= {RSS_TARGET_MIB:g} MiB, <= {CPU_TARGET_PERCENT:g} %"],
    )
    for step in steps:
        count = step["machines"]
        rss = median(step["rss_mib"])
        cpu_mean = sum(step["cpu_percent"]) / count
        target = ""
        if count == max(s["machines"] for s in steps):
            target = verdict(count >= 100 and max(step["rss_mib"]) <= RSS_TARGET_MIB
                             and cpu_mean <= CPU_TARGET_PERCENT)
        table.row(count, f"{rss:.1f}", ratio(rss, ref_rss), f"{median(step['pss_mib']):.1f}",
                  f"{step['host_used_mib'] / count:.1f}", f"{cpu_mean:.2f}",
                  ratio(cpu_mean, ref_cpu) if ref_cpu else "-",
                  f"{sum(step['rss_mib']):.0f}", f"{sum(step['cpu_percent']):.1f}", target)
    ksm_table = Table(
        "Kernel same-page merging at the largest N; reference: the same machines with KSM off",
        ["KSM", "N", "PSS MiB/machine (median)", "ratio", "host memory used MiB/machine", "ratio",
         "CPU %/machine (mean)", "ksmd CPU %", "pages_sharing"],
    )
    last = steps[-1]
    count = last["machines"]
    off_pss, off_used = median(last["pss_mib"]), last["host_used_mib"] / count
    ksm_table.row("off", count, f"{off_pss:.1f}", "1.00", f"{off_used:.1f}", "1.00",
                  f"{sum(last['cpu_percent']) / count:.2f}", "-", last["ksm_pages_sharing"])
    on = results["ksm"].get("on")
    if on:
        on_pss, on_used = median(on["pss_mib"]), on["host_used_mib"] / count
        ksm_table.row("on", count, f"{on_pss:.1f}", ratio(on_pss, off_pss), f"{on_used:.1f}",
                      ratio(on_used, off_used), f"{sum(on['cpu_percent']) / count:.2f}",
                      f"{on['ksmd_cpu_percent']:.1f}", on["ksm_pages_sharing"])
    else:
        ksm_table.row("on", "not available", results["ksm"].get("not_available"), "", "", "", "", "", "")
    table.print()
    ksm_table.print()
    if results["capacity_note"]:
        print(f"\nnote: {results['capacity_note']}")
    return [table, ksm_table]


def main() -> None:
    with portal_environment(exhibits=True):
        from django.conf import settings

        results = asyncio.run(measure(Path(settings.PORTAL_RUN_DIR)))
    tables = report(results)
    write_results("density", results, tables=tables)


if __name__ == "__main__":
    main()
