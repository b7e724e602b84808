from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from portal.profile import MachineProfile, sound_devices
from sessions.machines.machine import accelerator_resolve, build_argv, state_key


def argv_for(profile: MachineProfile, accelerator: str = "kvm") -> list[str]:
    return build_argv(
        profile, qemu_binary="qemu-system-i386", accelerator=accelerator,
        disk_path=Path("/run/s/disk.qcow2"), run_dir=Path("/run/s"), qmp_fd=7, printer_fd=8,
    )


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_it_runs_a_486_without_defaults_network_or_user_config() -> None:
    argv = argv_for(MachineProfile())
    assert option(argv, "-cpu") == ["486"]
    assert option(argv, "-m") == ["16"]
    assert "-nodefaults" in argv
    assert "-no-user-config" in argv
    assert option(argv, "-nic") == ["none"]
    assert not any(arg.startswith(("-netdev", "-net")) and arg != "-nic" for arg in argv)
    assert option(argv, "-sandbox") == ["on,obsolete=deny,spawn=deny,resourcecontrol=deny"]


@pytest.mark.parametrize(("mouse", "machine"), [("vmport", "pc,vmport=on,pcspk-audiodev=audio0"),
                                               ("ps2", "pc,vmport=off,pcspk-audiodev=audio0")])
def test_it_gives_the_guest_the_mouse_of_its_profile(mouse: str, machine: str) -> None:
    assert option(argv_for(MachineProfile(mouse=mouse)), "-machine") == [machine]


def test_it_puts_both_sockets_in_the_run_directory() -> None:
    argv = argv_for(MachineProfile())
    assert option(argv, "-vnc") == ["unix:/run/s/vnc.sock,share=force-shared,audiodev=audio0"]
    assert option(argv, "-chardev") == ["socket,id=qmp,fd=7,server=on,wait=off",
                                        "socket,id=lpt1,fd=8,server=off"]
    assert option(argv, "-display") == ["none"]


@pytest.mark.parametrize("accelerator", ["kvm", "tcg"])
def test_it_uses_the_accelerator_it_is_given(accelerator: str) -> None:
    assert option(argv_for(MachineProfile(), accelerator), "-accel") == [accelerator]


@pytest.mark.parametrize(("boot", "interface", "order"), [
    ("floppy", "if=floppy", "order=a"),
    ("hdd", "if=ide,index=0,media=disk", "order=c"),
    ("cdrom", "media=cdrom", "order=d"),
])
def test_it_attaches_the_overlay_as_the_boot_device(boot: str, interface: str, order: str) -> None:
    argv = argv_for(MachineProfile(boot=boot))
    (drive,) = option(argv, "-drive")
    assert drive.startswith("file=/run/s/disk.qcow2,format=qcow2,")
    assert interface in drive
    assert option(argv, "-boot") == [order]


@pytest.mark.parametrize("bad", [
    {"cpu": "z80"}, {"boot": "tape"}, {"mouse": "trackball"}, {"accelerator": "hax"},
    {"vga": "3dfx"}, {"memory_mb": 0}, {"memory_mb": 4096}, {"sound": ("pcspk", "gus")},
    {"sound": ()}, {"sound": ("adlib",)}, {"sound": ("pcspk", "sb16", "adlib")},
    {"sound": ("pcspk", "adlib", "adlib")},
])
def test_it_refuses_a_profile_it_cannot_build(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"unknown|outside|must be|two floppy drives"):
        MachineProfile(**bad)  # type: ignore[arg-type]


def test_it_ties_a_saved_state_to_everything_it_depends_on() -> None:
    base = {"accelerator": "kvm", "qemu": "7.2.22", "master_sha256": "ab" * 32}
    key = state_key(MachineProfile(), **base)
    for profile in (MachineProfile(memory_mb=32), MachineProfile(mouse="ps2"),
                    MachineProfile(boot="hdd"), MachineProfile(cpu="pentium"),
                    MachineProfile(sound=("pcspk", "sb16")), MachineProfile(vga="cirrus"),
                    MachineProfile(sound=("pcspk", "adlib")),
                    MachineProfile(sound=("pcspk", "adlib", "sb16"))):
        assert state_key(profile, **base) != key
    for change in ({"accelerator": "tcg"}, {"qemu": "8.0.0"}, {"master_sha256": "cd" * 32}):
        assert state_key(MachineProfile(), **{**base, **change}) != key


def test_it_refuses_an_unknown_accelerator() -> None:
    with pytest.raises(ValueError, match="unknown accelerator 'hax'"):
        argv_for(MachineProfile(), "hax")


@pytest.mark.parametrize(("cpu", "model"), [("486", "486"), ("pentium", "pentium")])
def test_it_gives_the_guest_the_cpu_of_its_profile(cpu: str, model: str) -> None:
    assert option(argv_for(MachineProfile(cpu=cpu)), "-cpu") == [model]


