"""The install's identity and its leases (files and locks only, no processes)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessions.machines.host import (
    LeaseHeldError,
    UidsExhaustedError,
    cgroup_parent_name,
    install_id,
    machine_lease,
    machine_lease_names,
    machine_lease_take,
    machine_lease_try,
    uid_lease_take,
    uid_leases_tidy,
)


def test_it_derives_the_identity_from_the_data_directory_unless_one_is_set(
    settings: Any, tmp_path: Path
) -> None:
    settings.PORTAL_INSTALL_ID = ""
    settings.PORTAL_DATA_DIR = tmp_path / "a"
    first = install_id()
    (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)
    settings.PORTAL_DATA_DIR = tmp_path / "b"
    assert install_id() == first, "the same directory by another path is the same install"
    settings.PORTAL_DATA_DIR = tmp_path / "c"
    assert install_id() != first
    assert len(first) == 10
    settings.PORTAL_INSTALL_ID = "staging"
    assert install_id() == "staging"
    assert cgroup_parent_name(install_id()) == "portal-staging"
    for bad in ("../up", "a/b", "-x", "x" * 41, "with space"):
        settings.PORTAL_INSTALL_ID = bad
        with pytest.raises(ValueError, match="PORTAL_INSTALL_ID must be"):
            install_id()


def test_it_lets_one_owner_hold_a_machine_and_the_reaper_take_it_only_when_let_go(
    tmp_path: Path,
) -> None:
    lease = machine_lease_take(name="session-1", directory=tmp_path)
    # A second open in the same process conflicts too: a reaper thread is refused.
    assert machine_lease_try(name="session-1", directory=tmp_path) is None
    with pytest.raises(LeaseHeldError):
        machine_lease_take(name="session-1", directory=tmp_path)
    assert machine_lease_names(tmp_path) == ["session-1"]
    lease.release()
    lease.release()
    assert machine_lease_names(tmp_path) == []
    with machine_lease(name="session-1", directory=tmp_path):
        assert machine_lease_try(name="session-1", directory=tmp_path) is None
    assert machine_lease_names(tmp_path) == []
    assert oct(tmp_path.stat().st_mode & 0o777) == oct(0o700)
    with pytest.raises(ValueError, match="invalid machine name"):
        machine_lease_take(name="../escape", directory=tmp_path)


def test_it_leases_each_uid_once_and_the_first_free_one_again(tmp_path: Path) -> None:
    first = uid_lease_take(base=1_800_000_000, count=2, directory=tmp_path)
    second = uid_lease_take(base=1_800_000_000, count=2, directory=tmp_path)
    assert (first.uid, second.uid) == (1_800_000_001, 1_800_000_002)
    with pytest.raises(UidsExhaustedError):
        uid_lease_take(base=1_800_000_000, count=2, directory=tmp_path)
    first.release()
    again = uid_lease_take(base=1_800_000_000, count=2, directory=tmp_path)
    assert again.uid == 1_800_000_001
    # A file nobody holds (its QEMU died unowned) is tidied; held ones stay.
    (tmp_path / "1800000005.lock").touch()
    uid_leases_tidy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1800000001.lock", "1800000002.lock"]
    again.release()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_it_derives_capacity_from_a_machines_cost_keeping_a_reserve_and_half_the_cpu() -> None:
    from sessions.machines.host import capacity_limits

    # 4 GiB: 1 GiB kept for the host; 40 MiB a machine.
    by_memory, by_cpu = capacity_limits(memory_per_machine_mib=40, idle_cpu_percent=0.5,
                                        memory_mib=4096, cores=2)
    assert by_memory == (4096 - 1024) // 40
    # Idle machines at 0.5 % each may take half of two cores.
    assert by_cpu == 200
    # A large host keeps a share of its memory, not just the minimum.
    by_memory, _ = capacity_limits(memory_per_machine_mib=40, idle_cpu_percent=0.5,
                                   memory_mib=65536, cores=2)
    assert by_memory == int(65536 * 0.85 // 40)
    # A host too small for one machine still runs one.
    assert capacity_limits(memory_per_machine_mib=40, idle_cpu_percent=0.5,
                           memory_mib=512, cores=1)[0] == 1


def test_it_leaves_the_cpu_no_bound_when_idle_machines_measured_no_cpu() -> None:
    import sys

    from sessions.machines.host import capacity_limits

    # A short window can measure idle machines at 0.00 %: memory alone decides.
    by_memory, by_cpu = capacity_limits(memory_per_machine_mib=40, idle_cpu_percent=0.0,
                                        memory_mib=4096, cores=2)
    assert by_memory == (4096 - 1024) // 40
    assert by_cpu == sys.maxsize
    assert min(by_memory, by_cpu) == by_memory
