"""What operators get from a served node behind nginx: /metrics for their own
addresses only (never through the public origin), and the staff's End button
ending a real visit whose visitor is told."""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import NginxFactory, PortalFactory
from tests.e2e.test_curator import log_in
from tests.e2e.test_multinode import cluster_make, node_name, state_of  # noqa: F401 (a fixture)
from tests.support.portal_http import PortalVisitor


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def test_metrics_are_for_operators_and_staff_end_a_real_visit(
    portal_make: PortalFactory, nginx_make: NginxFactory, browser: Any
) -> None:
    node = portal_make(prepare=False, proxy_headers=True)
    edge = nginx_make(node)

    # The node's own address, from this host: served. A client the node believes to
    # be elsewhere (a proxy's X-Forwarded-For), refused; nginx does not pass it on.
    status, before = get(node.url + "/metrics")
    assert status == 200
    status, body = get(node.url + "/metrics", {"X-Forwarded-For": "203.0.113.7"})
    assert status == 403
    assert json.loads(body)["error"] == "forbidden"
    status, body = get(edge.url + "/metrics")
    assert status == 404
    assert json.loads(body)["error"] == "not_found"

    visitor = PortalVisitor(edge.url, local_address="127.0.0.2")
    session = visitor.session_start("demo")
    status, during = get(node.url + "/metrics")
    started = ("portal_starts_total", (("placed", "here"),))
    assert samples(during)[started] == samples(before).get(started, 0) + 1
    assert samples(during)[("portal_visits", (("state", "running"),))] == 1

    # The visitor's page listens to its events (in a thread of its own: Playwright's
    # calls below belong to this one).
    received: list[dict[str, Any]] = []
    listening = threading.Event()

    async def listen() -> int | None:
        events = await visitor.websocket(session["events_path"])
        received.append(json.loads(await events.receive_text()))
        listening.set()
        async with asyncio.timeout(60):
            while received[-1]["type"] != "ended":
                received.append(json.loads(await events.receive_text()))
            return await events.closed()

    closed: list[int | None] = []
    page_thread = threading.Thread(target=lambda: closed.append(asyncio.run(listen())))
    page_thread.start()
    try:
        assert listening.wait(30)
        assert received[0]["state"] == "running"
        # A member of the staff ends it from the page of live visits.
        page = log_in(node, browser)
        page.goto(node.url + "/admin/visits/visitorsession/live/")
        row = page.locator(f'tr[data-session="{session["id"]}"]')
        assert "demo" in row.inner_text()
        assert "running" in row.inner_text()
        row.get_by_role("button", name="End").click()
        page.get_by_text("its visitor was told").wait_for(timeout=30_000)
    finally:
        page_thread.join(60)
    assert closed == [4410]
    assert received[-1]["reason"] == "server"
    assert "staff" in received[-1]["detail"]
    status, answer = visitor.request("GET", f"/api/sessions/{session['id']}")
    assert (answer["state"], answer["ended_reason"]) == ("ended", "server")
    status, after = get(node.url + "/metrics")
    assert samples(after)[("portal_visits", (("state", "running"),))] == 0
    assert samples(after)[("portal_machines", ())] == 0


def test_each_node_serves_its_own_metrics_and_staff_end_a_visit_another_node_holds(
    cluster_make: Any, browser: Any  # noqa: F811 (the fixture imported above)
) -> None:
    first, second, _ = cluster_make({})
    # The staff's page is open before anyone comes, and keeps itself current.
    page = log_in(second, browser)
    page.goto(second.url + "/admin/visits/visitorsession/live/")
    assert "No live visits" in page.locator("#live-visits").inner_text()
    page.evaluate("() => { window.notReloaded = true; }")

    visitor = PortalVisitor(first.url)
    session = visitor.session_start("demo")
    assert session["node"] == node_name(first)
    row = page.locator(f'tr[data-session="{session["id"]}"]')
    row.wait_for(timeout=30_000)
    assert page.evaluate("() => window.notReloaded === true")
    assert page.locator("#live-count").inner_text() == "1"
    assert "Updated at" in page.locator("#live-updated").inner_text()

    running = ("portal_visits", (("state", "running"),))
    assert samples(get(first.url + "/metrics")[1])[running] == 1
    assert samples(get(second.url + "/metrics")[1])[running] == 0

    assert node_name(first) in row.inner_text()
    row.get_by_role("button", name="End").click()
    page.get_by_text("its visitor was told").wait_for(timeout=30_000)
    answer = state_of(visitor, session)
    assert (answer["state"], answer["ended_reason"]) == ("ended", "server")
    assert "staff" in answer["detail"]
    assert samples(get(first.url + "/metrics")[1])[running] == 0
