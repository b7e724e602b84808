"""Soak: many visitors starting and ending machines through the real server.

Daphne serves the portal as `make run` does (the demo prepared); ten client
threads, each a browser of its own, run start → running → display → end
cycles over HTTP and the display WebSocket until the total is reached. Then
it counts what leaked: QEMU processes, run directories, sockets, cgroups,
live rows, and the server's own descriptors; and it checks the master's
SHA-256. It also kills machines with SIGKILL and times how long the page
takes to learn of it.

Reference (same run): the first tenth of the cycles; the last tenth's ratio
against it shows whether anything degrades with use.

    python -m bench.soak [--cycles 1000] [--clients 10] [--kills 10]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from websockify.websocket import WebSocket

from bench.common import REPO, ServedPortal, Table, rss_kib, runs, served_portal, verdict, write_results
from portal.importer import sha256_path as sha256_file
from tests.support.processes import processes_naming

TARGET_DETECTION_S = 2.0


class CookieWebSocket(WebSocket):
    """websockify's client WebSocket, carrying the browser's session cookie and
    a Host header with the port (as browsers send it)."""

    cookie = ""
    host = ""

    def send_header(self, keyword: str, value: object) -> None:
        super().send_header(keyword, self.host if keyword == "Host" else value)

    def end_headers(self) -> None:
        self.send_header("Cookie", self.cookie)
        super().end_headers()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Client:
    """One browser: its own cookies and CSRF token."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.get(url + "/api/csrf", timeout=30).raise_for_status()
        self.http.headers["X-CSRFToken"] = self.http.cookies["csrftoken"] or ""

    def start(self) -> dict[str, Any]:
        while True:
            response = self.http.post(self.url + "/api/exhibits/demo/sessions", timeout=60)
            if response.status_code == 201:
                return response.json()  # type: ignore[no-any-return]
            if response.status_code == 503:  # every machine in use and the line full
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            raise RuntimeError(f"start answered {response.status_code}: {response.text}")

    def get(self, session_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/api/sessions/{session_id}", timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def until_state(self, session_id: str, states: set[str], timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            session = self.get(session_id)
            if session["state"] in states:
                return session
            time.sleep(0.01)
        raise RuntimeError(f"session {session_id} never reached {states}")

    def display_greeting(self, vnc_path: str) -> bytes:
        """Open the display WebSocket and read the server's RFB version."""
        websocket = CookieWebSocket()
        websocket.cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        websocket.host = self.url.removeprefix("http://")
        websocket.connect(self.url.replace("http", "ws") + vnc_path, origin=self.url,
                          protocols=["binary"])
        websocket.socket.settimeout(30)
        data = b""
        while len(data) < 12:
            chunk = websocket.recvmsg()
            if chunk is None:
                break
            data += chunk
        websocket.close()
        return data

    def end(self, session_id: str) -> None:
        response = self.http.delete(f"{self.url}/api/sessions/{session_id}", timeout=60)
        if response.status_code != 204:
            raise RuntimeError(f"end answered {response.status_code}")


def cycles_run(url: str, total: int, clients: int) -> tuple[list[tuple[float, float, float]], list[str]]:
    """(start-to-running, display greeting, end) seconds per cycle, in completion order."""
    lock = threading.Lock()
    remaining = [total]
    timings: list[tuple[float, float, float]] = []
    failures: list[str] = []

    def worker() -> None:
        client = Client(url)
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                began = time.monotonic()
                session = client.start()
                client.until_state(session["id"], {"running", "ended"})
                running = time.monotonic()
                greeting = client.display_greeting(session["vnc_path"])
                shown = time.monotonic()
                if not greeting.startswith(b"RFB "):
                    raise RuntimeError(f"display said {greeting!r}")
                client.end(session["id"])
                ended = time.monotonic()
                with lock:
                    timings.append((running - began, shown - running, ended - shown))
            except Exception as error:  # a failed cycle is counted, the soak goes on
                with lock:
                    failures.append(repr(error))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timings, failures


def kill_detection(server: ServedPortal, kills: int) -> list[float]:
    """SIGKILL a running machine; seconds until the API reports it crashed."""
    client = Client(server.url)
    detected = []
    for _ in range(kills):
        session = client.start()
        client.until_state(session["id"], {"running"})
        pid, _ = server.machine(session["id"])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        ended = client.until_state(session["id"], {"ended"}, timeout_s=30)
        detected.append(time.monotonic() - killed)
        if ended["ended_reason"] != "crashed":
            raise RuntimeError(f"a killed machine ended as {ended['ended_reason']}")
    return detected


def leaks(root: Path) -> dict[str, int]:
    run = root / "run"
    sockets = sum(1 for line in Path("/proc/net/unix").read_text().splitlines()
                  if str(run) + "/" in line)
    files = sum(1 for _ in run.rglob("*")) if run.exists() else 0
    from sessions.machines.confine import memory_cgroups_find
    from sessions.machines.host import cgroup_parent_name, install_id_derive, machine_lease_names

    # The served portal's install, by the identity it derives from its data directory.
    install = os.environ.get("PORTAL_INSTALL_ID") or install_id_derive(root)
    cgroups = memory_cgroups_find(parent_name=cgroup_parent_name(install))
    return {"qemu_processes": len(processes_naming(run)), "run_files": files, "sockets": sockets,
            "cgroups": len(cgroups.names()) if cgroups else 0,
            "leases": len(machine_lease_names(root / "leases"))}


def live_rows(server: ServedPortal) -> int:
    output = server.manage("shell", "-c", "from sessions.models import VisitorSession as V; "
                           "print(V.objects.filter(state__in=V.LIVE_STATES).count())")
    return int(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=runs(1000, 50))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--kills", type=int, default=runs(10, 3))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    # One address starts every machine here; the rate limits are for the internet.
    unlimited = {"PORTAL_STARTS_PER_BROWSER": "1000000", "PORTAL_STARTS_PER_ADDRESS": "1000000",
                 "PORTAL_LIVE_PER_ADDRESS": "1000000"}
    with served_portal(environment=unlimited) as server:
        master = Path(json.loads(server.manage(
            "shell", "-c", "import json; from portal.models import Exhibit; "
            "print(json.dumps(Exhibit.objects.get(slug='demo').image.path))").strip().splitlines()[-1]))
        master_before = sha256_file(master)
        # Warm up (the server's first requests import and cache), then count descriptors.
        cycles_run(server.url, 10, 2)
        descriptors_before, rss_before = descriptors(server.pid), rss_kib(server.pid)
        began = time.monotonic()
        timings, failures = cycles_run(server.url, args.cycles, args.clients)
        if not timings:
            raise RuntimeError(f"every cycle failed, for example: {failures[:3]}")
        elapsed = time.monotonic() - began
        detection = kill_detection(server, args.kills)
        descriptors_after, rss_after = descriptors(server.pid), rss_kib(server.pid)
        leaked = leaks(server.root)
        rows = live_rows(server)
        server.stop()
        leaked_after_stop = leaks(server.root)
        master_after = sha256_file(master)

    tenth = max(1, len(timings) // 10)
    first, last = timings[:tenth], timings[-tenth:]
    table = Table(
        f"Soak: {args.cycles} cycles (start -> running -> display greeting -> end), "
        f"{args.clients} concurrent clients, {elapsed:.0f} s, {len(timings) / elapsed:.1f} cycles/s; "
        "reference: the first tenth of the cycles",
        ["step", "median first tenth", "median last tenth", "ratio", "p95 overall"],
    )
    for index, name in enumerate(("start to running", "display greeting", "end (DELETE)")):
        reference = statistics.median(t[index] for t in first)
        later = statistics.median(t[index] for t in last)
        overall = sorted(t[index] for t in timings)
        table.row(name, f"{reference * 1000:.0f} ms", f"{later * 1000:.0f} ms",
                  f"{later / reference:.2f}", f"{overall[int(0.95 * (len(overall) - 1))] * 1000:.0f} ms")
    table.print()

    detection_median = statistics.median(detection)
    kill_table = Table(
        f"A machine killed with SIGKILL: until the API says crashed, {args.kills} runs; "
        "reference: the 2 s target",
        ["median", "max", "ratio to target", "target 2 s"],
    )
    kill_table.row(f"{detection_median * 1000:.0f} ms", f"{max(detection) * 1000:.0f} ms",
                   f"{detection_median / TARGET_DETECTION_S:.3f}",
                   verdict(max(detection) <= TARGET_DETECTION_S))
    kill_table.print()

    clean = (not any(leaked.values()) and not any(leaked_after_stop.values()) and rows == 0
             and not failures and master_before == master_after)
    leak_table = Table(f"What was left (must all be 0), and the master: {verdict(clean)}",
                       ["what", "count"])
    for name, count in leaked.items():
        leak_table.row(f"{name} (server running)", count)
    for name, count in leaked_after_stop.items():
        leak_table.row(f"{name} (server stopped)", count)
    leak_table.row("live session rows", rows)
    leak_table.row("failed cycles", len(failures))
    leak_table.row("server descriptors gained", descriptors_after - descriptors_before)
    leak_table.row("server RSS gained", f"{(rss_after - rss_before) / 1024:.1f} MiB")
    leak_table.row("master SHA-256 unchanged", "yes" if master_before == master_after else "NO")
    leak_table.print()
    for failure in failures[:5]:
        print("failure:", failure)

    write_results("soak", {
        "cycles": args.cycles, "clients": args.clients, "elapsed_s": elapsed,
        "timings_s": timings, "failures": failures, "kill_detection_s": detection,
        "leaks_running": leaked, "leaks_stopped": leaked_after_stop, "live_rows": rows,
        "descriptors": [descriptors_before, descriptors_after], "rss_kib": [rss_before, rss_after],
        "master_sha256": [master_before, master_after],
    }, tables=(table, kill_table, leak_table))


if __name__ == "__main__":
    main()
