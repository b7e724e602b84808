"""How this node makes machines, read once from Django's settings.

Owns: `MachinesConfig`: where machines' run directories and leases live, the
QEMU and qemu-img binaries and their timeouts, the accelerator, the uid range
machines run in and their memory limit. The node's `BrokerConfig` holds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from sessions.machines.confine import MemoryCgroups
from sessions.machines.host import accelerator_choose, install_id, lease_dir, memory_cgroups, runas_choose


@dataclass(frozen=True)
class MachinesConfig:
    run_root: Path
    qemu_binary: str
    qemu_img_binary: str
    accelerator: str
    start_timeout_s: float
    qmp_timeout_s: float
    stop_timeout_s: float
    qemu_img_timeout_s: float
    # Machines run as uids leased from base+1 .. base+count; a None base keeps
    # the portal's user.
    uid_base: int | None = None
    uid_count: int = 0
    uid_lease_dir: Path = Path("/run/portal-uids")
    memory_overhead_mb: int = 192
    cgroups: MemoryCgroups | None = None
    # Where this install's processes lease machines.
    lease_dir: Path | None = None
    # LPT1: the quiet that ends a print job, and the most bytes of one kept.
    print_idle_s: float = 2.0
    print_job_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_settings(cls) -> MachinesConfig:
        uid_count = settings.PORTAL_QEMU_UID_COUNT
        return cls(
            run_root=Path(settings.PORTAL_RUN_DIR),
            qemu_binary=settings.PORTAL_QEMU_BINARY,
            qemu_img_binary=settings.PORTAL_QEMU_IMG_BINARY,
            accelerator=accelerator_choose(settings.PORTAL_ACCELERATOR),
            start_timeout_s=settings.PORTAL_START_TIMEOUT_S,
            qmp_timeout_s=settings.PORTAL_QMP_TIMEOUT_S,
            stop_timeout_s=settings.PORTAL_STOP_TIMEOUT_S,
            qemu_img_timeout_s=settings.PORTAL_QEMU_IMG_TIMEOUT_S,
            uid_base=runas_choose(settings.PORTAL_QEMU_RUNAS, settings.PORTAL_QEMU_UID_BASE, uid_count),
            uid_count=uid_count,
            uid_lease_dir=Path(settings.PORTAL_UID_LEASE_DIR),
            memory_overhead_mb=settings.PORTAL_QEMU_MEMORY_OVERHEAD_MB,
            cgroups=memory_cgroups(install_id()),
            lease_dir=lease_dir(),
            print_idle_s=settings.PORTAL_PRINT_IDLE_S,
            print_job_bytes=settings.PORTAL_PRINT_JOB_BYTES,
        )

    @property
    def leases(self) -> Path:
        return self.lease_dir if self.lease_dir is not None else self.run_root.parent / "leases"
