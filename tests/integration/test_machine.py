from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from portal.profile import MachineProfile
from sessions.machines.machine import Machine, MachineStartError, process_alive
from tests.conftest import FREEDOS_2048, KVM
from tests.support.processes import processes_naming


@pytest.fixture
async def run_dir() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(FREEDOS_2048), str(path / "disk.qcow2")], check=True)
    yield path
    # A test that failed half-way leaves no QEMU behind either.
    for pid in processes_naming(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def machine_in(run_dir: Path, accelerator: str = "kvm" if KVM else "tcg",
               binary: str = "qemu-system-i386", disk: str = "disk.qcow2") -> Machine:
    return Machine(MachineProfile(), run_dir=run_dir, disk_path=run_dir / disk,
                   qemu_binary=binary, accelerator=accelerator,
                   start_timeout_s=20, qmp_timeout_s=5, stop_timeout_s=5)


@pytest.mark.parametrize("accelerator", [
    pytest.param("kvm", marks=pytest.mark.skipif(not KVM, reason="needs a usable /dev/kvm")),
    "tcg",
])
async def test_it_runs_qemu_that_answers_qmp_and_vnc_then_stops_it(
    run_dir: Path, accelerator: str
) -> None:
    machine = machine_in(run_dir, accelerator)
    await machine.start()
    pid = machine.pid
    assert pid is not None
    assert process_alive(pid)
    status = await machine.execute("query-status")
    assert status["running"] is True
    kvm = await machine.execute("query-kvm")
    assert kvm["enabled"] is (accelerator == "kvm")
    reader, writer = await asyncio.open_unix_connection(machine.vnc_path)
    assert await reader.readexactly(12) == b"RFB 003.008\n"
    writer.close()
    # Stopping twice at once is one stop.
    await asyncio.gather(machine.stop(), machine.stop())
    assert machine.returncode == 0
    assert not process_alive(pid)


async def test_it_reports_why_qemu_could_not_start_and_leaves_nothing_running(
    run_dir: Path,
) -> None:
    machine = machine_in(run_dir, disk="no-such-disk.qcow2")
    with pytest.raises(MachineStartError) as caught:
        await machine.start()
    assert caught.value.returncode == 1
    assert "no-such-disk.qcow2" in caught.value.log_tail
    assert "-cpu" in caught.value.argv
    assert machine.pid is not None
    assert not process_alive(machine.pid)


async def test_it_says_when_qemu_is_not_installed(run_dir: Path) -> None:
    with pytest.raises(MachineStartError, match="not installed"):
        await machine_in(run_dir, binary="/nonexistent/qemu").start()


async def test_it_sees_a_killed_qemu_exit(run_dir: Path) -> None:
    machine = machine_in(run_dir)
    await machine.start()
    assert machine.pid is not None
    os.kill(machine.pid, signal.SIGKILL)
    async with asyncio.timeout(5):
        assert await machine.wait() == -signal.SIGKILL
    await machine.stop()
