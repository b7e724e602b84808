"""What operators read and do: /metrics with a real visit, and the staff's page of
live visits with its End button, against real QEMU."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from sessions.models import VisitorSession
from sessions.node.broker import Broker
from tests.conftest import FREEDOS_2048, ExhibitFactory, display_watch, visitor, ws_communicator
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def freedos(exhibit_create: ExhibitFactory) -> Any:
    # Software emulation: FreeDOS floppies do not boot under this host's nested KVM.
    return await exhibit_create(FREEDOS_2048, slug="freedos", accelerator="tcg")


class ClientFrom(AsyncClient):
    """A client at another network address (the ASGI scope's client)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def _base_scope(self, **request: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._base_scope(**request)  # type: ignore[misc]
        scope["client"] = [self.address, 0]
        return scope


async def scrape(client: AsyncClient | None = None) -> Samples:
    """/metrics, read by prometheus_client's own parser: every sample by name and labels."""
    response = await (client or AsyncClient()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_it_serves_metrics_that_move_with_a_real_visit(broker: Broker, freedos: Any) -> None:
    before = await scrape()
    assert value(before, "portal_visits", state="running") == 0
    assert value(before, "portal_node_info", node=broker.config.install,
                 accelerator=broker.config.machines.accelerator, qemu=broker.launcher.qemu_version()) == 1
    assert value(before, "portal_masters", fixity="ok") == 1

    browser = visitor()
    response = await browser.post("/api/exhibits/freedos/sessions")
    assert response.status_code == 201
    session = response.json()
    refused = await browser.post("/api/exhibits/freedos/sessions")
    assert refused.status_code == 409
    rfb = await display_watch(browser, session["vnc_path"])
    await eventually(lambda: _running(session["id"]), timeout_s=30)

    during = await scrape()
    assert value(during, "portal_starts_total", placed="here") == \
        value(before, "portal_starts_total", placed="here") + 1
    assert value(during, "portal_start_refusals_total", reason="session_exists") == \
        value(before, "portal_start_refusals_total", reason="session_exists") + 1
    assert value(during, "portal_machine_starts_total", start="cold") == \
        value(before, "portal_machine_starts_total", start="cold") + 1
    assert value(during, "portal_start_to_first_frame_seconds_count") == \
        value(before, "portal_start_to_first_frame_seconds_count") + 1
    assert value(during, "portal_start_to_first_frame_seconds_sum") > \
        value(before, "portal_start_to_first_frame_seconds_sum")
    assert value(during, "portal_display_bytes_total", direction="to_browser") > \
        value(before, "portal_display_bytes_total", direction="to_browser")
    assert value(during, "portal_display_bytes_total", direction="from_browser") > \
        value(before, "portal_display_bytes_total", direction="from_browser")
    assert value(during, "portal_visits", state="running") == 1
    assert value(during, "portal_machines") == 1
    # A QEMU with 16 MiB of guest memory holds some of it, and has run.
    assert value(during, "portal_machines_resident_bytes") > 8 * 1024 * 1024
    assert value(during, "portal_machines_cpu_seconds_total") > 0

    reset = await browser.post(f"/api/sessions/{session['id']}/reset")
    assert reset.status_code == 200
    await rfb.stop()
    assert (await browser.delete(f"/api/sessions/{session['id']}")).status_code == 204
    after = await scrape()
    assert value(after, "portal_reset_seconds_count") == value(before, "portal_reset_seconds_count") + 1
    assert value(after, "portal_visits", state="running") == 0
    assert value(after, "portal_machines") == 0
    assert value(after, "portal_machines_resident_bytes") == 0
    # What ended machines used is still counted.
    assert value(after, "portal_machines_cpu_seconds_total") >= \
        value(during, "portal_machines_cpu_seconds_total")
    cleaned = value(after, "portal_reaper_cleaned_sessions_total")
    assert value(after, "portal_reaper_runs_total") >= 1
    assert cleaned >= 0


async def _running(session_id: str) -> bool:
    return await VisitorSession.objects.filter(id=session_id, state="running").aexists()


async def test_it_serves_metrics_to_the_configured_addresses_only(broker: Broker, settings: Any) -> None:
    outsider = ClientFrom("203.0.113.9")
    refused = await outsider.get("/metrics")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert "PORTAL_METRICS_ALLOWED" in refused.json()["detail"]
    assert (await ClientFrom("::1").get("/metrics")).status_code == 200
    assert (await ClientFrom("::ffff:127.0.0.1").get("/metrics")).status_code == 200
    settings.PORTAL_METRICS_ALLOWED = ["203.0.113.0/24"]
    await scrape(outsider)
    assert (await AsyncClient().get("/metrics")).status_code == 403
    assert (await AsyncClient().post("/metrics")).status_code == 405


@pytest.fixture
async def staff(db: Any) -> AsyncClient:
    from django.contrib.auth.models import User

    user = await sync_to_async(User.objects.create_user)(username="operator", password="x",
                                                          is_staff=True, is_superuser=True)
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def test_the_staff_page_lists_live_visits_and_ends_one_telling_its_visitor(
    broker: Broker, freedos: Any, staff: AsyncClient
) -> None:
    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos/sessions")).json()
    page = ws_communicator(browser, session["events_path"], subprotocols=[])
    assert (await page.connect(timeout=30))[0]
    await eventually(lambda: _running(session["id"]), timeout_s=30)

    listing = await staff.get("/admin/visits/visitorsession/live/")
    assert listing.status_code == 200
    text = listing.content.decode()
    row = text[text.index(f'data-session="{session["id"]}"'):]
    row = row[:row.index("</tr>")]
    assert "freedos" in row
    assert broker.config.install in row
    assert "running" in row
    assert "s</td>" in row  # its age and idle time
    # Visitors and anonymous clients do not see it.
    assert (await browser.get("/admin/visits/visitorsession/live/")).status_code == 302
    # Only a POST ends a visit; a malformed id is refused with a sentence.
    assert (await staff.get(f"/admin/visits/visitorsession/live/{session['id']}/end/")).status_code == 405
    odd = await staff.post("/admin/visits/visitorsession/live/not-an-id/end/", follow=True)
    assert "There is no such visit." in odd.content.decode()

    ended = await staff.post(f"/admin/visits/visitorsession/live/{session['id']}/end/", follow=True)
    assert ended.status_code == 200
    assert "its visitor was told" in ended.content.decode()
    message = await _next_ended(page)
    assert message["reason"] == "server"
    assert "staff" in message["detail"]
    record = await VisitorSession.objects.aget(id=session["id"])
    assert (record.state, record.ended_reason) == ("ended", "server")
    again = await staff.post(f"/admin/visits/visitorsession/live/{session['id']}/end/", follow=True)
    assert "had ended already" in again.content.decode()
    await page.disconnect()


async def _next_ended(page: Any) -> dict[str, Any]:
    while True:
        message = await page.receive_output(timeout=30)
        if message["type"] != "websocket.send":
            continue
        event = json.loads(message["text"])
        if event["type"] == "ended":
            return dict(event)


def test_metrics_addresses_must_be_addresses(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "PORTAL_DATA_DIR": str(tmp_path),
             "PORTAL_METRICS_ALLOWED": "127.0.0.1,localhost"})
    assert result.returncode != 0
    assert "PORTAL_METRICS_ALLOWED: 'localhost' is not an address or network" in result.stderr