@pytest.mark.parametrize("vga", ["std", "cirrus"])
def test_it_gives_the_guest_the_vga_of_its_profile(vga: str) -> None:
    assert option(argv_for(MachineProfile(vga=vga)), "-vga") == [vga]


@pytest.mark.parametrize(("cards", "devices"), [
    ((), []),
    (("sb16",), ["sb16,audiodev=audio0"]),
    (("adlib",), ["adlib,audiodev=audio0"]),
    (("sb16", "adlib"), ["adlib,audiodev=audio0", "sb16,audiodev=audio0"]),
])
def test_it_gives_the_guest_the_sound_of_its_profile(cards: tuple[str, ...], devices: list[str]) -> None:
    argv = argv_for(MachineProfile(sound=sound_devices(cards)))
    assert option(argv, "-device") == [*devices, "isa-parallel,chardev=lpt1"]
    # The PC speaker is always there.
    assert option(argv, "-machine") == ["pc,vmport=on,pcspk-audiodev=audio0"]
    # Everything plays into the silent backend, which QEMU's VNC server captures.
    assert option(argv, "-audiodev") == ["none,id=audio0"]
    assert option(argv, "-vnc") == ["unix:/run/s/vnc.sock,share=force-shared,audiodev=audio0"]


def test_it_names_the_sound_hardware_in_one_order() -> None:
    assert sound_devices([]) == ("pcspk",)
    assert sound_devices(["sb16", "pcspk", "adlib", "sb16"]) == ("pcspk", "adlib", "sb16")
    with pytest.raises(ValueError, match="unknown sound device 'gus'"):
        sound_devices(["gus"])


def test_it_attaches_extra_media_in_free_slots_with_cds_read_only() -> None:
    profile = MachineProfile(boot="floppy", extra_media=("floppy", "cdrom", "disk"))
    argv = build_argv(profile, qemu_binary="qemu", accelerator="tcg", disk_path=Path("/r/disk.qcow2"),
                      run_dir=Path("/r"), qmp_fd=3, printer_fd=4,
                      extra_paths=[Path("/r/extra-0.qcow2"), Path("/r/extra-1.qcow2"),
                                   Path("/r/extra-2.qcow2")])
    assert option(argv, "-drive") == [
        "file=/r/disk.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=0",
        "file=/r/extra-0.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=1",
        "file=/r/extra-1.qcow2,format=qcow2,auto-read-only=off,if=ide,index=2,media=cdrom,readonly=on",
        "file=/r/extra-2.qcow2,format=qcow2,auto-read-only=off,if=ide,index=0,media=disk",
    ]
    assert option(argv, "-boot") == ["order=a"]


def test_it_refuses_more_media_than_a_pc_has_drives() -> None:
    with pytest.raises(ValueError, match="two floppy drives"):
        MachineProfile(boot="floppy", extra_media=("floppy", "floppy"))
    with pytest.raises(ValueError, match="unknown media kind 'tape'"):
        MachineProfile(extra_media=("tape",))


def test_every_choice_of_a_full_profile_reaches_the_argv() -> None:
    argv = argv_for(MachineProfile(cpu="pentium", memory_mb=32, vga="cirrus", boot="cdrom", mouse="ps2",
                                   sound=("pcspk", "sb16"), accelerator="tcg"))
    assert option(argv, "-cpu") == ["pentium"]
    assert option(argv, "-m") == ["32"]
    assert option(argv, "-vga") == ["cirrus"]
    assert option(argv, "-machine") == ["pc,vmport=off,pcspk-audiodev=audio0"]  # the PS/2 mouse alone
    assert option(argv, "-device") == ["sb16,audiodev=audio0", "isa-parallel,chardev=lpt1"]
    (drive,) = option(argv, "-drive")
    assert "media=cdrom" in drive
    assert "readonly=on" in drive
    assert option(argv, "-boot") == ["order=d"]


@pytest.mark.parametrize(("speed", "shift"), [
    ("386sx16", 7), ("486dx33", 5), ("486dx2-66", 4), ("pentium60", 3),
])
def test_it_counts_instructions_at_a_period_speed(speed: str, shift: int) -> None:
    argv = argv_for(MachineProfile(speed=speed), "tcg")
    assert option(argv, "-icount") == [f"shift={shift},sleep=on,align=on"]
    assert option(argv, "-accel") == ["tcg"]


def test_it_runs_at_host_speed_without_counting_instructions() -> None:
    assert option(argv_for(MachineProfile()), "-icount") == []


def test_it_refuses_a_period_speed_under_kvm() -> None:
    with pytest.raises(ValueError, match="needs software emulation"):
        argv_for(MachineProfile(speed="486dx33"), "kvm")


