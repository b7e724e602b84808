"""What a save reads of a machine without running one: the file each drive started
with, from the machine's own command line, and what each layer lies over."""
from __future__ import annotations

from pathlib import Path

from portal.profile import MachineProfile
from sessions.machines.machine import build_argv
from sessions.machines.saving import drive_files, layer_role


def test_it_reads_each_drives_start_file_and_passes_over_an_empty_cd_drive() -> None:
    # A disk set's machine: B: starts with a blank placeholder, the CD drive empty.
    profile = MachineProfile(boot="floppy", disk_drives=("b", "cd"), files_in="off")
    argv = build_argv(profile, qemu_binary="qemu", accelerator="tcg", disk_path=Path("/run/m/disk.qcow2"),
                      run_dir=Path("/run/m"), qmp_fd=3, printer_fd=4)
    assert drive_files(argv) == {"floppy0": (Path("/run/m/disk.qcow2"), False),
                                 "floppy1": (Path("/run/m/blank-b.qcow2"), False)}


def test_it_names_what_each_layer_lies_over_by_role_never_by_path() -> None:
    assert [layer_role(name) for name in ("disk.qcow2", "extra-1.qcow2", "visitor-disk-0.qcow2",
                                           "disk-7.qcow2", "blank-b.qcow2", "visitor-disk-2.qcow2")] \
        == ["start", "extra-1", "files", "disk-7", None, None]
