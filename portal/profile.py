"""The machine profile: what kind of PC an exhibit is, as a plain value.

Owns: `MachineProfile` and the kinds it may name (CPU, boot device, VGA,
mouse, sound, media). It lies below both the catalogue (`portal.models`
hands one out for each exhibit) and the runtime (`sessions.machines.machine` turns
one into a QEMU command line), so neither imports the other for it.

Must not: import Django or anything of `portal` or `sessions`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CPU_MODELS = {"486": "486", "pentium": "pentium"}
BOOT_DEVICES = {"floppy", "hdd", "cdrom"}
# "auto": KVM where the host has it, software emulation (TCG) otherwise.
# "tcg": always software emulation, for guests that misbehave under KVM.
ACCELERATOR_PREFERENCES = {"auto", "tcg"}
VGA_MODELS = {"std", "cirrus"}
# "vmport": QEMU's VMware mouse interface gives guests with a driver for it
# (the demo; VBMOUSE or vmwmouse under Windows 3.1) the visitor's exact pointer
# position; the PS/2 mouse stays as the fallback. "ps2": the PS/2 mouse alone.
MOUSE_MODELS = {"vmport", "ps2"}
# The sound hardware of a PC, in the order the profile lists it: the PC speaker
# (every PC has one), and the ISA cards QEMU 7.2 emulates that an exhibit may add:
# an AdLib (Yamaha OPL2 FM synthesis) and a Sound Blaster 16.
SOUND_DEVICES = ("pcspk", "adlib", "sb16")
SOUND_CARDS = frozenset(SOUND_DEVICES) - {"pcspk"}
MEDIA_KINDS = {"floppy", "disk", "cdrom"}
# How fast the guest runs: "host" as fast as the host lets it (KVM, or software
# emulation), or a period CPU's speed: software emulation counting instructions,
# one every 2**shift ns of guest time, and held to real time (QEMU's -icount
# shift=N,sleep=on,align=on). The shifts are calibrated in docs/curators.md,
# "Period-correct speed": a loop of register instructions runs within 15 % of the
# named CPU's rate from its documented clock counts.
SPEED_SHIFTS = {"386sx16": 7, "486dx33": 5, "486dx2-66": 4, "pentium60": 3}
SPEED_NAMES = {"386sx16": "386SX-16", "486dx33": "486DX-33", "486dx2-66": "486DX2-66",
               "pentium60": "Pentium-60"}
SPEEDS = {"host", *SPEED_SHIFTS}
# Where a visitor's own files go in (a FAT floppy built for them): drive A: or B:
# (a drive that holds a disk at start has it changed), or "off".
FILES_IN_DRIVES = {"a", "b", "off"}
# The drives a disk box may change disks in: the floppy drives A: and B:, and one CD drive.
DISK_DRIVES = ("a", "b", "cd")
DISK_DRIVE_MEDIA = {"a": "floppy", "b": "floppy", "cd": "cdrom"}
# The DOS code pages a guest's text screen may be read in (the characters of
# 0x80-0xFF; 0x01-0x1F and 0x7F draw the same glyphs in every one), by number,
# with the name a curator chooses from. Each is one of Python's own codecs
# ("cp437" ...). Left out: those that draw other glyphs below 0x20 (864, Arabic).
CODE_PAGES = {
    437: "437: United States (the original IBM PC)",
    737: "737: Greek",
    775: "775: Baltic",
    850: "850: Western Europe (multilingual Latin 1)",
    852: "852: Central Europe (Latin 2)",
    855: "855: Cyrillic (IBM)",
    857: "857: Turkish",
    858: "858: Western Europe with the euro sign",
    860: "860: Portuguese",
    861: "861: Icelandic",
    862: "862: Hebrew",
    863: "863: Canadian French",
    865: "865: Nordic",
    866: "866: Russian (Cyrillic, DOS)",
    869: "869: Greek (modern)",
}

# The guest's keyboard layouts (what its DOS KEYB or Windows 3.1 was set up with), by
# the portal's names, each with the QEMU keymap (Debian's qemu-system-data,
# /usr/share/qemu/keymaps) that describes it; the runtime types with it
# (sessions.machines.layouts). "us" is the PC's own. Their labels are the catalogue's.
KEYBOARD_LAYOUTS = {
    "us": "en-us", "uk": "en-gb", "de": "de", "fr": "fr", "es": "es", "it": "it",
    "ch-de": "de-ch", "be": "fr-be", "nl": "nl", "se": "sv", "no": "no", "dk": "da", "pt": "pt",
}


def keyboard_refusal(name: object) -> str | None:
    """Why a keyboard layout name is not one the portal knows (a sentence naming the
    known ones), or None for a known one."""
    if isinstance(name, str) and name in KEYBOARD_LAYOUTS:
        return None
    shown = repr(name)[:40]
    return (f"There is no keyboard layout called {shown}; these are known: "
            f"{', '.join(KEYBOARD_LAYOUTS)}.")


@dataclass(frozen=True)
class MachineProfile:
    """What kind of PC an exhibit is. The same profile always gives the same argv."""

    cpu: str = "486"
    memory_mb: int = 16
    vga: str = "std"
    boot: str = "floppy"
    accelerator: str = "auto"
    mouse: str = "vmport"
    # The PC speaker and the cards of SOUND_CARDS the exhibit has, in SOUND_DEVICES
    # order (`sound_devices` makes one from any choice of cards).
    sound: tuple[str, ...] = ("pcspk",)
    # The kinds of the exhibit's further media, in order ("floppy", "disk", "cdrom").
    extra_media: tuple[str, ...] = ()
    speed: str = "host"
    files_in: str = "off"
    # The drives the exhibit's disk set uses, in DISK_DRIVES order. Each starts with
    # the boot disk (the drive it boots from), a blank placeholder (a floppy drive)
    # or nothing (the CD drive); the set's disks go in once the machine runs.
    disk_drives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sound != sound_devices(self.sound):
            raise ValueError(f"sound must be the PC speaker and known cards in order, not {self.sound!r}")
        if self.speed not in SPEEDS:
            raise ValueError(f"unknown speed {self.speed!r}")
        if self.files_in not in FILES_IN_DRIVES:
            raise ValueError(f"unknown drive for visitors' files {self.files_in!r}")
        for kind in self.extra_media:
            if kind not in MEDIA_KINDS:
                raise ValueError(f"unknown media kind {kind!r}")
        self._disk_drives_check()
        letters = {"a"} if self.boot == "floppy" else set()
        letters |= {drive for drive in self.disk_drives if drive in ("a", "b")}
        floppies = len(letters) + self.extra_media.count("floppy")
        ide = (self.boot != "floppy") + len(self.extra_media) - self.extra_media.count("floppy")
        ide += "cd" in self.disk_drives and self.boot != "cdrom"
        # A drive for visitors' files that the PC lacks is added, empty.
        if floppies <= 2 and self.files_in_slot_free and self.files_in not in letters:
            floppies += 1
        if floppies > 2 or ide > 4:
            raise ValueError("a PC has two floppy drives and four IDE devices")
        if self.mouse not in MOUSE_MODELS:
            raise ValueError(f"unknown mouse {self.mouse!r}")
        if self.accelerator not in ACCELERATOR_PREFERENCES:
            raise ValueError(f"unknown accelerator preference {self.accelerator!r}")
        if self.cpu not in CPU_MODELS:
            raise ValueError(f"unknown CPU model {self.cpu!r}")
        if self.boot not in BOOT_DEVICES:
            raise ValueError(f"unknown boot device {self.boot!r}")
        if self.vga not in VGA_MODELS:
            raise ValueError(f"unknown VGA model {self.vga!r}")
        if not 1 <= self.memory_mb <= 256:
            raise ValueError(f"memory {self.memory_mb} MiB is outside 1..256")

    def _disk_drives_check(self) -> None:
        if list(self.disk_drives) != [drive for drive in DISK_DRIVES if drive in self.disk_drives]:
            raise ValueError(f"disk drives must be known and in order, not {self.disk_drives!r}")
        if self.disk_drives and {"floppy", "cdrom"} & set(self.extra_media):
            raise ValueError("a removable medium is either an extra medium or in the disk set")

    @property
    def boot_drive(self) -> str | None:
        """The disk box's name for the drive the machine boots from, if it is one."""
        return {"floppy": "a", "cdrom": "cd"}.get(self.boot)

    @property
    def floppy_slots(self) -> list[int]:
        """The floppy drives (0 is A:) that hold a disk at start."""
        slots = [0] if self.boot == "floppy" else []
        for kind in self.extra_media:
            if kind == "floppy":
                slots.append(next(slot for slot in (0, 1) if slot not in slots))
        return slots

    @property
    def blank_drives(self) -> list[str]:
        """The disk set's floppy drives that start with a blank placeholder, besides
        the drive for visitors' files (whose blank floppy is the visitor's first
        disk): QEMU 7.2 gives a floppy drive made empty no write permission, so a
        disk put into it later could never be written. The placeholder is taken
        out, or changed for the set's disk, as the machine starts."""
        return [drive for drive in self.disk_drives
                if drive in ("a", "b") and drive != self.boot_drive
                and not (self.files_in_slot_free and drive == self.files_in)]

    @property
    def files_in_slot_free(self) -> bool:
        """Whether the drive for visitors' files is empty at start (else a disk is changed)."""
        return self.files_in != "off" and "ab".index(self.files_in) not in self.floppy_slots

    @property
    def icount_shift(self) -> int | None:
        """Guest time per instruction, 2**shift ns, at a period speed; None at host speed."""
        return SPEED_SHIFTS.get(self.speed)


def sound_devices(cards: Iterable[str]) -> tuple[str, ...]:
    """The sound hardware of a PC with these cards: the PC speaker first, then each
    card once, in SOUND_DEVICES order. Unknown names raise ValueError."""
    wanted = set(cards) - {"pcspk"}
    unknown = wanted - SOUND_CARDS
    if unknown:
        raise ValueError(f"unknown sound device {sorted(unknown)[0]!r}")
    return tuple(device for device in SOUND_DEVICES if device == "pcspk" or device in wanted)