def test_it_runs_a_period_speed_in_software_emulation_whatever_the_host_has() -> None:
    assert accelerator_resolve(MachineProfile(speed="486dx33"), host="kvm") == "tcg"
    assert accelerator_resolve(MachineProfile(), host="kvm") == "kvm"


def test_it_never_resumes_a_state_saved_at_another_speed() -> None:
    base = {"accelerator": "tcg", "qemu": "7.2.22", "master_sha256": "ab" * 32}
    keys = {state_key(MachineProfile(speed=speed), **base)
            for speed in ("host", "386sx16", "486dx33", "486dx2-66", "pentium60")}
    assert len(keys) == 5


@pytest.mark.parametrize(("profile", "index"), [
    (MachineProfile(boot="hdd", files_in="a"), 0),
    (MachineProfile(boot="floppy", files_in="b"), 1),
])
def test_it_adds_a_drive_holding_a_blank_floppy_for_visitors_files(profile: MachineProfile,
                                                                    index: int) -> None:
    # A drive QEMU makes empty never lets the guest write to a disk put in later.
    blank = f"file=/run/s/visitor-disk-0.qcow2,format=qcow2,auto-read-only=off,if=floppy,index={index}"
    assert blank in option(argv_for(profile), "-drive")


def test_it_changes_the_disk_in_a_drive_that_has_one_rather_than_adding_a_drive() -> None:
    argv = argv_for(MachineProfile(boot="floppy", files_in="a"))
    assert len(option(argv, "-drive")) == 1


def test_it_changes_b_when_both_floppy_drives_hold_disks() -> None:
    profile = MachineProfile(boot="hdd", extra_media=("floppy", "floppy"), files_in="b")
    assert profile.floppy_slots == [0, 1]
    assert not profile.files_in_slot_free
    argv = build_argv(profile, qemu_binary="qemu", accelerator="tcg", disk_path=Path("/r/disk.qcow2"),
                      run_dir=Path("/r"), qmp_fd=3, printer_fd=4,
                      extra_paths=[Path("/r/extra-0.qcow2"), Path("/r/extra-1.qcow2")])
    assert len(option(argv, "-drive")) == 3


def test_every_machine_has_a_printer_on_lpt1_and_the_start_state_key_says_so() -> None:
    assert "isa-parallel,chardev=lpt1" in option(argv_for(MachineProfile()), "-device")
    # The key digests the whole command line, printer included: a start state saved
    # before the printer was wired is never resumed on a machine with one, so the
    # pool and `make run` (prepare_exhibit --if-needed) prepare it again.
    argv = build_argv(MachineProfile(), qemu_binary="qemu", accelerator="kvm", disk_path=Path("/disk"),
                      run_dir=Path("/run"), qmp_fd=3, printer_fd=4, incoming=True)
    assert "isa-parallel,chardev=lpt1" in argv
    digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
    assert f"argv={digest};" in state_key(MachineProfile(), accelerator="kvm", qemu="7.2",
                                          master_sha256="m")


def test_every_drive_of_a_disk_set_is_on_the_command_line_and_in_the_start_state_key() -> None:
    # Boots from A:; the set uses B: and the CD drive; visitors' files go into B:.
    profile = MachineProfile(boot="floppy", disk_drives=("b", "cd"), files_in="b")
    drives = option(argv_for(profile), "-drive")
    assert drives == [
        "file=/run/s/disk.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=0",
        # B: starts with the visitor's blank floppy: a drive QEMU made empty is never writable.
        "file=/run/s/visitor-disk-0.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=1",
        "if=ide,index=2,media=cdrom,readonly=on",
    ]
    # Without visitors' files, B: starts with a blank placeholder the visit takes out.
    assert option(argv_for(MachineProfile(boot="hdd", disk_drives=("a", "b"))), "-drive")[1:] == [
        "file=/run/s/blank-a.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=0",
        "file=/run/s/blank-b.qcow2,format=qcow2,auto-read-only=off,if=floppy,index=1",
    ]
    # The boot CD's drive is the set's CD drive: no second one.
    assert len(option(argv_for(MachineProfile(boot="cdrom", disk_drives=("cd",))), "-drive")) == 1
    base = {"accelerator": "kvm", "qemu": "7.2.22", "master_sha256": "ab" * 32}
    keys = {state_key(MachineProfile(boot="floppy", disk_drives=drives), **base)
            for drives in ((), ("b",), ("cd",), ("b", "cd"))}
    assert len(keys) == 4
    # A PC's two floppy drives and the order the disk box names its drives.
    for bad in ({"disk_drives": ("cd", "b")}, {"disk_drives": ("c",)},
                {"disk_drives": ("b",), "extra_media": ("floppy",)}):
        with pytest.raises(ValueError, match=r"disk drives|removable"):
            MachineProfile(**bad)
