"""The catalogue: masters (read-only base images) and the exhibits built on them.

Owns what curators publish. Knows nothing about processes; the machine profile
it hands out is a plain value that the runtime turns into a QEMU command line.
"""
from __future__ import annotations

from django.db import models

from sessions.machine import MachineProfile


class DiskImage(models.Model):
    """A preservation master: stored read-only under its SHA-256, never written."""

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=1024, help_text="Absolute path of the stored master.")
    format = models.CharField(max_length=16, default="raw")
    size_bytes = models.BigIntegerField()
    original_name = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.original_name or 'image'} ({self.sha256[:12]})"


class Exhibit(models.Model):
    class Boot(models.TextChoices):
        FLOPPY = "floppy", "Floppy disk"
        HDD = "hdd", "Hard disk"
        CDROM = "cdrom", "CD-ROM"

    class Cpu(models.TextChoices):
        I486 = "486", "486"
        PENTIUM = "pentium", "Pentium"

    class Accelerator(models.TextChoices):
        AUTO = "auto", "KVM where available, else software emulation"
        TCG = "tcg", "Always software emulation (TCG)"

    class Mouse(models.TextChoices):
        VMPORT = "vmport", "Absolute pointer (VMware mouse interface), PS/2 fallback"
        PS2 = "ps2", "PS/2 mouse only"

    class Vga(models.TextChoices):
        STD = "std", "Standard VGA"
        CIRRUS = "cirrus", "Cirrus Logic GD5446"

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    publisher = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    image = models.ForeignKey(DiskImage, on_delete=models.PROTECT, related_name="exhibits")
    boot = models.CharField(max_length=8, choices=Boot.choices, default=Boot.FLOPPY)
    cpu = models.CharField(max_length=8, choices=Cpu.choices, default=Cpu.I486)
    memory_mb = models.PositiveSmallIntegerField(default=16)
    vga = models.CharField(max_length=8, choices=Vga.choices, default=Vga.STD)
    mouse = models.CharField(max_length=8, choices=Mouse.choices, default=Mouse.VMPORT)
    accelerator = models.CharField(
        max_length=8, choices=Accelerator.choices, default=Accelerator.AUTO,
        help_text="Software emulation suits guests that need exact legacy timing "
                  "(floppy boot fails under KVM on nested-virtualisation hosts).",
    )
    published = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    def machine_profile(self) -> MachineProfile:
        return MachineProfile(cpu=self.cpu, memory_mb=self.memory_mb, vga=self.vga, boot=self.boot,
                              accelerator=self.accelerator, mouse=self.mouse)


class StartState(models.Model):
    """An exhibit's prepared start: a booted machine, frozen, for instant starts.

    Two read-only files: the warm layer (a qcow2 over the master holding what
    booting wrote) and the machine state QEMU saved. Visitors' overlays sit on
    the warm layer and QEMU resumes from the state. `key` says what the state
    depends on; when the portal's key for the exhibit differs, the state is
    stale and visitors get a cold boot.
    """

    exhibit = models.OneToOneField(Exhibit, on_delete=models.CASCADE, related_name="start_state")
    warm_path = models.CharField(max_length=1024)
    warm_sha256 = models.CharField(max_length=64)
    state_path = models.CharField(max_length=1024)
    state_sha256 = models.CharField(max_length=64)
    key = models.TextField()
    method = models.CharField(max_length=255, help_text="How the start state was reached.")
    prepare_seconds = models.FloatField()
    stale = models.BooleanField(default=False)
    stale_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"start state of {self.exhibit_id}{' (stale)' if self.stale else ''}"
