"""What understanding the visitor's keys costs: the display socket's framing and key
translation against the blind pipe it replaced, and typing through the keys API on
the guest's layout against the US table it replaced.

- Per event (in this process, no network): the work the display socket does for
  each WebSocket message noVNC sends, one event a message: a key (QEMU's extended
  key event, a German visitor's keys into a US guest, so Shift is released and
  put back around "/") and a pointer event. Framed: `ClientStream.feed` (the
  allow-list and bounds), the input check and `KeyTranslator.translate`, joined
  for QEMU, as `VncConsumer.receive` does; the reference is the blind pipe as it
  was, which only watched the bytes (its framing-free watcher is kept below as
  it was) and wrote them on. The rest of the path (Daphne, the socket to QEMU) is
  the same for both. Target: at most 1 ms added at the median.
- Typing (the prepared FreeDOS, TCG): `POST …/keys` with a 119-character line
  (mixed case and punctuation) until it is on the guest's text screen, and the
  keystrokes the guest's layout (US) gives for it through the broker's paced
  sender; the reference is the same line as the old code typed it (QEMU key
  names from a US table) through the same sender, in the same run. Target: not
  slower (within 5 %, the runs' spread).
"""
from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass, field

from bench.common import Table, median, ms, p95, portal_environment, ratio, runs, us, verdict, write_results
from deploy import teardown

EVENTS = runs(20_000, 2_000)
TYPING_RUNS = runs(5, 2)
GUEST_TIMEOUT_S = 90.0
PROMPT = "A:\\>"
LINE = "rem " + ("Hello (1+2) World: A_b-C/ " * 5)[:115]


@dataclass
class BlindPipeWatch:
    """The display socket's watcher before the framing: it told input from update
    requests and passed every byte on unchanged (kept as it was, to compare with)."""

    _buffer: bytearray = field(default_factory=bytearray)
    _handshake_left: int | None = None
    _skip: int = 0
    update_requested: bool = False

    def feed(self, data: bytes) -> bool:
        self._buffer += data
        saw_input = False
        while True:
            if self._skip:
                taken = min(self._skip, len(self._buffer))
                del self._buffer[:taken]
                self._skip -= taken
                if self._skip:
                    return saw_input
            if self._handshake_left is None:
                if len(self._buffer) < 12:
                    return saw_input
                self._handshake_left = 2
                self._skip = 12
                continue
            if self._handshake_left:
                if not self._buffer:
                    return saw_input
                self._skip = 1
                self._handshake_left -= 1
                continue
            if not self._buffer:
                return saw_input
            message_type = self._buffer[0]
            size = {3: 10, 4: 8, 5: 6}.get(message_type, 12 if message_type == 255 else 0)
            if size == 0:
                return saw_input
            if message_type == 3:
                self.update_requested = True
            saw_input = saw_input or message_type in {4, 5, 255}
            self._skip = size


