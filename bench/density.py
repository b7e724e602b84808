"""Density: how many idle visitors' machines this host carries, and what each costs.

N idle demo machines (resumed from the prepared start state through the
broker, as visitors get them; nobody watching; no warm pool) are started in
steps up to 500, and at each step every QEMU's RSS and PSS
(/proc/<pid>/smaps_rollup), its host CPU over a window (/proc/<pid>/stat),
and the host's available memory are measured: first with kernel same-page
merging (KSM) off, then, where the kernel lets this process switch it, with
KSM on once merging has settled; then KSM unmerges again (back to the memory
the step had with it off) before the next step grows. Reference, in the same
run: one machine alone (N = 1). KSM's settings are put back as they were.

The host is protected: no batch starts while less than 3 GiB of memory is
available (the run stops growing there and says so). Everything started is
stopped and deleted, and the script checks that no QEMU and no run directory
is left. `make bench-density` runs it alone: at 500 machines it loads a
two-core host fully for minutes.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import QUICK, Table, median, portal_environment, ratio, runs, verdict, write_results
from deploy import teardown
from tests.support.processes import processes_naming

STEPS = [1, 5] if QUICK else [1, 100, 300, 500]
# No batch starts while the host has less than this available.
MEMORY_FLOOR_MIB = 3 * 1024
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
# One process starts them all, from no address: the start limits are not measured here.
os.environ.setdefault("PORTAL_STARTS_PER_ADDRESS", str(10 * max(STEPS)))


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in {"Rss", "Pss"}:
            values[name.lower()] = int(rest.split()[0])
    return values


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ksmd_pid() -> int | None:
    return next((process.pid for process in psutil.process_iter(["name"])
                 if process.info["name"] == "ksmd"), None)


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
        with teardown.deferred():
            # Unmerge first when it was off, so the host is left as it was.
            if saved["run"] == "0":
                with contextlib.suppress(OSError):
                    (KSM / "run").write_text("2")
            for name, value in saved.items():
                with contextlib.suppress(OSError):
                    (KSM / name).write_text(value)


async def ksm_unmerged() -> None:
    """Switch KSM off and unmerge every page (as before the merge). The kernel unmerges
    within the write of 2, so it is done once the write returns."""
    with contextlib.suppress(OSError):
        await asyncio.to_thread((KSM / "run").write_text, "2")
    with contextlib.suppress(OSError):
        (KSM / "run").write_text("0")


async def measure(run_root: Path) -> dict[str, Any]:
    from portal.models import Exhibit
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import CapacityError, exhibit_prepare, get_broker

    exhibit = await Exhibit.objects.select_related("image").aget(slug="demo")
    await exhibit_prepare(exhibit, StartCondition(wait_graphics=True, still_s=1.0))
    broker = await get_broker()
    reason = ksm_switchable()
    ksm_saved = (KSM / "run").read_text().strip() if reason is None else ""
    if reason is None and ksm_saved != "0":
        await ksm_unmerged()  # every step is measured with KSM off first
    baseline = available_mib()
    session_ids: list[str] = []
    steps: list[dict[str, Any]] = []
    ksm: dict[str, Any] = {"on": [], "not_available": reason}
    capacity_note = ""
    try:
        for target in STEPS:
            while len(session_ids) < target and not capacity_note:
                if available_mib() < MEMORY_FLOOR_MIB:
                    capacity_note = (f"stopped growing at {len(session_ids)} machines: less than "
                                     f"{MEMORY_FLOOR_MIB} MiB of memory was available")
                    break
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
            if len(session_ids) < target and steps and steps[-1]["machines"] == len(session_ids):
                break  # stopped growing: this step was measured already
            await asyncio.sleep(SETTLE_S)
            pids = [_pid(broker, session_id) for session_id in session_ids]
            steps.append(await snapshot(pids, baseline))
            print(f"  {len(pids)} machines measured, KSM off", flush=True)
            if reason is None and len(pids) > 1:
                merged = await ksm_merged(pids, baseline, ksmd_pid())
                ksm["on"].append(merged)
                print(f"  {len(pids)} machines measured, KSM on", flush=True)
                await ksm_unmerged()
            if capacity_note:
                break
    finally:
        with teardown.deferred():
            await broker.shutdown()
            if reason is None:
                with contextlib.suppress(OSError):
                    (KSM / "run").write_text(ksm_saved)
    leftovers = processes_naming(run_root)
    left_dirs = sorted(p.name for p in run_root.iterdir()) if run_root.exists() else []
    assert not leftovers, f"QEMU processes left running: {leftovers}"
    assert not left_dirs, f"run directories left behind: {left_dirs}"
    return {"steps": steps, "ksm": ksm, "capacity_note": capacity_note,
            "accelerator": broker.launcher.accelerator_for(exhibit)}


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
    on_by_count = {step["machines"]: step for step in results["ksm"].get("on", [])}
    reference = steps[0]
    ref_cpu = sum(reference["cpu_percent"]) / reference["machines"]
    # One machine's share of the host's available memory drowns in the host's own
    # changes: host memory is compared with the first larger N instead.
    grown = next((step for step in steps if step["machines"] > 1), reference)
    ref_used = grown["host_used_mib"] / grown["machines"]
    table = Table(
        f"Density: N idle prepared demo machines ({results['accelerator']}, nobody watching), "
        f"{WINDOW_S} s CPU windows, KSM off then on at each N; reference: N = 1, KSM off "
        f"(host memory: N = {grown['machines']}, KSM off)",
        ["N", "KSM", "RSS MiB/machine (median)", "PSS MiB/machine (median)",
         "host memory used MiB/machine", "ratio", "CPU %/machine (mean)", "ratio",
         "total CPU % of a core", "ksmd CPU %", "pages_sharing",
         f"target: <= {RSS_TARGET_MIB:g} MiB RSS, <= {CPU_TARGET_PERCENT:g} % CPU"],
    )
    for step in steps:
        for ksm, measured in (("off", step), ("on", on_by_count.get(step["machines"]))):
            if measured is None:
                continue
            count = measured["machines"]
            used = measured["host_used_mib"] / count
            cpu_mean = sum(measured["cpu_percent"]) / count
            table.row(count, ksm, f"{median(measured['rss_mib']):.1f}", f"{median(measured['pss_mib']):.1f}",
                      f"{used:.1f}" if count > 1 else "-", ratio(used, ref_used) if count > 1 else "-",
                      f"{cpu_mean:.2f}",
                      ratio(cpu_mean, ref_cpu) if ref_cpu else "-", f"{sum(measured['cpu_percent']):.1f}",
                      f"{measured['ksmd_cpu_percent']:.1f}" if ksm == "on" else "-",
                      measured["ksm_pages_sharing"],
                      verdict(median(measured["rss_mib"]) <= RSS_TARGET_MIB
                              and cpu_mean <= CPU_TARGET_PERCENT))
    table.print()
    tables = [table]
    grown_steps = [step for step in steps if step["machines"] > 1]
    if grown_steps:
        # The dearest of every N measured, KSM off (merging is a bonus, not a promise):
        # a machine's proportional memory (PSS) or its share of the host's, and its CPU.
        memory_mib = max(max(median(step["pss_mib"]), step["host_used_mib"] / step["machines"])
                         for step in grown_steps)
        cpu_percent = max(sum(step["cpu_percent"]) / step["machines"] for step in grown_steps)
        derived = capacity_from(memory_mib=memory_mib, idle_cpu_percent=cpu_percent)
        counts = ", ".join(str(step["machines"]) for step in grown_steps)
        capacity_table = Table(
            f"The default capacity this host would get from what was measured at N = {counts} "
            "(the dearest, KSM off); reference: the capacity in force "
            "(sessions.machines.host: MACHINE_MEMORY_MIB, MACHINE_IDLE_CPU_PERCENT)",
            ["memory MiB/machine", "idle CPU %/machine", "by memory", "by CPU", "derived", "in force",
             "ratio"],
        )
        from sessions.machines.host import capacity_default

        in_force = capacity_default()
        by_cpu = "no bound" if derived["by_cpu"] == sys.maxsize else derived["by_cpu"]
        capacity_table.row(f"{memory_mib:.1f}", f"{cpu_percent:.2f}", derived["by_memory"],
                           by_cpu, derived["capacity"], in_force,
                           ratio(derived["capacity"], in_force))
        capacity_table.print()
        tables.append(capacity_table)
        results["derived_capacity"] = derived
    if results["ksm"].get("not_available"):
        print(f"\nKSM: {results['ksm']['not_available']}")
    if results["capacity_note"]:
        print(f"\nnote: {results['capacity_note']}")
    return tables


def capacity_from(*, memory_mib: float, idle_cpu_percent: float) -> dict[str, int]:
    """What `sessions.machines.host.capacity_default` computes, from measured costs per machine."""
    from sessions.machines.host import capacity_limits

    by_memory, by_cpu = capacity_limits(memory_per_machine_mib=memory_mib,
                                        idle_cpu_percent=idle_cpu_percent)
    return {"by_memory": by_memory, "by_cpu": by_cpu, "capacity": min(by_memory, by_cpu)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        # The tables again from a results file, as this version of the script prints them.
        path = Path(sys.argv[2])
        results = json.loads(path.read_text())
        tables = report(results)
        results["tables"] = [table.as_json() for table in tables]
        path.write_text(json.dumps(results, indent=2))
        return
    with portal_environment(exhibits=True):
        from django.conf import settings

        results = asyncio.run(measure(Path(settings.PORTAL_RUN_DIR)))
    tables = report(results)
    write_results("density", results, tables=tables)


if __name__ == "__main__":
    main()
