"""The start limiter and the confinement a machine's command line asks for."""
from __future__ import annotations

from pathlib import Path

import pytest

from portal.profile import MachineProfile
from sessions.machines.confine import Confinement, MemoryCgroups, uid_range_valid
from sessions.machines.machine import build_argv, state_key
from sessions.node.broker import StartLimiter, runas_choose


def test_it_allows_starts_up_to_each_limit_and_says_when_to_retry() -> None:
    limiter = StartLimiter(window_s=60)
    assert limiter.take({"browser:a": 2, "address:x": 3}) is None
    assert limiter.take({"browser:a": 2, "address:x": 3}) is None
    retry = limiter.take({"browser:a": 2, "address:x": 3})
    assert retry is not None
    assert 0 < retry <= 60
    # Another browser at the same address has its own allowance, up to the address's.
    assert limiter.take({"browser:b": 2, "address:x": 3}) is None
    assert limiter.take({"browser:c": 2, "address:x": 3}) is not None


def test_it_counts_a_refused_start_against_nobody() -> None:
    limiter = StartLimiter(window_s=60)
    assert limiter.take({"browser:a": 1, "address:x": 5}) is None
    for _ in range(5):
        assert limiter.take({"browser:a": 1, "address:x": 5}) is not None
    # The refusals did not use up the address's allowance.
    for name in "bcde":
        assert limiter.take({f"browser:{name}": 1, "address:x": 5}) is None


def test_it_gives_qemu_its_user_without_changing_the_start_state_key() -> None:
    common = {"qemu_binary": "qemu", "accelerator": "kvm", "disk_path": Path("/d"),
              "run_dir": Path("/r"), "qmp_fd": 3, "printer_fd": 4}
    argv = build_argv(MachineProfile(), run_as=(1800000007, 1800000007), **common)  # type: ignore[arg-type]
    assert argv[argv.index("-runas") + 1] == "1800000007:1800000007"
    assert "-runas" not in build_argv(MachineProfile(), **common)  # type: ignore[arg-type]
    sandbox = argv[argv.index("-sandbox") + 1]
    # elevateprivileges=deny together with -runas kills QEMU 7.2 at start.
    assert "elevateprivileges" not in sandbox
    assert "spawn=deny" in sandbox
    # A saved state does not depend on which uid resumes it.
    key = state_key(MachineProfile(), accelerator="kvm", qemu="7.2", master_sha256="0" * 64)
    assert "1800000007" not in key


def test_it_keeps_the_uid_range_away_from_real_users() -> None:
    assert not uid_range_valid(1000, 100)
    assert not uid_range_valid(2**32 - 50, 100)
    assert uid_range_valid(1_800_000_000, 200)
    assert runas_choose("off", 1_800_000_000, 10) is None


def test_it_falls_back_to_an_address_space_limit_without_cgroups() -> None:
    confinement = Confinement(memory_bytes=100 << 20)
    assert confinement.memory_method == "rlimit-as"
    assert Confinement().memory_method == "none"


@pytest.mark.parametrize(("version", "file", "text", "kills"), [
    (2, "memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n", 1),
    (2, "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", 0),
    (1, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", 2),
    (1, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n", 0),  # an older kernel
])
def test_it_reads_how_often_a_machines_cgroup_was_killed_for_memory(
    tmp_path: Path, version: int, file: str, text: str, kills: int
) -> None:
    cgroup = tmp_path / "machine"
    cgroup.mkdir()
    (cgroup / file).write_text(text)
    assert MemoryCgroups(parent=tmp_path, version=version).oom_kills(cgroup) == kills
    assert MemoryCgroups(parent=tmp_path, version=version).oom_kills(tmp_path / "gone") == 0
