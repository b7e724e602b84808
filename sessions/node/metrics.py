"""This node's metrics for operators: what `/metrics` says, in Prometheus' text format.

Owns: the metric objects the runtime moves as things happen (starts and refusals
by reason, machines started instantly or cold, start-to-first-frame and reset
times, display bytes, the reaper's work), the gauges read at each scrape from a
`NodeSnapshot` (this node's visits by phase, the one waiting line, the machines'
memory and CPU, masters by fixity), the rendering through `prometheus_client`,
and who may read it (`PORTAL_METRICS_ALLOWED`).

Every node serves its own: counters count what this process did, gauges say what
this node holds (the waiting line and the masters, which all nodes share, are
the same on each). Prometheus scrapes each node at its own address.

Must not: import Django or decide anything; the broker gathers the snapshot, a
view serves it.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
# The portal process itself (its memory, CPU, descriptors) as process_* metrics.
ProcessCollector(registry=REGISTRY)

# Seconds: a prepared start is about 0.15 s here, a cold boot up to tens of seconds.
_TIME_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)

STARTS = Counter("portal_starts", "Visits started through this node (the Start accepted), by where "
                 "they went: here, another node, or the waiting line.", ["placed"], registry=REGISTRY)
REFUSALS = Counter("portal_start_refusals", "Starts this node refused, by the API's error code.",
                   ["reason"], registry=REGISTRY)
MACHINE_STARTS = Counter("portal_machine_starts", "Machines this node started for visits (resets "
                         "too): taken from the warm pool (pooled), resumed from a prepared start state "
                         "(instant), resumed from a visitor's saved visit (saved), booted cold, or failed.",
                         ["start"], registry=REGISTRY)
FIRST_FRAME = Histogram("portal_start_to_first_frame_seconds", "From the moment a visit's machine "
                        "begins to start (its Start, or its turn in line) to the first screen update "
                        "on its display.", buckets=_TIME_BUCKETS_S, registry=REGISTRY)
RESETS = Histogram("portal_reset_seconds", "Resets: from the request to the new machine running.",
                   buckets=_TIME_BUCKETS_S, registry=REGISTRY)
DISPLAY_BYTES = Counter("portal_display_bytes", "Bytes piped between browsers and machines' displays.",
                        ["direction"], registry=REGISTRY)
DISPLAY_TO_BROWSER = DISPLAY_BYTES.labels("to_browser")
DISPLAY_FROM_BROWSER = DISPLAY_BYTES.labels("from_browser")
REAPER_RUNS = Counter("portal_reaper_runs", "Reaper passes on this node (at start-up and periodically).",
                      registry=REGISTRY)
REAPER_CLEANED = Counter("portal_reaper_cleaned_sessions", "Sessions whose machine or files the reaper "
                         "ended or deleted because no living process owned them.", registry=REGISTRY)

# The phases of a visit on a node (sessions.node.visit.Phase), all reported, zero or not.
PHASES = ("queued", "starting", "running", "resetting", "restoring", "ending")


@dataclass(frozen=True)
class NodeSnapshot:
    """What the gauges say, gathered by the broker just before a scrape is rendered."""

    node: str
    accelerator: str
    qemu: str
    capacity: int
    queue_max: int
    # This node's visits by phase name.
    phases: dict[str, int]
    # The one waiting line of all nodes.
    line_length: int
    # The pids of this node's machines.
    machine_pids: list[int]
    # Masters by fixity state ("ok", "failed", "unchecked").
    masters: dict[str, int] = field(default_factory=dict)
    # Fixity checks recorded as failed, ever (the record keeps them).
    fixity_failures: int = 0


@dataclass(frozen=True)
class ProcessUse:
    """One process's resident memory and CPU time, from /proc."""

    key: tuple[int, int]
    resident_bytes: int
    cpu_s: float


def process_use(pid: int) -> ProcessUse | None:
    """A process's memory and CPU time (readable whatever uid it runs as); None once it is gone."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times, memory, created = process.cpu_times(), process.memory_info(), process.create_time()
    except psutil.Error:
        return None
    # The pid and its start time name one process, even once the pid is reused.
    return ProcessUse(key=(pid, round(created * 1000)), resident_bytes=memory.rss,
                      cpu_s=times.user + times.system)


class NodeCollector(Collector):
    """The gauges of one scrape, from the snapshot set just before rendering.

    Machines' CPU is a counter across machines that come and go: the CPU time
    of a machine last seen at the previous scrape and gone now is added to what
    ended machines used (what it used after that scrape is not counted).
    """

    def __init__(self) -> None:
        self.snapshot: NodeSnapshot | None = None
        self._seen: dict[tuple[int, int], float] = {}
        self._ended_cpu_s = 0.0

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return
        info = GaugeMetricFamily("portal_node_info", "This node: its name, accelerator and QEMU.",
                                 labels=["node", "accelerator", "qemu"])
        info.add_metric([snapshot.node, snapshot.accelerator, snapshot.qemu], 1)
        yield info
        yield GaugeMetricFamily("portal_capacity_machines", "Machines this node runs at once at most.",
                                value=snapshot.capacity)
        visits = GaugeMetricFamily("portal_visits", "This node's live visits by state.", labels=["state"])
        for phase in PHASES:
            visits.add_metric([phase], snapshot.phases.get(phase, 0))
        yield visits
        yield GaugeMetricFamily("portal_waiting_line_visits", "Visits waiting in the one line of all "
                                "nodes.", value=snapshot.line_length)
        yield GaugeMetricFamily("portal_waiting_line_places", "Places in the waiting line "
                                "(PORTAL_QUEUE_MAX).", value=snapshot.queue_max)
        uses = [use for use in map(process_use, snapshot.machine_pids) if use is not None]
        yield GaugeMetricFamily("portal_machines", "QEMU processes of this node's visits.",
                                value=len(uses))
        yield GaugeMetricFamily("portal_machines_resident_bytes", "Resident memory of this node's "
                                "machines, together.", value=sum(use.resident_bytes for use in uses))
        yield CounterMetricFamily("portal_machines_cpu_seconds", "CPU time of this node's machines, "
                                  "running and ended, together.", value=self._cpu_total(uses))
        masters = GaugeMetricFamily("portal_masters", "Masters by the outcome of their latest fixity "
                                    "check.", labels=["fixity"])
        for state in ("ok", "failed", "unchecked"):
            masters.add_metric([state], snapshot.masters.get(state, 0))
        yield masters
        yield CounterMetricFamily("portal_fixity_failures", "Fixity checks that found a master changed "
                                  "(in the portal's record, all nodes).", value=snapshot.fixity_failures)

    def _cpu_total(self, uses: Iterable[ProcessUse]) -> float:
        now = {use.key: use.cpu_s for use in uses}
        for key, cpu_s in self._seen.items():
            if key not in now:
                self._ended_cpu_s += cpu_s
        self._seen = now
        return self._ended_cpu_s + sum(now.values())


NODE = NodeCollector()
REGISTRY.register(NODE)


def metrics_render(snapshot: NodeSnapshot) -> bytes:
    """The text format of every metric, the gauges as of `snapshot`.

    Synchronous, with no await between setting the snapshot and rendering it, so
    two scrapes in one event loop never mix.
    """
    NODE.snapshot = snapshot
    return generate_latest(REGISTRY)


def address_allowed(address: str, allowed: Iterable[str]) -> bool:
    """Whether a client address is in one of the allowed addresses or networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