def event_costs() -> dict[str, list[float]]:
    from sessions.display.keyboard import CHARACTERS, KeyTranslator
    from sessions.display.layouts import layout_for
    from sessions.display.rfb import KEY_EVENT, QEMU_MESSAGE, ClientStream, is_input

    def key_message(message: bytes) -> bool:
        return (message[0] == KEY_EVENT and len(message) == 8) \
            or (message[0] == QEMU_MESSAGE and len(message) == 12)

    handshake = b"RFB 003.008\n\x01\x01"
    shift = [struct.pack(">BBHII", 255, 0, down, 0xFFE1, 0x2A) for down in (1, 0)]
    slash = [struct.pack(">BBHII", 255, 0, down, ord("/"), 0x08) for down in (1, 0)]
    keys = [shift[0], slash[0], slash[1], shift[1]] * (EVENTS // 4)
    pointers = [struct.pack(">BBHH", 5, index % 2, index % 640, index % 480) for index in range(EVENTS)]
    times: dict[str, list[float]] = {}
    for name, messages in (("key", keys), ("pointer", pointers)):
        blind = BlindPipeWatch()
        blind.feed(handshake)
        sent: list[bytes] = []
        spent = []
        for message in messages:
            began = time.perf_counter_ns()
            blind.feed(message)
            sent.append(message)
            spent.append((time.perf_counter_ns() - began) / 1e9)
        times[f"{name}_blind"] = spent
        stream, translator = ClientStream(), KeyTranslator(layout_for("us"))
        stream.feed(handshake)
        spent = []
        sent.clear()
        for message in messages:
            began = time.perf_counter_ns()
            framed = stream.feed(message)
            if any(is_input(each) for each in framed if len(each) in {6, 8, 12}):
                passed = b"".join(
                    translator.translate(each, CHARACTERS)[0] if key_message(each) else each
                    for each in framed)
            else:
                passed = b"".join(framed)
            sent.append(passed)
            spent.append((time.perf_counter_ns() - began) / 1e9)
        times[f"{name}_framed"] = spent
    return times


def old_strokes(text: str) -> list[tuple[str | int, ...]]:
    """The line as the old code typed it: QEMU key names from a US table."""
    plain = {**{c: c for c in "abcdefghijklmnopqrstuvwxyz0123456789"}, " ": "spc", "-": "minus",
             "=": "equal", ";": "semicolon", ",": "comma", ".": "dot", "/": "slash"}
    shifted = {**{c.upper(): c for c in "abcdefghijklmnopqrstuvwxyz"}, "(": "9", ")": "0", "+": "equal",
               "_": "minus", ":": "semicolon"}
    return [(plain[c],) if c in plain else ("shift", shifted[c]) for c in text]


async def typing_costs() -> dict[str, list[float]]:
    from portal.models import Exhibit
    from sessions.display.layouts import layout_for
    from sessions.machines.keys import text_keystrokes
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare, get_broker
    from tests.conftest import display_watch, visitor
    from tests.support.guest import wait_for_screen

    games = await Exhibit.objects.select_related("image").aget(slug="freedos-games")
    await Exhibit.objects.filter(pk=games.pk).aupdate(accelerator="tcg")
    games = await Exhibit.objects.select_related("image").aget(pk=games.pk)
    await exhibit_prepare(games, StartCondition(wait_text=PROMPT, still_s=1.0))
    broker = await get_broker()
    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos-games/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    times: dict[str, list[float]] = {"api": [], "layout": [], "old": []}
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        machine = broker.machine(session["id"])
        assert machine is not None

        def shows_line(screen: str) -> bool:
            return "".join(row.ljust(80) for row in screen.splitlines()).rstrip().endswith(LINE)

        async def cleared() -> None:
            response = await browser.post(f"{base}/keys", json.dumps({"combo": "ctrl-c"}),
                                          content_type="application/json")
            assert response.status_code == 204
            await wait_for_screen(machine, rfb, lambda screen: screen.splitlines()[-1:] == [PROMPT],
                                  timeout_s=GUEST_TIMEOUT_S, what="a fresh prompt")

        await cleared()
        for _ in range(TYPING_RUNS):
            began = time.perf_counter()
            response = await browser.post(f"{base}/keys", json.dumps({"text": LINE}),
                                          content_type="application/json")
            assert response.status_code == 204, response.content
            await wait_for_screen(machine, rfb, shows_line, timeout_s=GUEST_TIMEOUT_S, what="the line")
            times["api"].append(time.perf_counter() - began)
            await cleared()
            for name, strokes in (("layout", text_keystrokes(LINE, layout_for("us"))),
                                  ("old", old_strokes(LINE))):
                began = time.perf_counter()
                await broker.keys_send(session_id=session["id"], strokes=strokes)
                await wait_for_screen(machine, rfb, shows_line, timeout_s=GUEST_TIMEOUT_S, what="the line")
                times[name].append(time.perf_counter() - began)
                await cleared()
    finally:
        with teardown.deferred():
            await rfb.close()
            await browser.delete(base)
            await broker.shutdown()
    return times


def main() -> None:
    with portal_environment(exhibits=True) as _root:
        times = event_costs()
        times.update(asyncio.run(typing_costs()))
    per_event = Table(f"Display socket, per event ({EVENTS} events, one a message); reference: the "
                      "blind pipe's watcher; target: at most 1 ms added at the median",
                      ["event", "framed: median", "framed: p95", "blind: median", "added", "target"])
    for name in ("key", "pointer"):
        framed, blind = median(times[f"{name}_framed"]), median(times[f"{name}_blind"])
        per_event.row(name, us(framed), us(p95(times[f"{name}_framed"])), us(blind), us(framed - blind),
                      verdict(framed - blind <= 0.001))
    per_event.print()
    typing = Table(f"Typing {len(LINE)} characters on the prepared FreeDOS (TCG, {TYPING_RUNS} runs), "
                   "until on screen; reference: the old US table's keystrokes through the same sender",
                   ["typed by", "median", "characters a second", "ratio to reference", "target: not slower"])
    api, layout, old = median(times["api"]), median(times["layout"]), median(times["old"])
    typing.row("the guest's layout (US), same sender", ms(layout), f"{len(LINE) / layout:.0f}",
               ratio(layout, old), verdict(layout <= old * 1.05))
    typing.row("keys API, over HTTP (the guest's layout)", ms(api), f"{len(LINE) / api:.0f}", ratio(api, old),
               "")
    typing.row("old US table (reference)", ms(old), f"{len(LINE) / old:.0f}", "1.00", "")
    typing.print()
    write_results("keys", {"times": times}, tables=[per_event, typing])


if __name__ == "__main__":
    main()
