"""deploy/cluster.py's restarts (when a process that failed starts again, and when it is
given up; the same as the node's systemd unit does) and its ports."""
from __future__ import annotations

import configparser
import socket

from deploy.cluster import (
    RESTART_BURST,
    RESTART_DELAY_S,
    RESTART_INTERVAL_S,
    Restarts,
    port_taken,
    ports_free,
)
from deploy.services import LOOPBACK, REPO


def test_it_starts_a_failed_process_again_after_the_delay_until_it_failed_five_times_in_a_minute(
) -> None:
    restarts = Restarts(delay_s=2, burst=5, interval_s=60)
    assert [restarts.failed(at) for at in (0, 10, 20, 30)] == [2, 2, 2, 2]
    assert restarts.failed(59.9) is None


def test_it_forgets_failures_older_than_the_interval() -> None:
    restarts = Restarts(delay_s=2, burst=5, interval_s=60)
    # Five failures, never five within one minute.
    assert [restarts.failed(at) for at in (0, 20, 40, 59, 61, 81)] == [2, 2, 2, 2, 2, 2]
    assert restarts.failed(90) is None


def test_it_restarts_as_the_nodes_systemd_unit_does() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "deploy" / "systemd" / "portal-node.service")
    assert unit["Service"]["Restart"] == "on-failure"
    assert float(unit["Service"]["RestartSec"]) == RESTART_DELAY_S
    assert int(unit["Unit"]["StartLimitBurst"]) == RESTART_BURST
    assert float(unit["Unit"]["StartLimitIntervalSec"]) == RESTART_INTERVAL_S


def test_it_gives_each_process_a_port_of_its_own_never_the_front_one() -> None:
    with socket.socket() as front:
        front.bind((LOOPBACK, 0))
        port = int(front.getsockname()[1])
        front.listen()
        assert port_taken(port)
    # Free until nginx takes it, last: the others' ports are chosen around it.
    assert not port_taken(port)
    ports = ports_free(200, besides=port)
    assert len(set(ports)) == 200
    assert port not in ports
