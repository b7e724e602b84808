"""The API's one error shape, through the served portal, for what Django refuses
before a view runs: a method an address does not take, a Host it does not serve."""
from __future__ import annotations

import http.client
import json

from tests.e2e.conftest import PortalFactory


def answer(port: int, method: str, path: str, *,
           host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_refusals_before_a_view_are_json_under_the_api_and_pages_elsewhere(
    portal_make: PortalFactory,
) -> None:
    site = portal_make(demo=False)
    status, headers, body = answer(site.port, "GET", "/api/exhibits/demo/sessions")
    assert status == 405
    assert headers["Content-Type"] == "application/json"
    assert headers["Allow"] == "POST"
    refusal = json.loads(body)
    assert refusal["error"] == "method_not_allowed"
    assert "POST" in refusal["detail"]

    status, headers, body = answer(site.port, "GET", "/api/exhibits", host="elsewhere.example")
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "bad_request"

    # A page keeps its HTML answer.
    status, headers, _ = answer(site.port, "GET", "/", host="elsewhere.example")
    assert status == 400
    assert headers["Content-Type"].startswith("text/html")
